//! What a migration did, per slab and in total, and why a destination refused samples.

use std::fmt::Write as _;

use serde::Serialize;

use crate::time::format_rfc3339;

/// Why the destination refused a write, from its error text (Mimir's error IDs first, then
/// Prometheus' messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    OutOfOrder,
    TooOld,
    TooFarInPast,
    TooFarInFuture,
    DuplicateTimestamp,
    SeriesLimit,
    InvalidLabels,
    Other,
}

impl Reason {
    pub fn classify(body: &str) -> Reason {
        let b = body.to_ascii_lowercase();
        let has = |needles: &[&str]| needles.iter().any(|n| b.contains(n));
        if has(&["err-mimir-sample-out-of-order", "out of order sample"]) {
            Reason::OutOfOrder
        } else if has(&["err-mimir-too-far-in-past", "too far in the past"]) {
            Reason::TooFarInPast
        } else if has(&[
            "err-mimir-sample-timestamp-too-old",
            "err-mimir-sample-out-of-bounds",
            "too old sample",
            "out of bounds",
            "too old",
        ]) {
            Reason::TooOld
        } else if has(&["err-mimir-too-far-in-future", "too far in the future"]) {
            Reason::TooFarInFuture
        } else if has(&[
            "err-mimir-sample-duplicate-timestamp",
            "duplicate sample for timestamp",
        ]) {
            Reason::DuplicateTimestamp
        } else if has(&[
            "err-mimir-max-series-per",
            "per-user series limit",
            "series limit",
        ]) {
            Reason::SeriesLimit
        } else if has(&[
            "err-mimir-label",
            "err-mimir-missing-metric-name",
            "invalid label",
        ]) {
            Reason::InvalidLabels
        } else {
            Reason::Other
        }
    }

    /// What to change so the destination accepts these samples.
    pub fn hint(self) -> &'static str {
        match self {
            Reason::OutOfOrder | Reason::TooOld => {
                "the destination already holds newer samples for this tenant (or its TSDB head has \
                 moved past them). Mimir accepts older samples only within the tenant's \
                 out_of_order_time_window (-ingester.out-of-order-time-window): set it to cover \
                 the migrated range for the migration, or migrate before live data arrives; a \
                 Prometheus destination needs storage.tsdb.out_of_order_time_window"
            }
            Reason::TooFarInPast => {
                "Mimir's past_grace_period (-validation.past-grace-period) refuses samples this \
                 old: raise it for the tenant, or set it to 0 (no limit), while migrating"
            }
            Reason::TooFarInFuture => {
                "samples are ahead of the destination's clock beyond creation_grace_period \
                 (-validation.create-grace-period): check the clocks"
            }
            Reason::DuplicateTimestamp => {
                "the destination holds a different value at the same timestamp: the series was \
                 already written from elsewhere"
            }
            Reason::SeriesLimit => {
                "the tenant hit its series limit: raise max_global_series_per_user \
                 (-ingester.max-global-series-per-user) for the tenant"
            }
            Reason::InvalidLabels => {
                "the destination's label validation refused them: see max_label_names_per_series, \
                 max_label_name_length and max_label_value_length"
            }
            Reason::Other => "see the destination's message",
        }
    }
}

/// One slab's figures.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SlabReport {
    pub start: String,
    pub end: String,
    #[serde(skip)]
    pub start_ms: i64,
    #[serde(skip)]
    pub end_ms: i64,
    pub series_read: u64,
    pub samples_read: u64,
    pub series_written: u64,
    pub samples_written: u64,
    /// Already in the destination (written by an interrupted run): not sent again.
    pub samples_skipped: u64,
    pub samples_rejected: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub write_requests: u64,
    pub retries: u64,
    pub duration_ms: u64,
}

/// Samples refused for one reason, with the first message the destination gave.
#[derive(Debug, Clone, Serialize)]
pub struct Rejection {
    pub reason: Reason,
    pub samples: u64,
    pub requests: u64,
    pub first_message: String,
    pub hint: &'static str,
}

/// A verification window whose counts differ.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub start: String,
    pub end: String,
    pub source_series: u64,
    pub source_samples: u64,
    pub destination_series: u64,
    pub destination_samples: u64,
    /// A few series whose counts differ, as `{labels}: source N, destination M`.
    pub examples: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Verification {
    pub windows: u64,
    pub source_series: u64,
    pub source_samples: u64,
    pub destination_samples: u64,
    pub mismatches: Vec<Mismatch>,
}

