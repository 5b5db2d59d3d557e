//! The progress record and what a resumed run may skip.

use super::engine::{Halt, Migration};
use super::read::{self, Collect, Range, ReadSpec};
use super::remote::{Failed, retrying};
use super::wire::WriteEncoder;
use crate::time::{format_rfc3339, now_millis};

impl Migration {
    /// The newest recorded progress of this migration, in ms.
    pub(super) async fn read_progress(&mut self) -> Result<Option<i64>, Halt> {
        let until = self.plan.current_end().max(now_millis()) + 1;
        let matchers = self.plan.progress_matchers();
        let spec = ReadSpec {
            range: Range {
                start: self.plan.start.min(until - 1),
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

    /// What the destination already holds just after the resume point, per series.
    pub(super) async fn load_already(&mut self, cursor: i64) -> Result<(), Halt> {
        let until = cursor
            .saturating_add(self.plan.max_slab)
            .min(self.plan.current_end().max(cursor + 1));
        let spec = ReadSpec {
            range: Range {
                start: cursor,
                end: until,
            },
            matchers: &self.plan.matchers,
            counts_only: true,
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
        let read = match read {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => return Err(Halt::Fatal("the destination's series after the resume point do not fit the memory budget; raise --max-memory".into())),
            Err(Failed::Stopped) => return Err(Halt::Stopped),
            Err(e) => return Err(Halt::Fatal(format!("cannot read the destination: {e}"))),
        };
        if let Collect::Counts(counts) = read.data {
            if !counts.is_empty() {
                tracing::info!(
                    series = counts.len(),
                    samples = counts.iter().map(|c| c.1).sum::<u64>(),
                    "the destination already holds samples after the resume point (an interrupted run); they will not be sent again"
                );
            }
            self.already = counts.into_iter().map(|(l, _, max)| (l, max)).collect();
        }
        self.already_until = until;
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
            Err(e) => Err(Halt::Fatal(format!(
                "cannot record progress through {} in the destination: {e}; a restart redoes \
                 this slab, skipping the samples already written",
                format_rfc3339(end)
            ))),
        }
    }
}
