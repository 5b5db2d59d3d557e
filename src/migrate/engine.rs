//! The copy itself: slabs read ahead (`--concurrency`), written in time order, one request at
//! a time, and progress recorded after each slab.

use std::collections::VecDeque;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use super::args::{MigrateArgs, ProgressMode};
use super::display::Progress;
use super::plan::Planner;
use super::read::{self, Range, Read, ReadSpec};
use super::remote::{Failed, Stop};
use super::report::{self, Outcome, Report};
use super::resume::AlreadyWritten;
use super::setup::{MIN_SLAB_MS, Plan};
use crate::config::units::{format_duration, format_size};
use crate::time::{format_rfc3339, now_millis};

/// Why copying stopped early.
pub(super) enum Halt {
    /// A signal: progress is recorded, the same command resumes.
    Stopped,
    /// The destination rejected samples: progress stops before their slab, so the same command
    /// (after the destination is fixed) resumes there and sends them again.
    Rejected,
    /// Retries ran out (the source or destination down or overloaded): the same command resumes.
    GaveUp(String),
    /// Anything a rerun alone cannot fix (a refused tenant, a wrong URL, memory too small).
    Fatal(String),
}

/// A read running ahead: the data (or how much memory it needed when it did not fit), and the
/// retries it took.
pub(super) type ReadTask = tokio::task::JoinHandle<(Result<Result<Read, usize>, Failed>, u64)>;

/// A read running ahead, or one still to start.
pub(super) enum Slot {
    Pending(Range),
    Running(Range, ReadTask),
}

pub(super) struct Migration {
    pub(super) plan: Plan,
    pub(super) stop: Stop,
    pub(super) report: Report,
    pub(super) progress: Progress,
    /// What the destination holds of the slab after the recorded progress (see `resume`).
    pub(super) already: AlreadyWritten,
    /// How far the destination holds the range.
    pub(super) completed: i64,
    /// Spaces writes to `--max-samples-per-second` or a rate the destination stated.
    pub(super) pacer: super::write::Pacer,
    /// Most samples in one write request: unlimited until a destination states a rate limit.
    pub(super) max_request_samples: usize,
    /// Hashes of the label sets read, so the report counts each series once, not per slab.
    pub(super) distinct_series: std::collections::HashSet<u64>,
    /// The same for series with at least one sample written, for the report's total.
    pub(super) distinct_written: std::collections::HashSet<u64>,
}

/// A label set's hash, to count distinct series without keeping their labels.
pub(super) fn labels_hash(labels: &super::read::Labels) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    labels.hash(&mut h);
    h.finish()
}

impl Migration {
    pub(super) fn new(plan: Plan, stop: Stop, args: &MigrateArgs) -> Migration {
        let report = Report {
            migration_id: plan.id.clone(),
            tenant: plan.tenant.as_str().to_owned(),
            start: format_rfc3339(plan.start),
            completed_through: format_rfc3339(plan.start),
            ..Report::default()
        };
        let bar = match args.progress {
            ProgressMode::Bar => true,
            ProgressMode::Log => false,
            ProgressMode::Auto => std::io::stderr().is_terminal(),
        };
        let completed = plan.start;
        Migration {
            plan,
            stop,
            report,
            progress: Progress::new(bar),
            already: AlreadyWritten::default(),
            completed,
            pacer: super::write::Pacer::new(args.max_samples_per_second),
            max_request_samples: usize::MAX,
            distinct_series: std::collections::HashSet::new(),
            distinct_written: std::collections::HashSet::new(),
        }
    }

    pub(super) async fn run(&mut self, args: &MigrateArgs) -> Report {
        let began = Instant::now();
        let result = self.run_inner(args).await;
        // Running the same command again would fail the same way after a fatal error.
        let rerun_helps = !matches!(result, Err(Halt::Fatal(_)));
        match result {
            Ok(()) => {}
            Err(Halt::Stopped) => self.report.outcome = Outcome::Stopped,
            Err(Halt::Rejected) => self.report.outcome = Outcome::Incomplete,
            Err(Halt::GaveUp(e)) => {
                tracing::error!(error = %e, "migration failed");
                self.report.outcome = Outcome::Failed;
                self.report.error = Some(e);
            }
            Err(Halt::Fatal(e)) => {
                tracing::error!(error = %e, "migration failed");
                self.report.outcome = Outcome::Failed;
                self.report.error = Some(e);
            }
        }
        if self.report.outcome == Outcome::Complete && self.report.has_losses() {
            self.report.outcome = Outcome::Incomplete;
        }
        self.progress.finish();
        if (self.report.outcome != Outcome::Complete && rerun_helps) || self.plan.end.is_none() {
            self.report.resume_command =
                Some(report::shell_command(&std::env::args().collect::<Vec<_>>()));
        }
        self.report.completed_through = format_rfc3339(self.completed);
        self.report.total.series_read = self.distinct_series.len() as u64;
        self.report.total.series_written = self.distinct_written.len() as u64;
        self.report.duration_ms = began.elapsed().as_millis() as u64;
        let secs = began.elapsed().as_secs_f64();
        if secs > 0.0 {
            self.report.samples_per_second = self.report.total.samples_written as f64 / secs;
        }
        self.report.peak_memory_bytes = report::peak_memory();
        std::mem::take(&mut self.report)
    }