/// How the run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The whole range was copied.
    #[default]
    Complete,
    /// Stopped by a signal; progress is recorded.
    Stopped,
    /// A fatal error; progress is recorded up to the last completed slab.
    Failed,
    /// Copied as far as it went, but samples are missing from the destination: it rejected
    /// them (progress stops before their slab), or `--verify` found differences.
    Incomplete,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub migration_id: String,
    pub tenant: String,
    pub outcome: Outcome,
    pub error: Option<String>,
    pub source_format: Option<String>,
    /// Where this run started (after what earlier runs had done).
    pub resumed_from: Option<String>,
    pub start: String,
    /// How far the destination now holds the range.
    pub completed_through: String,
    pub slabs: Vec<SlabReport>,
    pub total: SlabReport,
    pub rejections: Vec<Rejection>,
    pub skipped_histogram_chunks: u64,
    pub duration_ms: u64,
    pub samples_per_second: f64,
    pub peak_memory_bytes: Option<u64>,
    pub verification: Option<Verification>,
    pub resume_command: Option<String>,
}

impl Report {
    pub fn add(&mut self, slab: SlabReport) {
        let t = &mut self.total;
        t.series_read += slab.series_read;
        t.samples_read += slab.samples_read;
        t.series_written += slab.series_written;
        t.samples_written += slab.samples_written;
        t.samples_skipped += slab.samples_skipped;
        t.samples_rejected += slab.samples_rejected;
        t.bytes_read += slab.bytes_read;
        t.bytes_written += slab.bytes_written;
        t.write_requests += slab.write_requests;
        t.retries += slab.retries;
        t.duration_ms += slab.duration_ms;
        self.slabs.push(slab);
    }

    pub fn reject(&mut self, reason: Reason, samples: u64, message: &str) {
        if let Some(r) = self.rejections.iter_mut().find(|r| r.reason == reason) {
            r.samples += samples;
            r.requests += 1;
            return;
        }
        let mut first_message = message.trim().to_owned();
        first_message.truncate(500);
        self.rejections.push(Rejection {
            reason,
            samples,
            requests: 1,
            first_message,
            hint: reason.hint(),
        });
    }

    /// Whether anything was refused or differs.
    pub fn has_losses(&self) -> bool {
        self.total.samples_rejected > 0
            || self.skipped_histogram_chunks > 0
            || self
                .verification
                .as_ref()
                .is_some_and(|v| !v.mismatches.is_empty())
    }

