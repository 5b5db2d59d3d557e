//! The connections to one upstream: a stack of idle HTTP/1 connections, or one HTTP/2
//! connection shared by every request.
//!
//! Built directly on `hyper::client::conn` rather than hyper-util's generic pooled client: an
//! upstream is one fixed origin, so there is no pool key to hash, no per-request boxing and no
//! task spawned per request to wait for a connection to become idle again. Connections are
//! still dialled by hyper-util's `HttpConnector` wrapped in hyper-rustls (DNS, connect timeout,
//! TCP keepalive, TLS with SNI, ALPN and client certificates), so that part is unchanged.
//!
//! The one rule that matters for correctness: a request whose bytes may have reached the
//! upstream is never sent again. Only a request that hyper hands back unsent (the connection
//! was found closed before the request was written) is tried on another connection.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, StatusCode, Uri, Version, header};
use hyper::client::conn::{http1, http2};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::UpstreamBody;
use super::pooled_body::PooledBody;
use crate::body::BoxError;

/// What dials the upstream: TCP, then TLS for https origins.
pub(crate) type Connector = HttpsConnector<HttpConnector>;
type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
pub(crate) type H1Sender = http1::SendRequest<UpstreamBody>;
type H2Sender = http2::SendRequest<UpstreamBody>;

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be made (DNS, TCP, TLS or the HTTP/2 handshake): nothing was sent.
    Connect(BoxError),
    /// The request was (or may have been) written to a connection, and that failed.
    Request(hyper::Error),
}

/// One upstream's connections.
pub(crate) struct Pool {
    connector: Connector,
    /// What the connector dials: the upstream's scheme and authority.
    origin: Uri,
    scheme: Scheme,
    authority: Authority,
    /// The `Host` of every HTTP/1 request, computed once.
    host: HeaderValue,
    http2: bool,
    shared: Arc<Shared>,
}

/// The part of the pool that response bodies hold on to, to hand their connection back.
pub(crate) struct Shared {
    /// HTTP/1 connections ready for a request, the most recently used at the back (so the
    /// extra connections of a burst are the ones that sit idle long enough to be closed, and
    /// the ones closed first when more than `max_idle` come back).
    idle: Mutex<VecDeque<Idle>>,
    max_idle: usize,
    /// The HTTP/2 connection, for an `http2` upstream.
    h2: Mutex<Option<SharedH2>>,
    /// Held while an HTTP/2 connection is being made, so a burst makes one, not one each.
    h2_connecting: tokio::sync::Mutex<()>,
    idle_timeout: Duration,
    sweeping: AtomicBool,
}

struct Idle {
    tx: H1Sender,
    since: Instant,
}

struct SharedH2 {
    tx: H2Sender,
    last_used: Instant,
}

/// Pushes `item` as the most recently used of at most `max` items; returns the one that no
/// longer fits: the least recently used, or `item` itself when `max` is 0.
fn keep_newest<T>(items: &mut VecDeque<T>, max: usize, item: T) -> Option<T> {
    if max == 0 {
        return Some(item);
    }
    let out = if items.len() >= max {
        items.pop_front()
    } else {
        None
    };
    items.push_back(item);
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data under these locks stays consistent even if a holder panicked (a push or a pop).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The `Host` header for an origin: its host, and its port unless it is the scheme's default
/// (what clients send, and what virtual hosts match on).
fn host_header(origin: &Uri) -> Result<HeaderValue, String> {
    let host = origin.host().ok_or("the upstream URL has no host")?;
    let default_port = if origin.scheme() == Some(&Scheme::HTTPS) {
        443
    } else {
        80
    };
    let value = match origin.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host.to_owned(),
    };
    HeaderValue::from_str(&value).map_err(|e| format!("upstream host {value:?}: {e}"))
}

