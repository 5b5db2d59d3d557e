//! Configuration: YAML in, validated domain types out.
//!
//! Loading happens in two stages, as in sozu: [`raw`] holds serde structs that reject unknown
//! keys, and [`validate`] turns them into [`Config`], collecting every problem it finds. Each error
//! names the key path and, where the YAML parser knows it, the line:
//!
//! ```text
//! tenantgate.yaml:12:15: routes[1].upstream: unknown upstream "mimri" (known: mimir)
//! ```

mod label_tenant;
mod parse;
pub mod raw;
mod routes;
mod security;
pub mod units;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::Uri;

pub use parse::parse_raw;
pub use validate::{
    DEFAULT_LISTEN, DEFAULT_MAX_IDLE_CONNECTIONS, DEFAULT_MAX_REQUEST_BODY, Overrides,
    parse_listen, validate,
};

use crate::route::Route;

/// The built-in config used when no `--config` is given: the dev shim. It is also shipped as
/// `config/dev.yaml`, so the two cannot drift apart.
pub const BUILTIN: &str = include_str!("../../config/dev.yaml");

/// Name shown for the built-in config in errors and `tenantgate check`.
pub const BUILTIN_NAME: &str = "<built-in config>";

/// The validated configuration tenantgate runs on.
#[derive(Debug)]
pub struct Config {
    /// Where it came from (file path or [`BUILTIN_NAME`]).
    pub source: String,
    pub server: ServerSettings,
    pub admin: Option<AdminSettings>,
    pub upstreams: BTreeMap<String, UpstreamSettings>,
    /// Routes in file order.
    pub routes: Vec<Route>,
    /// Callers that can authenticate (for `tenant: {from: identity}` routes).
    pub identities: std::sync::Arc<crate::auth::Identities>,
    /// Files and variables `--syntax-only` did not read; a config with any cannot be served.
    pub unread: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: Vec<SocketAddr>,
    pub shutdown_grace: Duration,
    pub shutdown_delay: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_read_timeout: Duration,
    /// Bytes per second; 0 = off.
    pub body_min_rate: u64,
    pub send_timeout: Duration,
    pub max_connections: usize,
    pub max_requests_in_flight: usize,
    pub max_header_bytes: u64,
    pub max_headers: usize,
    /// TLS on the data listeners.
    pub tls: Option<crate::tls::ServerTls>,
}

#[derive(Debug, Clone)]
pub struct AdminSettings {
    pub listen: Vec<SocketAddr>,
}

/// Equal settings mean a reload can keep the upstream's connection pool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub name: String,
    /// Scheme and authority only.
    pub origin: Uri,
    /// Path prepended to every forwarded path, without a trailing slash ("" for none).
    pub base_path: String,
    pub http2: bool,
    pub timeouts: Timeouts,
    /// Idle HTTP/1 connections kept for reuse (the least recently used past it are closed).
    pub max_idle_connections: usize,
    pub health_check: Option<HealthCheck>,
    /// TLS settings for an https upstream (system roots when absent).
    pub tls: Option<crate::tls::UpstreamTls>,
}

/// A background probe of an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub response_header: Duration,
    pub idle: Duration,
}

/// One problem in a config, located as precisely as the parser allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The key path, e.g. `routes[1].upstream` (`.` for the document itself).
    pub path: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

/// Every problem found in one config source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.source)?;
            if let Some(line) = e.line {
                write!(f, ":{line}")?;
                if let Some(col) = e.column {
                    write!(f, ":{col}")?;
                }
            }
            write!(f, ": {}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A file the config names, as error messages show it: absolute, so a relative path is not
/// mistaken for one relative to the shell's directory (it is relative to the config file's).
pub fn shown_path(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// Parses and validates YAML text. `source` names it in errors.
pub fn from_yaml(yaml: &str, source: &str, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    let raw = parse_raw(yaml, source)?;
    validate(raw, source, overrides)
}

/// Reads, parses and validates a config file.
pub fn load_file(path: &Path, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    let source = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigErrors {
        source: source.clone(),
        errors: vec![ConfigError {
            path: ".".into(),
            line: None,
            column: None,
            message: format!("cannot read: {e}"),
        }],
    })?;
    let mut overrides = overrides.clone();
    overrides.base_dir = path.parent().map(Path::to_path_buf);
    from_yaml(&text, &source, &overrides)
}

/// Loads the file if one is given, else the built-in default.
pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigErrors> {
    match path {
        Some(p) => load_file(p, overrides),
        None => from_yaml(BUILTIN, BUILTIN_NAME, overrides),
    }
}

#[cfg(test)]
mod tests;

impl Config {
    /// Keys of `new` that differ from this config but are read only when the server starts, so
    /// a reload keeps their running values.
    pub fn start_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let old = self;
        let (o, n) = (&old.server, &new.server);
        let mut changed = Vec::new();
        let mut check = |key, differs: bool| {
            if differs {
                changed.push(key);
            }
        };
        check("server.listen", o.listen != n.listen);
        check(
            "admin.listen",
            old.admin.as_ref().map(|a| &a.listen) != new.admin.as_ref().map(|a| &a.listen),
        );
        check(
            "server.header_read_timeout",
            o.header_read_timeout != n.header_read_timeout,
        );
        check("server.idle_timeout", o.idle_timeout != n.idle_timeout);
        check(
            "server.body_read_timeout",
            o.body_read_timeout != n.body_read_timeout,
        );
        check("server.body_min_rate", o.body_min_rate != n.body_min_rate);
        check("server.send_timeout", o.send_timeout != n.send_timeout);
        check(
            "server.max_connections",
            o.max_connections != n.max_connections,
        );
        check(
            "server.max_requests_in_flight",
            o.max_requests_in_flight != n.max_requests_in_flight,
        );
        check(
            "server.max_header_bytes",
            o.max_header_bytes != n.max_header_bytes,
        );
        check("server.max_headers", o.max_headers != n.max_headers);
        check(
            "server.shutdown_grace",
            o.shutdown_grace != n.shutdown_grace,
        );
        check(
            "server.shutdown_delay",
            o.shutdown_delay != n.shutdown_delay,
        );
        changed
    }
}
