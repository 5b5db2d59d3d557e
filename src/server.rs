//! Listeners, connections, the admin endpoints, reload and graceful shutdown.
//!
//! Each accepted connection is served by hyper's auto builder (HTTP/1.1, or HTTP/2 with prior
//! knowledge), under a header-read timeout so a slow client cannot hold a connection forever,
//! and counted against `server.max_connections`. On shutdown, readiness goes false first, the
//! listeners close, and connections get `server.shutdown_grace` to finish what they started.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};

use crate::app::{App, AppOptions, ConnInfo};
use crate::config::{self, Config, Overrides};
use crate::conn;
use crate::tls::PeerNames;

/// Where a config came from, so that it can be read again on reload.
#[derive(Debug, Clone, Default)]
pub struct ConfigSource {
    /// The file, or `None` for the built-in default.
    pub path: Option<PathBuf>,
    pub overrides: Overrides,
}

impl ConfigSource {
    pub fn load(&self) -> Result<Config, config::ConfigErrors> {
        config::load(self.path.as_deref(), &self.overrides)
    }
}

struct State {
    app: App,
    source: ConfigSource,
    draining: AtomicBool,
    /// Serializes reloads (SIGHUP and POST /-/reload may race).
    reload_lock: tokio::sync::Mutex<()>,
}

/// A bound, not yet running, tenantgate.
pub struct Server {
    state: Arc<State>,
    data: Vec<TcpListener>,
    admin: Vec<TcpListener>,
    max_connections: usize,
    header_read_timeout: Duration,
    idle_timeout: Duration,
    body_pace: conn::BodyPace,
    send_timeout: Duration,
    max_headers: usize,
    max_header_bytes: usize,
    shutdown_grace: Duration,
    shutdown_delay: Duration,
}

/// A handle to ask a running server to reload or to see its state.
#[derive(Clone)]
pub struct Handle {
    state: Arc<State>,
}

impl Handle {
    /// Re-reads the config source and swaps it in if valid; the old config keeps running if not.
    pub async fn reload(&self) -> Result<(), String> {
        reload(&self.state).await
    }

    pub fn app(&self) -> &App {
        &self.state.app
    }
}

async fn bind_all(addrs: &[SocketAddr], what: &str) -> std::io::Result<Vec<TcpListener>> {
    let mut out = Vec::new();
    for addr in addrs {
        let l = TcpListener::bind(addr).await.map_err(|e| {
            std::io::Error::new(e.kind(), format!("cannot listen on {addr} ({what}): {e}"))
        })?;
        out.push(l);
    }
    Ok(out)
}

impl Server {
    /// Binds every listener of the config. Port 0 picks a free port (see [`Server::data_addrs`]).
    pub async fn bind(
        config: Config,
        source: ConfigSource,
        options: AppOptions,
    ) -> std::io::Result<Server> {
        if !config.unread.is_empty() {
            return Err(std::io::Error::other(
                "a config checked with --syntax-only cannot be served",
            ));
        }
        let data = bind_all(&config.server.listen, "server.listen").await?;
        let admin = match &config.admin {
            Some(a) => bind_all(&a.listen, "admin.listen").await?,
            None => Vec::new(),
        };
        let max_connections = config.server.max_connections;
        let header_read_timeout = config.server.header_read_timeout;
        let idle_timeout = config.server.idle_timeout;
        let body_pace = conn::BodyPace {
            idle: config.server.body_read_timeout,
            min_rate: config.server.body_min_rate,
            grace: BODY_RATE_GRACE,
        };
        let send_timeout = config.server.send_timeout;
        let max_headers = config.server.max_headers;
        let max_header_bytes =
            usize::try_from(config.server.max_header_bytes).unwrap_or(usize::MAX);
        let shutdown_grace = config.server.shutdown_grace;
        let shutdown_delay = config.server.shutdown_delay;
        let app = App::new(config, options).map_err(std::io::Error::other)?;
        let state = Arc::new(State {
            app,
            source,
            draining: AtomicBool::new(false),
            reload_lock: tokio::sync::Mutex::new(()),
        });
        Ok(Server {
            state,
            data,
            admin,
            max_connections,
            header_read_timeout,
            idle_timeout,
            body_pace,
            send_timeout,
            max_headers,
            max_header_bytes,
            shutdown_grace,
            shutdown_delay,
        })
    }

