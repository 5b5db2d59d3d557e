//! End-to-end: tenantgate between real clients and a Mimir stand-in, all real processes on
//! loopback.
//!
//! The stand-in is a real Prometheus (API under `/prometheus`, remote write receiver on) behind a
//! real NGINX that, like Mimir, answers `401 no org id` without an `X-Scope-OrgID`, takes remote
//! write at `POST /api/v1/push`, and records the tenant of every request (its access log shows the
//! first copy of the header; a mirror shows every copy). Clients are the real `promtool` and a
//! real Prometheus, plus hand-written remote read/write requests shaped like a Thanos sidecar's.
//!
//! Needs `prometheus`, `promtool` and `nginx`; without them the tests skip loudly, or fail under
//! `CI=true`. Run with `cargo test --test e2e -- --test-threads=2`.

// Shared with the migrate and peers suites: not every helper is used here.
#[allow(dead_code)]
#[path = "e2e/harness.rs"]
mod harness;
#[path = "e2e/prompb.rs"]
mod prompb;

use std::collections::BTreeMap;
use std::time::Duration;

use http::StatusCode;

use harness::{
    Binaries, Deadline, Http, Prometheus, SpoofingRelay, StandIn, TempDir, TenantGate, enc, now_ms,
    probe, raw_get, run_tool, sidecar_config,
};
use prompb::{ResponseType, Series};

const METRIC: &str = "e2e_temperature_celsius";

/// What the remote-writing client adds on its way to tenantgate (header names in lower case).
const SPOOFED_TENANTS: &[(&str, &str)] = &[
    ("x-scope-orgid", "evil"),
    ("x-scope-orgid", "team-b|team-a"),
];

const REMOTE_WRITE_HEADERS: [(&str, &str); 3] = [
    ("Content-Encoding", "snappy"),
    ("Content-Type", "application/x-protobuf"),
    ("X-Prometheus-Remote-Write-Version", "0.1.0"),
];

/// Known data: two series of 300 samples over ~27 minutes ending about a minute ago. Timestamps
/// are whole seconds but for a 137 ms jitter on every tenth sample, with gaps of 30 s, 5 min and
/// 12 min early in the second head chunk (which starts at the 121st sample) so that they land
/// inside a chunk; values repeat, creep and jump. Together they exercise every delta-of-delta
/// bucket and both kinds of XOR value window.
fn known_series(now: i64) -> Vec<Series> {
    let base = (now / 1000) * 1000 - 28 * 60 * 1000;
    let gap = |i: i64| match i {
        ..125 => 0,
        125..130 => 30_000,
        130..135 => 330_000,
        _ => 1_050_000,
    };
    let ts = |i: i64| base + i * 1000 + if i % 10 == 3 { 137 } else { 0 } + gap(i);
    let a = (0..300)
        .map(|i| (ts(i), 20.0 + (i % 17) as f64 * 0.25))
        .collect();
    let b = (0..300)
        .map(|i| {
            let v = if i % 50 == 7 {
                1e12 + i as f64
            } else {
                ((i * 7919) % 1000) as f64 / 8.0 - 40.0
            };
            (ts(i), v)
        })
        .collect();
    vec![
        Series::new(
            &[("__name__", METRIC), ("job", "e2e-writer"), ("room", "a")],
            a,
        ),
        Series::new(
            &[("__name__", METRIC), ("job", "e2e-writer"), ("room", "b")],
            b,
        ),
    ]
}

/// The time range covering every known sample.
fn span(series: &[Series]) -> (i64, i64) {
    let all = series.iter().flat_map(|s| s.samples.iter().map(|p| p.0));
    let min = all.clone().min().expect("known series have samples");
    let max = all.max().expect("known series have samples");
    (min, max)
}

