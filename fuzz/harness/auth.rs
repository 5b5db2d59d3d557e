//! `Authorization` header parsing (basic and bearer), and identification by it.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::OnceLock;

use base64::Engine;
use http::{HeaderMap, HeaderValue, header};
use tenantgate::auth::{
    Credential, Identities, Identity, Presented, parse_authorization, token_digest,
};
use tenantgate::tenant::TenantId;

const TOKEN: &str = "s3cret-token";

/// One bearer identity and no basic one: identifying never runs bcrypt (no basic identity to
/// check against), so every input finishes in microseconds.
fn identities() -> &'static Identities {
    static IDS: OnceLock<Identities> = OnceLock::new();
    IDS.get_or_init(|| {
        let tenant = match TenantId::parse("team-a") {
            Ok(t) => t,
            Err(e) => panic!("fixture tenant: {e}"),
        };
        Identities::new(vec![Identity {
            name: "bot".into(),
            tenant,
            credential: Credential::Bearer(token_digest(TOKEN)),
        }])
    })
}

pub fn run(data: &[u8]) {
    let Ok(value) = HeaderValue::from_bytes(data) else {
        return;
    };
    let parsed = parse_authorization(&value);
    if let Ok(Presented::Basic { user, password }) = &parsed {
        assert!(!user.contains(':'), "the user name ends at the first ':'");
        // What a client would send for the same credentials reads back the same.
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        for scheme in ["Basic", "basic", "BASIC"] {
            let again = HeaderValue::from_str(&format!("{scheme} {encoded}"));
            let Ok(again) = again else {
                panic!("re-encoded credentials are not a header value");
            };
            assert_eq!(
                parse_authorization(&again),
                parsed,
                "{value:?} vs {again:?}"
            );
        }
    }
    if let Ok(Presented::Bearer(token)) = &parsed {
        assert_eq!(token.trim(), *token);
    }
    let mut headers = HeaderMap::new();
    headers.insert(header::AUTHORIZATION, value.clone());
    let client = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let Some(who) = super::poll_once(identities().authenticate(&headers, None, client)) else {
        panic!("identifying without a basic identity waited");
    };
    // Exactly the configured token identifies, and nothing else does.
    let is_token = parsed == Ok(Presented::Bearer(TOKEN));
    assert_eq!(who.is_ok(), is_token, "{value:?}: {who:?}");
}