    pub(super) async fn run_inner(&mut self, args: &MigrateArgs) -> Result<(), Halt> {
        self.validate().await?;
        let resume = self.read_progress().await?;
        let mut cursor = self.plan.start;
        if let Some(p) = resume.filter(|p| *p > self.plan.start) {
            cursor = p;
            self.report.resumed_from = Some(format_rfc3339(p));
            tracing::info!(
                migration_id = %self.plan.id,
                from = %format_rfc3339(p),
                "resuming: the destination's progress series says the range before this is copied"
            );
        }
        self.completed = cursor;
        if args.dry_run {
            return self.dry_run(cursor).await;
        }
        match resume {
            // Recorded progress, even only the start mark: a run of this migration may have
            // written the slab after it without recording that.
            Some(_) => self.load_already(cursor).await?,
            // The start mark, before any data: a run killed in its first slab leaves it, so the
            // next run skips what that slab already wrote instead of sending it again.
            None if self.plan.start > 0 => match self.record_progress(self.plan.start).await {
                // A destination that refuses samples this old (no out-of-order window) refuses
                // the mark too; the copy goes on without it, and its own refusals decide.
                Err(Halt::GaveUp(e)) => tracing::warn!(
                    error = %e,
                    "cannot record the start mark; a run killed in the first slab will send that \
                     slab again in full (an identical sample is a no-op)"
                ),
                other => other?,
            },
            None => {}
        }
        loop {
            let end = self.plan.current_end();
            if cursor < end {
                self.progress.begin(cursor, end, self.plan.end.is_none());
                cursor = self.copy(cursor, end).await?;
            }
            if self.plan.end.is_some() || self.stop.requested() {
                break;
            }
            tracing::info!(
                copied_through = %format_rfc3339(cursor),
                lag = %format_duration(Duration::from_millis(u64::try_from(now_millis() - cursor).unwrap_or(0))),
                "following: waiting for new data"
            );
            tokio::select! {
                () = tokio::time::sleep(self.plan.follow_interval) => {}
                () = self.stop.wait() => break,
            }
        }
        if self.stop.requested() {
            return Err(Halt::Stopped);
        }
        if args.verify {
            self.verify().await?;
        }
        Ok(())
    }

