//! The Prometheus endpoints Mimir lacks, answered from config.
//!
//! A Thanos sidecar treats its `--prometheus.url` as a Prometheus server. Mimir answers most of
//! its calls but not these (see docs in the README, "What the sidecar needs"):
//! - `api/v1/status/config`: the sidecar exits if it finds no external labels here;
//! - `metrics`: since Thanos v0.37 it needs `prometheus_tsdb_lowest_timestamp_seconds`, with its
//!   `# TYPE` line, or it never becomes ready;
//! - `api/v1/status/buildinfo`: a strict semver `version`; >= 2.24.0 lets it use `match[]`;
//! - `api/v1/targets`, `api/v1/status/tsdb`: Thanos Query turns Mimir's 404 into gRPC NotFound;
//! - `api/v1/status/flags`, `api/v1/status/runtimeinfo`: read by the reloader and objstore checks.
//!
//! Bodies that do not change between requests are rendered once, when the config is loaded.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Response, StatusCode, header};
use serde::Serialize;

use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::time::{format_rfc3339, now_millis};

/// Default `version` reported by buildinfo: a recent Prometheus 2.x, so the sidecar uses
/// `match[]` for label calls (it needs >= 2.24.0).
pub const DEFAULT_VERSION: &str = "2.53.0";

const JSON: &str = "application/json";
/// Content type of the Prometheus text exposition format 0.0.4.
/// The emulated `status/tsdb` answer (see [`EmulatedEndpoint::Tsdb`]).
const TSDB_STATUS: &[u8] = br#"{"status":"success","data":{"headStats":{"numSeries":0,"numLabelPairs":0,"chunkCount":0,"minTime":0,"maxTime":0},"seriesCountByMetricName":[{"name":"(statistics are not available through tenantgate)","value":0}],"labelValueCountByLabelName":[],"memoryInBytesByLabelName":[],"seriesCountByLabelValuePair":[]}}"#;

pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An endpoint answered by tenantgate instead of the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EmulatedEndpoint {
    Config,
    BuildInfo,
    Metrics,
    Flags,
    RuntimeInfo,
    Targets,
    Tsdb,
}

impl EmulatedEndpoint {
    pub const ALL: [EmulatedEndpoint; 7] = [
        EmulatedEndpoint::Config,
        EmulatedEndpoint::BuildInfo,
        EmulatedEndpoint::Metrics,
        EmulatedEndpoint::Flags,
        EmulatedEndpoint::RuntimeInfo,
        EmulatedEndpoint::Targets,
        EmulatedEndpoint::Tsdb,
    ];

    /// The path below the route prefix, without a leading slash.
    pub fn subpath(self) -> &'static str {
        match self {
            EmulatedEndpoint::Config => "api/v1/status/config",
            EmulatedEndpoint::BuildInfo => "api/v1/status/buildinfo",
            EmulatedEndpoint::Metrics => "metrics",
            EmulatedEndpoint::Flags => "api/v1/status/flags",
            EmulatedEndpoint::RuntimeInfo => "api/v1/status/runtimeinfo",
            EmulatedEndpoint::Targets => "api/v1/targets",
            EmulatedEndpoint::Tsdb => "api/v1/status/tsdb",
        }
    }

    /// Short name, as the `endpoint` metric label.
    pub fn name(self) -> &'static str {
        match self {
            EmulatedEndpoint::Config => "config",
            EmulatedEndpoint::BuildInfo => "buildinfo",
            EmulatedEndpoint::Metrics => "metrics",
            EmulatedEndpoint::Flags => "flags",
            EmulatedEndpoint::RuntimeInfo => "runtimeinfo",
            EmulatedEndpoint::Targets => "targets",
            EmulatedEndpoint::Tsdb => "tsdb",
        }
    }

    /// Which endpoint, if any, `path` is under `prefix` (both normalized).
    pub fn find(prefix: &str, path: &str) -> Option<Self> {
        let rest = path
            .strip_prefix(prefix.trim_end_matches('/'))?
            .strip_prefix('/')?;
        Self::ALL.into_iter().find(|e| e.subpath() == rest)
    }
}

/// Where the sidecar's time range starts (`prometheus_tsdb_lowest_timestamp_seconds`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LowestTimestamp {
    /// A fixed instant, in milliseconds since the epoch (0: all time).
    At(i64),
    /// A fixed distance before now, e.g. Mimir's retention.
    Ago(Duration),
}

impl LowestTimestamp {
    /// The value in whole seconds since the epoch, as of now.
    pub fn seconds(&self) -> i64 {
        match self {
            LowestTimestamp::At(ms) => ms.div_euclid(1000),
            LowestTimestamp::Ago(d) => (now_millis() - d.as_millis() as i64).max(0) / 1000,
        }
    }
}

