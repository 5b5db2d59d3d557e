//! The write path: a slab's samples packed into remote write requests, paced, and split when a
//! destination says a request is larger than its ingestion rate allows.
//!
//! Why split: Cortex (25,000 samples/s, burst 50,000 by default) and Mimir (10,000/s, burst
//! 200,000) refuse with 429 a request larger than the tenant's burst, and no retry of that same
//! request can ever pass. Their messages state the limit, so a request over it is halved until
//! each part fits, later requests are capped at it, and writes are paced to
//! [`PACE_SHARE`] of the stated rate (the rest is left to the tenant's live writers).

use std::cell::Cell;
use std::ops::Range as Span;
use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use super::engine::{Halt, Migration};
use super::read::{Collect, Range, Read, Series};
use super::remote::{Failed, Failure, retrying};
use super::report::{Reason, SlabReport};
use super::wire::{self, WriteEncoder};
use crate::config::units::format_size;

/// Share of a destination's stated ingestion rate that the migration paces itself to.
pub(super) const PACE_SHARE: f64 = 0.8;

/// Part of one series' samples in a request.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Piece {
    series: usize,
    samples: Span<usize>,
}

/// An ingestion rate limit a destination stated in a 429.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct RateLimit {
    /// Samples per second.
    pub(super) rate: u64,
    /// Largest request that can pass, when stated (Mimir); else the rate (Cortex).
    pub(super) burst: Option<u64>,
}

impl RateLimit {
    /// Reads the limit from a 429's message: Cortex says `ingestion rate limit (25000) exceeded
    /// while adding 54200 samples`, Mimir `ingestion rate limit, set to 10000 items/s with a
    /// maximum allowed burst of 200000`.
    pub(super) fn parse(message: &str) -> Option<RateLimit> {
        let number_after = |marker: &str| -> Option<u64> {
            let at = message.find(marker)? + marker.len();
            let digits: String = message[at..]
                .chars()
                .skip_while(|c| *c == ' ' || *c == '(')
                .take_while(char::is_ascii_digit)
                .collect();
            digits.parse().ok()
        };
        let rate = number_after("ingestion rate limit, set to")
            .or_else(|| number_after("ingestion rate limit ("))?;
        Some(RateLimit {
            rate,
            burst: number_after("maximum allowed burst of"),
        })
    }

    /// The most samples one request may carry to pass at all.
    pub(super) fn max_request(&self) -> u64 {
        self.burst.unwrap_or(self.rate).max(1)
    }
}

/// Spaces writes so that they average at most `rate` samples per second.
#[derive(Debug)]
pub(super) struct Pacer {
    rate: Option<f64>,
    next: Instant,
}

impl Pacer {
    /// `rate` 0 = not paced (until a destination states a limit).
    pub(super) fn new(rate: u64) -> Pacer {
        Pacer {
            rate: (rate > 0).then_some(rate as f64),
            next: Instant::now(),
        }
    }

    /// Paces to `rate` from now on, if slower than the current pace.
    pub(super) fn slow_to(&mut self, rate: f64) {
        if rate > 0.0 && self.rate.is_none_or(|r| rate < r) {
            tracing::info!(
                samples_per_second = rate as u64,
                "pacing writes to the destination's stated ingestion rate"
            );
            self.rate = Some(rate);
        }
    }

    /// Waits until `samples` more may be sent.
    pub(super) async fn wait(&mut self, samples: usize) {
        let Some(rate) = self.rate else { return };
        let now = Instant::now();
        if self.next > now {
            tokio::time::sleep_until(self.next).await;
        }
        self.next = self.next.max(now) + Duration::from_secs_f64(samples as f64 / rate);
    }
}

fn sample_count(pieces: &[Piece]) -> usize {
    pieces.iter().map(|p| p.samples.len()).sum()
}

/// Splits a request into two of (nearly) equal sample counts, cutting a series if needed.
/// `None` for a single sample.
pub(super) fn halve(pieces: Vec<Piece>) -> Option<(Vec<Piece>, Vec<Piece>)> {
    let total = sample_count(&pieces);
    if total < 2 {
        return None;
    }
    let mut want = total / 2;
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for p in pieces {
        let n = p.samples.len();
        if want == 0 {
            second.push(p);
        } else if n <= want {
            want -= n;
            first.push(p);
        } else {
            let cut = p.samples.start + want;
            first.push(Piece {
                series: p.series,
                samples: p.samples.start..cut,
            });
            second.push(Piece {
                series: p.series,
                samples: cut..p.samples.end,
            });
            want = 0;
        }
    }
    Some((first, second))
}

