//! The request pipeline: normalize -> route -> tenant -> emulate or forward -> record.
//!
//! [`App`] is a cloneable handle on the running config; the server calls [`App::handle`] for each
//! request, tests call it directly (or through `tower::Service`). A reload swaps the whole
//! [`Runtime`] at once, so each request runs start to end on the config it started with.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body::Body;

use crate::auth::{Credential, Identities};
use crate::body::{BoxError, ProxyBody};
use crate::config::Config;
use crate::error::{BASIC_CHALLENGE, BEARER_CHALLENGE, ProxyError};
use crate::forward::{self, Upstream, headers};
use crate::promapi::EmulatedEndpoint;
use crate::route::{Route, RouteMatch, RouteTable, normalize_path};
use crate::telemetry::{Exchange, Metered, Metrics, Refusal};
use crate::tenant::{Resolved, TenantError, TenantOrigin, TenantSource};
use crate::tls::PeerNames;

/// The body of every response tenantgate sends.
pub type ResponseBody = Metered<ProxyBody>;

/// What the server knows about the connection a request came on: the server passes it to
/// [`App::serve`]; [`App::handle`] (in-process tests) serves as loopback, plain HTTP.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote: SocketAddr,
    pub tls: bool,
    /// Names from the client certificate, when one was presented and verified.
    pub peer: Option<Arc<PeerNames>>,
    /// `remote`'s IP as an `X-Forwarded-For` value, made once per connection.
    forwarded_for: http::HeaderValue,
    /// `remote` as the access log writes it, made by the connection's first logged request.
    logged_remote: std::sync::OnceLock<Arc<str>>,
}

impl ConnInfo {
    pub fn new(remote: SocketAddr, tls: bool, peer: Option<Arc<PeerNames>>) -> Self {
        ConnInfo {
            remote,
            tls,
            peer,
            forwarded_for: headers::ip_value(remote.ip()),
            logged_remote: std::sync::OnceLock::new(),
        }
    }

    /// The client's address as the access log writes it (formatted once per connection).
    pub fn logged_remote(&self) -> Arc<str> {
        self.logged_remote
            .get_or_init(|| Arc::from(self.remote.to_string()))
            .clone()
    }
}

impl Default for ConnInfo {
    fn default() -> Self {
        ConnInfo::new(
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            false,
            None,
        )
    }
}

/// One loaded config, ready to serve: routes indexed, upstream pools built.
#[derive(Debug)]
pub struct Runtime {
    pub config: Config,
    pub table: RouteTable,
    pub upstreams: HashMap<Arc<str>, Arc<Upstream>>,
}

