//! Connections tenantgate closes although they did nothing wrong: the idlest admin connection when
//! every admin slot is taken (so probes get through), and data connections whose client
//! certificate a reloaded config no longer trusts.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::pki::Pki;
use common::*;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// More than the admin listener's 64 slots.
const IDLE_CONNECTIONS: usize = 100;

/// Timeouts long enough that no connection in these tests ends by itself: whatever closes one is
/// what is under test.
const PATIENT_SERVER: &str = r#"
server:
  listen: 127.0.0.1:0
  header_read_timeout: 1h
  idle_timeout: 1h
admin:
  listen: 127.0.0.1:0
upstreams:
  mimir: { url: "{UPSTREAM}" }
routes:
  - name: all
    match: { path_prefix: / }
    upstream: mimir
    tenant: team-a
"#;

/// Waits (up to `secs`) for the peer to close `stream`: true on EOF or reset.
async fn closed_within(stream: &mut TcpStream, secs: u64) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::from_secs(secs), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// One keep-alive `GET /-/healthy` on `stream`; the status line.
async fn healthy_on(stream: &mut TcpStream) -> String {
    stream
        .write_all(b"GET /-/healthy HTTP/1.1\r\nhost: admin\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(b"healthy.\n") {
        let n = tokio::time::timeout(Duration::from_secs(30), stream.read(&mut buf))
            .await
            .expect("an answer on a kept-alive admin connection")
            .unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_get_through_when_idle_connections_hold_every_admin_slot() {
    let up = Upstream::start().await;
    let gate = Gate::start(PATIENT_SERVER, &up.url()).await;
    let admin = gate.admin.unwrap();

    // Half say nothing at all, half ask once and then sit on the kept-alive connection. With
    // hour-long timeouts, nothing would free a slot for an hour.
    let mut silent = Vec::new();
    for _ in 0..IDLE_CONNECTIONS / 2 {
        silent.push(TcpStream::connect(admin).await.unwrap());
    }
    let mut kept = Vec::new();
    for _ in 0..IDLE_CONNECTIONS / 2 {
        let mut s = TcpStream::connect(admin).await.unwrap();
        assert_eq!(healthy_on(&mut s).await, "HTTP/1.1 200 OK");
        kept.push(s);
    }

    // A probe on a fresh connection is answered: the client's timeout is 30 s, against the
    // hour the slots would otherwise be held.
    let probe = tokio::time::timeout(
        Duration::from_secs(30),
        get(&format!("http://{admin}/-/healthy")),
    )
    .await
    .expect("a health probe answered while idle connections hold the admin slots");
    assert_eq!(probe.0, StatusCode::OK);

    // The room came from the longest idle: the first silent connections were closed...
    assert!(
        closed_within(&mut silent[0], 30).await,
        "the oldest silent connection is still open"
    );
    // ...while the connection that asked last is still served.
    let last = kept.last_mut().unwrap();
    assert_eq!(healthy_on(last).await, "HTTP/1.1 200 OK");
    gate.stop().await;
}

fn trust_yaml(server: &(PathBuf, PathBuf), ca: &Path, up: &str) -> String {
    format!(
        r#"
server:
  listen: 127.0.0.1:0
  idle_timeout: 1h
  tls:
    cert_file: {cert}
    key_file: {key}
    client_ca_file: {ca}
    client_auth: optional
upstreams:
  mimir: {{ url: "{up}" }}
identities:
  - name: sidecar-eu
    tenant: team-d
    client_cert: {{ cn: sidecar-eu }}
routes:
  - name: read
    match: {{ path_prefix: /prometheus }}
    upstream: mimir
    tenant: {{ from: identity }}
"#,
        cert = server.0.display(),
        key = server.1.display(),
        ca = ca.display(),
    )
}

type Sender = hyper::client::conn::http1::SendRequest<TestBody>;

/// An HTTP/1.1 keep-alive connection over TLS with a client certificate; the sender and the task
/// driving the connection (it ends when tenantgate closes it).
async fn cert_connection(
    addr: std::net::SocketAddr,
    ca: &Path,
    client: &(PathBuf, PathBuf),
) -> (Sender, tokio::task::JoinHandle<()>) {
    let mut roots = rustls::RootCertStore::empty();
    for c in tenantgate::tls::load_certs(ca).unwrap() {
        roots.add(c).unwrap();
    }
    let certs = tenantgate::tls::load_certs(&client.0).unwrap();
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(&client.1).unwrap(),
    ))
    .unwrap()
    .unwrap();
    let config = rustls::ClientConfig::builder_with_provider(tenantgate::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").unwrap(),
            tcp,
        )
        .await
        .expect("TLS handshake");
    let io = hyper_util::rt::TokioIo::new(tls);
    let (sender, conn) = hyper::client::conn::http1::handshake::<_, TestBody>(io)
        .await
        .unwrap();
    (
        sender,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    )
}

async fn ask(sender: &mut Sender) -> StatusCode {
    sender.ready().await.expect("connection usable");
    let resp = sender
        .send_request(
            Request::get("/prometheus/api/v1/labels")
                .header("host", "localhost")
                .body(empty())
                .unwrap(),
        )
        .await
        .expect("an answer");
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_stops_trusting_a_client_certificate_closes_its_connections() {
    let old_ca = Pki::new("trust-old");
    let new_ca = Pki::new("trust-new");
    let server = old_ca.issue("server", "tenantgate", &["localhost"], true, false);
    let client = old_ca.issue("client", "sidecar-eu", &[], false, true);
    let up = Upstream::start().await;
    let file = old_ca.dir.join("tenantgate.yaml");
    let write = |ca: &Path| {
        std::fs::write(&file, trust_yaml(&server, ca, &up.url())).unwrap();
    };
    write(&old_ca.ca_file());
    let gate = Gate::start_file(&file).await;

    let (mut sender, conn) = cert_connection(gate.addr, &old_ca.ca_file(), &client).await;
    assert_eq!(ask(&mut sender).await, StatusCode::OK);
    assert_eq!(up.last().all("x-scope-orgid"), ["team-d"]);

    // A reload that trusts the same CA (the server certificate rotated) keeps the connection.
    let _rotated = old_ca.issue("server", "tenantgate-rotated", &["localhost"], true, false);
    gate.handle.reload().await.expect("reload, same client CA");
    assert_eq!(ask(&mut sender).await, StatusCode::OK);
    assert!(!conn.is_finished());

    // A reload that trusts another CA closes it: the identity came from a certificate the
    // config no longer accepts.
    write(&new_ca.ca_file());
    gate.handle.reload().await.expect("reload, new client CA");
    tokio::time::timeout(Duration::from_secs(30), conn)
        .await
        .expect("the connection of a certificate no longer trusted is closed")
        .unwrap();
    let seen = up.requests().len();
    assert_eq!(seen, 2, "no request after the reload reached the upstream");
    gate.stop().await;
}
