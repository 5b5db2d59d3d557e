//! `tenantgate migrate`: copy history from a remote read endpoint into a remote write endpoint as
//! one tenant, in time slabs, resumably, and optionally keep replicating.
//!
//! The walk: validate (source reads, destination accepts the tenant, range sane), read the
//! progress series back from the destination to find where an earlier run stopped, then copy
//! slab after slab, oldest first. Reads run ahead of writes (`--concurrency`); writes go in time
//! order, one request at a time, so each series reaches the destination as a growing prefix and
//! no sample is older than what the destination's head accepts. After every slab, the progress
//! series records how far the destination holds the range.
//!
//! A run killed between a slab's writes and its progress record leaves a partly written slab.
//! The next run reads the destination over one slab's width after the recorded progress and
//! skips, per series, the samples already there: nothing is lost and nothing is sent twice, as
//! long as the destination reads series back with the labels they were written with. A slab
//! whose progress cannot be recorded stops the run, so there is never more than one such slab.

mod plan;
pub mod read;
pub mod remote;
pub mod report;
pub mod selector;
pub mod wire;
pub mod xor;

use std::collections::{HashMap, VecDeque};
use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest, Sha256};

use crate::config::units::{format_duration, format_size, parse_duration, parse_size};
use crate::config::{Config, Timeouts};
use crate::tenant::TenantId;
use crate::time::{format_rfc3339, now_millis};
use plan::Planner;
use read::{Collect, Labels, PROGRESS_METRIC, Range, Read, ReadError, ReadSpec};
use remote::{Endpoint, Failed, Kind, Retry, Stop, retrying};
use report::{Outcome, Reason, Report, SlabReport, Verification};
use wire::{LabelMatcher, MatchType, ResponseType, WriteEncoder};

/// How the end report is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

/// How progress is shown while copying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar on a terminal, log lines otherwise.
    Auto,
    Bar,
    Log,
}

