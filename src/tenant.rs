//! Tenant IDs and how a route chooses one.
//!
//! Mimir reads the tenant from `X-Scope-OrgID`. Its rules (dskit `tenant.ValidTenantID`): characters
//! `A-Z a-z 0-9 ! - _ . * ' ( )`, at most 150 bytes, not `.` or `..`, and `__mimir_cluster` is
//! reserved. `|` joins several tenants for a federated query, which lets a caller read every tenant
//! listed, so it is accepted only where a route explicitly allows federation.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue};

use crate::auth::{AuthError, Identities};
use crate::tls::PeerNames;

/// The header Mimir, Cortex and Loki read the tenant from.
pub const TENANT_HEADER: &str = "x-scope-orgid";

const MAX_TENANT_LEN: usize = 150;
const RESERVED: &str = "__mimir_cluster";

/// A validated tenant ID, or a `|`-joined federated set of them.
///
/// Cheap to clone; the header value is built once, at config load.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TenantId {
    id: Arc<str>,
    header: HeaderValue,
}

/// Why a string is not a tenant ID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidTenant {
    #[error("an empty tenant ID is not allowed")]
    Empty,
    #[error("'{0}' is not allowed")]
    BadChar(char),
    #[error("'|' is not allowed (tenant federation is off for this route)")]
    Federation,
    #[error("longer than {MAX_TENANT_LEN} bytes")]
    TooLong,
    #[error("\".\" and \"..\" are not allowed")]
    Dots,
    #[error("\"{RESERVED}\" is reserved by Mimir")]
    Reserved,
    #[error("tenant {0:?} is listed twice in the federated set")]
    Duplicate(String),
}

fn valid_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '!' | '-' | '_' | '.' | '*' | '\'' | '(' | ')')
}

fn validate_one(id: &str) -> Result<(), InvalidTenant> {
    if id.is_empty() {
        return Err(InvalidTenant::Empty);
    }
    if let Some(c) = id.chars().find(|c| !valid_char(*c)) {
        return Err(InvalidTenant::BadChar(c));
    }
    if id.len() > MAX_TENANT_LEN {
        return Err(InvalidTenant::TooLong);
    }
    if id == "." || id == ".." {
        return Err(InvalidTenant::Dots);
    }
    if id == RESERVED {
        return Err(InvalidTenant::Reserved);
    }
    Ok(())
}

impl TenantId {
    /// Parses a single tenant ID; `|` is rejected.
    pub fn parse(s: &str) -> Result<Self, InvalidTenant> {
        Self::parse_with(s, false)
    }