    /// The report for people: a table of slabs, totals, rejections, verification.
    pub fn to_text(&self, max_slab_rows: usize) -> String {
        let mut o = String::new();
        let missing = self.total.samples_rejected;
        let differ = self.verification.as_ref().map_or(0, |v| v.mismatches.len());
        let headline = match self.outcome {
            Outcome::Complete => "complete".to_owned(),
            Outcome::Stopped => "stopped".to_owned(),
            Outcome::Failed => "FAILED".to_owned(),
            Outcome::Incomplete if missing > 0 => {
                format!("INCOMPLETE: {missing} samples rejected by the destination are not in it")
            }
            Outcome::Incomplete if differ > 0 => {
                format!("INCOMPLETE: --verify found {differ} windows that differ")
            }
            Outcome::Incomplete => format!(
                "INCOMPLETE: {} native histogram chunks were not copied (not supported)",
                self.skipped_histogram_chunks
            ),
        };
        let _ = writeln!(
            o,
            "migration {} (tenant {}): {headline}",
            self.migration_id, self.tenant,
        );
        if let Some(e) = &self.error {
            let _ = writeln!(o, "  error: {e}");
        }
        if let Some(r) = &self.resumed_from {
            let _ = writeln!(o, "  resumed from {r} (start {})", self.start);
        }
        if self.slabs.is_empty() {
            // Nothing was copied in this run (failed validation, or nothing left to copy).
            if self.outcome != Outcome::Failed {
                let _ = writeln!(
                    o,
                    "  nothing to copy: the destination holds the range up to {}",
                    self.completed_through
                );
            }
            self.tail(&mut o);
            return o;
        }
        let _ = writeln!(
            o,
            "  destination holds the range up to {}",
            self.completed_through
        );
        let _ = writeln!(
            o,
            "\n  {:<20} {:<20} {:>8} {:>11} {:>11} {:>9} {:>9} {:>7} {:>8}",
            "slab start",
            "slab end",
            "series",
            "samples rd",
            "samples wr",
            "skipped",
            "rejected",
            "retries",
            "seconds"
        );
        let row = |o: &mut String, s: &SlabReport| {
            let _ = writeln!(
                o,
                "  {:<20} {:<20} {:>8} {:>11} {:>11} {:>9} {:>9} {:>7} {:>8.2}",
                short(&s.start),
                short(&s.end),
                s.series_read,
                s.samples_read,
                s.samples_written,
                s.samples_skipped,
                s.samples_rejected,
                s.retries,
                s.duration_ms as f64 / 1000.0
            );
        };
        let n = self.slabs.len();
        for (i, s) in self.slabs.iter().enumerate() {
            if n > max_slab_rows && i == max_slab_rows / 2 {
                let _ = writeln!(o, "  ... {} more slabs ...", n - max_slab_rows);
            }
            if n <= max_slab_rows || i < max_slab_rows / 2 || i >= n - max_slab_rows / 2 {
                row(&mut o, s);
            }
        }
        let mut total = self.total.clone();
        total.start = format!("total ({n} slabs)");
        total.end = String::new();
        total.duration_ms = self.duration_ms;
        row(&mut o, &total);
        let _ = writeln!(
            o,
            "\n  read {} distinct series, {} samples ({}); wrote {} samples in {} requests ({}); {:.0} samples/s",
            self.total.series_read,
            self.total.samples_read,
            crate::config::units::format_size(self.total.bytes_read),
            self.total.samples_written,
            self.total.write_requests,
            crate::config::units::format_size(self.total.bytes_written),
            self.samples_per_second
        );
        if let Some(f) = &self.source_format {
            let _ = writeln!(o, "  source answered with {f}");
        }
        if let Some(p) = self.peak_memory_bytes {
            let _ = writeln!(
                o,
                "  peak memory (resident) {}",
                crate::config::units::format_size(p)
            );
        }
        if self.skipped_histogram_chunks > 0 {
            let _ = writeln!(
                o,
                "  {} native histogram chunks were not copied (not supported)",
                self.skipped_histogram_chunks
            );
        }
        self.tail(&mut o);
        o
    }

    /// Rejections, verification and the command to run next.
    fn tail(&self, o: &mut String) {
        for r in &self.rejections {
            let _ = writeln!(
                o,
                "\n  REJECTED {} samples in {} request(s): {:?}\n    destination said: {}\n    fix: {}",
                r.samples, r.requests, r.reason, r.first_message, r.hint
            );
        }
        if let Some(v) = &self.verification {
            let _ = writeln!(
                o,
                "\n  verify: {} windows, source {} series / {} samples, destination {} samples: {}",
                v.windows,
                v.source_series,
                v.source_samples,
                v.destination_samples,
                if v.mismatches.is_empty() {
                    "counts match".to_owned()
                } else {
                    format!("{} windows DIFFER", v.mismatches.len())
                }
            );
            for m in &v.mismatches {
                let _ = writeln!(
                    o,
                    "    {} .. {}: source {} series / {} samples, destination {} series / {} samples",
                    m.start,
                    m.end,
                    m.source_series,
                    m.source_samples,
                    m.destination_series,
                    m.destination_samples
                );
                for e in &m.examples {
                    let _ = writeln!(o, "      {e}");
                }
            }
        }
        if let Some(cmd) = &self.resume_command {
            let what = match self.outcome {
                Outcome::Incomplete if self.total.samples_rejected > 0 => {
                    "once the destination accepts them (see fix above), send the rejected samples with the same command; it resumes at their slab"
                }
                Outcome::Complete => "to keep following, run again with",
                _ => "resume with the same command",
            };
            let _ = writeln!(o, "\n  {what}:\n    {cmd}");
        }
    }
}

/// `2024-01-01T00:00:00Z` without sub-seconds, for the tables.
pub(super) fn short(ts: &str) -> &str {
    match ts.find('.') {
        Some(i) if ts.ends_with('Z') => &ts[..i],
        _ => ts,
    }
}

pub fn slab_report(start_ms: i64, end_ms: i64) -> SlabReport {
    SlabReport {
        start: format_rfc3339(start_ms),
        end: format_rfc3339(end_ms),
        start_ms,
        end_ms,
        ..SlabReport::default()
    }
}

/// The process's peak resident memory (`VmHWM`), where the system reports it.
pub fn peak_memory() -> Option<u64> {
    vm_hwm(&std::fs::read_to_string("/proc/self/status").ok()?)
}

