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
//!   (an upstream down, a route failing with 502, refusals by the in-flight limit) go pending.
//!
//! Needs `prometheus`, `promtool` and `nginx` (the e2e harness's set), and for the Prometheus 3
//! checks the peers built by `bash tests/peers/build.sh`: without them the tests skip loudly, or
//! fail under `CI=true`.

#[allow(dead_code)]
#[path = "e2e/harness.rs"]
mod harness;

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use common::Upstream;
use harness::{Binaries, Deadline, Http, Process, Prometheus, TempDir, enc, run_tool};

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

async fn promtool_checks_the_rules(promtool: &Path) {
    let alerts = repo(ALERTS);
    let check = run_tool(
        promtool,
        &["check", "rules", alerts.to_str().unwrap()],
        None,
    )
    .await
    .unwrap();
    assert!(
        check.success,
        "{} check rules {ALERTS} failed:\n{check}",
        promtool.display()
    );
    assert!(
        check.stdout.contains("SUCCESS: 5 rules found"),
        "expected the five alerts:\n{check}"
    );
    let tests = repo(ALERTS_TEST);
    let test = run_tool(promtool, &["test", "rules", tests.to_str().unwrap()], None)
        .await
        .unwrap();
    assert!(
        test.success,
        "{} test rules {ALERTS_TEST} failed:\n{test}",
        promtool.display()
    );
}

/// Every alert has at least one case that fires and one that must not.
#[test]
fn every_alert_has_a_firing_and_a_silent_unit_test() {
    let rules = std::fs::read_to_string(repo(ALERTS)).unwrap();
    let tests = std::fs::read_to_string(repo(ALERTS_TEST)).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    assert_eq!(alerts.len(), 5, "{alerts:?}");
    for alert in alerts {
        // Each `alertname:` line is followed by its `exp_alerts`: empty (silent) or a list.
        let mut fires = false;
        let mut silent = false;
        let mut lines = tests.lines().peekable();
        while let Some(line) = lines.next() {
            if line.trim() != format!("alertname: {alert}") {
                continue;
            }
            match lines.peek().map(|l| l.trim()) {
                Some("exp_alerts: []") => silent = true,
                Some("exp_alerts:") => fires = true,
                other => panic!("{alert}: alertname not followed by exp_alerts: {other:?}"),
            }
        }
        assert!(fires, "{ALERTS_TEST} has no case where {alert} fires");
        assert!(
            silent,
            "{ALERTS_TEST} has no case where {alert} must not fire"
        );
    }
    for severity in ["severity: warning", "severity: critical"] {
        assert!(rules.contains(severity), "no alert with {severity}");
    }
}

#[tokio::test]
async fn alert_rules_pass_promtool_2_check_and_unit_tests() {
    let Some(promtool) = common::required_binary("promtool") else {
        return;
    };
    promtool_checks_the_rules(&promtool).await;
}

