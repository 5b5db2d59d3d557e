//! The end-to-end harness: free ports, temp dirs, child processes that cannot outlive a test, the
//! Mimir stand-in (a real Prometheus behind a real NGINX that enforces `X-Scope-OrgID` the way
//! Mimir does), tenantgate in-process, and a small HTTP client.
//!
//! Every wait is a poll against a deadline; every child is killed and reaped in `Drop`, so a
//! failing or panicking test leaves nothing running. Temp dirs are removed when a test passes and
//! kept (with their logs) when it fails.

use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use tenantgate::app::AppOptions;
use tenantgate::config::Overrides;
use tenantgate::server::{ConfigSource, Server};

/// Pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(100);
/// How long a child server gets to become ready (2 cores, tests running two at a time).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How many times a child is started on fresh ports when it dies during start-up (port clash).
const START_ATTEMPTS: u32 = 3;
/// Upper bound on any single HTTP exchange made by the tests.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// ---------------------------------------------------------------------------------------------
// Binaries

/// The real programs the suite runs.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub prometheus: PathBuf,
    pub promtool: PathBuf,
    pub nginx: PathBuf,
}

/// `TENANTGATE_E2E_<NAME>` (e.g. `TENANTGATE_E2E_NGINX=/opt/nginx/sbin/nginx`) names the binary
/// explicitly; otherwise it is looked up on PATH and in the usual system directories.
fn find_binary(name: &str) -> Option<PathBuf> {
    let var = format!("TENANTGATE_E2E_{}", name.to_ascii_uppercase());
    if let Some(p) = std::env::var_os(&var) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    // nginx lives in sbin, which is not on every user's PATH.
    dirs.extend(
        ["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"]
            .iter()
            .map(PathBuf::from),
    );
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

impl Binaries {
    /// Finds prometheus, promtool and nginx. When one is missing the test fails under `CI=true`
    /// and is skipped, loudly, anywhere else (`None`).
    pub fn require(test: &str) -> Option<Binaries> {
        let found: Vec<(&str, Option<PathBuf>)> = ["prometheus", "promtool", "nginx"]
            .into_iter()
            .map(|n| (n, find_binary(n)))
            .collect();
        let missing: Vec<&str> = found
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(n, _)| *n)
            .collect();
        if !missing.is_empty() {
            let msg = format!(
                "e2e test `{test}` needs {} on PATH, in /usr/sbin or /usr/bin, or named by \
                 TENANTGATE_E2E_<NAME> (missing: {})",
                "prometheus, promtool and nginx",
                missing.join(", ")
            );
            if in_ci() {
                panic!("{msg}. CI=true, so a missing binary is a failure, not a skip.");
            }
            eprintln!(
                "\n!!!!!!!! SKIPPED: {msg}. Install them to run the end-to-end suite. !!!!!!!!\n"
            );
            return None;
        }
        let mut paths = found.into_iter().filter_map(|(_, p)| p);
        Some(Binaries {
            prometheus: paths.next()?,
            promtool: paths.next()?,
            nginx: paths.next()?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Ports, temp dirs, deadlines

/// A port that was free a moment ago. Callers retry the whole start if the child cannot bind it.
pub fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| format!("cannot bind 127.0.0.1:0 to find a free port: {e}"))?;
    let port = l
        .local_addr()
        .map_err(|e| format!("local_addr of a fresh listener: {e}"))?
        .port();
    Ok(port)
}

/// A directory of its own under the system temp dir; removed on drop unless the test failed.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(label: &str) -> Result<TempDir, String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = std::env::temp_dir().join(format!(
            "tenantgate-e2e-{label}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path)
            .map_err(|e| format!("cannot create temp dir {}: {e}", path.display()))?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates a subdirectory.
    pub fn sub(&self, name: &str) -> Result<PathBuf, String> {
        let p = self.path.join(name);
        std::fs::create_dir_all(&p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
        Ok(p)
    }

    /// Writes a file and returns its path.
    pub fn write(&self, name: &str, contents: &[u8]) -> Result<PathBuf, String> {
        let p = self.path.join(name);
        std::fs::write(&p, contents).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        Ok(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "e2e: test failed; logs and data kept in {}",
                self.path.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A deadline for a polled condition.
pub struct Deadline {
    what: String,
    timeout: Duration,
    at: Instant,
}

impl Deadline {
    pub fn new(what: impl Into<String>, timeout: Duration) -> Self {
        Deadline {
            what: what.into(),
            timeout,
            at: Instant::now() + timeout,
        }
    }

    /// Waits a moment before the next attempt, or fails with the last attempt's error when the
    /// time is up.
    pub async fn retry(&self, last_error: &str) -> Result<(), String> {
        if Instant::now() >= self.at {
            return Err(format!(
                "{} did not happen within {:?}; last attempt: {last_error}",
                self.what, self.timeout
            ));
        }
        tokio::time::sleep(POLL).await;
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

fn open_log(path: &Path) -> Result<File, String> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open log {}: {e}", path.display()))
}

fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// A child process with its output in files; killed and reaped on drop.
pub struct Process {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Process {
    /// Starts `cmd` with stdout and stderr appended to `<dir>/<name>.{stdout,stderr}.log`.
    pub fn spawn(name: &str, dir: &Path, cmd: &mut Command) -> Result<Process, String> {
        let stdout = dir.join(format!("{name}.stdout.log"));
        let stderr = dir.join(format!("{name}.stderr.log"));
        cmd.current_dir(dir)
            .stdin(Stdio::null())
            .stdout(open_log(&stdout)?)
            .stderr(open_log(&stderr)?);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {name} ({cmd:?}): {e}"))?;
        Ok(Process {
            name: name.to_owned(),
            child,
            stdout,
            stderr,
        })
    }

    /// The last lines the process wrote, for error messages.
    pub fn logs(&self) -> String {
        format!(
            "--- {name} stderr ({}) ---\n{}\n--- {name} stdout ({}) ---\n{}",
            self.stderr.display(),
            tail(&self.stderr, 25),
            self.stdout.display(),
            tail(&self.stdout, 10),
            name = self.name,
        )
    }

    /// Fails, with the process' logs, if it has exited.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "{} exited ({status}) during start-up\n{}",
                self.name,
                self.logs()
            )),
            Err(e) => Err(format!("cannot check on {}: {e}", self.name)),
        }
    }

    /// Waits for the process to exit on its own (after a signal), killing it at the deadline.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = Deadline::new(format!("{} exiting", self.name), timeout);
        loop {
            match self.child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) => {}
                Err(e) => return Err(format!("cannot wait for {}: {e}", self.name)),
            }
            if let Err(e) = deadline.retry("still running").await {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(e);
            }
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// What a command-line tool printed.
#[derive(Debug)]
pub struct ToolOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for ToolOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit code {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs a tool to completion (at most a minute), optionally with a file as stdin.
pub async fn run_tool(
    program: &Path,
    args: &[&str],
    stdin: Option<&Path>,
) -> Result<ToolOutput, String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args).kill_on_drop(true);
    match stdin {
        Some(p) => cmd.stdin(
            File::open(p).map_err(|e| format!("cannot open {} for stdin: {e}", p.display()))?,
        ),
        None => cmd.stdin(Stdio::null()),
    };
    let run = cmd.output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .map_err(|_| format!("{} {args:?} ran for more than 60s", program.display()))?
        .map_err(|e| format!("cannot run {} {args:?}: {e}", program.display()))?;
    Ok(ToolOutput {
        success: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// An HTTP/1.1 client (hyper-util's legacy client) for the tests.
#[derive(Clone)]
pub struct Http {
    client: Client<HttpConnector, Full<Bytes>>,
}

/// A response, body collected.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, or "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    pub fn json(&self) -> Result<serde_json::Value, String> {
        serde_json::from_slice(&self.body)
            .map_err(|e| format!("body is not JSON ({e}): {}", self.text()))
    }

    /// The `data` of a Prometheus API success response; an error describing the reply otherwise.
    pub fn prom_data(&self) -> Result<serde_json::Value, String> {
        if self.status != StatusCode::OK {
            return Err(format!("HTTP {}: {}", self.status, self.text()));
        }
        let mut v = self.json()?;
        if v["status"] != "success" {
            return Err(format!("not a success: {v}"));
        }
        Ok(v["data"].take())
    }
}

impl Http {
    pub fn new() -> Self {
        Http {
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Reply, String> {
        let what = format!("{} {}", req.method(), req.uri());
        let exchange = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("{what}: {e} ({e:?})"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("{what}: reading the body: {e}"))?
                .to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("{what}: no complete answer within {REQUEST_TIMEOUT:?}"))?
    }

    /// Sends a request; `headers` are appended in order, so a name may appear several times.
    pub async fn request(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, String> {
        let mut req = Request::builder()
            .method(method)
            .uri(url)
            .body(Full::new(body.into()))
            .map_err(|e| format!("bad request {url}: {e}"))?;
        for (name, value) in headers {
            req.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| format!("bad header name {name:?}: {e}"))?,
                HeaderValue::from_str(value)
                    .map_err(|e| format!("bad header value {value:?}: {e}"))?,
            );
        }
        self.send(req).await
    }

    pub async fn get(&self, url: &str) -> Result<Reply, String> {
        self.request(Method::GET, url, &[], Bytes::new()).await
    }

    pub async fn get_with(&self, url: &str, headers: &[(&str, &str)]) -> Result<Reply, String> {
        self.request(Method::GET, url, headers, Bytes::new()).await
    }

    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<Reply, String> {
        self.request(Method::POST, url, headers, body).await
    }
}

/// Sends one GET written byte for byte, so header names keep their letter case and every copy
/// goes out as written (hyper would lower-case them). Returns the status code and the raw reply.
pub async fn raw_get(
    addr: SocketAddr,
    path: &str,
    header_lines: &[&str],
) -> Result<(u16, String), String> {
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for line in header_lines {
        let _ = write!(head, "{line}\r\n");
    }
    head.push_str("\r\n");
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write to {addr}: {e}"))?;
        let mut raw = Vec::new();
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read from {addr}: {e}"))?;
        Ok::<_, String>(String::from_utf8_lossy(&raw).into_owned())
    };
    let raw = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("GET {path}: no answer within {REQUEST_TIMEOUT:?}"))??;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {path}: not an HTTP response: {raw:?}"))?;
    Ok((status, raw))
}

// ---------------------------------------------------------------------------------------------
// Prometheus

/// A real Prometheus server.
pub struct Prometheus {
    pub port: u16,
    route_prefix: String,
    process: Process,
}

impl Prometheus {
    /// Starts Prometheus in `dir` with the config `config(port)` and waits until
    /// `<prefix>/-/ready` answers 200. A start-up failure (e.g. the port was taken meanwhile)
    /// is retried on a fresh port.
    pub async fn start(
        bins: &Binaries,
        http: &Http,
        dir: &Path,
        name: &str,
        route_prefix: &str,
        extra_args: &[&str],
        config: impl Fn(u16) -> String,
    ) -> Result<Prometheus, String> {
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port()?;
            let config_file = dir.join(format!("{name}.yml"));
            std::fs::write(&config_file, config(port))
                .map_err(|e| format!("cannot write {}: {e}", config_file.display()))?;
            let mut cmd = Command::new(&bins.prometheus);
            cmd.arg(format!("--config.file={}", config_file.display()));
            // A caller may bring its own data (e.g. blocks made by promtool).
            if !extra_args
                .iter()
                .any(|a| a.starts_with("--storage.tsdb.path="))
            {
                cmd.arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join(format!("{name}-data-{attempt}")).display()
                ));
            }
            cmd.arg(format!("--web.listen-address=127.0.0.1:{port}"))
                .args(extra_args);
            if !route_prefix.is_empty() {
                cmd.arg(format!("--web.route-prefix={route_prefix}"))
                    .arg(format!(
                        "--web.external-url=http://127.0.0.1:{port}{route_prefix}"
                    ));
            }
            let mut prom = Prometheus {
                port,
                route_prefix: route_prefix.to_owned(),
                process: Process::spawn(name, dir, &mut cmd)?,
            };
            match prom.wait_ready(http).await {
                Ok(()) => return Ok(prom),
                Err(e) => failures.push(format!("attempt {attempt} (port {port}): {e}")),
            }
        }
        Err(format!("{name} did not start:\n{}", failures.join("\n\n")))
    }

    async fn wait_ready(&mut self, http: &Http) -> Result<(), String> {
        let url = format!("{}/-/ready", self.url());
        wait_until_ok(&mut self.process, http, &url, START_TIMEOUT).await
    }

    /// `http://127.0.0.1:PORT<route prefix>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.route_prefix)
    }
}