/// Remote-writes `series` through tenantgate's `/api/v1/push`, as Prometheus would.
async fn push(http: &Http, tg: &TenantGate, series: &[Series]) {
    let reply = http
        .post(
            &tg.url("/api/v1/push"),
            &REMOTE_WRITE_HEADERS,
            prompb::encode_write_request(series),
        )
        .await
        .expect("remote write through tenantgate");
    assert!(
        reply.status.is_success(),
        "remote write through tenantgate: HTTP {}: {}",
        reply.status,
        reply.text()
    );
}

fn assert_same_series(what: &str, got: &[Series], want: &[Series]) {
    let names = |s: &[Series]| s.iter().map(|x| x.labels.clone()).collect::<Vec<_>>();
    assert_eq!(names(got), names(want), "{what}: series differ");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(
            g.samples.len(),
            w.samples.len(),
            "{what}: {:?}: sample count differs",
            w.labels
        );
        if let Some((i, (gs, ws))) = g
            .samples
            .iter()
            .zip(&w.samples)
            .enumerate()
            .find(|(_, (gs, ws))| gs != ws)
        {
            panic!(
                "{what}: {:?}: sample {i} is {gs:?}, was written as {ws:?}",
                w.labels
            );
        }
    }
}

/// `MAJOR.MINOR.PATCH[-pre][+build]` with no `v` and no leading zeros, as the sidecar parses it.
/// A pre-release counts as the patch below (2.24.0-rc.0 < 2.24.0).
fn strict_semver(v: &str) -> Option<(u64, u64, u64, bool)> {
    let core = v.split('+').next()?;
    let (core, pre) = match core.split_once('-') {
        Some((c, p)) if !p.is_empty() => (c, true),
        Some(_) => return None,
        None => (core, false),
    };
    let nums: Vec<u64> = core
        .split('.')
        .map(|n| {
            let ok = !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
                && (n == "0" || !n.starts_with('0'));
            ok.then(|| n.parse().ok()).flatten()
        })
        .collect::<Option<_>>()?;
    match nums.as_slice() {
        [major, minor, patch] => Some((*major, *minor, *patch, pre)),
        _ => None,
    }
}

#[derive(serde::Deserialize)]
struct PromConfig {
    global: PromGlobal,
}

#[derive(serde::Deserialize)]
struct PromGlobal {
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
}