impl Runtime {
    /// Builds the runtime for a config. Connection pools of upstreams whose settings did not
    /// change are carried over from `previous`, so a reload does not drop warm connections.
    pub fn new(
        mut config: Config,
        previous: Option<&Runtime>,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, String> {
        let mut upstreams = HashMap::new();
        for (name, settings) in &config.upstreams {
            if settings
                .tls
                .as_ref()
                .is_some_and(|t| t.insecure_skip_verify)
            {
                tracing::warn!(upstream = %name, "tls.insecure_skip_verify is on: the upstream's certificate is not verified, so anyone on the path can impersonate it");
            }
            let reused = previous
                .and_then(|p| p.upstreams.get(name.as_str()))
                .filter(|u| u.settings == *settings)
                .cloned();
            let upstream = match reused {
                Some(u) => u,
                None => {
                    let u = Arc::new(
                        Upstream::new(settings.clone())
                            .map_err(|e| format!("upstreams.{name}: {e}"))?,
                    );
                    u.spawn_health_checks(metrics.clone());
                    u
                }
            };
            upstreams.insert(Arc::from(name.as_str()), upstream);
        }
        for route in &config.routes {
            let Some(p) = &route.prometheus else { continue };
            for name in p.external_labels.keys() {
                if !crate::promapi::is_classic_label_name(name) {
                    tracing::warn!(route = %route.name, label = %name, "external label name outside [a-zA-Z_][a-zA-Z0-9_]*: Thanos sidecars before v0.37 refuse it (Prometheus 3 and newer sidecars accept UTF-8 names)");
                }
            }
        }
        let routes = std::mem::take(&mut config.routes);
        Ok(Runtime {
            table: RouteTable::new(routes),
            config,
            upstreams,
        })
    }
}

struct Shared {
    runtime: RwLock<Arc<Runtime>>,
    /// `server.max_requests_in_flight`, as set at start (`tenantgate_requests_in_flight_limit`).
    in_flight: Arc<tokio::sync::Semaphore>,
    metrics: Arc<Metrics>,
    access_log: bool,
}

/// The proxy as a service. Cheap to clone.
#[derive(Clone)]
pub struct App {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

/// Options that are not part of the config file.
#[derive(Debug, Clone, Copy)]
pub struct AppOptions {
    /// Write one log line per request.
    pub access_log: bool,
}

impl Default for AppOptions {
    fn default() -> Self {
        AppOptions { access_log: true }
    }
}

/// The size of a request's head as HTTP/1.1 writes it: request line, `name: value` lines and
/// the blank line.
fn head_size<B>(req: &Request<B>) -> u64 {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |pq| pq.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + 1 + target + " HTTP/1.1\r\n".len();
    let fields: usize = req
        .headers()
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    (line + fields + 2) as u64
}

fn host_of<B>(req: &Request<B>) -> Option<&str> {
    let raw = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))?;
    // Strip the port; keep IPv6 brackets intact.
    Some(match raw.rfind(':') {
        Some(i) if !raw[i..].contains(']') => &raw[..i],
        _ => raw,
    })
}

impl App {
    pub fn new(config: Config, options: AppOptions) -> Result<Self, String> {
        let metrics = Arc::new(Metrics::new());
        let runtime = Runtime::new(config, None, &metrics)?;
        metrics.config_loaded(true);
        // The semaphore is sized once: a reload that changes the limit keeps the running one.
        let max_in_flight = runtime.config.server.max_requests_in_flight;
        metrics
            .in_flight_limit
            .set(i64::try_from(max_in_flight).unwrap_or(i64::MAX));
        Ok(App {
            shared: Arc::new(Shared {
                in_flight: Arc::new(tokio::sync::Semaphore::new(max_in_flight)),
                runtime: RwLock::new(Arc::new(runtime)),
                metrics,
                access_log: options.access_log,
            }),
        })
    }

    /// The config requests are served with right now.
    pub fn runtime(&self) -> Arc<Runtime> {
        match self.shared.runtime.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Swaps in a new config. Requests already running keep the one they started with.
    pub fn swap(&self, config: Config) -> Result<(), String> {
        let next = Arc::new(Runtime::new(
            config,
            Some(&self.runtime()),
            &self.shared.metrics,
        )?);
        match self.shared.runtime.write() {
            Ok(mut g) => *g = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.shared.metrics
    }

    /// Serves one request as if it came from loopback over plain HTTP (in-process tests).
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        self.serve(req, &Arc::new(ConnInfo::default())).await
    }

    /// Serves one request that came on the connection `conn`. Never fails: every error becomes
    /// a response.
    ///
    /// Not an `async fn`: everything that waits for nothing (the checks, routing, a fixed or
    /// header tenant, an emulated answer, the upstream request's head) runs here, before the
    /// returned future exists. On the usual path that future is then just the upstream
    /// exchange in flight ([`Serving`]), built in place: the request is not carried, or
    /// copied, through a chain of `async fn`s, each holding it twice.
    ///
    /// Call it inside the Tokio runtime: the response-header deadline is set here. On HTTP/2
    /// this part runs on the connection's task (hyper spawns only the returned future), which
    /// is why anything that may wait, a credential check, is left to the future.
    pub fn serve<B>(
        &self,
        req: Request<B>,
        conn: &Arc<ConnInfo>,
    ) -> impl Future<Output = Response<ResponseBody>> + Send + use<B>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let runtime = self.runtime();
        let mut exchange = Box::new(Exchange::new(
            self.shared.metrics.clone(),
            self.shared.access_log,
            req.method().clone(),
        ));
        if self.shared.access_log {
            exchange.client = Some(conn.logged_remote());
        }
        // The permit lives in the exchange, so it is released when the response body is done.
        let step = match self.shared.in_flight.clone().try_acquire_owned() {
            Ok(p) => {
                exchange.hold(p);
                self.route(&runtime, req, conn, &mut exchange)
            }
            Err(_) => {
                self.shared.metrics.refused(Refusal::InFlightLimit);
                Err(ProxyError::Overloaded(
                    "too many requests in flight (server.max_requests_in_flight)",
                ))
            }
        };
        match step {
            Ok(Step::Now(Dispatch::Forward(forwarding))) => Serving::forward(forwarding, exchange),
            Ok(Step::Now(Dispatch::Answer(resp))) => Serving::ready(finish(Ok(resp), exchange)),
            Err(e) => Serving::ready(finish(Err(e), exchange)),
            Ok(Step::Later(later)) => Serving::later(Box::pin(self.clone().serve_later(
                runtime,
                *later,
                conn.clone(),
                exchange,
            ))),
        }
    }

