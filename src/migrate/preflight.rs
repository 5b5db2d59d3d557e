//! Before anything is written: the source answers remote read, the destination accepts the
//! tenant; and `--dry-run`, which prints the plan.

use std::time::Duration;

use super::engine::{Halt, Migration};
use super::read::{self, Range, ReadError, ReadSpec};
use super::remote::{Failed, retrying};
use super::report::short;
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
            Err(Failed::Refused { status, .. })
                if status == http::StatusCode::NOT_FOUND
                    || status == http::StatusCode::METHOD_NOT_ALLOWED =>
            {
                return Err(Halt::Fatal(format!(
                    "the destination {} has no remote write endpoint there (HTTP {status}): \
                     Prometheus receives remote write at /api/v1/write (with \
                     --web.enable-remote-write-receiver), Mimir and Cortex at /api/v1/push",
                    dest.uri(),
                )));
            }
            Err(Failed::Refused { status, body })
                if status == http::StatusCode::UNAUTHORIZED
                    || status == http::StatusCode::FORBIDDEN =>
            {
                return Err(Halt::Fatal(format!(
                    "the destination {} refuses tenant {:?}: HTTP {status}: {}",
                    dest.uri(),
                    self.plan.tenant.as_str(),
                    body.trim()
                )));
            }
            Err(Failed::Refused { status, body }) => {
                return Err(Halt::Fatal(format!(
                    "the destination {} refuses an empty test write for tenant {:?}: HTTP {status}: {}",
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
            "slab start", "slab end", "series", "samples"
        );
        let (mut total_samples, mut distinct) = (0u64, std::collections::HashSet::new());
        while s < end {
            if self.stop.requested() {
                return Err(Halt::Stopped);
            }
            let e = (s + self.plan.max_slab).min(end);
            // The whole slab, counted: a sample of its first minutes says nothing of data that
            // starts later in it.
            let spec = ReadSpec {
                range: Range { start: s, end: e },
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
            total_samples += read.samples();
            if let read::Collect::Counts(counts) = &read.data {
                distinct.extend(counts.iter().map(|c| super::engine::labels_hash(&c.0)));
            }
            println!(
                "  {:<20} {:<20} {:>8} {:>14}",
                short(&format_rfc3339(s)),
                short(&format_rfc3339(e)),
                read.series(),
                read.samples()
            );
            s = e;
        }
        println!(
            "\n  {total_samples} samples of {} series in the source to copy",
            distinct.len()
        );
        println!("  nothing was written");
        Ok(())
    }
}