    pub fn data_addrs(&self) -> Vec<SocketAddr> {
        self.data
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn admin_addrs(&self) -> Vec<SocketAddr> {
        self.admin
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    pub fn handle(&self) -> Handle {
        Handle {
            state: self.state.clone(),
        }
    }

    /// Serves until `shutdown` completes, then drains: readiness false, listeners closed,
    /// in-flight requests given `server.shutdown_grace` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout)
            // hyper answers 431 when the request head does not fit.
            .max_buf_size(self.max_header_bytes);
        if self.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            // Only when changed: a custom limit moves header parsing from the stack to the heap.
            builder.http1().max_headers(self.max_headers);
        }
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            // Fewer streams per connection than hyper's 200: max_requests_in_flight is the real cap.
            .max_concurrent_streams(100)
            // Pings find dead peers; an HTTP/2 connection otherwise never times out.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        let builder = Arc::new(builder);
        // Each connection holds a permit of its listener's semaphore until it is done, so the
        // drain waits for all permits to come back. The admin listener has its own permits and
        // stop signal: it keeps answering (readiness 503, metrics) while the data listeners
        // drain, and a flood of data connections cannot starve health probes.
        let limit = Arc::new(Semaphore::new(self.max_connections));
        let admin_limit = Arc::new(Semaphore::new(ADMIN_MAX_CONNECTIONS));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let limits = conn::Limits {
            header_read: self.header_read_timeout,
            idle: self.idle_timeout,
            body: self.body_pace,
            send: self.send_timeout,
        };

        for addr in self.data_addrs() {
            tracing::info!(listener = "data", addr = %addr, "listening");
        }
        for addr in self.admin_addrs() {
            tracing::info!(listener = "admin", addr = %addr, "listening");
        }
        let mut accept_tasks = Vec::new();
        for l in self.data {
            let ctx = Listener {
                role: Role::Data,
                state: self.state.clone(),
                builder: builder.clone(),
                limit: limit.clone(),
                stop: stop_rx.clone(),
                limits,
            };
            accept_tasks.push(tokio::spawn(accept_loop(l, ctx)));
        }
        let mut admin_tasks = Vec::new();
        for l in self.admin {
            let ctx = Listener {
                role: Role::Admin,
                state: self.state.clone(),
                builder: builder.clone(),
                limit: admin_limit.clone(),
                stop: admin_stop_rx.clone(),
                limits,
            };
            admin_tasks.push(tokio::spawn(accept_loop(l, ctx)));
        }

        shutdown.await;
        self.state.draining.store(true, Ordering::SeqCst);
        if !self.shutdown_delay.is_zero() {
            // Readiness is already 503; keep serving new connections until load balancers notice.
            tracing::info!(delay = %config::units::format_duration(self.shutdown_delay), "shutting down: not ready, still accepting for the shutdown delay");
            tokio::time::sleep(self.shutdown_delay).await;
        }
        tracing::info!(grace = %config::units::format_duration(self.shutdown_grace), "shutting down: no new connections, draining in-flight requests");
        let _ = stop_tx.send(true);
        for t in accept_tasks {
            let _ = t.await;
        }
        let all = u32::try_from(self.max_connections).unwrap_or(u32::MAX);
        match tokio::time::timeout(self.shutdown_grace, limit.acquire_many(all)).await {
            Ok(_) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!("shutdown grace period over; closing remaining connections"),
        }
        let _ = admin_stop_tx.send(true);
        for t in admin_tasks {
            let _ = t.await;
        }
        let _ = tokio::time::timeout(
            Duration::from_secs(1),
            admin_limit.acquire_many(ADMIN_MAX_CONNECTIONS as u32),
        )
        .await;
    }
}

/// What an accept loop needs to serve its connections.
struct Listener {
    role: Role,
    state: Arc<State>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limit: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    limits: conn::Limits,
}

