//! The dashboard as the test sees it: its variables and panel targets, the variables resolved
//! through their own `label_values` queries, and the selectors checked against the variables.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Deadline, Http, enc};
use crate::promql::{identifiers, regex_escape, selectors, substitute};
use crate::{BUILTINS, OPTIONAL_PREFIXES, PER_INSTANCE_PANELS};

pub struct Target {
    pub panel: String,
    pub ref_id: String,
    pub expr: String,
    pub metrics: BTreeSet<String>,
}

struct Variable {
    name: String,
    /// `label_values(SELECTOR, LABEL)` of a query variable; `None` for a textbox.
    label_values: Option<(String, String)>,
    all_value: String,
    /// A textbox's value.
    value: String,
}

pub struct Board {
    targets: Vec<Target>,
    variables: Vec<Variable>,
}

/// Variable values: the lists their queries returned, and what each `$name` becomes.
pub struct Resolved {
    pub values: BTreeMap<String, Vec<String>>,
    pub substitutions: BTreeMap<String, String>,
}

impl Board {
    pub fn from_json(d: &Value) -> Board {
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

    pub fn metrics(&self) -> BTreeSet<String> {
        self.targets
            .iter()
            .flat_map(|t| t.metrics.iter().cloned())
            .collect()
    }

    /// Every selector filters by `$job` and `$instance`; metrics with a `route` label by
    /// `$route` (unless the selector pins a route, or the panel is per instance on purpose),
    /// those with a `tenant` label by `$tenant`. Every tenantgate metric a panel names is one
    /// the binary exports.
    pub fn check_selectors(&self, exported: &BTreeMap<String, BTreeSet<String>>) {
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
    pub async fn resolve_variables(
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

    pub fn queries(&self, subs: &BTreeMap<String, String>) -> Vec<Target> {
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