impl Migration {
    /// Writes one slab's samples in requests of at most `--max-write-size` bytes (and at most
    /// the samples a stated rate limit lets pass), in time order per series, skipping what the
    /// destination already holds (see `resume`).
    pub(super) async fn write_slab(
        &mut self,
        range: Range,
        read: Read,
        slab: &mut SlabReport,
    ) -> Result<(), Halt> {
        let Collect::Samples(mut series) = read.data else {
            return Ok(());
        };
        if self.already.covers(range.start) {
            for s in &mut series {
                slab.samples_skipped += self.already.keep_missing(&s.labels, &mut s.samples);
            }
        }
        let mut accepted = vec![false; series.len()];
        let mut pieces: Vec<Piece> = Vec::new();
        let (mut bytes, mut count) = (0usize, 0usize);
        for i in 0..series.len() {
            let s = &series[i];
            let overhead = wire::series_entry_len(&s.labels, &[]) + 10;
            let mut at = 0;
            while at < s.samples.len() {
                let room = self.plan.max_write.saturating_sub(bytes);
                let cap = self.max_request_samples.saturating_sub(count);
                let (mut size, mut n) = (overhead, 0);
                for x in &s.samples[at..] {
                    let c = wire::sample_cost(x.0);
                    if size + c > room || n >= cap {
                        break;
                    }
                    size += c;
                    n += 1;
                }
                if n == 0 {
                    if pieces.is_empty() {
                        // Labels alone fill a request: send one sample, the destination judges.
                        n = 1;
                    } else {
                        self.flush(&series, &mut pieces, &mut accepted, slab)
                            .await?;
                        (bytes, count) = (0, 0);
                        continue;
                    }
                }
                pieces.push(Piece {
                    series: i,
                    samples: at..at + n,
                });
                (bytes, count) = (bytes + size, count + n);
                at += n;
                if at < s.samples.len() {
                    self.flush(&series, &mut pieces, &mut accepted, slab)
                        .await?;
                    (bytes, count) = (0, 0);
                }
            }
        }
        if !pieces.is_empty() {
            self.flush(&series, &mut pieces, &mut accepted, slab)
                .await?;
        }
        slab.series_written = accepted.iter().filter(|a| **a).count() as u64;
        for (s, _) in series.iter().zip(&accepted).filter(|(_, a)| **a) {
            self.distinct_written
                .insert(super::engine::labels_hash(&s.labels));
        }
        if self.already.ends_by(range.end) {
            self.already = super::resume::AlreadyWritten::default();
        }
        Ok(())
    }

