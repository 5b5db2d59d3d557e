//! `tenant: { from: label }` routes, against an in-test upstream that records each part it gets
//! (decoded) and answers per tenant as a test says: one remote write in, one request per tenant
//! out with exactly one X-Scope-OrgID, and one merged answer back that retries exactly when it
//! should. The same against real Cortex is in the peers suite.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prost::Message;

use common::{Gate, bytes, otlp, send};
use tenantgate::migrate::wire::{Label, snappy, unsnappy};
use tenantgate::push::wire::{V1Request, V1Series, V2Request, V2Series};

/// What the upstream got: tenant headers, the decoded series' labels, and the version header.
#[derive(Debug, Clone)]
struct Part {
    tenants: Vec<String>,
    series: Vec<Vec<(String, String)>>,
    content_type: String,
}

type Plan = HashMap<String, (u16, Vec<(&'static str, &'static str)>)>;

struct Recorder {
    addr: SocketAddr,
    parts: Arc<Mutex<Vec<Part>>>,
    plan: Arc<Mutex<Plan>>,
}

async fn record(
    req: Request<Incoming>,
    parts: Arc<Mutex<Vec<Part>>>,
    plan: Arc<Mutex<Plan>>,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let tenants: Vec<String> = req
        .headers()
        .get_all("x-scope-orgid")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let content_type = req.headers()["content-type"].to_str().unwrap().to_owned();
    let otlp = req.uri().path().contains("/otlp/");
    let gzip = req
        .headers()
        .get("content-encoding")
        .is_some_and(|v| v == "gzip");
    let body = req.into_body().collect().await?.to_bytes();
    let series = if otlp {
        let raw = if gzip {
            tenantgate::push::otlp::gunzip(&body, 64 << 20)
                .unwrap()
                .unwrap()
        } else {
            body.to_vec()
        };
        otlp::resources(&raw)
    } else {
        decode_rw(&content_type, &body)
    };
    record_part(parts, plan, tenants, series, content_type)
}

fn decode_rw(content_type: &str, body: &[u8]) -> Vec<Vec<(String, String)>> {
    let raw = Bytes::from(unsnappy(body, 64 << 20).unwrap());
    if content_type.contains("v2") {
        let r = V2Request::decode(raw).unwrap();
        r.timeseries
            .iter()
            .map(|s| {
                s.labels_refs
                    .chunks(2)
                    .map(|p| {
                        (
                            r.symbols[p[0] as usize].clone(),
                            r.symbols[p[1] as usize].clone(),
                        )
                    })
                    .collect()
            })
            .collect()
    } else {
        V1Request::decode(raw)
            .unwrap()
            .timeseries
            .into_iter()
            .map(|t| {
                V1Series::decode(t)
                    .unwrap()
                    .labels
                    .into_iter()
                    .map(|l| (l.name, l.value))
                    .collect()
            })
            .collect()
    }
}

