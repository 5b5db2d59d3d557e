//! Progress on stderr while copying: a bar on a terminal, a log line every few seconds
//! otherwise.

use std::time::{Duration, Instant};

use super::report::SlabReport;
use crate::config::units::{format_duration, format_size};
use crate::time::format_rfc3339;

/// Progress log lines when there is no terminal.
pub(super) const LOG_EVERY: Duration = Duration::from_secs(10);

/// Progress on stderr: a bar on a terminal, a log line every few seconds otherwise.
pub(super) struct Progress {
    pub(super) bar: Option<indicatif::ProgressBar>,
    pub(super) use_bar: bool,
    pub(super) started: Instant,
    pub(super) last_log: Instant,
    pub(super) begin_ms: i64,
    pub(super) end_ms: i64,
    pub(super) slabs: u64,
    pub(super) samples: u64,
    pub(super) bytes: u64,
}

impl Progress {
    pub(super) fn new(use_bar: bool) -> Progress {
        Progress {
            bar: None,
            use_bar,
            started: Instant::now(),
            last_log: Instant::now(),
            begin_ms: 0,
            end_ms: 0,
            slabs: 0,
            samples: 0,
            bytes: 0,
        }
    }

    pub(super) fn begin(&mut self, from: i64, to: i64, following: bool) {
        self.begin_ms = if self.bar.is_some() {
            self.begin_ms
        } else {
            from
        };
        self.end_ms = to;
        if !self.use_bar {
            return;
        }
        let bar = self.bar.get_or_insert_with(|| {
            let b = indicatif::ProgressBar::new(0);
            let style = indicatif::ProgressStyle::with_template(
                "{elapsed_precise} [{wide_bar}] {percent:>3}% {msg} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            b.set_style(style);
            b
        });
        bar.set_length(u64::try_from(to - self.begin_ms).unwrap_or(0));
        bar.set_position(u64::try_from(from - self.begin_ms).unwrap_or(0));
        if following {
            bar.set_message("following");
        }
    }

    pub(super) fn slab_done(&mut self, slab: &SlabReport, through: i64) {
        self.slabs += 1;
        self.samples += slab.samples_written;
        self.bytes += slab.bytes_read;
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.samples as f64 / secs;
        let bytes_rate = self.bytes as f64 / secs;
        if let Some(bar) = &self.bar {
            bar.set_position(u64::try_from(through - self.begin_ms).unwrap_or(0));
            bar.set_message(format!(
                "{} slabs, {rate:.0} samples/s, {}/s",
                self.slabs,
                format_size(bytes_rate as u64)
            ));
            return;
        }
        if self.last_log.elapsed() >= LOG_EVERY {
            self.last_log = Instant::now();
            let total = (self.end_ms - self.begin_ms).max(1) as f64;
            let done = (through - self.begin_ms) as f64;
            let eta = if done > 0.0 {
                Duration::from_secs_f64(secs * (total - done).max(0.0) / done)
            } else {
                Duration::ZERO
            };
            tracing::info!(
                through = %format_rfc3339(through),
                done = %format!("{:.1}%", 100.0 * done / total),
                slabs = self.slabs,
                samples = self.samples,
                samples_per_second = %format!("{rate:.0}"),
                bytes_per_second = %format!("{}/s", format_size(bytes_rate as u64)),
                eta = %format_duration(Duration::from_secs(eta.as_secs())),
                "progress"
            );
        }
    }

    pub(super) fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}
