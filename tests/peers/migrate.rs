//! `tenantgate migrate` from a Prometheus 3 into Cortex with Cortex's default ingestion limits
//! (25,000 samples/s, burst 50,000 per tenant): a slab holds more samples than one request may
//! carry there, so the run must split its requests and pace itself, and end with exact counts.

use std::process::Command;
use std::time::Duration;

use crate::harness::{Http, TempDir, count_between, history};
use crate::rig::{self, Peers};

const METRIC: &str = "peers_history";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_into_cortex_with_default_limits_completes_with_exact_counts() {
    let Some(peers) = Peers::require("a_migration_into_cortex_with_default_limits") else {
        return;
    };
    let http = Http::new();
    let dir = TempDir::new("peers-migrate").expect("temp dir");
    // 1,000 series, one sample a minute for 6 hours: 60,000 samples per one-hour slab.
    let src = history(
        &peers.prometheus3(),
        &http,
        "peers-mig-src",
        METRIC,
        1000,
        6,
        60,
    )
    .await;
    let cortex = rig::cortex(&peers, &http, dir.path(), "")
        .await
        .expect("start Cortex");
    let out = tokio::task::spawn_blocking({
        let (from, to) = (src.read_url(), format!("{}/api/v1/push", cortex.url()));
        let (start, end) = (src.start.to_string(), src.end.to_string());
        move || {
            Command::new(env!("CARGO_BIN_EXE_tenantgate"))
                .args([
                    "migrate", "--from", &from, "--to", &to, "--tenant", "team-a",
                ])
                .args(["--start", &start, "--end", &end, "--report-format", "json"])
                .args(["--retry-backoff", "100ms"])
                .output()
                .expect("run tenantgate migrate")
        }
    })
    .await
    .expect("join");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["outcome"], "complete", "{report:#}");
    assert_eq!(
        report["total"]["samples_written"].as_i64(),
        Some(src.samples()),
        "{report:#}"
    );
    assert!(
        stderr.contains("splitting it"),
        "no request was split: were Cortex's default limits in force?\n{stderr}"
    );
    let base = format!("{}/prometheus", cortex.url());
    let mut held = 0;
    for _ in 0..100 {
        held = count_between(
            &http,
            &base,
            METRIC,
            src.start as f64,
            src.end as f64,
            &[("X-Scope-OrgID", "team-a")],
        )
        .await;
        if held == src.samples() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        held,
        src.samples(),
        "Cortex holds {held} of {} samples",
        src.samples()
    );
}
