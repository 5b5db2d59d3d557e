//! The tenantgate under test: the built binary with a config that provokes every metric, and
//! the traffic that keeps them moving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::MAX_IN_FLIGHT;
use crate::common::Upstream;
use crate::harness::{self, Deadline, Http, Process};

pub struct TenantGateProcess {
    pub data: SocketAddr,
    pub admin: SocketAddr,
    pub process: Process,
}

impl TenantGateProcess {
    pub async fn start(http: &Http, dir: &Path, upstream: &Upstream) -> TenantGateProcess {
        // An upstream nobody listens on: 502s, connect errors and a failing health check.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let down = closed.local_addr().unwrap();
        drop(closed);
        let config = format!(
            r#"server:
  listen: 127.0.0.1:0
  shutdown_grace: 1s
  max_requests_in_flight: {MAX_IN_FLIGHT}
admin:
  listen: 127.0.0.1:0
upstreams:
  mimir:
    url: {up}
    # The stand-in's /slow answers after 3s: a 504 and a timeout error.
    timeouts: {{ connect: 2s, response_header: 1s }}
    health_check: {{ path: /, interval: 500ms, timeout: 500ms }}
  down:
    url: http://{down}
    timeouts: {{ connect: 1s, response_header: 2s }}
    health_check: {{ path: /ready, interval: 500ms, timeout: 500ms }}
routes:
  - name: prometheus
    match: {{ path_prefix: /prometheus }}
    upstream: mimir
    tenant: team-a
    prometheus:
      external_labels: {{ cluster: monitoring-test }}
  - name: push
    match: {{ path: /api/v1/push, methods: [POST] }}
    upstream: mimir
    tenant: team-b
  - name: slow
    match: {{ path: /slow }}
    upstream: mimir
    tenant: team-a
  - name: broken
    match: {{ path_prefix: /broken }}
    upstream: down
    tenant: team-c
"#,
            up = upstream.url()
        );
        let file = dir.join("tenantgate.yaml");
        std::fs::write(&file, config).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tenantgate"));
        cmd.arg("--config")
            .arg(&file)
            .args(["--log.format=json", "--log.access=false"])
            .env_remove("TENANTGATE_CONFIG");
        let mut process = Process::spawn("tenantgate", dir, &mut cmd).unwrap();

        // Both addresses come from the "listening" log lines (the ports are the kernel's pick).
        let log = dir.join("tenantgate.stderr.log");
        let deadline = Deadline::new("tenantgate logging its listeners", Duration::from_secs(60));
        let (data, admin) = loop {
            if let Err(e) = process.check_running() {
                panic!("{e}");
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let mut data = None;
            let mut admin = None;
            for v in text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            {
                let fields = if v["fields"].is_object() {
                    &v["fields"]
                } else {
                    &v
                };
                if fields["message"] != "listening" {
                    continue;
                }
                let addr = fields["addr"].as_str().and_then(|a| a.parse().ok());
                match fields["listener"].as_str() {
                    Some("data") => data = addr,
                    Some("admin") => admin = addr,
                    _ => {}
                }
            }
            if let (Some(d), Some(a)) = (data, admin) {
                break (d, a);
            }
            deadline
                .retry(&format!("log so far:\n{text}"))
                .await
                .unwrap();
        };
        // Not /-/ready: it answers 503 while the `down` upstream's health check fails.
        harness::wait_until_ok(
            &mut process,
            http,
            &format!("http://{admin}/-/healthy"),
            Duration::from_secs(30),
        )
        .await
        .unwrap();
        TenantGateProcess {
            data,
            admin,
            process,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic

/// Requests sent round after round until stopped, touching every metric the dashboard shows.
pub struct Traffic {
    codes: Arc<Mutex<BTreeMap<u16, u64>>>,
    rounds: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    pub fn start(gate: SocketAddr) -> Traffic {
        let codes = Arc::new(Mutex::new(BTreeMap::new()));
        let (tx, rounds) = tokio::sync::watch::channel(0u64);
        let counts = codes.clone();
        let task = tokio::spawn(async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let url = |p: &str| format!("http://{gate}{p}");
            let record = |code: u16| {
                *counts.lock().unwrap().entry(code).or_insert(0) += 1;
            };
            let send = |method: Method, path: String, body: Vec<u8>| {
                let client = client.clone();
                async move {
                    let req = Request::builder()
                        .method(method)
                        .uri(path)
                        .body(Full::new(Bytes::from(body)))
                        .unwrap();
                    match tokio::time::timeout(Duration::from_secs(30), client.request(req)).await {
                        Ok(Ok(resp)) => Some(resp),
                        _ => None,
                    }
                }
            };
            let mut pace = tokio::time::interval(Duration::from_millis(200));
            for round in 1u64.. {
                pace.tick().await;
                let plain = [
                    (Method::GET, "/prometheus/api/v1/labels", 0),
                    (Method::GET, "/prometheus/api/v1/status/config", 0), // the sidecar's heartbeat
                    (Method::GET, "/prometheus/api/v1/status/buildinfo", 0),
                    (Method::POST, "/prometheus/api/v1/read", 300),
                    (Method::POST, "/api/v1/push", 1000),
                    (Method::POST, "/prometheus/api/v1/status/config", 0), // 405: emulated, GET only
                    (Method::GET, "/slow", 0), // 504: no response headers within 1s
                    // 502s, connection refused; several, so that the route passes the error
                    // ratio alert's traffic guard (0.1/s over 5m) within a minute.
                    (Method::GET, "/broken/api/v1/labels", 0),
                    (Method::GET, "/broken/api/v1/series", 0),
                    (Method::GET, "/broken/api/v1/query", 0),
                    (Method::GET, "/broken/api/v1/labels", 0),
                    (Method::GET, "/broken/api/v1/series", 0),
                    (Method::GET, "/nowhere", 0), // 404: no route
                ];
                for (method, path, body) in plain {
                    if let Some(resp) = send(method, url(path), vec![b'x'; body]).await {
                        record(resp.status().as_u16());
                        let _ = resp.into_body().collect().await;
                    }
                }
                // Fill every slot of server.max_requests_in_flight with streams that hold theirs
                // until their bodies end, then one more request: refused with 503.
                let mut held = Vec::new();
                for _ in 0..MAX_IN_FLIGHT {
                    if let Some(resp) =
                        send(Method::GET, url("/prometheus/drip/1500"), vec![]).await
                    {
                        record(resp.status().as_u16());
                        held.push(resp);
                    }
                }
                if let Some(resp) =
                    send(Method::GET, url("/prometheus/api/v1/labels"), vec![]).await
                {
                    record(resp.status().as_u16());
                    let _ = resp.into_body().collect().await;
                }
                for resp in held {
                    let _ = resp.into_body().collect().await;
                }
                let _ = tx.send(round);
            }
        });
        Traffic {
            codes,
            rounds,
            task,
        }
    }

    pub async fn first_round_done(&self) {
        let mut rounds = self.rounds.clone();
        tokio::time::timeout(Duration::from_secs(60), rounds.wait_for(|r| *r >= 1))
            .await
            .expect("the first round of traffic within 60s")
            .expect("the traffic task ended");
    }

    pub fn report(&self) -> String {
        format!(
            "traffic so far: {} rounds, status codes {:?}",
            *self.rounds.borrow(),
            self.codes.lock().unwrap()
        )
    }

    pub async fn stop(self) -> BTreeMap<u16, u64> {
        self.task.abort();
        let _ = self.task.await;
        self.codes.lock().unwrap().clone()
    }
}
