//! The config file as written: serde structs that reject unknown keys. Nothing outside
//! `config` sees these; [`super::validate`] turns them into the types the proxy runs on.
//! Doc comments here are the reference for each key (the README's config reference follows them).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde_saphyr::Spanned;

use super::units::{ByteSize, PromDuration};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// The data listener(s) clients and sidecars talk to.
    #[serde(default)]
    pub server: RawServer,
    /// The admin listener: tenantgate's own /metrics and health endpoints.
    pub admin: Option<RawAdmin>,
    /// Named upstreams routes forward to.
    pub upstreams: BTreeMap<String, RawUpstream>,
    /// Routes, matched NGINX `location` style.
    pub routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Address or list of addresses (`127.0.0.1:9090`, `:9090`, `[::1]:9090`). Default 127.0.0.1:9090.
    pub listen: Option<Spanned<Listen>>,
    /// How long in-flight requests may run after SIGTERM. Default 30s.
    pub shutdown_grace: Option<PromDuration>,
    /// Time a client has to send complete request headers (slowloris guard). Default 30s.
    pub header_read_timeout: Option<PromDuration>,
    /// Connections served at once; further connections wait in the accept queue. Default 10000.
    pub max_connections: Option<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdmin {
    /// Address or list of addresses for /metrics, /-/healthy, /-/ready.
    pub listen: Spanned<Listen>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstream {
    /// `http://host:port` or `https://host:port`, optionally with a base path prepended to every
    /// forwarded path.
    pub url: Spanned<String>,
    /// Speak HTTP/2 to the upstream (prior knowledge on http, ALPN on https). Default false.
    #[serde(default)]
    pub http2: bool,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    /// Probe the upstream in the background; `/-/ready` is false while a probe fails.
    pub health_check: Option<Spanned<RawHealthCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHealthCheck {
    /// Path requested with GET (below the URL's base path); 2xx is healthy. Mimir: `/ready`.
    pub path: String,
    /// Time between probes. Default 10s.
    pub interval: Option<PromDuration>,
    /// Deadline of one probe. Default 2s.
    pub timeout: Option<PromDuration>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTimeouts {
    /// TCP connect (and TLS handshake). Default 5s.
    pub connect: Option<Spanned<PromDuration>>,
    /// From sending the request to receiving response headers. Default 5m.
    pub response_header: Option<Spanned<PromDuration>>,
    /// Longest pause between two chunks of a response body; there is no total deadline, so long
    /// remote reads stream for as long as data flows. Default 5m.
    pub idle: Option<Spanned<PromDuration>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    /// Unique name; used in metrics, logs and `tenantgate check`.
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: Spanned<RawMatch>,
    /// Name of an entry in `upstreams`.
    pub upstream: Spanned<String>,
    /// The tenant sent as `X-Scope-OrgID` on every request of this route.
    pub tenant: Spanned<String>,
    pub rewrite: Option<Spanned<RawRewrite>>,
    /// Largest request body accepted (413 above it). Default 100MiB, Mimir's own default.
    pub max_request_body: Option<ByteSize>,
    /// Answer the Prometheus endpoints Mimir lacks, under this route's prefix.
    pub prometheus: Option<Spanned<RawPrometheus>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    /// Exactly this path.
    pub path: Option<String>,
    /// This path and everything below it (whole segments).
    pub path_prefix: Option<String>,
    /// Only these methods (default: all).
    pub methods: Option<Vec<String>>,
    /// Only this `Host` (default: any).
    pub host: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRewrite {
    pub strip_prefix: Option<String>,
    pub add_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrometheus {
    /// Labels reported by `api/v1/status/config`; the Thanos sidecar requires at least one.
    pub external_labels: Spanned<BTreeMap<String, String>>,
    /// Version reported by `api/v1/status/buildinfo` (strict semver). Default 2.53.0.
    pub version: Option<Spanned<String>>,
    /// Oldest data the sidecar will serve: an RFC 3339 time or a duration before now (`400d`).
    /// Default 0 (all time).
    pub lowest_timestamp: Option<Spanned<String>>,
}

/// One listen address or a list of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen(pub Vec<String>);

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Listen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an address such as 127.0.0.1:9090, or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Listen, E> {
                Ok(Listen(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Listen, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Listen(out))
            }
        }
        d.deserialize_any(V)
    }
}
