//! The soak's clients and the judge of every answer.
//!
//! Four transports (a pooled HTTP/1.1 client, one multiplexed HTTP/2 client, and a fresh TLS
//! connection per request for each protocol) carry six kinds of request. Each answer is checked
//! for being right, not only for its status: the tenant the upstream saw, the path and query it
//! saw (each request has its own id), the body's digest. What may be right changes over time
//! (reloads flip a route's tenant, rotations change the certificate, the upstream goes down), so
//! each request notes the [`Clock`] when it starts and when it ends, and an answer is right if it
//! is right for some state the gate was in between the two.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;

use crate::common::pattern_byte;
use crate::upstream::Echo;

/// Longest a request may take before it counts as a hang: far above anything the configured
/// timeouts allow (connect 1s, response headers 5s), so only a real hang reaches it.
const HANG: Duration = Duration::from_secs(30);

/// First serial number of the server certificate; rotation r serves `SERIAL_BASE + r`.
pub const SERIAL_BASE: u64 = 1000;

pub const USER: &str = "soak-user";
pub const PASSWORD: &str = "soak-password-1";

/// Counters of what the test did to the gate. `*_started` moves before an action, `*_done`
/// after it, so a request that reads `done` at its start and `started` at its end brackets
/// every state the gate can have been in while it ran.
#[derive(Default)]
pub struct Clock {
    pub reloads_started: AtomicU64,
    pub reloads_done: AtomicU64,
    pub rotations_started: AtomicU64,
    pub rotations_done: AtomicU64,
    pub stops_begun: AtomicU64,
    pub restarts_done: AtomicU64,
}

struct Mark {
    reloads: u64,
    rotations: u64,
    restarts: u64,
}

impl Clock {
    fn at_start(&self) -> Mark {
        Mark {
            reloads: self.reloads_done.load(SeqCst),
            rotations: self.rotations_done.load(SeqCst),
            restarts: self.restarts_done.load(SeqCst),
        }
    }
    fn at_end(&self) -> Mark {
        Mark {
            reloads: self.reloads_started.load(SeqCst),
            rotations: self.rotations_started.load(SeqCst),
            restarts: self.stops_begun.load(SeqCst),
        }
    }
}

/// The tenant the `query` route has in config version `v` (the reload test flips it).
pub fn epoch_tenant(v: u64) -> &'static str {
    if v.is_multiple_of(2) {
        "soak-even"
    } else {
        "soak-odd"
    }
}

/// The `epoch` external label served by `status/config` in config version `v`.
pub fn epoch_label(v: u64) -> &'static str {
    if v.is_multiple_of(2) { "even" } else { "odd" }
}

#[derive(Clone, Copy, Debug)]
pub enum Transport {
    H1Pooled,
    H2Pooled,
    H1Fresh,
    H2Fresh,
}

/// Eight in ten requests on pooled connections, two on fresh ones (handshakes, new certificates).
pub const TRANSPORTS: [Transport; 10] = [
    Transport::H1Pooled,
    Transport::H2Pooled,
    Transport::H1Pooled,
    Transport::H2Pooled,
    Transport::H1Pooled,
    Transport::H2Pooled,
    Transport::H1Pooled,
    Transport::H2Pooled,
    Transport::H1Fresh,
    Transport::H2Fresh,
];

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Forwarded, tenant flipped by every reload.
    Query,
    /// Emulated `status/config`, external label flipped by every reload.
    StatusConfig,
    /// Forwarded POST with a body and a spoofed `X-Scope-OrgID`, fixed tenant.
    Push,
    /// Forwarded with basic auth, tenant from the identity.
    Auth,
    /// The same route without credentials: 401, nothing forwarded.
    AuthMissing,
    /// Forwarded, fixed tenant.
    Other,
}

pub const KINDS: [Kind; 6] = [
    Kind::Query,
    Kind::StatusConfig,
    Kind::Push,
    Kind::Auth,
    Kind::AuthMissing,
    Kind::Other,
];

impl Kind {
    fn forwarded(self) -> bool {
        !matches!(self, Kind::StatusConfig | Kind::AuthMissing)
    }
}

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

