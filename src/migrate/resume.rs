//! The progress record and what a resumed run may skip.
//!
//! The rule: a sample is skipped only when the destination provably holds it, meaning the same
//! series at the same timestamp, and only in the one slab after this migration's own recorded
//! progress (the most a stopped or killed run can have written without recording it). A first
//! run records a start mark before any data, so a run killed in its first slab is resumed the
//! same way. With no recorded progress nothing is skipped: the destination may hold live data
//! of the same series (a Prometheus already remote-writing into it), and every sample of the
//! history is sent; an identical sample is a no-op for Mimir, Cortex and Prometheus.

use std::collections::HashMap;

use super::engine::{Halt, Migration};
use super::read::{self, Collect, Labels, Range, ReadSpec, Series};
use super::remote::{Failed, retrying};
use super::setup::MIN_SLAB_MS;
use super::wire::WriteEncoder;
use crate::time::{format_rfc3339, now_millis};

impl Migration {
    /// The newest recorded progress of this migration, in ms.
    pub(super) async fn read_progress(&mut self) -> Result<Option<i64>, Halt> {
        let until = self.plan.current_end().max(now_millis()) + 1;
        let matchers = self.plan.progress_matchers();
        let spec = ReadSpec {
            range: Range {
                // From 1 ms before the start: the start mark is recorded there.
                start: (self.plan.start - 1).max(0).min(until - 1),
                end: until,
            },
            matchers: &matchers,
            counts_only: false,
            budget: self.plan.slab_budget,
            skip_progress_of: None,
        };
        let mut retries = 0;
        let read = read::read_retrying(
            &self.plan.dest_read,
            &spec,
            &self.plan.retry,
            &self.stop,
            "read progress",
            &mut retries,
        )
        .await;
        let read = match read {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => {
                return Err(Halt::Fatal(
                    "the progress series is larger than the memory budget".into(),
                ));
            }
            Err(Failed::Stopped) => return Err(Halt::Stopped),
            Err(e) => {
                return Err(Halt::Fatal(format!(
                    "cannot read this migration's progress back from the destination ({}): {e}; \
                     give the destination's remote read URL with --to-read",
                    self.plan.dest_read.uri()
                )));
            }
        };
        let Collect::Samples(series) = read.data else {
            return Ok(None);
        };
        let newest = series
            .iter()
            .flat_map(|s| s.samples.iter())
            .map(|s| (s.1 * 1000.0).round())
            .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e15)
            .fold(None, |acc: Option<f64>, v| {
                Some(acc.map_or(v, |a| a.max(v)))
            });
        Ok(newest.map(|v| v as i64))
    }

    /// After recorded progress at `cursor`: what the destination holds of the one slab after it,
    /// which a run stopped or killed before recording that slab may have partly written.
    /// Read in pieces that fit the slab budget: live data of the same series can make the
    /// destination much denser there than the source.
    pub(super) async fn load_already(&mut self, cursor: i64) -> Result<(), Halt> {
        let until = cursor
            .saturating_add(self.plan.max_slab)
            .min(self.plan.current_end().max(cursor + 1));
        let mut already = AlreadyWritten::empty(until);
        let mut from = cursor;
        let mut width = until - cursor;
        while from < until {
            let to = from.saturating_add(width).min(until);
            let spec = ReadSpec {
                range: Range {
                    start: from,
                    end: to,
                },
                matchers: &self.plan.matchers,
                counts_only: false,
                budget: self.plan.slab_budget,
                skip_progress_of: Some(&self.plan.id),
            };
            let mut retries = 0;
            let read = read::read_retrying(
                &self.plan.dest_read,
                &spec,
                &self.plan.retry,
                &self.stop,
                "read the destination",
                &mut retries,
            )
            .await;
            match read {
                Ok(Ok(r)) => {
                    if let Collect::Samples(series) = r.data {
                        already.add(series);
                    }
                    from = to;
                }
                Ok(Err(_)) if width > MIN_SLAB_MS => width = (width / 2).max(MIN_SLAB_MS),
                Ok(Err(_)) => {
                    return Err(Halt::Fatal(format!(
                        "the destination holds more than the memory budget in one second \
                         ({}) after the recorded progress; raise --max-memory",
                        format_rfc3339(from)
                    )));
                }
                Err(Failed::Stopped) => return Err(Halt::Stopped),
                Err(e) => return Err(Halt::Fatal(format!("cannot read the destination: {e}"))),
            }
        }
        already.finish();
        self.already = already;
        if !self.already.is_empty() {
            tracing::info!(
                series = self.already.by_series.len(),
                samples = self.already.samples(),
                through = %format_rfc3339(until),
                "the destination holds samples after the recorded progress (a run stopped before recording its last slab); those exact samples will not be sent again"
            );
        }
        Ok(())
    }

    /// Records that the destination holds the range up to `end` (exclusive).
    /// A slab whose progress cannot be recorded stops the run: the next run's check of what the
    /// destination already holds covers one slab after the recorded progress, no more.
    pub(super) async fn record_progress(&mut self, end: i64) -> Result<(), Halt> {
        let mut enc = WriteEncoder::default();
        enc.push(
            &self.plan.progress_labels(),
            &[(end - 1, end as f64 / 1000.0)],
        );
        let body = enc.finish().map_err(Halt::Fatal)?;
        let mut retries = 0;
        let dest = &self.plan.dest;
        // Recorded even after a first signal: that is what makes the stop resumable.
        let stop = self.stop.abandon_only();
        let r = retrying(
            &self.plan.retry,
            &stop,
            "record progress",
            &mut retries,
            || dest.post(body.clone()),
        );
        let r = tokio::select! {
            r = r => r,
            () = stop.wait() => Err(Failed::Stopped),
        };
        match r {
            Ok(_) => Ok(()),
            Err(Failed::Stopped) => Err(Halt::Stopped),
            Err(e) => Err(Halt::GaveUp(format!(
                "cannot record progress through {} in the destination: {e}; a restart redoes \
                 this slab, skipping the samples already written",
                format_rfc3339(end)
            ))),
        }
    }
}

