//! Security: the tenant comes from who the caller is, never from what it typed. Certificates are
//! generated here (rcgen); clients are real where they exist: curl, a real Prometheus
//! remote-writing over TLS, and a real NGINX that demands a client certificate upstream.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::pki::Pki;
use common::*;

const WRITER_PASSWORD: &str = "s3cret-writer";
const READER_TOKEN: &str = "reader-token-0123456789abcdef";
const OTHER_TOKEN: &str = "other-token-0123456789abcdef";

/// tenantgate over TLS (client certificates optional) with every kind of identity.
fn gateway_yaml(pki: &Pki, server: &(PathBuf, PathBuf), client_auth: &str) -> String {
    let hash = bcrypt::hash(WRITER_PASSWORD, 4).unwrap();
    std::fs::write(
        pki.dir.join("htpasswd"),
        format!(
            "someone-else:{}\nprom-writer:{hash}\n",
            bcrypt::hash("x", 4).unwrap()
        ),
    )
    .unwrap();
    std::fs::write(pki.dir.join("reader.token"), format!("{READER_TOKEN}\n")).unwrap();
    std::fs::write(pki.dir.join("other.token"), OTHER_TOKEN).unwrap();
    format!(
        r#"
server:
  listen: 127.0.0.1:0
  max_headers: 50
  tls:
    cert_file: {cert}
    key_file: {key}
    client_ca_file: {ca}
    client_auth: {client_auth}
admin:
  listen: 127.0.0.1:0
upstreams:
  mimir: {{ url: "{{UPSTREAM}}" }}
identities:
  - name: prom-writer
    tenant: team-a
    basic_auth: {{ user: prom-writer, htpasswd_file: {dir}/htpasswd }}
  - name: grafana-reader
    tenant: team-b
    bearer_token: {{ file: {dir}/reader.token }}
  - name: other-team
    tenant: team-c
    bearer_token: {{ file: {dir}/other.token }}
  - name: sidecar-eu
    tenant: team-d
    client_cert: {{ cn: sidecar-eu }}
routes:
  - name: push
    match: {{ path: /api/v1/push, methods: [POST] }}
    upstream: mimir
    tenant: {{ from: identity, identities: [prom-writer] }}
  - name: read
    match: {{ path_prefix: /prometheus }}
    upstream: mimir
    tenant: {{ from: identity }}
  - name: trusted
    match: {{ path_prefix: /trusted }}
    upstream: mimir
    tenant: {{ from: header, allow: [team-a, team-b] }}
  - name: trusted-federated
    match: {{ path_prefix: /federated }}
    upstream: mimir
    tenant: {{ from: header, allow: [team-a, team-b], federation: true, aliases: {{ all: "team-a|team-b" }} }}
  - name: passthrough-auth
    match: {{ path_prefix: /keep-auth }}
    upstream: mimir
    tenant: {{ from: identity }}
    forward_authorization: true
"#,
        cert = server.0.display(),
        key = server.1.display(),
        ca = pki.ca_file().display(),
        dir = pki.dir.display(),
    )
}

struct Setup {
    pki: Pki,
    up: Upstream,
    gate: Gate,
}