#[tokio::test]
async fn alert_rules_pass_promtool_3_check_and_unit_tests() {
    let Some(bins) = prometheus3("alert_rules_pass_promtool_3_check_and_unit_tests") else {
        return;
    };
    promtool_checks_the_rules(&bins.promtool).await;
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
    let exported = exported_metrics(&scrape.text());
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

    if let Err(e) = rules_evaluate_and_the_provoked_alerts_are_pending(&http, &prom_url).await {
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

/// The rules load into a real Prometheus, evaluate without error, and the three conditions the
/// traffic creates show as pending (or firing) alerts; the other two stay quiet.
async fn rules_evaluate_and_the_provoked_alerts_are_pending(
    http: &Http,
    prom_url: &str,
) -> Result<(), String> {
    let deadline = Deadline::new(
        "the provoked alerts pending in Prometheus",
        Duration::from_secs(60),
    );
    loop {
        let rules = http
            .get(&format!("{prom_url}/api/v1/rules"))
            .await
            .and_then(|r| r.prom_data())
            .unwrap();
        let mut problems = Vec::new();
        let mut names = BTreeSet::new();
        for group in rules["groups"].as_array().unwrap() {
            for rule in group["rules"].as_array().unwrap() {
                let name = rule["name"].as_str().unwrap_or("?").to_owned();
                if rule["health"] != "ok" {
                    problems.push(format!(
                        "rule {name}: health {} {}",
                        rule["health"], rule["lastError"]
                    ));
                }
                names.insert(name);
            }
        }
        assert_eq!(
            names.len(),
            5,
            "Prometheus loaded these rules from {ALERTS}: {names:?}"
        );
        let alerts = http
            .get(&format!("{prom_url}/api/v1/alerts"))
            .await
            .and_then(|r| r.prom_data())
            .unwrap();
        let active: Vec<(String, String)> = alerts["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["labels"]["alertname"].as_str().unwrap_or("").to_owned(),
                    a["labels"].to_string(),
                )
            })
            .collect();
        let has = |name: &str, label: &str| {
            active
                .iter()
                .any(|(n, labels)| n == name && labels.contains(label))
        };
        for (name, label) in [
            ("TenantgateUpstreamDown", r#""upstream":"down""#),
            ("TenantgateHighErrorRatio", r#""route":"broken""#),
            ("TenantgateInFlightLimitReached", r#""job":"tenantgate""#),
        ] {
            if !has(name, label) {
                problems.push(format!("{name} ({label}) not active"));
            }
        }
        for quiet in ["TenantgateSidecarStale", "TenantgateConfigReloadFailed"] {
            assert!(
                !active.iter().any(|(n, _)| n == quiet),
                "{quiet} is active, yet the sidecar reads and the config loaded: {active:?}"
            );
        }
        assert!(
            !has("TenantgateUpstreamDown", r#""upstream":"mimir""#),
            "the healthy upstream is reported down: {active:?}"
        );
        assert!(
            !has("TenantgateHighErrorRatio", r#""route":"prometheus""#),
            "the healthy route has a high error ratio: {active:?}"
        );
        if problems.is_empty() {
            eprintln!("alerts active in Prometheus: {active:?}");
            return Ok(());
        }
        deadline
            .retry(&format!("{}; active: {active:?}", problems.join("; ")))
            .await?;
    }
}

/// Runs an instant query; a short description of the result when it holds at least one number
/// (a panel of nothing but NaN shows no data, as an empty one does).
async fn instant_query(http: &Http, prom_url: &str, expr: &str) -> Result<String, String> {
    let url = format!("{prom_url}/api/v1/query?query={}", enc(expr));
    let data = http.get(&url).await?.prom_data()?;
    let result = &data["result"];
    let number = |v: &Value| {
        v.as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .filter(|f| !f.is_nan())
    };
    match data["resultType"].as_str() {
        Some("vector") => {
            let series = result.as_array().map_or(0, Vec::len);
            if series == 0 {
                return Err("empty result".to_owned());
            }
            let values: Vec<(&Value, f64)> = result
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| number(&s["value"][1]).map(|v| (&s["metric"], v)))
                .collect();
            match values.iter().max_by(|a, b| a.1.total_cmp(&b.1)) {
                Some((metric, v)) => Ok(format!("{series} series, max {metric} = {v}")),
                None => Err(format!("{series} series, every value NaN: {result}")),
            }
        }
        Some("scalar") => number(&result[1])
            .map(|v| format!("scalar {v}"))
            .ok_or_else(|| format!("scalar NaN: {result}")),
        other => Err(format!("unexpected result type {other:?}: {data}")),
    }
}

// ---------------------------------------------------------------------------------------------
// The dashboard

struct Target {
    panel: String,
    ref_id: String,
    expr: String,
    metrics: BTreeSet<String>,
}

struct Variable {
    name: String,
    /// `label_values(SELECTOR, LABEL)` of a query variable; `None` for a textbox.
    label_values: Option<(String, String)>,
    all_value: String,
    /// A textbox's value.
    value: String,
}

struct Board {
    targets: Vec<Target>,
    variables: Vec<Variable>,
}

/// Variable values: the lists their queries returned, and what each `$name` becomes.
struct Resolved {
    values: BTreeMap<String, Vec<String>>,
    substitutions: BTreeMap<String, String>,
}

impl Board {
    fn from_json(d: &Value) -> Board {
        let schema = d["schemaVersion"].as_u64().unwrap_or(0);
        assert!(
            (36..=41).contains(&schema),
            "schemaVersion {schema}: expected about 39"
        );
        let list = d["templating"]["list"].as_array().expect("templating.list");
        let ds = list
            .iter()
            .find(|v| v["name"] == "datasource")
            .expect("a datasource variable");
        assert_eq!(ds["type"], "datasource");
        assert_eq!(ds["query"], "prometheus");

        let mut variables = Vec::new();
        for v in list.iter().filter(|v| v["name"] != "datasource") {
            let name = v["name"].as_str().expect("variable name").to_owned();
            match v["type"].as_str() {
                Some("query") => {
                    assert_eq!(
                        v["datasource"]["uid"], "${datasource}",
                        "variable {name} must query the selected data source"
                    );
                    let q = v["query"]
                        .as_str()
                        .or_else(|| v["query"]["query"].as_str())
                        .unwrap_or_else(|| panic!("variable {name}: no query"));
                    let inner = q
                        .trim()
                        .strip_prefix("label_values(")
                        .and_then(|r| r.strip_suffix(')'))
                        .unwrap_or_else(|| panic!("variable {name}: not label_values(...): {q}"));
                    let (selector, label) = inner.rsplit_once(',').unwrap_or_else(|| {
                        panic!("variable {name}: label_values without a metric: {q}")
                    });
                    assert_eq!(v["includeAll"], true, "variable {name} offers All");
                    let all_value = v["allValue"]
                        .as_str()
                        .unwrap_or_else(|| panic!("variable {name}: no allValue"))
                        .to_owned();
                    variables.push(Variable {
                        name,
                        label_values: Some((selector.trim().to_owned(), label.trim().to_owned())),
                        all_value,
                        value: String::new(),
                    });
                }
                Some("textbox") | Some("constant") | Some("custom") => {
                    let value = v["current"]["value"]
                        .as_str()
                        .or_else(|| v["query"].as_str())
                        .unwrap_or_else(|| panic!("variable {name}: no value"))
                        .to_owned();
                    variables.push(Variable {
                        name,
                        label_values: None,
                        all_value: String::new(),
                        value,
                    });
                }
                other => panic!("variable {name}: unexpected type {other:?}"),
            }
        }
        for needed in ["job", "instance", "route", "tenant"] {
            assert!(
                variables
                    .iter()
                    .any(|v| v.name == needed && v.label_values.is_some()),
                "no {needed} query variable"
            );
        }

        let mut targets = Vec::new();
        let mut panels: Vec<&Value> = Vec::new();
        for p in d["panels"].as_array().expect("panels") {
            panels.push(p);
            // Collapsed rows keep their panels inside.
            if let Some(inner) = p["panels"].as_array() {
                panels.extend(inner);
            }
        }
        for p in panels.into_iter().filter(|p| p["type"] != "row") {
            let title = p["title"].as_str().unwrap_or("<untitled>").to_owned();
            assert_eq!(
                p["datasource"]["uid"], "${datasource}",
                "panel {title:?} must use the datasource variable"
            );
            let ts = p["targets"]
                .as_array()
                .unwrap_or_else(|| panic!("panel {title:?}: no targets"));
            assert!(!ts.is_empty(), "panel {title:?}: no targets");
            for t in ts {
                assert_eq!(
                    t["datasource"]["uid"], "${datasource}",
                    "panel {title:?}: a target must use the datasource variable"
                );
                let expr = t["expr"]
                    .as_str()
                    .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"))
                    .to_owned();
                targets.push(Target {
                    panel: title.clone(),
                    ref_id: t["refId"].as_str().unwrap_or("?").to_owned(),
                    metrics: selectors(&expr).into_iter().map(|(m, _)| m).collect(),
                    expr,
                });
            }
        }
        assert!(targets.len() >= 20, "only {} targets", targets.len());
        Board { targets, variables }
    }

    fn metrics(&self) -> BTreeSet<String> {
        self.targets
            .iter()
            .flat_map(|t| t.metrics.iter().cloned())
            .collect()
    }

    /// Every selector filters by `$job` and `$instance`; metrics with a `route` label by
    /// `$route` (unless the selector pins a route, or the panel is per instance on purpose),
    /// those with a `tenant` label by `$tenant`. Every tenantgate metric a panel names is one
    /// the binary exports.
    fn check_selectors(&self, exported: &BTreeMap<String, BTreeSet<String>>) {
        let mut problems = Vec::new();
        for t in &self.targets {
            let known: &[&str] = &["up", "vector"];
            for (metric, matchers) in selectors(&t.expr) {
                let at = format!("panel {:?} [{}] {metric}{{{matchers}}}", t.panel, t.ref_id);
                if metric == "vector" {
                    continue;
                }
                for (label, var) in [("job", "$job"), ("instance", "$instance")] {
                    if !matchers.contains(&format!("{label}=~\"{var}\"")) {
                        problems.push(format!("{at}: no {label}=~\"{var}\""));
                    }
                }
                let labels = exported.get(&metric);
                if labels.is_none()
                    && !known.contains(&metric.as_str())
                    && !OPTIONAL_PREFIXES.iter().any(|p| metric.starts_with(p))
                {
                    problems.push(format!("{at}: tenantgate exports no {metric}"));
                }
                let pinned = matchers.contains("route=\"");
                let has = |l: &str| labels.is_some_and(|ls| ls.contains(l));
                if has("route")
                    && !pinned
                    && !PER_INSTANCE_PANELS.contains(&t.panel.as_str())
                    && !matchers.contains("route=~\"$route\"")
                {
                    problems.push(format!("{at}: no route=~\"$route\""));
                }
                if has("tenant") && !pinned && !matchers.contains("tenant=~\"$tenant\"") {
                    problems.push(format!("{at}: no tenant=~\"$tenant\""));
                }
            }
            // A metric named without a selector escapes the variables altogether.
            for word in identifiers(&t.expr) {
                if (word.starts_with("tenantgate_") || word.starts_with("process_"))
                    && !t.metrics.contains(&word)
                {
                    problems.push(format!(
                        "panel {:?} [{}]: {word} without a label selector",
                        t.panel, t.ref_id
                    ));
                }
            }
        }
        assert!(
            problems.is_empty(),
            "dashboard queries do not use the template variables consistently:\n{}",
            problems.join("\n")
        );
    }

    /// Resolves the variables in dashboard order, each query seeing the earlier ones: all at
    /// "All" (`chosen` None), or at the chosen values, each of which must be among the values
    /// its query returns.
    async fn resolve_variables(
        &self,
        http: &Http,
        prom_url: &str,
        chosen: Option<&BTreeMap<&str, &str>>,
    ) -> Resolved {
        let mut subs: BTreeMap<String, String> = BUILTINS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut values = BTreeMap::new();
        for v in &self.variables {
            let Some((selector, label)) = &v.label_values else {
                subs.insert(v.name.clone(), v.value.clone());
                continue;
            };
            let selector =
                substitute(selector, &subs).unwrap_or_else(|e| panic!("variable {}: {e}", v.name));
            let url = format!(
                "{prom_url}/api/v1/label/{label}/values?match%5B%5D={}",
                enc(&selector)
            );
            let deadline = Deadline::new(
                format!(
                    "variable {} (label_values({selector}, {label})) having values",
                    v.name
                ),
                Duration::from_secs(60),
            );
            let found: Vec<String> = loop {
                let last = match http.get(&url).await.and_then(|r| r.prom_data()) {
                    Ok(Value::Array(a)) if !a.is_empty() => {
                        break a
                            .iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect();
                    }
                    Ok(other) => format!("no values: {other}"),
                    Err(e) => e,
                };
                deadline.retry(&last).await.unwrap();
            };
            let value = match chosen {
                None => v.all_value.clone(),
                Some(c) => {
                    let want = c
                        .get(v.name.as_str())
                        .unwrap_or_else(|| panic!("no value chosen for {}", v.name));
                    assert!(
                        found.iter().any(|f| f == want),
                        "variable {}: {want} is not among {found:?}",
                        v.name
                    );
                    regex_escape(want)
                }
            };
            subs.insert(v.name.clone(), value);
            values.insert(v.name.clone(), found);
        }
        Resolved {
            values,
            substitutions: subs,
        }
    }

    fn queries(&self, subs: &BTreeMap<String, String>) -> Vec<Target> {
        self.targets
            .iter()
            .map(|t| Target {
                panel: t.panel.clone(),
                ref_id: t.ref_id.clone(),
                expr: substitute(&t.expr, subs)
                    .unwrap_or_else(|e| panic!("panel {:?} [{}]: {e}", t.panel, t.ref_id)),
                metrics: t.metrics.clone(),
            })
            .collect()
    }
}

/// Replaces `$name` and `${name}` as Grafana does; an unknown variable is an error.
fn substitute(text: &str, subs: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let (name, len) = if let Some(braced) = after.strip_prefix('{') {
            let end = braced
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in {text}"))?;
            (&braced[..end], end + 2)
        } else {
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..end], end)
        };
        let value = subs
            .get(name)
            .ok_or_else(|| format!("unknown variable ${name} in {text}"))?;
        out.push_str(value);
        rest = &after[len..];
    }
    out.push_str(rest);
    Ok(out)
}

/// A value as Grafana puts it into a regex matcher: regex metacharacters escaped, the
/// backslash itself escaped for the PromQL string.
fn regex_escape(value: &str) -> String {
    let mut out = String::new();
    for c in value.chars() {
        if "\\^$*+?.()|{}[]'".contains(c) {
            out.push_str("\\\\");
        }
        out.push(c);
    }
    out
}

/// Identifiers in a PromQL expression, outside string literals.
fn identifiers(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = expr.char_indices().peekable();
    let mut in_string = false;
    let mut word = String::new();
    while let Some((_, c)) = chars.next() {
        if in_string {
            if c == '\\' {
                chars.next();
            } else if c == '"' {
                in_string = false;
            }
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' || (c == '$' && word.is_empty()) {
            word.push(c);
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if c == '"' {
            in_string = true;
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out.retain(|w| {
        !w.starts_with('$') && !w.starts_with(|c: char| c.is_ascii_digit()) && !w.contains(':')
    });
    out
}

/// `(metric, matchers)` for every `metric{...}` in a PromQL expression.
fn selectors(expr: &str) -> Vec<(String, String)> {
    let bytes = expr.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' {
            // The identifier right before the brace.
            let mut start = i;
            while start > 0
                && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_')
            {
                start -= 1;
            }
            let end = expr[i..].find('}').map(|e| i + e).unwrap_or(bytes.len());
            if start < i {
                out.push((expr[start..i].to_owned(), expr[i + 1..end].to_owned()));
            }
            i = end;
        }
        i += 1;
    }
    out
}

/// Sample names in a text-format scrape, with the label names each carries.
fn exported_metrics(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let labels = out.entry(line[..name_end].to_owned()).or_default();
        if line[name_end..].starts_with('{') {
            let body = &line[name_end + 1..line.rfind('}').unwrap_or(line.len())];
            let mut rest = body;
            while let Some(eq) = rest.find("=\"") {
                let name = rest[..eq].trim_start_matches([',', ' ']);
                labels.insert(name.to_owned());
                // Skip the quoted value.
                let value = &rest[eq + 2..];
                let mut end = 0;
                let vb = value.as_bytes();
                while end < vb.len() && vb[end] != b'"' {
                    end += if vb[end] == b'\\' { 2 } else { 1 };
                }
                rest = value.get(end + 1..).unwrap_or("");
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// tenantgate, the built binary

struct TenantGateProcess {
    data: SocketAddr,
    admin: SocketAddr,
    process: Process,
}

impl TenantGateProcess {
    async fn start(http: &Http, dir: &Path, upstream: &Upstream) -> TenantGateProcess {
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
struct Traffic {
    codes: Arc<Mutex<BTreeMap<u16, u64>>>,
    rounds: tokio::sync::watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Traffic {
    fn start(gate: SocketAddr) -> Traffic {
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

    async fn first_round_done(&self) {
        let mut rounds = self.rounds.clone();
        tokio::time::timeout(Duration::from_secs(60), rounds.wait_for(|r| *r >= 1))
            .await
            .expect("the first round of traffic within 60s")
            .expect("the traffic task ended");
    }

    fn report(&self) -> String {
        format!(
            "traffic so far: {} rounds, status codes {:?}",
            *self.rounds.borrow(),
            self.codes.lock().unwrap()
        )
    }

    async fn stop(self) -> BTreeMap<u16, u64> {
        self.task.abort();
        let _ = self.task.await;
        self.codes.lock().unwrap().clone()
    }
}