    /// Parses a tenant ID, accepting a `|`-joined federated set when `federation` is true.
    /// Every member of a set must itself be valid; empty members (`a||b`, `a|`) are rejected.
    pub fn parse_with(s: &str, federation: bool) -> Result<Self, InvalidTenant> {
        if s.contains('|') {
            if !federation {
                return Err(InvalidTenant::Federation);
            }
            for (i, part) in s.split('|').enumerate() {
                validate_one(part)?;
                // `a|a` names one tenant as a set: refused, so that a set is never two spellings
                // of the same tenant (Mimir would count and log it as a federated query).
                if s.split('|').take(i).any(|earlier| earlier == part) {
                    return Err(InvalidTenant::Duplicate(part.to_owned()));
                }
            }
        } else {
            validate_one(s)?;
        }
        // Only visible ASCII passed validation, so this cannot fail; map it anyway rather than panic.
        let header = HeaderValue::from_str(s).map_err(|_| InvalidTenant::Empty)?;
        Ok(TenantId {
            id: Arc::from(s),
            header,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The value sent upstream in `X-Scope-OrgID`.
    pub fn header_value(&self) -> &HeaderValue {
        &self.header
    }

    /// True when this is a federated set (`a|b`).
    pub fn is_federated(&self) -> bool {
        self.id.contains('|')
    }

    /// The tenant as a metric label value (shared, no copy).
    pub fn label(&self) -> Arc<str> {
        self.id.clone()
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({:?})", &*self.id)
    }
}

/// How a route decides the tenant of a request.
///
/// Every variant ends in one [`TenantId`] chosen by tenantgate; the client's own `X-Scope-OrgID` is
/// never forwarded as sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TenantSource {
    /// The same tenant for every request on the route.
    Fixed(TenantId),
    /// The authenticated caller's tenant.
    Identity {
        /// Only these identities may use the route; `None`: any identity.
        allowed: Option<Vec<Arc<str>>>,
        /// Whether an identity mapped to a `|`-joined set may use the route.
        federation: bool,
    },
    /// The client's own `X-Scope-OrgID`, for trusted internal clients: validated, then accepted
    /// only if every tenant in it is on the allow-list.
    Header {
        allow: Vec<TenantId>,
        federation: bool,
        /// Names a client may send instead of a tenant ID (resolved before the allow-list check).
        aliases: BTreeMap<String, TenantId>,
    },
    /// Each series' own labels, on remote write routes: the request is split into one request
    /// per tenant (`crate::push`).
    Label(Arc<LabelTenancy>),
}

/// `tenant: { from: label }`: the tenant of each series comes from its labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelTenancy {
    /// The labels that name the tenant: the first one a series has wins, in this order.
    pub labels: Vec<String>,
    /// The same for OTLP: resource attributes (string values), e.g. `service.namespace`.
    pub attributes: Vec<String>,
    /// For series with none of them (and, with `forbidden_to_default`, for series naming a
    /// tenant they may not write); without one such a request is refused.
    pub default: Option<TenantId>,
    /// Removes the label that named the tenant from the series.
    pub remove_label: bool,
    /// Put in front of the label value to make the tenant ID.
    pub prefix: String,
    /// The tenants series may name; `None`: those of the caller's identity.
    pub allow: Option<Vec<TenantId>>,
    /// Callers must authenticate as one of these, and each writes only to its own tenants (the
    /// members of its tenant set); `None`: no authentication (`allow` then bounds the tenants).
    pub identities: Option<Vec<Arc<str>>>,
    /// A series naming a tenant it may not write goes to the default instead of failing the
    /// request with a 403.
    pub forbidden_to_default: bool,
    /// Most tenants in one request.
    pub max_tenants: usize,
}

impl LabelTenancy {
    /// The caller, authenticated, on a route that names its callers; `None` on one that does
    /// not (its `allow` list bounds the tenants).
    pub async fn caller(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerNames>,
        client: std::net::IpAddr,
        identities: &Identities,
    ) -> Result<Option<Arc<crate::auth::Identity>>, TenantError> {
        let Some(allowed) = &self.identities else {
            return Ok(None);
        };
        let id = Box::pin(identities.authenticate(headers, peer, client))
            .await
            .map_err(TenantError::Unauthenticated)?;
        if !allowed.iter().any(|a| *a == id.name) {
            return Err(TenantError::IdentityForbidden {
                identity: id.name.clone(),
                message: format!("identity {:?} may not use this route", &*id.name),
            });
        }
        Ok(Some(id))
    }
}

/// How the tenant of one request was chosen, for the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantOrigin {
    /// Fixed in the route's config.
    Route,
    /// Mapped from the caller's identity.
    Identity,
    /// Taken from the client's header and checked against the allow-list.
    Header,
    /// From each series' labels; the request was split by tenant.
    Label,
}

impl TenantOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantOrigin::Route => "route",
            TenantOrigin::Identity => "identity",
            TenantOrigin::Header => "header",
            TenantOrigin::Label => "label",
        }
    }
}

/// The tenant chosen for one request, and how.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub tenant: TenantId,
    pub origin: TenantOrigin,
    /// The identity that authenticated, if any (its name, never its credential).
    pub identity: Option<Arc<str>>,
}

/// Why no tenant could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TenantError {
    /// No or wrong credentials (401, with a challenge).
    #[error("{0}")]
    Unauthenticated(AuthError),
    /// Authenticated, or trusted, but not allowed here (403).
    #[error("{0}")]
    Forbidden(String),
    /// An identity that authenticated but may not use this route (403); it is logged by name.
    #[error("{message}")]
    IdentityForbidden { identity: Arc<str>, message: String },
    /// The client's X-Scope-OrgID is missing on a header route (401, like Mimir).
    #[error("no org id: this route takes the tenant from X-Scope-OrgID")]
    MissingHeader,
    /// The client's X-Scope-OrgID is malformed (400).
    #[error("{0}")]
    BadHeader(String),
}