// ---------------------------------------------------------------------------------------------
// The tenant probe: what X-Scope-OrgID headers reached the stand-in, every copy of them

/// One request as NGINX received it, seen through its mirror.
#[derive(Debug, Clone)]
pub struct SeenRequest {
    pub method: String,
    /// The request URI as the client (tenantgate) sent it, with the query.
    pub uri: String,
    /// Every `X-Scope-OrgID` value, any letter case, in order.
    pub tenants: Vec<String>,
}

/// A loopback listener NGINX mirrors every request to (headers only). NGINX 1.22 shows only the
/// first copy of a header in `$http_x_scope_orgid`; the mirror forwards all of them.
struct TenantProbe {
    port: u16,
    seen: Arc<Mutex<Vec<SeenRequest>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TenantProbe {
    async fn start() -> Result<TenantProbe, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("tenant probe: cannot listen: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("tenant probe: {e}"))?
            .port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(record(stream, sink.clone()));
            }
        });
        Ok(TenantProbe { port, seen, task })
    }

    fn seen(&self) -> Vec<SeenRequest> {
        match self.seen.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

impl Drop for TenantProbe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn record(mut stream: tokio::net::TcpStream, sink: Arc<Mutex<Vec<SeenRequest>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 256 << 10 {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut req = SeenRequest {
        method: String::new(),
        uri: String::new(),
        tenants: Vec::new(),
    };
    for line in head.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim().to_owned();
        match name.trim().to_ascii_lowercase().as_str() {
            "x-scope-orgid" => req.tenants.push(value),
            "x-e2e-original-uri" => req.uri = value,
            "x-e2e-original-method" => req.method = value,
            _ => {}
        }
    }
    if let Ok(mut g) = sink.lock() {
        g.push(req);
    }
    let _ = stream
        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        .await;
    let _ = stream.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// NGINX

/// One line of the stand-in NGINX's access log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLine {
    pub method: String,
    /// As the client sent it (before NGINX's rewrite), with the query.
    pub request_uri: String,
    pub status: u16,
    /// `$http_x_scope_orgid`: the first copy only; "-" when absent, "" when empty.
    pub tenant: String,
}

/// A real NGINX in front of the stand-in Prometheus, playing Mimir's gateway.
pub struct Nginx {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
    process: Option<Process>,
}

fn nginx_conf(dir: &Path, port: u16, prometheus_port: u16, probe_port: u16) -> String {
    let d = dir.display();
    format!(
        r#"# The Mimir stand-in gateway, written by tests/e2e/harness.rs.
# Single process (master_process off), so killing the child never leaves workers behind.
daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {d}/client_body_temp;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    default_type text/plain;
    client_max_body_size 100m;

    # Tab-separated: method, URI as sent, status, tenant (first copy only in NGINX 1.22).
    log_format tenants "$request_method\t$request_uri\t$status\t$http_x_scope_orgid";
    access_log {d}/access.log tenants;

    # Like Mimir: a missing or empty X-Scope-OrgID is "401 no org id".
    map $http_x_scope_orgid $e2e_no_org_id {{ "" 1; default 0; }}
    # Like an auth gateway in front of Mimir: one tenant is not allowed.
    map $http_x_scope_orgid $e2e_denied {{ "e2e-denied" 1; default 0; }}

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_buffering off;
    proxy_request_buffering off;

    server {{
        listen 127.0.0.1:{port};

        # Every request's headers, every X-Scope-OrgID copy included, go to the tenant probe.
        mirror /__e2e/tenant-probe;
        mirror_request_body off;

        # Readiness of this very process (the pid proves no other server took the port).
        location = /__e2e/ready {{
            mirror off;
            return 200 "$pid\n";
        }}

        location = /__e2e/tenant-probe {{
            internal;
            mirror off;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
            proxy_set_header X-E2E-Original-URI $request_uri;
            proxy_set_header X-E2E-Original-Method $request_method;
            proxy_http_version 1.0;
            proxy_pass http://127.0.0.1:{probe_port};
        }}

        # Mimir's remote write path -> Prometheus' remote write receiver.
        location = /api/v1/push {{
            if ($e2e_no_org_id) {{ return 401 "no org id\n"; }}
            if ($e2e_denied) {{ return 403 "tenant e2e-denied is not allowed\n"; }}
            rewrite ^ /prometheus/api/v1/write break;
            proxy_pass http://127.0.0.1:{prometheus_port};
        }}

        location / {{
            if ($e2e_no_org_id) {{ return 401 "no org id\n"; }}
            if ($e2e_denied) {{ return 403 "tenant e2e-denied is not allowed\n"; }}
            proxy_pass http://127.0.0.1:{prometheus_port};
        }}
    }}
}}
"#
    )
}

