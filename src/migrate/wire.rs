//! The Prometheus remote read and remote write wire formats (`prompb/remote.proto`,
//! `prompb/types.proto`; only the fields tenantgate uses, prost skips the others), snappy block
//! framing, and the CRC-checked frames of a streamed remote read response.

use prost::Message;

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

/// `histograms` (field 4) is not read: native histograms are not copied.
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

/// `hints` (field 4) is left out: hints only tune the server's work.
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

// ---- snappy ----

/// Snappy block format, as remote read and write bodies use.
pub fn snappy(raw: &[u8]) -> Result<Vec<u8>, String> {
    snap::raw::Encoder::new()
        .compress_vec(raw)
        .map_err(|e| format!("snappy: {e}"))
}

/// Decompresses a snappy block, refusing one that would decompress to more than `limit` bytes
/// before allocating it.
pub fn unsnappy(body: &[u8], limit: usize) -> Result<Vec<u8>, Unsnappy> {
    let len = snap::raw::decompress_len(body).map_err(|e| Unsnappy::Bad(e.to_string()))?;
    if len > limit {
        return Err(Unsnappy::TooBig(len));
    }
    snap::raw::Decoder::new()
        .decompress_vec(body)
        .map_err(|e| Unsnappy::Bad(e.to_string()))
}

#[derive(Debug)]
pub enum Unsnappy {
    Bad(String),
    TooBig(usize),
}

/// A remote read body: one query per matcher set over `[start_ms, end_ms]` (both inclusive).
pub fn encode_read_request(
    start_ms: i64,
    end_ms: i64,
    matcher_sets: &[Vec<LabelMatcher>],
    accepted: &[ResponseType],
) -> Result<Vec<u8>, String> {
    let req = ReadRequest {
        queries: matcher_sets
            .iter()
            .map(|m| Query {
                start_timestamp_ms: start_ms,
                end_timestamp_ms: end_ms,
                matchers: m.clone(),
            })
            .collect(),
        accepted_response_types: accepted.iter().map(|t| *t as i32).collect(),
    };
    snappy(&req.encode_to_vec())
}

// ---- remote write, encoded straight from borrowed series ----

fn varint_len(v: u64) -> usize {
    prost::encoding::encoded_len_varint(v)
}

/// The encoded size of one `Label` message body.
fn label_len(name: &str, value: &str) -> usize {
    1 + varint_len(name.len() as u64)
        + name.len()
        + 1
        + varint_len(value.len() as u64)
        + value.len()
}

/// The encoded size of one `Sample` message body (both fields always written, so `0.0` and
/// `-0.0` keep their bits).
fn sample_len(t: i64) -> usize {
    9 + 1 + varint_len(t as u64)
}

/// The encoded size of a labels-only `TimeSeries` body: what a series costs before samples.
pub fn series_overhead(labels: &[(String, String)]) -> usize {
    labels
        .iter()
        .map(|(n, v)| {
            let l = label_len(n, v);
            1 + varint_len(l as u64) + l
        })
        .sum()
}

/// The encoded size one sample adds to a `TimeSeries`.
pub fn sample_cost(t: i64) -> usize {
    let l = sample_len(t);
    1 + varint_len(l as u64) + l
}

/// Builds a `WriteRequest` body (protobuf, before snappy) from series borrowed in place.
#[derive(Default)]
pub struct WriteEncoder {
    buf: Vec<u8>,
    series: usize,
    samples: usize,
}

impl WriteEncoder {
    /// Appends one `TimeSeries`.
    pub fn push(&mut self, labels: &[(String, String)], samples: &[(i64, f64)]) {
        use prost::encoding::{WireType, encode_key, encode_varint};
        let body =
            series_overhead(labels) + samples.iter().map(|s| sample_cost(s.0)).sum::<usize>();
        encode_key(1, WireType::LengthDelimited, &mut self.buf);
        encode_varint(body as u64, &mut self.buf);
        for (name, value) in labels {
            encode_key(1, WireType::LengthDelimited, &mut self.buf);
            encode_varint(label_len(name, value) as u64, &mut self.buf);
            prost::encoding::string::encode(1, name, &mut self.buf);
            prost::encoding::string::encode(2, value, &mut self.buf);
        }
        for &(t, v) in samples {
            encode_key(2, WireType::LengthDelimited, &mut self.buf);
            encode_varint(sample_len(t) as u64, &mut self.buf);
            encode_key(1, WireType::SixtyFourBit, &mut self.buf);
            self.buf.extend_from_slice(&v.to_bits().to_le_bytes());
            encode_key(2, WireType::Varint, &mut self.buf);
            encode_varint(t as u64, &mut self.buf);
        }
        self.series += 1;
        self.samples += samples.len();
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series == 0
    }

    pub fn samples(&self) -> usize {
        self.samples
    }

    /// The encoded request, snappy-compressed, and the encoder emptied for the next one.
    pub fn finish(&mut self) -> Result<bytes::Bytes, String> {
        let out = snappy(&self.buf).map(bytes::Bytes::from);
        self.buf.clear();
        self.series = 0;
        self.samples = 0;
        out
    }
}

/// The size of a `TimeSeries` entry (key and length included) with these samples.
pub fn series_entry_len(labels: &[(String, String)], samples: &[(i64, f64)]) -> usize {
    let body = series_overhead(labels) + samples.iter().map(|s| sample_cost(s.0)).sum::<usize>();
    1 + varint_len(body as u64) + body
}

// ---- streamed remote read frames ----

/// The largest frame accepted: Prometheus sends at most `--storage.remote.read-max-bytes-in-frame`
/// (1 MiB by default) per frame; this bounds what a broken or hostile peer can make us buffer.
pub const MAX_FRAME: usize = 64 << 20;