/// Scenario 1: every call a Thanos sidecar makes at start-up succeeds through tenantgate, in
/// the form the sidecar (and promtool) accept, and data written through tenantgate is listed by
/// the label and series endpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_start_up_sequence_succeeds_and_finds_the_written_data() {
    let Some(bins) = Binaries::require("sidecar start-up") else {
        return;
    };
    let http = Http::new();
    let mimir = StandIn::start(&bins, &http, "sidecar")
        .await
        .expect("start the Mimir stand-in");
    let tg = TenantGate::start(&sidecar_config(&mimir.url()))
        .await
        .expect("start tenantgate");
    let base = tg.url("/prometheus");

    // buildinfo: strict semver, recent enough for the sidecar to use match[].
    let build = http
        .get(&format!("{base}/api/v1/status/buildinfo"))
        .await
        .and_then(|r| r.prom_data())
        .expect("GET api/v1/status/buildinfo");
    let version = build["version"]
        .as_str()
        .expect("buildinfo data.version is a string");
    let (major, minor, patch, pre) = strict_semver(version)
        .unwrap_or_else(|| panic!("buildinfo version {version:?} is not strict semver"));
    assert!(
        (major, minor, patch) > (2, 24, 0) || ((major, minor, patch) == (2, 24, 0) && !pre),
        "buildinfo version {version} is older than 2.24.0: the sidecar would not use match[]"
    );

    // status/config: a Prometheus config promtool accepts, holding exactly our external labels.
    let config = http
        .get(&format!("{base}/api/v1/status/config"))
        .await
        .and_then(|r| r.prom_data())
        .expect("GET api/v1/status/config");
    let yaml = config["yaml"]
        .as_str()
        .expect("status/config data.yaml is a string");
    let file = mimir
        .dir
        .write("status-config.yml", yaml.as_bytes())
        .expect("save data.yaml");
    let file = file.to_str().expect("temp paths are UTF-8");
    let check = run_tool(&bins.promtool, &["check", "config", file], None)
        .await
        .expect("run promtool check config");
    assert!(
        check.success,
        "promtool check config rejects:\n{yaml}\n{check}"
    );
    let parsed: PromConfig = serde_saphyr::from_str(yaml)
        .unwrap_or_else(|e| panic!("status/config yaml does not parse: {e}\n{yaml}"));
    let want: BTreeMap<String, String> = [("cluster", "e2e"), ("tenant", "team-a")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(
        parsed.global.external_labels, want,
        "external labels in:\n{yaml}"
    );

    // /metrics: valid text format with the TYPE line the sidecar needs.
    let metrics = http
        .get(&format!("{base}/metrics"))
        .await
        .expect("GET /prometheus/metrics");
    assert_eq!(metrics.status, StatusCode::OK, "{}", metrics.text());
    assert!(
        metrics
            .text()
            .contains("# TYPE prometheus_tsdb_lowest_timestamp_seconds gauge\n"),
        "/metrics lacks the TYPE line of prometheus_tsdb_lowest_timestamp_seconds:\n{}",
        metrics.text()
    );
    let file = mimir
        .dir
        .write("metrics.txt", &metrics.body)
        .expect("save /metrics");
    let check = run_tool(&bins.promtool, &["check", "metrics"], Some(&file))
        .await
        .expect("run promtool check metrics");
    assert!(
        check.success,
        "promtool check metrics rejects:\n{}\n{check}",
        metrics.text()
    );

    // Written data shows up in labels, label values and series, queried the sidecar's way.
    let series = known_series(now_ms());
    push(&http, &tg, &series).await;
    let (start, end) = span(&series);
    let range = format!(
        "match%5B%5D={}&start={}&end={}",
        enc(METRIC),
        start / 1000,
        end / 1000 + 1
    );
    let labels = http
        .get(&format!("{base}/api/v1/labels?{range}"))
        .await
        .and_then(|r| r.prom_data())
        .expect("GET api/v1/labels");
    assert_eq!(labels, serde_json::json!(["__name__", "job", "room"]));
    let names = http
        .get(&format!("{base}/api/v1/label/__name__/values?{range}"))
        .await
        .and_then(|r| r.prom_data())
        .expect("GET api/v1/label/__name__/values");
    assert_eq!(names, serde_json::json!([METRIC]));
    let found = http
        .get(&format!("{base}/api/v1/series?{range}"))
        .await
        .and_then(|r| r.prom_data())
        .expect("GET api/v1/series");
    let want: Vec<serde_json::Value> = series.iter().map(|s| serde_json::json!(s.labels)).collect();
    assert_eq!(found, serde_json::json!(want));

    // Every one of those reached Mimir as team-a, except the emulated ones, which did not reach it.
    let ours = mimir
        .access_log(4, |l| {
            !l.request_uri.starts_with("/prometheus/-/") && !l.request_uri.starts_with("/__e2e/")
        })
        .await
        .expect("push, labels, label values and series in the access log");
    assert!(
        ours.iter().all(|l| l.tenant == "team-a"),
        "requests reached the stand-in without tenant team-a: {ours:#?}"
    );
    assert!(
        !ours
            .iter()
            .any(|l| l.request_uri.contains("/status/") || l.request_uri.ends_with("/metrics")),
        "emulated endpoints were forwarded: {ours:#?}"
    );
}

