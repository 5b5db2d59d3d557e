//! Reading one time range from a remote read endpoint, streamed XOR chunks preferred, with the
//! memory it takes counted as it grows.

use http::header::CONTENT_TYPE;
use http_body_util::BodyExt;
use prost::Message;

use super::remote::{Endpoint, Failed, Failure, Retry, Stop, retrying};
use super::wire::{self, ChunkEncoding, LabelMatcher, ReadResponse, ResponseType};
use super::xor;

/// Sorted `(name, value)` pairs.
pub type Labels = Vec<(String, String)>;

/// The name of the series that records a migration's progress in the destination.
pub const PROGRESS_METRIC: &str = "tenantgate_migration_progress";

/// A half-open time range `[start, end)` in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub start: i64,
    pub end: i64,
}

impl Range {
    pub fn width(&self) -> i64 {
        self.end - self.start
    }

    pub fn contains(&self, t: i64) -> bool {
        self.start <= t && t < self.end
    }
}

/// One series and its samples in a range.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub samples: Vec<(i64, f64)>,
}

/// What a read keeps of each series.
pub enum Collect {
    /// Every sample (the copy).
    Samples(Vec<Series>),
    /// Sample count and newest timestamp only (verification, dry runs, resume).
    Counts(Vec<(Labels, u64, i64)>),
}

/// What a read returned.
pub struct Read {
    pub data: Collect,
    pub format: ResponseType,
    /// Bytes received from the source.
    pub wire_bytes: u64,
    /// Memory held by `data`, as accounted.
    pub memory: usize,
    /// Chunks that are not XOR (native histograms): not copied.
    pub skipped_chunks: u64,
}

impl Read {
    pub fn series(&self) -> usize {
        match &self.data {
            Collect::Samples(s) => s.len(),
            Collect::Counts(c) => c.len(),
        }
    }

    pub fn samples(&self) -> u64 {
        match &self.data {
            Collect::Samples(s) => s.iter().map(|s| s.samples.len() as u64).sum(),
            Collect::Counts(c) => c.iter().map(|c| c.1).sum(),
        }
    }
}

/// Why a read did not return data.
#[derive(Debug)]
pub enum ReadError {
    /// The range holds more than the memory budget: read a shorter one.
    TooBig {
        memory: usize,
    },
    Failed(Failure),
}

impl From<Failure> for ReadError {
    fn from(f: Failure) -> Self {
        ReadError::Failed(f)
    }
}

/// Memory a series costs besides its samples: the label strings and the vectors holding them.
fn labels_memory(labels: &Labels) -> usize {
    64 + labels
        .iter()
        .map(|(n, v)| n.len() + v.len() + 48)
        .sum::<usize>()
}

struct Sink {
    data: Collect,
    range: Range,
    memory: usize,
    budget: usize,
    skip_progress_of: Option<String>,
    skipped_chunks: u64,
    /// Index of the series being filled (series arrive contiguously).
    current: Option<usize>,
    /// The query the last series came from: a series continues only within one query.
    query: i64,
}

impl Sink {
    fn is_skipped(&self, labels: &Labels) -> bool {
        let Some(id) = &self.skip_progress_of else {
            return false;
        };
        labels
            .iter()
            .any(|(n, v)| n == "__name__" && v == PROGRESS_METRIC)
            && labels.iter().any(|(n, v)| n == "migration_id" && v == id)
    }

