//! The copy itself: slabs read ahead (`--concurrency`), written in time order, one request at
//! a time, and progress recorded after each slab.

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use super::args::{MigrateArgs, ProgressMode};
use super::display::Progress;
use super::plan::Planner;
use super::read::{self, Collect, Labels, Range, Read, ReadSpec};
use super::remote::{Failed, Stop, retrying};
use super::report::{self, Outcome, Reason, Report, SlabReport};
use super::setup::{MIN_SLAB_MS, Plan};
use super::wire::{self, WriteEncoder};
use crate::config::units::{format_duration, format_size};
use crate::time::{format_rfc3339, now_millis};

/// Why copying stopped early.
pub(super) enum Halt {
    Stopped,
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
    /// Per series, the newest sample the destination already holds in the window an
    /// interrupted run may have partly written.
    pub(super) already: HashMap<Labels, i64>,
    pub(super) already_until: i64,
    /// How far the destination holds the range.
    pub(super) completed: i64,
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
            already: HashMap::new(),
            already_until: i64::MIN,
            completed,
        }
    }

    pub(super) async fn run(&mut self, args: &MigrateArgs) -> Report {
        let began = Instant::now();
        let result = self.run_inner(args).await;
        match result {
            Ok(()) => {}
            Err(Halt::Stopped) => self.report.outcome = Outcome::Stopped,
            Err(Halt::Fatal(e)) => {
                tracing::error!(error = %e, "migration failed");
                self.report.outcome = Outcome::Failed;
                self.report.error = Some(e);
            }
        }
        self.progress.finish();
        if self.report.outcome != Outcome::Complete || args.follow {
            self.report.resume_command =
                Some(report::shell_command(&std::env::args().collect::<Vec<_>>()));
        }
        self.report.completed_through = format_rfc3339(self.completed);
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
        self.load_already(cursor).await?;
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
                    break Err(Halt::Fatal(format!(
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
            let abandon = self.stop.abandon_only();
            let written = tokio::select! {
                w = self.write_slab(range, read, &mut slab) => w,
                () = abandon.wait() => Err(Halt::Stopped),
            };
            if let Err(h) = written {
                // Abandon the read-ahead; progress stays at the last completed slab.
                for slot in queue {
                    if let Slot::Running(_, h) = slot {
                        h.abort();
                    }
                }
                return Err(h);
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

    /// Writes one slab's samples in requests of at most `max_write` bytes, in time order per
    /// series, skipping what the destination already holds.
    pub(super) async fn write_slab(
        &mut self,
        range: Range,
        read: Read,
        slab: &mut SlabReport,
    ) -> Result<(), Halt> {
        let Collect::Samples(series) = read.data else {
            return Ok(());
        };
        let check_already = range.start < self.already_until && !self.already.is_empty();
        let mut enc = WriteEncoder::default();
        let mut members: Vec<usize> = Vec::new();
        let mut accepted = vec![false; series.len()];
        for (i, s) in series.iter().enumerate() {
            let mut samples: &[(i64, f64)] = &s.samples;
            if check_already && let Some(&newest) = self.already.get(&s.labels) {
                let keep_from = samples.partition_point(|x| x.0 <= newest);
                slab.samples_skipped += keep_from as u64;
                samples = &samples[keep_from..];
            }
            let overhead = wire::series_entry_len(&s.labels, &[]) + 10;
            while !samples.is_empty() {
                let room = self.plan.max_write.saturating_sub(enc.len());
                let mut size = overhead;
                let mut n = 0;
                for x in samples {
                    let c = wire::sample_cost(x.0);
                    if size + c > room {
                        break;
                    }
                    size += c;
                    n += 1;
                }
                if n == 0 {
                    if enc.is_empty() {
                        // Labels alone fill a request: send one sample, the destination judges.
                        n = 1;
                    } else {
                        self.flush(&mut enc, &mut members, &mut accepted, slab)
                            .await?;
                        continue;
                    }
                }
                enc.push(&s.labels, &samples[..n]);
                members.push(i);
                samples = &samples[n..];
                if !samples.is_empty() {
                    self.flush(&mut enc, &mut members, &mut accepted, slab)
                        .await?;
                }
            }
        }
        if !enc.is_empty() {
            self.flush(&mut enc, &mut members, &mut accepted, slab)
                .await?;
        }
        slab.series_written = accepted.iter().filter(|a| **a).count() as u64;
        if range.end >= self.already_until {
            self.already.clear();
        }
        Ok(())
    }

    pub(super) async fn flush(
        &mut self,
        enc: &mut WriteEncoder,
        members: &mut Vec<usize>,
        accepted: &mut [bool],
        slab: &mut SlabReport,
    ) -> Result<(), Halt> {
        let samples = enc.samples() as u64;
        let body = enc.finish().map_err(Halt::Fatal)?;
        let len = body.len() as u64;
        let mut retries = 0;
        let dest = &self.plan.dest;
        // The first signal lets the slab in flight finish; only a second one gives up here.
        let sent = retrying(
            &self.plan.retry,
            &self.stop.abandon_only(),
            "write to the destination",
            &mut retries,
            || dest.post(body.clone()),
        )
        .await;
        slab.retries += retries;
        slab.write_requests += 1;
        let result = match sent {
            Ok(_) => {
                slab.samples_written += samples;
                slab.bytes_written += len;
                for &i in members.iter() {
                    accepted[i] = true;
                }
                Ok(())
            }
            Err(Failed::Refused { status, body }) => match status.as_u16() {
                401 | 403 | 404 | 405 => Err(Halt::Fatal(format!(
                    "the destination refused a write: HTTP {status}: {}",
                    body.trim()
                ))),
                413 => Err(Halt::Fatal(format!(
                    "the destination refused a {} write request as too large (HTTP 413): lower --max-write-size",
                    format_size(len)
                ))),
                _ => {
                    let reason = Reason::classify(&body);
                    tracing::warn!(status = status.as_u16(), samples, ?reason, error = %body.trim(), "the destination rejected samples");
                    slab.samples_rejected += samples;
                    self.report.reject(reason, samples, &body);
                    Ok(())
                }
            },
            Err(Failed::Stopped) => Err(Halt::Stopped),
            Err(e @ Failed::GaveUp { .. }) => {
                Err(Halt::Fatal(format!("writing to the destination: {e}")))
            }
        };
        members.clear();
        result
    }
}
