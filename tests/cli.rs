//! The binary: `check` on every shipped config, clear config errors, and a real run of the
//! built-in default config.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tenantgate");

/// Creates the secrets config/gateway.yaml refers to, next to a copy of it.
fn gateway_with_secrets(dir: &Path) -> std::path::PathBuf {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(secrets.join("tls")).unwrap();
    std::fs::create_dir_all(secrets.join("tokens")).unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["mimir-gateway".to_owned()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(secrets.join("tls/ca.crt"), ca.pem()).unwrap();
    std::fs::write(secrets.join("tls/tls.crt"), cert.pem()).unwrap();
    std::fs::write(secrets.join("tls/tls.key"), key.serialize_pem()).unwrap();
    let hash = |p: &str| bcrypt::hash(p, 4).unwrap();
    std::fs::write(
        secrets.join("htpasswd"),
        format!(
            "prometheus-team-a:{}\nprometheus-team-b:{}\n",
            hash("a"),
            hash("b")
        ),
    )
    .unwrap();
    std::fs::write(
        secrets.join("tokens/grafana"),
        "grafana-token-0123456789abcdef\n",
    )
    .unwrap();
    let config = dir.join("gateway.yaml");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.yaml"),
        &config,
    )
    .unwrap();
    config
}

fn check(args: &[&str], config: &Path) -> String {
    let out = Command::new(BIN)
        .arg("check")
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("run check");
    assert!(
        out.status.success(),
        "{}: {}",
        config.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_accepts_every_file_in_config() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("config/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            // Syntax first: it needs none of the secrets a file refers to.
            let stdout = check(&["--syntax-only"], &path);
            assert!(stdout.contains(": ok"), "{stdout}");
            if !stdout.contains("not read (--syntax-only)") {
                // No secrets referenced: the full check runs on the file as shipped.
                let stdout = check(&[], &path);
                assert!(stdout.contains("tenant:"), "{stdout}");
            }
            checked += 1;
        }
    }
    assert!(
        checked >= 3,
        "expected sidecar, gateway and dev configs, checked {checked}"
    );
}

