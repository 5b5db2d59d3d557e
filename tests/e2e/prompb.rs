//! The Prometheus remote read/write wire formats, written by hand from `prompb/remote.proto` and
//! `prompb/types.proto` (only the fields these tests use; prost skips the others), plus snappy
//! block framing and the CRC-checked frames of a streamed remote read response.

use std::collections::BTreeMap;

use prost::Message;

use crate::xor;

// ---- types.proto ----

#[derive(Clone, PartialEq, Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
}

#[derive(Clone, PartialEq, Message)]
pub struct LabelMatcher {
    #[prost(enumeration = "MatchType", tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub value: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum MatchType {
    Eq = 0,
    Neq = 1,
    Re = 2,
    Nre = 3,
}

#[derive(Clone, PartialEq, Message)]
pub struct Chunk {
    #[prost(int64, tag = "1")]
    pub min_time_ms: i64,
    #[prost(int64, tag = "2")]
    pub max_time_ms: i64,
    #[prost(enumeration = "ChunkEncoding", tag = "3")]
    pub r#type: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ChunkEncoding {
    Unknown = 0,
    Xor = 1,
}

#[derive(Clone, PartialEq, Message)]
pub struct ChunkedSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub chunks: Vec<Chunk>,
}

// ---- remote.proto ----

#[derive(Clone, PartialEq, Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ReadRequest {
    #[prost(message, repeated, tag = "1")]
    pub queries: Vec<Query>,
    /// Packed, as proto3 encodes repeated enums.
    #[prost(enumeration = "ResponseType", repeated, packed = "true", tag = "2")]
    pub accepted_response_types: Vec<i32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ResponseType {
    Samples = 0,
    StreamedXorChunks = 1,
}

/// `hints` (field 4) is left out: the sidecar's hints only tune the upstream's work.
#[derive(Clone, PartialEq, Message)]
pub struct Query {
    #[prost(int64, tag = "1")]
    pub start_timestamp_ms: i64,
    #[prost(int64, tag = "2")]
    pub end_timestamp_ms: i64,
    #[prost(message, repeated, tag = "3")]
    pub matchers: Vec<LabelMatcher>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ReadResponse {
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<QueryResult>,
}

#[derive(Clone, PartialEq, Message)]
pub struct QueryResult {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ChunkedReadResponse {
    #[prost(message, repeated, tag = "1")]
    pub chunked_series: Vec<ChunkedSeries>,
    #[prost(int64, tag = "2")]
    pub query_index: i64,
}

// ---- the tests' own view of a series ----

/// A series as the tests compare them: sorted labels, samples in time order.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: BTreeMap<String, String>,
    pub samples: Vec<(i64, f64)>,
}

impl Series {
    pub fn new(labels: &[(&str, &str)], samples: Vec<(i64, f64)>) -> Self {
        Series {
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            samples,
        }
    }

    fn to_proto(&self) -> TimeSeries {
        TimeSeries {
            labels: self
                .labels
                .iter()
                .map(|(name, value)| Label {
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            samples: self
                .samples
                .iter()
                .map(|&(timestamp, value)| Sample { value, timestamp })
                .collect(),
        }
    }
}

fn labels_of(labels: &[Label]) -> BTreeMap<String, String> {
    labels
        .iter()
        .map(|l| (l.name.clone(), l.value.clone()))
        .collect()
}

/// A remote write body: snappy (block format) of a `WriteRequest`.
pub fn encode_write_request(series: &[Series]) -> Vec<u8> {
    let req = WriteRequest {
        timeseries: series.iter().map(Series::to_proto).collect(),
    };
    snappy(&req.encode_to_vec())
}

/// A remote read body for one query over `[start_ms, end_ms]` with equality matchers.
pub fn encode_read_request(
    start_ms: i64,
    end_ms: i64,
    matchers: &[(&str, &str)],
    accepted: &[ResponseType],
) -> Vec<u8> {
    let req = ReadRequest {
        queries: vec![Query {
            start_timestamp_ms: start_ms,
            end_timestamp_ms: end_ms,
            matchers: matchers
                .iter()
                .map(|(name, value)| LabelMatcher {
                    r#type: MatchType::Eq as i32,
                    name: name.to_string(),
                    value: value.to_string(),
                })
                .collect(),
        }],
        accepted_response_types: accepted.iter().map(|t| *t as i32).collect(),
    };
    snappy(&req.encode_to_vec())
}

fn snappy(raw: &[u8]) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(raw)
        .expect("snappy-compress a protobuf message")
}

/// Decodes a SAMPLES remote read response: snappy block, then one `ReadResponse`.
pub fn decode_sampled_response(body: &[u8]) -> Result<Vec<Vec<Series>>, String> {
    let raw = snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| format!("response is not snappy (block format): {e}"))?;
    let resp = ReadResponse::decode(raw.as_slice())
        .map_err(|e| format!("response is not a prometheus.ReadResponse: {e}"))?;
    Ok(resp
        .results
        .iter()
        .map(|r| {
            let mut out: Vec<Series> = r
                .timeseries
                .iter()
                .map(|ts| Series {
                    labels: labels_of(&ts.labels),
                    samples: ts.samples.iter().map(|s| (s.timestamp, s.value)).collect(),
                })
                .collect();
            out.sort_by(|a, b| a.labels.cmp(&b.labels));
            out
        })
        .collect())
}

/// One frame of a streamed remote read response, its checksum verified.
#[derive(Debug)]
pub struct Frame {
    pub message: ChunkedReadResponse,
}

fn read_uvarint(buf: &[u8]) -> Result<(u64, usize), String> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, i + 1));
        }
    }
    Err("truncated or overlong uvarint".into())
}