    /// Copies `[cursor, end)`; returns how far it got.
    pub(super) async fn copy(&mut self, cursor: i64, end: i64) -> Result<i64, Halt> {
        let mut planner = Planner::new(
            cursor,
            end,
            self.plan.max_slab,
            MIN_SLAB_MS,
            self.plan.slab_budget,
        );
        let mut queue: VecDeque<Slot> = VecDeque::new();
        let result = loop {
            while queue.len() < self.plan.concurrency {
                match planner.next() {
                    Some(r) => queue.push_back(Slot::Pending(r)),
                    None => break,
                }
            }
            // Front first, and never more than --concurrency reads at once (a split slab's
            // halves wait their turn behind reads already running).
            let mut running = queue
                .iter()
                .filter(|s| matches!(s, Slot::Running(..)))
                .count();
            for slot in queue.iter_mut() {
                if running >= self.plan.concurrency {
                    break;
                }
                if let Slot::Pending(r) = *slot {
                    *slot = Slot::Running(r, self.spawn_read(r));
                    running += 1;
                }
            }
            if self.stop.requested() {
                break Err(Halt::Stopped);
            }
            let (range, handle) = match queue.pop_front() {
                Some(Slot::Running(range, handle)) => (range, handle),
                Some(Slot::Pending(range)) => (range, self.spawn_read(range)),
                None => break Ok(()),
            };
            let began = Instant::now();
            let abandon = self.stop.abandon_only();
            let joined = tokio::select! {
                j = handle => j,
                () = abandon.wait() => break Err(Halt::Stopped),
            };
            let (outcome, read_retries) = match joined {
                Ok(v) => v,
                Err(e) => break Err(Halt::Fatal(format!("a read task failed: {e}"))),
            };
            let read = match outcome {
                Ok(Ok(read)) => read,
                Ok(Err(memory)) => {
                    let Some((a, b)) = planner.too_big(range, memory) else {
                        break Err(Halt::Fatal(format!(
                            "{} of data between {} and {} is more than the memory budget \
                             allows for one slab ({}): raise --max-memory",
                            format_size(memory as u64),
                            format_rfc3339(range.start),
                            format_rfc3339(range.end),
                            format_size(self.plan.slab_budget as u64)
                        )));
                    };
                    tracing::debug!(
                        slab = %format!("{} .. {}", format_rfc3339(range.start), format_rfc3339(range.end)),
                        memory = %format_size(memory as u64),
                        "slab too dense for the memory budget: halved"
                    );
                    queue.push_front(Slot::Pending(b));
                    queue.push_front(Slot::Pending(a));
                    continue;
                }
                Err(Failed::Stopped) => break Err(Halt::Stopped),
                Err(e) => {
                    break Err(Halt::GaveUp(format!(
                        "reading {} .. {} from the source: {e}",
                        format_rfc3339(range.start),
                        format_rfc3339(range.end)
                    )));
                }
            };
            planner.observed(range, read.memory);
            let mut slab = report::slab_report(range.start, range.end);
            slab.retries = read_retries;
            slab.bytes_read = read.wire_bytes;
            slab.series_read = read.series() as u64;
            slab.samples_read = read.samples();
            self.report.skipped_histogram_chunks += read.skipped_chunks;
            if let read::Collect::Samples(series) = &read.data {
                self.distinct_series
                    .extend(series.iter().map(|s| labels_hash(&s.labels)));
            }
            let abandon = self.stop.abandon_only();
            let written = tokio::select! {
                w = self.write_slab(range, read, &mut slab) => w,
                () = abandon.wait() => Err(Halt::Stopped),
            };
            if let Err(h) = written {
                // What this slab wrote before it failed still counts in the report.
                slab.duration_ms = began.elapsed().as_millis() as u64;
                self.report.add(slab);
                // Abandon the read-ahead; progress stays at the last completed slab.
                for slot in queue {
                    if let Slot::Running(_, h) = slot {
                        h.abort();
                    }
                }
                return Err(h);
            }
            if slab.samples_rejected > 0 {
                // Progress never passes a slab with rejected samples: the next run starts at
                // this slab again and sends what the destination does not hold.
                for slot in queue {
                    if let Slot::Running(_, h) = slot {
                        h.abort();
                    }
                }
                slab.duration_ms = began.elapsed().as_millis() as u64;
                tracing::warn!(
                    slab = %format!("{} .. {}", slab.start, slab.end),
                    rejected = slab.samples_rejected,
                    "the destination rejected samples of this slab: stopping before it, so that the next run sends them again"
                );
                self.report.add(slab);
                return Err(Halt::Rejected);
            }
            if let Err(e) = self.record_progress(range.end).await {
                for slot in queue {
                    if let Slot::Running(_, h) = slot {
                        h.abort();
                    }
                }
                return Err(e);
            }
            self.completed = range.end;
            slab.duration_ms = began.elapsed().as_millis() as u64;
            self.progress.slab_done(&slab, range.end);
            tracing::debug!(
                slab = %format!("{} .. {}", slab.start, slab.end),
                series = slab.series_read,
                samples_read = slab.samples_read,
                samples_written = slab.samples_written,
                skipped = slab.samples_skipped,
                rejected = slab.samples_rejected,
                "slab copied"
            );
            self.report.add(slab);
            if self.stop.requested() {
                break Err(Halt::Stopped);
            }
        };
        for slot in queue {
            if let Slot::Running(_, h) = slot {
                h.abort();
            }
        }
        result.map(|()| self.completed)
    }

    pub(super) fn spawn_read(&self, range: Range) -> ReadTask {
        let source = self.plan.source.clone();
        let matchers = self.plan.matchers.clone();
        let budget = self.plan.slab_budget;
        let retry = self.plan.retry;
        let stop = self.stop.clone();
        let id = self.plan.id.clone();
        tokio::spawn(async move {
            let spec = ReadSpec {
                range,
                matchers: &matchers,
                counts_only: false,
                budget,
                skip_progress_of: Some(&id),
            };
            let mut retries = 0;
            let r = read::read_retrying(
                &source,
                &spec,
                &retry,
                &stop,
                "read from the source",
                &mut retries,
            )
            .await;
            (r, retries)
        })
    }
}
