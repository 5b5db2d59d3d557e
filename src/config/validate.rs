//! Raw config -> [`Config`]: every check, every default, every cross-reference.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::Uri;
use serde_saphyr::Spanned;

use super::raw::{Listen, RawConfig};
use super::units::PromDuration;
use super::{
    AdminSettings, Config, ConfigError, ConfigErrors, ServerSettings, Timeouts, UpstreamSettings,
};
use crate::route::normalize_path;

/// Default data listener.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9090";
/// Default `max_request_body`: Mimir's own default for `-distributor.max-recv-msg-size`.
pub const DEFAULT_MAX_REQUEST_BODY: u64 = 100 << 20;

/// Command-line overrides (`--upstream`, `--tenant`, `--listen`), applied before validation.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// New URL for the config's only upstream.
    pub upstream: Option<String>,
    /// New tenant for every route.
    pub tenant: Option<String>,
    /// New data listen address.
    pub listen: Option<String>,
    /// New admin listen address (adds an admin listener if the config has none).
    pub admin_listen: Option<String>,
    /// Validate without reading referenced files or environment variables (`check
    /// --syntax-only`); such a config can be checked and printed, never served.
    pub syntax_only: bool,
    /// Directory relative file paths resolve against; set by `load_file`.
    pub base_dir: Option<std::path::PathBuf>,
}

pub(super) struct Errors {
    pub(super) errors: Vec<ConfigError>,
    /// Relative file paths in the config resolve against this directory (the config file's).
    pub(super) base_dir: Option<std::path::PathBuf>,
    /// `check --syntax-only`: referenced files and environment variables are not read.
    pub(super) syntax_only: bool,
    /// What `syntax_only` left unread, for `check` to say so.
    pub(super) skipped: Vec<String>,
    /// Every identity name in the file, including ones that failed validation.
    pub(super) identity_names: Vec<String>,
    /// Keys whose value came from a command-line flag: their errors name the flag, not a
    /// line of the file.
    pub(super) from_flags: Vec<(String, &'static str)>,
}

impl Errors {
    /// A file path from the config, relative ones resolved against the config's directory.
    pub(super) fn path(&self, p: &str) -> std::path::PathBuf {
        let path = std::path::Path::new(p);
        match &self.base_dir {
            Some(base) if path.is_relative() => base.join(path),
            _ => path.to_path_buf(),
        }
    }

    /// In `--syntax-only` mode, notes that `what` was not read and returns true.
    pub(super) fn skip(&mut self, what: String) -> bool {
        if self.syntax_only {
            self.skipped.push(what);
        }
        self.syntax_only
    }

    pub(super) fn at<T>(
        &mut self,
        path: impl Into<String>,
        span: Option<&Spanned<T>>,
        message: impl Into<String>,
    ) {
        let mut path = path.into();
        let mut loc = span.map(|s| s.referenced).filter(|l| l.line() > 0);
        if let Some((_, flag)) = self
            .from_flags
            .iter()
            .find(|(key, _)| path == *key || path.starts_with(&format!("{key}[")))
        {
            path = format!("{flag} (sets {path})");
            loc = None;
        }
        self.errors.push(ConfigError {
            path,
            line: loc.map(|l| l.line() as usize),
            column: loc.map(|l| l.column() as usize),
            message: message.into(),
        });
    }
}

/// Parses `host:port`, `:port` (all interfaces, as Prometheus flags allow) or `[v6]:port`.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Some(port) = s.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| {
            format!("{s:?} is not a listen address (use e.g. 127.0.0.1:9090 or :9090)")
        })?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port));
    }
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?} is not a listen address"))?;
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse().map_err(|_| {
        format!("{s:?} is not a listen address (use e.g. 127.0.0.1:9090, :9090 or [::1]:9090)")
    })
}

fn listen_addrs(errs: &mut Errors, path: &str, listen: &Spanned<Listen>) -> Vec<SocketAddr> {
    if listen.value.0.is_empty() {
        errs.at(path, Some(listen), "at least one address is needed");
    }
    let mut out = Vec::new();
    for (i, a) in listen.value.0.iter().enumerate() {
        match parse_listen(a) {
            Ok(addr) => out.push(addr),
            Err(e) => {
                let p = if listen.value.0.len() > 1 {
                    format!("{path}[{i}]")
                } else {
                    path.to_owned()
                };
                errs.at(p, Some(listen), e);
            }
        }
    }
    out
}