#[test]
fn the_gateway_example_passes_the_full_check_with_its_secrets_in_place() {
    let dir = std::env::temp_dir().join(format!("tenantgate-cli-gw-{}", std::process::id()));
    let config = gateway_with_secrets(&dir);
    let stdout = check(&[], &config);
    assert!(!stdout.contains("not read"), "{stdout}");
    assert!(
        stdout.contains("from the caller's identity (prometheus-team-a, prometheus-team-b)"),
        "{stdout}"
    );
    // No secret is ever printed.
    assert!(
        !stdout.contains("grafana-token-0123456789abcdef") && !stdout.contains("$2"),
        "{stdout}"
    );
    // And without them, the full check names the missing file.
    std::fs::remove_file(dir.join("secrets/tokens/grafana")).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The path as resolved (relative to the config's directory), and what to do about it.
    let resolved = std::path::absolute(dir.join("secrets/tokens/grafana")).unwrap();
    assert!(
        stderr.contains(&format!(
            "identities[2].bearer_token.file: cannot read {}",
            resolved.display()
        )),
        "{stderr}"
    );
    assert!(stderr.contains("--syntax-only"), "{stderr}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn check_prints_the_route_table_with_emulated_endpoints() {
    let out = Command::new(BIN).arg("check").output().expect("run check");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("<built-in config>: ok"), "{stdout}");
    assert!(
        stdout.contains("/prometheus/api/v1/status/config"),
        "{stdout}"
    );
    assert!(stdout.contains("prefix /prometheus"), "{stdout}");
}

#[test]
fn a_bad_config_names_the_key_and_line_and_exits_non_zero() {
    let dir = std::env::temp_dir().join(format!("tenantgate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.yaml");
    std::fs::write(&file, "upstreams:\n  mimir:\n    url: http://m\nroutes:\n  - name: a\n    match: { path_prefix: / }\n    upstream: mimri\n    tenant: t\n").unwrap();
    for args in [vec!["check"], vec![]] {
        let out = Command::new(BIN)
            .args(&args)
            .arg("--config")
            .arg(&file)
            .output()
            .expect("run");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(
                "bad.yaml:7:15: routes[0].upstream: unknown upstream \"mimri\" (known: mimir)"
            ),
            "{stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_and_version_work() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--upstream",
        "--tenant",
        "--listen",
        "--log.level",
        "--log.format",
        "check",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}");
    }
    let out = Command::new(BIN).arg("--version").output().unwrap();
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(version.starts_with("tenantgate "), "{version}");
    // What Prometheus tools print: revision, build date, toolchain.
    for part in [
        "revision: ",
        "build date: ",
        "rust version: rustc ",
        "platform: ",
    ] {
        assert!(
            version.contains(part),
            "--version lacks {part:?}:\n{version}"
        );
    }
}

/// Kills the child on drop, so a failed assertion leaves no process behind.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tenantgate started with JSON logs on a pipe: the log lines before its data listener's
/// "listening" line, that listener's address, and the rest of the log to read on.
struct JsonRun {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStderr>>,
    deadline: Instant,
    before: Vec<serde_json::Value>,
    addr: String,
}

impl JsonRun {
    fn start(mut cmd: Command) -> JsonRun {
        let mut child = Child(
            cmd.args(["--log.format", "json"])
                .stderr(Stdio::piped())
                .stdout(Stdio::null())
                .spawn()
                .expect("spawn tenantgate"),
        );
        let stderr = child.0.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut before = Vec::new();
        let mut log = String::new();
        while Instant::now() < deadline {
            let Some(Ok(line)) = lines.next() else { break };
            log.push_str(&line);
            log.push('\n');
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                continue;
            };
            if v["message"] == "listening"
                && v["listener"] == "data"
                && let Some(addr) = v["addr"].as_str()
            {
                let addr = addr.to_owned();
                return JsonRun {
                    child,
                    lines,
                    deadline,
                    before,
                    addr,
                };
            }
            before.push(v);
        }
        panic!("no listening line in:\n{log}")
    }

    /// The next `n` access-log lines.
    fn access_lines(&mut self, n: usize) -> Vec<serde_json::Value> {
        let mut seen = Vec::new();
        while seen.len() < n && Instant::now() < self.deadline {
            let Some(Ok(line)) = self.lines.next() else {
                break;
            };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v["target"] == "tenantgate::access"
            {
                seen.push(v);
            }
        }
        seen
    }
}

/// One HTTP/1.1 exchange written by hand (std only), the request ending the connection.
fn exchange(addr: &str, request: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(request.as_bytes()).unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    resp
}

