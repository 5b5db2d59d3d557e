//! The pool against in-process upstreams on loopback: connections counted on the upstream's
//! side, so reuse, replacement and the no-retry rule are seen from where they matter.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{Barrier, mpsc, watch};

use crate::body::ChannelBody;
use crate::config::{Timeouts, UpstreamSettings};
use crate::error::{ProxyError, UpstreamErrorKind};
use crate::forward::Upstream;

type TestBody = BoxBody<Bytes, Infallible>;

/// What the upstream saw, and the hooks tests steer it with.
#[derive(Default)]
struct State {
    accepted: AtomicUsize,
    closed: AtomicUsize,
    requests: AtomicUsize,
    /// `/wait` answers once this many requests wait at once.
    barrier: std::sync::Mutex<Option<Arc<Barrier>>>,
    /// The rest of the latest `/slow` body: the test sends it, or drops it to end the body.
    slow_rest: std::sync::Mutex<Option<mpsc::Sender<Bytes>>>,
}

impl State {
    fn count(&self, which: &AtomicUsize) -> usize {
        which.load(SeqCst)
    }
}

/// An upstream (HTTP/1, h2c, or either over TLS by ALPN) that counts its connections.
struct TestUpstream {
    addr: SocketAddr,
    state: Arc<State>,
    /// Sending `true` closes every connection gracefully (at once when idle).
    close: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response, Infallible> {
    state.requests.fetch_add(1, SeqCst);
    let host = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    let text = format!("{:?} {} host={host}", req.version(), req.uri());
    match req.uri().path() {
        "/slow" => {
            let (tx, body) = ChannelBody::pair();
            let _ = tx.send(Bytes::from_static(b"first")).await;
            *state.slow_rest.lock().unwrap() = Some(tx);
            Ok(http::Response::new(body.boxed()))
        }
        "/wait" => {
            let barrier = state.barrier.lock().unwrap().clone();
            if let Some(b) = barrier {
                b.wait().await;
            }
            Ok(http::Response::new(Full::new(Bytes::from(text)).boxed()))
        }
        _ => Ok(http::Response::new(Full::new(Bytes::from(text)).boxed())),
    }
}

type Response = http::Response<TestBody>;

impl TestUpstream {
    async fn start(tls: Option<tokio_rustls::TlsAcceptor>) -> TestUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let (close, close_rx) = watch::channel(false);
        let st = state.clone();
        let accept = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let conn = st.accepted.fetch_add(1, SeqCst) + 1;
                let (st, mut close_rx, tls) = (st.clone(), close_rx.clone(), tls.clone());
                // A close asked for earlier is not for this connection.
                close_rx.mark_unchanged();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(tcp).await {
                                serve(stream, st.clone(), conn, close_rx).await;
                            }
                        }
                        None => serve(tcp, st.clone(), conn, close_rx).await,
                    }
                    st.closed.fetch_add(1, SeqCst);
                });
            }
        });
        TestUpstream {
            addr,
            state,
            close,
            accept,
        }
    }

    fn settings(&self, http2: bool) -> UpstreamSettings {
        settings(&format!("http://{}", self.addr), http2)
    }
}

