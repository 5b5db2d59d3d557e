//! Basic-auth state shared by every config a process loads (a reload rebuilds the identities
//! but keeps these): the cache of verified logins, the bcrypt slots, and the count of failed
//! logins per client address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

/// Remembered successful basic-auth checks (cleared when full).
pub(crate) const CACHE_LIMIT: usize = 10_000;
/// bcrypt checks running at once.
pub(crate) const BCRYPT_PERMITS: usize = 4;
/// Longest wait for a bcrypt slot; beyond it the caller gets 503 and retries, instead of a
/// queue of wrong passwords delaying everyone.
pub(crate) const BCRYPT_WAIT: Duration = Duration::from_secs(2);

/// Successful basic-auth checks, by a digest of user, password and hash, to the identity's name.
/// Process-wide, so a reload (which rebuilds [`Identities`]) keeps it: the hash is part of the
/// key, so a changed password never matches an old entry.
pub(crate) fn verified() -> &'static Mutex<HashMap<[u8; 32], Arc<str>>> {
    static VERIFIED: std::sync::OnceLock<Mutex<HashMap<[u8; 32], Arc<str>>>> =
        std::sync::OnceLock::new();
    VERIFIED.get_or_init(|| Mutex::new(HashMap::new()))
}

/// bcrypt slots, process-wide for the same reason.
pub(crate) fn bcrypt_slots() -> Arc<Semaphore> {
    static SLOTS: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    SLOTS
        .get_or_init(|| Arc::new(Semaphore::new(BCRYPT_PERMITS)))
        .clone()
}

/// bcrypt reads only this many bytes of a password.
const BCRYPT_MAX_PASSWORD: usize = 72;

/// The login cache's key. The password counts only as far as bcrypt reads it, so a user whose
/// password is right cannot fill the cache with variants that differ after byte 72: each
/// identity has one entry, and wrong passwords have none.
pub(crate) fn cache_key(user: &str, password: &str, hash: &str) -> [u8; 32] {
    let effective = &password.as_bytes()[..password.len().min(BCRYPT_MAX_PASSWORD)];
    let mut h = Sha256::new();
    h.update(user.as_bytes());
    h.update([0]);
    h.update(effective);
    h.update([0]);
    h.update(hash.as_bytes());
    h.finalize().into()
}

/// The cost of a bcrypt hash (`$2b$12$...` -> 12); 0 when it cannot be read.
pub(crate) fn bcrypt_cost(hash: &str) -> u32 {
    hash.split('$')
        .nth(2)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Default `server.max_failed_logins`: failed basic-auth logins an address may have within
/// [`FAILURE_WINDOW`]; past it, further attempts from there get 429 with `Retry-After` until
/// the window ends.
pub const DEFAULT_MAX_FAILED_LOGINS: u32 = 10;
const FAILURE_WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at once; beyond it expired entries go, then all (a flood from many
/// addresses resets the count rather than growing memory).
const MAX_TRACKED: usize = 10_000;

/// Failed logins per client address: (count, start of the window).
#[derive(Default)]
pub struct FailedLogins {
    by_addr: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl FailedLogins {
    /// How long `addr` must wait, if it has failed too often lately.
    pub fn throttled(&self, addr: IpAddr, limit: u32, now: Instant) -> Option<Duration> {
        if limit == 0 {
            return None;
        }
        let map = self.by_addr.lock().ok()?;
        let &(count, since) = map.get(&addr)?;
        let age = now.saturating_duration_since(since);
        (count >= limit && age < FAILURE_WINDOW).then(|| FAILURE_WINDOW - age)
    }

    pub fn record(&self, addr: IpAddr, now: Instant) {
        let Ok(mut map) = self.by_addr.lock() else {
            return;
        };
        if map.len() >= MAX_TRACKED && !map.contains_key(&addr) {
            map.retain(|_, (_, since)| now.saturating_duration_since(*since) < FAILURE_WINDOW);
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        let entry = map.entry(addr).or_insert((0, now));
        if now.saturating_duration_since(entry.1) >= FAILURE_WINDOW {
            *entry = (0, now);
        }
        entry.0 += 1;
    }
}

/// Process-wide, like the login cache: a reload does not forget an attacker.
pub(crate) fn failed_logins() -> &'static FailedLogins {
    static FAILED: std::sync::OnceLock<FailedLogins> = std::sync::OnceLock::new();
    FAILED.get_or_init(FailedLogins::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_with_too_many_failed_logins_waits_out_the_window() {
        let f = FailedLogins::default();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(f.throttled(a, 10, t0), None);
            f.record(a, t0);
        }
        let wait = f.throttled(a, 10, t0 + Duration::from_secs(20)).unwrap();
        assert_eq!(wait, Duration::from_secs(40));
        assert_eq!(f.throttled(a, 0, t0), None, "0 is no limit");
        assert_eq!(
            f.throttled(b, 10, t0),
            None,
            "another address is not affected"
        );
        assert_eq!(
            f.throttled(a, 10, t0 + FAILURE_WINDOW),
            None,
            "the window ends"
        );
    }

    #[test]
    fn password_variants_bcrypt_cannot_tell_apart_share_one_cache_entry() {
        let long = "p".repeat(72);
        let a = cache_key("u", &format!("{long}variant-1"), "$2b$04$h");
        let b = cache_key("u", &format!("{long}variant-2"), "$2b$04$h");
        assert_eq!(a, b);
        assert_ne!(
            cache_key("u", "short-1", "h"),
            cache_key("u", "short-2", "h")
        );
        assert_ne!(cache_key("u", "x", "h1"), cache_key("u", "x", "h2"));
    }
}
