//! One remote read or remote write endpoint: its URL, headers (tenant, credentials) and
//! connection pool, with the retry policy the migration uses against it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER, USER_AGENT};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;

use crate::body::ProxyBody;
use crate::config::{Timeouts, UpstreamSettings};
use crate::forward::Upstream;
use crate::tls::UpstreamTls;

/// What the endpoint is for; decides the protocol headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Read,
    Write,
}

/// A remote read or write URL with what every request to it carries.
pub struct Endpoint {
    /// "source", "destination" or "destination read", for messages.
    pub role: &'static str,
    uri: Uri,
    headers: HeaderMap,
    upstream: Upstream,
    kind: Kind,
}

/// How a request failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// Worth another try: no connection, a timeout, a 5xx or a 429.
    Transient {
        detail: String,
        retry_after: Option<Duration>,
    },
    /// Not worth another try: any other 4xx, with what the server said.
    Refused { status: StatusCode, body: String },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient { detail, .. } => f.write_str(detail),
            Failure::Refused { status, body } => write!(f, "HTTP {status}: {}", body.trim()),
        }
    }
}

/// How much of an error response body is kept for the report.
const ERROR_BODY_LIMIT: usize = 4096;

impl Endpoint {
    pub fn new(
        role: &'static str,
        url: &str,
        kind: Kind,
        headers: HeaderMap,
        tls: Option<UpstreamTls>,
        timeouts: Timeouts,
    ) -> Result<Endpoint, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{role} URL {url:?}: {e}"))?;
        match uri.scheme_str() {
            Some("http" | "https") if uri.authority().is_some() => {}
            _ => {
                return Err(format!(
                    "{role} URL {url:?} must be http:// or https:// with a host"
                ));
            }
        }
        let origin = Uri::builder()
            .scheme(uri.scheme_str().unwrap_or("http"))
            .authority(uri.authority().map_or("", |a| a.as_str()))
            .path_and_query("/")
            .build()
            .map_err(|e| format!("{role} URL {url:?}: {e}"))?;
        let upstream = Upstream::new(UpstreamSettings {
            name: role.to_owned(),
            origin,
            base_path: String::new(),
            http2: false,
            timeouts,
            max_idle_connections: crate::config::DEFAULT_MAX_IDLE_CONNECTIONS,
            health_check: None,
            tls,
        })
        .map_err(|e| format!("{role}: {e}"))?;
        Ok(Endpoint {
            role,
            uri,
            headers,
            upstream,
            kind,
        })
    }

    pub fn uri(&self) -> &Uri {
        &self.uri
    }

    /// POSTs a snappy-compressed protobuf body (`Bytes`, so a retry does not copy it). A non-2xx
    /// answer is a [`Failure`], its body read.
    pub async fn post(&self, body: Bytes) -> Result<Response<ProxyBody>, Failure> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .body(
                Full::new(body)
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            )
            .map_err(|e| Failure::Transient {
                detail: format!("{}: cannot build the request: {e}", self.role),
                retry_after: None,
            })?;
        let h = req.headers_mut();
        h.extend(self.headers.clone());
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/x-protobuf"),
        );
        h.insert(CONTENT_ENCODING, HeaderValue::from_static("snappy"));
        h.insert(
            USER_AGENT,
            HeaderValue::from_static(concat!("tenantgate/", env!("CARGO_PKG_VERSION"))),
        );
        let (name, version) = match self.kind {
            Kind::Read => ("x-prometheus-remote-read-version", "0.1.0"),
            Kind::Write => ("x-prometheus-remote-write-version", "0.1.0"),
        };
        h.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(version),
        );
        let resp = self
            .upstream
            .send(req)
            .await
            .map_err(|e| Failure::Transient {
                detail: format!("{} {}: {e}", self.role, self.uri),
                retry_after: None,
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let retry_after = resp
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, crate::time::now_millis()));
        let text = error_text(resp.into_body()).await;
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            Err(Failure::Transient {
                detail: format!("{} {}: HTTP {status}: {}", self.role, self.uri, text.trim()),
                retry_after,
            })
        } else {
            Err(Failure::Refused { status, body: text })
        }
    }
}

/// The start of an error body, as text.
async fn error_text(body: ProxyBody) -> String {
    let mut out = crate::body::read_prefix(body, ERROR_BODY_LIMIT).await;
    out.truncate(ERROR_BODY_LIMIT);
    String::from_utf8_lossy(&out).into_owned()
}

/// `Retry-After`: delay-seconds or an HTTP date (IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn parse_retry_after(v: &str, now_ms: i64) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = crate::time::parse_http_date(v)?;
    Some(Duration::from_millis(
        u64::try_from(at - now_ms).unwrap_or(0),
    ))
}

// ---------------------------------------------------------------------------------------------
// Stopping

/// SIGINT/SIGTERM as the migration sees them: the first asks to stop after the slab in flight,
/// the second to abandon it.
#[derive(Clone)]
pub struct Stop {
    level: Arc<AtomicU8>,
    notify: Arc<Notify>,
    /// The level at which [`Stop::wait`] returns: 1 for reads, 2 for the writes of a slab in
    /// flight, which the first signal lets finish.
    threshold: u8,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            level: Arc::default(),
            notify: Arc::default(),
            threshold: 1,
        }
    }
}