/// A route's `prometheus:` block, with its responses rendered.
#[derive(Debug)]
pub struct Emulation {
    pub external_labels: BTreeMap<String, String>,
    pub version: String,
    pub lowest_timestamp: LowestTimestamp,
    config_body: Bytes,
    buildinfo_body: Bytes,
    runtimeinfo_body: Bytes,
}

#[derive(Serialize)]
struct PromConfigYaml<'a> {
    global: GlobalYaml<'a>,
}

/// Prometheus' own global defaults, so that the YAML reads like a real server's and passes the
/// `scrape_timeout <= scrape_interval` check of older Thanos versions.
#[derive(Serialize)]
struct GlobalYaml<'a> {
    scrape_interval: &'static str,
    scrape_timeout: &'static str,
    evaluation_interval: &'static str,
    external_labels: &'a BTreeMap<String, String>,
}

fn success(data: serde_json::Value) -> Bytes {
    Bytes::from(serde_json::json!({"status": "success", "data": data}).to_string())
}

/// Renders `global.external_labels` as Prometheus configuration YAML, through a serializer so
/// that every value is quoted correctly whatever it holds.
pub fn config_yaml(external_labels: &BTreeMap<String, String>) -> Result<String, String> {
    let doc = PromConfigYaml {
        global: GlobalYaml {
            scrape_interval: "1m",
            scrape_timeout: "10s",
            evaluation_interval: "1m",
            external_labels,
        },
    };
    serde_saphyr::to_string(&doc).map_err(|e| format!("cannot render external_labels as YAML: {e}"))
}

/// Checks a label name the way Prometheus 3 does: any non-empty UTF-8 name, except those
/// starting with `__`, which are reserved for internal use. The generated YAML quotes names that
/// need it (see [`config_yaml`]).
pub fn validate_label_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("label names must not be empty".to_owned());
    }
    if name.starts_with("__") {
        return Err(format!(
            "{name:?} is reserved: label names starting with \"__\" are internal"
        ));
    }
    Ok(())
}

/// Whether a label name is in Prometheus 2's charset, `[a-zA-Z_][a-zA-Z0-9_]*`. Thanos sidecars
/// before v0.37 load the whole global config with Prometheus 2's validation and refuse any other
/// name; v0.37 and newer read only the labels, and Prometheus 3 accepts UTF-8.
pub fn is_classic_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Checks a version string is strict semver (`MAJOR.MINOR.PATCH[-pre][+build]`, no `v`, no
/// leading zeros), as the sidecar's parser demands.
pub fn validate_semver(v: &str) -> Result<(), String> {
    let bad = |why: &str| {
        format!("{v:?} is not a strict semver version ({why}); use e.g. {DEFAULT_VERSION}")
    };
    let (core_pre, build) = match v.split_once('+') {
        Some((c, b)) => (c, Some(b)),
        None => (v, None),
    };
    let (core, pre) = match core_pre.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (core_pre, None),
    };
    let nums: Vec<&str> = core.split('.').collect();
    if nums.len() != 3 {
        return Err(bad("need MAJOR.MINOR.PATCH"));
    }
    for n in nums {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("numbers only"));
        }
        if n.len() > 1 && n.starts_with('0') {
            return Err(bad("no leading zeros"));
        }
    }
    let ident_ok =
        |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if let Some(pre) = pre {
        for id in pre.split('.') {
            if !ident_ok(id) {
                return Err(bad("bad pre-release"));
            }
            if id.len() > 1 && id.starts_with('0') && id.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("no leading zeros"));
            }
        }
    }
    if let Some(build) = build
        && !build.split('.').all(ident_ok)
    {
        return Err(bad("bad build metadata"));
    }
    Ok(())
}

impl Emulation {
    /// Builds the emulation, rendering every static body. `started_ms` is the process start time
    /// and `loaded_ms` the time this config was loaded (both reported by runtimeinfo).
    pub fn new(
        external_labels: BTreeMap<String, String>,
        version: String,
        lowest_timestamp: LowestTimestamp,
        started_ms: i64,
        loaded_ms: i64,
    ) -> Result<Self, String> {
        let yaml = config_yaml(&external_labels)?;
        let config_body = success(serde_json::json!({ "yaml": yaml }));
        let buildinfo_body = success(serde_json::json!({
            "version": version,
            "revision": concat!("tenantgate-", env!("CARGO_PKG_VERSION")),
            "branch": "",
            "buildUser": "tenantgate",
            "buildDate": "",
            "goVersion": "",
        }));
        let runtimeinfo_body = success(serde_json::json!({
            "startTime": format_rfc3339(started_ms),
            "CWD": "/",
            "reloadConfigSuccess": true,
            "lastConfigTime": format_rfc3339(loaded_ms),
            "corruptionCount": 0,
            "goroutineCount": 0,
            "GOMAXPROCS": 0,
            "GOMEMLIMIT": 0,
            "GOGC": "",
            "GODEBUG": "",
            "storageRetention": "managed by the upstream",
        }));
        Ok(Emulation {
            external_labels,
            version,
            lowest_timestamp,
            config_body,
            buildinfo_body,
            runtimeinfo_body,
        })
    }

