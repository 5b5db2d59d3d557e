//! Early answers reach the client. tenantgate often answers before it has read a request body
//! (401 and 403 from the tenant step, 404 from routing, 413 from a declared size, and early
//! answers of the upstream). A client that is still uploading must get that answer, not a reset:
//! Prometheus treats a 401 or 413 as final and a reset as retryable. Driven by real curl, over
//! HTTP/1.1, HTTP/1.1 with TLS and HTTP/2 with TLS, fresh connection per try.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::pki::Pki;
use common::*;

const PASSWORD: &str = "right-password";

/// How often each case is tried. Losses were intermittent (up to 60 of 60 for some cases, a
/// few percent for others), so one try proves little.
const TRIES: usize = 200;

/// curl processes at once: enough to keep both cores busy without starving the gate.
const PARALLEL: usize = 4;

fn gate_yaml(dir: &std::path::Path, tls: Option<&(PathBuf, PathBuf)>) -> String {
    std::fs::write(
        dir.join("htpasswd"),
        format!(
            "writer:{}\nother:{}\n",
            bcrypt::hash(PASSWORD, 4).unwrap(),
            bcrypt::hash(PASSWORD, 4).unwrap()
        ),
    )
    .unwrap();
    let tls = tls.map_or(String::new(), |(cert, key)| {
        format!(
            "  tls: {{ cert_file: {}, key_file: {} }}\n",
            cert.display(),
            key.display()
        )
    });
    format!(
        r#"
server:
  listen: 127.0.0.1:0
  # Every 401 case sends a wrong password, thousands of times from 127.0.0.1.
  max_failed_logins: 0
{tls}upstreams:
  mimir: {{ url: "{{UPSTREAM}}" }}
identities:
  - {{ name: writer, tenant: team-a, basic_auth: {{ user: writer, htpasswd_file: {dir}/htpasswd }} }}
  - {{ name: other, tenant: team-b, basic_auth: {{ user: other, htpasswd_file: {dir}/htpasswd }} }}
routes:
  - name: auth
    match: {{ path_prefix: /auth }}
    upstream: mimir
    tenant: {{ from: identity }}
  - name: others-only
    match: {{ path_prefix: /forbidden }}
    upstream: mimir
    tenant: {{ from: identity, identities: [other] }}
  - name: tiny
    match: {{ path_prefix: /tiny }}
    upstream: mimir
    tenant: team-a
    max_request_body: 0B
"#,
        dir = dir.display()
    )
}

#[derive(Clone, Copy, Debug)]
enum Transport {
    H1,
    H1Tls,
    H2Tls,
}

/// One kind of early answer: the path and credentials that produce it.
fn request_for(status: u16) -> (&'static str, Option<String>) {
    match status {
        401 => ("/auth/api/v1/push", Some("writer:wrong".to_owned())),
        403 => ("/forbidden/api/v1/push", Some(format!("writer:{PASSWORD}"))),
        404 => ("/nowhere/api/v1/push", None),
        413 => ("/tiny/api/v1/push", None),
        _ => unreachable!(),
    }
}

struct Setup {
    _pki: Pki,
    _up: Upstream,
    plain: Gate,
    tls: Gate,
    ca: String,
    bodies: PathBuf,
}

impl Setup {
    async fn new() -> Option<Setup> {
        required_binary("curl")?;
        let pki = Pki::new("early");
        let server = pki.issue("server", "tenantgate", &["localhost"], true, false);
        let up = Upstream::start().await;
        let plain = Gate::start(&gate_yaml(&pki.dir, None), &up.url()).await;
        let tls = Gate::start(&gate_yaml(&pki.dir, Some(&server)), &up.url()).await;
        let bodies = pki.dir.join("bodies");
        std::fs::create_dir_all(&bodies).unwrap();
        for size in [1usize, 64 << 10, 10 << 20] {
            std::fs::write(bodies.join(size.to_string()), vec![b'x'; size]).unwrap();
        }
        let ca = pki.ca_file().display().to_string();
        Some(Setup {
            _pki: pki,
            _up: up,
            plain,
            tls,
            ca,
            bodies,
        })
    }

