//! Tenant IDs and how a route chooses one.
//!
//! Mimir reads the tenant from `X-Scope-OrgID`. Its rules (dskit `tenant.ValidTenantID`): characters
//! `A-Z a-z 0-9 ! - _ . * ' ( )`, at most 150 bytes, not `.` or `..`, and `__mimir_cluster` is
//! reserved. `|` joins several tenants for a federated query, which lets a caller read every tenant
//! listed, so it is accepted only where a route explicitly allows federation.

use std::fmt;
use std::sync::Arc;

use http::HeaderValue;

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
            for part in s.split('|') {
                validate_one(part)?;
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
}

/// How the tenant of one request was chosen, for the access log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantOrigin {
    /// Fixed in the route's config.
    Route,
}

impl TenantOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantOrigin::Route => "route",
        }
    }
}

impl TenantSource {
    /// Resolves the tenant of one request.
    pub fn resolve(&self) -> (&TenantId, TenantOrigin) {
        match self {
            TenantSource::Fixed(t) => (t, TenantOrigin::Route),
        }
    }

    /// A short description for `tenantgate check`.
    pub fn describe(&self) -> String {
        match self {
            TenantSource::Fixed(t) => t.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_character_mimir_accepts() {
        let all = "AZaz09!-_.*'()";
        assert_eq!(TenantId::parse(all).unwrap().as_str(), all);
        assert!(TenantId::parse("team-a").is_ok());
        assert!(TenantId::parse(&"a".repeat(150)).is_ok());
    }

    #[test]
    fn rejects_characters_mimir_rejects() {
        for (s, c) in [
            ("a b", ' '),
            ("a/b", '/'),
            ("a:b", ':'),
            ("té", 'é'),
            ("a\nb", '\n'),
            ("a,b", ','),
        ] {
            assert_eq!(TenantId::parse(s), Err(InvalidTenant::BadChar(c)), "{s:?}");
        }
    }

    #[test]
    fn rejects_empty_long_dots_and_reserved() {
        assert_eq!(TenantId::parse(""), Err(InvalidTenant::Empty));
        assert_eq!(
            TenantId::parse(&"a".repeat(151)),
            Err(InvalidTenant::TooLong)
        );
        assert_eq!(TenantId::parse("."), Err(InvalidTenant::Dots));
        assert_eq!(TenantId::parse(".."), Err(InvalidTenant::Dots));
        assert!(TenantId::parse("...").is_ok());
        assert_eq!(
            TenantId::parse("__mimir_cluster"),
            Err(InvalidTenant::Reserved)
        );
    }

    #[test]
    fn federation_only_when_allowed() {
        assert_eq!(TenantId::parse("a|b"), Err(InvalidTenant::Federation));
        let t = TenantId::parse_with("a|b", true).unwrap();
        assert!(t.is_federated());
        assert_eq!(t.header_value(), "a|b");
        assert_eq!(
            TenantId::parse_with("a||b", true),
            Err(InvalidTenant::Empty)
        );
        assert_eq!(TenantId::parse_with("a|", true), Err(InvalidTenant::Empty));
        assert_eq!(TenantId::parse_with("a|..", true), Err(InvalidTenant::Dots));
    }

    #[test]
    fn error_messages_name_the_problem() {
        assert_eq!(
            InvalidTenant::Federation.to_string(),
            "'|' is not allowed (tenant federation is off for this route)"
        );
        assert_eq!(
            InvalidTenant::BadChar('/').to_string(),
            "'/' is not allowed"
        );
    }
}
