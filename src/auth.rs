//! Who is calling: basic auth (bcrypt, as `htpasswd -B` writes), bearer tokens, or a client
//! certificate, each mapped to one tenant in config.
//!
//! Secrets never leave this module: tokens are kept as SHA-256 digests and compared in constant
//! time, and only identity names (never credentials) reach logs. bcrypt is slow by design
//! (~50 ms at cost 10), so a successful check is remembered by a digest of the credentials, and
//! at most a few checks run at once on the blocking pool, so wrong passwords cannot eat the CPU.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderValue, header};
use sha2::{Digest, Sha256};

use crate::login_state::{
    BCRYPT_WAIT, CACHE_LIMIT, DEFAULT_MAX_FAILED_LOGINS, bcrypt_cost, bcrypt_slots, cache_key,
    failed_logins, verified,
};
use crate::tenant::TenantId;
use crate::tls::PeerNames;

/// A valid bcrypt hash nobody knows the password of, standing in for hashes that
/// `check --syntax-only` did not read.
const DUMMY_HASH: &str = "$2y$10$.vGA1O9wmRjrwAVXD98HNOgsNpDczlqm3Jq7KnEd1rVAGv3Fykk1a";
/// What a client certificate must carry to be this identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertName {
    Cn(String),
    Dns(String),
    Uri(String),
    Email(String),
}

impl CertName {
    fn matches(&self, names: &PeerNames) -> bool {
        let (want, have) = match self {
            CertName::Cn(w) => (w, &names.cn),
            CertName::Dns(w) => (w, &names.dns),
            CertName::Uri(w) => (w, &names.uri),
            CertName::Email(w) => (w, &names.email),
        };
        have.iter().any(|h| h == want)
    }
}

/// How an identity proves itself.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Basic {
        user: String,
        hash: String,
    },
    /// SHA-256 of the token.
    Bearer([u8; 32]),
    ClientCert(CertName),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { user, .. } => write!(f, "Basic({user:?})"),
            Credential::Bearer(_) => f.write_str("Bearer(<redacted>)"),
            Credential::ClientCert(c) => write!(f, "ClientCert({c:?})"),
        }
    }
}

impl Credential {
    pub fn kind(&self) -> &'static str {
        match self {
            Credential::Basic { .. } => "basic_auth",
            Credential::Bearer(_) => "bearer_token",
            Credential::ClientCert(_) => "client_cert",
        }
    }
}

/// A caller tenantgate can recognize.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: Arc<str>,
    pub tenant: TenantId,
    pub credential: Credential,
}

/// Why authentication failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required")]
    Missing,
    #[error("invalid credentials")]
    Invalid,
    /// Too many failed logins from this client address lately: retry after this long.
    #[error("too many failed logins from this address; retry in {}s", .0.as_secs().max(1))]
    Throttled(std::time::Duration),
    /// Too many credential checks queued: the caller should retry shortly.
    #[error("credential checks are queued; retry shortly")]
    Busy,
}

/// Every configured identity.
#[derive(Default)]
pub struct Identities {
    list: Vec<Arc<Identity>>,
    /// `server.max_failed_logins`: failed basic-auth logins per client address per minute
    /// before that address gets 429 (0: no limit).
    pub max_failed_logins: u32,
    /// The hash unknown users are checked against: the configured hash of the highest bcrypt
    /// cost, so an unknown user name costs at least what any known one does and timing tells no
    /// names apart. `None` without basic-auth identities.
    decoy: Option<String>,
}

impl std::fmt::Debug for Identities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|i| &i.name))
            .finish()
    }
}

/// Constant-time equality of two digests.
fn ct_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Standard base64 (RFC 4648 §4) as `Authorization: Basic` carries it: padded when written,
/// padding optional when read (some clients leave it out), other non-canonical input refused.
const BASIC_BASE64: base64::engine::GeneralPurpose = base64::engine::GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    base64::engine::GeneralPurposeConfig::new()
        .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
);