impl Nginx {
    /// Writes the config and starts NGINX on a free port (retried on a clash).
    async fn start(
        bins: &Binaries,
        http: &Http,
        dir: &Path,
        prometheus_port: u16,
        probe_port: u16,
    ) -> Result<Nginx, String> {
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let port = free_port()?;
            std::fs::write(
                dir.join("nginx.conf"),
                nginx_conf(dir, port, prometheus_port, probe_port),
            )
            .map_err(|e| format!("cannot write nginx.conf: {e}"))?;
            let mut nginx = Nginx {
                port,
                bin: bins.nginx.clone(),
                dir: dir.to_owned(),
                process: None,
            };
            match nginx.launch(http).await {
                Ok(()) => return Ok(nginx),
                Err(e) => failures.push(format!("attempt {attempt} (port {port}): {e}")),
            }
        }
        Err(format!("nginx did not start:\n{}", failures.join("\n\n")))
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("-p")
            .arg(&self.dir)
            .arg("-c")
            .arg(self.dir.join("nginx.conf"))
            .arg("-e")
            .arg(self.dir.join("error.log"));
        cmd
    }

    /// Starts the process on `self.port` and waits until it answers as itself.
    async fn launch(&mut self, http: &Http) -> Result<(), String> {
        let mut cmd = self.command();
        let process = self
            .process
            .insert(Process::spawn("nginx", &self.dir, &mut cmd)?);
        let pid = process.child.id().to_string();
        let url = format!("http://127.0.0.1:{}/__e2e/ready", self.port);
        let deadline = Deadline::new(format!("nginx (pid {pid}) answering {url}"), START_TIMEOUT);
        loop {
            process.check_running().map_err(|e| {
                format!(
                    "{e}\n--- error.log ---\n{}",
                    tail(&self.dir.join("error.log"), 20)
                )
            })?;
            let last = match http.get(&url).await {
                Ok(r) if r.status == StatusCode::OK && r.text().trim() == pid => return Ok(()),
                Ok(r) => format!("HTTP {}: {:?} (expected our pid {pid})", r.status, r.text()),
                Err(e) => e,
            };
            deadline.retry(&last).await?;
        }
    }

    /// Stops NGINX (`nginx -s stop`, i.e. SIGTERM) and waits until it has exited.
    pub async fn stop(&mut self) -> Result<(), String> {
        let Some(mut process) = self.process.take() else {
            return Ok(());
        };
        let out = self
            .command()
            .arg("-s")
            .arg("stop")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run nginx -s stop: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "nginx -s stop failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        process.wait_exit(Duration::from_secs(10)).await
    }

    /// Starts NGINX again on the same port, with the same config.
    pub async fn start_again(&mut self, http: &Http) -> Result<(), String> {
        self.launch(http).await
    }

    pub fn access_log(&self) -> Result<Vec<AccessLine>, String> {
        let path = self.dir.join("access.log");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        };
        text.lines()
            .map(|line| {
                let f: Vec<&str> = line.split('\t').collect();
                match f.as_slice() {
                    [method, uri, status, tenant] => Ok(AccessLine {
                        method: method.to_string(),
                        request_uri: uri.to_string(),
                        status: status
                            .parse()
                            .map_err(|_| format!("bad status in {line:?}"))?,
                        tenant: tenant.to_string(),
                    }),
                    _ => Err(format!("unexpected access log line {line:?}")),
                }
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The Mimir stand-in

/// Prometheus (with the remote write receiver, API under `/prometheus`) behind NGINX, which
/// demands an `X-Scope-OrgID`, logs it, and maps `POST /api/v1/push` to Prometheus' receiver.
pub struct StandIn {
    // Field order is drop order: processes go before their directory.
    pub nginx: Nginx,
    pub prometheus: Prometheus,
    probe: TenantProbe,
    pub dir: TempDir,
}

impl StandIn {
    pub async fn start(bins: &Binaries, http: &Http, label: &str) -> Result<StandIn, String> {
        let dir = TempDir::new(label)?;
        let probe = TenantProbe::start().await?;
        let prometheus = Prometheus::start(
            bins,
            http,
            &dir.sub("prometheus")?,
            "standin-prometheus",
            "/prometheus",
            &["--web.enable-remote-write-receiver"],
            |_| "global:\n  scrape_interval: 15s\n".to_owned(),
        )
        .await?;
        let nginx =
            Nginx::start(bins, http, &dir.sub("nginx")?, prometheus.port, probe.port).await?;
        let stand_in = StandIn {
            nginx,
            prometheus,
            probe,
            dir,
        };
        stand_in.self_check(http).await?;
        Ok(stand_in)
    }

    /// The stand-in must behave like Mimir before it can judge tenantgate.
    async fn self_check(&self, http: &Http) -> Result<(), String> {
        let url = format!("{}/prometheus/-/ready", self.url());
        let without = http.get(&url).await?;
        if without.status != StatusCode::UNAUTHORIZED || without.text().trim() != "no org id" {
            return Err(format!(
                "stand-in without X-Scope-OrgID: expected 401 \"no org id\", got {} {:?}",
                without.status,
                without.text()
            ));
        }
        let empty = http.get_with(&url, &[("x-scope-orgid", "")]).await?;
        if empty.status != StatusCode::UNAUTHORIZED {
            return Err(format!(
                "stand-in with an empty X-Scope-OrgID: expected 401, got {}",
                empty.status
            ));
        }
        let with = http
            .get_with(&url, &[("x-scope-orgid", "e2e-harness")])
            .await?;
        if with.status != StatusCode::OK {
            return Err(format!(
                "stand-in with X-Scope-OrgID: expected 200 from Prometheus, got {}: {}\n{}",
                with.status,
                with.text(),
                self.prometheus.process.logs()
            ));
        }
        // The tenant probe must see every copy, or its "exactly one copy" checks prove nothing.
        let copies = ["e2e-harness-1", "e2e-harness-2"];
        let probe_url = format!("{url}?e2e=copies");
        http.get_with(&probe_url, &copies.map(|c| ("x-scope-orgid", c)))
            .await?;
        let deadline = Deadline::new(
            "the tenant probe recording both header copies",
            Duration::from_secs(10),
        );
        loop {
            let seen = self.seen();
            match seen.iter().find(|s| s.uri.ends_with("?e2e=copies")) {
                Some(s) if s.tenants == copies => return Ok(()),
                Some(s) => {
                    return Err(format!(
                        "tenant probe saw {:?}, NGINX was sent {copies:?}",
                        s.tenants
                    ));
                }
                None => deadline.retry(&format!("seen so far: {seen:?}")).await?,
            }
        }
    }

    /// The NGINX origin, e.g. `http://127.0.0.1:PORT`: what Mimir's URL would be.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.nginx.port)
    }

    /// Every request NGINX mirrored to the tenant probe so far.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.probe.seen()
    }

    /// The access log lines `keep` selects, once there are at least `at_least` of them. NGINX
    /// writes a line when the request is finalized, which (with the mirror) can be a moment
    /// after the client got its response, so this polls.
    pub async fn access_log(
        &self,
        at_least: usize,
        keep: impl Fn(&AccessLine) -> bool,
    ) -> Result<Vec<AccessLine>, String> {
        let deadline = Deadline::new(
            format!("{at_least} matching line(s) in the stand-in's access log"),
            Duration::from_secs(10),
        );
        loop {
            let lines: Vec<AccessLine> =
                self.nginx.access_log()?.into_iter().filter(&keep).collect();
            if lines.len() >= at_least {
                return Ok(lines);
            }
            deadline.retry(&format!("only {lines:#?}")).await?;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A header-spoofing relay in front of tenantgate

/// An HTTP/1.1 relay that forwards every request to `target` after adding spoofed headers, and
/// counts what it forwarded. It stands for a client that sets its own `X-Scope-OrgID`: the
/// Debian build of Prometheus 2.42 accepts `remote_write.headers` but sends none of them.
pub struct SpoofingRelay {
    pub addr: SocketAddr,
    forwarded: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl SpoofingRelay {
    pub async fn start(
        target: SocketAddr,
        spoof: &'static [(&'static str, &'static str)],
    ) -> Result<SpoofingRelay, String> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("relay: cannot listen: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("relay: {e}"))?;
        let forwarded = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let count = forwarded.clone();
        let client: Client<HttpConnector, hyper::body::Incoming> =
            Client::builder(TokioExecutor::new()).build_http();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (client, count) = (client.clone(), count.clone());
                let svc =
                    hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                        let (client, count) = (client.clone(), count.clone());
                        async move {
                            let pq = req
                                .uri()
                                .path_and_query()
                                .map_or("/", |pq| pq.as_str())
                                .to_owned();
                            if let Ok(uri) = format!("http://{target}{pq}").parse() {
                                *req.uri_mut() = uri;
                            }
                            for (name, value) in spoof {
                                req.headers_mut().append(
                                    HeaderName::from_static(name),
                                    HeaderValue::from_static(value),
                                );
                            }
                            count.fetch_add(1, Ordering::Relaxed);
                            client.request(req).await
                        }
                    });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc),
                );
            }
        });
        Ok(SpoofingRelay {
            addr,
            forwarded,
            task,
        })
    }

    /// How many requests went through, spoofed.
    pub fn forwarded(&self) -> u64 {
        self.forwarded.load(Ordering::Relaxed)
    }
}

