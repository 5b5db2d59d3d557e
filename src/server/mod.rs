//! Listeners, connections, reload and graceful shutdown; the admin endpoints are in [`admin`].
//!
//! Each accepted connection is served by hyper's HTTP/1.1 or HTTP/2 server (prior knowledge, or
//! ALPN `h2` over TLS), as its first bytes say, under a header-read timeout so a slow client cannot hold a connection forever,
//! and counted against `server.max_connections`. On shutdown, readiness goes false first, the
//! listeners close, and connections get `server.shutdown_grace` to finish what they started.

mod admin;
mod listen;
mod parked;

use listen::{
    ADMIN_MAX_CONNECTIONS, BODY_RATE_GRACE, HYPER_DEFAULT_MAX_HEADERS, Listener, Protocols, Role,
    accept_loop,
};

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::app::{App, AppOptions};
use crate::config::{self, Config, Overrides};
use crate::conn;
use crate::conns::Registry;

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
    /// Data connections that presented a client certificate (closed when a reload stops
    /// trusting it), and every admin connection (the idlest closed to make room).
    cert_conns: Arc<Registry>,
    admin_conns: Arc<Registry>,
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
            cert_conns: Arc::default(),
            admin_conns: Arc::default(),
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
        // The preface check (`conn::read_preface`) already knows the protocol, so each
        // connection goes straight to hyper's HTTP/1 or HTTP/2 server, not through a sniffer.
        let mut h1 = hyper::server::conn::http1::Builder::new();
        // The data listener's HTTP/1 connections have their header-read deadline kept by
        // `drive` (from `park::Parking`, which knows when a head is awaited): hyper's own
        // timer is a boxed sleep registered and dropped every request.
        h1.header_read_timeout(None)
            // hyper answers 431 when the request head does not fit.
            .max_buf_size(self.max_header_bytes);
        if self.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            // Only when changed: a custom limit moves header parsing from the stack to the heap.
            h1.max_headers(self.max_headers);
        }
        // The admin listener's connections do not park: hyper keeps their deadline.
        let mut h1_admin = h1.clone();
        h1_admin
            .timer(TokioTimer::new())
            .header_read_timeout(self.header_read_timeout);
        let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(self.max_header_bytes).unwrap_or(u32::MAX))
            // Fewer streams per connection than hyper's 200: max_requests_in_flight is the real cap.
            .max_concurrent_streams(100)
            // Pings find dead peers; an HTTP/2 connection otherwise never times out.
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(20));
        let builder = Arc::new(Protocols { h1, h1_admin, h2 });
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
        let crowd = Arc::new(crate::park::Crowd::new(
            limit.clone(),
            self.max_connections,
            crate::park::PARK_ABOVE,
        ));
        for l in self.data {
            let ctx = Listener {
                role: Role::Data,
                state: self.state.clone(),
                builder: builder.clone(),
                limit: limit.clone(),
                stop: stop_rx.clone(),
                limits,
                crowd: crowd.clone(),
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
                crowd: crowd.clone(),
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
    if result.is_ok() {
        close_untrusted(state).await;
    }
    match &result {
        Ok(()) => tracing::info!("config reloaded"),
        Err(e) => {
            tracing::error!(error = %e, "config reload failed; the previous config stays in use")
        }
    }
    result
}

/// Closes the data connections whose client certificate the config now in use would refuse at
/// the handshake (another client CA, or client certificates no longer asked for).
async fn close_untrusted(state: &State) {
    if state.cert_conns.is_empty() {
        return;
    }
    let tls = state.app.runtime().config.server.tls.clone();
    let registry = state.cert_conns.clone();
    // Signature checks, one per connection: off the runtime's workers.
    let closed = tokio::task::spawn_blocking(move || {
        registry.close_untrusted(|chain| tls.as_ref().is_some_and(|t| t.trusts(chain)))
    })
    .await
    .unwrap_or(0);
    if closed > 0 {
        tracing::warn!(
            connections = closed,
            "closing connections whose client certificate the reloaded config no longer trusts"
        );
    }
}
