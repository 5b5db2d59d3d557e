//! Tenant IDs and `X-Scope-OrgID` on routes that take the tenant from it (`a|b` sets included).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use http::{HeaderMap, HeaderValue};
use tenantgate::auth::Identities;
use tenantgate::tenant::{InvalidTenant, TENANT_HEADER, TenantError, TenantId, TenantSource};

fn tenant(s: &str) -> TenantId {
    match TenantId::parse(s) {
        Ok(t) => t,
        Err(e) => panic!("fixture tenant {s:?}: {e}"),
    }
}

/// Checks what a parse that succeeded promises.
fn check_parsed(s: &str, federation: bool, t: &TenantId) {
    assert_eq!(t.as_str(), s);
    assert_eq!(t.header_value().as_bytes(), s.as_bytes());
    assert_eq!(t.is_federated(), s.contains('|'));
    assert!(
        federation || !t.is_federated(),
        "{s:?} parsed as a set with federation off"
    );
    let members: Vec<&str> = s.split('|').collect();
    for (i, m) in members.iter().enumerate() {
        // Every member is a tenant on its own, and no member is listed twice.
        assert!(TenantId::parse(m).is_ok(), "member {m:?} of {s:?}");
        assert!(!members[..i].contains(m), "{s:?} lists {m:?} twice");
    }
}

pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let federation = flags & 1 != 0;
    if let Ok(s) = std::str::from_utf8(rest) {
        let single = TenantId::parse(s);
        let set = TenantId::parse_with(s, true);
        if let Ok(t) = &single {
            check_parsed(s, false, t);
        }
        if let Ok(t) = &set {
            check_parsed(s, true, t);
        }
        // A single ID is exactly a set of one.
        assert_eq!(
            single.is_ok(),
            set.is_ok() && !s.contains('|'),
            "{s:?}: {single:?} / {set:?}"
        );
        if s.contains('|') && set.is_ok() {
            assert_eq!(single.err(), Some(InvalidTenant::Federation));
        }
    }
    // The same bytes as a client's X-Scope-OrgID on a `from: header` route; a second header
    // when asked for, which must be refused.
    let Ok(value) = HeaderValue::from_bytes(rest) else {
        return;
    };
    let allow = ["team-a", "team-b", "c", "x.y"].map(tenant).to_vec();
    let aliases = BTreeMap::from([("alias".to_owned(), tenant("team-a"))]);
    let source = TenantSource::Header {
        allow: allow.clone(),
        federation,
        aliases,
    };
    let mut headers = HeaderMap::new();
    headers.append(TENANT_HEADER, value.clone());
    let twice = flags & 2 != 0;
    if twice {
        headers.append(TENANT_HEADER, value.clone());
    }
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let identities = Identities::default();
    let Some(resolved) = super::poll_once(source.resolve(&headers, None, client, &identities))
    else {
        panic!("resolving a header tenant waited");
    };
    match resolved {
        Ok(r) => {
            assert!(!twice, "two X-Scope-OrgID headers were accepted");
            assert!(federation || !r.tenant.is_federated());
            for m in r.tenant.as_str().split('|') {
                assert!(
                    allow.iter().any(|a| a.as_str() == m),
                    "{m:?} is not allowed but was accepted"
                );
            }
            if value.as_bytes() != b"alias" {
                assert_eq!(
                    r.tenant.as_str().as_bytes(),
                    value.as_bytes(),
                    "the tenant is not the header sent"
                );
            }
        }
        Err(TenantError::MissingHeader) => assert!(value.is_empty() && !twice),
        Err(_) => {}
    }
}