impl Drop for SpoofingRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---------------------------------------------------------------------------------------------
// tenantgate, in-process

/// A running tenantgate; shut down (gracefully) on drop.
pub struct TenantGate {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
}

impl TenantGate {
    pub async fn start(yaml: &str) -> Result<TenantGate, String> {
        let config = tenantgate::config::from_yaml(yaml, "e2e.yaml", &Overrides::default())
            .map_err(|e| format!("tenantgate rejected the e2e config:\n{e}\n---\n{yaml}"))?;
        let server = Server::bind(config, ConfigSource::default(), AppOptions::default())
            .await
            .map_err(|e| format!("tenantgate cannot bind: {e}"))?;
        let addr = *server
            .data_addrs()
            .first()
            .ok_or("tenantgate has no data listener")?;
        let (tx, rx) = oneshot::channel::<()>();
        tokio::spawn(server.run(async move {
            let _ = rx.await;
        }));
        Ok(TenantGate {
            addr,
            shutdown: Some(tx),
        })
    }

    /// `http://ADDR<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for TenantGate {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A config like `config/sidecar.yaml`: the Prometheus API (with the emulated endpoints) under
/// `/prometheus` and remote write at `/api/v1/push`, both as tenant `team-a`.
pub fn sidecar_config(upstream: &str) -> String {
    format!(
        r#"server:
  listen: 127.0.0.1:0
  shutdown_grace: 1s
upstreams:
  mimir:
    url: {upstream}
    timeouts: {{ connect: 2s, response_header: 30s }}
routes:
  - name: prometheus
    match: {{ path_prefix: /prometheus }}
    upstream: mimir
    tenant: team-a
    prometheus:
      external_labels: {{ cluster: e2e, tenant: team-a }}
  - name: remote-write
    match: {{ path: /api/v1/push, methods: [POST] }}
    upstream: mimir
    tenant: team-a
"#
    )
}

/// Percent-encodes a query parameter value (everything but RFC 3986 unreserved characters).
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The source: a Prometheus holding generated history

pub struct History {
    pub prom: Prometheus,
    /// First and one-past-last sample time, in seconds.
    pub start: i64,
    pub end: i64,
    pub series: i64,
    pub step: i64,
    _dir: TempDir,
}

impl History {
    pub fn samples(&self) -> i64 {
        self.series * (self.end - self.start) / self.step
    }

