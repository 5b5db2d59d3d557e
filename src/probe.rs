//! `tenantgate check --probe`: contact every upstream the way real traffic would, before a
//! migration depends on it, and report one line per check.
//!
//! Nothing is written: the push endpoint is probed with a GET (which Mimir answers with an
//! error, but only after it accepted the tenant), and remote read asks for one minute of `up`.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};

use crate::app::Runtime;
use crate::config::Config;
use crate::forward::{Upstream, UpstreamBody, headers};
use crate::migrate::wire::{LabelMatcher, MatchType, ResponseType, encode_read_request};
use crate::promapi::{EmulatedEndpoint, validate_semver};
use crate::route::{PathMatch, Route, RouteMatch};
use crate::telemetry::Metrics;
use crate::tenant::TenantId;

/// Deadline of each probe request.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    pub ok: bool,
    pub subject: String,
    pub detail: String,
}

/// Every check of one probe run.
#[derive(Debug, Default)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.ok)
    }

    fn add(&mut self, ok: bool, subject: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check {
            ok,
            subject: subject.into(),
            detail: detail.into(),
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            writeln!(
                f,
                "{:<5} {}: {}",
                if c.ok { "ok" } else { "FAIL" },
                c.subject,
                c.detail
            )?;
        }
        let failed = self.checks.iter().filter(|c| !c.ok).count();
        writeln!(
            f,
            "{} checks passed, {failed} failed",
            self.checks.len() - failed
        )
    }
}

/// A snappy-compressed `prometheus.ReadRequest` for `{__name__="up"}` over one minute before
/// `now_ms`, accepting streamed chunks first and samples second, as a Thanos sidecar asks.
pub fn read_request(now_ms: i64) -> Result<Vec<u8>, String> {
    let up = vec![LabelMatcher {
        r#type: MatchType::Eq as i32,
        name: "__name__".into(),
        value: "up".into(),
    }];
    encode_read_request(
        (now_ms - 60_000).max(0),
        now_ms.max(0),
        &[up],
        &[ResponseType::StreamedXorChunks, ResponseType::Samples],
    )
}

/// Where Mimir, Cortex and Prometheus receive remote write: probed on whichever route serves
/// them, even a catch-all that never names them.
const WRITE_PATHS: [&str; 2] = ["/api/v1/push", "/api/v1/write"];

fn is_write_path(path: &str) -> bool {
    WRITE_PATHS.iter().any(|w| path.ends_with(w)) || path.contains("/otlp/")
}

/// A request body and the three headers that describe it.
type ProbeBody = (Vec<u8>, [(&'static str, &'static str); 3]);

struct Answer {
    status: StatusCode,
    content_type: String,
    body: Bytes,
    elapsed: Duration,
}