#[test]
fn the_default_run_serves_the_dev_shim_and_exits_cleanly_on_sigterm() {
    // An upstream that refuses connections: a port just closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--upstream", &format!("http://{closed}")])
        .env_remove("TENANTGATE_CONFIG");
    let mut run = JsonRun::start(cmd);
    // The start-up line says what it forwards where.
    let start = run
        .before
        .iter()
        .find(|v| v["message"] == "tenantgate starting")
        .expect("a start-up line");
    let routes = start["routes"].as_str().unwrap_or_default();
    assert!(routes.contains("default -> mimir as anonymous"), "{start}");
    let upstreams = start["upstreams"].as_str().unwrap_or_default();
    assert!(upstreams.contains(&closed.to_string()), "{start}");
    // The emulated buildinfo endpoint, and a forward to the closed port.
    let resp = exchange(
        &run.addr,
        "GET /prometheus/api/v1/status/buildinfo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains(r#""version":"2.53.0""#), "{resp}");
    let resp = exchange(
        &run.addr,
        "GET /api/v1/labels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    // Both access lines: the client's address, a numeric duration, a 5xx at warn.
    let mut seen = Vec::new();
    for v in run.access_lines(2) {
        assert!(
            v["client"]
                .as_str()
                .unwrap_or_default()
                .starts_with("127.0.0.1:"),
            "{v}"
        );
        assert!(v["duration_ms"].is_f64(), "{v}");
        seen.push((
            v["path"].to_string(),
            v["status"].clone(),
            v["level"].clone(),
        ));
    }
    assert_eq!(
        seen,
        [
            (
                "\"/prometheus/api/v1/status/buildinfo\"".to_owned(),
                serde_json::json!(200),
                serde_json::json!("INFO")
            ),
            (
                "\"/api/v1/labels\"".to_owned(),
                serde_json::json!(502),
                serde_json::json!("WARN")
            ),
        ]
    );

    let child = &mut run.child;
    let status = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(code) = child.0.try_wait().expect("wait") {
            assert!(code.success(), "exit status {code:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "tenantgate did not exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The log is written by a thread of its own: what it held at exit was written out.
    let rest: Vec<String> = run.lines.by_ref().map_while(Result::ok).collect();
    assert!(
        rest.iter().any(|l| l.contains("all connections closed")),
        "the drain's last line is missing: {rest:?}"
    );
}

#[test]
fn a_stuck_stderr_never_holds_up_requests_and_the_lost_lines_are_counted() {
    use std::io::{BufRead, Read, Write};
    let mut cmd = Command::new(BIN);
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--upstream", "http://127.0.0.1:9"])
        .env_remove("TENANTGATE_CONFIG");
    let mut run = JsonRun::start(cmd);
    let admin = loop {
        let line = run.lines.next().expect("an admin listening line").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
        if v["message"] == "listening" && v["listener"] == "admin" {
            break v["addr"].as_str().unwrap().to_owned();
        }
    };
    // From here on nobody reads stderr: the pipe (64 KiB) fills, then the log buffer (2 MiB).
    // Each request's access line is about 350 bytes, so 12,000 requests overflow both.
    let mut s = std::net::TcpStream::connect(&run.addr).expect("connect");
    // A request stuck behind stderr would hang; fail instead.
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let request = b"GET /prometheus/api/v1/status/buildinfo HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut reader = std::io::BufReader::new(s.try_clone().unwrap());
    let mut status = String::new();
    for i in 0..12_000 {
        s.write_all(request).unwrap();
        status.clear();
        reader.read_line(&mut status).unwrap();
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "request {i}: {status:?}"
        );
        let mut length = 0;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).unwrap();
    }
    let metrics = exchange(
        &admin,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tenantgate_log_lines_dropped_total "))
        .unwrap_or_else(|| panic!("no dropped-lines metric in:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(dropped > 0, "12,000 lines fit a stuck stderr?\n{metrics}");
}

#[test]
fn probe_against_a_stopped_upstream_fails_with_a_readable_report() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = Command::new(BIN)
        .args([
            "check",
            "--probe",
            "--upstream",
            &format!("http://127.0.0.1:{port}"),
        ])
        .output()
        .expect("run check --probe");
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "FAIL  upstream mimir: unreachable at http://127.0.0.1:{port}"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("ok    route prometheus: emulated endpoints satisfy a Thanos sidecar"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL  route prometheus: remote read failed"),
        "{stdout}"
    );
    assert!(stdout.contains("checks passed,"), "{stdout}");
}

#[test]
fn a_refused_identity_is_named_in_the_access_log() {
    let dir = std::env::temp_dir().join(format!("tenantgate-cli-refused-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("token"), "reader-token-0123456789").unwrap();
    let config = dir.join("tenantgate.yaml");
    std::fs::write(
        &config,
        "server: { listen: 127.0.0.1:0 }\nupstreams: { mimir: { url: http://127.0.0.1:9 } }\nidentities:\n  - name: reader\n    tenant: team-a\n    bearer_token: { file: token }\n  - name: writer\n    tenant: team-a\n    bearer_token: { file: token2 }\nroutes:\n  - name: push\n    match: { path_prefix: / }\n    upstream: mimir\n    tenant: { from: identity, identities: [writer] }\n",
    )
    .unwrap();
    std::fs::write(dir.join("token2"), "writer-token-0123456789").unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&config);
    let mut run = JsonRun::start(cmd);
    let resp = exchange(
        &run.addr,
        "GET /x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer reader-token-0123456789\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    let logged = run.access_lines(1).pop();
    let v = logged.expect("an access line");
    assert_eq!(v["identity"], "reader", "{v}");
    assert_eq!(v["status"], 403, "{v}");
    let _ = std::fs::remove_dir_all(dir);
}

/// One logfmt line's `key=value` pairs, quoted values unescaped (`\"`, `\\`, `\n`).
fn logfmt_pairs(line: &str) -> std::collections::HashMap<String, String> {
    let mut pairs = std::collections::HashMap::new();
    let mut rest = line.trim_end();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim_start().to_owned();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => break,
                    },
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            (value, &quoted[end..])
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            (after[..end].to_owned(), &after[end..])
        };
        pairs.insert(key, value);
        rest = next;
    }
    pairs
}

#[test]
fn the_default_logfmt_access_lines_name_every_field() {
    // The default format is logfmt, where tenantgate writes access lines itself (not through
    // tracing): they must carry the fields the JSON lines carry, at the same levels.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Child(
        Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .args(["--upstream", &format!("http://{closed}")])
            .env_remove("TENANTGATE_CONFIG")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn tenantgate"),
    );
    let mut lines = BufReader::new(child.0.stderr.take().expect("stderr")).lines();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut addr = None;
    while addr.is_none() && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        let pairs = logfmt_pairs(&line);
        if pairs.get("msg").map(String::as_str) == Some("listening")
            && pairs.get("listener").map(String::as_str) == Some("data")
        {
            addr = pairs.get("addr").cloned();
        }
    }
    let addr = addr.expect("a logfmt listening line naming the data address");
    let resp = exchange(
        &addr,
        "GET /prometheus/api/v1/status/buildinfo?secret=s3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let resp = exchange(
        &addr,
        "GET /api/v1/labels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    assert!(resp.starts_with("HTTP/1.1 502"), "{resp}");
    let mut access = Vec::new();
    while access.len() < 2 && Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if logfmt_pairs(&line).get("msg").map(String::as_str) == Some("request") {
            access.push(line);
        }
    }
    assert_eq!(access.len(), 2, "two access lines: {access:?}");
    let expected = [
        ("info", "/prometheus/api/v1/status/buildinfo", "200", "none"),
        ("warn", "/api/v1/labels", "502", "mimir"),
    ];
    for (line, (level, path, status, upstream)) in access.iter().zip(expected) {
        assert!(line.starts_with("ts=20"), "{line}");
        assert!(
            !line.contains("s3"),
            "the query string is never logged: {line}"
        );
        let p = logfmt_pairs(line);
        assert_eq!(p["level"], level, "{line}");
        assert_eq!(p["path"], path, "{line}");
        assert_eq!(p["status"], status, "{line}");
        assert_eq!(p["method"], "GET", "{line}");
        assert!(p["client"].starts_with("127.0.0.1:"), "{line}");
        assert!(p["duration_ms"].parse::<f64>().is_ok(), "{line}");
        for key in [
            "route",
            "tenant",
            "tenant_from",
            "identity",
            "bytes_in",
            "bytes_out",
            "error",
        ] {
            assert!(p.contains_key(key), "{key} missing: {line}");
        }
        if status == "502" {
            assert_eq!(p["upstream"], upstream, "{line}");
            assert!(!p["error"].is_empty(), "{line}");
        }
    }
}