fn record_part(
    parts: Arc<Mutex<Vec<Part>>>,
    plan: Arc<Mutex<Plan>>,
    tenants: Vec<String>,
    series: Vec<Vec<(String, String)>>,
    content_type: String,
) -> Result<Response<Full<Bytes>>, hyper::Error> {
    let (status, headers) = plan
        .lock()
        .unwrap()
        .get(tenants.first().map(String::as_str).unwrap_or(""))
        .cloned()
        .unwrap_or((
            204,
            vec![("x-prometheus-remote-write-samples-written", "1")],
        ));
    parts.lock().unwrap().push(Part {
        tenants,
        series,
        content_type,
    });
    let mut resp = Response::new(Full::new(Bytes::from_static(b"as planned")));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    for (k, v) in headers {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    Ok(resp)
}

impl Recorder {
    async fn start() -> Recorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let parts = Arc::new(Mutex::new(Vec::new()));
        let plan = Arc::new(Mutex::new(Plan::new()));
        let (p, q) = (parts.clone(), plan.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (p, q) = (p.clone(), q.clone());
                let svc = hyper::service::service_fn(move |req| record(req, p.clone(), q.clone()));
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        Recorder { addr, parts, plan }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn take(&self) -> Vec<Part> {
        let mut v = std::mem::take(&mut *self.parts.lock().unwrap());
        v.sort_by(|a, b| a.tenants.cmp(&b.tenants));
        v
    }

    fn answer(&self, tenant: &str, status: u16, headers: Vec<(&'static str, &'static str)>) {
        self.plan
            .lock()
            .unwrap()
            .insert(tenant.to_owned(), (status, headers));
    }
}

/// Each part's tenants, and one value picked from each of its series (a label or metric name).
fn by_tenant(
    parts: &[Part],
    pick: impl Fn(&[(String, String)]) -> Vec<String>,
) -> Vec<(Vec<String>, Vec<String>)> {
    parts
        .iter()
        .map(|p| {
            (
                p.tenants.clone(),
                p.series.iter().flat_map(|s| pick(s)).collect(),
            )
        })
        .collect()
}

const CONFIG: &str = r#"
server: { listen: 127.0.0.1:0 }
upstreams: { mimir: { url: "{UPSTREAM}" } }
routes:
  - name: push
    match: { path: /api/v1/push }
    upstream: mimir
    tenant:
      from: label
      labels: [team, namespace]
      default: shared
      allow: [team-a, team-b, team-c, shared]
  - name: strict
    match: { path: /strict/api/v1/push }
    upstream: mimir
    rewrite: { path: /api/v1/push }
    tenant: { from: label, labels: [team], allow: [team-a], remove_label: true }
"#;

fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    pairs
        .iter()
        .map(|(n, v)| Label {
            name: (*n).into(),
            value: (*v).into(),
        })
        .collect()
}

fn v1(series: &[&[(&str, &str)]]) -> Bytes {
    #[derive(Clone, PartialEq, Message)]
    struct W {
        #[prost(message, repeated, tag = "1")]
        timeseries: Vec<V1Series>,
    }
    let raw = W {
        timeseries: series
            .iter()
            .map(|l| V1Series {
                labels: labels(l),
                samples: vec![Bytes::from_static(&[9, 0, 0, 0, 0, 0, 0, 240, 63, 16, 1])],
                ..V1Series::default()
            })
            .collect(),
    }
    .encode_to_vec();
    Bytes::from(snappy(&raw).unwrap())
}

async fn push(
    gate: &Gate,
    path: &str,
    body: Bytes,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let mut req = Request::post(gate.url(path))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "0.1.0");
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let (s, h, b) = send(req.body(bytes(body)).unwrap()).await;
    (s, h, String::from_utf8_lossy(&b).into_owned())
}

#[tokio::test]
async fn a_batch_of_three_teams_becomes_three_requests_with_one_tenant_each() {
    let up = Recorder::start().await;
    let gate = Gate::start(CONFIG, &up.url()).await;
    let body = v1(&[
        &[("__name__", "up"), ("team", "team-a"), ("job", "1")],
        &[("__name__", "up"), ("namespace", "team-b"), ("job", "2")],
        &[
            ("__name__", "up"),
            ("team", "team-c"),
            ("namespace", "team-b"),
        ],
        &[("__name__", "up"), ("job", "lonely")],
        &[("__name__", "up"), ("team", "team-a"), ("job", "3")],
    ]);
    // A client's own tenant header is never what decides.
    let (status, headers, text) =
        push(&gate, "/api/v1/push", body, &[("x-scope-orgid", "evil")]).await;
    assert_eq!(status, 204, "{text}");
    assert_eq!(
        headers["x-prometheus-remote-write-samples-written"], "4",
        "summed over 4 parts"
    );
    let parts = up.take();
    let got = by_tenant(&parts, |s| {
        s.iter()
            .find(|(n, _)| n == "job")
            .or_else(|| s.iter().find(|(n, _)| n == "team"))
            .map(|(_, v)| v.clone())
            .into_iter()
            .collect()
    });
    assert_eq!(
        got,
        [
            (vec!["shared".to_owned()], vec!["lonely".to_owned()]),
            (
                vec!["team-a".to_owned()],
                vec!["1".to_owned(), "3".to_owned()]
            ),
            (vec!["team-b".to_owned()], vec!["2".to_owned()]),
            // The first configured label wins: team, although namespace is also there.
            (vec!["team-c".to_owned()], vec!["team-c".to_owned()]),
        ]
    );
    assert!(
        parts
            .iter()
            .all(|p| p.content_type == "application/x-protobuf")
    );
}

