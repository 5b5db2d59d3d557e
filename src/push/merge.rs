//! One answer from the answers of every tenant's part, such that the sender retries exactly
//! when it should:
//!
//! - every part 2xx: 2xx, with the `X-Prometheus-Remote-Write-*-Written` counts summed (only
//!   when every part reported them: never invented);
//! - any transient failure (5xx, 429, no connection, a timeout): a status the sender retries,
//!   with the largest `Retry-After`. Resending the parts that succeeded is harmless: an
//!   identical sample is a no-op for Mimir and Cortex;
//! - otherwise the 4xx, with each tenant's message.
//!
//! A 4xx never becomes a 5xx, nor a 5xx or 429 a 4xx. OTLP senders retry only 429, 502, 503
//! and 504, so for OTLP another 5xx is answered 503.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::body::ProxyBody;
use crate::error::UpstreamErrorKind;
use crate::tenant::TenantId;

/// The response headers that count what was written (Remote Write 2.0).
pub const WRITTEN_HEADERS: [&str; 3] = [
    "x-prometheus-remote-write-samples-written",
    "x-prometheus-remote-write-histograms-written",
    "x-prometheus-remote-write-exemplars-written",
];

/// Most bytes of one tenant's error message kept in the merged answer.
const MESSAGE_BYTES: usize = 512;

