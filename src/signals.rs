//! The signals tenantgate serves by: SIGTERM and SIGINT drain and stop, SIGHUP reloads.

use crate::server::Handle;

/// SIGTERM, SIGINT and SIGHUP, registered. Install them before binding: until a signal is
/// registered it has its default effect, which for all three is to end the process at once, so
/// a SIGTERM (or a `systemctl reload`) just after start would skip the drain.
pub struct Signals {
    #[cfg(unix)]
    streams: [tokio::signal::unix::Signal; 3],
}

impl Signals {
    /// Registers the handlers. Needs a running Tokio runtime.
    pub fn install() -> std::io::Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Signals {
                streams: [
                    signal(SignalKind::terminate())?,
                    signal(SignalKind::interrupt())?,
                    signal(SignalKind::hangup())?,
                ],
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    /// Resolves on SIGTERM or SIGINT; reloads on every SIGHUP meanwhile.
    pub async fn wait(self, handle: Handle) {
        #[cfg(unix)]
        {
            let [mut term, mut int, mut hup] = self.streams;
            loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!(signal = "SIGTERM", "received"); return; }
                    _ = int.recv() => { tracing::info!(signal = "SIGINT", "received"); return; }
                    _ = hup.recv() => { tracing::info!(signal = "SIGHUP", "reloading config"); let _ = handle.reload().await; }
                }
            }
        }
        #[cfg(not(unix))]
        {
            let _ = handle;
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