    fn url(&self, t: Transport, path: &str) -> String {
        match t {
            Transport::H1 => format!("http://127.0.0.1:{}{path}", self.plain.addr.port()),
            Transport::H1Tls | Transport::H2Tls => {
                format!("https://127.0.0.1:{}{path}", self.tls.addr.port())
            }
        }
    }

    /// Tries one case `TRIES` times; returns a description of every failure.
    async fn run_case(
        self: &Arc<Self>,
        t: Transport,
        size: usize,
        status: u16,
        extra: &'static [&'static str],
    ) -> Vec<String> {
        let (path, user) = request_for(status);
        let mut args: Vec<String> = vec!["-X".into(), "POST".into()];
        args.push("--data-binary".into());
        args.push(format!("@{}", self.bodies.join(size.to_string()).display()));
        match t {
            Transport::H1 => args.push("--http1.1".into()),
            Transport::H1Tls => {
                args.extend(["--http1.1".into(), "--cacert".into(), self.ca.clone()])
            }
            Transport::H2Tls => args.extend(["--http2".into(), "--cacert".into(), self.ca.clone()]),
        }
        if let Some(u) = user {
            args.extend(["-u".into(), u]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let url = self.url(t, path);
        let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let mut tries = tokio::task::JoinSet::new();
        for _ in 0..TRIES {
            let (args, url, limit) = (args.clone(), url.clone(), limit.clone());
            tries.spawn(async move {
                let _slot = limit.acquire().await.unwrap();
                let argv: Vec<&str> = args.iter().map(String::as_str).collect();
                curl(&argv, &url).await
            });
        }
        let mut failures = Vec::new();
        while let Some(done) = tries.join_next().await {
            let c = done.unwrap();
            if c.status != status || c.exit != 0 {
                failures.push(format!(
                    "status {} curl exit {}: {}",
                    c.status,
                    c.exit,
                    c.stderr.trim()
                ));
            }
        }
        failures
    }
}

async fn every_try_gets_its_answer(transports: &[Transport], extra: &'static [&'static str]) {
    let Some(s) = Setup::new().await else {
        return;
    };
    let s = Arc::new(s);
    let mut report = Vec::new();
    for &t in transports {
        for size in [1usize, 64 << 10, 10 << 20] {
            for status in [401, 403, 404, 413] {
                let failures = s.run_case(t, size, status, extra).await;
                if !failures.is_empty() {
                    report.push(format!(
                        "{t:?} {size} B {status} {extra:?}: {} of {TRIES} lost, e.g. {}",
                        failures.len(),
                        failures[0]
                    ));
                }
            }
        }
    }
    assert!(
        report.is_empty(),
        "early answers lost:\n{}",
        report.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_reach_http2_clients_that_are_still_sending() {
    every_try_gets_its_answer(&[Transport::H2Tls], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_reach_http1_clients_that_are_still_sending() {
    // curl asks `Expect: 100-continue` for bodies over 1 MiB: the answer comes without 100
    // Continue and the body is never sent.
    every_try_gets_its_answer(&[Transport::H1, Transport::H1Tls], &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_answers_reach_http1_clients_that_send_without_waiting_for_100_continue() {
    every_try_gets_its_answer(&[Transport::H1, Transport::H1Tls], &["-H", "Expect:"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_over_the_limit_gets_413_after_part_of_it_went_upstream() {
    // No Content-Length: the limit is found while streaming, after the upstream has seen a part.
    let Some(s) = Setup::new().await else {
        return;
    };
    let s = Arc::new(s);
    let mut report = Vec::new();
    for t in [Transport::H1, Transport::H1Tls, Transport::H2Tls] {
        for extra in [
            &["-H", "Transfer-Encoding: chunked"][..],
            &["-H", "Transfer-Encoding: chunked", "-H", "Expect:"][..],
        ] {
            let extra: &'static [&'static str] = extra;
            let failures = s.run_case(t, 10 << 20, 413, extra).await;
            if !failures.is_empty() {
                report.push(format!(
                    "{t:?} {extra:?}: {} of {TRIES} lost, e.g. {}",
                    failures.len(),
                    failures[0]
                ));
            }
        }
    }
    assert!(report.is_empty(), "413s lost:\n{}", report.join("\n"));
}