/// What one tenant's part got back.
#[derive(Debug, Clone)]
pub enum Outcome {
    Answered {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// No answer: the exchange with the upstream failed.
    Failed {
        kind: UpstreamErrorKind,
        detail: String,
    },
}

#[derive(Debug, Clone)]
pub struct Answer {
    pub tenant: TenantId,
    pub outcome: Outcome,
}

impl Answer {
    fn status(&self) -> StatusCode {
        match &self.outcome {
            Outcome::Answered { status, .. } => *status,
            Outcome::Failed {
                kind: UpstreamErrorKind::Timeout,
                ..
            } => StatusCode::GATEWAY_TIMEOUT,
            Outcome::Failed { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    fn transient(&self) -> bool {
        let s = self.status();
        s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS
    }

    /// `Retry-After` in seconds (a number, or an HTTP date from now).
    fn retry_after(&self, now_ms: i64) -> Option<u64> {
        let Outcome::Answered { headers, .. } = &self.outcome else {
            return None;
        };
        let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
        if let Ok(secs) = v.parse::<u64>() {
            return Some(secs);
        }
        let at = crate::time::parse_http_date(v)?;
        Some(
            u64::try_from((at - now_ms).max(0))
                .unwrap_or(0)
                .div_ceil(1000),
        )
    }

    fn message(&self) -> String {
        match &self.outcome {
            Outcome::Answered { status, body, .. } => {
                let text = String::from_utf8_lossy(&body[..body.len().min(MESSAGE_BYTES)]);
                let text = text.trim();
                if text.is_empty() {
                    format!("HTTP {}", status.as_u16())
                } else {
                    format!("HTTP {}: {text}", status.as_u16())
                }
            }
            Outcome::Failed { detail, .. } => format!("no answer: {detail}"),
        }
    }

    fn written(&self, name: &str) -> Option<u64> {
        match &self.outcome {
            Outcome::Answered { headers, .. } => headers.get(name)?.to_str().ok()?.parse().ok(),
            Outcome::Failed { .. } => None,
        }
    }
}

/// The status a sender retries, for a set of answers with at least one transient failure.
fn retryable(answers: &[Answer], otlp: bool) -> StatusCode {
    let transient: Vec<StatusCode> = answers
        .iter()
        .filter(|a| a.transient())
        .map(Answer::status)
        .collect();
    let server_errors: Vec<StatusCode> = transient
        .iter()
        .copied()
        .filter(|s| s.is_server_error())
        .collect();
    let Some(first) = server_errors.first().copied() else {
        // Only rate limits.
        return StatusCode::TOO_MANY_REQUESTS;
    };
    if !otlp {
        return first;
    }
    // OTLP retries only these; 503 says "try again" to every client.
    let retried = [
        StatusCode::BAD_GATEWAY,
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::GATEWAY_TIMEOUT,
    ];
    if server_errors.iter().all(|s| retried.contains(s)) {
        first
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn text_response(status: StatusCode, body: String) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Each tenant's outcome, one line each.
fn report(answers: &[Answer]) -> String {
    let mut out = String::new();
    for a in answers {
        let line = if a.status().is_success() {
            "ok".to_owned()
        } else {
            a.message()
        };
        out.push_str(&format!("tenant {}: {line}\n", a.tenant));
    }
    out
}

/// `team-a 204, team-b 429`: each part's status, for logs.
pub fn summary(answers: &[Answer]) -> String {
    answers
        .iter()
        .map(|a| match &a.outcome {
            Outcome::Answered { status, .. } => format!("{} {}", a.tenant, status.as_u16()),
            Outcome::Failed { kind, .. } => format!("{} {}", a.tenant, kind.as_str()),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The one answer for the sender.
pub fn merge(answers: &[Answer], otlp: bool, now_ms: i64) -> Response<ProxyBody> {
    if answers.iter().any(Answer::transient) {
        let status = retryable(answers, otlp);
        let mut resp = text_response(status, report(answers));
        if let Some(secs) = answers
            .iter()
            .filter(|a| a.transient())
            .filter_map(|a| a.retry_after(now_ms))
            .max()
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return resp;
    }
    let refused: Vec<StatusCode> = answers
        .iter()
        .map(Answer::status)
        .filter(|s| !s.is_success())
        .collect();
    if let Some(first) = refused.first().copied() {
        let status = if refused.iter().all(|s| *s == first) {
            first
        } else {
            StatusCode::BAD_REQUEST
        };
        return text_response(status, report(answers));
    }
    // Every part written.
    let status = answers
        .first()
        .map_or(StatusCode::NO_CONTENT, Answer::status);
    let mut resp = Response::new(ProxyBody::full(Bytes::new()));
    *resp.status_mut() = status;
    if otlp {
        // An empty ExportMetricsServiceResponse: no partial success to report.
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
    }
    // Only counts every part reported, and only when there were parts: none are made up.
    for name in WRITTEN_HEADERS.iter().filter(|_| !answers.is_empty()) {
        let counts: Option<Vec<u64>> = answers.iter().map(|a| a.written(name)).collect();
        let total = counts.and_then(|c| c.iter().try_fold(0u64, |t, n| t.checked_add(*n)));
        if let Some(total) = total {
            resp.headers_mut().insert(*name, HeaderValue::from(total));
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answered(tenant: &str, status: u16, headers: &[(&str, &str)], body: &str) -> Answer {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Answer {
            tenant: TenantId::parse(tenant).unwrap(),
            outcome: Outcome::Answered {
                status: StatusCode::from_u16(status).unwrap(),
                headers: h,
                body: Bytes::from(body.to_owned()),
            },
        }
    }

    #[test]
    fn all_written_sums_the_written_counts_and_invents_none() {
        let a = answered(
            "a",
            204,
            &[(WRITTEN_HEADERS[0], "3"), (WRITTEN_HEADERS[1], "1")],
            "",
        );
        let b = answered("b", 204, &[(WRITTEN_HEADERS[0], "4")], "");
        let r = merge(&[a, b], false, 0);
        assert_eq!(r.status(), 204);
        assert_eq!(r.headers()[WRITTEN_HEADERS[0]], "7");
        assert!(
            r.headers().get(WRITTEN_HEADERS[1]).is_none(),
            "b did not say"
        );
        assert!(r.headers().get(WRITTEN_HEADERS[2]).is_none());
    }

    #[test]
    fn a_transient_failure_anywhere_is_retryable_with_the_largest_retry_after() {
        let ok = answered("a", 200, &[], "");
        let limited = answered("b", 429, &[("retry-after", "7")], "ingestion rate limit");
        let down = answered("c", 503, &[("retry-after", "2")], "");
        let bad = answered("d", 400, &[], "out of order");
        let r = merge(&[ok.clone(), limited.clone(), bad.clone()], false, 0);
        assert_eq!(r.status(), 429, "a 429 stays a 429, never a 4xx");
        assert_eq!(r.headers()["retry-after"], "7");
        let r = merge(&[ok.clone(), limited, down.clone()], false, 0);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "7");
        let gone = Answer {
            tenant: TenantId::parse("e").unwrap(),
            outcome: Outcome::Failed {
                kind: UpstreamErrorKind::Connect,
                detail: "connection refused".into(),
            },
        };
        assert_eq!(merge(&[ok.clone(), gone], false, 0).status(), 502);
        let internal = answered("f", 500, &[], "");
        assert_eq!(
            merge(&[ok.clone(), internal.clone()], false, 0).status(),
            500
        );
        assert_eq!(
            merge(&[ok, internal], true, 0).status(),
            503,
            "OTLP senders do not retry a 500"
        );
    }

    #[test]
    fn no_parts_report_no_counts_and_huge_counts_do_not_overflow() {
        let r = merge(&[], false, 0);
        assert!(r.status().is_success());
        assert!(r.headers().get(WRITTEN_HEADERS[0]).is_none());
        let max = u64::MAX.to_string();
        let a = answered("a", 204, &[(WRITTEN_HEADERS[0], &max)], "");
        let r = merge(&[a.clone(), a], false, 0);
        assert!(
            r.headers().get(WRITTEN_HEADERS[0]).is_none(),
            "omitted, not wrapped"
        );
    }

    #[test]
    fn retry_after_comes_from_the_parts_to_retry_only() {
        let ok = answered("a", 200, &[("retry-after", "99")], "");
        let limited = answered("b", 429, &[("retry-after", "3")], "");
        assert_eq!(
            merge(&[ok, limited], false, 0).headers()["retry-after"],
            "3"
        );
    }

    #[test]
    fn refusals_keep_their_4xx_and_every_tenants_message() {
        let ok = answered("a", 200, &[], "");
        let bad = answered("b", 400, &[], "err-mimir-sample-out-of-order");
        let r = merge(&[ok.clone(), bad.clone()], false, 0);
        assert_eq!(r.status(), 400);
        let too_big = answered("c", 413, &[], "too large");
        assert_eq!(merge(&[bad, too_big], false, 0).status(), 400);
        let denied = answered("d", 403, &[], "");
        assert_eq!(merge(&[ok, denied], false, 0).status(), 403);
    }
}