    /// Starts (or continues, when it is the same as the last one) a series.
    fn series(&mut self, mut labels: Labels, query: i64) -> bool {
        labels.sort();
        let same_query = std::mem::replace(&mut self.query, query) == query;
        if self.is_skipped(&labels) {
            self.current = None;
            return false;
        }
        let same = |l: &Labels| same_query && *l == labels;
        let idx = match &mut self.data {
            Collect::Samples(v) => {
                if v.last().is_some_and(|s| same(&s.labels)) {
                    v.len() - 1
                } else {
                    self.memory += labels_memory(&labels) + std::mem::size_of::<Series>();
                    v.push(Series {
                        labels,
                        samples: Vec::new(),
                    });
                    v.len() - 1
                }
            }
            Collect::Counts(v) => {
                if v.last().is_some_and(|s| same(&s.0)) {
                    v.len() - 1
                } else {
                    self.memory += labels_memory(&labels) + 40;
                    v.push((labels, 0, i64::MIN));
                    v.len() - 1
                }
            }
        };
        self.current = Some(idx);
        true
    }

    fn sample(&mut self, t: i64, v: f64) {
        let (Some(idx), true) = (self.current, self.range.contains(t)) else {
            return;
        };
        match &mut self.data {
            Collect::Samples(all) => {
                let s = &mut all[idx].samples;
                let before = s.capacity();
                s.push((t, v));
                self.memory += (s.capacity() - before) * 16;
            }
            Collect::Counts(all) => {
                let c = &mut all[idx];
                c.1 += 1;
                c.2 = c.2.max(t);
            }
        }
    }

    fn over_budget(&self) -> bool {
        self.memory > self.budget
    }

    /// Drops series with no sample in the range; merges series that several queries returned.
    fn finish(mut self, multiple_queries: bool) -> (Collect, usize) {
        match &mut self.data {
            Collect::Samples(v) => {
                v.retain(|s| !s.samples.is_empty());
                if multiple_queries {
                    v.sort_by(|a, b| a.labels.cmp(&b.labels));
                    v.dedup_by(|later, earlier| {
                        if later.labels == earlier.labels {
                            earlier.samples.append(&mut later.samples);
                            earlier.samples.sort_by_key(|s| s.0);
                            earlier.samples.dedup_by_key(|s| s.0);
                            true
                        } else {
                            false
                        }
                    });
                }
            }
            Collect::Counts(v) => {
                v.retain(|c| c.1 > 0);
                if multiple_queries {
                    v.sort_by(|a, b| a.0.cmp(&b.0));
                    // Both queries saw the whole series: keep one count.
                    v.dedup_by(|later, earlier| later.0 == earlier.0);
                }
            }
        }
        (self.data, self.memory)
    }
}

/// What to read and how much memory it may take.
pub struct ReadSpec<'a> {
    pub range: Range,
    pub matchers: &'a [Vec<LabelMatcher>],
    pub counts_only: bool,
    pub budget: usize,
    /// Leave out this migration's own progress series.
    pub skip_progress_of: Option<&'a str>,
}

/// [`read`], retrying transient failures. `Ok(Err(memory))`: the range did not fit its budget
/// (not a failure: the caller reads a shorter one).
pub async fn read_retrying(
    source: &Endpoint,
    spec: &ReadSpec<'_>,
    policy: &Retry,
    stop: &Stop,
    what: &str,
    retries: &mut u64,
) -> Result<Result<Read, usize>, Failed> {
    retrying(policy, stop, what, retries, || async {
        match read(source, spec).await {
            Ok(r) => Ok(Ok(r)),
            Err(ReadError::TooBig { memory }) => Ok(Err(memory)),
            Err(ReadError::Failed(f)) => Err(f),
        }
    })
    .await
}