impl Pool {
    pub(crate) fn new(
        connector: Connector,
        origin: &Uri,
        http2: bool,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Result<Pool, String> {
        let scheme = origin.scheme().cloned().unwrap_or(Scheme::HTTP);
        let authority = origin
            .authority()
            .cloned()
            .ok_or("the upstream URL has no host")?;
        Ok(Pool {
            connector,
            origin: origin.clone(),
            scheme,
            authority,
            host: host_header(origin)?,
            http2,
            shared: Arc::new(Shared {
                idle: Mutex::new(VecDeque::new()),
                max_idle,
                h2: Mutex::new(None),
                h2_connecting: tokio::sync::Mutex::new(()),
                idle_timeout,
                sweeping: AtomicBool::new(false),
            }),
        })
    }

    /// Sends a request (its URI origin-form or absolute; only the path and query are used) and
    /// returns the response once its headers arrived, its body still streaming.
    ///
    /// A function returning one `async move` block, not an `async fn`: the block owns the pool
    /// and the request once (an `async fn` keeps its arguments twice, as given and moved into
    /// its body), and it is `'static`, so the request pipeline can build it before its own
    /// future and hold it in place. Every forwarded request's future holds this one.
    pub(crate) fn send(
        self: &Arc<Self>,
        mut req: Request<UpstreamBody>,
    ) -> impl Future<Output = Result<Response<PooledBody>, SendError>> + Send + use<> {
        let pool = self.clone();
        async move {
            if pool.http2 {
                // Boxed: HTTP/2's future is the larger one, and inline it would size every
                // HTTP/1 request's future too.
                return Box::pin(pool.send_h2(req)).await;
            }
            *req.version_mut() = Version::HTTP_11;
            if req.uri().scheme().is_some() {
                *req.uri_mut() = Uri::from(path_and_query(req.uri()));
            }
            req.headers_mut()
                .entry(header::HOST)
                .or_insert_with(|| pool.host.clone());
            loop {
                let (mut tx, fresh) = match pool.shared.take_idle() {
                    Some(tx) => (tx, false),
                    // Boxed: connecting is rare, and its future would otherwise make every
                    // request's future larger.
                    None => (Box::pin(pool.connect_h1()).await?, true),
                };
                match tx.try_send_request(req).await {
                    Ok(resp) => {
                        // A connection that switched protocols is no longer HTTP/1: never reused.
                        let back = (resp.status() != StatusCode::SWITCHING_PROTOCOLS)
                            .then(|| (tx, pool.shared.clone()));
                        return Ok(resp.map(|body| PooledBody::new(body, back)));
                    }
                    Err(mut e) => match e.take_message() {
                        // Handed back unsent: the idle connection had closed under us. Another
                        // one (or a new one) gets it; nothing reached the upstream.
                        Some(unsent) if !fresh => req = unsent,
                        _ => return Err(SendError::Request(e.into_error())),
                    },
                }
            }
        }
    }

    async fn send_h2(
        &self,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, SendError> {
        *req.version_mut() = Version::HTTP_2;
        if req.uri().scheme().is_none() {
            // HTTP/2 takes :scheme and :authority from the URI; the parts are shared, not copied.
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(self.scheme.clone());
            parts.authority = Some(self.authority.clone());
            parts.path_and_query = Some(path_and_query(req.uri()));
            if let Ok(uri) = Uri::from_parts(parts) {
                *req.uri_mut() = uri;
            }
        }
        let mut fresh = false;
        let mut tx = match self.shared.shared_h2() {
            Some(tx) => tx,
            None => {
                fresh = true;
                Box::pin(self.connect_h2()).await?
            }
        };
        loop {
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp.map(|body| PooledBody::new(body, None))),
                Err(mut e) => match e.take_message() {
                    Some(unsent) if !fresh => {
                        req = unsent;
                        fresh = true;
                        tx = Box::pin(self.connect_h2()).await?;
                    }
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    async fn dial(&self) -> Result<Io, SendError> {
        let io = self
            .connector
            .clone()
            .oneshot(self.origin.clone())
            .await
            .map_err(SendError::Connect)?;
        self.shared.start_sweeping();
        Ok(io)
    }

    async fn connect_h1(&self) -> Result<H1Sender, SendError> {
        let io = self.dial().await?;
        let (tx, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// The shared HTTP/2 connection: the live one, or a new one made by one request at a time.
    async fn connect_h2(&self) -> Result<H2Sender, SendError> {
        let _one_at_a_time = self.shared.h2_connecting.lock().await;
        if let Some(tx) = self.shared.shared_h2() {
            return Ok(tx);
        }
        let io = self.dial().await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(e.into()))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
            }
        });
        *lock(&self.shared.h2) = Some(SharedH2 {
            tx: tx.clone(),
            last_used: Instant::now(),
        });
        Ok(tx)
    }

    /// How many idle HTTP/1 connections are open, for tests.
    #[cfg(test)]
    pub(crate) fn idle_open(&self) -> usize {
        lock(&self.shared.idle)
            .iter()
            .filter(|i| !i.tx.is_closed())
            .count()
    }
}

/// The path and query of a request URI, `/` when it has none.
fn path_and_query(uri: &Uri) -> PathAndQuery {
    uri.path_and_query()
        .cloned()
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

impl Shared {
    /// The most recently used idle connection that is still open and not past the idle timeout.
    fn take_idle(&self) -> Option<H1Sender> {
        let now = Instant::now();
        let mut idle = lock(&self.idle);
        while let Some(top) = idle.pop_back() {
            if now.saturating_duration_since(top.since) >= self.idle_timeout {
                // Every connection in front of it has been idle longer still.
                idle.clear();
                return None;
            }
            // Ready when it went in; not ready now means the upstream closed it meanwhile.
            if top.tx.is_ready() {
                return Some(top.tx);
            }
        }
        None
    }

    /// Takes back a connection whose exchange is over and that wants its next request. Past
    /// `max_idle`, the least recently used idle connection is closed (NGINX's `keepalive`):
    /// dropping its sender ends the connection's task, which closes the socket.
    pub(crate) fn put(&self, tx: H1Sender) {
        let since = Instant::now();
        let closed = keep_newest(&mut lock(&self.idle), self.max_idle, Idle { tx, since });
        // Outside the lock: closing wakes the connection's task.
        drop(closed);
    }

    fn shared_h2(&self) -> Option<H2Sender> {
        let now = Instant::now();
        let mut slot = lock(&self.h2);
        match slot.as_mut() {
            Some(h2)
                if !h2.tx.is_closed()
                    && now.saturating_duration_since(h2.last_used) < self.idle_timeout =>
            {
                h2.last_used = now;
                Some(h2.tx.clone())
            }
            // Dropping the last handle lets the connection close once its streams are done.
            Some(_) => {
                *slot = None;
                None
            }
            None => None,
        }
    }

    /// Closes connections idle past the timeout, so they are closed by us before the upstream
    /// closes them (and do not sit open for nothing). Started with the first connection, and
    /// ends when the pool is dropped.
    fn start_sweeping(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        let every = (self.idle_timeout / 2).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                shared.sweep();
            }
        });
    }

    fn sweep(&self) {
        let now = Instant::now();
        let fresh = |since: Instant| now.saturating_duration_since(since) < self.idle_timeout;
        lock(&self.idle).retain(|i| i.tx.is_ready() && fresh(i.since));
        let mut h2 = lock(&self.h2);
        if h2
            .as_ref()
            .is_some_and(|h| h.tx.is_closed() || !fresh(h.last_used))
        {
            *h2 = None;
        }
    }
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
