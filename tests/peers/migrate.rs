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

/// `kill -9` at three points of one migration into Cortex, then a resume each time: Cortex ends
/// with every source sample, and no resumed run sent again what a killed one had written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_into_cortex_killed_three_times_resumes_to_exact_counts() {
    let Some(peers) = Peers::require("a_migration_into_cortex_killed_three_times") else {
        return;
    };
    let http = Http::new();
    let dir = TempDir::new("peers-migrate-kill").expect("temp dir");
    // 200 series, a sample a minute for 6 hours: 72,000 samples in six one-hour slabs.
    let src = history(
        &peers.prometheus3(),
        &http,
        "peers-kill-src",
        METRIC,
        200,
        6,
        60,
    )
    .await;
    let cortex = rig::cortex(&peers, &http, dir.path(), "")
        .await
        .expect("start Cortex");
    let base = format!("{}/prometheus", cortex.url());
    let (from, to) = (src.read_url(), format!("{}/api/v1/push", cortex.url()));
    let (start, end) = (src.start.to_string(), src.end.to_string());
    let run = |name: &str| {
        let out = dir.path().join(format!("{name}.json"));
        let child = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
            .args([
                "migrate", "--from", &from, "--to", &to, "--tenant", "team-k",
            ])
            .args(["--start", &start, "--end", &end, "--report-format", "json"])
            .args(["--migration-id", "peers-kill", "--retry-backoff", "100ms"])
            // Small, paced requests: the run lasts long enough to be killed mid-slab.
            .args([
                "--max-write-size",
                "8KiB",
                "--max-samples-per-second",
                "6000",
            ])
            .stdout(std::fs::File::create(&out).expect("report file"))
            .stderr(std::fs::File::create(dir.path().join(format!("{name}.stderr"))).expect("log"))
            .spawn()
            .expect("run tenantgate migrate");
        (child, out)
    };
    let held = || {
        count_between(
            &http,
            &base,
            METRIC,
            src.start as f64,
            src.end as f64,
            &[("X-Scope-OrgID", "team-k")],
        )
    };
    let total = src.samples();
    for k in 1..=3 {
        let (mut child, _) = run(&format!("killed-{k}"));
        // Killed once Cortex holds more than k quarters of the history.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            assert!(
                child.try_wait().expect("wait").is_none(),
                "run {k} ended before its kill point"
            );
            if held().await > total * k / 4 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "run {k}: no progress");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }
    let (mut child, out) = run("resumed");
    let status = tokio::task::spawn_blocking(move || child.wait().expect("wait"))
        .await
        .expect("join");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap_or_default())
            .unwrap_or(serde_json::Value::Null);
    assert_eq!(status.code(), Some(0), "{report:#}");
    assert_eq!(report["outcome"], "complete", "{report:#}");
    assert!(report["resumed_from"].is_string(), "{report:#}");
    let t = &report["total"];
    assert_eq!(
        t["samples_written"].as_i64().unwrap_or(-1) + t["samples_skipped"].as_i64().unwrap_or(-1),
        t["samples_read"].as_i64().unwrap_or(-2),
        "everything read was written or provably there already: {report:#}"
    );
    let mut got = 0;
    for _ in 0..100 {
        got = held().await;
        if got == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        got, total,
        "Cortex holds {got} of {total} samples: {report:#}"
    );
}
