//! Logs and metrics: the logfmt/JSON log setup, the metrics registry, and [`Exchange`], which
//! records one request (metrics and the access-log line) when its response body is finished.

use std::fmt::{self, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::body::{BoxError, IdleTimeout};
use crate::error::UpstreamErrorKind;

// ---------------------------------------------------------------------------------------------
// Logging

/// Log line format, as Prometheus' `--log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// Log level, as Prometheus' `--log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    fn filter(self) -> tracing::level_filters::LevelFilter {
        use tracing::level_filters::LevelFilter;
        match self {
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Error => LevelFilter::ERROR,
        }
    }
}

/// Installs the global log subscriber, writing to stderr. Safe to call more than once (tests):
/// later calls are ignored.
pub fn init_logging(format: LogFormat, level: LogLevel) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level.filter());
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Logfmt => builder.event_format(Logfmt).try_init(),
    };
}

/// Formats events as logfmt: `ts=... level=info msg="..." key=value`.
struct Logfmt;

struct LogfmtFields<'a> {
    out: &'a mut String,
    message: Option<String>,
}

fn logfmt_value(out: &mut String, v: &str) {
    let needs_quotes = v.is_empty()
        || v.chars()
            .any(|c| c == ' ' || c == '=' || c == '"' || c.is_control());
    if needs_quotes {
        out.push('"');
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    } else {
        out.push_str(v);
    }
}

impl Visit for LogfmtFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.out.push(' ');
            self.out.push_str(field.name());
            self.out.push('=');
            logfmt_value(self.out, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
    }
}

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = String::new();
        let mut v = LogfmtFields {
            out: &mut fields,
            message: None,
        };
        event.record(&mut v);
        let message = v.message.take();
        let mut line = String::with_capacity(64 + fields.len());
        line.push_str("ts=");
        line.push_str(&crate::time::format_rfc3339(crate::time::now_millis()));
        line.push_str(" level=");
        line.push_str(&event.metadata().level().as_str().to_ascii_lowercase());
        if let Some(m) = message {
            line.push_str(" msg=");
            logfmt_value(&mut line, &m);
        }
        line.push_str(&fields);
        writeln!(writer, "{line}")
    }
}

// ---------------------------------------------------------------------------------------------
// Metrics

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
struct BuildLabels {
    version: &'static str,
}