/// Scenario 2: remote read, sent as the sidecar sends it, streams CRC-checked XOR chunks that
/// decode to exactly what was written; a SAMPLES-only reader gets a snappy ReadResponse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_read_returns_what_was_written_both_streamed_and_sampled() {
    let Some(bins) = Binaries::require("remote read") else {
        return;
    };
    let http = Http::new();
    let mimir = StandIn::start(&bins, &http, "remote-read")
        .await
        .expect("start the Mimir stand-in");
    let tg = TenantGate::start(&sidecar_config(&mimir.url()))
        .await
        .expect("start tenantgate");
    let read_url = tg.url("/prometheus/api/v1/read");
    let mut series = known_series(now_ms());
    push(&http, &tg, &series).await;
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    let (start, end) = span(&series);

    // Streamed: what a Thanos sidecar asks for.
    let body = prompb::encode_read_request(
        start - 1000,
        end + 1000,
        &[("__name__", METRIC)],
        &[ResponseType::StreamedXorChunks, ResponseType::Samples],
    );
    let reply = http
        .post(
            &read_url,
            &[
                ("Content-Encoding", "snappy"),
                ("Content-Type", "application/x-stream-protobuf"),
                ("X-Prometheus-Remote-Read-Version", "0.1.0"),
            ],
            body,
        )
        .await
        .expect("streamed remote read through tenantgate");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(
        reply.header("content-type"),
        "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"
    );
    let frames =
        prompb::decode_frames(&reply.body).expect("every frame is whole and its CRC32C checks");
    assert!(!frames.is_empty(), "the streamed response has no frames");
    assert!(
        frames.iter().all(|f| f.message.query_index == 0),
        "frames answer a query that was not asked"
    );
    let chunks: usize = frames
        .iter()
        .flat_map(|f| &f.message.chunked_series)
        .map(|s| s.chunks.len())
        .sum();
    assert!(
        chunks > series.len(),
        "expected several chunks per series (300 samples, 120 per head chunk), got {chunks}"
    );
    let streamed = prompb::series_from_frames(&frames).expect("decode the XOR chunks");
    assert_same_series("streamed remote read", &streamed, &series);

    // SAMPLES only: an older reader.
    let body = prompb::encode_read_request(
        start - 1000,
        end + 1000,
        &[("__name__", METRIC)],
        &[ResponseType::Samples],
    );
    let reply = http
        .post(
            &read_url,
            &[
                ("Content-Encoding", "snappy"),
                ("Content-Type", "application/x-protobuf"),
                ("X-Prometheus-Remote-Read-Version", "0.1.0"),
            ],
            body,
        )
        .await
        .expect("sampled remote read through tenantgate");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("content-type"), "application/x-protobuf");
    assert_eq!(reply.header("content-encoding"), "snappy");
    let results = prompb::decode_sampled_response(&reply.body).expect("decode the ReadResponse");
    assert_eq!(results.len(), 1, "one query, one result");
    assert_same_series("sampled remote read", &results[0], &series);

    let reads = mimir
        .access_log(2, |l| l.request_uri == "/prometheus/api/v1/read")
        .await
        .expect("both reads in the access log");
    assert_eq!(reads.len(), 2, "{reads:#?}");
    assert!(reads.iter().all(|l| l.tenant == "team-a"), "{reads:#?}");
}