/// `VmHWM` (peak resident memory) in bytes, from the text of a `/proc/<pid>/status`.
pub fn vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// `labels` as `{a="b", c="d"}`.
pub fn labels_text(labels: &[(String, String)]) -> String {
    let parts: Vec<String> = labels.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}

/// Shell-quotes a command line so it can be pasted back.
pub fn shell_command(args: &[String]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headline_never_says_complete_while_samples_are_missing() {
        let mut r = Report {
            outcome: Outcome::Incomplete,
            ..Report::default()
        };
        r.total.samples_rejected = 1200;
        let first = r.to_text(10);
        let first = first.lines().next().unwrap();
        assert!(
            first.contains("INCOMPLETE: 1200 samples rejected"),
            "{first}"
        );
        r.total.samples_rejected = 0;
        r.verification = Some(Verification {
            windows: 2,
            source_series: 1,
            source_samples: 10,
            destination_samples: 9,
            mismatches: vec![Mismatch {
                start: String::new(),
                end: String::new(),
                source_series: 1,
                source_samples: 10,
                destination_series: 1,
                destination_samples: 9,
                examples: vec![],
            }],
        });
        let text = r.to_text(10);
        assert!(
            text.lines()
                .next()
                .unwrap()
                .contains("--verify found 1 windows that differ")
        );
        assert!(
            text.contains("verify: 2 windows"),
            "verify shown with no slabs: {text}"
        );
    }

    #[test]
    fn mimir_and_prometheus_refusals_are_told_apart() {
        for (body, want) in [
            (
                "err-mimir-sample-out-of-order: the sample has been rejected because another sample with a more recent timestamp has already been ingested",
                Reason::OutOfOrder,
            ),
            ("out of order sample", Reason::OutOfOrder),
            (
                "err-mimir-sample-timestamp-too-old: the sample has been rejected because its timestamp is too old",
                Reason::TooOld,
            ),
            ("out of bounds", Reason::TooOld),
            (
                "err-mimir-too-far-in-past: the sample has been rejected because its timestamp is too far in the past",
                Reason::TooFarInPast,
            ),
            ("duplicate sample for timestamp", Reason::DuplicateTimestamp),
            ("err-mimir-max-series-per-user", Reason::SeriesLimit),
            ("err-mimir-label-value-too-long", Reason::InvalidLabels),
            ("something else", Reason::Other),
        ] {
            assert_eq!(Reason::classify(body), want, "{body}");
        }
        assert!(
            Reason::OutOfOrder
                .hint()
                .contains("-ingester.out-of-order-time-window")
        );
        assert!(
            Reason::TooFarInPast
                .hint()
                .contains("-validation.past-grace-period")
        );
    }

    #[test]
    fn peak_memory_is_read_from_proc_status() {
        assert_eq!(
            vm_hwm("Name:\ttenantgate\nVmPeak:\t  9000 kB\nVmHWM:\t   20900 kB\n"),
            Some(20900 * 1024)
        );
        assert_eq!(vm_hwm("VmRSS:\t1 kB\n"), None);
        assert!(peak_memory().is_some_and(|b| b > 0));
    }

    #[test]
    fn commands_are_quoted_for_the_shell() {
        let args: Vec<String> = [
            "tenantgate",
            "migrate",
            "--match",
            "up{job=\"a b\"}",
            "--tenant",
            "it's",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(
            shell_command(&args),
            r#"tenantgate migrate --match 'up{job="a b"}' --tenant 'it'\''s'"#
        );
    }

    #[test]
    fn rejections_are_summed_per_reason_and_the_first_message_kept() {
        let mut r = Report::default();
        r.reject(Reason::OutOfOrder, 10, "first");
        r.reject(Reason::OutOfOrder, 5, "second");
        r.reject(Reason::TooOld, 1, "old");
        let samples: Vec<(Reason, u64)> =
            r.rejections.iter().map(|x| (x.reason, x.samples)).collect();
        assert_eq!(samples, vec![(Reason::OutOfOrder, 15), (Reason::TooOld, 1)]);
        assert_eq!(r.rejections[0].first_message, "first");
        assert_eq!(r.rejections[0].requests, 2);
        r.slabs.push(slab_report(0, 1000));
        let text = r.to_text(10);
        assert!(
            text.contains("REJECTED 15 samples in 2 request(s): OutOfOrder"),
            "{text}"
        );
    }
}