/// Splits a streamed response into frames (uvarint length, big-endian CRC32-Castagnoli of the
/// data, then the data: a protobuf `ChunkedReadResponse`), checking every checksum.
pub fn decode_frames(body: &[u8]) -> Result<Vec<Frame>, String> {
    let castagnoli = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);
    let mut frames = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let n = frames.len();
        let (len, used) = read_uvarint(rest).map_err(|e| format!("frame {n}: length: {e}"))?;
        rest = &rest[used..];
        let len = usize::try_from(len).map_err(|_| format!("frame {n}: length {len} too big"))?;
        if rest.len() < 4 + len {
            return Err(format!(
                "frame {n}: needs 4 + {len} bytes, only {} left",
                rest.len()
            ));
        }
        let expected = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
        let data = &rest[4..4 + len];
        let actual = castagnoli.checksum(data);
        if actual != expected {
            return Err(format!(
                "frame {n}: CRC32C is {actual:#010x}, the frame says {expected:#010x}"
            ));
        }
        let message = ChunkedReadResponse::decode(data)
            .map_err(|e| format!("frame {n}: not a prometheus.ChunkedReadResponse: {e}"))?;
        frames.push(Frame { message });
        rest = &rest[4 + len..];
    }
    Ok(frames)
}

/// The series of a streamed response: every chunk XOR-decoded, checked against its declared
/// time range, and merged per series (a series may span several frames).
pub fn series_from_frames(frames: &[Frame]) -> Result<Vec<Series>, String> {
    let mut merged: BTreeMap<BTreeMap<String, String>, Vec<(i64, f64)>> = BTreeMap::new();
    for (n, frame) in frames.iter().enumerate() {
        for cs in &frame.message.chunked_series {
            let labels = labels_of(&cs.labels);
            let samples = merged.entry(labels.clone()).or_default();
            for chunk in &cs.chunks {
                if chunk.r#type != ChunkEncoding::Xor as i32 {
                    return Err(format!(
                        "frame {n}, {labels:?}: chunk type {} is not XOR",
                        chunk.r#type
                    ));
                }
                let decoded = xor::decode(&chunk.data)
                    .map_err(|e| format!("frame {n}, {labels:?}: XOR chunk: {e}"))?;
                let (first, last) = match (decoded.first(), decoded.last()) {
                    (Some(f), Some(l)) => (f.0, l.0),
                    _ => return Err(format!("frame {n}, {labels:?}: empty chunk")),
                };
                if (first, last) != (chunk.min_time_ms, chunk.max_time_ms) {
                    return Err(format!(
                        "frame {n}, {labels:?}: chunk says [{}, {}], its samples span [{first}, {last}]",
                        chunk.min_time_ms, chunk.max_time_ms
                    ));
                }
                samples.extend(decoded);
            }
        }
    }
    Ok(merged
        .into_iter()
        .map(|(labels, samples)| Series { labels, samples })
        .collect())
}