#[tokio::test]
async fn one_tenant_failing_transiently_makes_the_whole_answer_retryable() {
    let up = Recorder::start().await;
    let gate = Gate::start(CONFIG, &up.url()).await;
    let two = || {
        v1(&[
            &[("__name__", "up"), ("team", "team-a")],
            &[("__name__", "up"), ("team", "team-b")],
        ])
    };
    up.answer("team-b", 429, vec![("retry-after", "9")]);
    let (status, headers, text) = push(&gate, "/api/v1/push", two(), &[]).await;
    assert_eq!(status, 429, "{text}");
    assert_eq!(headers["retry-after"], "9");
    assert!(text.contains("tenant team-b: HTTP 429"), "{text}");
    up.answer("team-a", 500, vec![]);
    let (status, _, text) = push(&gate, "/api/v1/push", two(), &[]).await;
    assert_eq!(status, 500, "{text}");
    // A refusal stays a refusal.
    up.answer("team-a", 400, vec![]);
    up.answer("team-b", 204, vec![]);
    let (status, _, text) = push(&gate, "/api/v1/push", two(), &[]).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        text.contains("tenant team-a: HTTP 400: as planned") && text.contains("tenant team-b: ok"),
        "{text}"
    );
    up.take();
    // An upstream that is down: every part fails to connect; 502, which the sender retries.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let down = Gate::start(CONFIG, &format!("http://{closed}")).await;
    let (status, _, text) = push(&down, "/api/v1/push", two(), &[]).await;
    assert_eq!(status, 502, "{text}");
    assert!(text.contains("tenant team-a: no answer"), "{text}");
}

#[tokio::test]
async fn nothing_is_sent_when_a_series_names_a_tenant_it_may_not_write() {
    let up = Recorder::start().await;
    let gate = Gate::start(CONFIG, &up.url()).await;
    let body = v1(&[
        &[("__name__", "up"), ("team", "team-a")],
        &[("__name__", "up"), ("team", "team-z")],
    ]);
    let (status, _, text) = push(&gate, "/strict/api/v1/push", body, &[]).await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("team-z"), "{text}");
    // No default on this route: a series without the label is a 400 naming it.
    let body = v1(&[&[("__name__", "up"), ("job", "x")]]);
    let (status, _, text) = push(&gate, "/strict/api/v1/push", body, &[]).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains(r#"job=\"x\""#), "{text}");
    // A label value that is not a tenant ID (Thanos #8806: path traversal through labels).
    let body = v1(&[&[("__name__", "up"), ("team", "../team-a")]]);
    let (status, _, _) = push(&gate, "/api/v1/push", body, &[]).await;
    assert_eq!(status, 400);
    assert!(up.take().is_empty(), "nothing reached the upstream");
    // remove_label: the tenant label is gone from what lands.
    let body = v1(&[&[("__name__", "up"), ("team", "team-a"), ("job", "j")]]);
    assert_eq!(push(&gate, "/strict/api/v1/push", body, &[]).await.0, 204);
    let parts = up.take();
    assert_eq!(
        parts[0].series[0],
        [
            ("__name__".to_owned(), "up".to_owned()),
            ("job".to_owned(), "j".to_owned())
        ]
    );
}

