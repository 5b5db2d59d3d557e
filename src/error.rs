//! Every error tenantgate answers with itself, and the one table that maps each to a status code.
//!
//! Bodies use the Prometheus HTTP API error shape, so Grafana, promtool and Thanos show them as
//! they would a Prometheus error: `{"status":"error","errorType":"...","error":"..."}`.
//! Errors the upstream answers (a 4xx or 5xx response) are not errors here: they pass through.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::body::ProxyBody;
use crate::route::PathError;
use crate::tenant::InvalidTenant;

/// The kind of upstream failure, as the `kind` label of `tenantgate_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Reset,
    Tls,
}

impl UpstreamErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Reset => "reset",
            UpstreamErrorKind::Tls => "tls",
        }
    }
}

/// An error answered by tenantgate itself.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("bad request path: {0}")]
    BadPath(#[from] PathError),
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("method {0} is not allowed here")]
    MethodNotAllowed(String),
    #[error("request body is larger than this route's max_request_body ({limit} bytes)")]
    BodyTooLarge { limit: u64 },
    /// The client's request body broke off or was malformed while it was being forwarded. Not
    /// an upstream error: it is not counted in `tenantgate_upstream_errors_total`.
    #[error("the request body from the client failed: {0}")]
    ClientBody(String),
    /// The client sent its request body too slowly (`server.body_read_timeout`, `body_min_rate`).
    #[error("{0}")]
    ClientTooSlow(String),
    /// More request headers than `server.max_headers` (HTTP/2; hyper answers HTTP/1 itself).
    #[error("more than {limit} request headers (server.max_headers)")]
    TooManyHeaders { limit: usize },
    /// A request head larger than `server.max_header_bytes`. hyper's own check depends on how
    /// the head arrived in reads, so tenantgate measures the parsed head itself too.
    #[error("request head larger than {limit} bytes (server.max_header_bytes)")]
    HeadTooLarge { limit: u64 },
    #[error("invalid tenant: {0}")]
    BadTenant(#[from] InvalidTenant),
    /// No or wrong credentials; `challenges` become `WWW-Authenticate` headers.
    #[error("{reason}")]
    Unauthenticated {
        reason: String,
        challenges: Vec<&'static str>,
    },
    /// Authenticated (or trusted) but not allowed here.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// A route that takes the tenant from X-Scope-OrgID got none (as Mimir: 401 no org id).
    #[error("no org id")]
    NoOrgId,
    #[error("{0}")]
    BadTenantHeader(String),
    /// Too many failed logins from the caller's address (429 with `Retry-After`).
    #[error("too many failed logins from this address; retry in {}s", retry_after.as_secs().max(1))]
    TooManyFailedLogins { retry_after: std::time::Duration },
    /// Too many requests in flight, or credential checks queued: try again shortly.
    #[error("overloaded: {0}; retry shortly")]
    Overloaded(&'static str),
    #[error("upstream {upstream}: {detail}")]
    Upstream {
        upstream: String,
        kind: UpstreamErrorKind,
        detail: String,
    },
    /// A remote write body that cannot be split by tenant (400).
    #[error("{0}")]
    BadWrite(String),
    /// A body of a type or encoding the route does not take (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ProxyError {
    /// The status code and Prometheus `errorType` for this error. This is the only place that
    /// decides them.
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::BadPath(_) => (StatusCode::BAD_REQUEST, "bad_data"),
            ProxyError::NoRoute { .. } => (StatusCode::NOT_FOUND, "not_found"),
            ProxyError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "bad_data"),
            ProxyError::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "bad_data"),
            ProxyError::ClientBody(_) => (StatusCode::BAD_REQUEST, "bad_data"),
            ProxyError::ClientTooSlow(_) => (StatusCode::REQUEST_TIMEOUT, "timeout"),
            ProxyError::TooManyHeaders { .. } | ProxyError::HeadTooLarge { .. } => {
                (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "bad_data")
            }
            ProxyError::BadTenant(_) | ProxyError::BadTenantHeader(_) => {
                (StatusCode::BAD_REQUEST, "bad_data")
            }
            ProxyError::Unauthenticated { .. } | ProxyError::NoOrgId => {
                (StatusCode::UNAUTHORIZED, "unauthorized")
            }
            ProxyError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ProxyError::Overloaded(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            ProxyError::TooManyFailedLogins { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "unavailable")
            }
            ProxyError::Upstream {
                kind: UpstreamErrorKind::Timeout,
                ..
            } => (StatusCode::GATEWAY_TIMEOUT, "timeout"),
            ProxyError::Upstream { .. } => (StatusCode::BAD_GATEWAY, "unavailable"),
            ProxyError::BadWrite(_) => (StatusCode::BAD_REQUEST, "bad_data"),
            ProxyError::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "bad_data"),
            ProxyError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }

    /// The response tenantgate sends for this error.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let (status, error_type) = self.status();
        let mut resp = error_response(status, error_type, &self.to_string());
        if let ProxyError::Overloaded(_) = self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ProxyError::TooManyFailedLogins { retry_after } = self {
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(retry_after.as_secs().max(1)),
            );
        }
        if let ProxyError::Unauthenticated { challenges, .. } = self {
            for c in challenges {
                resp.headers_mut()
                    .append(header::WWW_AUTHENTICATE, HeaderValue::from_static(c));
            }
        }
        resp
    }
}