/// tenantgate's own metrics. Label values come from config (route names, configured tenants)
/// or from small fixed sets (methods, codes), so cardinality is bounded by the config.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Family<RouteTenantLabels, Histogram>,
    pub in_flight: Family<RouteLabels, Gauge>,
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
        let mut registry = Registry::with_prefix("tenantgate");
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
            version: env!("CARGO_PKG_VERSION"),
        });
        registry.register("build", "tenantgate build information", build);
        Metrics {
            registry,
            requests,
            duration,
            in_flight,
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

// ---------------------------------------------------------------------------------------------
// One request

/// Everything known about one request; recorded (metrics and one access-log line) when dropped,
/// that is when the response body has been sent or abandoned.
pub struct Exchange {
    metrics: Arc<Metrics>,
    access_log: bool,
    start: Instant,
    pub method: Method,
    /// Normalized path, without the query string (which may carry secrets).
    pub path: String,
    pub route: Option<Arc<str>>,
    pub tenant: Option<Arc<str>>,
    pub tenant_origin: Option<&'static str>,
    /// Name of the authenticated identity (never its credential).
    pub identity: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub status: u16,
    pub bytes_in: Arc<AtomicU64>,
    pub bytes_out: u64,
    /// Why tenantgate answered with an error itself, or why the response stream broke.
    pub error: Option<String>,
    in_flight: Option<Gauge>,
}

const NONE: &str = "none";

impl Exchange {
    pub fn new(metrics: Arc<Metrics>, access_log: bool, method: Method, path: String) -> Self {
        Exchange {
            metrics,
            access_log,
            start: Instant::now(),
            method,
            path,
            route: None,
            tenant: None,
            tenant_origin: None,
            identity: None,
            upstream: None,
            status: 0,
            bytes_in: Arc::new(AtomicU64::new(0)),
            bytes_out: 0,
            error: None,
            in_flight: None,
        }
    }

    /// Marks the request as served by `route` (counts it in flight until recorded).
    pub fn set_route(&mut self, route: &Arc<str>) {
        let g = self
            .metrics
            .in_flight
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .clone();
        g.inc();
        self.in_flight = Some(g);
        self.route = Some(route.clone());
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        if let Some(g) = self.in_flight.take() {
            g.dec();
        }
        let none: Arc<str> = Arc::from(NONE);
        let route = self.route.clone().unwrap_or_else(|| none.clone());
        let tenant = self.tenant.clone().unwrap_or(none);
        let bytes_in = self.bytes_in.load(Ordering::Relaxed);
        let m = &self.metrics;
        m.requests
            .get_or_create(&RequestLabels {
                route: route.clone(),
                tenant: tenant.clone(),
                method: method_label(&self.method),
                code: self.status,
            })
            .inc();
        m.duration
            .get_or_create(&RouteTenantLabels {
                route: route.clone(),
                tenant: tenant.clone(),
            })
            .observe(elapsed.as_secs_f64());
        if bytes_in > 0 {
            m.request_bytes
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                })
                .inc_by(bytes_in);
        }
        if self.bytes_out > 0 {
            m.response_bytes
                .get_or_create(&RouteLabels {
                    route: route.clone(),
                })
                .inc_by(self.bytes_out);
        }
        if self.access_log {
            tracing::info!(
                target: "tenantgate::access",
                route = &*route,
                tenant = &*tenant,
                tenant_from = self.tenant_origin.unwrap_or(NONE),
                identity = self.identity.as_deref().unwrap_or(""),
                upstream = self.upstream.as_deref().unwrap_or(NONE),
                method = self.method.as_str(),
                path = self.path.as_str(),
                status = self.status,
                duration_ms = format!("{:.3}", elapsed.as_secs_f64() * 1000.0).as_str(),
                bytes_in,
                bytes_out = self.bytes_out,
                error = self.error.as_deref().unwrap_or(""),
                "request"
            );
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that counts what it sends and records its [`Exchange`] when dropped.
    pub struct Metered<B> {
        #[pin]
        inner: B,
        exchange: Option<Box<Exchange>>,
    }
}

impl<B> Metered<B> {
    pub fn new(inner: B, exchange: Box<Exchange>) -> Self {
        Metered {
            inner,
            exchange: Some(exchange),
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes, Error = BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = this.inner.poll_frame(cx);
        if let Some(ex) = this.exchange.as_mut() {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Some(d) = frame.data_ref() {
                        ex.bytes_out += d.len() as u64;
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    let kind = if e.is::<IdleTimeout>() {
                        UpstreamErrorKind::Timeout
                    } else {
                        UpstreamErrorKind::Reset
                    };
                    if let Some(u) = ex.upstream.clone() {
                        ex.metrics.upstream_error(&u, kind);
                    }
                    ex.error = Some(format!("response body: {e}"));
                }
                _ => {}
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logfmt_quotes_only_when_needed() {
        let mut s = String::new();
        logfmt_value(&mut s, "plain");
        s.push(' ');
        logfmt_value(&mut s, "two words");
        s.push(' ');
        logfmt_value(&mut s, "");
        s.push(' ');
        logfmt_value(&mut s, "a=\"b\"\n");
        assert_eq!(s, r#"plain "two words" "" "a=\"b\"\n""#);
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

    #[test]
    fn an_exchange_is_counted_when_dropped() {
        let m = Arc::new(Metrics::new());
        let route: Arc<str> = Arc::from("r");
        {
            let mut ex = Exchange::new(m.clone(), false, Method::GET, "/x".into());
            ex.set_route(&route);
            ex.tenant = Some(Arc::from("t"));
            ex.status = 200;
            assert_eq!(
                m.in_flight
                    .get_or_create(&RouteLabels {
                        route: route.clone()
                    })
                    .get(),
                1
            );
        }
        assert_eq!(
            m.in_flight
                .get_or_create(&RouteLabels {
                    route: route.clone()
                })
                .get(),
            0
        );
        let text = m.encode();
        assert!(
            text.contains(
                r#"tenantgate_requests_total{route="r",tenant="t",method="GET",code="200"} 1"#
            ),
            "{text}"
        );
    }
}
