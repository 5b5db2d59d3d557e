//! The admin listener's endpoints: tenantgate's own metrics, health, readiness and reload.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;

use super::{State, reload};
use crate::conn;

/// The admin listener's service.
#[derive(Clone)]
pub(super) struct AdminService {
    pub(super) state: Arc<State>,
    pub(super) activity: Arc<AtomicU64>,
}

impl hyper::service::Service<Request<Incoming>> for AdminService {
    type Response = Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        self.activity.store(conn::mono_ms(), Ordering::Relaxed);
        let state = self.state.clone();
        Box::pin(async move { Ok(admin(&state, req).await) })
    }
}

fn text(
    status: StatusCode,
    body: impl Into<Bytes>,
    content_type: &'static str,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// The admin listener: tenantgate's own metrics, health and reload.
async fn admin(state: &State, req: Request<Incoming>) -> Response<Full<Bytes>> {
    const PLAIN: &str = "text/plain; charset=utf-8";
    match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            // Like Prometheus' own handler: OpenMetrics only for scrapers that ask for it.
            let wants_om = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            let m = state.app.metrics();
            if wants_om {
                text(StatusCode::OK, m.encode(), crate::telemetry::OPENMETRICS)
            } else {
                text(StatusCode::OK, m.encode_text(), crate::promapi::TEXT_FORMAT)
            }
        }
        (&Method::GET | &Method::HEAD, "/-/healthy") => {
            text(StatusCode::OK, "tenantgate is healthy.\n", PLAIN)
        }
        (&Method::GET | &Method::HEAD, "/-/ready") => {
            if state.draining.load(Ordering::SeqCst) {
                return text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "tenantgate is shutting down.\n",
                    PLAIN,
                );
            }
            let rt = state.app.runtime();
            let mut failing: Vec<&str> = rt
                .upstreams
                .values()
                .filter(|u| !u.is_healthy())
                .map(|u| u.settings.name.as_str())
                .collect();
            failing.sort_unstable();
            if failing.is_empty() {
                text(StatusCode::OK, "tenantgate is ready.\n", PLAIN)
            } else {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "not ready: health check failing for upstream(s) {}\n",
                        failing.join(", ")
                    ),
                    PLAIN,
                )
            }
        }
        (&Method::POST | &Method::PUT, "/-/reload") => match reload(state).await {
            Ok(()) => text(StatusCode::OK, "config reloaded\n", PLAIN),
            Err(e) => text(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to reload config: {e}\n"),
                PLAIN,
            ),
        },
        (_, "/metrics" | "/-/healthy" | "/-/ready" | "/-/reload") => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed\n",
            PLAIN,
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /metrics, /-/healthy, /-/ready or POST /-/reload\n",
            PLAIN,
        ),
    }
}