fn positive(
    errs: &mut Errors,
    path: &str,
    d: Option<&Spanned<PromDuration>>,
    default: Duration,
) -> Duration {
    match d {
        None => default,
        Some(s) if s.value.0.is_zero() => {
            errs.at(path, Some(s), format!("must be > 0, got {}", s.value));
            default
        }
        Some(s) => s.value.0,
    }
}

pub(super) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Idle upstream connections kept per upstream. A Prometheus remote-writes over up to 50 shards
/// (its default `max_shards`), so a few of them stay on warm connections, while a burst from a
/// thousand clients does not leave a thousand upstream connections (and their buffers) behind.
pub const DEFAULT_MAX_IDLE_CONNECTIONS: usize = 64;

fn upstream_settings(
    errs: &mut Errors,
    name: &str,
    u: &super::raw::RawUpstream,
) -> Option<UpstreamSettings> {
    let (url, http2, t) = (&u.url, u.http2, &u.timeouts);
    let key = format!("upstreams.{name}");
    if !valid_name(name) {
        errs.at(
            &key,
            Some(url),
            format!("{name:?} is not a valid upstream name (use letters, digits, '-', '_', '.')"),
        );
    }
    let timeouts = Timeouts {
        connect: positive(
            errs,
            &format!("{key}.timeouts.connect"),
            t.connect.as_ref(),
            Duration::from_secs(5),
        ),
        response_header: positive(
            errs,
            &format!("{key}.timeouts.response_header"),
            t.response_header.as_ref(),
            Duration::from_secs(300),
        ),
        idle: positive(
            errs,
            &format!("{key}.timeouts.idle"),
            t.idle.as_ref(),
            Duration::from_secs(300),
        ),
    };
    let url_key = format!("{key}.url");
    let uri: Uri = match url.value.parse() {
        Ok(u) => u,
        Err(e) => {
            errs.at(
                &url_key,
                Some(url),
                format!("{:?} is not a URL: {e}", url.value),
            );
            return None;
        }
    };
    let scheme = uri.scheme_str().unwrap_or("");
    if scheme != "http" && scheme != "https" {
        errs.at(
            &url_key,
            Some(url),
            format!("{:?} must start with http:// or https://", url.value),
        );
        return None;
    }
    let Some(authority) = uri.authority() else {
        errs.at(&url_key, Some(url), format!("{:?} has no host", url.value));
        return None;
    };
    if authority.as_str().contains('@') {
        // Credentials in a URL end up in logs and `check` output; they have no place here.
        errs.at(
            &url_key,
            Some(url),
            "must not contain credentials (user:password@)",
        );
        return None;
    }
    if uri.query().is_some() {
        errs.at(&url_key, Some(url), "must not have a query string");
        return None;
    }
    let base_path = uri.path().trim_end_matches('/').to_owned();
    if !base_path.is_empty()
        && normalize_path(&base_path)
            .map(|p| p != base_path)
            .unwrap_or(true)
    {
        errs.at(
            &url_key,
            Some(url),
            format!("path {base_path:?} is not a normalized path"),
        );
        return None;
    }
    let tls = u
        .tls
        .as_ref()
        .and_then(|t| super::security::upstream_tls(errs, &key, t, scheme == "https"));
    if u.tls.is_some() && tls.is_none() {
        return None;
    }
    let health_check = u.health_check.as_ref().and_then(|hc| {
        let key = format!("{key}.health_check");
        let h = &hc.value;
        let interval = h.interval.map_or(Duration::from_secs(10), |d| d.0);
        let timeout = h.timeout.map_or(Duration::from_secs(2), |d| d.0);
        let mut ok = true;
        if normalize_path(&h.path).map(|p| p != h.path).unwrap_or(true) {
            errs.at(
                format!("{key}.path"),
                Some(hc),
                format!("{:?} must be a normalized path starting with '/'", h.path),
            );
            ok = false;
        }
        if interval.is_zero() || timeout.is_zero() {
            errs.at(&key, Some(hc), "interval and timeout must be > 0");
            ok = false;
        }
        if timeout > interval {
            errs.at(
                format!("{key}.timeout"),
                Some(hc),
                "must not be longer than the interval",
            );
            ok = false;
        }
        ok.then(|| super::HealthCheck {
            path: h.path.clone(),
            interval,
            timeout,
        })
    });
    let origin = Uri::builder()
        .scheme(scheme)
        .authority(authority.clone())
        .path_and_query("/")
        .build()
        .ok()?;
    Some(UpstreamSettings {
        name: name.to_owned(),
        origin,
        base_path,
        http2,
        timeouts,
        max_idle_connections: u
            .max_idle_connections
            .unwrap_or(DEFAULT_MAX_IDLE_CONNECTIONS),
        health_check,
        tls,
    })
}