/// Serves one connection, the `conn`-th accepted, which every response names in `x-conn`.
async fn serve<I>(io: I, state: Arc<State>, conn: usize, mut close: watch::Receiver<bool>)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let svc = service_fn(move |req| {
        let state = state.clone();
        async move {
            let mut resp = handle(state, req).await?;
            resp.headers_mut()
                .insert("x-conn", http::HeaderValue::from(conn));
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = close.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn settings(url: &str, http2: bool) -> UpstreamSettings {
    UpstreamSettings {
        name: "test".into(),
        origin: url.parse().unwrap(),
        base_path: String::new(),
        http2,
        timeouts: Timeouts {
            connect: Duration::from_secs(10),
            response_header: Duration::from_secs(30),
            idle: Duration::from_secs(30),
        },
        max_idle_connections: crate::config::DEFAULT_MAX_IDLE_CONNECTIONS,
        health_check: None,
        tls: None,
    }
}

fn request(up: &Upstream, path: &str) -> Request<super::UpstreamBody> {
    let mut req = Request::new(Empty::new().map_err(|e| match e {}).boxed_unsync());
    *req.uri_mut() = up.uri_for(path, None).unwrap();
    req
}

/// A GET, its body read to the end.
async fn get(up: &Upstream, path: &str) -> Result<(StatusCode, String), ProxyError> {
    let resp = up.send(request(up, path)).await?;
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// A GET answered 200, and then `idle` connections in the pool. A connection goes back once
/// its task has asked for the next request; with the connection's task on another thread that
/// can come a moment after the body ended, so tests that count connections wait for it.
async fn get_ok(up: &Upstream, path: &str, idle: usize) {
    assert_eq!(get(up, path).await.unwrap().0, 200);
    eventually("the connection back in the pool", || {
        up.pool.idle_open() == idle
    })
    .await;
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "waited 20 s for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn sequential_requests_share_one_connection_origin_form_with_the_host() {
    let upstream = TestUpstream::start(None).await;
    let mut s = upstream.settings(false);
    s.base_path = "/prefix".into();
    let up = Upstream::new(s).unwrap();
    for _ in 0..5 {
        let (status, text) = get(&up, "/api/v1/query?query=up").await.unwrap();
        assert_eq!(status, 200);
        let want = format!(
            "HTTP/1.1 /prefix/api/v1/query?query=up host={}",
            upstream.addr
        );
        assert_eq!(text, want);
        eventually("the connection back in the pool", || {
            up.pool.idle_open() == 1
        })
        .await;
    }
    // An absolute URI (as `tenantgate migrate` sends) goes out origin-form as well.
    let mut req = request(&up, "/x");
    *req.uri_mut() = format!("http://{}/y?z=1", upstream.addr).parse().unwrap();
    let body = up.send(req).await.unwrap().into_body().collect().await;
    let text = String::from_utf8(body.unwrap().to_bytes().to_vec()).unwrap();
    assert!(text.starts_with("HTTP/1.1 /y?z=1 "), "{text}");
    assert_eq!(upstream.state.count(&upstream.state.accepted), 1);
    assert_eq!(upstream.state.count(&upstream.state.requests), 6);
}

#[test]
fn the_client_path_and_query_are_reused_when_nothing_changes_them() {
    let up = Upstream::new(settings("http://127.0.0.1:9", false)).unwrap();
    let client: http::Uri = "/api/v1/labels?match[]=up".parse().unwrap();
    assert_eq!(
        up.uri_for_request("/api/v1/labels", &client).unwrap(),
        "/api/v1/labels?match[]=up"
    );
    assert_eq!(
        up.uri_for_request("/prometheus/api/v1/labels", &client)
            .unwrap(),
        "/prometheus/api/v1/labels?match[]=up"
    );
    let mut s = settings("http://127.0.0.1:9", false);
    s.base_path = "/base".into();
    let up = Upstream::new(s).unwrap();
    assert_eq!(
        up.uri_for_request("/api/v1/labels", &client).unwrap(),
        "/base/api/v1/labels?match[]=up"
    );
}

#[test]
fn the_host_header_leaves_out_default_ports_only() {
    for (url, host) in [
        ("http://mimir:80", "mimir"),
        ("http://mimir:8080", "mimir:8080"),
        ("https://mimir:443", "mimir"),
        ("https://mimir:80", "mimir:80"),
        ("http://[::1]:9009", "[::1]:9009"),
    ] {
        assert_eq!(super::host_header(&url.parse().unwrap()).unwrap(), host);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_with_a_body_in_flight_is_not_reused_and_an_abandoned_one_is_closed() {
    let upstream = TestUpstream::start(None).await;
    let st = &upstream.state;
    let up = Upstream::new(upstream.settings(false)).unwrap();
    let slow = up.send(request(&up, "/slow")).await.unwrap();
    let mut slow = slow.into_body();
    let first = slow.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "first");
    // The first connection is still carrying that body: this request needs another.
    get_ok(&up, "/", 1).await;
    assert_eq!(st.count(&st.accepted), 2);
    let rest = st.slow_rest.lock().unwrap().take().unwrap();
    rest.send(Bytes::from_static(b"rest")).await.unwrap();
    drop(rest);
    let tail = slow.collect().await.unwrap().to_bytes();
    assert_eq!(tail, "rest");
    // Both connections are idle now and serve what follows.
    eventually("both connections idle", || up.pool.idle_open() == 2).await;
    for _ in 0..4 {
        get_ok(&up, "/", 2).await;
    }
    assert_eq!(st.count(&st.accepted), 2);

    // A body dropped half-way: its connection is closed, not put back.
    let abandoned = up.send(request(&up, "/slow")).await.unwrap();
    let mut abandoned = abandoned.into_body();
    abandoned.frame().await.unwrap().unwrap();
    drop(abandoned);
    eventually("the abandoned connection closed", || {
        st.count(&st.closed) == 1
    })
    .await;
    st.slow_rest.lock().unwrap().take();
    for _ in 0..3 {
        get_ok(&up, "/", 1).await;
    }
    assert_eq!(st.count(&st.accepted), 2);
    assert_eq!(up.pool.idle_open(), 1);
}

#[tokio::test]
async fn an_idle_connection_the_upstream_closed_is_replaced_without_an_error() {
    let upstream = TestUpstream::start(None).await;
    let st = &upstream.state;
    let up = Upstream::new(upstream.settings(false)).unwrap();
    get_ok(&up, "/", 1).await;
    upstream.close.send(true).unwrap();
    eventually("the upstream closed its idle connection", || {
        st.count(&st.closed) == 1
    })
    .await;
    eventually("the pool saw it close", || up.pool.idle_open() == 0).await;
    let (status, _) = get(&up, "/")
        .await
        .expect("no error for a stale connection");
    assert_eq!(status, 200);
    assert_eq!(st.count(&st.accepted), 2);
    assert_eq!(st.count(&st.requests), 2);
}

/// A raw upstream whose first connection answers one request, then reads the second and dies
/// without answering; later connections answer everything. Returns (address, connections
/// accepted, requests read).
async fn dying_upstream() -> (SocketAddr, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (accepted, requests) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (acc, reqs) = (accepted.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let first_connection = acc.fetch_add(1, SeqCst) == 0;
            let reqs = reqs.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut on_this = 0;
                loop {
                    let mut chunk = [0u8; 4096];
                    match tcp.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        buf.drain(..end + 4);
                        reqs.fetch_add(1, SeqCst);
                        on_this += 1;
                        if first_connection && on_this == 2 {
                            return; // the request arrived; the upstream dies before answering
                        }
                        let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                        if tcp.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, accepted, requests)
}

#[tokio::test]
async fn a_request_the_upstream_received_before_dying_gets_502_and_is_never_resent() {
    let (addr, accepted, requests) = dying_upstream().await;
    let up = Upstream::new(settings(&format!("http://{addr}"), false)).unwrap();
    assert_eq!(
        get(&up, "/one").await.unwrap(),
        (StatusCode::OK, "ok".into())
    );
    eventually("the connection back in the pool", || {
        up.pool.idle_open() == 1
    })
    .await;
    // Sent on the pooled connection, which the upstream then drops: the bytes went out, so
    // the request is answered 502 and not tried again (a retry would be answered 200).
    let err = get(&up, "/two").await.unwrap_err();
    match &err {
        ProxyError::Upstream { kind, .. } => assert_eq!(*kind, UpstreamErrorKind::Reset),
        other => panic!("expected an upstream error, got {other:?}"),
    }
    assert_eq!(err.status().0, StatusCode::BAD_GATEWAY);
    assert_eq!(requests.load(SeqCst), 2);
    // The next request gets a new connection; none was opened for a retry in between.
    assert_eq!(get(&up, "/three").await.unwrap().0, 200);
    assert_eq!(accepted.load(SeqCst), 2);
    assert_eq!(requests.load(SeqCst), 3);
}

#[tokio::test]
async fn a_refused_connection_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let up = Upstream::new(settings(&format!("http://{addr}"), false)).unwrap();
    match get(&up, "/").await.unwrap_err() {
        ProxyError::Upstream { kind, detail, .. } => {
            assert_eq!(kind, UpstreamErrorKind::Connect);
            assert!(detail.starts_with("cannot connect: "), "{detail}");
        }
        other => panic!("expected an upstream error, got {other:?}"),
    }
}

/// `n` requests to `/wait` at once, which the upstream answers only when all `n` are there.
async fn concurrent(upstream: &TestUpstream, up: &Arc<Upstream>, n: usize) -> Vec<String> {
    *upstream.state.barrier.lock().unwrap() = Some(Arc::new(Barrier::new(n)));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let up = up.clone();
            tokio::spawn(async move { get(&up, "/wait").await })
        })
        .collect();
    let mut texts = Vec::new();
    for t in tasks {
        let (status, text) = t.await.unwrap().unwrap();
        assert_eq!(status, 200);
        texts.push(text);
    }
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_open_connections_that_are_reused_afterwards() {
    let upstream = TestUpstream::start(None).await;
    let st = &upstream.state;
    let up = Arc::new(Upstream::new(upstream.settings(false)).unwrap());
    concurrent(&upstream, &up, 4).await;
    assert_eq!(st.count(&st.accepted), 4);
    eventually("four idle connections", || up.pool.idle_open() == 4).await;
    for _ in 0..8 {
        get_ok(&up, "/", 4).await;
    }
    assert_eq!(st.count(&st.accepted), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_idle_connections_the_least_recently_used_are_closed() {
    let upstream = TestUpstream::start(None).await;
    let st = &upstream.state;
    let mut s = upstream.settings(false);
    s.max_idle_connections = 2;
    let up = Arc::new(Upstream::new(s).unwrap());
    // A burst needs five connections; only two of them stay once it is over.
    concurrent(&upstream, &up, 5).await;
    assert_eq!(st.count(&st.accepted), 5);
    eventually("three connections closed", || st.count(&st.closed) == 3).await;
    assert_eq!(up.pool.idle_open(), 2);
    for _ in 0..4 {
        get_ok(&up, "/", 2).await;
    }
    assert_eq!(st.count(&st.accepted), 5);
}

#[tokio::test]
async fn the_connection_that_came_back_last_stays_and_the_older_one_is_closed() {
    let upstream = TestUpstream::start(None).await;
    let st = &upstream.state;
    let mut s = upstream.settings(false);
    s.max_idle_connections = 1;
    let up = Upstream::new(s).unwrap();
    // Which connection answered a GET of `/`, once it is back in the pool.
    let conn_of_get = async || {
        let resp = up.send(request(&up, "/")).await.unwrap();
        let conn = resp.headers()["x-conn"].to_str().unwrap().to_owned();
        resp.into_body().collect().await.unwrap();
        eventually("the connection back", || up.pool.idle_open() == 1).await;
        conn
    };
    let slow = up.send(request(&up, "/slow")).await.unwrap();
    assert_eq!(slow.headers()["x-conn"], "1");
    // Connection 1 carries the body of `/slow`: this GET needs connection 2, which goes idle.
    assert_eq!(conn_of_get().await, "2");
    // The body of `/slow` ends: connection 1 comes back, and the older idle one (2) is closed.
    drop(st.slow_rest.lock().unwrap().take());
    slow.into_body().collect().await.unwrap();
    eventually("the older idle connection closed", || {
        st.count(&st.closed) == 1
    })
    .await;
    assert_eq!(conn_of_get().await, "1");
    assert_eq!(st.count(&st.accepted), 2);
    assert_eq!(st.count(&st.closed), 1);
}

#[test]
fn the_least_recently_used_makes_room() {
    let mut items = std::collections::VecDeque::from([1, 2]);
    assert_eq!(super::keep_newest(&mut items, 3, 3), None);
    assert_eq!(super::keep_newest(&mut items, 3, 4), Some(1));
    assert_eq!(items, [2, 3, 4]);
    assert_eq!(super::keep_newest(&mut items, 0, 5), Some(5));
    assert_eq!(items, [2, 3, 4]);
}

#[tokio::test]
async fn max_idle_connections_0_dials_every_request() {
    let upstream = TestUpstream::start(None).await;
    let st = &upstream.state;
    let mut s = upstream.settings(false);
    s.max_idle_connections = 0;
    let up = Upstream::new(s).unwrap();
    for n in 1..=3 {
        assert_eq!(get(&up, "/").await.unwrap().0, 200);
        eventually("the connection closed", || st.count(&st.closed) == n).await;
        assert_eq!(up.pool.idle_open(), 0);
    }
    assert_eq!(st.count(&st.accepted), 3);
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let upstream = TestUpstream::start(None).await;
    let st = &upstream.state;
    let up =
        Upstream::with_idle_timeout(upstream.settings(false), Duration::from_millis(200)).unwrap();
    assert_eq!(get(&up, "/").await.unwrap().0, 200);
    // Nothing but the pool's idle timeout closes it.
    eventually("the idle connection closed", || st.count(&st.closed) == 1).await;
    assert_eq!(up.pool.idle_open(), 0);
    assert_eq!(get(&up, "/").await.unwrap().0, 200);
    assert_eq!(st.count(&st.accepted), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_share_one_connection_h2c() {
    let upstream = TestUpstream::start(None).await;
    let up = Arc::new(Upstream::new(upstream.settings(true)).unwrap());
    let texts = concurrent(&upstream, &up, 3).await;
    let want = format!("HTTP/2.0 http://{}/wait host=-", upstream.addr);
    assert!(texts.iter().all(|t| *t == want), "{texts:?}");
    assert_eq!(get(&up, "/").await.unwrap().0, 200);
    assert_eq!(upstream.state.count(&upstream.state.accepted), 1);
}

/// A CA file and a TLS acceptor whose certificate names only `localhost`, offering h2 and
/// HTTP/1.1 by ALPN.
fn tls_upstream(dir: &std::path::Path) -> (std::path::PathBuf, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    (ca_file, tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

#[tokio::test]
async fn over_tls_the_server_name_is_checked_and_alpn_picks_the_protocol() {
    /// Removes the certificates' directory, even when an assertion fails.
    struct TempDir(std::path::PathBuf);
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir =
        TempDir(std::env::temp_dir().join(format!("tenantgate-pool-tls-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let (ca_file, acceptor) = tls_upstream(&dir.0);
    let upstream = TestUpstream::start(Some(acceptor)).await;
    let url = format!("https://127.0.0.1:{}", upstream.addr.port());
    for (http2, version) in [(false, "HTTP/1.1"), (true, "HTTP/2.0")] {
        let mut s = settings(&url, http2);
        let tls = crate::tls::UpstreamTls::load(
            Some(ca_file.clone()),
            None,
            None,
            Some("localhost".into()),
            false,
        );
        s.tls = Some(tls.unwrap());
        let up = Upstream::new(s).unwrap();
        for _ in 0..2 {
            let (status, text) = get(&up, "/q").await.unwrap();
            assert_eq!(status, 200);
            assert!(text.starts_with(version), "{text}");
            // HTTP/2's one connection is shared, never idle in the HTTP/1 stack.
            let idle = usize::from(!http2);
            eventually("the connection back in the pool", || {
                up.pool.idle_open() == idle
            })
            .await;
        }
    }
    // One connection per upstream, reused.
    assert_eq!(upstream.state.count(&upstream.state.accepted), 2);
    // Without server_name the certificate does not match 127.0.0.1: a TLS error.
    let mut s = settings(&url, false);
    s.tls = Some(crate::tls::UpstreamTls::load(Some(ca_file), None, None, None, false).unwrap());
    let up = Upstream::new(s).unwrap();
    match get(&up, "/q").await.unwrap_err() {
        ProxyError::Upstream { kind, detail, .. } => {
            assert_eq!(kind, UpstreamErrorKind::Tls, "{detail}")
        }
        other => panic!("expected an upstream error, got {other:?}"),
    }
}