/// How long a request body may arrive before `server.body_min_rate` applies: a client's first
/// seconds (TCP slow start, a TLS handshake just done) say little about its rate.
const BODY_RATE_GRACE: Duration = Duration::from_secs(10);

/// hyper's own HTTP/1 header count limit (parsed on the stack).
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Connections the admin listener serves at once.
const ADMIN_MAX_CONNECTIONS: usize = 64;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Data,
    Admin,
}

async fn accept_loop(listener: TcpListener, mut ctx: Listener) {
    loop {
        // Wait for a free connection slot before accepting, so excess connections queue in the
        // kernel backlog instead of being accepted and starved.
        let permit = tokio::select! {
            p = ctx.limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = ctx.stop.changed() => return,
        };
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = ctx.stop.changed() => return,
        };
        let (stream, remote) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Typically EMFILE: back off briefly instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        serve_connection(stream, remote, &ctx, permit);
    }
}

fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    ctx: &Listener,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let tls = match ctx.role {
        Role::Data => ctx.state.app.runtime().config.server.tls.clone(),
        Role::Admin => None,
    };
    let (role, state, builder, stop, limits) = (
        ctx.role,
        ctx.state.clone(),
        ctx.builder.clone(),
        ctx.stop.clone(),
        ctx.limits,
    );
    tokio::spawn(async move {
        let result = match tls {
            None => {
                let info = ConnInfo {
                    remote,
                    tls: false,
                    peer: None,
                };
                serve_stream(stream, info, role, &state, &builder, stop, limits).await
            }
            Some(tls) => {
                let Some((stream, peer)) = handshake(stream, &tls, remote).await else {
                    return;
                };
                let info = ConnInfo {
                    remote,
                    tls: true,
                    peer,
                };
                serve_stream(stream, info, role, &state, &builder, stop, limits).await
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, remote = %remote, "connection ended with an error");
        }
        drop(permit);
    });
}

/// The TLS handshake, under its own deadline; `None` (logged) if it fails or stalls.
async fn handshake(
    stream: TcpStream,
    tls: &crate::tls::ServerTls,
    remote: SocketAddr,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    Option<Arc<PeerNames>>,
)> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let stream = match tokio::time::timeout(tls.handshake_timeout, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(remote = %remote, error = %e, "TLS handshake failed");
            return None;
        }
        Err(_) => {
            tracing::debug!(remote = %remote, "TLS handshake timed out");
            return None;
        }
    };
    let peer = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| PeerNames::from_der(c))
        .map(Arc::new);
    Some((stream, peer))
}

/// Serves one connection, plain or TLS alike: protocol detection under the header-read
/// deadline, then HTTP/1 or HTTP/2 until [`conn::drive`] ends it.
async fn serve_stream<S>(
    mut stream: S,
    info: ConnInfo,
    role: Role,
    state: &Arc<State>,
    builder: &auto::Builder<TokioExecutor>,
    stop: watch::Receiver<bool>,
    limits: conn::Limits,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(prefix) = conn::read_preface(&mut stream, limits.header_read).await else {
        return Ok(());
    };
    // Lingering: the client reads our last answer even if it is still sending when we close.
    let io = TokioIo::new(conn::Replay::new(
        prefix,
        crate::discard::Lingering::new(conn::WriteDeadline::new(stream, limits.send)),
    ));
    let activity = Arc::new(AtomicU64::new(0));
    match role {
        Role::Data => {
            let svc = DataService {
                app: state.app.clone(),
                info: Arc::new(info),
                body_pace: limits.body,
                activity: activity.clone(),
            };
            conn::drive(
                builder.serve_connection(io, svc).into_owned(),
                stop,
                limits,
                activity,
            )
            .await
        }
        Role::Admin => {
            let svc = AdminService {
                state: state.clone(),
                activity: activity.clone(),
            };
            conn::drive(
                builder.serve_connection(io, svc).into_owned(),
                stop,
                limits,
                activity,
            )
            .await
        }
    }
}

/// The admin listener's service.
#[derive(Clone)]
struct AdminService {
    state: Arc<State>,
    activity: Arc<AtomicU64>,
}

