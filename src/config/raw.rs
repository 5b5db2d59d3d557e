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
    /// Callers that can authenticate, each mapped to a tenant (for `tenant: {from: identity}`).
    #[serde(default)]
    pub identities: Vec<Spanned<RawIdentity>>,
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
    /// After SIGTERM, keep accepting (while /-/ready answers 503) this long before closing the
    /// listeners, so load balancers that lag behind readiness send nothing into a closed port.
    /// Default 0s; 5s suits Kubernetes.
    pub shutdown_delay: Option<PromDuration>,
    /// Time a client has to send complete request headers (slowloris guard); also closes idle
    /// HTTP/1 keep-alive connections. Default 30s.
    pub header_read_timeout: Option<PromDuration>,
    /// An HTTP/2 connection on which no request starts for this long is closed gracefully.
    /// Default 2m.
    pub idle_timeout: Option<PromDuration>,
    /// Longest wait for the next piece of a request body; longer gets 408. Default 60s.
    pub body_read_timeout: Option<PromDuration>,
    /// Least average rate of a request body once it has been arriving for 10s, per second
    /// (`1KiB` = 1024 bytes/s); slower gets 408, so a trickling client cannot hold a request
    /// slot. `0B` turns it off. Default 1KiB.
    pub body_min_rate: Option<ByteSize>,
    /// Failed basic-auth logins per client address per minute; past it, that address gets 429
    /// with `Retry-After` (without a bcrypt check) until the minute is over. 0 = no limit.
    /// Default 10.
    pub max_failed_logins: Option<u32>,
    /// Longest a write to a client may make no progress (a client that stopped reading); the
    /// connection is then closed. Default 60s.
    pub send_timeout: Option<PromDuration>,
    /// Connections served at once; further connections wait in the accept queue. Default 10000.
    pub max_connections: Option<usize>,
    /// Requests served at once, over all connections (HTTP/2 multiplexes many on one); more get
    /// 503 with Retry-After. Default 4096.
    pub max_requests_in_flight: Option<usize>,
    /// Largest request head (request line and headers); larger gets 431. Default 64KiB.
    pub max_header_bytes: Option<ByteSize>,
    /// Most request headers; more gets 431. Default 100.
    pub max_headers: Option<usize>,
    /// Serve TLS (and optionally require client certificates) on the data listeners.
    pub tls: Option<Spanned<RawServerTls>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServerTls {
    /// PEM certificate chain, leaf first.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
    /// PEM CA bundle that client certificates must chain to (turns on mTLS).
    pub client_ca_file: Option<String>,
    /// `required` (default with a client CA) or `optional`.
    pub client_auth: Option<String>,
    /// Time a client has to complete the TLS handshake. Default 10s.
    pub handshake_timeout: Option<PromDuration>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUpstreamTls {
    /// PEM CA bundle to verify the upstream with, instead of the system roots.
    pub ca_file: Option<String>,
    /// Client certificate (PEM) for mTLS to the upstream; needs key_file.
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
    /// Name to verify the upstream's certificate against (and send as SNI), instead of the URL's host.
    pub server_name: Option<String>,
    /// Do not verify the upstream's certificate at all. Logged as a warning at start and reload.
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    /// Shown in logs and metrics-free access-log lines; never a secret.
    pub name: String,
    /// The tenant this caller acts as; a `|`-joined set needs a route with `federation: true`.
    pub tenant: String,
    pub basic_auth: Option<RawBasicAuth>,
    pub bearer_token: Option<RawBearerToken>,
    pub client_cert: Option<RawClientCert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBasicAuth {
    pub user: String,
    /// A bcrypt hash (`$2y$...`, as `htpasswd -B` writes).
    pub password_hash: Option<String>,
    /// An htpasswd file holding this user's bcrypt hash (NGINX users can bring theirs).
    pub htpasswd_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBearerToken {
    /// File holding the token (surrounding whitespace is ignored).
    pub file: Option<String>,
    /// Environment variable holding the token.
    pub env: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClientCert {
    /// Subject common name.
    pub cn: Option<String>,
    /// A DNS subject alternative name.
    pub dns: Option<String>,
    /// A URI subject alternative name (e.g. a SPIFFE ID).
    pub uri: Option<String>,
    /// An email subject alternative name.
    pub email: Option<String>,
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
    /// TLS settings for https upstreams.
    pub tls: Option<Spanned<RawUpstreamTls>>,
    /// Probe the upstream in the background; `/-/ready` is false while a probe fails.
    pub health_check: Option<Spanned<RawHealthCheck>>,
    /// Idle HTTP/1 connections kept open for reuse; past it the least recently used is closed.
    /// 0 dials a new connection for every request. Default 64.
    pub max_idle_connections: Option<usize>,
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
    /// The tenant sent as `X-Scope-OrgID`: a fixed tenant ID, `{from: identity}` or `{from: header}`.
    pub tenant: Spanned<RawTenant>,
    /// Forward the caller's `Authorization` header (removed by default).
    #[serde(default)]
    pub forward_authorization: bool,
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
    /// Replaces the whole path (an exact `match.path` only).
    pub path: Option<String>,
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

/// A route's tenant: a fixed ID, or a source.
#[derive(Debug)]
pub enum RawTenant {
    Fixed(String),
    Source(Box<RawTenantSource>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTenantSource {
    /// `identity` (the authenticated caller's tenant) or `header` (the client's X-Scope-OrgID,
    /// checked against `allow`; for trusted internal clients only).
    pub from: String,
    /// `from: identity`: only these identities may use the route (default: any identity).
    pub identities: Option<Vec<String>>,
    /// `from: header`: the tenants a client may name.
    pub allow: Option<Vec<String>>,
    /// Accept `|`-joined tenant sets (tenant federation). Default false.
    #[serde(default)]
    pub federation: bool,
    /// `from: header`: names a client may send instead of a tenant, e.g. `all: "team-a|team-b"`.
    pub aliases: Option<BTreeMap<String, String>>,
    /// `from: label`: the series labels that name the tenant, first present wins.
    pub labels: Option<Vec<String>>,
    /// `from: label`: for OTLP, the resource attributes that name the tenant.
    pub attributes: Option<Vec<String>>,
    /// `from: label`: the tenant of series without those labels.
    pub default: Option<String>,
    /// `from: label`: remove the label that named the tenant.
    #[serde(default)]
    pub remove_label: bool,
    /// `from: label`: put in front of the label value.
    pub prefix: Option<String>,
    /// `from: label`: `refuse` (403) or `default`, for a series naming a tenant it may not write.
    pub forbidden: Option<String>,
    /// `from: label`: most tenants in one request.
    pub max_tenants: Option<usize>,
}

impl<'de> Deserialize<'de> for RawTenant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTenant;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a tenant ID, or {from: identity} / {from: header, allow: [...]}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawTenant, E> {
                Ok(RawTenant::Fixed(v.to_owned()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawTenant, E> {
                Ok(RawTenant::Fixed(v.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<RawTenant, A::Error> {
                RawTenantSource::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|s| RawTenant::Source(Box::new(s)))
            }
        }
        d.deserialize_any(V)
    }
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
