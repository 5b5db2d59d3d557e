//! The monitoring mixin in `deploy/monitoring/` against the real thing.
//!
//! - The alert rules pass `promtool check rules` and their unit tests (`promtool test rules`), with
//!   Debian's promtool 2.42 and with Prometheus 3's.
//! - The dashboard's every query returns data: the built tenantgate binary serves traffic that
//!   touches every metric (forwarded and emulated requests, a sidecar's status/config reads,
//!   request bodies, an unreachable upstream's 502s and connect errors, requests refused by
//!   `server.max_requests_in_flight`, a failing and a passing health check), a real Prometheus
//!   scrapes its admin `/metrics` every second and loads `alerts.yaml`, and each panel target,
//!   with the template variables substituted as Grafana would, runs through `/api/v1/query`:
//!   once with every variable at "All" and once with one concrete value each (taken from the
//!   variables' own `label_values` queries). Queries on `process_*` metrics are skipped, loudly,
//!   while the binary does not export them.
//! - The rules evaluate without errors in that Prometheus, and the ones the traffic provokes
//!   (an upstream down, a route failing with 502, refusals by the in-flight limit, in-flight
//!   requests near the limit) go pending.
//!
//! Needs `prometheus`, `promtool` and `nginx` (the e2e harness's set), and for the Prometheus 3
//! checks the peers built by `bash tests/peers/build.sh`: without them the tests skip loudly, or
//! fail under `CI=true`.
//!
//! Modules: [`rules`] (promtool and the rules in a live Prometheus), [`board`] (the dashboard's
//! variables and targets), [`promql`] (queries, substitution, selector parsing) and [`gate`] (the
//! tenantgate process and its traffic).

#[path = "../common/mod.rs"]
mod common;
#[path = "../e2e/harness.rs"]
#[allow(dead_code)]
mod harness;

mod board;
mod gate;
mod promql;
mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::StatusCode;
use serde_json::Value;

use board::Board;
use common::Upstream;
use gate::{TenantGateProcess, Traffic};
use harness::{Binaries, Deadline, Http, Prometheus, TempDir};
use promql::{exported_metrics, instant_query};

const ALERTS: &str = "deploy/monitoring/alerts.yaml";
const ALERTS_TEST: &str = "deploy/monitoring/alerts_test.yaml";
const DASHBOARD: &str = "deploy/monitoring/dashboards/tenantgate.json";

/// What `$__rate_interval` and friends become. Grafana's `$__rate_interval` is at least four
/// scrape intervals; Prometheus scrapes every second here, and traffic flows all along.
const BUILTINS: &[(&str, &str)] = &[
    ("__rate_interval", "15s"),
    ("__interval", "5s"),
    ("__range", "5m"),
];

/// Metrics another part of the project is adding: queries on them are skipped, loudly, while
/// the binary under test does not export them.
const OPTIONAL_PREFIXES: &[&str] = &["process_"];

/// Panels whose selectors leave out `route=~"$route"` on purpose: the in-flight limit is one
/// per process, not per route.
const PER_INSTANCE_PANELS: &[&str] = &["Requests in flight per instance, against the limit"];

/// `server.max_requests_in_flight` of the tenantgate under test: small, so the traffic can fill it.
const MAX_IN_FLIGHT: usize = 4;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// Prometheus 3 and its promtool, where `tests/peers/build.sh` builds them (the version pinned in
/// `tests/peers/versions`). Missing: a failure under `CI=true`, a loud skip elsewhere.
fn prometheus3(test: &str) -> Option<Binaries> {
    let versions =
        std::fs::read_to_string(repo("tests/peers/versions")).expect("read tests/peers/versions");
    let version = versions
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == "prometheus")
        .map(|(_, v)| v.trim().to_owned())
        .expect("tests/peers/versions has no prometheus=");
    let cache = std::env::var_os("TENANTGATE_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(|| PathBuf::from(".cache"))
                .join("tenantgate/peers")
        });
    let dir = cache.join(format!("prometheus-{version}"));
    let (prometheus, promtool) = (dir.join("prometheus"), dir.join("promtool"));
    if prometheus.is_file() && promtool.is_file() {
        return Some(Binaries {
            prometheus,
            promtool,
            nginx: PathBuf::new(),
        });
    }
    let msg = format!(
        "monitoring test `{test}` needs Prometheus 3 built by `bash tests/peers/build.sh` \
         (missing: {})",
        dir.display()
    );
    if in_ci() {
        panic!("{msg}. CI=true, so a missing peer is a failure, not a skip.");
    }
    eprintln!("\n!!!!!!!! SKIPPED: {msg}. !!!!!!!!\n");
    None
}

