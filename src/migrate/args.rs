//! The command line of `tenantgate migrate`, and the parsing of its values: times, headers,
//! credentials, and URLs that name upstreams of `--config`.

use std::path::PathBuf;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::Config;
use crate::config::units::parse_duration;

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
    /// Most samples per second written to the destination (0: as fast as it accepts). A
    /// destination that states its ingestion rate limit in a 429 (Cortex, Mimir) is paced to
    /// 80% of it anyway, leaving the rest to the tenant's live writers.
    #[arg(long = "max-samples-per-second", value_name = "N", default_value_t = 0)]
    pub max_samples_per_second: u64,
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
    /// Keep replicating new data, --follow-lag behind now, until stopped. Excludes --end,
    /// except with --shard: there only the last shard follows, past --end.
    #[arg(long)]
    pub follow: bool,
    /// Copy only part I of N (0 <= I < N, 0-based like a Kubernetes Indexed Job's
    /// JOB_COMPLETION_INDEX): [--start, --end) is cut into N contiguous parts of equal width,
    /// so N runs can copy at once. Needs an absolute --start and --end (the same for every
    /// shard). Each shard has its own migration id (suffix -shard-I-of-N) and progress; a
    /// stated ingestion rate limit is shared among the N shards.
    #[arg(long, value_name = "I/N", value_parser = parse_shard)]
    pub shard: Option<Shard>,
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
    /// File holding the password for --to-basic-auth-user.
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
    /// File holding the password for --from-basic-auth-user.
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

/// Part `index` of `count` of the range (`--shard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

/// The most shards a range is cut into.
pub(super) const MAX_SHARDS: u32 = 1024;

/// `I/N` with `0 <= I < N <= MAX_SHARDS`.
pub fn parse_shard(s: &str) -> Result<Shard, String> {
    let (i, n) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected I/N, e.g. 0/4 (the first of 4 shards)"))?;
    let number = |v: &str| {
        v.trim()
            .parse::<u32>()
            .map_err(|_| format!("{s:?}: {v:?} is not a whole number"))
    };
    let (index, count) = (number(i)?, number(n)?);
    if count == 0 || count > MAX_SHARDS {
        return Err(format!(
            "{s:?}: the number of shards must be 1 to {MAX_SHARDS}"
        ));
    }
    if index >= count {
        return Err(format!(
            "{s:?}: shards are numbered from 0 to {} (0-based, like JOB_COMPLETION_INDEX)",
            count - 1
        ));
    }
    Ok(Shard { index, count })
}

impl Shard {
    /// Part `index` of `[start, end)`: the N parts are contiguous, cover the range exactly and
    /// differ in width by at most 1 ms.
    pub fn part(self, start: i64, end: i64) -> (i64, i64) {
        let width = i128::from(end) - i128::from(start);
        let at = |k: u32| {
            let offset = width * i128::from(k) / i128::from(self.count);
            // Within [start, end]: the conversion cannot fail.
            i64::try_from(i128::from(start) + offset).unwrap_or(end)
        };
        (at(self.index), at(self.index + 1))
    }

    pub fn is_last(self) -> bool {
        self.index + 1 == self.count
    }
}

/// Whether a time flag's value is relative to now (and so differs between runs).
pub(super) fn is_relative_time(s: &str) -> bool {
    s.trim().starts_with("now")
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
pub(super) fn parse_headers(list: &[String], flag: &str) -> Result<HeaderMap, String> {
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
pub(super) fn add_auth(
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
pub(super) fn resolve_url(
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
pub(super) fn derive_read_url(write_url: &str) -> Option<String> {
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
    fn shards_cut_the_range_into_contiguous_parts() {
        assert_eq!(parse_shard("0/4").unwrap(), Shard { index: 0, count: 4 });
        for bad in ["4/4", "1", "-1/4", "0/0", "0/1025", "a/b", "1/2/3"] {
            assert!(parse_shard(bad).is_err(), "{bad:?}");
        }
        assert!(parse_shard("4/4").unwrap_err().contains("0 to 3"));
        for (start, end, n) in [(0i64, 10i64, 3u32), (5, 6, 1), (1_000, 1_000_003, 7)] {
            let mut at = start;
            for index in 0..n {
                let (a, b) = Shard { index, count: n }.part(start, end);
                assert_eq!(a, at, "contiguous");
                assert!(b >= a && b - a <= (end - start) / i64::from(n) + 1);
                at = b;
            }
            assert_eq!(at, end, "the parts cover the range");
        }
        let far = Shard { index: 1, count: 2 }.part(0, i64::MAX);
        assert_eq!(far, (i64::MAX / 2, i64::MAX));
        assert!(Shard { index: 1, count: 2 }.is_last());
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