/// What the destination holds of the slab after the recorded progress, per series: sorted
/// timestamps.
#[derive(Debug, Default)]
pub(super) struct AlreadyWritten {
    by_series: HashMap<Labels, Vec<i64>>,
    /// End (exclusive) of the window read.
    until: i64,
}

impl AlreadyWritten {
    /// Nothing held yet, for a window ending at `until`; [`add`](Self::add) pieces of it, then
    /// [`finish`](Self::finish).
    pub(super) fn empty(until: i64) -> Self {
        AlreadyWritten {
            by_series: HashMap::new(),
            until,
        }
    }

    pub(super) fn add(&mut self, series: Vec<Series>) {
        for s in series.into_iter().filter(|s| !s.samples.is_empty()) {
            self.by_series
                .entry(s.labels)
                .or_default()
                .extend(s.samples.iter().map(|x| x.0));
        }
    }

    pub(super) fn finish(&mut self) {
        for t in self.by_series.values_mut() {
            t.sort_unstable();
            t.dedup();
        }
    }

    #[cfg(test)]
    fn new(series: Vec<Series>, until: i64) -> Self {
        let mut a = AlreadyWritten::empty(until);
        a.add(series);
        a.finish();
        a
    }

    pub(super) fn is_empty(&self) -> bool {
        self.by_series.is_empty()
    }

    fn samples(&self) -> usize {
        self.by_series.values().map(Vec::len).sum()
    }

    /// Whether a slab starting at `start` may hold samples already written.
    pub(super) fn covers(&self, start: i64) -> bool {
        start < self.until && !self.is_empty()
    }

    /// Whether a slab ending at `end` is the last one the window reaches: after it, nothing is
    /// skipped any more.
    pub(super) fn ends_by(&self, end: i64) -> bool {
        end >= self.until
    }

    /// Removes from `samples` (one series, in time order) those the destination holds at the
    /// same timestamp; returns how many were removed.
    pub(super) fn keep_missing(&self, labels: &Labels, samples: &mut Vec<(i64, f64)>) -> u64 {
        let Some(held) = self.by_series.get(labels) else {
            return 0;
        };
        let before = samples.len();
        samples.retain(|x| held.binary_search(&x.0).is_err());
        (before - samples.len()) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(n: u8) -> Labels {
        vec![("__name__".into(), format!("m{n}"))]
    }

    #[test]
    fn pieces_of_the_window_add_up() {
        let piece = |samples: Vec<(i64, f64)>| {
            vec![Series {
                labels: labels(1),
                samples,
            }]
        };
        let mut held = AlreadyWritten::empty(100);
        held.add(piece(vec![(50, 5.0), (60, 6.0)]));
        held.add(piece(vec![(10, 1.0), (50, 5.0)]));
        held.add(vec![Series {
            labels: labels(2),
            samples: vec![],
        }]);
        held.finish();
        assert_eq!(
            held.by_series.len(),
            1,
            "a series without samples holds nothing"
        );
        let mut sent = vec![(10, 1.0), (20, 2.0), (50, 5.0), (60, 6.0)];
        assert_eq!(held.keep_missing(&labels(1), &mut sent), 3);
        assert_eq!(sent, [(20, 2.0)]);
    }

    #[test]
    fn only_the_same_series_at_the_same_timestamp_is_skipped() {
        let held = AlreadyWritten::new(
            vec![Series {
                labels: labels(1),
                samples: vec![(10, 1.0), (30, 3.0)],
            }],
            100,
        );
        let mut same = vec![(10, 1.0), (20, 2.0), (30, 3.0), (40, 4.0)];
        assert_eq!(held.keep_missing(&labels(1), &mut same), 2);
        assert_eq!(same, [(20, 2.0), (40, 4.0)]);
        // A newer sample of the series is no reason to skip older ones of another series.
        let mut other = vec![(10, 1.0), (20, 2.0)];
        assert_eq!(held.keep_missing(&labels(2), &mut other), 0);
        assert_eq!(other.len(), 2);
        assert!(held.covers(99) && !held.covers(100));
        assert!(
            !AlreadyWritten::default().covers(0),
            "nothing recorded, nothing skipped"
        );
    }

    proptest! {
        /// The source minus what is skipped, plus what the destination held, is the source and
        /// the destination together: nothing of the source is lost, nothing is sent twice.
        #[test]
        fn skipping_keeps_exactly_what_the_destination_lacks(
            source in proptest::collection::btree_set(0i64..500, 0..60),
            held in proptest::collection::btree_set(0i64..500, 0..60),
        ) {
            let already = AlreadyWritten::new(
                vec![Series { labels: labels(1), samples: held.iter().map(|t| (*t, 0.0)).collect() }],
                500,
            );
            let mut sent: Vec<(i64, f64)> = source.iter().map(|t| (*t, 0.0)).collect();
            let skipped = already.keep_missing(&labels(1), &mut sent);
            let sent: std::collections::BTreeSet<i64> = sent.iter().map(|x| x.0).collect();
            prop_assert_eq!(skipped as usize, source.intersection(&held).count());
            prop_assert!(sent.is_disjoint(&held));
            let union: std::collections::BTreeSet<i64> = sent.union(&held).copied().collect();
            prop_assert!(source.is_subset(&union));
        }
    }
}