    /// Sends the request made of `pieces` (emptied), halving it while the destination says it
    /// is over its ingestion rate limit.
    async fn flush(
        &mut self,
        series: &[Series],
        pieces: &mut Vec<Piece>,
        accepted: &mut [bool],
        slab: &mut SlabReport,
    ) -> Result<(), Halt> {
        let mut queue = vec![std::mem::take(pieces)];
        while let Some(request) = queue.pop() {
            let samples = sample_count(&request);
            // Over a limit the destination already stated: split before sending, not after a
            // refusal.
            if samples > self.max_request_samples
                && let Some((a, b)) = halve(request.clone())
            {
                queue.push(b);
                queue.push(a);
                continue;
            }
            let mut enc = WriteEncoder::default();
            for p in &request {
                let s = &series[p.series];
                enc.push(&s.labels, &s.samples[p.samples.clone()]);
            }
            let body = enc.finish().map_err(Halt::Fatal)?;
            let len = body.len() as u64;
            self.pacer.wait(samples).await;
            let stated: Cell<Option<RateLimit>> = Cell::new(None);
            let mut retries = 0;
            let dest = &self.plan.dest;
            // The first signal lets the slab in flight finish; only a second one gives up here.
            let sent = retrying(
                &self.plan.retry,
                &self.stop.abandon_only(),
                "write to the destination",
                &mut retries,
                || {
                    let (body, stated) = (body.clone(), &stated);
                    async move {
                        match dest.post(body).await {
                            Err(Failure::Transient {
                                detail,
                                retry_after,
                            }) => match RateLimit::parse(&detail) {
                                Some(limit) => {
                                    stated.set(Some(limit));
                                    if samples as u64 > limit.max_request() {
                                        // No retry of this request can pass: split it.
                                        return Err(Failure::Refused {
                                            status: StatusCode::TOO_MANY_REQUESTS,
                                            body: detail,
                                        });
                                    }
                                    Err(Failure::Transient {
                                        detail,
                                        retry_after,
                                    })
                                }
                                None => Err(Failure::Transient {
                                    detail,
                                    retry_after,
                                }),
                            },
                            other => other,
                        }
                    }
                },
            )
            .await;
            slab.retries += retries;
            if let Some(limit) = stated.get() {
                self.pacer.slow_to(limit.rate as f64 * self.plan.pace_share);
                let cap = usize::try_from(limit.max_request()).unwrap_or(usize::MAX);
                self.max_request_samples = self.max_request_samples.min(cap);
            }
            match sent {
                Ok(_) => {
                    slab.write_requests += 1;
                    slab.samples_written += samples as u64;
                    slab.bytes_written += len;
                    for p in &request {
                        accepted[p.series] = true;
                    }
                }
                Err(Failed::Refused { status, body })
                    if status == StatusCode::TOO_MANY_REQUESTS && samples > 1 =>
                {
                    tracing::info!(
                        samples,
                        error = %body.trim(),
                        "a write is larger than the destination's ingestion rate lets pass: splitting it"
                    );
                    if let Some((a, b)) = halve(request) {
                        // Second half pushed first: the first is sent first, in time order.
                        queue.push(b);
                        queue.push(a);
                    }
                }
                Err(Failed::Refused { status, body }) => match status.as_u16() {
                    401 | 403 | 404 | 405 => {
                        return Err(Halt::Fatal(format!(
                            "the destination refused a write: HTTP {status}: {}",
                            body.trim()
                        )));
                    }
                    413 => {
                        return Err(Halt::Fatal(format!(
                            "the destination refused a {} write request as too large (HTTP 413): lower --max-write-size",
                            format_size(len)
                        )));
                    }
                    _ => {
                        let reason = Reason::classify(&body);
                        tracing::warn!(status = status.as_u16(), samples, ?reason, error = %body.trim(), "the destination rejected samples");
                        slab.write_requests += 1;
                        slab.samples_rejected += samples as u64;
                        self.report.reject(reason, samples as u64, &body);
                    }
                },
                Err(Failed::Stopped) => return Err(Halt::Stopped),
                Err(e @ Failed::GaveUp { .. }) => {
                    return Err(Halt::GaveUp(format!("writing to the destination: {e}")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_are_read_from_cortex_and_mimir_messages() {
        let cortex =
            "ingestion rate limit (25000) exceeded while adding 54200 samples and 0 metadata";
        assert_eq!(
            RateLimit::parse(cortex),
            Some(RateLimit {
                rate: 25000,
                burst: None
            })
        );
        let mimir = "the request has been rejected because the tenant exceeded the ingestion rate limit, set to 10000 items/s with a maximum allowed burst of 200000. This limit is applied on the total number of samples (err-mimir-tenant-max-ingestion-rate)";
        let m = RateLimit::parse(mimir).unwrap();
        assert_eq!((m.rate, m.max_request()), (10000, 200000));
        assert_eq!(RateLimit::parse("HTTP 429: too many requests"), None);
    }

    #[test]
    fn halving_keeps_every_sample_once_in_order() {
        let pieces = vec![
            Piece {
                series: 0,
                samples: 0..3,
            },
            Piece {
                series: 1,
                samples: 0..4,
            },
        ];
        let (a, b) = halve(pieces.clone()).unwrap();
        assert_eq!(sample_count(&a), 3);
        assert_eq!(sample_count(&b), 4);
        let (c, d) = halve(vec![Piece {
            series: 2,
            samples: 5..10,
        }])
        .unwrap();
        assert_eq!(
            (c, d),
            (
                vec![Piece {
                    series: 2,
                    samples: 5..7
                }],
                vec![Piece {
                    series: 2,
                    samples: 7..10
                }]
            )
        );
        assert!(
            halve(vec![Piece {
                series: 0,
                samples: 0..1
            }])
            .is_none()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pacing_spaces_writes_at_the_rate() {
        let mut p = Pacer::new(1000);
        let t0 = Instant::now();
        p.wait(500).await;
        p.wait(500).await;
        p.wait(500).await;
        // 1500 samples at 1000/s: the third write waits until one second has passed.
        assert!(Instant::now() - t0 >= Duration::from_millis(1000));
        let mut unpaced = Pacer::new(0);
        let t1 = Instant::now();
        unpaced.wait(1_000_000).await;
        assert_eq!(Instant::now(), t1);
    }
}