/// `tenantgate migrate`'s flags. The destination tenant is the global `--tenant`.
#[derive(clap::Args, Debug, Clone)]
pub struct MigrateArgs {
    /// Remote read URL to copy from, e.g. http://prometheus:9090/api/v1/read
    /// (Mimir: http://mimir:8080/prometheus/api/v1/read). Or NAME[/PATH]: the upstream NAME of
    /// --config, with its TLS settings (PATH defaults to /api/v1/read).
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// Remote write URL to copy to, e.g. http://mimir:8080/api/v1/push. Or NAME[/PATH]: the
    /// upstream NAME of --config (PATH defaults to /api/v1/push).
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Remote read URL of the destination, to read progress back and for --verify. Default:
    /// from --to, .../api/v1/push -> .../prometheus/api/v1/read (Mimir), .../api/v1/write ->
    /// .../api/v1/read (Prometheus).
    #[arg(long = "to-read", value_name = "URL")]
    pub to_read: Option<String>,
    /// Start of the range: RFC 3339 (2024-01-01T00:00:00Z), Unix seconds, or now-DURATION
    /// (now-30d).
    #[arg(long, value_name = "TIME")]
    pub start: String,
    /// End of the range (exclusive), same forms. Default: now; with --follow, no end.
    #[arg(long, value_name = "TIME")]
    pub end: Option<String>,
    /// Series to copy, as a PromQL selector; repeat for several. Default: every series,
    /// {__name__=~".+"}.
    #[arg(long = "match", value_name = "SELECTOR")]
    pub matchers: Vec<String>,
    /// X-Scope-OrgID to read the source as (a Mimir or Cortex source).
    #[arg(long = "from-tenant", value_name = "ID")]
    pub from_tenant: Option<String>,
    /// Names this migration's progress series; a run with the same id resumes it. Default: a
    /// hash of the source and destination URLs, the tenant and the selectors (not --start: to
    /// copy earlier than a finished run's range, give a new id).
    #[arg(long = "migration-id", value_name = "ID")]
    pub migration_id: Option<String>,
    /// Memory the migration may use; slabs shrink when the data is dense.
    #[arg(long = "max-memory", value_name = "SIZE", default_value = "256MiB")]
    pub max_memory: String,
    /// Longest slab. Keep it at most 1h for a Mimir or Prometheus destination without an
    /// out-of-order window: their TSDB head accepts samples up to 1h older than its newest.
    #[arg(long = "max-slab", value_name = "DURATION", default_value = "1h")]
    pub max_slab: String,
    /// Slabs read at once, ahead of the one being written (which memory also holds).
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub concurrency: u16,
    /// Largest remote write request (protobuf, before compression).
    #[arg(long = "max-write-size", value_name = "SIZE", default_value = "4MiB")]
    pub max_write_size: String,
    /// Retries of a request that failed with a 5xx, a 429, a timeout or no connection; 4xx are
    /// not retried.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub retries: u32,
    /// First wait between retries; doubled each time up to 30s, or what Retry-After asks.
    #[arg(long = "retry-backoff", value_name = "DURATION", default_value = "1s")]
    pub retry_backoff: String,
    /// Wait for each response's headers, and between two body chunks, before giving up.
    #[arg(long, value_name = "DURATION", default_value = "2m")]
    pub timeout: String,
    /// Validate and print the plan (series estimate per slab); copy nothing.
    #[arg(long = "dry-run")]
    pub dry_run: bool,
    /// After copying, read both sides again and compare series and sample counts.
    #[arg(long)]
    pub verify: bool,
    /// Keep replicating new data, --follow-lag behind now, until stopped.
    #[arg(long, conflicts_with = "end")]
    pub follow: bool,
    /// With --follow: how far behind now to stay (late samples still arrive at the source).
    #[arg(long = "follow-lag", value_name = "DURATION", default_value = "5m")]
    pub follow_lag: String,
    /// With --follow: how often to copy what is new.
    #[arg(
        long = "follow-interval",
        value_name = "DURATION",
        default_value = "30s"
    )]
    pub follow_interval: String,
    /// How the end report is printed (on stdout).
    #[arg(long = "report-format", value_enum, default_value = "text")]
    pub report_format: ReportFormat,
    /// How progress is shown (on stderr).
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: ProgressMode,
    /// Extra header for the destination, "Name: value" (repeatable). X-Scope-OrgID is not
    /// allowed: the tenant is --tenant.
    #[arg(long = "to-header", value_name = "HEADER")]
    pub to_headers: Vec<String>,
    /// Extra header for the source, "Name: value" (repeatable).
    #[arg(long = "from-header", value_name = "HEADER")]
    pub from_headers: Vec<String>,
    /// Bearer token for the destination, read from this file.
    #[arg(long = "to-bearer-token-file", value_name = "FILE")]
    pub to_bearer_token_file: Option<PathBuf>,
    /// Bearer token for the source, read from this file.
    #[arg(long = "from-bearer-token-file", value_name = "FILE")]
    pub from_bearer_token_file: Option<PathBuf>,
    /// Basic auth user for the destination (password from --to-basic-auth-password-file).
    #[arg(
        long = "to-basic-auth-user",
        value_name = "USER",
        requires = "to_basic_auth_password_file"
    )]
    pub to_basic_auth_user: Option<String>,
    #[arg(
        long = "to-basic-auth-password-file",
        value_name = "FILE",
        requires = "to_basic_auth_user"
    )]
    pub to_basic_auth_password_file: Option<PathBuf>,
    /// Basic auth user for the source (password from --from-basic-auth-password-file).
    #[arg(
        long = "from-basic-auth-user",
        value_name = "USER",
        requires = "from_basic_auth_password_file"
    )]
    pub from_basic_auth_user: Option<String>,
    #[arg(
        long = "from-basic-auth-password-file",
        value_name = "FILE",
        requires = "from_basic_auth_user"
    )]
    pub from_basic_auth_password_file: Option<PathBuf>,
    /// CA bundle to verify the destination's certificate (default: system roots).
    #[arg(long = "to-ca-file", value_name = "FILE")]
    pub to_ca_file: Option<PathBuf>,
    /// CA bundle to verify the source's certificate (default: system roots).
    #[arg(long = "from-ca-file", value_name = "FILE")]
    pub from_ca_file: Option<PathBuf>,
}