impl TenantSource {
    /// Resolves the tenant of one request from its headers and, for certificate identities, the
    /// connection's client certificate.
    pub async fn resolve(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerNames>,
        client: std::net::IpAddr,
        identities: &Identities,
    ) -> Result<Resolved, TenantError> {
        match self {
            TenantSource::Identity {
                allowed,
                federation,
            } => {
                identity_tenant(
                    allowed.as_deref(),
                    *federation,
                    headers,
                    peer,
                    client,
                    identities,
                )
                .await
            }
            // Every other source waits for nothing.
            other => other.resolve_now(headers).unwrap_or_else(|| {
                Err(TenantError::Forbidden(
                    "this route takes the tenant from the caller's identity".into(),
                ))
            }),
        }
    }

    /// [`TenantSource::resolve`] for the sources that wait for nothing: every source but
    /// `Identity`, whose credential check may queue (`None`). The request pipeline takes this
    /// path without a future of its own.
    pub fn resolve_now(&self, headers: &HeaderMap) -> Option<Result<Resolved, TenantError>> {
        Some(match self {
            TenantSource::Fixed(t) => Ok(Resolved {
                tenant: t.clone(),
                origin: TenantOrigin::Route,
                identity: None,
            }),
            TenantSource::Identity { .. } => return None,
            TenantSource::Header {
                allow,
                federation,
                aliases,
            } => header_tenant(headers, allow, *federation, aliases),
            // Not one tenant per request: `crate::push` splits these, after `LabelTenancy::caller`.
            TenantSource::Label(_) => Err(TenantError::Forbidden(
                "this route takes the tenant from each series' labels; it accepts remote write only"
                    .into(),
            )),
        })
    }

