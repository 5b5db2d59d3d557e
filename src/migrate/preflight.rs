//! Before anything is written: the source answers remote read, the destination accepts the
//! tenant; and `--dry-run`, which prints the plan.

use std::time::Duration;

use super::engine::{Halt, Migration};
use super::read::{self, Range, ReadError, ReadSpec};
use super::remote::{Failed, retrying};
use super::setup::PROBE_MS;
use super::wire::{ResponseType, WriteEncoder};
use crate::config::units::format_duration;
use crate::time::format_rfc3339;

impl Migration {
    /// Source answers remote read; destination accepts the tenant.
    pub(super) async fn validate(&mut self) -> Result<(), Halt> {
        let end = self.plan.current_end();
        let probe = Range {
            start: self.plan.start.max(end - PROBE_MS),
            end,
        };
        let spec = ReadSpec {
            range: probe,
            matchers: &self.plan.matchers,
            counts_only: true,
            budget: self.plan.slab_budget,
            skip_progress_of: Some(&self.plan.id),
        };
        let source = &self.plan.source;
        let mut retries = 0;
        let read = read::read_retrying(
            source,
            &spec,
            &self.plan.retry,
            &self.stop,
            "read from the source",
            &mut retries,
        )
        .await;
        let read = match read {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => {
                return Err(Halt::Fatal(
                    "the source's series list for 5 minutes does not fit --max-memory; raise it"
                        .into(),
                ));
            }
            Err(Failed::Stopped) => return Err(Halt::Stopped),
            Err(e) => {
                return Err(Halt::Fatal(format!(
                    "the source {} does not answer remote read: {e}",
                    source.uri()
                )));
            }
        };
        let format = match read.format {
            ResponseType::StreamedXorChunks => "streamed XOR chunks",
            ResponseType::Samples => {
                "samples (not streamed; slabs are bounded by the whole response)"
            }
        };
        self.report.source_format = Some(format.to_owned());
        tracing::info!(
            source = %source.uri(),
            format,
            series = read.series(),
            samples = read.samples(),
            window = %format!("{} .. {}", format_rfc3339(probe.start), format_rfc3339(probe.end)),
            "source answers remote read"
        );
        // An empty write: the destination must accept this tenant before anything is copied.
        let empty = WriteEncoder::default().finish().map_err(Halt::Fatal)?;
        let dest = &self.plan.dest;
        let sent = retrying(
            &self.plan.retry,
            &self.stop,
            "write to the destination",
            &mut retries,
            || dest.post(empty.clone()),
        )
        .await;
        match sent {
            Ok(_) => {}
            Err(Failed::Refused { status, body }) => {
                return Err(Halt::Fatal(format!(
                    "the destination {} refuses tenant {:?}: HTTP {status}: {}",
                    dest.uri(),
                    self.plan.tenant.as_str(),
                    body.trim()
                )));
            }
            Err(Failed::Stopped) => return Err(Halt::Stopped),
            Err(e) => {
                return Err(Halt::Fatal(format!(
                    "the destination {} does not accept remote write: {e}",
                    dest.uri()
                )));
            }
        }
        tracing::info!(destination = %self.plan.dest.uri(), tenant = self.plan.tenant.as_str(), "destination accepts the tenant");
        Ok(())
    }

    pub(super) async fn dry_run(&mut self, cursor: i64) -> Result<(), Halt> {
        let end = self.plan.current_end();
        let mut s = cursor;
        println!(
            "dry run: migration {} copies {} .. {} as tenant {} ({} selector(s)), in slabs of at most {}",
            self.plan.id,
            format_rfc3339(cursor),
            format_rfc3339(end),
            self.plan.tenant.as_str(),
            self.plan.matchers.len(),
            format_duration(Duration::from_millis(self.plan.max_slab as u64))
        );
        println!(
            "  source: {} ({})",
            self.plan.source.uri(),
            self.report.source_format.as_deref().unwrap_or("?")
        );
        println!(
            "  destination: {} (progress read from {})",
            self.plan.dest.uri(),
            self.plan.dest_read.uri()
        );
        println!(
            "\n  {:<20} {:<20} {:>8} {:>14}",
            "slab start", "slab end", "series", "samples (est)"
        );
        let (mut total_samples, mut max_series) = (0f64, 0usize);
        while s < end {
            if self.stop.requested() {
                return Err(Halt::Stopped);
            }
            let e = (s + self.plan.max_slab).min(end);
            let probe = Range {
                start: s,
                end: (s + PROBE_MS).min(e),
            };
            let spec = ReadSpec {
                range: probe,
                matchers: &self.plan.matchers,
                counts_only: true,
                budget: self.plan.slab_budget,
                skip_progress_of: Some(&self.plan.id),
            };
            let read = read::read(&self.plan.source, &spec).await.map_err(|e| {
                Halt::Fatal(match e {
                    ReadError::TooBig { .. } => {
                        "the source's series list does not fit the memory budget".into()
                    }
                    ReadError::Failed(f) => format!("reading the source: {f}"),
                })
            })?;
            let est = read.samples() as f64 * (e - s) as f64 / probe.width() as f64;
            total_samples += est;
            max_series = max_series.max(read.series());
            println!(
                "  {:<20} {:<20} {:>8} {:>14.0}",
                format_rfc3339(s).trim_end_matches(".000Z"),
                format_rfc3339(e).trim_end_matches(".000Z"),
                read.series(),
                est
            );
            s = e;
        }
        println!(
            "\n  about {total_samples:.0} samples; up to {max_series} series per slab (series counted in the first {} of each slab)",
            format_duration(Duration::from_millis(PROBE_MS as u64))
        );
        println!("  nothing was written");
        Ok(())
    }
}
