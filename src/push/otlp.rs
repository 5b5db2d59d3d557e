//! OTLP metrics (`ExportMetricsServiceRequest`, protobuf) split by a resource attribute: each
//! `ResourceMetrics` goes whole to the tenant its resource names, as the sender encoded it (the
//! resource, its scopes and their metrics are not re-encoded, so nothing of them is lost).

use std::io::{Read, Write};

use bytes::Bytes;
use prost::Message;

use super::scan;
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
    // Every member (Go's gzip reader, which collectors and Mimir use, reads them all); bytes
    // after the last member that are not gzip are an error, not ignored.
    flate2::read::MultiGzDecoder::new(body)
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
    scan::bound(scan::count(&raw, &[1])?[0], scan::MAX_SERIES, "resources")?;
    let req = Export::decode(raw).map_err(|e| SplitError::Decode(e.to_string()))?;
    let mut groups: Groups<Vec<Bytes>> = Groups::new(policy.tenancy.max_tenants);
    for rm in req.resource_metrics {
        let mut attribute_count = 0;
        for resource in scan::embedded(&rm, 1)? {
            attribute_count += scan::count(resource, &[1])?[0];
        }
        scan::bound(
            attribute_count,
            scan::MAX_LABELS,
            "attributes of a resource",
        )?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn every_gzip_member_is_read_and_trailing_garbage_refused() {
        let mut two = super::gzip(b"first ").unwrap();
        two.extend(super::gzip(b"second").unwrap());
        assert_eq!(super::gunzip(&two, 100).unwrap().unwrap(), b"first second");
        let mut junk = super::gzip(b"first").unwrap();
        junk.extend(b"trailing garbage");
        assert!(super::gunzip(&junk, 100).is_err());
        assert_eq!(super::gunzip(&two, 5).unwrap(), None, "over the limit");
    }
}