// ---------------------------------------------------------------------------------------------
// Alert rules

/// Every alert has at least one case that fires and one that must not.
#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    rules::every_alert_has_a_firing_and_a_silent_unit_test();
}

#[tokio::test]
async fn alert_rules_pass_promtool_2_check_and_unit_tests() {
    let Some(promtool) = common::required_binary("promtool") else {
        return;
    };
    rules::promtool_checks_the_rules(&promtool).await;
}

#[tokio::test]
async fn alert_rules_pass_promtool_3_check_and_unit_tests() {
    let Some(bins) = prometheus3("alert_rules_pass_promtool_3_check_and_unit_tests") else {
        return;
    };
    rules::promtool_checks_the_rules(&bins.promtool).await;
}

// ---------------------------------------------------------------------------------------------
// Dashboard queries against real Prometheus servers

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_prometheus_2_scraping_tenantgate() {
    let Some(bins) = Binaries::require("every_dashboard_query_returns_data_from_prometheus_2")
    else {
        return;
    };
    dashboard_against(&bins, "mon-prom2").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_prometheus_3_scraping_tenantgate() {
    let Some(bins) = prometheus3("every_dashboard_query_returns_data_from_prometheus_3") else {
        return;
    };
    dashboard_against(&bins, "mon-prom3").await;
}

async fn dashboard_against(bins: &Binaries, label: &str) {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repo(DASHBOARD)).expect("read the dashboard"),
    )
    .expect("the dashboard is JSON");
    let board = Board::from_json(&dashboard);

    let dir = TempDir::new(label).unwrap();
    let http = Http::new();
    let upstream = Upstream::start().await;
    let gate = TenantGateProcess::start(&http, dir.path(), &upstream).await;

    let traffic = Traffic::start(gate.data);
    // The first round of traffic creates every series before Prometheus looks.
    traffic.first_round_done().await;

    let scrape = http
        .get(&format!("http://{}/metrics", gate.admin))
        .await
        .unwrap();
    assert_eq!(scrape.status, StatusCode::OK);
    let text = scrape.text();
    let exported = exported_metrics(&text);
    // The limit is exported, and the first round's refusal is counted under its reason.
    let limit = format!("tenantgate_requests_in_flight_limit {MAX_IN_FLIGHT}");
    assert!(text.lines().any(|l| l == limit), "no {limit:?} in:\n{text}");
    let refused = text
        .lines()
        .find_map(|l| {
            l.strip_prefix(r#"tenantgate_requests_refused_total{reason="in_flight_limit"} "#)
        })
        .and_then(|v| v.parse::<f64>().ok());
    assert!(
        refused.is_some_and(|n| n >= 1.0),
        "no refusal by the in-flight limit counted after the first round ({refused:?}):\n{text}"
    );
    board.check_selectors(&exported);

    let admin = gate.admin;
    let rules = repo(ALERTS);
    let prom = Prometheus::start(bins, &http, dir.path(), "prometheus", "", &[], |_| {
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: tenantgate\n    static_configs:\n      - targets: ['{admin}']\n",
            rules.display()
        )
    })
    .await
    .unwrap();
    let prom_url = prom.url();
    // Rates need a window full of scrapes, all with traffic flowing.
    let window = BUILTINS[0].1;
    let full = format!("count_over_time(up{{job=\"tenantgate\"}}[{window}]) >= 10");
    let deadline = Deadline::new(
        format!("ten scrapes of tenantgate within {window}"),
        Duration::from_secs(60),
    );
    while let Err(e) = instant_query(&http, &prom_url, &full).await {
        deadline.retry(&e).await.unwrap();
    }

    // The variables, resolved through their own label_values queries.
    let all = board.resolve_variables(&http, &prom_url, None).await;
    let job = all.values["job"].clone();
    let instance = admin.to_string();
    assert_eq!(job, vec!["tenantgate".to_owned()], "job values");
    assert!(
        all.values["instance"].contains(&instance),
        "instance values {:?} lack {instance}",
        all.values["instance"]
    );
    for route in ["prometheus", "push", "broken", "none"] {
        assert!(
            all.values["route"].iter().any(|r| r == route),
            "route values {:?} lack {route}",
            all.values["route"]
        );
    }
    let chosen: BTreeMap<&str, &str> = [
        ("job", "tenantgate"),
        ("instance", instance.as_str()),
        ("route", "prometheus"),
        ("tenant", "team-a"),
    ]
    .into_iter()
    .collect();
    let one = board
        .resolve_variables(&http, &prom_url, Some(&chosen))
        .await;

    let optional_missing: BTreeSet<String> = board
        .metrics()
        .into_iter()
        .filter(|m| OPTIONAL_PREFIXES.iter().any(|p| m.starts_with(p)))
        .filter(|m| !exported.contains_key(m))
        .collect();
    if !optional_missing.is_empty() {
        eprintln!(
            "\n!!!!!!!! NOTE: this tenantgate does not export {optional_missing:?}: the dashboard \
             queries on them are skipped. !!!!!!!!\n"
        );
    }

    for (pass, vars) in [("All", &all), ("one value each", &one)] {
        let queries = board.queries(&vars.substitutions);
        let deadline = Deadline::new(
            format!("every dashboard query returning data (variables: {pass})"),
            Duration::from_secs(90),
        );
        let (mut answered, skipped) = loop {
            let mut answered = Vec::new();
            let mut skipped = Vec::new();
            let mut failures = Vec::new();
            for q in &queries {
                if let Some(m) = q.metrics.iter().find(|m| optional_missing.contains(*m)) {
                    skipped.push(format!("{} [{}] (needs {m})", q.panel, q.ref_id));
                    continue;
                }
                match instant_query(&http, &prom_url, &q.expr).await {
                    Ok(summary) => answered.push((q, summary)),
                    Err(e) => failures.push(format!(
                        "panel {:?} target {}: {e}\n    query: {}",
                        q.panel, q.ref_id, q.expr
                    )),
                }
            }
            if failures.is_empty() {
                break (answered, skipped);
            }
            deadline
                .retry(&failures.join("\n"))
                .await
                .unwrap_or_else(|e| panic!("{e}\n{}\n{}", gate.process.logs(), traffic.report()));
        };
        answered.sort_by(|a, b| a.0.panel.cmp(&b.0.panel));
        eprintln!(
            "dashboard ({label}, variables: {pass}): {} queries returned data, {} skipped",
            answered.len(),
            skipped.len()
        );
        for (q, summary) in &answered {
            eprintln!("  ok   {} [{}]: {summary}", q.panel, q.ref_id);
        }
        for s in &skipped {
            eprintln!("  skip {s}");
        }
    }

    if let Err(e) =
        rules::rules_evaluate_and_the_provoked_alerts_are_pending(&http, &prom_url).await
    {
        panic!("{e}\n{}", traffic.report());
    }

    let seen = traffic.stop().await;
    for code in [200, 404, 405, 502, 503, 504] {
        assert!(
            seen.get(&code).copied().unwrap_or(0) > 0,
            "the traffic never got a {code}: {seen:?}"
        );
    }
    drop(prom);
    drop(gate);
}
