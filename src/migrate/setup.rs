//! Everything a run needs, checked before anything is read or written: the [`Plan`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use sha2::{Digest, Sha256};

use super::args::{
    MigrateArgs, add_auth, derive_read_url, is_relative_time, parse_headers, parse_time,
    resolve_url,
};
use super::read::{Labels, PROGRESS_METRIC};
use super::remote::{Endpoint, Kind, Retry};
use super::selector;
use super::wire::{LabelMatcher, MatchType};
use super::write::PACE_SHARE;
use crate::config::units::{format_size, parse_duration, parse_size};
use crate::config::{Config, Timeouts};
use crate::tenant::TenantId;
use crate::time::{format_rfc3339, now_millis};

/// Memory the process needs besides slab data: runtime, TLS, buffers of the HTTP client.
pub(super) const RESERVED_MEMORY: u64 = 24 << 20;
/// The shortest slab: one second of a source denser than the memory allows is an error.
pub(super) const MIN_SLAB_MS: i64 = 1000;
/// The longest slab accepted.
pub(super) const MAX_SLAB_MS: i64 = 31 * 24 * 3600 * 1000;
/// Window of the validation read and of the per-slab estimate of `--dry-run`.
pub(super) const PROBE_MS: i64 = 5 * 60 * 1000;
/// Longest migration id given with --migration-id (a shard adds its suffix to it).
pub(super) const MAX_ID_LEN: usize = 128;
/// Cap on the exponential backoff between retries.
pub(super) const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Everything a run needs, checked.
pub(super) struct Plan {
    pub(super) id: String,
    pub(super) tenant: TenantId,
    pub(super) source: Arc<Endpoint>,
    pub(super) dest: Endpoint,
    pub(super) dest_read: Endpoint,
    pub(super) matchers: Arc<Vec<Vec<LabelMatcher>>>,
    pub(super) start: i64,
    /// `None` with --follow.
    pub(super) end: Option<i64>,
    pub(super) follow_lag: Duration,
    pub(super) follow_interval: Duration,
    pub(super) slab_budget: usize,
    pub(super) max_slab: i64,
    pub(super) concurrency: usize,
    pub(super) max_write: usize,
    pub(super) retry: Retry,
    /// Share of a destination's stated ingestion rate this run paces itself to.
    pub(super) pace_share: f64,
}