#[tokio::test]
async fn bodies_that_are_not_remote_write_or_too_large_inflated_are_refused() {
    let up = Recorder::start().await;
    let gate = Gate::start(
        &CONFIG.replace(
            "    upstream: mimir\n    tenant:\n      from: label",
            "    upstream: mimir\n    max_request_body: 64KiB\n    tenant:\n      from: label",
        ),
        &up.url(),
    )
    .await;
    let (s, _, _) = send(
        Request::post(gate.url("/api/v1/push"))
            .header("content-type", "application/json")
            .header("content-encoding", "snappy")
            .body(bytes(v1(&[])))
            .unwrap(),
    )
    .await;
    assert_eq!(s, 415);
    let (s, _, _) = send(
        Request::post(gate.url("/api/v1/push"))
            .header("content-type", "application/x-protobuf")
            .body(bytes(v1(&[])))
            .unwrap(),
    )
    .await;
    assert_eq!(s, 415, "not snappy");
    // 20 bytes on the wire that claim to inflate to 1 MiB: refused from the header alone.
    let mut bomb = Vec::new();
    let mut n: u32 = 1 << 20;
    while n >= 0x80 {
        bomb.push((n as u8) | 0x80);
        n >>= 7;
    }
    bomb.push(n as u8);
    bomb.extend_from_slice(&[0; 16]);
    let (s, _, text) = push(&gate, "/api/v1/push", Bytes::from(bomb), &[]).await;
    assert_eq!(s, 413, "{text}");
    let (s, _, _) = push(
        &gate,
        "/api/v1/push",
        Bytes::from_static(b"\x05\x10junk"),
        &[],
    )
    .await;
    assert_eq!(s, 400);
    assert!(up.take().is_empty());
}

#[tokio::test]
async fn remote_write_2_gets_a_symbol_table_per_tenant() {
    let up = Recorder::start().await;
    let gate = Gate::start(CONFIG, &up.url()).await;
    let symbols: Vec<String> = ["", "__name__", "up", "team", "team-a", "team-b", "job", "x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let req = V2Request {
        symbols,
        timeseries: vec![
            V2Series {
                labels_refs: vec![1, 2, 3, 4, 6, 7],
                ..V2Series::default()
            },
            V2Series {
                labels_refs: vec![1, 2, 3, 5],
                ..V2Series::default()
            },
        ],
    };
    let body = Bytes::from(snappy(&req.encode_to_vec()).unwrap());
    let ct = "application/x-protobuf;proto=io.prometheus.write.v2.Request";
    let (s, _, text) = send(
        Request::post(gate.url("/api/v1/push"))
            .header("content-type", ct)
            .header("content-encoding", "snappy")
            .header("x-prometheus-remote-write-version", "2.0.0")
            .body(bytes(body))
            .unwrap(),
    )
    .await;
    assert_eq!(s, 204, "{}", String::from_utf8_lossy(&text));
    let parts = up.take();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0].tenants, ["team-a"]);
    assert_eq!(parts[0].series[0].len(), 3);
    assert_eq!(parts[1].tenants, ["team-b"]);
    assert!(
        parts.iter().all(|p| p.content_type == ct),
        "Content-Type with its proto= unchanged"
    );
}

