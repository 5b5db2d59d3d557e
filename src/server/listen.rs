//! Accepting connections and serving each one: the TLS handshake, protocol detection, then
//! HTTP/1 or HTTP/2 until [`drive::drive`] ends it (the data listener's HTTP/1 through
//! [`parked`]).

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::{Request, Response, header};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};

use super::{State, admin, parked};
use crate::app::{App, ConnInfo, ResponseBody};
use crate::body::BoxError;
use crate::conn;
use crate::conns::{Chain, Registration};
use crate::drive;
use crate::park::{Crowd, InFlight, Parking, ReadReady, Tracked};
use crate::tls::PeerNames;

/// hyper's servers for the two protocols, set up once from the config.
pub(super) struct Protocols {
    /// The data listener's: no header-read timer of hyper's (`drive` keeps that deadline).
    pub(super) h1: hyper::server::conn::http1::Builder,
    pub(super) h1_admin: hyper::server::conn::http1::Builder,
    pub(super) h2: hyper::server::conn::http2::Builder<TokioExecutor>,
}

/// What an accept loop needs to serve its connections.
pub(super) struct Listener {
    pub(super) role: Role,
    pub(super) state: Arc<State>,
    pub(super) builder: Arc<Protocols>,
    pub(super) limit: Arc<Semaphore>,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) limits: conn::Limits,
    /// How many connections the listener has open, for parking ([`crate::park`]).
    pub(super) crowd: Arc<Crowd>,
}

/// How long a request body may arrive before `server.body_min_rate` applies: a client's first
/// seconds (TCP slow start, a TLS handshake just done) say little about its rate.
pub(super) const BODY_RATE_GRACE: Duration = Duration::from_secs(10);

/// hyper's own HTTP/1 header count limit (parsed on the stack).
pub(super) const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// Connections the admin listener serves at once.
pub(super) const ADMIN_MAX_CONNECTIONS: usize = 64;

/// How long a new admin connection waits for the one closed to make room.
const ADMIN_ROOM_WAIT: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Data,
    Admin,
}

impl Role {
    /// The `listener` field of log lines.
    fn name(self) -> &'static str {
        match self {
            Role::Data => "data",
            Role::Admin => "admin",
        }
    }
}

pub(super) async fn accept_loop(listener: TcpListener, ctx: Listener) {
    // Shared by the listener's connections: a connection's task, kept for as long as it is
    // open, holds one pointer to what they all use rather than copies of it.
    let mut stop = ctx.stop.clone();
    let ctx = Arc::new(ctx);
    if ctx.role == Role::Admin {
        return admin_accept_loop(listener, ctx, stop).await;
    }
    loop {
        // Wait for a free connection slot before accepting, so excess connections queue in the
        // kernel backlog instead of being accepted and starved.
        let permit = tokio::select! {
            p = ctx.limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let Some((stream, remote)) = accept(&listener, ctx.role, &mut stop).await else {
            return;
        };
        serve_connection(stream, remote, &ctx, permit);
    }
}

/// The next connection, or `None` once the listener is told to stop. A failed accept (typically
/// EMFILE) is logged and retried after a short back-off instead of spinning.
async fn accept(
    listener: &TcpListener,
    role: Role,
    stop: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr)> {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return None,
        };
        match accepted {
            Ok((stream, remote)) => {
                let _ = stream.set_nodelay(true);
                return Some((stream, remote));
            }
            Err(e) => {
                tracing::warn!(listener = role.name(), error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The admin listener accepts at once and, when all its slots are taken, closes the connection
/// idle for longest to make room: a probe must not wait behind sockets that only sit there.
async fn admin_accept_loop(
    listener: TcpListener,
    ctx: Arc<Listener>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let Some((stream, remote)) = accept(&listener, ctx.role, &mut stop).await else {
            return;
        };
        let permit = match ctx.limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                ctx.state.admin_conns.close_idlest();
                // An idle connection closes at once; one finishing a request (a scrape) within
                // moments. If none frees a slot in time, the newcomer is refused instead.
                match tokio::time::timeout(ADMIN_ROOM_WAIT, ctx.limit.clone().acquire_owned()).await
                {
                    Ok(Ok(p)) => p,
                    Ok(Err(_)) => return,
                    Err(_) => {
                        tracing::warn!(listener = "admin", remote = %remote, "every admin connection is busy; refusing a new one");
                        continue;
                    }
                }
            }
        };
        serve_connection(stream, remote, &ctx, permit);
    }
}

fn serve_connection(
    stream: TcpStream,
    remote: SocketAddr,
    ctx: &Arc<Listener>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    // Boxed: the TLS settings are a hundred bytes a plain connection's task need not hold.
    let tls = match ctx.role {
        Role::Data => {
            let runtime = ctx.state.app.runtime();
            runtime.config.server.tls.clone().map(Box::new)
        }
        Role::Admin => None,
    };
    let (l, stop) = (ctx.clone(), ctx.stop.clone());
    let activity = Arc::new(AtomicU64::new(0));
    // Admin connections are all in their registry; a data connection joins its registry only
    // if it presents a client certificate, so plain traffic pays no lock.
    let mut registration: Option<Registration> = match l.role {
        Role::Admin => Some(l.state.admin_conns.register(activity.clone())),
        Role::Data => None,
    };
    tokio::spawn(async move {
        let result = match tls {
            None => {
                let conn = Conn::new(remote, None, activity, registration.as_ref());
                serve_stream(stream, conn, &l, stop).await
            }
            // Boxed: the handshake and the TLS session are kilobytes a plain connection's task
            // need not be sized for. `None` when the connection ended before being served.
            Some(tls) => match Box::pin(async {
                let (stream, peer, chain) = handshake(stream, &tls, remote).await?;
                if let Some(chain) = chain {
                    let r = l.state.cert_conns.register(activity.clone());
                    r.set_chain(chain.clone());
                    // A reload may have swapped the trust during the handshake, after its sweep
                    // of the registry: check against what is current now that this one is in it.
                    if !still_trusted(&l.state, &tls, &chain) {
                        tracing::info!(remote = %remote, "client certificate no longer trusted after a reload; closing");
                        return None;
                    }
                    registration = Some(r);
                }
                let conn = Conn::new(remote, Some(peer), activity, registration.as_ref());
                Some(serve_stream(stream, conn, &l, stop).await)
            })
            .await
            {
                Some(result) => result,
                None => return,
            },
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, remote = %remote, "connection ended with an error");
        }
        drop(registration);
        drop(permit);
    });
}