/// Scenario 3: a real Prometheus remote-writes through tenantgate; its samples become queryable,
/// every push reaches Mimir as team-a, never as a tenant the sender tried to set, and a write
/// Mimir rejects comes back with Mimir's 4xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_remote_writes_as_team_a_whatever_tenant_it_claims() {
    let Some(bins) = Binaries::require("remote write") else {
        return;
    };
    let http = Http::new();
    let mimir = StandIn::start(&bins, &http, "remote-write")
        .await
        .expect("start the Mimir stand-in");
    let tg = TenantGate::start(&sidecar_config(&mimir.url()))
        .await
        .expect("start tenantgate");
    // The client claims tenants of its own: in its config (which this Prometheus build accepts
    // but does not send) and through a relay that adds two more copies on the way.
    let relay = SpoofingRelay::start(tg.addr, SPOOFED_TENANTS)
        .await
        .expect("start the spoofing relay");
    let push_url = format!("http://{}/api/v1/push", relay.addr);
    let client_dir = TempDir::new("remote-write-client").expect("temp dir");
    let _client = Prometheus::start(
        &bins,
        &http,
        client_dir.path(),
        "client-prometheus",
        "",
        &[],
        |port| {
            format!(
                r#"global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: e2e-client
    static_configs:
      - targets: ["127.0.0.1:{port}"]
remote_write:
  - url: {push_url}
    headers:
      X-Scope-OrgID: evil
    queue_config:
      batch_send_deadline: 1s
      min_backoff: 100ms
      max_backoff: 1s
"#
            )
        },
    )
    .await
    .expect("start the client Prometheus (remote_write with headers: X-Scope-OrgID)");

    let query = tg.url(&format!(
        "/prometheus/api/v1/query?query={}",
        enc(r#"up{job="e2e-client"}"#)
    ));
    let deadline = Deadline::new(
        "the client's up{job=\"e2e-client\"} becoming queryable in the stand-in",
        Duration::from_secs(60),
    );
    loop {
        let last = match http.get(&query).await.and_then(|r| r.prom_data()) {
            Ok(data) => match data["result"].as_array() {
                Some(r) if !r.is_empty() => {
                    assert_eq!(r[0]["value"][1], "1", "{data}");
                    break;
                }
                _ => format!("no result yet: {data}"),
            },
            Err(e) => e,
        };
        deadline.retry(&last).await.expect("remote write arrives");
    }

    assert!(
        relay.forwarded() > 0,
        "no push went through the spoofing relay"
    );
    let pushes = mimir
        .access_log(1, |l| l.request_uri.starts_with("/api/v1/push"))
        .await
        .expect("pushes in the access log");
    assert!(
        pushes
            .iter()
            .all(|l| l.tenant == "team-a" && l.status == 204),
        "pushes not as team-a, or not accepted: {pushes:#?}"
    );
    let everything = mimir.access_log(0, |_| true).await.expect("the access log");
    assert!(
        everything
            .iter()
            .all(|l| !l.tenant.contains("evil") && !l.tenant.contains("team-b")),
        "the client's own tenant reached the stand-in: {everything:#?}"
    );
    let seen: Vec<_> = mimir
        .seen()
        .into_iter()
        .filter(|s| s.uri.starts_with("/api/v1/push"))
        .collect();
    assert!(!seen.is_empty(), "the tenant probe saw no push");
    assert!(
        seen.iter().all(|s| s.tenants == ["team-a"]),
        "pushes carried other X-Scope-OrgID copies: {seen:#?}"
    );

    // A write Mimir rejects keeps its 4xx (a 5xx would make Prometheus retry it forever).
    let series = known_series(now_ms());
    push(&http, &tg, &series).await;
    let stale = [Series::new(
        &[("__name__", METRIC), ("job", "e2e-writer"), ("room", "a")],
        vec![series[0].samples[0]],
    )];
    let rejected = http
        .post(
            &tg.url("/api/v1/push"),
            &REMOTE_WRITE_HEADERS,
            prompb::encode_write_request(&stale),
        )
        .await
        .expect("out-of-order remote write through tenantgate");
    assert_eq!(
        rejected.status,
        StatusCode::BAD_REQUEST,
        "an out-of-order sample: {}",
        rejected.text()
    );
    assert!(
        rejected.text().contains("out of order"),
        "Prometheus' reason did not come through: {}",
        rejected.text()
    );
}

