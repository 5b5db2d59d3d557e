//! Tools of the Prometheus 3 generation against tenantgate's emulated endpoints, and
//! `tenantgate check --probe` against a real Cortex.

use std::collections::BTreeMap;

use http::StatusCode;

use crate::harness::{Http, TempDir, TenantGate, probe, run_tool};
use crate::rig::{self, Peers};
use crate::topology::two_tenants;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_3_accepts_the_emulated_config_with_utf8_label_names_and_the_metrics() {
    let Some(peers) = Peers::require("promtool_3_accepts_the_emulated_config") else {
        return;
    };
    let dir = TempDir::new("peers-promtool").expect("temp dir");
    let http = Http::new();
    // Nothing is forwarded: the emulated endpoints answer from config.
    let yaml = r#"
server: { listen: "127.0.0.1:0" }
upstreams: { cortex: { url: "http://127.0.0.1:1" } }
routes:
  - name: sidecar
    match: { path_prefix: /prometheus }
    upstream: cortex
    tenant: team-a
    prometheus:
      external_labels: { cluster: peers, "service.name": "api: v1", "région": eu, quote: "it's \"x\"" }
"#;
    let gate = TenantGate::start(yaml).await.expect("start tenantgate");
    let config = http
        .get(&gate.url("/prometheus/api/v1/status/config"))
        .await
        .and_then(|r| r.prom_data())
        .expect("status/config");
    let text = config["yaml"].as_str().expect("data.yaml is a string");
    let file = dir.write("config.yml", text.as_bytes()).expect("write");
    let check = run_tool(
        &peers.promtool,
        &["check", "config", file.to_str().expect("UTF-8 path")],
        None,
    )
    .await
    .expect("run promtool");
    assert!(check.success, "promtool 3 rejects:\n{text}\n{check}");

    #[derive(serde::Deserialize)]
    struct Doc {
        global: Global,
    }
    #[derive(serde::Deserialize)]
    struct Global {
        external_labels: BTreeMap<String, String>,
    }
    let doc: Doc = serde_saphyr::from_str(text).expect("YAML");
    let want: BTreeMap<String, String> = [
        ("cluster", "peers"),
        ("service.name", "api: v1"),
        ("région", "eu"),
        ("quote", "it's \"x\""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(doc.global.external_labels, want, "{text}");

    let metrics = http
        .get(&gate.url("/prometheus/metrics"))
        .await
        .expect("/metrics");
    assert_eq!(metrics.status, StatusCode::OK);
    let file = dir.write("metrics.txt", &metrics.body).expect("write");
    let check = run_tool(&peers.promtool, &["check", "metrics"], Some(&file))
        .await
        .expect("run promtool");
    assert!(
        check.success,
        "promtool 3 rejects /metrics:\n{}\n{check}",
        metrics.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_passes_against_cortex_and_fails_readably_once_it_is_stopped() {
    let Some(peers) = Peers::require("the_probe_passes_against_cortex") else {
        return;
    };
    let dir = TempDir::new("peers-probe").expect("temp dir");
    let http = Http::new();
    let cortex = rig::cortex(&peers, &http, dir.path(), "")
        .await
        .expect("start Cortex");
    let config = dir
        .write(
            "tenantgate.yaml",
            two_tenants(&cortex.url(), "cortex").as_bytes(),
        )
        .expect("write config");

    let (code, report) = probe(&config);
    assert_eq!(code, Some(0), "the probe failed against Cortex:\n{report}");
    let probe_part = report
        .split_once("\nprobe:\n")
        .map_or(report.as_str(), |(_, p)| p);
    let lines: Vec<&str> = probe_part
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let (summary, checks) = lines.split_last().expect("a report");
    assert!(summary.ends_with(" 0 failed"), "{report}");
    for line in checks {
        assert!(line.starts_with("ok "), "not ok: {line:?} in\n{report}");
    }
    for line in [
        "ok    route team-a: emulated endpoints satisfy a Thanos sidecar",
        "ok    route team-a: tenant team-a accepted (GET /team-a/prometheus/api/v1/labels, forwarded as /prometheus/api/v1/labels -> 200)",
        // The push route is probed on its write path, shown as forwarded.
        "ok    route team-a-push: push endpoint reachable, tenant team-a accepted, nothing written (GET /team-a/api/v1/push, forwarded as /api/v1/push -> 405)",
        // Cortex answers remote read in SAMPLES only.
        "ok    route team-b: remote read answers samples (POST /team-b/prometheus/api/v1/read -> 200)",
    ] {
        assert!(report.contains(line), "missing {line:?} in:\n{report}");
    }

    drop(cortex);
    let (code, report) = probe(&config);
    assert_eq!(
        code,
        Some(1),
        "the probe passed with Cortex down:\n{report}"
    );
    assert!(
        report.contains("FAIL  upstream cortex: unreachable at"),
        "{report}"
    );
    assert!(
        report.contains("FAIL  route team-a: remote read failed: upstream cortex: cannot connect"),
        "{report}"
    );
}