/// Memory the process needs besides slab data: runtime, TLS, buffers of the HTTP client.
const RESERVED_MEMORY: u64 = 24 << 20;
/// The shortest slab: one second of a source denser than the memory allows is an error.
const MIN_SLAB_MS: i64 = 1000;
/// The longest slab accepted.
const MAX_SLAB_MS: i64 = 31 * 24 * 3600 * 1000;
/// Window of the validation read and of the per-slab estimate of `--dry-run`.
const PROBE_MS: i64 = 5 * 60 * 1000;
/// Progress log lines when there is no terminal.
const LOG_EVERY: Duration = Duration::from_secs(10);
/// Cap on the exponential backoff between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Everything a run needs, checked.
struct Plan {
    id: String,
    tenant: TenantId,
    source: Arc<Endpoint>,
    dest: Endpoint,
    dest_read: Endpoint,
    matchers: Arc<Vec<Vec<LabelMatcher>>>,
    start: i64,
    /// `None` with --follow.
    end: Option<i64>,
    follow_lag: Duration,
    follow_interval: Duration,
    slab_budget: usize,
    max_slab: i64,
    concurrency: usize,
    max_write: usize,
    retry: Retry,
}

/// Runs `tenantgate migrate`; returns the process exit code: 0 done or stopped, 1 failed,
/// 3 done but samples were refused or verification found differences.
pub fn main(args: MigrateArgs, tenant: Option<String>, config: Option<Config>) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tenantgate migrate: cannot start the async runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let plan = match Plan::new(&args, tenant, config.as_ref()) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("tenantgate migrate: {e}");
                return 1;
            }
        };
        let stop = Stop::default();
        spawn_signal_handler(stop.clone());
        let mut m = Migration::new(plan, stop, &args);
        let report = m.run(&args).await;
        let code = match report.outcome {
            Outcome::Failed => 1,
            Outcome::Stopped => 0,
            Outcome::Complete if report.has_losses() => 3,
            Outcome::Complete => 0,
        };
        if args.dry_run && report.outcome == Outcome::Complete {
            // The plan is the output.
            return code;
        }
        match args.report_format {
            ReportFormat::Text => print!("{}", report.to_text(40)),
            ReportFormat::Json => match serde_json::to_string_pretty(&report) {
                Ok(j) => println!("{j}"),
                Err(e) => eprintln!("tenantgate migrate: cannot encode the report: {e}"),
            },
        }
        code
    })
}

fn spawn_signal_handler(stop: Stop) {
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            tracing::warn!("cannot install signal handlers; SIGINT/SIGTERM kill the migration");
            return;
        };
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if stop.raise() == 1 {
                tracing::warn!(
                    "stopping after the slab in flight and recording progress; signal again to abandon it"
                );
            } else {
                tracing::warn!("abandoning the slab in flight");
            }
        }
    });
}

/// `RFC 3339`, Unix seconds, `now` or `now-DURATION`, in milliseconds.
pub fn parse_time(s: &str, now: i64) -> Result<i64, String> {
    let s = s.trim();
    if s == "now" {
        return Ok(now);
    }
    if let Some(ago) = s.strip_prefix("now-") {
        let d = parse_duration(ago)?;
        return Ok(now - d.as_millis() as i64);
    }
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_digit() || c == '.') {
        let secs: f64 = s
            .parse()
            .map_err(|_| format!("{s:?} is not a number of seconds"))?;
        return Ok((secs * 1000.0).round() as i64);
    }
    crate::time::parse_rfc3339(s).map_err(|e| {
        format!("{s:?} is not a time (use RFC 3339, Unix seconds or now-DURATION): {e}")
    })
}

/// `"Name: value"` headers, refusing the ones tenantgate sets itself.
fn parse_headers(list: &[String], flag: &str) -> Result<HeaderMap, String> {
    let mut out = HeaderMap::new();
    for h in list {
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| format!("{flag} {h:?}: expected \"Name: value\""))?;
        let name = HeaderName::from_bytes(name.trim().as_bytes())
            .map_err(|e| format!("{flag} {h:?}: {e}"))?;
        if name == "x-scope-orgid" {
            return Err(format!(
                "{flag}: X-Scope-OrgID is set from the tenant flags, not as a header"
            ));
        }
        if matches!(
            name.as_str(),
            "content-type"
                | "content-encoding"
                | "content-length"
                | "host"
                | "connection"
                | "transfer-encoding"
        ) {
            return Err(format!("{flag}: {name} is set by tenantgate"));
        }
        let mut value =
            HeaderValue::from_str(value.trim()).map_err(|e| format!("{flag} {h:?}: {e}"))?;
        if name == http::header::AUTHORIZATION || name == "cookie" {
            value.set_sensitive(true);
        }
        out.append(name, value);
    }
    Ok(out)
}

