//! The Prometheus remote read/write wire formats as the tests use them: snappy block framing, the
//! CRC-checked frames of a streamed remote read response, and series compared as sorted maps.

use std::collections::BTreeMap;

use prost::Message;

use tenantgate::migrate::xor;

// The messages are tenantgate's own (`tenantgate migrate` speaks the same protocol); the tests
// check them against what a real Prometheus sends and accepts.
pub use tenantgate::migrate::wire::{
    ChunkEncoding, ChunkedReadResponse, Label, LabelMatcher, MatchType, Query, ReadRequest,
    ReadResponse, ResponseType, Sample, TimeSeries, WriteRequest,
};

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