/// Validates a parsed config, applying command-line overrides first.
pub fn validate(
    mut raw: RawConfig,
    source: &str,
    overrides: &Overrides,
) -> Result<Config, ConfigErrors> {
    let mut errs = Errors {
        errors: Vec::new(),
        base_dir: overrides.base_dir.clone(),
        syntax_only: overrides.syntax_only,
        skipped: Vec::new(),
        identity_names: super::security::identity_names(&raw.identities),
        from_flags: Vec::new(),
    };

    if let Some(url) = &overrides.upstream {
        if raw.upstreams.len() == 1 {
            if let Some((name, u)) = raw.upstreams.iter_mut().next() {
                u.url.value = url.clone();
                errs.from_flags
                    .push((format!("upstreams.{name}.url"), "--upstream"));
            }
        } else {
            errs.at::<()>(
                "--upstream",
                None,
                format!(
                    "the config has {} upstreams; --upstream needs exactly one",
                    raw.upstreams.len()
                ),
            );
        }
    }
    if let Some(tenant) = &overrides.tenant {
        // Only fixed tenants: --tenant must never turn off authentication on a route.
        for (i, r) in raw.routes.iter_mut().enumerate() {
            if let super::raw::RawTenant::Fixed(t) = &mut r.value.tenant.value {
                t.clone_from(tenant);
                errs.from_flags
                    .push((format!("routes[{i}].tenant"), "--tenant"));
            }
        }
    }
    if let Some(listen) = &overrides.listen {
        errs.from_flags.push(("server.listen".into(), "--listen"));
        match &mut raw.server.listen {
            Some(l) => l.value = Listen(vec![listen.clone()]),
            None => {
                let unknown = serde_saphyr::Location::UNKNOWN;
                raw.server.listen =
                    Some(Spanned::new(Listen(vec![listen.clone()]), unknown, unknown));
            }
        }
    }

    if let Some(listen) = &overrides.admin_listen {
        errs.from_flags
            .push(("admin.listen".into(), "--admin-listen"));
        let unknown = serde_saphyr::Location::UNKNOWN;
        raw.admin = Some(super::raw::RawAdmin {
            listen: Spanned::new(Listen(vec![listen.clone()]), unknown, unknown),
        });
    }
    let listen = match &raw.server.listen {
        Some(l) => listen_addrs(&mut errs, "server.listen", l),
        None => vec![
            parse_listen(DEFAULT_LISTEN)
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9090))),
        ],
    };
    let server = ServerSettings {
        listen,
        shutdown_grace: raw
            .server
            .shutdown_grace
            .map_or(Duration::from_secs(30), |d| d.0),
        shutdown_delay: raw.server.shutdown_delay.map_or(Duration::ZERO, |d| d.0),
        idle_timeout: raw
            .server
            .idle_timeout
            .map_or(Duration::from_secs(120), |d| d.0),
        header_read_timeout: raw
            .server
            .header_read_timeout
            .map_or(Duration::from_secs(30), |d| d.0),
        body_read_timeout: raw
            .server
            .body_read_timeout
            .map_or(Duration::from_secs(60), |d| d.0),
        body_min_rate: raw.server.body_min_rate.map_or(1024, |s| s.0),
        send_timeout: raw
            .server
            .send_timeout
            .map_or(Duration::from_secs(60), |d| d.0),
        max_requests_in_flight: raw.server.max_requests_in_flight.unwrap_or(4096),
        max_connections: raw.server.max_connections.unwrap_or(10_000),
        max_header_bytes: raw.server.max_header_bytes.map_or(64 << 10, |s| s.0),
        max_headers: raw.server.max_headers.unwrap_or(100),
        tls: raw
            .server
            .tls
            .as_ref()
            .and_then(|t| super::security::server_tls(&mut errs, t)),
    };
    if server.max_header_bytes < 8 << 10 {
        errs.at::<()>("server.max_header_bytes", None, "must be at least 8KiB");
    }
    if server.max_headers == 0 {
        errs.at::<()>("server.max_headers", None, "must be > 0");
    }
    let has_client_ca = raw
        .server
        .tls
        .as_ref()
        .is_some_and(|t| t.value.client_ca_file.is_some());
    let mut identities = super::security::identities(&mut errs, &raw.identities, has_client_ca);
    identities.max_failed_logins = raw
        .server
        .max_failed_logins
        .unwrap_or(crate::login_state::DEFAULT_MAX_FAILED_LOGINS);
    let identities = std::sync::Arc::new(identities);
    if server.idle_timeout.is_zero() {
        errs.at::<()>("server.idle_timeout", None, "must be > 0, got 0s");
    }
    if server.header_read_timeout.is_zero() {
        errs.at::<()>("server.header_read_timeout", None, "must be > 0, got 0s");
    }
    if server.body_read_timeout.is_zero() {
        errs.at::<()>("server.body_read_timeout", None, "must be > 0, got 0s");
    }
    if server.send_timeout.is_zero() {
        errs.at::<()>("server.send_timeout", None, "must be > 0, got 0s");
    }
    if server.max_requests_in_flight == 0 {
        errs.at::<()>("server.max_requests_in_flight", None, "must be > 0");
    }
    if server.max_connections == 0 {
        errs.at::<()>("server.max_connections", None, "must be > 0");
    }
    let admin = raw.admin.as_ref().map(|a| AdminSettings {
        listen: listen_addrs(&mut errs, "admin.listen", &a.listen),
    });

    if raw.upstreams.is_empty() {
        errs.at::<()>("upstreams", None, "at least one upstream is needed");
    }
    let mut upstreams = BTreeMap::new();
    for (name, u) in &raw.upstreams {
        if let Some(s) = upstream_settings(&mut errs, name, u) {
            upstreams.insert(name.clone(), s);
        }
    }

    if raw.routes.is_empty() {
        errs.at::<()>("routes", None, "at least one route is needed");
    }
    let raw_upstream_names: Vec<&String> = raw.upstreams.keys().collect();
    let mut routes = Vec::new();
    let mut names = HashSet::new();
    let mut matchers = HashSet::new();
    for (i, r) in raw.routes.iter().enumerate() {
        if !names.insert(r.value.name.clone()) {
            errs.at(
                format!("routes[{i}].name"),
                Some(r),
                format!("duplicate route name {:?}", r.value.name),
            );
        }
        if let Some(route) = super::routes::route(
            &mut errs,
            i,
            r,
            &upstreams,
            &raw_upstream_names,
            &identities,
        ) {
            let mut methods: Vec<String> = route
                .methods
                .iter()
                .flatten()
                .map(|m| m.to_string())
                .collect();
            methods.sort();
            if !matchers.insert((route.path.clone(), methods, route.host.clone())) {
                errs.at(
                    format!("routes[{i}].match"),
                    Some(&r.value.matcher),
                    "an earlier route has the same match, so this one could never be used",
                );
            }
            routes.push(route);
        }
    }

    if errs.errors.is_empty() {
        Ok(Config {
            source: source.to_owned(),
            server,
            admin,
            upstreams,
            routes,
            identities,
            unread: errs.skipped,
        })
    } else {
        Err(ConfigErrors {
            source: source.to_owned(),
            errors: errs.errors,
        })
    }
}
