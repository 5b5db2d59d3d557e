//! Serving one remote write request on a `from: label` route: read it whole (within the route's
//! body limit, compressed and decompressed), split it by tenant, send the parts in parallel, and
//! merge their answers.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, header};
use http_body::Body;
use http_body_util::{BodyExt, Full, Limited};

use super::merge::{self, Answer, Outcome};
use super::otlp;
use super::split::{self, Part, Policy, SplitError};
use super::wire::Version;
use crate::auth::Identity;
use crate::body::{BoxError, ProxyBody};
use crate::error::ProxyError;
use crate::forward::{Upstream, UpstreamBody, headers};
use crate::migrate::wire::{Unsnappy, snappy, unsnappy};
use crate::route::Route;
use crate::telemetry::Exchange;
use crate::tenant::LabelTenancy;

/// Bytes of each part's answer kept (its error message).
const ANSWER_BYTES: usize = 4096;

/// What a request carries, and how it is compressed.
#[derive(Clone, Copy, Debug)]
enum Kind {
    RemoteWrite(Version),
    Otlp { gzip: bool },
}

/// Everything about the request the parts are sent with.
pub struct Incoming<'a, B> {
    pub request: Request<B>,
    /// The path as the client sent it (normalized), which says whether it is OTLP.
    pub path: &'a str,
    /// The path to forward to (rewritten).
    pub target: &'a str,
    pub client: std::net::IpAddr,
    pub tls: bool,
}

fn refused(e: SplitError) -> ProxyError {
    if e.is_forbidden() {
        ProxyError::Forbidden(e.to_string())
    } else {
        ProxyError::BadWrite(e.to_string())
    }
}

/// The headers every part carries: the client's, less what tenantgate sets itself.
fn part_headers(client: &HeaderMap, route: &Route, from: std::net::IpAddr, tls: bool) -> HeaderMap {
    let mut h = client.clone();
    headers::strip_hop_by_hop(&mut h);
    h.remove(header::HOST);
    h.remove(header::CONTENT_LENGTH);
    if !route.forward_authorization {
        h.remove(header::AUTHORIZATION);
    }
    headers::add_forwarded(&mut h, from, tls);
    h
}

/// Splits and sends one request; `Ok` is the merged answer (2xx or not).
pub async fn serve<B>(
    route: &Route,
    upstream: &Arc<Upstream>,
    tenancy: &Arc<LabelTenancy>,
    caller: Option<Arc<Identity>>,
    incoming: Incoming<'_, B>,
    ex: &mut Exchange,
) -> Result<Response<ProxyBody>, ProxyError>
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let Incoming {
        request,
        path,
        target,
        client,
        tls,
    } = incoming;
    if request.method() != Method::POST {
        return Err(ProxyError::MethodNotAllowed(request.method().to_string()));
    }
    let limit = route.max_request_body;
    if crate::body::content_length(request.headers()).is_some_and(|n| n > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let otlp = path.contains("/otlp/");
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let encoding = request
        .headers()
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let kind = if otlp {
        if !content_type
            .split(';')
            .next()
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/x-protobuf"))
        {
            return Err(ProxyError::UnsupportedMediaType(format!(
                "Content-Type {content_type:?}: OTLP is split from protobuf \
                 (application/x-protobuf) only, not JSON"
            )));
        }
        if tenancy.attributes.is_empty() {
            return Err(ProxyError::UnsupportedMediaType(
                "this route names no resource attributes (tenant.attributes), so it cannot split OTLP"
                    .into(),
            ));
        }
        Kind::Otlp {
            gzip: match encoding.as_str() {
                "gzip" => true,
                "" | "identity" => false,
                other => {
                    return Err(ProxyError::UnsupportedMediaType(format!(
                        "Content-Encoding {other:?}: OTLP bodies are gzip or not compressed"
                    )));
                }
            },
        }
    } else {
        let version = Version::of(content_type).ok_or_else(|| {
            ProxyError::UnsupportedMediaType(format!(
                "Content-Type {content_type:?}: remote write is application/x-protobuf, with \
                 proto=prometheus.WriteRequest (1.0) or proto=io.prometheus.write.v2.Request (2.0)"
            ))
        })?;
        if encoding != "snappy" {
            return Err(ProxyError::UnsupportedMediaType(
                "remote write bodies are snappy-compressed (Content-Encoding: snappy)".into(),
            ));
        }
        Kind::RemoteWrite(version)
    };
    let max = usize::try_from(limit).unwrap_or(usize::MAX);
    let (parts, body) = request.into_parts();
    let body = Limited::new(body, max)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ProxyError::BodyTooLarge { limit }
            } else if e.downcast_ref::<crate::conn::BodyTooSlow>().is_some() {
                ProxyError::ClientTooSlow(e.to_string())
            } else {
                ProxyError::ClientBody(e.to_string())
            }
        })?
        .to_bytes();
    ex.count_request_bytes()
        .store(body.len() as u64, std::sync::atomic::Ordering::Relaxed);
    let raw = match kind {
        // The snappy header states the decoded size: refused before anything is inflated.
        Kind::RemoteWrite(_) => Bytes::from(unsnappy(&body, max).map_err(|e| match e {
            Unsnappy::TooBig(_) => ProxyError::BodyTooLarge { limit },
            Unsnappy::Bad(e) => ProxyError::BadWrite(format!("the body is not snappy: {e}")),
        })?),
        Kind::Otlp { gzip: true } => Bytes::from(
            otlp::gunzip(&body, max)
                .map_err(ProxyError::BadWrite)?
                .ok_or(ProxyError::BodyTooLarge { limit })?,
        ),
        Kind::Otlp { gzip: false } => body.clone(),
    };
    drop(body);
    // Decoding and re-encoding a batch is CPU work of milliseconds: off the async workers.
    let (owned_tenancy, owned_caller) = (tenancy.clone(), caller.clone());
    let split = tokio::task::spawn_blocking(move || {
        let policy = Policy {
            tenancy: &owned_tenancy,
            caller: owned_caller.as_deref(),
        };
        match kind {
            Kind::RemoteWrite(Version::V1) => split::split_v1(raw, &policy),
            Kind::RemoteWrite(Version::V2) => split::split_v2(raw, &policy),
            Kind::Otlp { .. } => otlp::split(raw, &policy, &owned_tenancy.attributes),
        }
    })
    .await
    .map_err(|e| ProxyError::Internal(format!("splitting the request: {e}")))?
    .map_err(refused)?;
    let uri = upstream.uri_for(target, parts.uri.query())?;
    let common = part_headers(&parts.headers, route, client, tls);
    let answers = send_all(upstream, &uri, &common, split, kind).await?;
    let merged = merge::merge(&answers, otlp, crate::time::now_millis());
    // Each part's outcome where an operator looks: failures in the upstream error metric, and
    // the parts of an answer that is not a success in the access log.
    for a in &answers {
        if let Outcome::Failed { kind, .. } = &a.outcome {
            ex.metrics().upstream_error(&route.upstream, *kind);
        }
    }
    let summary = merge::summary(&answers);
    if !merged.status().is_success() {
        ex.error = Some(format!("parts: {summary}"));
    }
    tracing::debug!(route = &*route.name, parts = %summary, "split by label");
    Ok(merged)
}

