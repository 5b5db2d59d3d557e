//! A new user's first hour, against a real Prometheus as the laptop's only upstream: the dev
//! shim's pass-through push route finds no remote write endpoint there, and `check --probe`
//! must say so (it once said ok); `config/dev-prometheus.yaml` renames the one path, the probe
//! passes, and a real Prometheus remote-writing to tenantgate's `/api/v1/push` lands its samples.
//!
//! Needs `prometheus`: skipped loudly without it, failed under `CI=true`.

#[allow(dead_code)]
#[path = "e2e/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{Binaries, Deadline, Http, Prometheus, TempDir, TenantGate, enc, probe};

/// A Prometheus receiving remote write, with nothing under `/prometheus`.
async fn receiver(bins: &Binaries, http: &Http, dir: &TempDir) -> Prometheus {
    Prometheus::start(
        bins,
        http,
        dir.path(),
        "receiver",
        "",
        &["--web.enable-remote-write-receiver"],
        |port| {
            format!(
                "global: {{ scrape_interval: 1h }}\nscrape_configs:\n  - job_name: self\n    static_configs: [{{ targets: [\"127.0.0.1:{port}\"] }}]\n"
            )
        },
    )
    .await
    .expect("start the receiving Prometheus")
}

/// `config/dev-prometheus.yaml` pointed at `url`, on free ports.
fn dev_prometheus(url: &str) -> String {
    let file = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/dev-prometheus.yaml"
    ))
    .expect("read config/dev-prometheus.yaml");
    let out = file
        .replace("url: http://127.0.0.1:9090", &format!("url: {url}"))
        .replace("listen: 127.0.0.1:9009", "listen: 127.0.0.1:0")
        .replace("listen: 127.0.0.1:9010", "listen: 127.0.0.1:0");
    assert!(
        out.contains(url),
        "the example's upstream URL moved:\n{file}"
    );
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_a_prometheus_the_probe_finds_the_missing_push_path_and_the_example_fixes_it() {
    let Some(bins) = Binaries::require("first_hour_prometheus_upstream") else {
        return;
    };
    let http = Http::new();
    let dir = TempDir::new("first-hour").expect("temp dir");
    let prom = receiver(&bins, &http, &dir).await;

    // The dev shim's shape: the catch-all forwards /api/v1/push as is, and Prometheus has
    // nothing there.
    let shim = tenantgate::config::from_yaml(
        include_str!("../config/dev.yaml"),
        "dev.yaml",
        &tenantgate::config::Overrides::default(),
    )
    .expect("the dev shim parses");
    assert_eq!(shim.upstreams.len(), 1);
    let shim_yaml = include_str!("../config/dev.yaml").replace(
        "url: http://127.0.0.1:8080",
        &format!("url: {}", prom.url()),
    );
    let file = dir.write("shim.yaml", shim_yaml.as_bytes()).unwrap();
    let (code, report) = probe(&file);
    assert_eq!(code, Some(1), "the probe passed:\n{report}");
    assert!(
        report.contains(
            "FAIL  route default: no remote write endpoint: GET /api/v1/push -> 404. Mimir and Cortex receive at /api/v1/push, Prometheus at /api/v1/write"
        ),
        "{report}"
    );

    // The example for a Prometheus upstream: every check passes, the push path included.
    let yaml = dev_prometheus(&prom.url());
    let file = dir.write("dev-prometheus.yaml", yaml.as_bytes()).unwrap();
    let (code, report) = probe(&file);
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains(" 0 failed"), "{report}");
    assert!(
        report.contains(
            "ok    route push: push endpoint reachable, tenant dev accepted, nothing written (GET /api/v1/push, forwarded as /api/v1/write -> 405)"
        ),
        "{report}"
    );

    // And a real sender's samples arrive, pushed to Mimir's path.
    let tg = TenantGate::start(&yaml).await.expect("start tenantgate");
    let push = tg.url("/api/v1/push");
    let sender_dir = TempDir::new("first-hour-sender").expect("temp dir");
    let _sender = Prometheus::start(
        &bins,
        &http,
        sender_dir.path(),
        "sender",
        "",
        &[],
        |port| {
            format!(
                "global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: laptop\n    static_configs: [{{ targets: [\"127.0.0.1:{port}\"] }}]\nremote_write:\n  - url: {push}\n    queue_config: {{ batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s }}\n"
            )
        },
    )
    .await
    .expect("start the sending Prometheus");
    // Queried the way a user would: through tenantgate's /prometheus, as Grafana would be set up.
    let query = tg.url(&format!(
        "/prometheus/api/v1/query?query={}",
        enc(r#"up{job="laptop"}"#)
    ));
    let deadline = Deadline::new(
        "up{job=\"laptop\"} pushed through tenantgate arriving in Prometheus",
        Duration::from_secs(60),
    );
    loop {
        let last = match http.get(&query).await.and_then(|r| r.prom_data()) {
            Ok(data) if data["result"].as_array().is_some_and(|r| !r.is_empty()) => break,
            Ok(data) => format!("empty: {data}"),
            Err(e) => e,
        };
        deadline.retry(&last).await.unwrap();
    }
}