/// Splits a streamed response into frames as its bytes arrive: uvarint length, big-endian
/// CRC32-Castagnoli of the data, then the data (a protobuf `ChunkedReadResponse`).
pub struct FrameReader {
    buf: Vec<u8>,
    /// Start of the unread part of `buf`.
    pos: usize,
    frames: usize,
}

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

impl Default for FrameReader {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader {
            buf: Vec::new(),
            pos: 0,
            frames: 0,
        }
    }

    pub fn push(&mut self, data: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > (1 << 20) {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Bytes held but not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// The next complete frame, if one has arrived.
    pub fn next_frame(&mut self) -> Result<Option<ChunkedReadResponse>, String> {
        let rest = &self.buf[self.pos..];
        let Some((len, used)) = read_uvarint(rest)? else {
            return Ok(None);
        };
        let n = self.frames;
        let len = usize::try_from(len)
            .ok()
            .filter(|l| *l <= MAX_FRAME)
            .ok_or_else(|| {
                format!("frame {n}: {len} bytes is more than the {MAX_FRAME} accepted")
            })?;
        if rest.len() < used + 4 + len {
            return Ok(None);
        }
        let crc = &rest[used..used + 4];
        let expected = u32::from_be_bytes([crc[0], crc[1], crc[2], crc[3]]);
        let data = &rest[used + 4..used + 4 + len];
        let actual = CASTAGNOLI.checksum(data);
        if actual != expected {
            return Err(format!(
                "frame {n}: CRC32C is {actual:#010x}, the frame says {expected:#010x}"
            ));
        }
        let message = ChunkedReadResponse::decode(data)
            .map_err(|e| format!("frame {n}: not a prometheus.ChunkedReadResponse: {e}"))?;
        self.pos += used + 4 + len;
        self.frames += 1;
        Ok(Some(message))
    }
}

/// A uvarint at the start of `buf`: `None` when more bytes are needed.
fn read_uvarint(buf: &[u8]) -> Result<Option<(u64, usize)>, String> {
    let mut value = 0u64;
    for (i, &b) in buf.iter().enumerate() {
        if i == 10 {
            return Err("overlong frame length".into());
        }
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One frame, as a streamed remote read server writes it.
    fn encode_frame(message: &ChunkedReadResponse) -> Vec<u8> {
        let data = message.encode_to_vec();
        let mut out = Vec::with_capacity(data.len() + 14);
        prost::encoding::encode_varint(data.len() as u64, &mut out);
        out.extend_from_slice(&CASTAGNOLI.checksum(&data).to_be_bytes());
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn the_hand_encoded_write_request_is_what_prost_decodes() {
        let labels = vec![
            ("__name__".to_owned(), "up".to_owned()),
            ("job".to_owned(), "a".repeat(300)),
        ];
        let samples = vec![
            (-1, 0.0),
            (0, -0.0),
            (1_700_000_000_000, f64::NAN),
            (5, 1e300),
        ];
        let mut enc = WriteEncoder::default();
        enc.push(&labels, &samples);
        enc.push(&labels[..1], &[]);
        assert_eq!(
            enc.len(),
            series_entry_len(&labels, &samples) + series_entry_len(&labels[..1], &[])
        );
        assert_eq!(enc.samples(), 4);
        let body = enc.finish().unwrap();
        assert!(enc.is_empty());
        assert_eq!(enc.len(), 0);
        let raw = unsnappy(&body, 1 << 20).unwrap();
        let req = WriteRequest::decode(raw.as_slice()).unwrap();
        assert_eq!(req.timeseries.len(), 2);
        let ts = &req.timeseries[0];
        assert_eq!(ts.labels[1].value.len(), 300);
        let got: Vec<(i64, u64)> = ts
            .samples
            .iter()
            .map(|s| (s.timestamp, s.value.to_bits()))
            .collect();
        let want: Vec<(i64, u64)> = samples.iter().map(|s| (s.0, s.1.to_bits())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn frames_are_read_as_they_arrive_and_checked() {
        let msg = ChunkedReadResponse {
            chunked_series: vec![ChunkedSeries {
                labels: vec![Label {
                    name: "a".into(),
                    value: "b".into(),
                }],
                chunks: vec![],
            }],
            query_index: 1,
        };
        let mut stream = encode_frame(&msg);
        stream.extend(encode_frame(&msg));
        let mut r = FrameReader::new();
        let mut got = Vec::new();
        for b in &stream {
            r.push(std::slice::from_ref(b));
            while let Some(f) = r.next_frame().unwrap() {
                got.push(f);
            }
        }
        assert_eq!(got, vec![msg.clone(), msg.clone()]);
        assert_eq!(r.buffered(), 0);

        let mut bad = encode_frame(&msg);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        let mut r = FrameReader::new();
        r.push(&bad);
        assert!(r.next_frame().unwrap_err().contains("CRC32C"));

        let mut huge = Vec::new();
        prost::encoding::encode_varint((MAX_FRAME + 1) as u64, &mut huge);
        let mut r = FrameReader::new();
        r.push(&huge);
        assert!(r.next_frame().is_err());
    }

    #[test]
    fn a_snappy_bomb_is_refused_before_it_is_inflated() {
        let body = snappy(&vec![0u8; 1 << 20]).unwrap();
        assert!(matches!(unsnappy(&body, 1000), Err(Unsnappy::TooBig(n)) if n == 1 << 20));
        assert!(matches!(
            unsnappy(b"\xff\xff\xff", 1000),
            Err(Unsnappy::Bad(_))
        ));
    }
}