impl Plan {
    pub(super) fn new(
        args: &MigrateArgs,
        tenant: Option<String>,
        config: Option<&Config>,
    ) -> Result<Plan, String> {
        let tenant = tenant
            .ok_or("--tenant is required: the tenant (X-Scope-OrgID) the history is written as")?;
        let tenant = TenantId::parse(&tenant).map_err(|e| format!("--tenant {tenant:?}: {e}"))?;
        if tenant.is_federated() {
            return Err(format!(
                "--tenant {tenant}: a write goes to exactly one tenant, not a federation",
                tenant = tenant.as_str()
            ));
        }
        let now = now_millis();
        let start = parse_time(&args.start, now).map_err(|e| format!("--start: {e}"))?;
        let end = match &args.end {
            Some(_) if args.follow && args.shard.is_none() => {
                return Err(
                    "--follow and --end exclude each other (with --shard, the last \
                            shard follows past --end)"
                        .into(),
                );
            }
            Some(e) => Some(parse_time(e, now).map_err(|e| format!("--end: {e}"))?),
            None if args.follow => None,
            None => Some(now),
        };
        let (start, end) = match args.shard {
            None => (start, end),
            Some(shard) => {
                let (Some(end), Some(end_flag)) = (end, args.end.as_deref()) else {
                    return Err("--shard needs --end: the range it cuts into parts".into());
                };
                if is_relative_time(&args.start) || is_relative_time(end_flag) {
                    return Err(
                        "--shard needs an absolute --start and --end (RFC 3339 or Unix \
                                seconds): now-relative times differ between shards started at \
                                different moments, and their parts would overlap or leave gaps"
                            .into(),
                    );
                }
                if start >= end {
                    return Err(format!(
                        "--start {} is not before --end {}: nothing to copy",
                        format_rfc3339(start),
                        format_rfc3339(end)
                    ));
                }
                let (a, b) = shard.part(start, end);
                if a == b {
                    return Err(format!(
                        "--shard {}/{}: the range is {} ms wide, too narrow for {} shards",
                        shard.index,
                        shard.count,
                        end - start,
                        shard.count
                    ));
                }
                if args.follow && shard.is_last() {
                    (a, None)
                } else {
                    if args.follow {
                        tracing::info!(
                            shard = %format!("{}/{}", shard.index, shard.count),
                            "--follow is left to the last shard; this one ends at its part's end"
                        );
                    }
                    (a, Some(b))
                }
            }
        };
        let follow_lag =
            parse_duration(&args.follow_lag).map_err(|e| format!("--follow-lag: {e}"))?;
        let follow_interval =
            parse_duration(&args.follow_interval).map_err(|e| format!("--follow-interval: {e}"))?;
        if follow_interval.is_zero() {
            return Err("--follow-interval must be more than 0".into());
        }
        if start < 0 {
            return Err(format!("--start {} is before 1970", args.start));
        }
        let effective_end = end.unwrap_or(now - follow_lag.as_millis() as i64);
        if start >= effective_end {
            return Err(format!(
                "--start {} is not before the end {}: nothing to copy",
                format_rfc3339(start),
                format_rfc3339(effective_end)
            ));
        }
        if end.is_some_and(|e| e > now + 5 * 60 * 1000) {
            return Err(format!(
                "--end {} is in the future; to keep copying new data use --follow",
                args.end.as_deref().unwrap_or_default()
            ));
        }
        let selectors: Vec<String> = if args.matchers.is_empty() {
            vec![r#"{__name__=~".+"}"#.to_owned()]
        } else {
            args.matchers.clone()
        };
        let matchers = selectors
            .iter()
            .map(|s| selector::parse(s).map_err(|e| format!("--match: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let max_memory = parse_size(&args.max_memory).map_err(|e| format!("--max-memory: {e}"))?;
        let max_write =
            parse_size(&args.max_write_size).map_err(|e| format!("--max-write-size: {e}"))?;
        if max_write < 4096 {
            return Err("--max-write-size must be at least 4KiB".into());
        }
        let concurrency = usize::from(args.concurrency);
        // Slab data: one slab being written plus those read ahead; the write path holds a
        // request and its compressed copy.
        let data = max_memory
            .saturating_sub(RESERVED_MEMORY)
            .saturating_sub(2 * max_write);
        let slab_budget = usize::try_from(data / (concurrency as u64 + 1)).unwrap_or(usize::MAX);
        if slab_budget < (1 << 20) {
            return Err(format!(
                "--max-memory {} leaves less than 1MiB per slab (it covers {} of process \
                 overhead, twice --max-write-size and --concurrency + 1 slabs): raise it, or \
                 lower --concurrency or --max-write-size",
                args.max_memory,
                format_size(RESERVED_MEMORY)
            ));
        }
        let max_slab = parse_duration(&args.max_slab).map_err(|e| format!("--max-slab: {e}"))?;
        let max_slab = max_slab.as_millis() as i64;
        if !(MIN_SLAB_MS..=MAX_SLAB_MS).contains(&max_slab) {
            return Err("--max-slab must be between 1s and 31d".into());
        }
        let timeout = parse_duration(&args.timeout).map_err(|e| format!("--timeout: {e}"))?;
        let timeouts = Timeouts {
            connect: Duration::from_secs(10).min(timeout.max(Duration::from_secs(1))),
            response_header: timeout,
            idle: timeout,
        };
        let retry = Retry {
            attempts: args.retries,
            backoff: parse_duration(&args.retry_backoff)
                .map_err(|e| format!("--retry-backoff: {e}"))?,
            max_backoff: MAX_BACKOFF,
        };

        let (from_url, from_tls) = resolve_url(&args.from, "/api/v1/read", config, "--from")?;
        let (to_url, to_tls) = resolve_url(&args.to, "/api/v1/push", config, "--to")?;
        let to_read_url = match &args.to_read {
            Some(u) => resolve_url(u, "/prometheus/api/v1/read", config, "--to-read")?.0,
            None => derive_read_url(&to_url).ok_or_else(|| {
                format!(
                    "cannot tell the destination's remote read URL from --to {to_url:?}: give \
                     --to-read (it reads the progress back, so a restart resumes)"
                )
            })?,
        };
        let tls = |ca: &Option<PathBuf>, from_config: Option<crate::tls::UpstreamTls>| match ca {
            Some(ca) => {
                crate::tls::UpstreamTls::load(Some(ca.clone()), None, None, None, false).map(Some)
            }
            None => Ok(from_config),
        };
        let from_tls =
            tls(&args.from_ca_file, from_tls).map_err(|e| format!("--from-ca-file: {e}"))?;
        let to_tls = tls(&args.to_ca_file, to_tls).map_err(|e| format!("--to-ca-file: {e}"))?;

        let mut from_headers = parse_headers(&args.from_headers, "--from-header")?;
        add_auth(
            &mut from_headers,
            args.from_bearer_token_file.as_ref(),
            args.from_basic_auth_user
                .as_ref()
                .zip(args.from_basic_auth_password_file.as_ref()),
            "from",
        )?;
        if let Some(t) = &args.from_tenant {
            let t = TenantId::parse(t).map_err(|e| format!("--from-tenant {t:?}: {e}"))?;
            from_headers.insert(
                HeaderName::from_static("x-scope-orgid"),
                t.header_value().clone(),
            );
        }
        let mut to_headers = parse_headers(&args.to_headers, "--to-header")?;
        add_auth(
            &mut to_headers,
            args.to_bearer_token_file.as_ref(),
            args.to_basic_auth_user
                .as_ref()
                .zip(args.to_basic_auth_password_file.as_ref()),
            "to",
        )?;
        to_headers.insert(
            HeaderName::from_static("x-scope-orgid"),
            tenant.header_value().clone(),
        );

        let id = match &args.migration_id {
            Some(id) if !id.is_empty() && id.len() <= MAX_ID_LEN => id.clone(),
            Some(_) => {
                return Err(format!(
                    "--migration-id must be 1 to {MAX_ID_LEN} characters"
                ));
            }
            None => {
                let mut h = Sha256::new();
                for part in [from_url.as_str(), to_url.as_str(), tenant.as_str()]
                    .into_iter()
                    .chain(selectors.iter().map(String::as_str))
                {
                    h.update(part.as_bytes());
                    h.update([0]);
                }
                let d = h.finalize();
                d.iter().take(6).map(|b| format!("{b:02x}")).collect()
            }
        };
        // A shard's progress is its own: another shard's record says nothing about this part.
        let id = match args.shard {
            Some(s) => format!("{id}-shard-{}-of-{}", s.index, s.count),
            None => id,
        };
        // N shards writing at once share the tenant's ingestion limit.
        let pace_share = PACE_SHARE / f64::from(args.shard.map_or(1, |s| s.count));

        Ok(Plan {
            id,
            source: Arc::new(Endpoint::new(
                "source",
                &from_url,
                Kind::Read,
                from_headers,
                from_tls,
                timeouts,
            )?),
            dest: Endpoint::new(
                "destination",
                &to_url,
                Kind::Write,
                to_headers.clone(),
                to_tls.clone(),
                timeouts,
            )?,
            dest_read: Endpoint::new(
                "destination read",
                &to_read_url,
                Kind::Read,
                to_headers,
                to_tls,
                timeouts,
            )?,
            tenant,
            matchers: Arc::new(matchers),
            start,
            end,
            follow_lag,
            follow_interval,
            slab_budget,
            max_slab,
            concurrency,
            max_write: usize::try_from(max_write).unwrap_or(usize::MAX),
            retry,
            pace_share,
        })
    }

    pub(super) fn progress_matchers(&self) -> Vec<Vec<LabelMatcher>> {
        vec![vec![
            LabelMatcher {
                r#type: MatchType::Eq as i32,
                name: "__name__".into(),
                value: PROGRESS_METRIC.into(),
            },
            LabelMatcher {
                r#type: MatchType::Eq as i32,
                name: "migration_id".into(),
                value: self.id.clone(),
            },
        ]]
    }

    pub(super) fn progress_labels(&self) -> Labels {
        vec![
            ("__name__".into(), PROGRESS_METRIC.into()),
            ("migration_id".into(), self.id.clone()),
        ]
    }

    /// Where copying stops now: the end, or now minus the lag when following.
    pub(super) fn current_end(&self) -> i64 {
        self.end
            .unwrap_or_else(|| now_millis() - self.follow_lag.as_millis() as i64)
    }
}