#[tokio::test]
async fn an_identity_writes_only_to_the_tenants_it_maps_to() {
    let up = Recorder::start().await;
    let dir = common::temp_dir("split-identity");
    let token = "split-token-0123456789abcdef";
    std::fs::write(dir.join("token"), token).unwrap();
    let yaml = format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
upstreams: {{ mimir: {{ url: "{{UPSTREAM}}" }} }}
identities:
  - name: prom-ab
    tenant: "team-a|team-b"
    bearer_token: {{ file: {} }}
routes:
  - name: mine
    match: {{ path: /api/v1/push }}
    upstream: mimir
    tenant: {{ from: label, labels: [team], identities: [prom-ab] }}
"#,
        dir.join("token").display()
    );
    let gate = Gate::start(&yaml, &up.url()).await;
    let auth = format!("Bearer {token}");
    let ab = || {
        v1(&[
            &[("__name__", "up"), ("team", "team-a")],
            &[("__name__", "up"), ("team", "team-b")],
        ])
    };
    assert_eq!(
        push(&gate, "/api/v1/push", ab(), &[]).await.0,
        401,
        "no credentials"
    );
    let (s, _, text) = push(&gate, "/api/v1/push", ab(), &[("authorization", &auth)]).await;
    assert_eq!(s, 204, "{text}");
    assert_eq!(up.take().len(), 2);
    let c = v1(&[
        &[("__name__", "up"), ("team", "team-a")],
        &[("__name__", "up"), ("team", "team-c")],
    ]);
    let (s, _, text) = push(&gate, "/api/v1/push", c, &[("authorization", &auth)]).await;
    assert_eq!(s, 403, "{text}");
    assert!(
        text.contains("team-c") && text.contains("prom-ab"),
        "{text}"
    );
    assert!(up.take().is_empty());
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn otlp_is_split_by_a_resource_attribute_gzip_or_not() {
    let up = Recorder::start().await;
    let yaml = r#"
server: { listen: 127.0.0.1:0 }
upstreams: { mimir: { url: "{UPSTREAM}" } }
routes:
  - name: otlp
    match: { path: /otlp/v1/metrics }
    upstream: mimir
    tenant: { from: label, attributes: [service.namespace], default: shared, allow: [team-a, team-b, shared] }
"#;
    let gate = Gate::start(yaml, &up.url()).await;
    let body = otlp::export(
        &[
            (Some("team-a"), "m1"),
            (Some("team-b"), "m2"),
            (None, "m3"),
            (Some("team-a"), "m4"),
        ],
        1_700_000_000_000,
    );
    for gzip in [false, true] {
        let (payload, encoding) = if gzip {
            (tenantgate::push::otlp::gzip(&body).unwrap(), "gzip")
        } else {
            (body.clone(), "identity")
        };
        let (s, h, text) = send(
            Request::post(gate.url("/otlp/v1/metrics"))
                .header("content-type", "application/x-protobuf")
                .header("content-encoding", encoding)
                .body(bytes(payload))
                .unwrap(),
        )
        .await;
        assert_eq!(s, 204, "{}", String::from_utf8_lossy(&text));
        assert_eq!(h["content-type"], "application/x-protobuf");
        let parts = up.take();
        let got = by_tenant(&parts, |r| {
            r.iter()
                .filter(|(k, _)| k == "metric")
                .map(|(_, v)| v.clone())
                .collect()
        });
        assert_eq!(
            got,
            [
                (vec!["shared".to_owned()], vec!["m3".to_owned()]),
                (
                    vec!["team-a".to_owned()],
                    vec!["m1".to_owned(), "m4".to_owned()]
                ),
                (vec!["team-b".to_owned()], vec!["m2".to_owned()]),
            ],
            "gzip {gzip}"
        );
    }
    // OTLP senders retry only 429, 502, 503 and 504: a 500 of one part is answered 503.
    up.answer("team-b", 500, vec![]);
    let (s, _, _) = send(
        Request::post(gate.url("/otlp/v1/metrics"))
            .header("content-type", "application/x-protobuf")
            .body(bytes(body.clone()))
            .unwrap(),
    )
    .await;
    assert_eq!(s, 503);
    // OTLP/JSON is not split.
    let (s, _, _) = send(
        Request::post(gate.url("/otlp/v1/metrics"))
            .header("content-type", "application/json")
            .body(bytes("{}"))
            .unwrap(),
    )
    .await;
    assert_eq!(s, 415);
}