pub(crate) fn base64_encode(input: &[u8]) -> String {
    base64::Engine::encode(&BASIC_BASE64, input)
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    base64::Engine::decode(&BASIC_BASE64, s).ok()
}

/// What an `Authorization` header presents, before any credential is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presented<'a> {
    /// `Basic`: base64 of `user:password` (the user ends at the first `:`).
    Basic { user: String, password: String },
    /// `Bearer`: the token as sent, surrounding spaces trimmed.
    Bearer(&'a str),
}

/// Reads one `Authorization` header value: scheme (any case), one space, credentials. Anything
/// else, including basic credentials that are not base64 of UTF-8 `user:password`, is
/// [`AuthError::Invalid`]. Pure parsing, no secret compared: public so that it can be fuzzed.
pub fn parse_authorization(value: &HeaderValue) -> Result<Presented<'_>, AuthError> {
    let value = value.to_str().map_err(|_| AuthError::Invalid)?;
    let (scheme, rest) = value.split_once(' ').ok_or(AuthError::Invalid)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64_decode(rest).ok_or(AuthError::Invalid)?;
        let decoded = String::from_utf8(decoded).map_err(|_| AuthError::Invalid)?;
        let (user, password) = decoded.split_once(':').ok_or(AuthError::Invalid)?;
        Ok(Presented::Basic {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Ok(Presented::Bearer(rest))
    } else {
        Err(AuthError::Invalid)
    }
}

/// Reads a user's bcrypt hash from an htpasswd file.
pub fn htpasswd_hash(path: &std::path::Path, user: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", crate::config::shown_path(path)))?;
    let hash = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(u, _)| *u == user)
        .map(|(_, h)| h.trim().to_owned())
        .ok_or_else(|| format!("{}: no line for user {user:?}", path.display()))?;
    check_bcrypt_hash(&hash).map_err(|e| format!("{}: user {user:?}: {e}", path.display()))?;
    Ok(hash)
}

/// Only bcrypt hashes are accepted: the others htpasswd can write (MD5-crypt, SHA-1, crypt) are
/// too weak to protect a tenant.
pub fn check_bcrypt_hash(hash: &str) -> Result<(), String> {
    let ok = ["$2y$", "$2b$", "$2a$"].iter().any(|p| hash.starts_with(p)) && hash.len() == 60;
    if ok {
        Ok(())
    } else {
        Err(
            "not a bcrypt hash: create it with `htpasswd -B` (other htpasswd formats are too weak)"
                .into(),
        )
    }
}

/// A valid bcrypt hash nobody knows the password of: stands in for hashes that
/// `check --syntax-only` did not read.
pub fn placeholder_hash() -> String {
    DUMMY_HASH.to_owned()
}