impl Stop {
    pub fn raise(&self) -> u8 {
        let level = self.level.fetch_add(1, Ordering::SeqCst).saturating_add(1);
        self.notify.notify_waiters();
        level
    }

    /// Stop after the slab in flight.
    pub fn requested(&self) -> bool {
        self.level.load(Ordering::SeqCst) >= 1
    }

    /// The same stop, seen by work that only the second signal interrupts.
    pub fn abandon_only(&self) -> Stop {
        Stop {
            threshold: 2,
            ..self.clone()
        }
    }

    /// Resolves once a stop is requested (at this view's threshold).
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.level.load(Ordering::SeqCst) >= self.threshold {
                return;
            }
            notified.await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Retries

/// Retries of transient failures: exponential backoff from `backoff`, doubled each time up to
/// `max_backoff`, or longer when the server's `Retry-After` asks for it.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

/// The longest `Retry-After` honoured; a longer one is capped here.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

impl Retry {
    /// The wait before retry number `n` (1-based).
    pub fn delay(&self, n: u32, retry_after: Option<Duration>) -> Duration {
        let exp = self
            .backoff
            .saturating_mul(2u32.saturating_pow(n.saturating_sub(1)))
            .min(self.max_backoff);
        match retry_after {
            Some(ra) => ra.min(MAX_RETRY_AFTER).max(exp),
            None => exp,
        }
    }
}

/// Why a retried operation did not succeed.
#[derive(Debug)]
pub enum Failed {
    Refused {
        status: StatusCode,
        body: String,
    },
    GaveUp {
        attempts: u32,
        last: String,
    },
    /// A stop was requested while waiting to retry.
    Stopped,
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::Refused { status, body } => write!(f, "HTTP {status}: {}", body.trim()),
            Failed::GaveUp { attempts, last } => {
                write!(f, "gave up after {attempts} attempts: {last}")
            }
            Failed::Stopped => f.write_str("stopped while waiting to retry"),
        }
    }
}

/// Runs `op` until it succeeds, is refused, or the attempts run out. `retries` counts the
/// retries made. While waiting to retry, a stop request ends the wait with [`Failed::Stopped`].
pub async fn retrying<T, F, Fut>(
    policy: &Retry,
    stop: &Stop,
    what: &str,
    retries: &mut u64,
    mut op: F,
) -> Result<T, Failed>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match op().await {
            Ok(v) => return Ok(v),
            Err(Failure::Refused { status, body }) => return Err(Failed::Refused { status, body }),
            Err(Failure::Transient {
                detail,
                retry_after,
            }) => {
                if attempt > policy.attempts {
                    return Err(Failed::GaveUp {
                        attempts: attempt,
                        last: detail,
                    });
                }
                let wait = policy.delay(attempt, retry_after);
                tracing::warn!(
                    what,
                    error = %detail,
                    retry_in = %crate::config::units::format_duration(wait),
                    attempt,
                    "retrying"
                );
                *retries += 1;
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = stop.wait() => return Err(Failed::Stopped),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_seconds_or_an_http_date() {
        assert_eq!(parse_retry_after("7", 0), Some(Duration::from_secs(7)));
        let now = crate::time::parse_rfc3339("1994-11-06T08:49:30Z").unwrap();
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(7))
        );
        // A date in the past: retry now.
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now + 60_000),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", 0), None);
        assert_eq!(parse_retry_after("-1", 0), None);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_yields_to_a_longer_retry_after() {
        let r = Retry {
            attempts: 5,
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(4),
        };
        let d: Vec<u64> = (1..=6)
            .map(|n| r.delay(n, None).as_millis() as u64)
            .collect();
        assert_eq!(d, vec![500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(
            r.delay(1, Some(Duration::from_secs(9))),
            Duration::from_secs(9)
        );
        assert_eq!(
            r.delay(4, Some(Duration::from_secs(1))),
            Duration::from_secs(4)
        );
        assert_eq!(
            r.delay(1, Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_refusals_are_not() {
        let r = Retry {
            attempts: 3,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(10),
        };
        let stop = Stop::default();
        let mut retries = 0;
        let mut calls = 0;
        let got = retrying(&r, &stop, "t", &mut retries, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 3 {
                    Err(Failure::Transient {
                        detail: "503".into(),
                        retry_after: None,
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!((got.ok(), retries), (Some(3), 2));

        let mut retries = 0;
        let got: Result<(), _> = retrying(&r, &stop, "t", &mut retries, || async {
            Err(Failure::Refused {
                status: StatusCode::BAD_REQUEST,
                body: "out of order".into(),
            })
        })
        .await;
        assert!(matches!(got, Err(Failed::Refused { .. })) && retries == 0);

        let mut retries = 0;
        let got: Result<(), _> = retrying(&r, &stop, "t", &mut retries, || async {
            Err(Failure::Transient {
                detail: "down".into(),
                retry_after: None,
            })
        })
        .await;
        assert!(matches!(got, Err(Failed::GaveUp { attempts: 4, .. })) && retries == 3);

        stop.raise();
        let got: Result<(), _> = retrying(&r, &stop, "t", &mut retries, || async {
            Err(Failure::Transient {
                detail: "down".into(),
                retry_after: None,
            })
        })
        .await;
        assert!(matches!(got, Err(Failed::Stopped)));
    }
}
