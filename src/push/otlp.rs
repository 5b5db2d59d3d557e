//! OTLP metrics (`ExportMetricsServiceRequest`, protobuf) split by a resource attribute: each
//! `ResourceMetrics` goes whole to the tenant its resource names, as the sender encoded it (the
//! resource, its scopes and their metrics are not re-encoded, so nothing of them is lost).

use std::io::{Read, Write};

use bytes::Bytes;
use prost::Message;

use super::split::{Groups, Part, Policy, SplitError};

/// `ExportMetricsServiceRequest` with each `ResourceMetrics` kept encoded.
#[derive(Clone, PartialEq, Message)]
pub struct Export {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub resource_metrics: Vec<Bytes>,
}

/// The part of a `ResourceMetrics` that names its tenant.
#[derive(Clone, PartialEq, Message)]
pub struct ResourceOnly {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Resource {
    #[prost(message, repeated, tag = "1")]
    pub attributes: Vec<KeyValue>,
}

#[derive(Clone, PartialEq, Message)]
pub struct KeyValue {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(message, optional, tag = "2")]
    pub value: Option<AnyValue>,
}

/// Only string values name tenants; other kinds read as none.
#[derive(Clone, PartialEq, Message)]
pub struct AnyValue {
    #[prost(string, optional, tag = "1")]
    pub string_value: Option<String>,
}

/// Inflates a gzip body, refusing one that inflates past `limit` bytes (a gzip stream does not
/// state its size reliably, so the inflating stops there).
pub fn gunzip(body: &[u8], limit: usize) -> Result<Option<Vec<u8>>, String> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("the body is not gzip: {e}"))?;
    Ok((out.len() <= limit).then_some(out))
}

pub fn gzip(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(raw).map_err(|e| e.to_string())?;
    enc.finish().map_err(|e| e.to_string())
}

/// Splits an OTLP metrics export (decompressed) by the route's attributes.
pub fn split(
    raw: Bytes,
    policy: &Policy<'_>,
    attributes: &[String],
) -> Result<Vec<Part>, SplitError> {
    let req = Export::decode(raw).map_err(|e| SplitError::Decode(e.to_string()))?;
    let mut groups: Groups<Vec<Bytes>> = Groups::new(policy.tenancy.max_tenants);
    for rm in req.resource_metrics {
        let resource = ResourceOnly::decode(rm.clone())
            .map_err(|e| SplitError::Decode(e.to_string()))?
            .resource
            .unwrap_or_default();
        let pairs: Vec<(&str, &str)> = resource
            .attributes
            .iter()
            .filter_map(|kv| {
                let v = kv.value.as_ref()?.string_value.as_deref()?;
                Some((kv.key.as_str(), v))
            })
            .collect();
        let (tenant, _) = policy.tenant_of_names(&pairs, attributes)?;
        groups.slot(tenant)?.push(rm);
    }
    Ok(groups
        .groups
        .into_iter()
        .map(|(tenant, resource_metrics)| Part {
            series: resource_metrics.len(),
            body: Export { resource_metrics }.encode_to_vec().into(),
            tenant,
        })
        .collect())
}