fn read_secret(path: &PathBuf, what: &str) -> Result<String, String> {
    let s = std::fs::read_to_string(path).map_err(|e| format!("{what} {}: {e}", path.display()))?;
    let s = s.trim_end_matches(['\r', '\n']).to_owned();
    if s.is_empty() {
        return Err(format!("{what} {} is empty", path.display()));
    }
    Ok(s)
}

/// Sets `Authorization` from a token file or a basic auth user and password file.
fn add_auth(
    headers: &mut HeaderMap,
    bearer: Option<&PathBuf>,
    basic: Option<(&String, &PathBuf)>,
    side: &str,
) -> Result<(), String> {
    let value = match (bearer, basic) {
        (Some(_), Some(_)) => {
            return Err(format!(
                "--{side}-bearer-token-file and --{side}-basic-auth-user exclude each other"
            ));
        }
        (Some(file), None) => {
            format!(
                "Bearer {}",
                read_secret(file, &format!("--{side}-bearer-token-file"))?
            )
        }
        (None, Some((user, file))) => {
            let pass = read_secret(file, &format!("--{side}-basic-auth-password-file"))?;
            format!(
                "Basic {}",
                crate::auth::base64_encode(format!("{user}:{pass}").as_bytes())
            )
        }
        (None, None) => return Ok(()),
    };
    if headers.contains_key(http::header::AUTHORIZATION) {
        return Err(format!(
            "--{side}-header sets Authorization and so does a credential flag"
        ));
    }
    let mut v = HeaderValue::from_str(&value)
        .map_err(|_| format!("the {side} credentials contain characters a header cannot carry"))?;
    v.set_sensitive(true);
    headers.insert(http::header::AUTHORIZATION, v);
    Ok(())
}

/// A URL, or `NAME[/PATH]` naming an upstream of the config (its TLS settings come along).
fn resolve_url(
    value: &str,
    default_path: &str,
    config: Option<&Config>,
    flag: &str,
) -> Result<(String, Option<crate::tls::UpstreamTls>), String> {
    if value.contains("://") {
        return Ok((value.to_owned(), None));
    }
    let (name, path) = match value.split_once('/') {
        Some((n, p)) => (n, format!("/{p}")),
        None => (value, default_path.to_owned()),
    };
    let config = config.ok_or_else(|| {
        format!("{flag} {value:?} is not a URL; to name an upstream, give --config")
    })?;
    let up = config.upstreams.get(name).ok_or_else(|| {
        let known: Vec<&str> = config.upstreams.keys().map(String::as_str).collect();
        format!(
            "{flag} {value:?}: no upstream {name:?} in {} (it has: {})",
            config.source,
            known.join(", ")
        )
    })?;
    let origin = up.origin.to_string();
    let url = format!("{}{}{path}", origin.trim_end_matches('/'), up.base_path);
    Ok((url, up.tls.clone()))
}

/// The destination's remote read URL for a remote write URL.
fn derive_read_url(write_url: &str) -> Option<String> {
    let (base, query) = match write_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (write_url, None),
    };
    let read = if let Some(prefix) = base.strip_suffix("/api/v1/push") {
        format!("{prefix}/prometheus/api/v1/read")
    } else {
        format!("{}/api/v1/read", base.strip_suffix("/api/v1/write")?)
    };
    Some(match query {
        Some(q) => format!("{read}?{q}"),
        None => read,
    })
}

impl Plan {
    fn new(
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
            Some(e) => Some(parse_time(e, now).map_err(|e| format!("--end: {e}"))?),
            None if args.follow => None,
            None => Some(now),
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
            Some(id) if !id.is_empty() && id.len() <= 128 => id.clone(),
            Some(_) => return Err("--migration-id must be 1 to 128 characters".into()),
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
        })
    }

    fn progress_matchers(&self) -> Vec<Vec<LabelMatcher>> {
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

    fn progress_labels(&self) -> Labels {
        vec![
            ("__name__".into(), PROGRESS_METRIC.into()),
            ("migration_id".into(), self.id.clone()),
        ]
    }

    /// Where copying stops now: the end, or now minus the lag when following.
    fn current_end(&self) -> i64 {
        self.end
            .unwrap_or_else(|| now_millis() - self.follow_lag.as_millis() as i64)
    }
}

/// Why copying stopped early.
enum Halt {
    Stopped,
    Fatal(String),
}