/// Scenario 4: promtool, pointed at tenantgate as at a Prometheus server, queries the stand-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_queries_mimir_through_tenantgate_like_a_prometheus_server() {
    let Some(bins) = Binaries::require("promtool queries") else {
        return;
    };
    let http = Http::new();
    let mimir = StandIn::start(&bins, &http, "promtool")
        .await
        .expect("start the Mimir stand-in");
    let tg = TenantGate::start(&sidecar_config(&mimir.url()))
        .await
        .expect("start tenantgate");
    let series = known_series(now_ms());
    push(&http, &tg, &series).await;
    let base = tg.url("/prometheus");
    let expr = format!(r#"{METRIC}{{room="a"}}"#);
    let room_a = &series[0].samples;

    // Instant query at a sample's own (whole-second) timestamp returns exactly that sample.
    let (t, v) = room_a[250];
    let at = (t / 1000).to_string();
    let out = run_tool(
        &bins.promtool,
        &["query", "instant", "--time", &at, &base, &expr],
        None,
    )
    .await
    .expect("run promtool query instant");
    assert!(out.success, "promtool query instant failed:\n{out}");
    let want = format!(r#"job="e2e-writer", room="a"}} => {v} @[{at}]"#);
    assert!(out.stdout.contains(&want), "expected {want:?} in:\n{out}");

    // Range query at 1s steps over whole-second samples returns each of them.
    let (first, last) = (room_a[244].0 / 1000, room_a[249].0 / 1000);
    let out = run_tool(
        &bins.promtool,
        &[
            "query",
            "range",
            "--start",
            &first.to_string(),
            "--end",
            &last.to_string(),
            "--step",
            "1s",
            &base,
            &expr,
        ],
        None,
    )
    .await
    .expect("run promtool query range");
    assert!(out.success, "promtool query range failed:\n{out}");
    assert!(
        out.stdout.contains(r#"room="a"} =>"#),
        "no series in:\n{out}"
    );
    for &(t, v) in &room_a[244..=249] {
        let want = format!("{v} @[{}]", t / 1000);
        assert!(out.stdout.contains(&want), "expected {want:?} in:\n{out}");
    }

    let queries = mimir
        .access_log(2, |l| l.request_uri.starts_with("/prometheus/api/v1/query"))
        .await
        .expect("promtool's two queries in the access log");
    assert!(queries.iter().all(|l| l.tenant == "team-a"), "{queries:#?}");
}

/// A request of the isolation scenario: the headers a client sends on a route, and the one
/// tenant Mimir must see.
struct Probe {
    name: &'static str,
    route: &'static str,
    sends: &'static [(&'static str, &'static str)],
    reaches_as: &'static str,
}

impl Probe {
    fn new(
        name: &'static str,
        route: &'static str,
        sends: &'static [(&'static str, &'static str)],
        reaches_as: &'static str,
    ) -> Self {
        Probe {
            name,
            route,
            sends,
            reaches_as,
        }
    }
}

/// Scenario 5: each route's requests reach Mimir as that route's tenant and only that tenant,
/// whatever X-Scope-OrgID headers the client sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_route_reaches_mimir_as_its_own_tenant_whatever_the_client_sends() {
    let Some(bins) = Binaries::require("tenant isolation") else {
        return;
    };
    let http = Http::new();
    let mimir = StandIn::start(&bins, &http, "isolation")
        .await
        .expect("start the Mimir stand-in");
    let tg = TenantGate::start(&format!(
        r#"server:
  listen: 127.0.0.1:0
  shutdown_grace: 1s
upstreams:
  mimir:
    url: {}
routes:
  - name: team-a
    match: {{ path_prefix: /team-a }}
    upstream: mimir
    tenant: team-a
    rewrite: {{ strip_prefix: /team-a, add_prefix: /prometheus }}
  - name: team-b
    match: {{ path_prefix: /team-b }}
    upstream: mimir
    tenant: team-b
    rewrite: {{ strip_prefix: /team-b, add_prefix: /prometheus }}
"#,
        mimir.url()
    ))
    .await
    .expect("start tenantgate");

    let cases = [
        Probe::new("none", "team-a", &[], "team-a"),
        Probe::new(
            "spoofed",
            "team-a",
            &[("X-Scope-OrgID", "team-b")],
            "team-a",
        ),
        Probe::new(
            "federation",
            "team-b",
            &[("x-scope-orgid", "a|b")],
            "team-b",
        ),
        Probe::new(
            "two-copies",
            "team-a",
            &[("X-Scope-OrgID", "team-b"), ("X-Scope-OrgID", "evil")],
            "team-a",
        ),
        Probe::new("empty", "team-b", &[("X-Scope-OrgID", "")], "team-b"),
        Probe::new(
            "spoofed-b",
            "team-b",
            &[("X-Scope-OrgID", "team-a")],
            "team-b",
        ),
    ];
    for p in &cases {
        let url = tg.url(&format!("/{}/api/v1/labels?probe={}", p.route, p.name));
        let reply = http
            .get_with(&url, p.sends)
            .await
            .unwrap_or_else(|e| panic!("probe {}: {e}", p.name));
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "probe {}: {}",
            p.name,
            reply.text()
        );
    }
    // Copies in mixed letter case, as a raw client can send them.
    let (status, raw) = raw_get(
        tg.addr,
        "/team-a/api/v1/labels?probe=mixed-case",
        &[
            "X-SCOPE-ORGID: team-b",
            "x-Scope-OrgId: a|b",
            "X-Scope-OrgID: ",
        ],
    )
    .await
    .expect("raw GET with mixed-case copies");
    assert_eq!(status, 200, "{raw}");
    let mut all: Vec<(&str, &str)> = cases.iter().map(|p| (p.name, p.reaches_as)).collect();
    all.push(("mixed-case", "team-a"));

    let log = mimir
        .access_log(all.len(), |l| l.request_uri.contains("?probe="))
        .await
        .expect("every probe in the access log");
    for (probe, tenant) in &all {
        let uri = format!("/prometheus/api/v1/labels?probe={probe}");
        let lines: Vec<_> = log.iter().filter(|l| l.request_uri == uri).collect();
        assert_eq!(lines.len(), 1, "probe {probe}: access log lines {lines:#?}");
        assert_eq!(lines[0].tenant, *tenant, "probe {probe}: {:?}", lines[0]);
    }
    // The mirror sees every copy of the header: exactly one each time.
    let deadline = Deadline::new(
        "the tenant probe seeing every request",
        Duration::from_secs(10),
    );
    loop {
        let seen = mimir.seen();
        let missing: Vec<&str> = all
            .iter()
            .filter(|(p, _)| !seen.iter().any(|s| s.uri.ends_with(&format!("probe={p}"))))
            .map(|(p, _)| *p)
            .collect();
        if missing.is_empty() {
            for (probe, tenant) in &all {
                let s = seen
                    .iter()
                    .find(|s| s.uri.ends_with(&format!("probe={probe}")))
                    .expect("checked above");
                assert_eq!(s.tenants, [*tenant], "probe {probe}: {s:?}");
            }
            break;
        }
        deadline
            .retry(&format!("not yet seen: {missing:?}"))
            .await
            .expect("mirror");
    }
}