    pub fn read_url(&self) -> String {
        format!("{}/api/v1/read", self.prom.url())
    }
}

/// `series` series of `metric`, one sample every `step` seconds for `hours`, ending two hours
/// ago (on a step boundary), turned into TSDB blocks by promtool and served by a Prometheus.
pub async fn history(
    bins: &Binaries,
    http: &Http,
    label: &str,
    metric: &str,
    series: i64,
    hours: i64,
    step: i64,
) -> History {
    let dir = TempDir::new(label).unwrap();
    let end = (now_ms() / 1000 - 2 * 3600) / 3600 * 3600;
    let start = end - hours * 3600;
    let om = dir.path().join("history.om");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&om).unwrap());
        writeln!(f, "# TYPE {metric} gauge").unwrap();
        for s in 0..series {
            for t in (start..end).step_by(step as usize) {
                // Values that vary, so XOR chunks use every encoding width.
                let v = ((t / step) * 31 + s * 7) % 1009;
                writeln!(f, "{metric}{{job=\"hist\",series=\"{s}\"}} {v}.25 {t}").unwrap();
            }
        }
        writeln!(f, "# EOF").unwrap();
    }
    let blocks = dir.path().join("blocks");
    let out = run_tool(
        &bins.promtool,
        &[
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            om.to_str().unwrap(),
            blocks.to_str().unwrap(),
        ],
        None,
    )
    .await
    .unwrap();
    assert!(out.success, "promtool could not create the history:\n{out}");
    std::fs::remove_file(&om).unwrap();
    let data_arg = format!("--storage.tsdb.path={}", blocks.display());
    let prom = Prometheus::start(
        bins,
        http,
        dir.path(),
        "source",
        "",
        &[&data_arg, "--storage.tsdb.retention.time=30d"],
        |_| "global: {}\n".to_owned(),
    )
    .await
    .unwrap();
    History {
        prom,
        start,
        end,
        series,
        step,
        _dir: dir,
    }
}