    /// Checks, normalizes and routes a request, and takes it as far as it goes without
    /// waiting.
    fn route<B>(
        &self,
        rt: &Runtime,
        req: Request<B>,
        conn: &ConnInfo,
        ex: &mut Exchange,
    ) -> Result<Step<B, impl Forward + use<B>>, ProxyError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        // 0. CONNECT asks for a tunnel, which tenantgate never opens (its target is an
        //    authority, not a path, so it could not be routed either).
        if req.method() == http::Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed("CONNECT".to_owned()));
        }
        // hyper enforces the header count on HTTP/1 only; HTTP/2 gets the same limit here.
        let limit = rt.config.server.max_headers;
        if req.headers().len() > limit {
            return Err(ProxyError::TooManyHeaders { limit });
        }
        let limit = rt.config.server.max_header_bytes;
        if head_size(&req) > limit {
            return Err(ProxyError::HeadTooLarge { limit });
        }

        // 1. One normalized path, used for matching and forwarding alike.
        //    A clone of the URI is a reference count: the path borrowed from it stays valid
        //    after the request is taken apart, and an already normal path is not copied.
        let uri = req.uri().clone();
        let path = normalize_path(uri.path())?;
        ex.set_path(&path);

        // 2. Route: exact path, then the longest prefix, narrowed by method and host.
        let host = if rt.table.uses_host() {
            host_of(&req)
        } else {
            None
        };
        let route = match rt.table.lookup(&path, req.method(), host) {
            RouteMatch::Found(r) => r.clone(),
            RouteMatch::MethodNotAllowed => {
                return Err(ProxyError::MethodNotAllowed(req.method().to_string()));
            }
            RouteMatch::NotFound => {
                return Err(ProxyError::NoRoute {
                    method: req.method().to_string(),
                    path: path.into_owned(),
                });
            }
        };
        ex.set_route(route.handles(ex.metrics()));

        // 3. Tenant: chosen by the route, never taken from the client as sent. A credential
        //    check may wait, and a request split by series labels waits for its parts: those
        //    go on in a future of their own (`serve_later`).
        let now = match &route.tenant {
            TenantSource::Label(_) => None,
            source => source.resolve_now(req.headers()),
        };
        let Some(resolved) = now else {
            return Ok(Step::Later(Box::new(Later {
                req,
                path: path.into_owned(),
                route,
            })));
        };
        let resolved = resolved.map_err(|e| refuse(e, &route.tenant, &rt.config.identities, ex))?;
        self.dispatch(rt, &route, req, &path, resolved, conn, ex)
            .map(Step::Now)
    }

    /// The rest of a request whose tenant is chosen: an emulated answer, or the request on its
    /// way to the upstream.
    #[expect(
        clippy::too_many_arguments,
        reason = "the request's parts as the pipeline has them; a struct would only be unpacked"
    )]
    fn dispatch<B>(
        &self,
        rt: &Runtime,
        route: &Route,
        req: Request<B>,
        path: &str,
        resolved: Resolved,
        conn: &ConnInfo,
        ex: &mut Exchange,
    ) -> Result<Dispatch<impl Forward + use<B>>, ProxyError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        ex.tenant = Some(resolved.tenant.label());
        ex.tenant_origin = Some(resolved.origin.as_str());
        ex.identity = resolved.identity;
        let tenant = &resolved.tenant;

        // 4. Emulated endpoints are answered before anything reaches the upstream.
        if let Some(emulation) = &route.prometheus
            && let Some(endpoint) = EmulatedEndpoint::find(route.path.as_str(), path)
        {
            let handles = route.handles(ex.metrics());
            handles.emulated(endpoint.name());
            let answer = emulation.respond(endpoint, req.method());
            // The sidecar GETs status/config every 30 s: a stale timestamp means it is gone.
            // Only a read that got the config counts (not a HEAD, a 405 or an error).
            if endpoint == EmulatedEndpoint::Config
                && req.method() == http::Method::GET
                && answer.as_ref().is_ok_and(|r| r.status().is_success())
            {
                handles.sidecar_seen();
            }
            return answer.map(Dispatch::Answer);
        }

        // 5. Forward.
        let upstream = rt.upstreams.get(&route.upstream).ok_or_else(|| {
            ProxyError::Internal(format!(
                "route {} has no upstream {}",
                route.name, route.upstream
            ))
        })?;
        ex.upstream = Some(route.upstream.clone());
        if crate::body::content_length(req.headers()).is_some_and(|n| n > route.max_request_body) {
            return Err(ProxyError::BodyTooLarge {
                limit: route.max_request_body,
            });
        }
        let target = route.rewrite.apply(path);
        let uri = upstream.uri_for_request(&target, req.uri())?;
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        headers::set_tenant(&mut parts.headers, tenant);
        if !route.forward_authorization {
            // Credentials for tenantgate are not credentials for the upstream.
            parts.headers.remove(header::AUTHORIZATION);
        }
        headers::add_forwarded_value(&mut parts.headers, &conn.forwarded_for, conn.tls);
        // The client's Host names tenantgate; the pool sets the upstream's.
        parts.headers.remove(header::HOST);
        parts.uri = uri;
        parts.extensions = http::Extensions::new();
        let body = if body.is_end_stream() {
            forward::empty_body()
        } else {
            forward::upstream_body(body, route.max_request_body, ex.count_request_bytes())
        };
        Ok(Dispatch::Forward(
            upstream.forward(Request::from_parts(parts, body)),
        ))
    }

    /// A request whose tenant waits for a credential check, or that is split by series labels.
    async fn serve_later<B>(
        self,
        rt: Arc<Runtime>,
        later: Later<B>,
        conn: Arc<ConnInfo>,
        mut ex: Box<Exchange>,
    ) -> Response<ResponseBody>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let served = self
            .authenticate_and_serve(&rt, later, &conn, &mut ex)
            .await;
        finish(served, ex)
    }

    async fn authenticate_and_serve<B>(
        &self,
        rt: &Runtime,
        later: Later<B>,
        conn: &ConnInfo,
        ex: &mut Exchange,
    ) -> Result<Response<ProxyBody>, ProxyError>
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let Later { req, path, route } = later;
        if let TenantSource::Label(tenancy) = &route.tenant {
            // One request per tenant named by the series' labels (crate::push).
            let caller = tenancy
                .caller(
                    req.headers(),
                    conn.peer.as_deref(),
                    conn.remote.ip(),
                    &rt.config.identities,
                )
                .await
                .map_err(|e| refuse(e, &route.tenant, &rt.config.identities, ex))?;
            ex.tenant = Some(label_tenant());
            ex.tenant_origin = Some(TenantOrigin::Label.as_str());
            ex.identity = caller.as_ref().map(|c| c.name.clone());
            let upstream = rt.upstreams.get(&route.upstream).cloned().ok_or_else(|| {
                ProxyError::Internal(format!(
                    "route {} has no upstream {}",
                    route.name, route.upstream
                ))
            })?;
            ex.upstream = Some(route.upstream.clone());
            let target = route.rewrite.apply(&path).into_owned();
            let incoming = crate::push::serve::Incoming {
                request: req,
                path: &path,
                target: &target,
                client: conn.remote.ip(),
                tls: conn.tls,
            };
            // Boxed: the split-and-fan-out future is large, and inline it would size the
            // credential-checking requests' futures too.
            return Box::pin(crate::push::serve::serve(
                &route, &upstream, tenancy, caller, incoming, ex,
            ))
            .await;
        }
        let resolved = route
            .tenant
            .resolve(
                req.headers(),
                conn.peer.as_deref(),
                conn.remote.ip(),
                &rt.config.identities,
            )
            .await
            .map_err(|e| refuse(e, &route.tenant, &rt.config.identities, ex))?;
        match self.dispatch(rt, &route, req, &path, resolved, conn, ex)? {
            Dispatch::Answer(resp) => Ok(resp),
            Dispatch::Forward(forwarding) => forwarding.await,
        }
    }
}

