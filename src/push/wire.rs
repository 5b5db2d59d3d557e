//! The remote write messages as the splitter sees them: labels decoded, everything else kept as
//! the sender encoded it. A length-delimited field is the same on the wire whether it holds a
//! message or bytes, so samples, histograms, exemplars and metadata pass through re-encoding
//! byte for byte without being modelled.

use bytes::Bytes;
use prost::Message;

pub use crate::migrate::wire::Label;

// ---- Remote Write 1.0 (`prometheus.WriteRequest`) ----

/// A `WriteRequest` with its series and metadata still encoded.
#[derive(Clone, PartialEq, Message)]
pub struct V1Request {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub timeseries: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub metadata: Vec<Bytes>,
}

/// One `TimeSeries`: labels decoded; samples, exemplars and histograms kept encoded.
#[derive(Clone, PartialEq, Message)]
pub struct V1Series {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub samples: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub exemplars: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub histograms: Vec<Bytes>,
}

/// The one field of a `MetricMetadata` that says which series it describes.
#[derive(Clone, PartialEq, Message)]
pub struct V1MetadataName {
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
}

// ---- Remote Write 2.0 (`io.prometheus.write.v2.Request`) ----

#[derive(Clone, PartialEq, Message)]
pub struct V2Request {
    #[prost(string, repeated, tag = "4")]
    pub symbols: Vec<String>,
    #[prost(message, repeated, tag = "5")]
    pub timeseries: Vec<V2Series>,
}

/// A v2 series: everything that refers to the symbol table decoded (to rebuild it per tenant),
/// samples and histograms kept encoded.
#[derive(Clone, PartialEq, Message)]
pub struct V2Series {
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub samples: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub histograms: Vec<Bytes>,
    #[prost(message, repeated, tag = "4")]
    pub exemplars: Vec<V2Exemplar>,
    #[prost(message, optional, tag = "5")]
    pub metadata: Option<V2Metadata>,
    #[prost(int64, tag = "6")]
    pub created_timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct V2Exemplar {
    #[prost(uint32, repeated, tag = "1")]
    pub labels_refs: Vec<u32>,
    #[prost(double, tag = "2")]
    pub value: f64,
    #[prost(int64, tag = "3")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct V2Metadata {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(uint32, tag = "3")]
    pub help_ref: u32,
    #[prost(uint32, tag = "4")]
    pub unit_ref: u32,
}

/// Which remote write message a request carries, from its `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    /// `application/x-protobuf` (1.0), with `;proto=prometheus.WriteRequest` (1.0) or
    /// `;proto=io.prometheus.write.v2.Request` (2.0); `None` for anything else.
    pub fn of(content_type: &str) -> Option<Version> {
        let mut parts = content_type.split(';').map(str::trim);
        if !parts
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case("application/x-protobuf"))
        {
            return None;
        }
        let mut version = Version::V1;
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            if k.trim().eq_ignore_ascii_case("proto") {
                version = match v.trim().trim_matches('"') {
                    "prometheus.WriteRequest" => Version::V1,
                    "io.prometheus.write.v2.Request" => Version::V2,
                    _ => return None,
                };
            }
        }
        Some(version)
    }
}