/// `WWW-Authenticate` for routes that accept basic auth (RFC 7617).
pub const BASIC_CHALLENGE: &str = "Basic realm=\"tenantgate\", charset=\"UTF-8\"";
/// `WWW-Authenticate` for routes that accept bearer tokens (RFC 6750).
pub const BEARER_CHALLENGE: &str = "Bearer realm=\"tenantgate\"";

/// A Prometheus-style JSON error response.
pub fn error_response(status: StatusCode, error_type: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({"status": "error", "errorType": error_type, "error": message});
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(kind: UpstreamErrorKind) -> ProxyError {
        ProxyError::Upstream {
            upstream: "mimir".into(),
            kind,
            detail: "x".into(),
        }
    }

    #[test]
    fn status_table() {
        let cases: Vec<(ProxyError, u16, &str)> = vec![
            (ProxyError::BadPath(PathError::DotSegment), 400, "bad_data"),
            (
                ProxyError::NoRoute {
                    method: "GET".into(),
                    path: "/x".into(),
                },
                404,
                "not_found",
            ),
            (ProxyError::MethodNotAllowed("PUT".into()), 405, "bad_data"),
            (ProxyError::BodyTooLarge { limit: 10 }, 413, "bad_data"),
            (ProxyError::TooManyHeaders { limit: 100 }, 431, "bad_data"),
            (ProxyError::HeadTooLarge { limit: 100 }, 431, "bad_data"),
            (ProxyError::ClientBody("x".into()), 400, "bad_data"),
            (ProxyError::ClientTooSlow("x".into()), 408, "timeout"),
            (
                ProxyError::BadTenant(InvalidTenant::Federation),
                400,
                "bad_data",
            ),
            (ProxyError::BadTenantHeader("x".into()), 400, "bad_data"),
            (
                ProxyError::Unauthenticated {
                    reason: "x".into(),
                    challenges: vec![],
                },
                401,
                "unauthorized",
            ),
            (ProxyError::NoOrgId, 401, "unauthorized"),
            (ProxyError::Forbidden("x".into()), 403, "forbidden"),
            (ProxyError::Overloaded("x"), 503, "unavailable"),
            (upstream(UpstreamErrorKind::Connect), 502, "unavailable"),
            (upstream(UpstreamErrorKind::Reset), 502, "unavailable"),
            (upstream(UpstreamErrorKind::Tls), 502, "unavailable"),
            (upstream(UpstreamErrorKind::Timeout), 504, "timeout"),
            (ProxyError::Internal("x".into()), 500, "internal"),
        ];
        for (err, code, ty) in cases {
            assert_eq!(
                err.status(),
                (StatusCode::from_u16(code).unwrap(), ty),
                "{err}"
            );
        }
    }

    #[test]
    fn unauthenticated_carries_its_challenges() {
        let e = ProxyError::Unauthenticated {
            reason: "authentication required".into(),
            challenges: vec![BASIC_CHALLENGE, BEARER_CHALLENGE],
        };
        let resp = e.to_response();
        let got: Vec<_> = resp
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .collect();
        assert_eq!(got, [BASIC_CHALLENGE, BEARER_CHALLENGE]);
    }

    #[tokio::test]
    async fn body_is_prometheus_shaped_json() {
        use http_body_util::BodyExt;
        let resp = upstream(UpstreamErrorKind::Connect).to_response();
        assert_eq!(resp.status(), 502);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], "application/json");
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status":"error","errorType":"unavailable","error":"upstream mimir: x"})
        );
    }
}