/// Reads `spec.range` from `source`. Sample-level filtering keeps exactly the samples in the
/// half-open range, whatever chunk boundaries the source sends.
pub async fn read(source: &Endpoint, spec: &ReadSpec<'_>) -> Result<Read, ReadError> {
    let body = wire::encode_read_request(
        spec.range.start,
        spec.range.end - 1,
        spec.matchers,
        &[ResponseType::StreamedXorChunks, ResponseType::Samples],
    )
    .map_err(|detail| {
        ReadError::Failed(Failure::Transient {
            detail,
            retry_after: None,
        })
    })?;
    let resp = source.post(body.into()).await?;
    let streamed = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/x-streamed-protobuf"));
    let mut sink = Sink {
        data: if spec.counts_only {
            Collect::Counts(Vec::new())
        } else {
            Collect::Samples(Vec::new())
        },
        range: spec.range,
        memory: 0,
        budget: spec.budget,
        skip_progress_of: spec.skip_progress_of.map(str::to_owned),
        skipped_chunks: 0,
        current: None,
        query: 0,
    };
    let broken = |detail: String| {
        ReadError::Failed(Failure::Transient {
            detail: format!("{} {}: {detail}", source.role, source.uri()),
            retry_after: None,
        })
    };
    let mut body = resp.into_body();
    let mut wire_bytes = 0u64;
    let mut frames = wire::FrameReader::new();
    let mut whole = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| broken(format!("response body: {e}")))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        wire_bytes += data.len() as u64;
        if !streamed {
            // One snappy block: its compressed size bounds its decoded size only loosely, so
            // the block is checked again before it is inflated.
            if whole.len() + data.len() > spec.budget {
                return Err(ReadError::TooBig {
                    memory: whole.len() + data.len(),
                });
            }
            whole.extend_from_slice(data);
            continue;
        }
        frames.push(data);
        while let Some(msg) = frames.next_frame().map_err(broken)? {
            for cs in msg.chunked_series {
                let labels = cs.labels.into_iter().map(|l| (l.name, l.value)).collect();
                if !sink.series(labels, msg.query_index) {
                    continue;
                }
                for chunk in &cs.chunks {
                    if chunk.max_time_ms < spec.range.start || chunk.min_time_ms >= spec.range.end {
                        continue;
                    }
                    if chunk.r#type != ChunkEncoding::Xor as i32 {
                        sink.skipped_chunks += 1;
                        continue;
                    }
                    if spec.counts_only
                        && chunk.min_time_ms >= spec.range.start
                        && chunk.max_time_ms < spec.range.end
                    {
                        // Wholly inside: the header has the count, the chunk its newest time.
                        let n = xor::sample_count(&chunk.data).map_err(broken)?;
                        if let (Some(i), Collect::Counts(all)) = (sink.current, &mut sink.data) {
                            all[i].1 += n as u64;
                            all[i].2 = all[i].2.max(chunk.max_time_ms);
                        }
                        continue;
                    }
                    xor::decode_each(&chunk.data, |t, v| sink.sample(t, v)).map_err(broken)?;
                    if sink.over_budget() {
                        return Err(ReadError::TooBig {
                            memory: sink.memory,
                        });
                    }
                }
                if sink.over_budget() {
                    return Err(ReadError::TooBig {
                        memory: sink.memory,
                    });
                }
            }
        }
        if sink.memory + frames.buffered() > spec.budget {
            return Err(ReadError::TooBig {
                memory: sink.memory + frames.buffered(),
            });
        }
    }
    if streamed {
        if frames.buffered() > 0 {
            return Err(broken(format!(
                "the stream ends inside a frame ({} bytes left over)",
                frames.buffered()
            )));
        }
    } else if !whole.is_empty() {
        // Decoded protobuf takes about three times its encoded size.
        let raw = wire::unsnappy(&whole, spec.budget / 3).map_err(|e| match e {
            wire::Unsnappy::TooBig(n) => ReadError::TooBig { memory: n * 3 },
            wire::Unsnappy::Bad(e) => broken(format!("response is not snappy: {e}")),
        })?;
        drop(whole);
        let resp = ReadResponse::decode(raw.as_slice())
            .map_err(|e| broken(format!("response is not a prometheus.ReadResponse: {e}")))?;
        drop(raw);
        for (query, result) in resp.results.into_iter().enumerate() {
            for ts in result.timeseries {
                let labels = ts.labels.into_iter().map(|l| (l.name, l.value)).collect();
                if sink.series(labels, query as i64) {
                    for s in ts.samples {
                        sink.sample(s.timestamp, s.value);
                    }
                }
            }
        }
        if sink.over_budget() {
            return Err(ReadError::TooBig {
                memory: sink.memory,
            });
        }
    }
    let skipped_chunks = sink.skipped_chunks;
    let (data, memory) = sink.finish(spec.matchers.len() > 1);
    Ok(Read {
        data,
        format: if streamed {
            ResponseType::StreamedXorChunks
        } else {
            ResponseType::Samples
        },
        wire_bytes,
        memory,
        skipped_chunks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(counts: bool) -> Sink {
        Sink {
            data: if counts {
                Collect::Counts(Vec::new())
            } else {
                Collect::Samples(Vec::new())
            },
            range: Range {
                start: 100,
                end: 200,
            },
            memory: 0,
            budget: usize::MAX,
            skip_progress_of: Some("m1".into()),
            skipped_chunks: 0,
            current: None,
            query: 0,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn keeps_exactly_the_half_open_range_and_merges_continued_series() {
        let mut s = sink(false);
        assert!(s.series(labels(&[("job", "a"), ("__name__", "up")]), 0));
        for t in [99, 100, 150] {
            s.sample(t, 1.0);
        }
        // The same series again (next frame): continued, not duplicated.
        assert!(s.series(labels(&[("__name__", "up"), ("job", "a")]), 0));
        for t in [199, 200] {
            s.sample(t, 2.0);
        }
        assert!(s.series(labels(&[("__name__", "up"), ("job", "b")]), 0));
        s.sample(250, 1.0);
        assert!(s.memory > 0);
        let (data, _) = s.finish(false);
        let Collect::Samples(v) = data else { panic!() };
        assert_eq!(v.len(), 1, "a series with nothing in range is dropped");
        assert_eq!(v[0].labels, labels(&[("__name__", "up"), ("job", "a")]));
        assert_eq!(v[0].samples, vec![(100, 1.0), (150, 1.0), (199, 2.0)]);
    }

    #[test]
    fn series_from_two_queries_are_merged_once() {
        let mut s = sink(true);
        s.series(labels(&[("__name__", "a")]), 0);
        s.sample(100, 1.0);
        s.sample(101, 1.0);
        s.series(labels(&[("__name__", "b")]), 0);
        s.sample(100, 1.0);
        s.series(labels(&[("__name__", "a")]), 1);
        s.sample(100, 1.0);
        s.sample(101, 1.0);
        let (data, _) = s.finish(true);
        let Collect::Counts(v) = data else { panic!() };
        assert_eq!(
            v,
            vec![
                (labels(&[("__name__", "a")]), 2, 101),
                (labels(&[("__name__", "b")]), 1, 100)
            ]
        );
    }

    #[test]
    fn a_series_ending_one_query_and_starting_the_next_is_not_doubled() {
        let mut s = sink(false);
        s.series(labels(&[("__name__", "a")]), 0);
        s.sample(100, 1.0);
        s.sample(101, 2.0);
        s.series(labels(&[("__name__", "a")]), 1);
        s.sample(100, 1.0);
        s.sample(101, 2.0);
        let (data, _) = s.finish(true);
        let Collect::Samples(v) = data else { panic!() };
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].samples, vec![(100, 1.0), (101, 2.0)]);
    }

    #[test]
    fn the_migrations_own_progress_series_is_left_out() {
        let mut s = sink(false);
        assert!(!s.series(
            labels(&[("__name__", PROGRESS_METRIC), ("migration_id", "m1")]),
            0
        ));
        s.sample(150, 1.0);
        assert!(s.series(
            labels(&[("__name__", PROGRESS_METRIC), ("migration_id", "other")]),
            0
        ));
        let (data, _) = s.finish(false);
        assert!(matches!(data, Collect::Samples(v) if v.is_empty()));
    }
}