/// A tenant failure as its response, with the refused identity (its name, never a credential)
/// noted for the access log.
fn refuse(
    e: TenantError,
    source: &TenantSource,
    identities: &Identities,
    ex: &mut Exchange,
) -> ProxyError {
    if let TenantError::IdentityForbidden { identity, .. } = &e {
        ex.identity = Some(identity.clone());
    }
    tenant_error(e, source, identities, ex.metrics())
}

/// The tenant label of requests split by series labels: tenants named by data are never metric
/// labels (their number is not bounded by the config).
fn label_tenant() -> Arc<str> {
    static LABEL: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    LABEL.get_or_init(|| Arc::from("(by label)")).clone()
}

/// Maps a tenant failure to its response, with `WWW-Authenticate` challenges for the credential
/// kinds the route accepts, and counts the refusals among them.
fn tenant_error(
    e: TenantError,
    source: &TenantSource,
    identities: &Identities,
    metrics: &Metrics,
) -> ProxyError {
    match e {
        TenantError::Unauthenticated(crate::auth::AuthError::Busy) => {
            metrics.refused(Refusal::CredentialCheckQueue);
            ProxyError::Overloaded("credential checks are queued")
        }
        TenantError::Unauthenticated(crate::auth::AuthError::Throttled(wait)) => {
            metrics.refused(Refusal::FailedLoginLimit);
            ProxyError::TooManyFailedLogins { retry_after: wait }
        }
        TenantError::Unauthenticated(reason) => {
            let allowed = match source {
                TenantSource::Identity { allowed, .. } => allowed.clone(),
                _ => None,
            };
            let accepted = identities
                .iter()
                .filter(|i| allowed.as_ref().is_none_or(|a| a.contains(&i.name)));
            let mut challenges = Vec::new();
            for i in accepted {
                let c = match i.credential {
                    Credential::Basic { .. } => BASIC_CHALLENGE,
                    Credential::Bearer(_) => BEARER_CHALLENGE,
                    Credential::ClientCert(_) => continue,
                };
                if !challenges.contains(&c) {
                    challenges.push(c);
                }
            }
            ProxyError::Unauthenticated {
                reason: reason.to_string(),
                challenges,
            }
        }
        TenantError::Forbidden(m) | TenantError::IdentityForbidden { message: m, .. } => {
            ProxyError::Forbidden(m)
        }
        TenantError::MissingHeader => ProxyError::NoOrgId,
        TenantError::BadHeader(m) => ProxyError::BadTenantHeader(m),
    }
}

impl<B> tower::Service<Request<B>> for App
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let serving = self.serve(req, &Arc::new(ConnInfo::default()));
        Box::pin(async move { Ok(serving.await) })
    }
}

#[path = "app_serving.rs"]
mod serving;
use serving::{Dispatch, Forward, Later, Serving, Step, finish};

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
