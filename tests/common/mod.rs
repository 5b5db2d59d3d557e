//! Shared pieces of the loopback tests: a recording upstream, a running tenantgate, clients.
#![allow(dead_code)]

pub mod otlp;
pub mod pki;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tenantgate::app::AppOptions;
use tenantgate::config::{Overrides, from_yaml};
use tenantgate::server::{ConfigSource, Handle, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

pub type TestBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body_len: u64,
    pub body_sha256: String,
}

impl Seen {
    /// Every value of a header, in order.
    pub fn all(&self, name: &str) -> Vec<String> {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect()
    }
}

/// An in-process upstream that records every request and answers by path:
/// - `/status/<code>`: that status, a small body and remote-write style headers;
/// - `/slow`: response headers after 3 s;
/// - `/bytes/<n>`: a deterministic streamed body of n bytes;
/// - `/remote-read`: the Content-Type/Encoding of a streamed remote read;
/// - `/hop`: hop-by-hop response headers;
/// - `/empty`: 200 with Content-Length: 0;
/// - anything else: 200 `{"status":"success","data":[]}`.
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn pattern_byte(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// A body of `len` deterministic bytes in 64 KiB chunks, produced as it is read (never held
/// in memory whole).
pub fn pattern_body(len: u64) -> TestBody {
    PatternBody { pos: 0, len }.boxed()
}

struct PatternBody {
    pos: u64,
    len: u64,
}

impl http_body::Body for PatternBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.pos >= self.len {
            return std::task::Poll::Ready(None);
        }
        let n = (64 * 1024).min(self.len - self.pos);
        let start = self.pos;
        let data: Vec<u8> = (start..start + n).map(pattern_byte).collect();
        self.pos += n;
        std::task::Poll::Ready(Some(Ok(Frame::data(Bytes::from(data)))))
    }
}

pub fn pattern_sha256(len: u64) -> String {
    let mut h = Sha256::new();
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut i = 0;
    while i < len {
        buf.clear();
        let end = (i + 64 * 1024).min(len);
        buf.extend((i..end).map(pattern_byte));
        h.update(&buf);
        i = end;
    }
    hex(&h.finalize())
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Reads a request body to its end (or to the error that ends it: the proxy gave up on the
/// request) and returns its length and SHA-256 in hex.
pub async fn body_digest(mut body: Incoming) -> (u64, String) {
    let mut h = Sha256::new();
    let mut len = 0u64;
    while let Some(Ok(f)) = body.frame().await {
        if let Some(d) = f.data_ref() {
            len += d.len() as u64;
            h.update(d);
        }
    }
    (len, hex(&h.finalize()))
}

async fn upstream_handler(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<TestBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let (len, sha256) = body_digest(body).await;
    let path = parts.uri.path().to_owned();
    seen.lock().expect("seen lock").push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        version: parts.version,
        headers: parts.headers.clone(),
        body_len: len,
        body_sha256: sha256,
    });
    let full = |b: &'static str| {
        Full::new(Bytes::from_static(b.as_bytes()))
            .map_err(|e| match e {})
            .boxed()
    };
    let mut resp = Response::new(full(r#"{"status":"success","data":[]}"#));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    if let Some(code) = path.strip_prefix("/status/") {
        let code: u16 = code.parse().unwrap_or(500);
        *resp.status_mut() =
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        *resp.body_mut() = full("out of order sample\n");
        resp.headers_mut().insert(
            "content-type",
            "text/plain; charset=utf-8".parse().expect("static"),
        );
        resp.headers_mut().insert(
            "x-prometheus-remote-write-samples-written",
            "0".parse().expect("static"),
        );
        resp.headers_mut()
            .insert("retry-after", "7".parse().expect("static"));
    } else if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(3)).await;
    } else if let Some(n) = path.strip_prefix("/bytes/") {
        let n: u64 = n.parse().unwrap_or(0);
        *resp.body_mut() = pattern_body(n);
        resp.headers_mut().insert(
            "content-type",
            "application/octet-stream".parse().expect("static"),
        );
    } else if let Some((_, ms)) = path.split_once("/drip/") {
        // 10 chunks of 1 KiB spread over `ms` milliseconds: a long-running stream.
        let ms: u64 = ms.parse().unwrap_or(1000);
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(ms / 10)).await;
                if tx.send(Bytes::from(vec![b'x'; 1024])).await.is_err() {
                    return;
                }
            }
        });
        *resp.body_mut() = ChannelBody { rx }.boxed();
    } else if path == "/remote-read" {
        resp.headers_mut().insert(
            "content-type",
            "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"
                .parse()
                .expect("static"),
        );
        resp.headers_mut()
            .insert("content-encoding", "snappy".parse().expect("static"));
    } else if path == "/hop" {
        resp.headers_mut()
            .insert("connection", "x-secret".parse().expect("static"));
        resp.headers_mut()
            .insert("x-secret", "1".parse().expect("static"));
        resp.headers_mut()
            .insert("keep-alive", "timeout=5".parse().expect("static"));
        resp.headers_mut()
            .insert("x-end-to-end", "kept".parse().expect("static"));
    } else if path == "/empty" {
        *resp.body_mut() = full("");
        resp.headers_mut()
            .insert("content-length", "0".parse().expect("static"));
    }
    Ok(resp)
}