async fn call(
    upstream: &Upstream,
    route: Option<&Route>,
    tenant: Option<&TenantId>,
    method: Method,
    path: &str,
    body: Option<ProbeBody>,
) -> Result<Answer, String> {
    let target = route.map_or_else(|| path.to_owned(), |r| r.rewrite.apply(path).into_owned());
    let uri = upstream.uri_for(&target, None).map_err(|e| e.to_string())?;
    let (bytes, extra) = match body {
        Some((b, h)) => (Bytes::from(b), Some(h)),
        None => (Bytes::new(), None),
    };
    let body: UpstreamBody = Full::new(bytes).map_err(|e| match e {}).boxed_unsync();
    let mut req = Request::builder()
        .method(method)
        .uri(uri)
        .body(body)
        .map_err(|e| e.to_string())?;
    if let Some(t) = tenant {
        headers::set_tenant(req.headers_mut(), t);
    }
    for (k, v) in extra.into_iter().flatten() {
        req.headers_mut().insert(k, HeaderValue::from_static(v));
    }
    let start = Instant::now();
    let resp = tokio::time::timeout(PROBE_TIMEOUT, upstream.send(req))
        .await
        .map_err(|_| format!("no answer within {}s", PROBE_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let content_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    // Read at most a little of the body: enough for an error message.
    let buf = crate::body::read_prefix(resp.into_body(), 4097).await;
    Ok(Answer {
        status,
        content_type,
        body: Bytes::from(buf),
        elapsed: start.elapsed(),
    })
}

fn snippet(b: &Bytes) -> String {
    let s = String::from_utf8_lossy(&b[..b.len().min(200)]);
    s.trim().replace('\n', " ")
}

fn prefix_of(route: &Route) -> &str {
    route.path.as_str().trim_end_matches('/')
}

/// Runs every check for a config.
pub async fn probe(config: Config) -> Report {
    let mut report = Report::default();
    let metrics = Arc::new(Metrics::new());
    let rt = match Runtime::new(config, None, &metrics) {
        Ok(rt) => rt,
        Err(e) => {
            report.add(false, "setup", e);
            return report;
        }
    };
    let mut names: Vec<&Arc<str>> = rt.upstreams.keys().collect();
    names.sort();
    for name in names {
        let up = &rt.upstreams[name];
        let subject = format!("upstream {name}");
        let base = format!(
            "{}{}",
            up.settings.origin.to_string().trim_end_matches('/'),
            up.settings.base_path
        );
        let tls = if up.settings.origin.scheme_str() == Some("https") {
            ", TLS handshake and certificate valid"
        } else {
            ""
        };
        match call(up, None, None, Method::GET, "/", None).await {
            Ok(a) => report.add(
                true,
                subject.clone(),
                format!(
                    "reachable at {base}{tls} (GET / -> {}, {}ms)",
                    a.status.as_u16(),
                    a.elapsed.as_millis()
                ),
            ),
            Err(e) => report.add(
                false,
                subject.clone(),
                format!("unreachable at {base}: {e}"),
            ),
        }
        if up.settings.health_check.is_some() {
            match up.check_health().await {
                Ok(()) => report.add(true, subject, "health check passes"),
                Err(e) => report.add(false, subject, format!("health check fails: {e}")),
            }
        }
    }
    for route in rt.table.routes() {
        let subject = format!("route {}", route.name);
        let Some(up) = rt.upstreams.get(&route.upstream) else {
            continue;
        };
        let tenants = route.tenant.possible_tenants(&rt.config.identities);
        let Some(tenant) = tenants.first() else {
            report.add(
                false,
                subject,
                "no configured identity or tenant can use this route",
            );
            continue;
        };
        if let Some(e) = &route.prometheus {
            check_emulation(&mut report, &subject, route, e);
            let labels = format!("{}/api/v1/labels", prefix_of(route));
            for t in &tenants {
                tenant_check(&mut report, &subject, up, route, &labels, t).await;
            }
            let read = format!("{}/api/v1/read", prefix_of(route));
            let body = match read_request(crate::time::now_millis()) {
                Ok(b) => b,
                Err(e) => {
                    report.add(false, subject.clone(), format!("remote read request: {e}"));
                    continue;
                }
            };
            let headers = [
                ("content-encoding", "snappy"),
                ("content-type", "application/x-stream-protobuf"),
                ("x-prometheus-remote-read-version", "0.1.0"),
            ];
            match call(
                up,
                Some(route),
                Some(tenant),
                Method::POST,
                &read,
                Some((body, headers)),
            )
            .await
            {
                Ok(a)
                    if a.status.is_success()
                        && a.content_type.starts_with(
                            "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse",
                        ) =>
                {
                    report.add(
                        true,
                        subject.clone(),
                        format!(
                            "remote read streams chunks (POST {read} -> {})",
                            a.status.as_u16()
                        ),
                    )
                }
                Ok(a)
                    if a.status.is_success()
                        && a.content_type.starts_with("application/x-protobuf") =>
                {
                    report.add(
                        true,
                        subject.clone(),
                        format!(
                            "remote read answers samples (POST {read} -> {})",
                            a.status.as_u16()
                        ),
                    )
                }
                Ok(a) => report.add(
                    false,
                    subject.clone(),
                    format!(
                        "remote read broken: POST {read} -> {} {:?}: {}{}",
                        a.status.as_u16(),
                        a.content_type,
                        snippet(&a.body),
                        if a.status == StatusCode::NOT_FOUND {
                            format!(
                                " (forwarded as {}; Mimir and Cortex serve remote read at \
                                 /prometheus/api/v1/read, Prometheus at /api/v1/read)",
                                route.rewrite.apply(&read)
                            )
                        } else {
                            String::new()
                        }
                    ),
                ),
                Err(e) => report.add(false, subject.clone(), format!("remote read failed: {e}")),
            }
        } else {
            let path = match &route.path {
                PathMatch::Exact(p) | PathMatch::Prefix(p) => p.clone(),
            };
            for t in &tenants {
                tenant_check(&mut report, &subject, up, route, &path, t).await;
            }
            // The write paths this route serves without naming them (a catch-all): a sender
            // pushing there must not find a 404.
            for write in WRITE_PATHS {
                let serves = matches!(
                    rt.table.lookup(write, &Method::POST, route.host.as_deref()),
                    RouteMatch::Found(r) if Arc::ptr_eq(r, route)
                );
                if serves && write != path && !is_write_path(&path) {
                    tenant_check(&mut report, &subject, up, route, write, tenant).await;
                }
            }
        }
    }
    report
}

async fn tenant_check(
    report: &mut Report,
    subject: &str,
    up: &Upstream,
    route: &Route,
    path: &str,
    tenant_id: &TenantId,
) {
    let tenant = tenant_id.as_str();
    let is_write = is_write_path(path);
    let forwarded = route.rewrite.apply(path).into_owned();
    let via = if forwarded == path {
        String::new()
    } else {
        format!(", forwarded as {forwarded}")
    };
    match call(up, Some(route), Some(tenant_id), Method::GET, path, None).await {
        Ok(a) if a.status == StatusCode::UNAUTHORIZED || a.status == StatusCode::FORBIDDEN => report.add(
            false,
            subject,
            format!("tenant {tenant} rejected: GET {path}{via} -> {}: {}", a.status.as_u16(), snippet(&a.body)),
        ),
        Ok(a) if a.status.is_server_error() => report.add(false, subject, format!("GET {path}{via} -> {}: {}", a.status.as_u16(), snippet(&a.body))),
        // Nothing there: the sender's samples would be dropped as non-recoverable.
        Ok(a) if is_write && a.status == StatusCode::NOT_FOUND => report.add(
            false,
            subject,
            format!(
                "no remote write endpoint: GET {path}{via} -> 404. Mimir and Cortex receive at /api/v1/push, \
                 Prometheus at /api/v1/write (rename one path with match.path and rewrite.path)"
            ),
        ),
        // A 404 says nothing of the tenant, and usually means a wrong upstream path or rewrite.
        Ok(a) if a.status == StatusCode::NOT_FOUND => report.add(
            false,
            subject,
            format!(
                "nothing at GET {path}{via} -> 404: check the upstream URL's path and the route's rewrite"
            ),
        ),
        Ok(a) if is_write => report.add(true, subject, format!("push endpoint reachable, tenant {tenant} accepted, nothing written (GET {path}{via} -> {})", a.status.as_u16())),
        Ok(a) => report.add(true, subject, format!("tenant {tenant} accepted (GET {path}{via} -> {})", a.status.as_u16())),
        Err(e) => report.add(false, subject, format!("GET {path}{via} failed: {e}")),
    }
}

fn check_emulation(
    report: &mut Report,
    subject: &str,
    route: &Route,
    e: &crate::promapi::Emulation,
) {
    #[derive(serde::Deserialize)]
    struct Doc {
        global: Global,
    }
    #[derive(serde::Deserialize)]
    struct Global {
        external_labels: std::collections::BTreeMap<String, String>,
    }
    let mut problems = Vec::new();
    match e
        .config_yaml()
        .and_then(|y| serde_saphyr::from_str::<Doc>(&y).map_err(|e| e.to_string()))
    {
        Ok(d) if d.global.external_labels.is_empty() => {
            problems.push("status/config has no external labels".to_owned())
        }
        Ok(d) if d.global.external_labels != e.external_labels => {
            problems.push("status/config does not read back as configured".to_owned())
        }
        Ok(_) => {}
        Err(err) => problems.push(format!("status/config YAML does not parse: {err}")),
    }
    if let Err(err) = validate_semver(&e.version) {
        problems.push(err);
    } else if version_below(&e.version, (2, 24, 0)) {
        problems.push(format!("version {} is below 2.24.0: the sidecar will fall back to the heavier /api/v1/series for label calls", e.version));
    }
    let metrics = e.metrics_text();
    let value_ok = metrics
        .lines()
        .find_map(|l| l.strip_prefix("prometheus_tsdb_lowest_timestamp_seconds "))
        .is_some_and(|v| v.parse::<f64>().is_ok());
    if !metrics.contains("# TYPE prometheus_tsdb_lowest_timestamp_seconds gauge") || !value_ok {
        problems.push("metrics lack a typed prometheus_tsdb_lowest_timestamp_seconds".into());
    }
    let prefix = prefix_of(route);
    if problems.is_empty() {
        report.add(
            true,
            subject,
            format!(
                "emulated endpoints satisfy a Thanos sidecar ({} external labels, version {}, {}/{} lowest timestamp {}s)",
                e.external_labels.len(),
                e.version,
                prefix,
                EmulatedEndpoint::Metrics.subpath(),
                e.lowest_timestamp.seconds()
            ),
        );
    } else {
        report.add(false, subject, problems.join("; "));
    }
}

fn version_below(v: &str, min: (u64, u64, u64)) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or(v);
    let mut it = core.split('.').map(|n| n.parse::<u64>().unwrap_or(0));
    let parsed = (
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
        it.next().unwrap_or(0),
    );
    parsed < min
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_request_encodes_the_sidecar_query() {
        use prost::Message;
        let body = read_request(120_000).unwrap();
        let raw = crate::migrate::wire::unsnappy(&body, 1 << 20).unwrap();
        let req = crate::migrate::wire::ReadRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.accepted_response_types, [1, 0]);
        let q = &req.queries[0];
        assert_eq!(
            (q.start_timestamp_ms, q.end_timestamp_ms),
            (60_000, 120_000)
        );
        assert_eq!(q.matchers[0].name, "__name__");
        assert_eq!(q.matchers[0].value, "up");
    }

    #[test]
    fn versions_are_compared_numerically() {
        assert!(version_below("2.9.0", (2, 24, 0)));
        assert!(!version_below("2.53.0", (2, 24, 0)));
        assert!(!version_below("3.0.0-rc.1", (2, 24, 0)));
    }
}
