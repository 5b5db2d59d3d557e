//! `--verify`: both sides read again, window by window, per-series sample counts compared.

use std::collections::HashMap;

use super::engine::{Halt, Migration};
use super::read::{self, Collect, Labels, Range, Read, ReadSpec};
use super::remote::{Endpoint, Failed};
use super::report::{self, Verification};
use crate::time::format_rfc3339;

impl Migration {
    /// Reads both sides again, window by window, and compares per-series sample counts.
    pub(super) async fn verify(&mut self) -> Result<(), Halt> {
        let mut v = Verification {
            windows: 0,
            source_series: 0,
            source_samples: 0,
            destination_samples: 0,
            mismatches: Vec::new(),
        };
        let mut s = self.plan.start;
        while s < self.completed {
            if self.stop.requested() {
                return Err(Halt::Stopped);
            }
            let range = Range {
                start: s,
                end: (s + self.plan.max_slab).min(self.completed),
            };
            let src = self.count(&self.plan.source, range).await?;
            let dst = self.count(&self.plan.dest_read, range).await?;
            v.windows += 1;
            let src_samples: u64 = src.values().sum();
            let dst_samples: u64 = dst.values().sum();
            v.source_series += src.len() as u64;
            v.source_samples += src_samples;
            v.destination_samples += dst_samples;
            let mut examples = Vec::new();
            for (labels, n) in &src {
                let d = dst.get(labels).copied().unwrap_or(0);
                if d != *n && examples.len() < 5 {
                    examples.push(format!(
                        "{}: source {n}, destination {d}",
                        report::labels_text(labels)
                    ));
                }
            }
            if src_samples != dst_samples || src.len() != dst.len() || !examples.is_empty() {
                v.mismatches.push(report::Mismatch {
                    start: format_rfc3339(range.start),
                    end: format_rfc3339(range.end),
                    source_series: src.len() as u64,
                    source_samples: src_samples,
                    destination_series: dst.len() as u64,
                    destination_samples: dst_samples,
                    examples,
                });
            }
            s = range.end;
        }
        tracing::info!(
            windows = v.windows,
            mismatches = v.mismatches.len(),
            "verification done"
        );
        self.report.verification = Some(v);
        Ok(())
    }

    pub(super) async fn count(
        &self,
        ep: &Endpoint,
        range: Range,
    ) -> Result<HashMap<Labels, u64>, Halt> {
        let spec = ReadSpec {
            range,
            matchers: &self.plan.matchers,
            counts_only: true,
            budget: self.plan.slab_budget,
            skip_progress_of: Some(&self.plan.id),
        };
        let mut retries = 0;
        let r = read::read_retrying(
            ep,
            &spec,
            &self.plan.retry,
            &self.stop,
            "verify",
            &mut retries,
        )
        .await;
        match r {
            Ok(Ok(Read {
                data: Collect::Counts(c),
                ..
            })) => Ok(c.into_iter().map(|(l, n, _)| (l, n)).collect()),
            Ok(Ok(_)) => Ok(HashMap::new()),
            Ok(Err(_)) => Err(Halt::Fatal(
                "verify: a window's series do not fit the memory budget".into(),
            )),
            Err(Failed::Stopped) => Err(Halt::Stopped),
            Err(e) => Err(Halt::Fatal(format!("verify: reading the {}: {e}", ep.role))),
        }
    }
}
