//! Forwarding to an upstream: one connection pool per upstream ([`pool`]), bodies streamed
//! both ways.

pub mod headers;
mod pool;
mod pooled_body;

pub use pooled_body::PooledBody;

use std::error::Error as StdError;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::body::{BoxError, ProxyBody};
use crate::config::UpstreamSettings;
use crate::error::{ProxyError, UpstreamErrorKind};
use pool::{Pool, SendError};

/// The body type sent upstream.
pub type UpstreamBody = UnsyncBoxBody<Bytes, BoxError>;

/// Idle pooled connections are closed after this long (below Mimir's and NGINX's defaults, so
/// tenantgate closes first and never writes to a connection the upstream is closing).
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);

/// Reading the client's request body failed (a bad chunk, an aborted upload): the client's
/// fault, not the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("reading the request body from the client: {0}")]
pub struct ClientBodyError(pub BoxError);

/// The request body grew past the route's `max_request_body`.
#[derive(Debug, thiserror::Error)]
#[error("request body larger than {limit} bytes")]
pub struct BodyTooLarge {
    pub limit: u64,
}

pin_project_lite::pin_project! {
    /// A request body on its way upstream: fails once it exceeds `limit` bytes, and counts bytes
    /// into `seen` for metrics and the access log.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        limit: u64,
        total: u64,
        seen: Arc<AtomicU64>,
    }
}

impl<B> LimitedBody<B> {
    pub fn new(inner: B, limit: u64, seen: Arc<AtomicU64>) -> Self {
        LimitedBody {
            inner,
            limit,
            total: 0,
            seen,
        }
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    *this.total += data.len() as u64;
                    this.seen.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if *this.total > *this.limit {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge {
                            limit: *this.limit,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e.into())))))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// One upstream: its settings and its connection pool.
pub struct Upstream {
    pub settings: UpstreamSettings,
    /// Shared with the futures of the requests in flight (see [`Upstream::forward`]).
    pool: Arc<Pool>,
    /// Result of the last health check; true when the upstream has none.
    healthy: AtomicBool,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("name", &self.settings.name)
            .finish()
    }
}

pin_project_lite::pin_project! {
    /// One forwarded exchange until the upstream's response headers (see [`Upstream::forward`]).
    pub(crate) struct Forwarding<F> {
        upstream: Arc<Upstream>,
        #[pin]
        sending: tokio::time::Timeout<F>,
    }
}

impl<F> Future for Forwarding<F>
where
    F: Future<Output = Result<Response<PooledBody>, SendError>>,
{
    type Output = Result<Response<ProxyBody>, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        this.sending
            .poll(cx)
            .map(|sent| this.upstream.answered(sent))
    }
}

/// The client TLS config of an upstream: its `tls` block, the system roots for a plain https
/// URL, or an unused empty one for http (reading the system store costs time at every load).
fn tls_config(settings: &UpstreamSettings) -> Result<rustls::ClientConfig, String> {
    if let Some(t) = &settings.tls {
        return Ok((*t.config).clone());
    }
    if settings.origin.scheme_str() == Some("https") {
        return crate::tls::UpstreamTls::system_default().map(|c| (*c).clone());
    }
    rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .map(|b| {
            b.with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        })
        .map_err(|e| format!("TLS setup: {e}"))
}

impl Upstream {
    pub fn new(settings: UpstreamSettings) -> Result<Self, String> {
        Self::with_idle_timeout(settings, POOL_IDLE_TIMEOUT)
    }