    /// The tenants this source can produce, for `tenantgate check` (never a secret).
    pub fn describe(&self) -> String {
        match self {
            TenantSource::Fixed(t) => t.to_string(),
            TenantSource::Identity {
                allowed: None,
                federation,
            } => format!(
                "from the caller's identity (any identity{})",
                if *federation {
                    ", federation allowed"
                } else {
                    ""
                }
            ),
            TenantSource::Identity {
                allowed: Some(a),
                federation,
            } => format!(
                "from the caller's identity ({}{})",
                a.iter().map(|n| n.as_ref()).collect::<Vec<_>>().join(", "),
                if *federation {
                    "; federation allowed"
                } else {
                    ""
                }
            ),
            TenantSource::Header {
                allow,
                federation,
                aliases,
            } => {
                let mut s = format!(
                    "from X-Scope-OrgID, allowed: {}",
                    allow
                        .iter()
                        .map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                if *federation {
                    s.push_str("; federation allowed");
                }
                if !aliases.is_empty() {
                    s.push_str(&format!(
                        "; aliases: {}",
                        aliases
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
                s
            }
            TenantSource::Label(l) => {
                let mut s = format!("from each series' label {}", l.labels.join(" or "));
                if !l.prefix.is_empty() {
                    s.push_str(&format!(" (prefixed {:?})", l.prefix));
                }
                if let Some(d) = &l.default {
                    s.push_str(&format!(", default {d}"));
                }
                if let Some(a) = &l.allow {
                    let a: Vec<&str> = a.iter().map(TenantId::as_str).collect();
                    s.push_str(&format!(", allowed: {}", a.join(", ")));
                }
                if let Some(ids) = &l.identities {
                    let ids: Vec<&str> = ids.iter().map(|n| n.as_ref()).collect();
                    s.push_str(&format!(
                        ", callers: {} (each to its own tenants)",
                        ids.join(", ")
                    ));
                }
                s.push_str("; split into one request per tenant");
                s
            }
        }
    }

    /// Every tenant this source can produce (for probing each): bounded by config.
    pub fn possible_tenants(&self, identities: &Identities) -> Vec<TenantId> {
        let mut out: Vec<TenantId> = match self {
            TenantSource::Fixed(t) => vec![t.clone()],
            TenantSource::Identity {
                allowed,
                federation,
            } => identities
                .iter()
                .filter(|i| allowed.as_ref().is_none_or(|a| a.contains(&i.name)))
                .filter(|i| *federation || !i.tenant.is_federated())
                .map(|i| i.tenant.clone())
                .collect(),
            TenantSource::Header { allow, .. } => allow.clone(),
            TenantSource::Label(l) => match &l.allow {
                Some(a) => a.clone(),
                None => identities
                    .iter()
                    .filter(|i| l.identities.as_ref().is_some_and(|a| a.contains(&i.name)))
                    .flat_map(|i| {
                        i.tenant
                            .as_str()
                            .split('|')
                            .filter_map(|m| TenantId::parse(m).ok())
                            .collect::<Vec<_>>()
                    })
                    .chain(l.default.clone())
                    .collect(),
            },
        };
        out.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        out.dedup();
        out
    }
}

/// The tenant of an identity route: the caller's, once its credential checks out.
async fn identity_tenant(
    allowed: Option<&[Arc<str>]>,
    federation: bool,
    headers: &HeaderMap,
    peer: Option<&PeerNames>,
    client: std::net::IpAddr,
    identities: &Identities,
) -> Result<Resolved, TenantError> {
    // Boxed: a login's future is large, and every request's future would carry its
    // size (and move it) if it were inline, fixed-tenant routes included.
    let id = Box::pin(identities.authenticate(headers, peer, client))
        .await
        .map_err(TenantError::Unauthenticated)?;
    if let Some(allowed) = allowed
        && !allowed.iter().any(|a| *a == id.name)
    {
        return Err(TenantError::IdentityForbidden {
            identity: id.name.clone(),
            message: format!("identity {:?} may not use this route", &*id.name),
        });
    }
    if id.tenant.is_federated() && !federation {
        return Err(TenantError::IdentityForbidden {
            identity: id.name.clone(),
            message: format!(
                "identity {:?} maps to several tenants; this route does not allow federation",
                &*id.name
            ),
        });
    }
    Ok(Resolved {
        tenant: id.tenant.clone(),
        origin: TenantOrigin::Identity,
        identity: Some(id.name.clone()),
    })
}

/// The tenant a header route takes from the client's `X-Scope-OrgID`, checked against its
/// allow-list.
fn header_tenant(
    headers: &HeaderMap,
    allow: &[TenantId],
    federation: bool,
    aliases: &BTreeMap<String, TenantId>,
) -> Result<Resolved, TenantError> {
    let mut values = headers.get_all(TENANT_HEADER).iter();
    let value = values.next().ok_or(TenantError::MissingHeader)?;
    if values.next().is_some() {
        return Err(TenantError::BadHeader(
            "several X-Scope-OrgID headers; send exactly one".into(),
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| TenantError::BadHeader("X-Scope-OrgID is not ASCII".into()))?;
    if value.is_empty() {
        return Err(TenantError::MissingHeader);
    }
    let tenant = match aliases.get(value) {
        Some(t) => t.clone(),
        None => TenantId::parse_with(value, federation).map_err(|e| match e {
            InvalidTenant::Federation => TenantError::Forbidden(
                "tenant federation ('|') is not allowed on this route".into(),
            ),
            e => TenantError::BadHeader(format!("X-Scope-OrgID is not a valid tenant ID: {e}")),
        })?,
    };
    if tenant.is_federated() && !federation {
        return Err(TenantError::Forbidden(
            "tenant federation ('|') is not allowed on this route".into(),
        ));
    }
    for member in tenant.as_str().split('|') {
        if !allow.iter().any(|a| a.as_str() == member) {
            return Err(TenantError::Forbidden(format!(
                "tenant {member:?} is not allowed on this route"
            )));
        }
    }
    Ok(Resolved {
        tenant,
        origin: TenantOrigin::Header,
        identity: None,
    })
}

#[cfg(test)]
#[path = "tenant_tests.rs"]
mod tests;