/// Whether the data listener's current TLS config still accepts `chain`, which `used` accepted.
fn still_trusted(state: &State, used: &crate::tls::ServerTls, chain: &Chain) -> bool {
    match &state.app.runtime().config.server.tls {
        Some(now) if Arc::ptr_eq(&now.config, &used.config) => true,
        Some(now) => now.trusts(chain),
        None => false,
    }
}

/// One accepted connection, as [`serve_stream`] needs it: small, as it is held for the
/// connection's whole life.
struct Conn {
    info: Arc<ConnInfo>,
    /// [`conn::mono_ms`] when its last request started, 0 before the first.
    activity: Arc<AtomicU64>,
    /// Notified when the connection should close ([`crate::conns`]).
    close: Arc<Notify>,
}

impl Conn {
    /// `tls` is `Some(client certificate names)` for a TLS connection; a connection in no
    /// registry gets a close signal nobody sends.
    fn new(
        remote: SocketAddr,
        tls: Option<Option<Arc<PeerNames>>>,
        activity: Arc<AtomicU64>,
        registration: Option<&Registration>,
    ) -> Conn {
        Conn {
            info: Arc::new(ConnInfo::new(remote, tls.is_some(), tls.flatten())),
            activity,
            close: registration.map_or_else(Arc::default, Registration::close_signal),
        }
    }
}

/// The TLS handshake, under its own deadline; `None` (logged) if it fails or stalls.
async fn handshake(
    stream: TcpStream,
    tls: &crate::tls::ServerTls,
    remote: SocketAddr,
) -> Option<(
    tokio_rustls::server::TlsStream<TcpStream>,
    Option<Arc<PeerNames>>,
    Option<Chain>,
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
    let certs = stream.get_ref().1.peer_certificates();
    let peer = certs
        .and_then(|c| c.first())
        .and_then(|c| PeerNames::from_der(c))
        .map(Arc::new);
    let chain = certs.filter(|c| !c.is_empty()).map(Chain::from);
    Some((stream, peer, chain))
}

