//! tenantgate's own metrics (prometheus-client), rendered as OpenMetrics or, for scrapers that
//! do not ask for it, the Prometheus text format.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use http::Method;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::error::UpstreamErrorKind;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: Arc<str>,
    pub tenant: Arc<str>,
    pub method: &'static str,
    pub code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteTenantLabels {
    pub route: Arc<str>,
    pub tenant: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    pub upstream: Arc<str>,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub upstream: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EmulatedLabels {
    pub route: Arc<str>,
    pub endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    pub reason: &'static str,
}

/// Why tenantgate refused a request without serving it: the `reason` of
/// `tenantgate_requests_refused_total`. A fixed set: every value's series exists from the start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `server.max_requests_in_flight` requests were already being served (503, before routing).
    InFlightLimit,
    /// Every bcrypt slot stayed busy for as long as a login may wait for one (503).
    CredentialCheckQueue,
    /// Too many failed logins from the client's address (429).
    FailedLoginLimit,
}

impl Refusal {
    pub const ALL: [Refusal; 3] = [
        Refusal::InFlightLimit,
        Refusal::CredentialCheckQueue,
        Refusal::FailedLoginLimit,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::InFlightLimit => "in_flight_limit",
            Refusal::CredentialCheckQueue => "credential_check_queue",
            Refusal::FailedLoginLimit => "failed_login_limit",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
    branch: &'static str,
    rustversion: &'static str,
    target: &'static str,
}

/// tenantgate's own metrics. Label values come from config (route names, configured tenants)
/// or from small fixed sets (methods, codes), so cardinality is bounded by the config.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteTenantLabels, Histogram>,
    pub in_flight: Family<RouteLabels, Gauge>,
    /// `server.max_requests_in_flight` as the process runs it (set at start: a reload keeps it).
    pub in_flight_limit: Gauge,
    /// One counter of `tenantgate_requests_refused_total` per [`Refusal`], in [`Refusal::ALL`]
    /// order: created once, so counting a refusal allocates nothing.
    refused: [Counter; Refusal::ALL.len()],
    pub request_bytes: Family<RouteLabels, Counter>,
    pub response_bytes: Family<RouteLabels, Counter>,
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    pub emulated: Family<EmulatedLabels, Counter>,
    pub sidecar_last_seen: Family<RouteLabels, Gauge<f64, AtomicU64>>,
    pub upstream_up: Family<UpstreamLabels, Gauge>,
    pub reload_success: Gauge,
    pub reload_timestamp: Gauge<f64, AtomicU64>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        // The process metrics have no prefix; tenantgate's own are tenantgate_*.
        let mut root = Registry::default();
        root.register_collector(Box::new(super::process::ProcessCollector));
        root.register_collector(Box::new(super::logbuf::DroppedCollector));
        let registry = root.sub_registry_with_prefix("tenantgate");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by route, tenant, method and status code",
            requests.clone(),
        );
        let duration = Family::<RouteTenantLabels, Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response body sent",
            duration.clone(),
        );
        let in_flight = Family::<RouteLabels, Gauge>::default();
        registry.register(
            "requests_in_flight",
            "Requests being served",
            in_flight.clone(),
        );
        let in_flight_limit = Gauge::default();
        registry.register(
            "requests_in_flight_limit",
            "server.max_requests_in_flight: requests served at once before more are refused",
            in_flight_limit.clone(),
        );
        let refused_family = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "requests_refused",
            "Requests refused before they were served, by reason (in_flight_limit, credential_check_queue: 503; failed_login_limit: 429)",
            refused_family.clone(),
        );
        let refused = Refusal::ALL.map(|r| {
            refused_family
                .get_or_create(&RefusedLabels { reason: r.as_str() })
                .clone()
        });
        let request_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "request_body_bytes",
            "Request body bytes received from clients",
            request_bytes.clone(),
        );
        let response_bytes = Family::<RouteLabels, Counter>::default();
        registry.register(
            "response_body_bytes",
            "Response body bytes sent to clients",
            response_bytes.clone(),
        );
        let upstream_errors = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Failed upstream exchanges, by kind (connect, timeout, reset, tls)",
            upstream_errors.clone(),
        );
        let emulated = Family::<EmulatedLabels, Counter>::default();
        registry.register(
            "emulated_requests",
            "Requests answered from config instead of the upstream",
            emulated.clone(),
        );
        let sidecar_last_seen = Family::<RouteLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "sidecar_last_seen_timestamp_seconds",
            "When a sidecar last read this route's status/config (a stale value means a dead sidecar)",
            sidecar_last_seen.clone(),
        );
        let upstream_up = Family::<UpstreamLabels, Gauge>::default();
        registry.register(
            "upstream_up",
            "Whether the upstream's last health check passed (only upstreams with a health_check)",
            upstream_up.clone(),
        );
        let reload_success = Gauge::default();
        registry.register(
            "config_last_reload_successful",
            "Whether the last config load succeeded",
            reload_success.clone(),
        );
        let reload_timestamp = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully",
            reload_timestamp.clone(),
        );
        let build = Info::new(BuildLabels {
            version: super::build::VERSION,
            revision: super::build::REVISION,
            branch: super::build::BRANCH,
            rustversion: super::build::RUST_VERSION,
            target: super::build::TARGET,
        });
        registry.register("build", "tenantgate build information", build);
        Metrics {
            registry: root,
            requests,
            duration,
            in_flight,
            in_flight_limit,
            refused,
            request_bytes,
            response_bytes,
            upstream_errors,
            emulated,
            sidecar_last_seen,
            upstream_up,
            reload_success,
            reload_timestamp,
        }
    }

    /// Renders every metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Renders every metric in the Prometheus text format 0.0.4, for scrapers that do not ask
    /// for OpenMetrics (and for promtool, whose 2.x parser rejects OpenMetrics-only types).
    pub fn encode_text(&self) -> String {
        openmetrics_to_text(&self.encode())
    }

    /// Records that a config was (or was not) loaded.
    pub fn config_loaded(&self, ok: bool) {
        self.reload_success.set(i64::from(ok));
        if ok {
            self.reload_timestamp
                .set(crate::time::now_millis() as f64 / 1000.0);
        }
    }

    /// Counts a request refused for `reason`.
    pub fn refused(&self, reason: Refusal) {
        self.refused[reason as usize].inc();
    }

    pub fn upstream_error(&self, upstream: &Arc<str>, kind: UpstreamErrorKind) {
        self.upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                upstream: upstream.clone(),
                kind: kind.as_str(),
            })
            .inc();
    }
}