struct ChannelBody {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.rx.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Self::start_on(listener).await
    }

    pub async fn start_on(listener: TcpListener) -> Upstream {
        let addr = listener.local_addr().expect("upstream addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (tx, mut rx) = oneshot::channel::<()>();
        let seen2 = seen.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                    _ = &mut rx => return,
                };
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| upstream_handler(req, seen.clone()));
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            seen,
            stop: Some(tx),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen lock").clone()
    }

    pub fn last(&self) -> Seen {
        self.requests().pop().expect("the upstream saw no request")
    }
}

/// A tenantgate serving on an ephemeral port; stopped when dropped.
pub struct Gate {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub handle: Handle,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl Gate {
    /// Starts tenantgate with a YAML config; `{UPSTREAM}` is replaced by `upstream_url`.
    pub async fn start(yaml: &str, upstream_url: &str) -> Gate {
        let yaml = yaml.replace("{UPSTREAM}", upstream_url);
        let config = from_yaml(&yaml, "test.yaml", &Overrides::default())
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        Gate::serve(config, ConfigSource::default()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Starts config from a file, so that it can be reloaded.
    pub async fn start_file(path: &std::path::Path) -> Gate {
        let source = ConfigSource {
            path: Some(path.to_path_buf()),
            overrides: Overrides::default(),
        };
        let config = source
            .load()
            .unwrap_or_else(|e| panic!("test config invalid:\n{e}"));
        Gate::serve(config, source).await
    }

    async fn serve(config: tenantgate::config::Config, source: ConfigSource) -> Gate {
        let server = Server::bind(config, source, AppOptions { access_log: false })
            .await
            .expect("bind tenantgate");
        let addr = server.data_addrs()[0];
        let admin = server.admin_addrs().first().copied();
        let handle = server.handle();
        let (tx, rx) = oneshot::channel::<()>();
        let done = tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Gate {
            addr,
            admin,
            handle,
            stop: Some(tx),
            done: Some(done),
        }
    }

    /// Asks it to shut down, without waiting (as SIGTERM does).
    pub fn begin_stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }

    /// Waits until the drain that [`Gate::begin_stop`] started has finished.
    pub async fn stopped(mut self) {
        if let Some(d) = self.done.take() {
            let _ = d.await;
        }
    }

    /// Stops it and waits for the drain to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(d) = self.done.take() {
            let _ = d.await;
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// The config most tests use: the sidecar shape, plus a push route and a small-body route.
/// [`SIDECAR`] with `extra` (indented `server:` keys, each line ending in a newline) added
/// to its `server:` section.
pub fn sidecar_with_server(extra: &str) -> String {
    SIDECAR.replace(
        "server:\n  listen: 127.0.0.1:0\n",
        &format!("server:\n  listen: 127.0.0.1:0\n{extra}"),
    )
}

pub const SIDECAR: &str = r#"
server:
  listen: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
upstreams:
  mimir:
    url: {UPSTREAM}
    timeouts: { connect: 1s, response_header: 1s, idle: 2s }
routes:
  - name: sidecar
    match: { path_prefix: /prometheus }
    upstream: mimir
    tenant: team-a
    prometheus:
      external_labels: { cluster: loopback, tenant: team-a }
  - name: push
    match: { path: /api/v1/push, methods: [POST] }
    upstream: mimir
    tenant: team-a
  - name: small
    match: { path_prefix: /small }
    upstream: mimir
    tenant: team-a
    max_request_body: 1KiB
  - name: rest
    match: { path_prefix: / }
    upstream: mimir
    tenant: team-b
"#;

pub fn client()
-> hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, TestBody>
{
    hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http()
}

pub fn empty() -> TestBody {
    Full::new(Bytes::new()).map_err(|e| match e {}).boxed()
}

pub fn bytes(b: impl Into<Bytes>) -> TestBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

/// Sends a request and collects the response.
pub async fn send(req: Request<TestBody>) -> (StatusCode, HeaderMap, Bytes) {
    let resp = client()
        .request(req)
        .await
        .expect("request through tenantgate");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("response body").to_bytes();
    (parts.status, parts.headers, body)
}

pub async fn get(url: &str) -> (StatusCode, HeaderMap, Bytes) {
    send(Request::get(url).body(empty()).expect("request")).await
}

/// Writes raw bytes to `addr` and reads the whole response (the request should say
/// `Connection: close`). For requests a well-behaved client library would refuse to send.
pub async fn raw(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `f` every 50 ms until it returns true or `secs` pass.
pub async fn eventually<F, Fut>(secs: u64, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while tokio::time::Instant::now() < deadline {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {secs}s waiting for: {what}");
}

/// The path of a real binary the tests need: fails under CI=true when it is missing, otherwise
/// returns None with a loud message so the caller can skip.
pub fn required_binary(name: &str) -> Option<std::path::PathBuf> {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/usr/local/sbin"] {
        let p = std::path::Path::new(dir).join(name);
        if p.exists() {
            return Some(p);
        }
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{name} is required under CI=true: apt-get install -y prometheus nginx");
    }
    eprintln!(
        "SKIPPED: {name} not found (apt-get install -y prometheus nginx); this test fails under CI=true"
    );
    None
}

pub fn temp_dir(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tenantgate-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// A child process killed (and reaped) when dropped, so a failing test leaves nothing behind.
pub struct ChildGuard {
    pub child: std::process::Child,
    pub name: String,
    pub log: std::path::PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr into `log`.
    pub fn spawn(
        name: &str,
        mut cmd: std::process::Command,
        log: std::path::PathBuf,
    ) -> ChildGuard {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        let child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildGuard {
            child,
            name: name.to_owned(),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails with the child's log if it has exited.
    pub fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited with {status}:\n{}", self.name, self.log_text());
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback port (bound then released; callers retry if it is taken meanwhile).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_for_port(port: u16, child: &mut ChildGuard) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        child.assert_running();
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never listened on {port}:\n{}",
            child.name,
            child.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What curl got: status 0 when it saw none.
pub struct Curl {
    pub status: u16,
    pub headers: String,
    pub body: String,
    pub exit: i32,
    pub stderr: String,
}

/// Runs curl against tenantgate; `args` come before the URL.
pub async fn curl(args: &[&str], url: &str) -> Curl {
    let curl = required_binary("curl").expect("callers check for curl first");
    let dir = temp_dir("curl");
    let out = tokio::process::Command::new(curl)
        .args([
            "-s",
            "-S",
            "--max-time",
            "20",
            "-D",
            &dir.join("h").display().to_string(),
            "-o",
            &dir.join("b").display().to_string(),
            "-w",
            "%{http_code}",
        ])
        .args(args)
        .arg(url)
        .output()
        .await
        .expect("run curl");
    let c = Curl {
        status: String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0),
        headers: std::fs::read_to_string(dir.join("h")).unwrap_or_default(),
        body: std::fs::read_to_string(dir.join("b")).unwrap_or_default(),
        exit: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let _ = std::fs::remove_dir_all(dir);
    c
}