/// Serves one connection, plain or TLS alike: protocol detection under the header-read
/// deadline, then HTTP/1 or HTTP/2 until [`drive::drive`] ends it (the data listener's
/// HTTP/1 through [`parked`]).
async fn serve_stream<S>(
    mut stream: S,
    conn: Conn,
    l: &Listener,
    stop: watch::Receiver<bool>,
) -> Result<(), BoxError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    let Conn {
        info,
        activity,
        close,
    } = conn;
    let limits = &l.limits;
    let prefix = tokio::select! {
        p = conn::read_preface(&mut stream, limits.header_read) => p,
        // Told to close before saying anything: nothing to finish.
        _ = close.notified() => None,
    };
    let Some(prefix) = prefix else {
        return Ok(());
    };
    let h2 = prefix.as_ref() == conn::H2_PREFACE;
    // Lingering: the client reads our last answer even if it is still sending when we close.
    let stream = crate::discard::Lingering::new(conn::WriteDeadline::new(stream, limits.send));
    let data = |parking: Option<Arc<Parking>>| {
        DataService::new(
            l.state.app.clone(),
            info,
            limits.body,
            activity.clone(),
            parking,
        )
    };
    if let (Role::Data, false) = (l.role, h2) {
        // Nearly every connection: driven inline, and parked when idle on a crowded listener.
        let parking = Parking::new();
        let service = data(Some(parking.clone()));
        let io = crate::park::Watched::new(stream, parking.clone());
        let cx = parked::Serving {
            h1: &l.builder.h1,
            stop,
            limits,
            activity: &activity,
            close: &close,
            crowd: &l.crowd,
        };
        return parked::serve(prefix, io, service, parking, cx).await;
    }
    let io = TokioIo::new(conn::Replay::new(prefix, stream));
    let mut stop = stop;
    let mut tick = drive::ticker(limits);
    macro_rules! drive {
        ($conn:expr) => {
            async {
                let conn = std::pin::pin!($conn);
                let watch = drive::Watch {
                    stop: &mut stop,
                    limits: *limits,
                    activity: &activity,
                    close: &close,
                    tick: &mut tick,
                    parking: None,
                };
                drive::drive(conn, watch).await.map(|_| ())
            }
        };
    }
    // One arm per protocol and role: each connection type is its own future type, boxed so
    // that their larger futures (an HTTP/2 connection's state is several KiB) do not size the
    // task of every connection.
    let admin = |activity: &Arc<AtomicU64>| admin::AdminService {
        state: l.state.clone(),
        activity: activity.clone(),
    };
    let builder = &l.builder;
    let result = match (l.role, h2) {
        (Role::Data, _) => Box::pin(drive!(builder.h2.serve_connection(io, data(None)))).await,
        (Role::Admin, false) => {
            Box::pin(drive!(
                builder.h1_admin.serve_connection(io, admin(&activity))
            ))
            .await
        }
        (Role::Admin, true) => {
            Box::pin(drive!(builder.h2.serve_connection(io, admin(&activity)))).await
        }
    };
    result.map_err(Into::into)
}

/// The data listener's service for one connection: every request carries the connection's
/// [`ConnInfo`] (peer address, TLS, client certificate names).
#[derive(Clone)]
pub(super) struct DataService {
    app: App,
    info: Arc<ConnInfo>,
    body_pace: conn::BodyPace,
    /// When the last request on this connection started ([`conn::mono_ms`]).
    activity: Arc<AtomicU64>,
    /// For an HTTP/1 connection, parked when idle: its responses count requests out.
    parking: Option<Arc<Parking>>,
}

impl DataService {
    pub(super) fn new(
        app: App,
        info: Arc<ConnInfo>,
        body_pace: conn::BodyPace,
        activity: Arc<AtomicU64>,
        parking: Option<Arc<Parking>>,
    ) -> Self {
        DataService {
            app,
            info,
            body_pace,
            activity,
            parking,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for DataService {
    type Response = Response<Tracked<crate::app::ResponseBody>>;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.activity.store(conn::mono_ms(), Ordering::Relaxed);
        let (body_in_flight, in_flight) = match &self.parking {
            Some(p) => {
                let (body, response) = p.request_started();
                (Some(body), Some(response))
            }
            None => (None, None),
        };
        // A body dropped unread by an early answer goes on being discarded, so that the client
        // gets the answer (see `discard`).
        let (parts, body) = req.into_parts();
        let body = Tracked::new(conn::TimedBody::new(body, self.body_pace), body_in_flight);
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
        let serving = self.app.serve(Request::from_parts(parts, body), &self.info);
        match hold {
            // Not an async block: that would hold `serving` twice (as captured, and moved
            // into the await).
            None => Box::pin(Respond { serving, in_flight }),
            Some(hold) => Box::pin(async move {
                let resp = serving.await;
                hold.wait().await;
                Ok(resp.map(|body| Tracked::new(body, in_flight)))
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request's response, its body tracked for parking.
    struct Respond<F> {
        #[pin]
        serving: F,
        in_flight: Option<InFlight>,
    }
}

impl<F> Future for Respond<F>
where
    F: Future<Output = Response<ResponseBody>>,
{
    type Output = Result<Response<Tracked<ResponseBody>>, std::convert::Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let resp = ready!(this.serving.poll(cx));
        let in_flight = this.in_flight.take();
        Poll::Ready(Ok(resp.map(|body| Tracked::new(body, in_flight))))
    }
}
