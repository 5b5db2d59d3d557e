//! Raw config -> [`Config`]: every check, every default, every cross-reference.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use http::{Method, Uri};
use serde_saphyr::Spanned;

use super::raw::{Listen, RawConfig, RawPrometheus, RawRoute};
use super::units::{PromDuration, parse_duration};
use super::{
    AdminSettings, Config, ConfigError, ConfigErrors, ServerSettings, Timeouts, UpstreamSettings,
};
use crate::promapi::{
    DEFAULT_VERSION, Emulation, LowestTimestamp, validate_label_name, validate_semver,
};
use crate::route::{PathMatch, Rewrite, Route, normalize_path, prefix_matches};
use crate::time::{now_millis, parse_rfc3339};

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
        let loc = span.map(|s| s.referenced).filter(|l| l.line() > 0);
        self.errors.push(ConfigError {
            path: path.into(),
            line: loc.map(|l| l.line() as usize),
            column: loc.map(|l| l.column() as usize),
            message: message.into(),
        });
    }
}

fn process_start_ms() -> i64 {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *START.get_or_init(now_millis)
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

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

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
        health_check,
        tls,
    })
}

fn config_path(
    errs: &mut Errors,
    key: &str,
    p: &str,
    span: &Spanned<super::raw::RawMatch>,
) -> bool {
    match normalize_path(p) {
        // Escapes in a route path would match differently from what the upstream decodes.
        Ok(n) if n == p && p.contains('%') => {
            errs.at(
                key,
                Some(span),
                format!("{p:?}: route paths cannot contain percent-escapes"),
            );
            false
        }
        Ok(n) if n == p => true,
        Ok(n) => {
            errs.at(
                key,
                Some(span),
                format!("{p:?} is not in normal form; write {n:?}"),
            );
            false
        }
        Err(e) => {
            errs.at(key, Some(span), format!("{p:?}: {e}"));
            false
        }
    }
}

fn emulation(errs: &mut Errors, key: &str, p: &Spanned<RawPrometheus>) -> Option<Emulation> {
    let labels = &p.value.external_labels;
    let mut ok = true;
    if labels.value.is_empty() {
        errs.at(format!("{key}.external_labels"), Some(labels), "at least one external label is needed: a Thanos sidecar exits when Prometheus has none");
        ok = false;
    }
    for (name, value) in &labels.value {
        if let Err(e) = validate_label_name(name) {
            errs.at(format!("{key}.external_labels.{name}"), Some(labels), e);
            ok = false;
        }
        if value.is_empty() {
            errs.at(
                format!("{key}.external_labels.{name}"),
                Some(labels),
                "label values must not be empty",
            );
            ok = false;
        }
    }
    let version = match &p.value.version {
        Some(v) => {
            if let Err(e) = validate_semver(&v.value) {
                errs.at(format!("{key}.version"), Some(v), e);
                ok = false;
            }
            v.value.clone()
        }
        None => DEFAULT_VERSION.to_owned(),
    };
    let lowest = match &p.value.lowest_timestamp {
        None => LowestTimestamp::At(0),
        Some(s) => match parse_rfc3339(&s.value) {
            Ok(ms) if ms >= 0 => LowestTimestamp::At(ms),
            Ok(_) => {
                errs.at(
                    format!("{key}.lowest_timestamp"),
                    Some(s),
                    "must not be before 1970",
                );
                ok = false;
                LowestTimestamp::At(0)
            }
            Err(_) => match parse_duration(&s.value) {
                Ok(d) if d.is_zero() => LowestTimestamp::At(0),
                Ok(d) => LowestTimestamp::Ago(d),
                Err(_) => {
                    errs.at(
                        format!("{key}.lowest_timestamp"),
                        Some(s),
                        format!("{:?} is neither an RFC 3339 time (2024-01-01T00:00:00Z) nor a duration (400d)", s.value),
                    );
                    ok = false;
                    LowestTimestamp::At(0)
                }
            },
        },
    };
    if !ok {
        return None;
    }
    match Emulation::new(
        labels.value.clone(),
        version,
        lowest,
        process_start_ms(),
        now_millis(),
    ) {
        Ok(e) => Some(e),
        Err(e) => {
            errs.at(key, Some(p), e);
            None
        }
    }
}