impl hyper::service::Service<Request<Incoming>> for AdminService {
    type Response = Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.activity.store(conn::mono_ms(), Ordering::Relaxed);
        let state = self.state.clone();
        Box::pin(async move { Ok(admin(&state, req).await) })
    }
}

/// The data listener's service for one connection: every request carries the connection's
/// [`ConnInfo`] (peer address, TLS, client certificate names).
#[derive(Clone)]
struct DataService {
    app: App,
    info: Arc<ConnInfo>,
    body_pace: conn::BodyPace,
    /// When the last request on this connection started ([`conn::mono_ms`]).
    activity: Arc<AtomicU64>,
}

impl hyper::service::Service<Request<Incoming>> for DataService {
    type Response = Response<crate::app::ResponseBody>;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.activity.store(conn::mono_ms(), Ordering::Relaxed);
        // A body dropped unread by an early answer goes on being discarded, so that the client
        // gets the answer (see `discard`).
        let (parts, body) = req.into_parts();
        let body = conn::TimedBody::new(body, self.body_pace);
        let (body, hold) = if parts.version == http::Version::HTTP_2 {
            crate::discard::RequestBody::held(body)
        } else {
            let expects_continue = parts
                .headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            (
                crate::discard::RequestBody::new(body, expects_continue),
                None,
            )
        };
        let mut req = Request::from_parts(parts, body);
        req.extensions_mut().insert((*self.info).clone());
        let app = self.app.clone();
        Box::pin(async move {
            let resp = app.handle(req).await;
            if let Some(hold) = hold {
                hold.wait().await;
            }
            Ok(resp)
        })
    }
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The admin listener: tenantgate's own metrics, health and reload.
async fn admin(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            // Like Prometheus' own handler: OpenMetrics only for scrapers that ask for it.
            let wants_om = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            let m = state.app.metrics();
            if wants_om {
                text(StatusCode::OK, m.encode(), crate::telemetry::OPENMETRICS)
            } else {
                text(StatusCode::OK, m.encode_text(), crate::promapi::TEXT_FORMAT)
            }
        }
        (&Method::GET | &Method::HEAD, "/-/healthy") => {
            text(StatusCode::OK, "tenantgate is healthy.\n", PLAIN)
        }
        (&Method::GET | &Method::HEAD, "/-/ready") => {
            if state.draining.load(Ordering::SeqCst) {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "tenantgate is shutting down.\n",
                    PLAIN,
                );
            }
            let rt = state.app.runtime();
            let mut failing: Vec<&str> = rt
                .upstreams
                .values()
                .filter(|u| !u.is_healthy())
                .map(|u| u.settings.name.as_str())
                .collect();
            failing.sort_unstable();
            if failing.is_empty() {
                text(StatusCode::OK, "tenantgate is ready.\n", PLAIN)
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "not ready: health check failing for upstream(s) {}\n",
                        failing.join(", ")
                    ),
                    PLAIN,
                )
            }
        }
        (&Method::POST | &Method::PUT, "/-/reload") => match reload(state).await {
            Ok(()) => text(StatusCode::OK, "config reloaded\n", PLAIN),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to reload config: {e}\n"),
                PLAIN,
            ),
        },
        (_, "/metrics" | "/-/healthy" | "/-/ready" | "/-/reload") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
            PLAIN,
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /-/healthy, /-/ready or POST /-/reload\n",
            PLAIN,
        ),
    }
}

async fn reload(state: &State) -> Result<(), String> {
    let _guard = state.reload_lock.lock().await;
    let metrics = state.app.metrics().clone();
    // Files are read (config, certificates, secrets) off the runtime's workers.
    let source = state.source.clone();
    let loaded = tokio::task::spawn_blocking(move || source.load())
        .await
        .map_err(|e| format!("the reload task failed: {e}"));
    let result = match loaded {
        Ok(Ok(config)) => {
            let old = state.app.runtime();
            for key in old.config.start_only_changes(&config) {
                tracing::warn!(
                    key,
                    "changed, but it takes effect on restart only; the running value stays"
                );
            }
            state.app.swap(config)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(e),
    };
    metrics.config_loaded(result.is_ok());
    match &result {
        Ok(()) => tracing::info!("config reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "config reload failed; the previous config stays in use")
        }
    }
    result
}