/// Scenario 6: while Mimir is down tenantgate answers a Prometheus-style 502, and when Mimir is
/// back on the same address traffic flows again without restarting tenantgate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenantgate_answers_502_while_mimir_is_down_and_recovers_when_it_is_back() {
    let Some(bins) = Binaries::require("upstream restart") else {
        return;
    };
    let http = Http::new();
    let mut mimir = StandIn::start(&bins, &http, "restart")
        .await
        .expect("start the Mimir stand-in");
    let tg = TenantGate::start(&sidecar_config(&mimir.url()))
        .await
        .expect("start tenantgate");
    let labels = tg.url("/prometheus/api/v1/labels");
    let before = http
        .get(&labels)
        .await
        .expect("GET labels while Mimir is up");
    assert_eq!(before.status, StatusCode::OK, "{}", before.text());

    mimir.nginx.stop().await.expect("stop the stand-in's NGINX");
    let down = http
        .get(&labels)
        .await
        .expect("GET labels while Mimir is down");
    assert_eq!(down.status, StatusCode::BAD_GATEWAY, "{}", down.text());
    assert_eq!(down.header("content-type"), "application/json");
    let body = down.json().expect("502 body");
    assert_eq!(body["status"], "error", "{body}");
    assert_eq!(body["errorType"], "unavailable", "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    // Remote write gets a 5xx too, so Prometheus keeps the samples and retries.
    let write = http
        .post(
            &tg.url("/api/v1/push"),
            &REMOTE_WRITE_HEADERS,
            prompb::encode_write_request(&known_series(now_ms())),
        )
        .await
        .expect("remote write while Mimir is down");
    assert_eq!(write.status, StatusCode::BAD_GATEWAY, "{}", write.text());

    mimir
        .nginx
        .start_again(&http)
        .await
        .expect("start the stand-in's NGINX again on the same port");
    let deadline = Deadline::new(
        "traffic through tenantgate recovering",
        Duration::from_secs(30),
    );
    let mut failures = Vec::new();
    loop {
        let last = match http.get(&labels).await {
            Ok(r) if r.status == StatusCode::OK => break,
            Ok(r) => format!("HTTP {}: {}", r.status, r.text()),
            Err(e) => e,
        };
        failures.push(last.clone());
        deadline.retry(&last).await.expect("recovery");
    }
    if !failures.is_empty() {
        eprintln!(
            "e2e: {} request(s) failed after NGINX was back: {failures:#?}",
            failures.len()
        );
    }
    push(&http, &tg, &known_series(now_ms())).await;
    let after = mimir
        .access_log(3, |l| {
            l.request_uri.starts_with("/prometheus/api/v1/labels")
                || l.request_uri == "/api/v1/push"
        })
        .await
        .expect("labels before and after the restart, and the push, in the access log");
    assert!(after.iter().all(|l| l.tenant == "team-a"), "{after:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preflight_probe_passes_against_the_stand_in_and_fails_readably_when_it_is_down() {
    let Some(bins) = Binaries::require("preflight probe") else {
        return;
    };
    let http = Http::new();
    let mut mimir = StandIn::start(&bins, &http, "probe")
        .await
        .expect("start the Mimir stand-in");
    let dir = TempDir::new("probe").expect("temp dir");
    let config = dir
        .write("tenantgate.yaml", sidecar_config(&mimir.url()).as_bytes())
        .expect("write config");

    let (code, report) = probe(&config);
    assert_eq!(
        code,
        Some(0),
        "the probe failed against a healthy stand-in:\n{report}"
    );
    for line in [
        "ok    route prometheus: emulated endpoints satisfy a Thanos sidecar",
        "ok    route prometheus: tenant team-a accepted (GET /prometheus/api/v1/labels -> 200)",
        "ok    route prometheus: remote read streams chunks (POST /prometheus/api/v1/read -> 200)",
        "ok    route remote-write: push endpoint reachable, tenant team-a accepted, nothing written",
        "0 failed",
    ] {
        assert!(report.contains(line), "missing {line:?} in:\n{report}");
    }
    // The probe wrote nothing: no push reached the stand-in's write endpoint.
    let pushes = mimir.nginx.access_log().expect("access log");
    assert!(
        pushes
            .iter()
            .all(|l| l.method != "POST" || !l.request_uri.contains("/api/v1/push")),
        "{pushes:?}"
    );

    mimir.nginx.stop().await.expect("stop the stand-in's NGINX");
    let (code, report) = probe(&config);
    assert_eq!(code, Some(1), "the probe passed with Mimir down:\n{report}");
    assert!(
        report.contains("FAIL  upstream mimir: unreachable at"),
        "{report}"
    );
    assert!(
        report
            .contains("FAIL  route prometheus: remote read failed: upstream mimir: cannot connect"),
        "{report}"
    );
    assert!(
        report
            .lines()
            .last()
            .is_some_and(|l| l.ends_with("failed") && !l.ends_with(" 0 failed")),
        "{report}"
    );
}