/// One number from an instant query (0 when the result is empty); `headers` choose a tenant.
pub async fn scalar(
    http: &Http,
    prom_url: &str,
    expr: &str,
    at_secs: f64,
    headers: &[(&str, &str)],
) -> f64 {
    let url = format!(
        "{prom_url}/api/v1/query?query={}&time={at_secs:.3}",
        enc(expr)
    );
    let data = http
        .get_with(&url, headers)
        .await
        .unwrap()
        .prom_data()
        .unwrap();
    match data["result"].as_array().and_then(|r| r.first()) {
        Some(v) => v["value"][1].as_str().unwrap().parse().unwrap(),
        None => 0.0,
    }
}

/// Samples of `metric` the server at `prom_url` holds in `[start, end)` (seconds).
pub async fn count_samples(http: &Http, prom_url: &str, metric: &str, start: i64, end: i64) -> i64 {
    count_between(http, prom_url, metric, start as f64, end as f64, &[]).await
}

/// Samples of `metric` in `[start, end)`, times in seconds with milliseconds.
pub async fn count_between(
    http: &Http,
    prom_url: &str,
    metric: &str,
    start: f64,
    end: f64,
    headers: &[(&str, &str)],
) -> i64 {
    // Evaluated a millisecond before `end`, reaching back to a millisecond before `start`: the
    // same samples, [start, end), whether ranges are left-closed (Prometheus 2) or left-open
    // (Prometheus 3 and Cortex).
    let range_ms = ((end - start) * 1000.0).round() as i64;
    scalar(
        http,
        prom_url,
        &format!("sum(count_over_time({metric}[{range_ms}ms]))"),
        end - 0.001,
        headers,
    )
    .await as i64
}

/// Runs `tenantgate check --probe` on a config file: (exit code, stdout).
pub fn probe(config: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args(["check", "--probe", "--config"])
        .arg(config)
        .output()
        .expect("run tenantgate check --probe");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Polls `url` until it answers 200, failing with the process' logs if it exits or `timeout`
/// passes first.
pub async fn wait_until_ok(
    process: &mut Process,
    http: &Http,
    url: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Deadline::new(format!("{url} answering 200"), timeout);
    loop {
        process.check_running()?;
        let last = match http.get(url).await {
            Ok(r) if r.status == StatusCode::OK => return Ok(()),
            Ok(r) => format!("HTTP {}: {}", r.status, r.text()),
            Err(e) => e,
        };
        deadline
            .retry(&last)
            .await
            .map_err(|e| format!("{e}\n{}", process.logs()))?;
    }
}
