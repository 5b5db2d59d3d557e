//! The open connections of a listener, for the two reasons tenantgate closes a connection that
//! did nothing wrong:
//!
//! - **Room.** The admin listener serves a few connections at a time. When they are all taken
//!   (idle keep-alive clients, or someone holding sockets open), the connection idle for longest
//!   is closed to make room, as NGINX closes reusable keep-alive connections when it runs out:
//!   health probes then get through instead of queueing behind idle sockets until they time out.
//! - **Trust.** A client certificate is checked once, at the handshake. When a reload changes what
//!   the data listener trusts (another client CA, client certificates no longer asked for), the
//!   connections whose certificate the new config would refuse are closed; a certificate identity
//!   must not outlive the trust it came from.
//!
//! Closing is graceful: a connection told to close finishes the requests it is serving (HTTP/1
//! answers with `Connection: close`, HTTP/2 sends GOAWAY), and one that never sent a request is
//! dropped at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use rustls::pki_types::CertificateDer;
use tokio::sync::Notify;

use crate::conn::mono_ms;

/// A client certificate chain as presented: the end entity first, then intermediates.
pub type Chain = Arc<[CertificateDer<'static>]>;

/// The open connections of one listener.
#[derive(Default)]
pub struct Registry {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, Entry>>,
}

struct Entry {
    /// [`mono_ms`] when the connection was accepted.
    opened: u64,
    /// [`mono_ms`] when its last request started, 0 before the first.
    activity: Arc<AtomicU64>,
    close: Arc<Notify>,
    chain: Option<Chain>,
}

impl Entry {
    /// When the connection last did something: its last request, or its accept.
    fn last_active(&self) -> u64 {
        self.activity.load(Ordering::Relaxed).max(self.opened)
    }
}

/// One connection's place in a [`Registry`]; dropping it (the connection ended) frees it.
pub struct Registration {
    id: u64,
    registry: Arc<Registry>,
    close: Arc<Notify>,
}

impl Registration {
    /// Notified once when the connection should close.
    pub fn close_signal(&self) -> Arc<Notify> {
        self.close.clone()
    }

    /// Records the client certificate chain the connection was verified with.
    pub fn set_chain(&self, chain: Chain) {
        if let Some(e) = self.registry.lock().get_mut(&self.id) {
            e.chain = Some(chain);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
    }
}

impl Registry {
    /// Adds a connection; `activity` is the stamp its service updates on every request.
    pub fn register(self: &Arc<Self>, activity: Arc<AtomicU64>) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        self.lock().insert(
            id,
            Entry {
                opened: mono_ms(),
                activity,
                close: close.clone(),
                chain: None,
            },
        );
        Registration {
            id,
            registry: self.clone(),
            close,
        }
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tells the connection idle for longest to close; `false` if there is none. A connection
    /// told once is not chosen again, so each call frees a different slot.
    pub fn close_idlest(&self) -> bool {
        let mut open = self.lock();
        let Some(id) = open
            .iter()
            .min_by_key(|(id, e)| (e.last_active(), **id))
            .map(|(id, _)| *id)
        else {
            return false;
        };
        if let Some(e) = open.remove(&id) {
            e.close.notify_one();
        }
        true
    }

    /// Tells every connection whose certificate chain `trusted` refuses to close, and returns
    /// how many. Connections without a certificate are left alone.
    pub fn close_untrusted(&self, trusted: impl Fn(&[CertificateDer<'static>]) -> bool) -> usize {
        // Verify outside the lock: signature checks take time, and connections come and go.
        let candidates: Vec<(u64, Chain)> = self
            .lock()
            .iter()
            .filter_map(|(id, e)| e.chain.clone().map(|c| (*id, c)))
            .collect();
        let refused: Vec<u64> = candidates
            .into_iter()
            .filter(|(_, chain)| !trusted(chain))
            .map(|(id, _)| id)
            .collect();
        let mut open = self.lock();
        let mut closed = 0;
        for id in refused {
            if let Some(e) = open.remove(&id) {
                e.close.notify_one();
                closed += 1;
            }
        }
        closed
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // Nothing panics while holding the lock; a poisoned map is still a consistent map.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamp(ms: u64) -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(ms))
    }

    #[tokio::test]
    async fn the_idlest_connection_is_told_first_and_once() {
        let r = Arc::new(Registry::default());
        let now = mono_ms();
        let busy = r.register(stamp(now + 200_000));
        let idle = r.register(stamp(now + 100_000));
        let never = r.register(stamp(0));
        assert_eq!(r.len(), 3);
        // `never` sent no request: its accept time counts, and it is the oldest.
        assert!(r.close_idlest());
        never.close_signal().notified().await;
        assert!(r.close_idlest());
        idle.close_signal().notified().await;
        assert!(r.close_idlest());
        busy.close_signal().notified().await;
        assert!(!r.close_idlest(), "every connection was already told");
        drop((busy, idle, never));
        assert!(r.is_empty());
    }

    #[tokio::test]
    async fn only_connections_with_a_refused_chain_are_closed() {
        let r = Arc::new(Registry::default());
        let good: Chain = Arc::from(vec![CertificateDer::from(vec![1u8])]);
        let bad: Chain = Arc::from(vec![CertificateDer::from(vec![2u8])]);
        let a = r.register(stamp(0));
        a.set_chain(good);
        let b = r.register(stamp(0));
        b.set_chain(bad);
        let _plain = r.register(stamp(0));
        let closed = r.close_untrusted(|chain| chain[0].as_ref() == [1u8]);
        assert_eq!(closed, 1);
        b.close_signal().notified().await;
        assert_eq!(r.len(), 2, "b left the registry, a and the plain one stay");
        assert_eq!(r.close_untrusted(|_| false), 1, "only a has a chain");
        a.close_signal().notified().await;
    }

    #[test]
    fn a_connection_that_ended_leaves_the_registry() {
        let r = Arc::new(Registry::default());
        let a = r.register(stamp(0));
        drop(a);
        assert!(r.is_empty());
        assert!(!r.close_idlest());
    }
}