pub struct Traffic {
    pub clock: Arc<Clock>,
    port: u16,
    tls: Arc<rustls::ClientConfig>,
    h1: Client<Connector, Full<Bytes>>,
    h2: Client<Connector, Full<Bytes>>,
    basic: String,
    /// Outcome name -> count.
    pub tally: Mutex<BTreeMap<String, u64>>,
    /// The first failures, in full.
    pub failures: Mutex<Vec<String>>,
    /// Answers whose allowed state was a single config version (the check was exact).
    pub exact_epoch: AtomicU64,
}

pub fn client_tls(ca: &std::path::Path, alpn: &[&[u8]]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for c in tenantgate::tls::load_certs(ca).expect("CA file") {
        roots.add(c).expect("CA certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(tenantgate::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    config
}

impl Traffic {
    pub fn new(clock: Arc<Clock>, port: u16, ca: &std::path::Path) -> Traffic {
        let h1 = hyper_rustls::HttpsConnectorBuilder::new()
            // No ALPN offered (hyper-rustls sets none for HTTP/1.1): the server's default.
            .with_tls_config(client_tls(ca, &[]))
            .https_only()
            .enable_http1()
            .build();
        let h2 = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(client_tls(ca, &[]))
            .https_only()
            .enable_http2()
            .build();
        use base64::Engine as _;
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        Traffic {
            clock,
            port,
            tls: Arc::new(client_tls(ca, &[b"h2", b"http/1.1"])),
            // Idle pooled connections are dropped well before tenantgate's own idle limits
            // (30 s for HTTP/1.1), so the client never races a server-side close.
            h1: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(5))
                .build(h1),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(h2),
            basic: format!("Basic {basic}"),
            tally: Mutex::new(BTreeMap::new()),
            failures: Mutex::new(Vec::new()),
            exact_epoch: AtomicU64::new(0),
        }
    }

    fn count(&self, outcome: &str, failure: Option<String>) {
        *self
            .tally
            .lock()
            .expect("tally")
            .entry(outcome.to_owned())
            .or_default() += 1;
        if let Some(f) = failure {
            let mut v = self.failures.lock().expect("failures");
            if v.len() < 20 {
                v.push(f);
            }
        }
    }

    fn request(&self, kind: Kind, id: u64) -> Request<Full<Bytes>> {
        let base = format!("https://127.0.0.1:{}", self.port);
        let b = Request::builder();
        let (b, body) = match kind {
            Kind::Query => (
                b.uri(format!("{base}/prometheus/api/v1/query?query=up&id={id}")),
                Bytes::new(),
            ),
            Kind::StatusConfig => (
                b.uri(format!("{base}/prometheus/api/v1/status/config")),
                Bytes::new(),
            ),
            Kind::Push => {
                let len = push_len(id);
                let body: Vec<u8> = (id..id + len).map(pattern_byte).collect();
                (
                    b.method("POST")
                        .uri(format!("{base}/api/v1/push?id={id}"))
                        .header("x-scope-orgid", "spoofed")
                        .header("content-type", "application/x-protobuf"),
                    Bytes::from(body),
                )
            }
            Kind::Auth => (
                b.uri(format!("{base}/auth/{id}"))
                    .header("authorization", &self.basic),
                Bytes::new(),
            ),
            Kind::AuthMissing => (b.uri(format!("{base}/auth/{id}")), Bytes::new()),
            Kind::Other => (b.uri(format!("{base}/other/{id}")), Bytes::new()),
        };
        b.body(Full::new(body)).expect("request")
    }

    /// Sends one request and counts its outcome.
    pub async fn run(&self, transport: Transport, kind: Kind, id: u64) {
        let start = self.clock.at_start();
        let req = self.request(kind, id);
        let result = tokio::time::timeout(HANG, self.exchange(transport, req)).await;
        let end = self.clock.at_end();
        // An upstream stop began before this request ended, and its restart had not finished
        // when the request started: the request overlapped a down window.
        let upstream_down = end.restarts > start.restarts;
        let what = format!("{kind:?} #{id} over {transport:?}");
        let got = match result {
            Err(_) => {
                return self.count(
                    "hang",
                    Some(format!("{what}: no answer in {}s", HANG.as_secs())),
                );
            }
            Ok(Err(Failed::Connection(e))) => {
                return self.count("connection error", Some(format!("{what}: {e}")));
            }
            Ok(Err(Failed::Body(e))) if upstream_down && kind.forwarded() => {
                // The upstream crashed mid-response: the body breaks off, as it would at
                // any proxy. Not a wrong answer, and only while the upstream was going down.
                let _ = e;
                return self.count("cut during restart", None);
            }
            Ok(Err(Failed::Body(e))) => {
                return self.count("cut", Some(format!("{what}: response body broke off: {e}")));
            }
            Ok(Ok(got)) => got,
        };
        if let Some(serial) = got.serial {
            let lo = SERIAL_BASE + start.rotations;
            let hi = SERIAL_BASE + end.rotations;
            if !(lo..=hi).contains(&serial) {
                return self.count(
                    "wrong certificate",
                    Some(format!(
                        "{what}: certificate serial {serial}, expected {lo}..={hi}"
                    )),
                );
            }
        }
        let want_version = match transport {
            Transport::H1Pooled | Transport::H1Fresh => Version::HTTP_11,
            Transport::H2Pooled | Transport::H2Fresh => Version::HTTP_2,
        };
        if got.version != want_version {
            return self.count(
                "wrong protocol",
                Some(format!("{what}: answered over {:?}", got.version)),
            );
        }
        match got.status.as_u16() {
            502 | 504 if kind.forwarded() && upstream_down => match error_type(&got.body) {
                Some(t)
                    if t == if got.status == 502 {
                        "unavailable"
                    } else {
                        "timeout"
                    } =>
                {
                    self.count(got.status.as_str(), None)
                }
                _ => self.count(
                    "wrong answer",
                    Some(format!(
                        "{what}: {} without the documented error body: {:?}",
                        got.status, got.body
                    )),
                ),
            },
            503 if got.headers.contains_key("retry-after")
                && error_type(&got.body).as_deref() == Some("unavailable") =>
            {
                self.count("503", None)
            }
            _ => match self.judge(kind, id, &start, &end, &got) {
                Ok(()) => self.count("ok", None),
                Err(e) => {
                    let kind_name = if got.status.is_success() || got.status == 401 {
                        "wrong answer".to_owned()
                    } else if got.status == 502 || got.status == 504 {
                        format!("{} while the upstream was up", got.status.as_str())
                    } else {
                        format!("unexpected status {}", got.status.as_str())
                    };
                    self.count(&kind_name, Some(format!("{what}: {e}")))
                }
            },
        }
    }

    /// Whether a non-error answer is the right one for this request.
    fn judge(
        &self,
        kind: Kind,
        id: u64,
        start: &Mark,
        end: &Mark,
        got: &Got,
    ) -> Result<(), String> {
        let body = String::from_utf8_lossy(&got.body);
        let expect_status = if matches!(kind, Kind::AuthMissing) {
            401
        } else {
            200
        };
        if got.status.as_u16() != expect_status {
            return Err(format!(
                "status {}, expected {expect_status}: {body}",
                got.status
            ));
        }
        let versions = start.reloads..=end.reloads;
        if versions.start() == versions.end() {
            self.exact_epoch.fetch_add(1, SeqCst);
        }
        match kind {
            Kind::StatusConfig => {
                let ok = versions
                    .clone()
                    .any(|v| body.contains(&format!("epoch: {}", epoch_label(v))));
                let labels = ["even", "odd"]
                    .iter()
                    .filter(|l| body.contains(&format!("epoch: {l}")))
                    .count();
                if !ok || labels != 1 {
                    return Err(format!("config versions {versions:?}, got {body}"));
                }
                Ok(())
            }
            Kind::AuthMissing => {
                if !got.headers.contains_key("www-authenticate")
                    || error_type(&got.body).as_deref() != Some("unauthorized")
                {
                    return Err(format!("a 401 without its header or error body: {body}"));
                }
                Ok(())
            }
            _ => {
                let echo: Echo = serde_json::from_slice(&got.body)
                    .map_err(|e| format!("not the upstream's echo ({e}): {body}"))?;
                // The tenants that are right for this request: one, or two when a reload
                // flipped the route while the request was on its way.
                let (path, tenants, len): (String, Vec<&str>, u64) = match kind {
                    Kind::Query => (
                        format!("/prometheus/api/v1/query?query=up&id={id}"),
                        versions.clone().map(epoch_tenant).collect(),
                        0,
                    ),
                    Kind::Push => (
                        format!("/api/v1/push?id={id}"),
                        vec!["soak-writer"],
                        push_len(id),
                    ),
                    Kind::Auth => (format!("/auth/{id}"), vec!["soak-auth"], 0),
                    _ => (format!("/other/{id}"), vec!["soak-b"], 0),
                };
                // Exactly one X-Scope-OrgID, and a right one (the client's spoofed one never).
                let tenant_ok =
                    echo.tenants.len() == 1 && tenants.contains(&echo.tenants[0].as_str());
                let sha = if len == 0 {
                    crate::common::hex(&<sha2::Sha256 as sha2::Digest>::digest(b""))
                } else {
                    let data: Vec<u8> = (id..id + len).map(pattern_byte).collect();
                    crate::common::hex(&<sha2::Sha256 as sha2::Digest>::digest(&data))
                };
                if echo.path != path
                    || !tenant_ok
                    || echo.len != len
                    || echo.sha256 != sha
                    || echo.authorization
                {
                    return Err(format!(
                        "config versions {versions:?}, expected path {path}, {len} bytes, tenant one of {tenants:?}, no Authorization; the upstream saw {echo:?}"
                    ));
                }
                Ok(())
            }
        }
    }

    async fn exchange(
        &self,
        transport: Transport,
        req: Request<Full<Bytes>>,
    ) -> Result<Got, Failed> {
        let (resp, serial) = match transport {
            Transport::H1Pooled => (self.h1.request(req).await.map_err(conn)?, None),
            Transport::H2Pooled => {
                let (mut parts, body) = req.into_parts();
                parts.version = Version::HTTP_2;
                let req = Request::from_parts(parts, body);
                (self.h2.request(req).await.map_err(conn)?, None)
            }
            Transport::H1Fresh | Transport::H2Fresh => {
                let (resp, serial) = self
                    .fresh(matches!(transport, Transport::H2Fresh), req)
                    .await?;
                (resp, Some(serial))
            }
        };
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| Failed::Body(format!("{e:?}")))?
            .to_bytes();
        Ok(Got {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
            serial,
        })
    }

    /// One request on a connection of its own; also returns the certificate serial it saw.
    async fn fresh(
        &self,
        h2: bool,
        req: Request<Full<Bytes>>,
    ) -> Result<(http::Response<hyper::body::Incoming>, u64), Failed> {
        let mut tls = (*self.tls).clone();
        tls.alpn_protocols = vec![if h2 {
            b"h2".to_vec()
        } else {
            b"http/1.1".to_vec()
        }];
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .map_err(conn)?;
        let name = ServerName::try_from("127.0.0.1").map_err(conn)?;
        let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(conn)?;
        let der = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or_else(|| Failed::Connection("no server certificate".into()))?;
        let serial =
            serial_of(der).ok_or_else(|| Failed::Connection("unreadable serial".into()))?;
        let io = TokioIo::new(stream);
        let (parts, body) = req.into_parts();
        let resp = if h2 {
            let (mut send, conn_task) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(conn)?;
            tokio::spawn(conn_task);
            let mut parts = parts;
            parts.version = Version::HTTP_2;
            send.send_request(Request::from_parts(parts, body))
                .await
                .map_err(conn)?
        } else {
            let (mut send, conn_task) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(conn)?;
            tokio::spawn(conn_task);
            // HTTP/1.1 needs a Host; the pooled client adds it from the URI, by hand here.
            let mut parts = parts;
            let host = format!("127.0.0.1:{}", self.port);
            parts.headers.insert("host", host.parse().map_err(conn)?);
            let path = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_default();
            parts.uri = path.parse().map_err(conn)?;
            send.send_request(Request::from_parts(parts, body))
                .await
                .map_err(conn)?
        };
        Ok((resp, serial))
    }
}

/// Push bodies from 1 B to 16 KiB, different for each request.
fn push_len(id: u64) -> u64 {
    (id.wrapping_mul(7919) % 16384) + 1
}

pub fn serial_of(der: &[u8]) -> Option<u64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let raw = cert.raw_serial();
    if raw.len() > 8 {
        let (head, tail) = raw.split_at(raw.len() - 8);
        if head.iter().any(|b| *b != 0) {
            return None;
        }
        return Some(u64::from_be_bytes(tail.try_into().ok()?));
    }
    Some(raw.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

fn error_type(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    if v["status"] != "error" {
        return None;
    }
    v["errorType"].as_str().map(str::to_owned)
}

struct Got {
    status: StatusCode,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
    serial: Option<u64>,
}

enum Failed {
    Connection(String),
    Body(String),
}

fn conn(e: impl std::fmt::Debug) -> Failed {
    Failed::Connection(format!("{e:?}"))
}
