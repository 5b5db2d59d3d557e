//! The alert rules: promtool's checks and unit tests, and the rules loaded into a real Prometheus.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use crate::harness::{Deadline, Http, run_tool};
use crate::{ALERTS, ALERTS_TEST, repo};

/// The alerts in `alerts.yaml`.
const ALERT_COUNT: usize = 6;

pub async fn promtool_checks_the_rules(promtool: &Path) {
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
        check
            .stdout
            .contains(&format!("SUCCESS: {ALERT_COUNT} rules found")),
        "expected the {ALERT_COUNT} alerts:\n{check}"
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
pub fn every_alert_has_a_firing_and_a_silent_unit_test() {
    let rules = std::fs::read_to_string(repo(ALERTS)).unwrap();
    let tests = std::fs::read_to_string(repo(ALERTS_TEST)).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::trim)
        .collect();
    assert_eq!(alerts.len(), ALERT_COUNT, "{alerts:?}");
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

/// The rules load into a real Prometheus, evaluate without error, and the three conditions the
/// traffic creates show as pending (or firing) alerts at once; the other two stay quiet. The
/// fourth, in-flight requests near the limit, holds only while the traffic's streams fill every
/// slot (each round, for longer than a scrape interval): it has to show at one poll or another.
pub async fn rules_evaluate_and_the_provoked_alerts_are_pending(
    http: &Http,
    prom_url: &str,
) -> Result<(), String> {
    let deadline = Deadline::new(
        "the provoked alerts pending in Prometheus",
        Duration::from_secs(60),
    );
    let mut ever_active = BTreeSet::new();
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
            ALERT_COUNT,
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
        ever_active.extend(active.iter().map(|(n, labels)| format!("{n} {labels}")));
        let has = |name: &str, label: &str| {
            active
                .iter()
                .any(|(n, labels)| n == name && labels.contains(label))
        };
        for (name, label) in [
            ("TenantgateUpstreamDown", r#""upstream":"down""#),
            ("TenantgateHighErrorRatio", r#""route":"broken""#),
            (
                "TenantgateInFlightLimitReached",
                r#""reason":"in_flight_limit""#,
            ),
        ] {
            if !has(name, label) {
                problems.push(format!("{name} ({label}) not active"));
            }
        }
        let near = ("TenantgateInFlightNearLimit", r#""job":"tenantgate""#);
        if !ever_active
            .iter()
            .any(|a| a.starts_with(&format!("{} ", near.0)) && a.contains(near.1))
        {
            problems.push(format!("{} ({}) never active", near.0, near.1));
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
            eprintln!("alerts active in Prometheus: {active:?}; ever active: {ever_active:?}");
            return Ok(());
        }
        deadline
            .retry(&format!("{}; active: {active:?}", problems.join("; ")))
            .await?;
    }
}