impl Setup {
    /// `None` (a loud skip, or a failure under CI=true) when curl is not installed.
    async fn new(tag: &str, client_auth: &str) -> Option<Setup> {
        required_binary("curl")?;
        let pki = Pki::new(tag);
        let server = pki.issue("server", "tenantgate", &["localhost"], true, false);
        let up = Upstream::start().await;
        let gate = Gate::start(&gateway_yaml(&pki, &server, client_auth), &up.url()).await;
        Some(Setup { pki, up, gate })
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.gate.addr.port())
    }

    fn ca(&self) -> String {
        self.pki.ca_file().display().to_string()
    }

    /// curl against this tenantgate, trusting its CA; `args` come before the URL of `path`.
    async fn curl(&self, args: &[&str], path: &str) -> Curl {
        let ca = self.ca();
        let mut all = vec!["--cacert", ca.as_str()];
        all.extend_from_slice(args);
        curl(&all, &self.url(path)).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_maps_to_its_tenant_and_wrong_or_missing_credentials_get_401() {
    let Some(s) = Setup::new("basic", "optional").await else {
        return;
    };
    let ok = s
        .curl(
            &[
                "-u",
                &format!("prom-writer:{WRITER_PASSWORD}"),
                "-X",
                "POST",
                "-H",
                "X-Scope-OrgID: team-z",
                "--data-binary",
                "x",
            ],
            "/api/v1/push",
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let seen = s.up.last();
    assert_eq!(seen.all("x-scope-orgid"), ["team-a"]);
    assert!(
        seen.headers.get("authorization").is_none(),
        "credentials for tenantgate reached the upstream"
    );

    let wrong = s
        .curl(
            &["-u", "prom-writer:nope", "-X", "POST", "--data-binary", "x"],
            "/api/v1/push",
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(
        wrong
            .headers
            .to_ascii_lowercase()
            .contains("www-authenticate: basic realm=\"tenantgate\""),
        "{}",
        wrong.headers
    );
    assert!(
        wrong.body.contains(r#""errorType":"unauthorized""#),
        "{}",
        wrong.body
    );

    let missing = s
        .curl(&["-X", "POST", "--data-binary", "x"], "/api/v1/push")
        .await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        s.up.requests().len(),
        1,
        "a rejected request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_one_tenant_never_produces_another_whatever_headers_are_sent() {
    let Some(s) = Setup::new("token", "optional").await else {
        return;
    };
    let bearer = format!("Authorization: Bearer {READER_TOKEN}");
    for spoof in [
        "X-Scope-OrgID: team-a",
        "x-scope-orgid: team-a|team-c",
        "X-SCOPE-ORGID: ",
    ] {
        let r = s
            .curl(
                &["-H", &bearer, "-H", spoof, "-H", "X-Scope-OrgID: team-c"],
                "/prometheus/api/v1/labels",
            )
            .await;
        assert_eq!(r.status, 200, "{spoof}: {}", r.body);
        assert_eq!(s.up.last().all("x-scope-orgid"), ["team-b"], "{spoof}");
    }
    // The emulated endpoints sit behind the same authentication.
    let anon = s.curl(&[], "/prometheus/api/v1/status/config").await;
    assert_eq!(anon.status, 401);
    assert!(
        anon.headers
            .to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"tenantgate\""),
        "{}",
        anon.headers
    );
    let bad = s
        .curl(
            &["-H", "Authorization: Bearer reader-token-0123456789abcdeX"],
            "/prometheus/api/v1/labels",
        )
        .await;
    assert_eq!(bad.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_identity_not_allowed_on_a_route_gets_403() {
    let Some(s) = Setup::new("forbidden", "optional").await else {
        return;
    };
    let r = s
        .curl(
            &[
                "-H",
                &format!("Authorization: Bearer {READER_TOKEN}"),
                "-X",
                "POST",
                "--data-binary",
                "x",
            ],
            "/api/v1/push",
        )
        .await;
    assert_eq!(r.status, 403, "curl exit {}, body {}", r.exit, r.body);
    assert!(
        r.body
            .contains("identity \\\"grafana-reader\\\" may not use this route"),
        "{}",
        r.body
    );
    assert!(s.up.requests().is_empty());
}

/// GET `path` through tenantgate with a client certificate.
async fn curl_with_cert(s: &Setup, cert: &(PathBuf, PathBuf), path: &str) -> Curl {
    let (c, k) = (cert.0.display().to_string(), cert.1.display().to_string());
    s.curl(&["--cert", &c, "--key", &k], path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_maps_to_its_tenant() {
    let Some(s) = Setup::new("cert", "optional").await else {
        return;
    };
    let sidecar = s.pki.issue("sidecar", "sidecar-eu", &[], false, true);
    let r = curl_with_cert(&s, &sidecar, "/prometheus/api/v1/labels").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(s.up.last().all("x-scope-orgid"), ["team-d"]);

    let stranger = s.pki.issue("stranger", "stranger", &[], false, true);
    let r = curl_with_cert(&s, &stranger, "/prometheus/api/v1/labels").await;
    assert_eq!(
        r.status, 401,
        "a certificate with no identity must not pass"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_are_enforced_in_the_handshake() {
    let Some(s) = Setup::new("mtls-required", "required").await else {
        return;
    };
    let bearer = format!("Authorization: Bearer {READER_TOKEN}");
    let without = s.curl(&["-H", &bearer], "/prometheus/api/v1/labels").await;
    assert_ne!(
        without.exit, 0,
        "a client without a certificate completed a request"
    );
    assert_eq!(without.status, 0);

    // A certificate from another CA is refused too.
    let other = Pki::new("other-ca");
    let foreign = curl_with_cert(
        &s,
        &other.issue("sidecar", "sidecar-eu", &[], false, true),
        "/prometheus/api/v1/labels",
    )
    .await;
    assert_ne!(foreign.exit, 0);

    let with = curl_with_cert(
        &s,
        &s.pki.issue("sidecar", "sidecar-eu", &[], false, true),
        "/prometheus/api/v1/labels",
    )
    .await;
    assert_eq!(with.status, 200);
    assert_eq!(s.up.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_routes_accept_only_their_allow_list_and_federation_only_where_allowed() {
    let Some(s) = Setup::new("header", "optional").await else {
        return;
    };
    let cases: [(&str, &str, u16, Option<&str>); 8] = [
        ("/trusted/x", "X-Scope-OrgID: team-a", 200, Some("team-a")),
        ("/trusted/x", "X-Scope-OrgID: team-c", 403, None),
        ("/trusted/x", "X-Scope-OrgID: team-a|team-b", 403, None),
        ("/trusted/x", "X-Scope-OrgID: ../x", 400, None),
        ("/trusted/x", "X-Other: 1", 401, None),
        (
            "/federated/x",
            "X-Scope-OrgID: team-a|team-b",
            200,
            Some("team-a|team-b"),
        ),
        (
            "/federated/x",
            "X-Scope-OrgID: all",
            200,
            Some("team-a|team-b"),
        ),
        ("/federated/x", "X-Scope-OrgID: team-a|team-c", 403, None),
    ];
    for (path, header, status, tenant) in cases {
        let before = s.up.requests().len();
        let r = s.curl(&["-H", header], path).await;
        assert_eq!(r.status, status, "{path} {header}: {}", r.body);
        match tenant {
            Some(t) => assert_eq!(s.up.last().all("x-scope-orgid"), [t], "{path} {header}"),
            None => assert_eq!(
                s.up.requests().len(),
                before,
                "{path} {header} reached the upstream"
            ),
        }
    }
    // Two copies are refused rather than guessed between.
    let two = s
        .curl(
            &["-H", "X-Scope-OrgID: team-a", "-H", "x-scope-orgid: team-b"],
            "/trusted/x",
        )
        .await;
    assert_eq!(two.status, 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_is_removed_unless_the_route_forwards_it() {
    let Some(s) = Setup::new("fwd-auth", "optional").await else {
        return;
    };
    let bearer = format!("Authorization: Bearer {READER_TOKEN}");
    assert_eq!(s.curl(&["-H", &bearer], "/prometheus/x").await.status, 200);
    assert!(s.up.last().headers.get("authorization").is_none());
    assert_eq!(s.curl(&["-H", &bearer], "/keep-auth/x").await.status, 200);
    assert_eq!(
        s.up.last().all("authorization"),
        [format!("Bearer {READER_TOKEN}")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_or_too_large_headers_get_431() {
    let Some(s) = Setup::new("limits", "optional").await else {
        return;
    };
    // The same header count limit over both protocols (hyper enforces it for HTTP/1 only).
    for proto in ["--http1.1", "--http2"] {
        let mut args: Vec<String> = vec![proto.into(), "--cacert".into(), s.ca()];
        for i in 0..60 {
            args.push("-H".into());
            args.push(format!("X-Filler-{i}: x"));
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let r = curl(&argv, &s.url("/trusted/x")).await;
        assert_eq!(r.status, 431, "{proto}: {} {}", r.exit, r.stderr);
    }
    let big = format!("X-Big: {}", "a".repeat(70 * 1024));
    assert_eq!(
        curl(
            &["--http1.1", "--cacert", &s.ca(), "-H", &big],
            &s.url("/trusted/x")
        )
        .await
        .status,
        431
    );
    // Over HTTP/2 the header list limit is enforced by the protocol: the stream is refused.
    let h2 = curl(
        &["--http2", "--cacert", &s.ca(), "-H", &big],
        &s.url("/trusted/x"),
    )
    .await;
    assert!(
        h2.status == 431 || h2.exit != 0,
        "an oversized HTTP/2 header list was served: {}",
        h2.status
    );
    assert!(s.up.requests().is_empty());
}

/// The certificate a fresh TLS connection to tenantgate is served.
async fn served_certificate(addr: std::net::SocketAddr, ca: &Path) -> Vec<u8> {
    let tls = common::pki::tls_connect(addr, ca).await;
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn pem_der(path: &Path) -> Vec<u8> {
    tenantgate::tls::load_certs(path).unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_on_reload_without_dropping_open_connections() {
    if required_binary("curl").is_none() {
        return;
    }
    let pki = Pki::new("rotate");
    let server = pki.issue("server", "tenantgate", &["localhost"], true, false);
    let first = pem_der(&server.0);
    let up = Upstream::start().await;
    let file = pki.dir.join("tenantgate.yaml");
    std::fs::write(
        &file,
        gateway_yaml(&pki, &server, "optional").replace("{UPSTREAM}", &up.url()),
    )
    .unwrap();
    let gate = Gate::start_file(&file).await;
    assert_eq!(served_certificate(gate.addr, &pki.ca_file()).await, first);

    // A long response in flight on the old certificate.
    let in_flight = {
        let ca = pki.ca_file().display().to_string();
        let url = format!("https://127.0.0.1:{}/trusted/drip/1500", gate.addr.port());
        tokio::spawn(
            async move { curl(&["--cacert", &ca, "-H", "X-Scope-OrgID: team-a"], &url).await },
        )
    };
    tokio::time::sleep(Duration::from_millis(200)).await;

    let rotated = pki.issue("server", "tenantgate-rotated", &["localhost"], true, false);
    let second = pem_der(&rotated.0);
    assert_ne!(first, second);
    gate.handle
        .reload()
        .await
        .expect("reload with rotated certificate");
    assert_eq!(
        served_certificate(gate.addr, &pki.ca_file()).await,
        second,
        "new connections get the new certificate"
    );
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.body.len(),
        10 * 1024,
        "the connection opened before the rotation was cut"
    );
}

fn nginx_mtls_conf(dir: &Path, port: u16, server: &(PathBuf, PathBuf), ca: &Path) -> String {
    format!(
        r#"
# One process: killing it (the test's Drop) leaves no worker behind.
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
  log_format tenant '$request_method $uri tenant=$http_x_scope_orgid client=$ssl_client_s_dn verify=$ssl_client_verify';
  access_log {dir}/access.log tenant;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_client_certificate {ca};
    ssl_verify_client on;
    location / {{ default_type application/json; return 200 '{{"status":"success","data":[]}}'; }}
  }}
}}
"#,
        dir = dir.display(),
        cert = server.0.display(),
        key = server.1.display(),
        ca = ca.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_mtls_to_a_real_nginx_that_demands_a_client_certificate() {
    let Some(nginx) = required_binary("nginx") else {
        return;
    };
    let pki = Pki::new("upstream-mtls");
    // The server certificate names only "localhost": reaching it at 127.0.0.1 needs server_name.
    let server = pki.issue("nginx", "nginx", &["localhost"], false, false);
    let client = pki.issue("gate-client", "tenantgate", &[], false, true);
    let port = free_port();
    std::fs::write(
        pki.dir.join("nginx.conf"),
        nginx_mtls_conf(&pki.dir, port, &server, &pki.ca_file()),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(nginx);
    cmd.args([
        "-p",
        &pki.dir.display().to_string(),
        "-c",
        &pki.dir.join("nginx.conf").display().to_string(),
        "-e",
        &pki.dir.join("error.log").display().to_string(),
        "-g",
        "daemon off;",
    ]);
    let mut child = ChildGuard::spawn("nginx", cmd, pki.dir.join("nginx.out"));
    wait_for_port(port, &mut child).await;

    let yaml = format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
upstreams:
  with-cert:
    url: https://127.0.0.1:{port}
    tls: {{ ca_file: {ca}, cert_file: {cert}, key_file: {key}, server_name: localhost }}
  without-cert:
    url: https://127.0.0.1:{port}
    tls: {{ ca_file: {ca}, server_name: localhost }}
  wrong-name:
    url: https://127.0.0.1:{port}
    tls: {{ ca_file: {ca}, cert_file: {cert}, key_file: {key} }}
routes:
  - {{ name: good, match: {{ path_prefix: /good }}, upstream: with-cert, tenant: team-a }}
  - {{ name: nocert, match: {{ path_prefix: /nocert }}, upstream: without-cert, tenant: team-a }}
  - {{ name: badname, match: {{ path_prefix: /badname }}, upstream: wrong-name, tenant: team-a }}
"#,
        ca = pki.ca_file().display(),
        cert = client.0.display(),
        key = client.1.display(),
    );
    let gate = Gate::start(&yaml, "").await;
    let (status, _, body) = get(&gate.url("/good/api/v1/labels")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    // NGINX writes its access-log line after sending the response: wait for it.
    let access_log = pki.dir.join("access.log");
    eventually(20, "NGINX logging the verified client certificate", || {
        let log = std::fs::read_to_string(&access_log).unwrap_or_default();
        async move { log.contains("tenant=team-a client=CN=tenantgate verify=SUCCESS") }
    })
    .await;

    // NGINX answers 400 itself when no certificate was sent; that answer passes through.
    let (status, _, _) = get(&gate.url("/nocert/api/v1/labels")).await;
    assert_eq!(status, 400);
    // The certificate does not name 127.0.0.1: verification fails, tenantgate answers 502.
    let (status, _, body) = get(&gate.url("/badname/api/v1/labels")).await;
    assert_eq!(status, 502);
    assert!(
        String::from_utf8_lossy(&body).contains("upstream wrong-name"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_remote_writes_over_tls_with_basic_auth_and_a_bearer_token() {
    let Some(prometheus) = required_binary("prometheus") else {
        return;
    };
    let Some(s) = Setup::new("prom-rw", "optional").await else {
        return;
    };
    // A second writer identity for the bearer-token remote_write.
    let yaml = gateway_yaml(
        &s.pki,
        &(s.pki.dir.join("server.pem"), s.pki.dir.join("server.key")),
        "optional",
    )
    .replace(
        "tenant: {{ from: identity, identities: [prom-writer] }}",
        "",
    )
    .replace(
        "identities: [prom-writer] }",
        "identities: [prom-writer, other-team] }",
    )
    .replace("{UPSTREAM}", &s.up.url());
    let file = s.pki.dir.join("tenantgate.yaml");
    std::fs::write(&file, yaml).unwrap();
    let gate = Gate::start_file(&file).await;
    drop(s.gate);

    let prom_port = free_port();
    let config = format!(
        r#"
global: {{ scrape_interval: 1s }}
scrape_configs:
  - job_name: self
    static_configs: [{{ targets: ["127.0.0.1:{prom_port}"] }}]
remote_write:
  - url: https://localhost:{gate_port}/api/v1/push
    tls_config: {{ ca_file: {ca} }}
    basic_auth: {{ username: prom-writer, password: {WRITER_PASSWORD} }}
    headers: {{ X-Scope-OrgID: evil }}
    queue_config: {{ batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s }}
  - url: https://localhost:{gate_port}/api/v1/push
    tls_config: {{ ca_file: {ca} }}
    authorization: {{ type: Bearer, credentials_file: {dir}/other.token }}
    queue_config: {{ batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s }}
"#,
        gate_port = gate.addr.port(),
        ca = s.pki.ca_file().display(),
        dir = s.pki.dir.display(),
    );
    let pdir = s.pki.dir.join("prom");
    std::fs::create_dir_all(&pdir).unwrap();
    std::fs::write(pdir.join("prometheus.yml"), config).unwrap();
    let mut cmd = std::process::Command::new(prometheus);
    cmd.args([
        &format!("--config.file={}", pdir.join("prometheus.yml").display()),
        &format!("--storage.tsdb.path={}", pdir.join("data").display()),
        &format!("--web.listen-address=127.0.0.1:{prom_port}"),
    ]);
    let mut child = ChildGuard::spawn("prometheus", cmd, pdir.join("prometheus.log"));
    wait_for_port(prom_port, &mut child).await;

    let up = &s.up;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pushes: Vec<Seen> = up
            .requests()
            .into_iter()
            .filter(|r| r.uri == "/api/v1/push")
            .collect();
        let tenants: Vec<Vec<String>> = pushes.iter().map(|p| p.all("x-scope-orgid")).collect();
        for (p, t) in pushes.iter().zip(&tenants) {
            assert!(t == &["team-a"] || t == &["team-c"], "a push carried {t:?}");
            assert!(
                p.headers.get("authorization").is_none(),
                "credentials reached the upstream"
            );
            assert_eq!(p.all("content-encoding"), ["snappy"]);
        }
        if tenants.iter().any(|t| t == &["team-a"]) && tenants.iter().any(|t| t == &["team-c"]) {
            break;
        }
        child.assert_running();
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pushes with both tenants within 60s; prometheus log:\n{}",
            child.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_passwords_from_one_address_gets_429_while_known_users_pass() {
    let Some(s) = Setup::new("flood", "optional").await else {
        return;
    };
    // Addresses of their own (all of 127/8 is local), so the process-wide count of failed
    // logins cannot touch the other tests, which connect from 127.0.0.1.
    let right = format!("prom-writer:{WRITER_PASSWORD}");
    let push = |from: &'static str, user: String| {
        let s = &s;
        async move {
            s.curl(
                &[
                    "--interface",
                    from,
                    "-u",
                    &user,
                    "-X",
                    "POST",
                    "--data-binary",
                    "x",
                ],
                "/api/v1/push",
            )
            .await
        }
    };
    assert_eq!(push("127.0.0.5", right.clone()).await.status, 200);
    for i in 0..10 {
        let r = push("127.0.0.5", format!("prom-writer:wrong-{i}")).await;
        assert_eq!(r.status, 401, "failure {i}: {}", r.body);
    }
    let r = push("127.0.0.5", "prom-writer:wrong-again".into()).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(
        r.headers.to_ascii_lowercase().contains("retry-after: "),
        "{}",
        r.headers
    );
    // The known user's cached login still passes from the same address; others are untouched.
    assert_eq!(push("127.0.0.5", right).await.status, 200);
    assert_eq!(
        push("127.0.0.6", "prom-writer:wrong".into()).await.status,
        401
    );
    // The one 429 is counted as a refusal, under its reason.
    let admin = s.gate.admin.expect("admin listener");
    let (_, _, body) = get(&format!("http://{admin}/metrics")).await;
    let text = String::from_utf8_lossy(&body);
    let line = r#"tenantgate_requests_refused_total{reason="failed_login_limit"} 1"#;
    assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
}