/// Sends every part at once; each gets its answer, or how it failed.
async fn send_all(
    upstream: &Arc<Upstream>,
    uri: &http::Uri,
    common: &HeaderMap,
    parts: Vec<Part>,
    kind: Kind,
) -> Result<Vec<Answer>, ProxyError> {
    let mut tasks = Vec::with_capacity(parts.len());
    for part in parts {
        // Compressed as the sender compressed it (its Content-Encoding goes along).
        let body = match kind {
            Kind::RemoteWrite(_) => snappy(&part.body).map_err(ProxyError::Internal)?,
            Kind::Otlp { gzip: true } => otlp::gzip(&part.body).map_err(ProxyError::Internal)?,
            Kind::Otlp { gzip: false } => part.body.to_vec(),
        };
        let mut req = Request::new(
            Full::new(Bytes::from(body))
                .map_err(|e| match e {})
                .boxed_unsync(),
        );
        *req.method_mut() = Method::POST;
        *req.uri_mut() = uri.clone();
        *req.headers_mut() = common.clone();
        headers::set_tenant(req.headers_mut(), &part.tenant);
        let req: Request<UpstreamBody> = req;
        let upstream = upstream.clone();
        let tenant = part.tenant.clone();
        tasks.push((
            tenant,
            tokio::spawn(async move {
                match upstream.send(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        let (p, body) = resp.into_parts();
                        let body = crate::body::read_prefix(body, ANSWER_BYTES).await;
                        Outcome::Answered {
                            status,
                            headers: p.headers,
                            body: Bytes::from(body),
                        }
                    }
                    Err(ProxyError::Upstream { kind, detail, .. }) => {
                        Outcome::Failed { kind, detail }
                    }
                    Err(e) => Outcome::Failed {
                        kind: crate::error::UpstreamErrorKind::Connect,
                        detail: e.to_string(),
                    },
                }
            }),
        ));
    }
    let mut answers = Vec::with_capacity(tasks.len());
    for (tenant, task) in tasks {
        let outcome = task.await.unwrap_or_else(|e| Outcome::Failed {
            kind: crate::error::UpstreamErrorKind::Reset,
            detail: format!("the part's task ended: {e}"),
        });
        answers.push(Answer { tenant, outcome });
    }
    Ok(answers)
}