fn route(
    errs: &mut Errors,
    i: usize,
    r: &Spanned<RawRoute>,
    upstreams: &BTreeMap<String, UpstreamSettings>,
    raw_upstreams: &[&String],
    identities: &crate::auth::Identities,
) -> Option<Route> {
    let key = format!("routes[{i}]");
    let rv = &r.value;
    let before = errs.errors.len();
    if !valid_name(&rv.name) {
        errs.at(
            format!("{key}.name"),
            Some(r),
            format!(
                "{:?} is not a valid route name (use letters, digits, '-', '_', '.')",
                rv.name
            ),
        );
    }
    let m = &rv.matcher;
    let path = match (&m.value.path, &m.value.path_prefix) {
        (Some(p), None) => config_path(errs, &format!("{key}.match.path"), p, m)
            .then(|| PathMatch::Exact(p.clone())),
        (None, Some(p)) => config_path(errs, &format!("{key}.match.path_prefix"), p, m)
            .then(|| PathMatch::Prefix(p.clone())),
        (Some(_), Some(_)) => {
            errs.at(
                format!("{key}.match"),
                Some(m),
                "set either path or path_prefix, not both",
            );
            None
        }
        (None, None) => {
            errs.at(
                format!("{key}.match"),
                Some(m),
                "set path (exact) or path_prefix",
            );
            None
        }
    };
    let methods = m.value.methods.as_ref().map(|ms| {
        if ms.is_empty() {
            errs.at(
                format!("{key}.match.methods"),
                Some(m),
                "an empty list matches nothing; leave methods out to allow all",
            );
        }
        ms.iter()
            .filter_map(|s| {
                let upper = s.to_ascii_uppercase();
                match Method::from_bytes(upper.as_bytes()) {
                    Ok(method) if upper == *s => Some(method),
                    _ => {
                        errs.at(
                            format!("{key}.match.methods"),
                            Some(m),
                            format!(
                                "{s:?} is not an HTTP method (write it in upper case, e.g. GET)"
                            ),
                        );
                        None
                    }
                }
            })
            .collect::<Vec<_>>()
    });
    let host = m.value.host.as_ref().map(|h| {
        if h.is_empty() || h.contains(['/', ' ', ':']) {
            errs.at(
                format!("{key}.match.host"),
                Some(m),
                format!("{h:?} is not a host name (no scheme, port or path)"),
            );
        }
        h.to_ascii_lowercase()
    });
    if !upstreams.contains_key(&rv.upstream.value) && !raw_upstreams.contains(&&rv.upstream.value) {
        let known: Vec<&str> = raw_upstreams.iter().map(|s| s.as_str()).collect();
        errs.at(
            format!("{key}.upstream"),
            Some(&rv.upstream),
            format!(
                "unknown upstream {:?} (known: {})",
                rv.upstream.value,
                known.join(", ")
            ),
        );
    }
    let tenant = super::security::tenant_source(errs, &key, &rv.tenant, identities);
    let mut rewrite = Rewrite::default();
    if let Some(rw) = &rv.rewrite {
        if let Some(strip) = &rw.value.strip_prefix {
            let covers = match &path {
                Some(PathMatch::Prefix(p)) | Some(PathMatch::Exact(p)) => prefix_matches(strip, p),
                None => true,
            };
            if !strip.starts_with('/') || !covers {
                errs.at(
                    format!("{key}.rewrite.strip_prefix"),
                    Some(rw),
                    format!("{strip:?} must be a path prefix of the route's match"),
                );
            }
            rewrite.strip_prefix = Some(strip.clone());
        }
        if let Some(add) = &rw.value.add_prefix {
            if normalize_path(add).map(|n| n != *add).unwrap_or(true) {
                errs.at(
                    format!("{key}.rewrite.add_prefix"),
                    Some(rw),
                    format!("{add:?} must be a normalized path starting with '/'"),
                );
            }
            rewrite.add_prefix = Some(add.clone());
        }
    }
    let prometheus = match &rv.prometheus {
        None => None,
        Some(p) => {
            if !matches!(path, Some(PathMatch::Prefix(_)) | None) {
                errs.at(
                    format!("{key}.prometheus"),
                    Some(p),
                    "emulated endpoints live under a prefix: use match.path_prefix",
                );
            }
            emulation(errs, &format!("{key}.prometheus"), p)
        }
    };
    if errs.errors.len() != before {
        return None;
    }
    Some(Route {
        name: rv.name.as_str().into(),
        path: path?,
        methods,
        host,
        upstream: rv.upstream.value.as_str().into(),
        tenant: tenant?,
        forward_authorization: rv.forward_authorization,
        rewrite,
        max_request_body: rv
            .max_request_body
            .map_or(DEFAULT_MAX_REQUEST_BODY, |s| s.0),
        prometheus,
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
    };

    if let Some(url) = &overrides.upstream {
        if raw.upstreams.len() == 1 {
            if let Some(u) = raw.upstreams.values_mut().next() {
                u.url.value = url.clone();
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
        for r in &mut raw.routes {
            if let super::raw::RawTenant::Fixed(t) = &mut r.value.tenant.value {
                t.clone_from(tenant);
            }
        }
    }
    if let Some(listen) = &overrides.listen {
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
        header_read_timeout: raw
            .server
            .header_read_timeout
            .map_or(Duration::from_secs(30), |d| d.0),
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
    let identities = std::sync::Arc::new(super::security::identities(
        &mut errs,
        &raw.identities,
        has_client_ca,
    ));
    if server.header_read_timeout.is_zero() {
        errs.at::<()>("server.header_read_timeout", None, "must be > 0, got 0s");
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
        if let Some(route) = route(
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