    /// The `yaml` served by `api/v1/status/config`.
    pub fn config_yaml(&self) -> Result<String, String> {
        config_yaml(&self.external_labels)
    }

    /// The body of the emulated `metrics` endpoint.
    pub fn metrics_text(&self) -> String {
        format!(
            "# HELP prometheus_tsdb_lowest_timestamp_seconds Lowest timestamp value stored in the database.\n\
             # TYPE prometheus_tsdb_lowest_timestamp_seconds gauge\n\
             prometheus_tsdb_lowest_timestamp_seconds {}\n",
            self.lowest_timestamp.seconds()
        )
    }

    /// Answers one emulated endpoint. Only GET and HEAD are served, as by Prometheus.
    pub fn respond(
        &self,
        endpoint: EmulatedEndpoint,
        method: &Method,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if method != Method::GET && method != Method::HEAD {
            return Err(ProxyError::MethodNotAllowed(method.to_string()));
        }
        let (body, content_type) = match endpoint {
            EmulatedEndpoint::Config => (self.config_body.clone(), JSON),
            EmulatedEndpoint::BuildInfo => (self.buildinfo_body.clone(), JSON),
            EmulatedEndpoint::RuntimeInfo => (self.runtimeinfo_body.clone(), JSON),
            EmulatedEndpoint::Flags => (
                Bytes::from_static(br#"{"status":"success","data":{}}"#),
                JSON,
            ),
            EmulatedEndpoint::Targets => (
                Bytes::from_static(
                    br#"{"status":"success","data":{"activeTargets":[],"droppedTargets":[]}}"#,
                ),
                JSON,
            ),
            // tenantgate cannot know Mimir's TSDB statistics, so it reports none, with one entry
            // saying so: Thanos sidecars v0.40+ turn an answer whose lists are all empty into a
            // nil pointer and panic in their status handler (Thanos Query then shows an
            // Internal error for this store). Found by the real-peers suite with v0.42.4.
            EmulatedEndpoint::Tsdb => (Bytes::from_static(TSDB_STATUS), JSON),
            EmulatedEndpoint::Metrics => (Bytes::from(self.metrics_text()), TEXT_FORMAT),
        };
        let mut resp = Response::new(ProxyBody::full(body));
        *resp.status_mut() = StatusCode::OK;
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn emulation(pairs: &[(&str, &str)]) -> Emulation {
        Emulation::new(
            labels(pairs),
            DEFAULT_VERSION.into(),
            LowestTimestamp::At(1_704_067_200_000),
            0,
            0,
        )
        .unwrap()
    }

    async fn json(resp: Response<ProxyBody>) -> serde_json::Value {
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    #[derive(serde::Deserialize)]
    struct Parsed {
        global: ParsedGlobal,
    }
    #[derive(serde::Deserialize)]
    struct ParsedGlobal {
        external_labels: BTreeMap<String, String>,
    }

    #[test]
    fn config_yaml_round_trips_awkward_values() {
        let tricky = labels(&[
            ("a", "yes"),
            ("b", "null"),
            ("c", "123"),
            ("d", "x: y"),
            ("e", "line\nbreak"),
            ("f", "\"quoted\" 'single'"),
            ("g", "# not a comment"),
            ("h", "ünïcode"),
            ("i", "- dash"),
            ("j", "{flow}"),
            ("k", " padded "),
        ]);
        let yaml = config_yaml(&tricky).unwrap();
        let parsed: Parsed = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(parsed.global.external_labels, tricky, "{yaml}");
    }

    #[tokio::test]
    async fn status_config_holds_the_external_labels() {
        let e = emulation(&[("cluster", "eu-1"), ("tenant", "team-a")]);
        let v = json(e.respond(EmulatedEndpoint::Config, &Method::GET).unwrap()).await;
        assert_eq!(v["status"], "success");
        let parsed: Parsed = serde_saphyr::from_str(v["data"]["yaml"].as_str().unwrap()).unwrap();
        assert_eq!(
            parsed.global.external_labels,
            labels(&[("cluster", "eu-1"), ("tenant", "team-a")])
        );
    }

    #[tokio::test]
    async fn buildinfo_reports_the_configured_version() {
        let e = emulation(&[("a", "b")]);
        let v = json(
            e.respond(EmulatedEndpoint::BuildInfo, &Method::GET)
                .unwrap(),
        )
        .await;
        assert_eq!(v["data"]["version"], DEFAULT_VERSION);
    }

    #[test]
    fn metrics_have_the_type_line_and_value_in_seconds() {
        let e = emulation(&[("a", "b")]);
        let text = e.metrics_text();
        assert!(
            text.contains("# TYPE prometheus_tsdb_lowest_timestamp_seconds gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("\nprometheus_tsdb_lowest_timestamp_seconds 1704067200\n"),
            "{text}"
        );
    }

    #[test]
    fn relative_lowest_timestamp_follows_the_clock() {
        let secs = LowestTimestamp::Ago(Duration::from_secs(86_400)).seconds();
        let expected = now_millis() / 1000 - 86_400;
        assert!((secs - expected).abs() <= 1, "{secs} vs {expected}");
        assert_eq!(LowestTimestamp::At(0).seconds(), 0);
    }

    #[tokio::test]
    async fn every_json_endpoint_is_a_success_payload() {
        let e = emulation(&[("a", "b")]);
        for ep in EmulatedEndpoint::ALL {
            let resp = e.respond(ep, &Method::GET).unwrap();
            assert_eq!(resp.status(), 200);
            if ep != EmulatedEndpoint::Metrics {
                assert_eq!(json(resp).await["status"], "success", "{ep:?}");
            }
        }
        let targets = json(e.respond(EmulatedEndpoint::Targets, &Method::GET).unwrap()).await;
        assert_eq!(
            targets["data"],
            serde_json::json!({"activeTargets": [], "droppedTargets": []})
        );
    }

    #[test]
    fn only_get_and_head() {
        let e = emulation(&[("a", "b")]);
        assert!(e.respond(EmulatedEndpoint::Config, &Method::HEAD).is_ok());
        assert!(matches!(
            e.respond(EmulatedEndpoint::Config, &Method::POST),
            Err(ProxyError::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn endpoints_are_found_under_the_prefix_only() {
        assert_eq!(
            EmulatedEndpoint::find("/prometheus", "/prometheus/api/v1/status/config"),
            Some(EmulatedEndpoint::Config)
        );
        assert_eq!(
            EmulatedEndpoint::find("/prometheus/", "/prometheus/metrics"),
            Some(EmulatedEndpoint::Metrics)
        );
        assert_eq!(
            EmulatedEndpoint::find("/", "/api/v1/targets"),
            Some(EmulatedEndpoint::Targets)
        );
        assert_eq!(
            EmulatedEndpoint::find("/prometheus", "/prometheus/api/v1/query"),
            None
        );
        assert_eq!(
            EmulatedEndpoint::find("/prometheus", "/prometheus/api/v1/status/config/x"),
            None
        );
        assert_eq!(
            EmulatedEndpoint::find("/prometheus", "/other/metrics"),
            None
        );
    }

    #[test]
    fn semver_is_strict() {
        for ok in [
            "2.53.0",
            "0.0.1",
            "10.20.30",
            "1.0.0-rc.1",
            "1.0.0+build.5",
            "1.0.0-alpha-1+x",
        ] {
            assert!(validate_semver(ok).is_ok(), "{ok}");
        }
        for bad in [
            "v2.53.0", "2.53", "2.53.0.1", "02.1.0", "2.x.0", "", "1.0.0-", "1.0.0-01", "1.0.0+",
        ] {
            assert!(validate_semver(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn label_names_follow_prometheus_3() {
        for good in ["cluster", "_x1", "service.name", "région", "1a", "a-b"] {
            assert!(validate_label_name(good).is_ok(), "{good}");
        }
        for bad in ["", "__name__", "__x"] {
            assert!(validate_label_name(bad).is_err(), "{bad}");
        }
        assert!(is_classic_label_name("_x1"));
        for utf8 in ["service.name", "région", "1a", "a-b", ""] {
            assert!(!is_classic_label_name(utf8), "{utf8}");
        }
    }

    #[test]
    fn utf8_label_names_are_quoted_in_the_config_yaml() {
        let labels: BTreeMap<String, String> = [("service.name", "a: b"), ("région", "eu")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let yaml = config_yaml(&labels).unwrap();
        #[derive(serde::Deserialize)]
        struct Doc {
            global: Global,
        }
        #[derive(serde::Deserialize)]
        struct Global {
            external_labels: BTreeMap<String, String>,
        }
        let back: Doc = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back.global.external_labels, labels, "{yaml}");
    }
}