/// Content type of the OpenMetrics text format.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Rewrites OpenMetrics text into the Prometheus text format 0.0.4: counter families are named
/// with their `_total` suffix, `info` families become gauges named `<name>_info`, and the
/// `# EOF` marker is dropped. Sample lines are identical in both formats.
pub fn openmetrics_to_text(om: &str) -> String {
    use std::collections::HashMap;
    let mut renamed: HashMap<&str, (String, &str)> = HashMap::new();
    for line in om.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ")
            && let Some((name, ty)) = rest.split_once(' ')
        {
            let mapped = match ty {
                "counter" => (format!("{name}_total"), "counter"),
                "info" => (format!("{name}_info"), "gauge"),
                "unknown" => (name.to_owned(), "untyped"),
                other => (name.to_owned(), other),
            };
            renamed.insert(name, mapped);
        }
    }
    let mut out = String::with_capacity(om.len());
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        let meta = line
            .strip_prefix("# HELP ")
            .map(|r| ("HELP", r))
            .or_else(|| line.strip_prefix("# TYPE ").map(|r| ("TYPE", r)));
        match meta {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                match renamed.get(name) {
                    Some((new_name, new_type)) if kind == "TYPE" => {
                        let _ = writeln!(out, "# TYPE {new_name} {new_type}");
                    }
                    Some((new_name, _)) => {
                        let _ = writeln!(out, "# HELP {new_name} {tail}");
                    }
                    None => {
                        out.push_str(line);
                        out.push('\n');
                    }
                }
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

/// Buckets from 1ms to ~65s, by factors of 4.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 4.0, 9))
}

/// A method as a bounded metric label.
pub fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_reason_is_exported_from_the_start_and_counted_under_its_own() {
        for (i, r) in Refusal::ALL.into_iter().enumerate() {
            assert_eq!(r as usize, i, "Refusal::ALL is out of declaration order");
        }
        let m = Metrics::new();
        let text = m.encode_text();
        for line in [
            "# TYPE tenantgate_requests_refused_total counter",
            r#"tenantgate_requests_refused_total{reason="in_flight_limit"} 0"#,
            r#"tenantgate_requests_refused_total{reason="credential_check_queue"} 0"#,
            r#"tenantgate_requests_refused_total{reason="failed_login_limit"} 0"#,
            "# TYPE tenantgate_requests_in_flight_limit gauge",
            "tenantgate_requests_in_flight_limit 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
        m.refused(Refusal::InFlightLimit);
        m.refused(Refusal::InFlightLimit);
        m.refused(Refusal::FailedLoginLimit);
        m.in_flight_limit.set(4096);
        let text = m.encode_text();
        for line in [
            r#"tenantgate_requests_refused_total{reason="in_flight_limit"} 2"#,
            r#"tenantgate_requests_refused_total{reason="credential_check_queue"} 0"#,
            r#"tenantgate_requests_refused_total{reason="failed_login_limit"} 1"#,
            "tenantgate_requests_in_flight_limit 4096",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }

    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let om = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total{x=\"1\"} 3\n# HELP a_build Build.\n# TYPE a_build info\na_build_info{version=\"1\"} 1\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n# EOF\n";
        let text = openmetrics_to_text(om);
        assert_eq!(
            text,
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total{x=\"1\"} 3\n# HELP a_build_info Build.\n# TYPE a_build_info gauge\na_build_info{version=\"1\"} 1\n# HELP a_up Up.\n# TYPE a_up gauge\na_up 1\n"
        );
    }
}