/// A read running ahead: the data (or how much memory it needed when it did not fit), and the
/// retries it took.
type ReadTask = tokio::task::JoinHandle<(Result<Result<Read, usize>, Failed>, u64)>;

/// A read running ahead, or one still to start.
enum Slot {
    Pending(Range),
    Running(Range, ReadTask),
}

struct Migration {
    plan: Plan,
    stop: Stop,
    report: Report,
    progress: Progress,
    /// Per series, the newest sample the destination already holds in the window an
    /// interrupted run may have partly written.
    already: HashMap<Labels, i64>,
    already_until: i64,
    /// How far the destination holds the range.
    completed: i64,
}

impl Migration {
    fn new(plan: Plan, stop: Stop, args: &MigrateArgs) -> Migration {
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

    async fn run(&mut self, args: &MigrateArgs) -> Report {
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

    async fn run_inner(&mut self, args: &MigrateArgs) -> Result<(), Halt> {
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

    /// Source answers remote read; destination accepts the tenant.
    async fn validate(&mut self) -> Result<(), Halt> {
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

    /// The newest recorded progress of this migration, in ms.
    async fn read_progress(&mut self) -> Result<Option<i64>, Halt> {
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
    async fn load_already(&mut self, cursor: i64) -> Result<(), Halt> {
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

    /// Copies `[cursor, end)`; returns how far it got.
    async fn copy(&mut self, cursor: i64, end: i64) -> Result<i64, Halt> {
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

    fn spawn_read(&self, range: Range) -> ReadTask {
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
    async fn write_slab(
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

    async fn flush(
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

    /// Records that the destination holds the range up to `end` (exclusive).
    /// A slab whose progress cannot be recorded stops the run: the next run's check of what the
    /// destination already holds covers one slab after the recorded progress, no more.
    async fn record_progress(&mut self, end: i64) -> Result<(), Halt> {
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

    async fn dry_run(&mut self, cursor: i64) -> Result<(), Halt> {
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

    /// Reads both sides again, window by window, and compares per-series sample counts.
    async fn verify(&mut self) -> Result<(), Halt> {
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

    async fn count(&self, ep: &Endpoint, range: Range) -> Result<HashMap<Labels, u64>, Halt> {
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

/// Progress on stderr: a bar on a terminal, a log line every few seconds otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    use_bar: bool,
    started: Instant,
    last_log: Instant,
    begin_ms: i64,
    end_ms: i64,
    slabs: u64,
    samples: u64,
    bytes: u64,
}

impl Progress {
    fn new(use_bar: bool) -> Progress {
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

    fn begin(&mut self, from: i64, to: i64, following: bool) {
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

    fn slab_done(&mut self, slab: &SlabReport, through: i64) {
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

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_unix_seconds_or_relative_to_now() {
        let now = 1_700_000_000_000;
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time("now-1h", now).unwrap(), now - 3_600_000);
        assert_eq!(parse_time("1700000000.5", now).unwrap(), 1_700_000_000_500);
        assert_eq!(
            parse_time("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000_000
        );
        for bad in ["", "yesterday", "now-1x", "1.2.3"] {
            assert!(parse_time(bad, now).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_read_url_is_derived_from_the_write_url() {
        assert_eq!(
            derive_read_url("http://mimir:8080/api/v1/push").as_deref(),
            Some("http://mimir:8080/prometheus/api/v1/read")
        );
        assert_eq!(
            derive_read_url("https://p:9090/prom/api/v1/write?x=1").as_deref(),
            Some("https://p:9090/prom/api/v1/read?x=1")
        );
        assert_eq!(derive_read_url("http://vm:8428/insert"), None);
    }

    #[test]
    fn headers_cannot_choose_the_tenant_and_credentials_are_sensitive() {
        let h = parse_headers(
            &["X-Extra: a b".into(), "Authorization: Bearer x".into()],
            "--to-header",
        )
        .unwrap();
        assert_eq!(h["x-extra"], "a b");
        assert!(h["authorization"].is_sensitive());
        assert!(
            parse_headers(&["X-Scope-OrgID: evil".into()], "--to-header")
                .unwrap_err()
                .contains("tenant")
        );
        assert!(parse_headers(&["no colon".into()], "--to-header").is_err());
        assert!(parse_headers(&["Content-Encoding: gzip".into()], "--to-header").is_err());
    }
}
