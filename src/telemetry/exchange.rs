//! One request as telemetry sees it: metrics and the access-log line, recorded when the
//! response body is finished (or abandoned), so durations and byte counts cover the whole stream.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::Method;
use http_body::{Body, Frame, SizeHint};

use super::access::AccessLine;
use super::handles::RouteHandles;
use super::metrics::{Metrics, RequestLabels, RouteLabels, RouteTenantLabels, method_label};
use crate::body::{BoxError, IdleTimeout};
use crate::error::UpstreamErrorKind;

/// Everything known about one request; recorded (metrics and one access-log line) when dropped,
/// that is when the response body has been sent or abandoned.
pub struct Exchange {
    metrics: Arc<Metrics>,
    access_log: bool,
    start: Instant,
    pub method: Method,
    /// The client's address as logged (the TCP peer: tenantgate reads no forwarding headers);
    /// set only when the access log is on.
    pub client: Option<Arc<str>>,
    /// The path as logged: normalized, without the query string (which may carry secrets).
    /// `None` until normalization accepted it (a rejected path is attacker-shaped and not
    /// logged), and always when the access log is off.
    path: Option<String>,
    /// The route's cached metric handles, once a route is chosen.
    route: Option<Arc<RouteHandles>>,
    pub tenant: Option<Arc<str>>,
    pub tenant_origin: Option<&'static str>,
    /// Name of the authenticated identity (never its credential).
    pub identity: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub status: u16,
    /// Request body bytes forwarded, counted by the upstream body; `None` when none was.
    bytes_in: Option<Arc<AtomicU64>>,
    pub bytes_out: u64,
    /// Why tenantgate answered with an error itself, or why the response stream broke.
    pub error: Option<String>,
    /// The request's slot under `server.max_requests_in_flight`.
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

const NONE: &str = "none";

/// The "none" label value, shared: recording a request allocates no label strings.
fn none() -> Arc<str> {
    static NONE_LABEL: std::sync::OnceLock<Arc<str>> = std::sync::OnceLock::new();
    NONE_LABEL.get_or_init(|| Arc::from(NONE)).clone()
}

impl Exchange {
    pub fn new(metrics: Arc<Metrics>, access_log: bool, method: Method) -> Self {
        Exchange {
            metrics,
            access_log,
            start: Instant::now(),
            method,
            client: None,
            path: None,
            route: None,
            tenant: None,
            tenant_origin: None,
            identity: None,
            upstream: None,
            status: 0,
            bytes_in: None,
            bytes_out: 0,
            error: None,
            permit: None,
        }
    }

    /// Marks the request as served by the route of `handles` (counts it in flight until
    /// recorded).
    pub fn set_route(&mut self, handles: &Arc<RouteHandles>) {
        handles.in_flight.inc();
        if let Some(old) = self.route.replace(handles.clone()) {
            old.in_flight.dec();
        }
    }

    /// The route's name, once one is chosen.
    pub fn route(&self) -> Option<&Arc<str>> {
        self.route.as_ref().map(|h| h.route())
    }

    /// Records the request's path, once normalization accepted it, for the access log.
    /// A copy, not a clone of the request's URI: that would keep hyper's read buffer shared
    /// for the whole exchange and make it allocate a new one for the next request.
    pub fn set_path(&mut self, normalized: &str) {
        if self.access_log {
            self.path = Some(normalized.to_owned());
        }
    }

    /// The path as logged.
    pub fn logged_path(&self) -> &str {
        self.path.as_deref().unwrap_or("<rejected>")
    }

    /// Keeps the request's in-flight slot until the exchange is recorded.
    pub fn hold(&mut self, permit: tokio::sync::OwnedSemaphorePermit) {
        self.permit = Some(permit);
    }

    /// A counter for the request body bytes about to be forwarded.
    pub fn count_request_bytes(&mut self) -> Arc<AtomicU64> {
        self.bytes_in
            .get_or_insert_with(|| Arc::new(AtomicU64::new(0)))
            .clone()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let bytes_in = self
            .bytes_in
            .as_ref()
            .map_or(0, |b| b.load(Ordering::Relaxed));
        let tenant = self.tenant.clone().unwrap_or_else(none);
        let method = method_label(&self.method);
        if let Some(h) = &self.route {
            // The usual case: the route's cached handles, no label hashing.
            h.in_flight.dec();
            let t = h.tenant(&tenant);
            h.requests(&t, method, self.status).inc();
            t.duration.observe(elapsed.as_secs_f64());
            if bytes_in > 0 {
                h.request_bytes.inc_by(bytes_in);
            }
            if self.bytes_out > 0 {
                h.response_bytes.inc_by(self.bytes_out);
            }
        } else {
            // No route (404, a refused request): counted under route="none".
            let m = &self.metrics;
            m.requests
                .get_or_create(&RequestLabels {
                    route: none(),
                    tenant: tenant.clone(),
                    method,
                    code: self.status,
                })
                .inc();
            m.duration
                .get_or_create(&RouteTenantLabels {
                    route: none(),
                    tenant: tenant.clone(),
                })
                .observe(elapsed.as_secs_f64());
            if bytes_in > 0 {
                m.request_bytes
                    .get_or_create(&RouteLabels { route: none() })
                    .inc_by(bytes_in);
            }
            if self.bytes_out > 0 {
                m.response_bytes
                    .get_or_create(&RouteLabels { route: none() })
                    .inc_by(self.bytes_out);
            }
        }
        if self.access_log {
            AccessLine {
                client: self.client.as_deref().unwrap_or(NONE),
                route: self.route().map_or(NONE, |r| &**r),
                tenant: &tenant,
                tenant_from: self.tenant_origin.unwrap_or(NONE),
                identity: self.identity.as_deref().unwrap_or(""),
                upstream: self.upstream.as_deref().unwrap_or(NONE),
                method: self.method.as_str(),
                path: self.logged_path(),
                status: self.status,
                elapsed,
                bytes_in,
                bytes_out: self.bytes_out,
                error: self.error.as_deref().unwrap_or(""),
            }
            .log();
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
    fn an_exchange_is_counted_when_dropped() {
        let m = Arc::new(Metrics::new());
        let route: Arc<str> = Arc::from("r");
        {
            let mut ex = Exchange::new(m.clone(), false, Method::GET);
            ex.set_route(&Arc::new(RouteHandles::new(&m, &route)));
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
