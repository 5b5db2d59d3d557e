//! One client connection's life, bounded in time at every stage.
//!
//! hyper-util's auto builder reads the first bytes to tell HTTP/2 (which starts with a fixed
//! preface) from HTTP/1, with no deadline of its own: a client that connects and sends nothing,
//! or only part of the preface, would hold a connection slot forever. So tenantgate reads those
//! bytes itself under `server.header_read_timeout` and replays them to hyper. After that, HTTP/1
//! is bounded by hyper's header-read timeout; HTTP/2 has no idle timeout in hyper, so [`drive`]
//! shuts a connection down gracefully when no request has started on it for
//! `server.idle_timeout` (streams in progress still finish), or when the server drains.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes};
use hyper_util::server::graceful::GracefulConnection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Milliseconds on a monotonic clock shared by the process, for activity stamps in atomics.
/// Never 0, which [`drive`] reads as "no request yet".
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Reads until it is clear whether the client speaks HTTP/2 (the full preface) or not (the
/// first byte that differs), within `deadline`. Returns what was read, or `None` if the client
/// closed, failed, or took too long.
pub async fn read_preface<S: AsyncRead + Unpin>(
    stream: &mut S,
    deadline: Duration,
) -> Option<Bytes> {
    let read = async {
        let mut buf = [0u8; 24];
        let mut n = 0;
        loop {
            let got = stream.read(&mut buf[n..]).await.ok()?;
            if got == 0 {
                return None;
            }
            n += got;
            if n == buf.len() || buf[..n] != H2_PREFACE[..n] {
                return Some(Bytes::copy_from_slice(&buf[..n]));
            }
        }
    };
    tokio::time::timeout(deadline, read).await.ok().flatten()
}

pin_project_lite::pin_project! {
    /// A stream that first yields bytes already read from it.
    pub struct Replay<S> {
        prefix: Bytes,
        #[pin]
        inner: S,
    }
}

impl<S> Replay<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Replay { prefix, inner }
    }
}

impl<S: AsyncRead> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        this.inner.poll_read(cx, buf)
    }
}

impl<S: AsyncWrite> AsyncWrite for Replay<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().inner.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

/// How long a connection may wait, at each stage.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// For the protocol preface, the first request, and (in hyper) each HTTP/1 request head.
    pub header_read: Duration,
    /// Between requests on an HTTP/2 connection.
    pub idle: Duration,
}

/// Runs a connection to its end: shuts it down gracefully (in-flight requests finish) when the
/// server drains, when no first request arrives within `limits.header_read` (an HTTP/2 client that sent its
/// preface and then nothing), or when no request has started for `limits.idle` after that.
/// `activity` holds the [`mono_ms`] stamp of the last request start, 0 before the first.
pub async fn drive<C: GracefulConnection>(
    conn: C,
    mut stop: watch::Receiver<bool>,
    limits: Limits,
    activity: Arc<AtomicU64>,
) -> Result<(), C::Error> {
    let (first, idle) = (limits.header_read, limits.idle);
    let mut conn = std::pin::pin!(conn);
    let opened = mono_ms();
    let mut closing = false;
    if *stop.borrow() {
        conn.as_mut().graceful_shutdown();
        closing = true;
    }
    let (first_ms, idle_ms) = (first.as_millis() as u64, idle.as_millis() as u64);
    let mut tick = tokio::time::interval((first.min(idle) / 4).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            result = conn.as_mut() => return result,
            _ = stop.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = tick.tick(), if !closing => {
                let last = activity.load(Ordering::Relaxed);
                if last == 0 && mono_ms().saturating_sub(opened) >= first_ms {
                    // No request ever started, so nothing is in flight: drop the connection. A
                    // graceful shutdown would wait for an HTTP/2 handshake that never comes.
                    return Ok(());
                }
                if last != 0 && mono_ms().saturating_sub(last) >= idle_ms {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn the_preface_decides_as_soon_as_it_can() {
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(
            read_preface(&mut server, Duration::from_secs(1))
                .await
                .unwrap(),
            Bytes::from_static(b"GET / HTTP/1.1\r\n")
        );

        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(H2_PREFACE).await.unwrap();
        assert_eq!(
            read_preface(&mut server, Duration::from_secs(1))
                .await
                .unwrap(),
            Bytes::from_static(H2_PREFACE)
        );
    }

    #[tokio::test]
    async fn a_silent_or_half_preface_client_is_dropped_at_the_deadline() {
        let (_client, mut server) = tokio::io::duplex(64);
        assert!(
            read_preface(&mut server, Duration::from_millis(100))
                .await
                .is_none()
        );
        let (mut client, mut server) = tokio::io::duplex(64);
        client.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
        assert!(
            read_preface(&mut server, Duration::from_millis(100))
                .await
                .is_none()
        );
    }

    #[tokio::test]
    async fn replay_yields_the_prefix_then_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut r = Replay::new(Bytes::from_static(b"hello"), server);
        let mut out = String::new();
        r.read_to_string(&mut out).await.unwrap();
        assert_eq!(out, "hello world");
    }
}