    /// [`Upstream::new`] with another idle timeout for pooled connections (tests).
    pub(crate) fn with_idle_timeout(
        settings: UpstreamSettings,
        idle_timeout: Duration,
    ) -> Result<Self, String> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(settings.timeouts.connect));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let builder =
            hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls_config(&settings)?);
        let builder = match settings.tls.as_ref().and_then(|t| t.server_name.clone()) {
            Some(name) => {
                let name = rustls::pki_types::ServerName::try_from(name)
                    .map_err(|e| format!("server_name: {e}"))?;
                builder
                    .https_or_http()
                    .with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
            }
            None => builder.https_or_http(),
        };
        let connector = if settings.http2 {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_http1().wrap_connector(http)
        };
        let pool = Pool::new(
            connector,
            &settings.origin,
            settings.http2,
            idle_timeout,
            settings.max_idle_connections,
        )?;
        let healthy = AtomicBool::new(settings.health_check.is_none());
        Ok(Upstream {
            settings,
            pool: Arc::new(pool),
            healthy,
        })
    }

    /// Whether the last health check passed (always true without a `health_check`).
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Probes the upstream once: GET of the health-check path, healthy on 2xx.
    pub async fn check_health(&self) -> Result<(), String> {
        let Some(hc) = &self.settings.health_check else {
            return Ok(());
        };
        let uri = self.uri_for(&hc.path, None).map_err(|e| e.to_string())?;
        let req = Request::get(uri)
            .body(
                http_body_util::Empty::<Bytes>::new()
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(hc.timeout, self.pool.send(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => Ok(()),
            Ok(Ok(resp)) => Err(format!("GET {} answered {}", hc.path, resp.status())),
            Ok(Err(e)) => Err(self.classify(&e).to_string()),
            Err(_) => Err(format!(
                "GET {} timed out after {}",
                hc.path,
                crate::config::units::format_duration(hc.timeout)
            )),
        }
    }

    /// Runs the health check every interval for as long as the upstream is in use (the task
    /// holds only a weak reference). Does nothing without a `health_check` or outside a runtime.
    pub fn spawn_health_checks(self: &Arc<Self>, metrics: Arc<crate::telemetry::Metrics>) {
        let Some(hc) = self.settings.health_check.clone() else {
            return;
        };
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let weak = Arc::downgrade(self);
        rt.spawn(async move {
            let mut tick = tokio::time::interval(hc.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut first = true;
            loop {
                tick.tick().await;
                let Some(up) = weak.upgrade() else { return };
                let result = up.check_health().await;
                let ok = result.is_ok();
                let was = up.healthy.swap(ok, Ordering::Relaxed);
                let name: Arc<str> = Arc::from(up.settings.name.as_str());
                metrics.upstream_up.get_or_create(&crate::telemetry::UpstreamLabels { upstream: name }).set(i64::from(ok));
                match (&result, was || first) {
                    (Ok(()), _) if !was => tracing::info!(upstream = %up.settings.name, "health check passing"),
                    (Err(e), true) => tracing::warn!(upstream = %up.settings.name, error = %e, "health check failing: not ready"),
                    (Err(e), false) => tracing::debug!(upstream = %up.settings.name, error = %e, "health check still failing"),
                    _ => {}
                }
                first = false;
            }
        });
    }

    /// The upstream request URI (origin-form: path and query) for a rewritten path and the
    /// original query.
    pub fn uri_for(&self, path: &str, query: Option<&str>) -> Result<Uri, ProxyError> {
        let base = &self.settings.base_path;
        let mut pq =
            String::with_capacity(base.len() + path.len() + query.map_or(0, |q| q.len() + 1));
        pq.push_str(base);
        pq.push_str(path);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        // From a `Bytes`, the path is checked but not copied again.
        let pq = PathAndQuery::from_maybe_shared(Bytes::from(pq))
            .map_err(|e| ProxyError::Internal(format!("bad upstream path: {e}")))?;
        Ok(Uri::from(pq))
    }

    /// [`Upstream::uri_for`] the client's request: when the forwarded path is the one the
    /// client sent and there is no base path, the client's path and query are reused as they
    /// are (shared, not copied).
    pub fn uri_for_request(&self, path: &str, client: &Uri) -> Result<Uri, ProxyError> {
        if self.settings.base_path.is_empty()
            && client.path() == path
            && let Some(pq) = client.path_and_query()
        {
            return Ok(Uri::from(pq.clone()));
        }
        self.uri_for(path, client.query())
    }

    /// Sends a prepared request (URI and headers already set; the URI's path and query are
    /// what is sent) and returns the response with its body streaming. Only the wait for
    /// response headers has a deadline.
    pub async fn send(
        &self,
        req: Request<UpstreamBody>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let timeout = self.settings.timeouts.response_header;
        self.answered(tokio::time::timeout(timeout, self.pool.send(req)).await)
    }

    /// [`Upstream::send`] as a `'static` future of a known type, for the request pipeline: it
    /// holds the request once, inside the pool's future, and is built before the request's own
    /// future so that it can live in it without being moved or copied again.
    pub(crate) fn forward(
        self: &Arc<Self>,
        req: Request<UpstreamBody>,
    ) -> Forwarding<impl Future<Output = Result<Response<PooledBody>, SendError>> + Send + use<>>
    {
        let timeout = self.settings.timeouts.response_header;
        Forwarding {
            upstream: self.clone(),
            sending: tokio::time::timeout(timeout, self.pool.send(req)),
        }
    }

    /// What the caller gets for the pool's answer (or its deadline passing).
    fn answered(
        &self,
        sent: Result<Result<Response<PooledBody>, SendError>, tokio::time::error::Elapsed>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let timeouts = self.settings.timeouts;
        let resp = match sent {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(self.classify(&e)),
            Err(_) => {
                return Err(ProxyError::Upstream {
                    upstream: self.settings.name.clone(),
                    kind: UpstreamErrorKind::Timeout,
                    detail: format!(
                        "no response headers within {}",
                        crate::config::units::format_duration(timeouts.response_header)
                    ),
                });
            }
        };
        if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            // An upgrade tenantgate never asked for (it strips `Upgrade`): passing it on would
            // be a bare 101 on HTTP/1.1 and an illegal response on HTTP/2.
            return Err(ProxyError::Upstream {
                upstream: self.settings.name.clone(),
                kind: UpstreamErrorKind::Reset,
                detail: "answered 101 Switching Protocols; tenantgate does not tunnel upgrades"
                    .to_owned(),
            });
        }
        let (mut parts, body) = resp.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(
            parts,
            ProxyBody::upstream(body, timeouts.idle),
        ))
    }

    /// Maps a failed exchange to what the caller is told, walking the error's causes.
    fn classify(&self, err: &SendError) -> ProxyError {
        let (first, connect): (&(dyn StdError + 'static), bool) = match err {
            SendError::Connect(e) => (&**e, true),
            SendError::Request(e) => (e, false),
        };
        let mut source = Some(first);
        let mut kind = if connect {
            UpstreamErrorKind::Connect
        } else {
            UpstreamErrorKind::Reset
        };
        let mut detail = None;
        while let Some(e) = source {
            if let Some(too_large) = e.downcast_ref::<BodyTooLarge>() {
                return ProxyError::BodyTooLarge {
                    limit: too_large.limit,
                };
            }
            if let Some(client) = e.downcast_ref::<ClientBodyError>() {
                if client
                    .0
                    .downcast_ref::<crate::conn::BodyTooSlow>()
                    .is_some()
                {
                    return ProxyError::ClientTooSlow(client.0.to_string());
                }
                return ProxyError::ClientBody(client.0.to_string());
            }
            if e.downcast_ref::<rustls::Error>().is_some() {
                kind = UpstreamErrorKind::Tls;
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                if io.kind() == std::io::ErrorKind::TimedOut {
                    kind = UpstreamErrorKind::Timeout;
                }
                // An io::Error's `source()` skips the error it wraps, so look inside: that is
                // where the rustls::Error is (hyper-rustls wraps tokio-rustls's io::Error).
                if let Some(inner) = io.get_ref() {
                    detail = Some(e.to_string());
                    source = Some(inner);
                    continue;
                }
            }
            detail = Some(e.to_string());
            source = e.source();
        }
        // The innermost cause says most ("connection refused", "connection reset by peer").
        let detail = match (connect, detail) {
            (true, Some(d)) => format!("cannot connect: {d}"),
            (true, None) => "cannot connect".to_owned(),
            (false, Some(d)) => d,
            (false, None) => first.to_string(),
        };
        ProxyError::Upstream {
            upstream: self.settings.name.clone(),
            kind,
            detail,
        }
    }
}

/// The body of a request that has none (most GETs): a box of nothing allocates nothing.
pub fn empty_body() -> UpstreamBody {
    http_body_util::Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes a request body for the upstream client, with a size limit and a byte counter.
pub fn upstream_body<B>(body: B, limit: u64, seen: Arc<AtomicU64>) -> UpstreamBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    LimitedBody::new(body, limit, seen).boxed_unsync()
}