/// SHA-256 of a token.
pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Identities {
    pub fn new(list: Vec<Identity>) -> Self {
        let decoy = list
            .iter()
            .filter_map(|i| match &i.credential {
                Credential::Basic { hash, .. } => Some(hash),
                _ => None,
            })
            .max_by_key(|hash| bcrypt_cost(hash))
            .cloned();
        Identities {
            list: list.into_iter().map(Arc::new).collect(),
            max_failed_logins: DEFAULT_MAX_FAILED_LOGINS,
            decoy,
        }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Identity>> {
        self.list.iter().find(|i| &*i.name == name)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Identity>> {
        self.list.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Identifies the caller from its `Authorization` header or, without one, its client
    /// certificate. `Ok(None)` never happens: no credential at all is [`AuthError::Missing`].
    /// Who the caller is: from `Authorization` (basic or bearer), else the client certificate.
    /// `client` is the caller's address, for the failed-login limit.
    pub async fn authenticate(
        &self,
        headers: &HeaderMap,
        peer: Option<&PeerNames>,
        client: IpAddr,
    ) -> Result<Arc<Identity>, AuthError> {
        let mut values = headers.get_all(header::AUTHORIZATION).iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(AuthError::Invalid);
            }
            return match parse_authorization(value)? {
                Presented::Basic { user, password } => self.basic(&user, &password, client).await,
                Presented::Bearer(token) => self.bearer(token),
            };
        }
        if let Some(names) = peer {
            return self
                .list
                .iter()
                .find(|i| matches!(&i.credential, Credential::ClientCert(c) if c.matches(names)))
                .cloned()
                .ok_or(AuthError::Invalid);
        }
        Err(AuthError::Missing)
    }

    fn bearer(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        let got = token_digest(token);
        // Compare against every token, without stopping early.
        let mut found = None;
        for i in &self.list {
            if let Credential::Bearer(want) = &i.credential
                && ct_eq(want, &got)
                && found.is_none()
            {
                found = Some(i.clone());
            }
        }
        found.ok_or(AuthError::Invalid)
    }

    async fn basic(
        &self,
        user: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<Arc<Identity>, AuthError> {
        let Some(decoy) = &self.decoy else {
            return Err(AuthError::Invalid);
        };
        let found = self
            .list
            .iter()
            .enumerate()
            .find_map(|(n, i)| match &i.credential {
                Credential::Basic { user: u, hash } if u == user => Some((n, hash.clone())),
                _ => None,
            });
        let (index, hash) = match found {
            Some((n, hash)) => (Some(n), hash),
            None => (None, decoy.clone()),
        };
        let key = cache_key(user, password, &hash);
        if let Some(n) = index
            && let Ok(cache) = verified().lock()
            && cache
                .get(&key)
                .is_some_and(|name| *name == self.list[n].name)
        {
            return Ok(self.list[n].clone());
        }
        // A cached login passed above; a flood of wrong ones from one address stops here, before
        // it takes the bcrypt slots everyone else's first logins need.
        if let Some(wait) =
            failed_logins().throttled(client, self.max_failed_logins, Instant::now())
        {
            return Err(AuthError::Throttled(wait));
        }
        let _permit = match tokio::time::timeout(BCRYPT_WAIT, bcrypt_slots().acquire_owned()).await
        {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => return Err(AuthError::Invalid),
            Err(_) => return Err(AuthError::Busy),
        };
        let password = password.to_owned();
        let ok =
            tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
        match (ok, index) {
            (true, Some(n)) => {
                if let Ok(mut cache) = verified().lock() {
                    if cache.len() >= CACHE_LIMIT {
                        cache.clear();
                    }
                    cache.insert(key, self.list[n].name.clone());
                }
                Ok(self.list[n].clone())
            }
            _ => {
                failed_logins().record(client, Instant::now());
                Err(AuthError::Invalid)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An address of its own for each check, so the failed-login limit of one test never
    /// touches another (the count is process-wide).
    fn fresh_addr() -> IpAddr {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        IpAddr::from(
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_be_bytes(),
        )
    }

    fn tenant(t: &str) -> TenantId {
        TenantId::parse_with(t, true).unwrap()
    }

    fn identities() -> Identities {
        let hash = bcrypt::hash("s3cret", 4).unwrap();
        Identities::new(vec![
            Identity {
                name: "prom".into(),
                tenant: tenant("team-a"),
                credential: Credential::Basic {
                    user: "prom".into(),
                    hash,
                },
            },
            Identity {
                name: "grafana".into(),
                tenant: tenant("team-b"),
                credential: Credential::Bearer(token_digest("tok-grafana-0123456789")),
            },
            Identity {
                name: "sidecar".into(),
                tenant: tenant("team-c"),
                credential: Credential::ClientCert(CertName::Cn("sidecar-eu".into())),
            },
        ])
    }

    #[test]
    fn unknown_users_are_checked_against_the_costliest_hash() {
        let basic = |name: &str, cost: u32| Identity {
            name: name.into(),
            tenant: tenant("t"),
            credential: Credential::Basic {
                user: name.into(),
                hash: bcrypt::hash("x", cost).unwrap(),
            },
        };
        let ids = Identities::new(vec![basic("cheap", 4), basic("dear", 6), basic("mid", 5)]);
        assert_eq!(ids.decoy.as_deref().map(bcrypt_cost), Some(6));
        assert_eq!(bcrypt_cost("$2y$12$abc"), 12);
        assert_eq!(bcrypt_cost("garbage"), 0);
    }

    fn auth(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[tokio::test]
    async fn basic_auth_maps_to_its_tenant_and_is_cached() {
        let _turn = BCRYPT_TESTS.lock().await;
        let ids = identities();
        let h = auth("Basic cHJvbTpzM2NyZXQ="); // prom:s3cret
        assert_eq!(
            ids.authenticate(&h, None, fresh_addr())
                .await
                .unwrap()
                .tenant
                .as_str(),
            "team-a"
        );
        assert!(verified().lock().unwrap().values().any(|n| &**n == "prom"));
        assert_eq!(
            ids.authenticate(&h, None, fresh_addr())
                .await
                .unwrap()
                .name
                .as_ref(),
            "prom"
        );
        assert_eq!(
            ids.authenticate(&auth("Basic cHJvbTp3cm9uZw=="), None, fresh_addr())
                .await,
            Err(AuthError::Invalid)
        ); // prom:wrong
        assert_eq!(
            ids.authenticate(&auth("Basic bm9ib2R5OnMzY3JldA=="), None, fresh_addr())
                .await,
            Err(AuthError::Invalid)
        ); // nobody:s3cret
        assert_eq!(
            ids.authenticate(&auth("Basic !!!"), None, fresh_addr())
                .await,
            Err(AuthError::Invalid)
        );
    }

    /// Tests that run bcrypt share the process-wide slots; they take turns.
    static BCRYPT_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn the_login_cache_survives_a_reload_and_a_full_queue_answers_busy() {
        let _turn = BCRYPT_TESTS.lock().await;
        let hash = bcrypt::hash("reload-pass", 4).unwrap();
        let make = || {
            Identities::new(vec![Identity {
                name: "reloader".into(),
                tenant: tenant("team-r"),
                credential: Credential::Basic {
                    user: "reloader".into(),
                    hash: hash.clone(),
                },
            }])
        };
        let h = auth("Basic cmVsb2FkZXI6cmVsb2FkLXBhc3M="); // reloader:reload-pass
        assert!(make().authenticate(&h, None, fresh_addr()).await.is_ok());
        // Every bcrypt slot taken: only a cached login can get through, and at once.
        let held = bcrypt_slots()
            .acquire_many_owned(crate::login_state::BCRYPT_PERMITS as u32)
            .await
            .unwrap();
        let rebuilt = make();
        assert_eq!(
            rebuilt
                .authenticate(&h, None, fresh_addr())
                .await
                .unwrap()
                .name
                .as_ref(),
            "reloader"
        );
        let wrong = auth("Basic cmVsb2FkZXI6bm9wZQ=="); // reloader:nope
        assert_eq!(
            rebuilt.authenticate(&wrong, None, fresh_addr()).await,
            Err(AuthError::Busy)
        );
        // An unknown user is checked against the decoy hash too: it queues like a wrong password
        // instead of failing fast and telling the caller the user does not exist.
        let unknown = auth("Basic bm9ib2R5Om5vcGU="); // nobody:nope
        assert_eq!(
            rebuilt.authenticate(&unknown, None, fresh_addr()).await,
            Err(AuthError::Busy)
        );
        drop(held);
    }

    #[tokio::test]
    async fn bearer_tokens_match_exactly() {
        let ids = identities();
        assert_eq!(
            ids.authenticate(&auth("Bearer tok-grafana-0123456789"), None, fresh_addr())
                .await
                .unwrap()
                .tenant
                .as_str(),
            "team-b"
        );
        assert_eq!(
            ids.authenticate(&auth("bearer tok-grafana-0123456789"), None, fresh_addr())
                .await
                .unwrap()
                .name
                .as_ref(),
            "grafana"
        );
        assert_eq!(
            ids.authenticate(&auth("Bearer tok-grafana-012345678"), None, fresh_addr())
                .await,
            Err(AuthError::Invalid)
        );
        assert_eq!(
            ids.authenticate(&auth("Digest x"), None, fresh_addr())
                .await,
            Err(AuthError::Invalid)
        );
    }

    #[tokio::test]
    async fn client_certificates_match_by_name_and_headers_win() {
        let ids = identities();
        let names = PeerNames {
            cn: vec!["sidecar-eu".into()],
            ..Default::default()
        };
        assert_eq!(
            ids.authenticate(&HeaderMap::new(), Some(&names), fresh_addr())
                .await
                .unwrap()
                .tenant
                .as_str(),
            "team-c"
        );
        let stranger = PeerNames {
            cn: vec!["stranger".into()],
            ..Default::default()
        };
        assert_eq!(
            ids.authenticate(&HeaderMap::new(), Some(&stranger), fresh_addr())
                .await,
            Err(AuthError::Invalid)
        );
        assert_eq!(
            ids.authenticate(&HeaderMap::new(), None, fresh_addr())
                .await,
            Err(AuthError::Missing)
        );
        // A wrong Authorization header is not rescued by a good certificate.
        assert_eq!(
            ids.authenticate(&auth("Bearer nope"), Some(&names), fresh_addr())
                .await,
            Err(AuthError::Invalid)
        );
    }

    #[tokio::test]
    async fn two_authorization_headers_are_refused() {
        let ids = identities();
        let mut h = auth("Bearer tok-grafana-0123456789");
        h.append(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic cHJvbTpzM2NyZXQ="),
        );
        assert_eq!(
            ids.authenticate(&h, None, fresh_addr()).await,
            Err(AuthError::Invalid)
        );
    }

    #[test]
    fn the_placeholder_hash_is_a_real_bcrypt_hash() {
        assert!(
            matches!(bcrypt::verify("anything", DUMMY_HASH), Ok(false)),
            "{:?}",
            bcrypt::verify("anything", DUMMY_HASH)
        );
    }

    #[test]
    fn base64_round_trips() {
        assert_eq!(base64_decode("cHJvbTpzM2NyZXQ=").unwrap(), b"prom:s3cret");
        assert_eq!(base64_decode("YQ").unwrap(), b"a");
        assert_eq!(base64_decode("YWI=").unwrap(), b"ab");
        assert!(base64_decode("a").is_none());
        assert!(base64_decode("a$bc").is_none());
        assert_eq!(
            base64_encode(b"Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(base64_encode(b"ab"), "YWI=");
        assert_eq!(base64_encode(b"abc"), "YWJj");
        assert_eq!(base64_encode(b""), "");
        for n in 0..8 {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 + 200) as u8).collect();
            assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
        }
    }

    #[test]
    fn only_bcrypt_hashes_are_accepted() {
        assert!(check_bcrypt_hash(&bcrypt::hash("x", 4).unwrap()).is_ok());
        assert!(check_bcrypt_hash("$apr1$abc$def").is_err());
        assert!(check_bcrypt_hash("{SHA}abc").is_err());
        assert!(check_bcrypt_hash(DUMMY_HASH).is_ok());
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let ids = identities();
        let dump = format!(
            "{:?} {:?}",
            ids,
            ids.iter().map(|i| &i.credential).collect::<Vec<_>>()
        );
        assert!(!dump.contains("tok-grafana"), "{dump}");
        assert!(!dump.contains("$2"), "{dump}");
    }
}
