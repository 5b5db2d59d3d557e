//! One client connection's life, bounded in time at every stage.
//!
//! The first bytes tell HTTP/2 (which starts with a fixed preface) from HTTP/1. tenantgate reads
//! them itself under `server.header_read_timeout` (a client that connects and sends nothing, or
//! only part of the preface, must not hold a connection slot forever), replays them to hyper, and
//! hands the connection to hyper's HTTP/1 or HTTP/2 server directly. [`crate::drive`] then
//! bounds how long a connection may sit idle, and [`crate::park`] frees an idle HTTP/1
//! connection's buffers.
//!
//! Once a request is under way: its body must keep coming ([`TimedBody`]: at most
//! `server.body_read_timeout` between two pieces and, after a grace period, at least
//! `server.body_min_rate` on average, so a client trickling a byte a second cannot hold a request
//! slot), and the client must keep reading what is sent ([`WriteDeadline`]: a write that makes no
//! progress for `server.send_timeout` fails the connection, like NGINX's `send_timeout`). A remote
//! read that streams slowly but steadily is never cut: both bound stalls, not durations.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// What every HTTP/2 connection starts with (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub use crate::time::mono_ms;

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
        // An error the inner stream returned while the prefix was being handed out.
        error: Option<std::io::Error>,
        #[pin]
        inner: S,
    }
}

impl<S> Replay<S> {
    pub fn new(prefix: Bytes, inner: S) -> Self {
        Replay {
            prefix,
            error: None,
            inner,
        }
    }

    /// The stream back, once the prefix has been read (an HTTP/1 connection being parked:
    /// hyper has read the prefix before it can go idle).
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead> AsyncRead for Replay<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.project();
        if let Some(e) = this.error.take() {
            return Poll::Ready(Err(e));
        }
        if this.prefix.is_empty() {
            return this.inner.poll_read(cx, buf);
        }
        let n = this.prefix.len().min(buf.remaining());
        buf.put_slice(&this.prefix[..n]);
        this.prefix.advance(n);
        if this.prefix.is_empty() {
            // An empty view still holds its allocation (hyper's whole read buffer, for a
            // connection resumed after parking): let it go.
            *this.prefix = Bytes::new();
        }
        // The rest of what already arrived joins the prefix in the same read. Handed the prefix
        // alone, hyper would find a partial head in its 8 KiB read buffer and reserve 8 KiB more
        // for the next read, doubling the buffer every connection keeps for its whole life.
        // The prefix is a complete answer to this read whatever the inner read says (data,
        // nothing yet, or EOF, which the next read sees again); an error is kept for the next.
        if this.prefix.is_empty()
            && buf.remaining() > 0
            && let Poll::Ready(Err(e)) = this.inner.poll_read(cx, buf)
        {
            *this.error = Some(e);
        }
        Poll::Ready(Ok(()))
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
    /// How a request body must keep coming.
    pub body: BodyPace,
    /// Longest a write to the client may make no progress.
    pub send: Duration,
}

/// How a request body must keep coming.
#[derive(Debug, Clone, Copy)]
pub struct BodyPace {
    /// Longest wait for the next piece.
    pub idle: Duration,
    /// Least average rate in bytes per second, checked once [`BodyPace::grace`] has passed.
    pub min_rate: u64,
    pub grace: Duration,
}

/// The client sent its request body too slowly (see [`BodyPace`]).
#[derive(Debug, thiserror::Error)]
pub enum BodyTooSlow {
    #[error("no part of the request body arrived for {0:?} (server.body_read_timeout)")]
    Idle(Duration),
    #[error(
        "the request body arrived at {rate} bytes/s, below server.body_min_rate ({min} bytes/s)"
    )]
    Rate { rate: u64, min: u64 },
}

pin_project_lite::pin_project! {
    /// A request body held to a [`BodyPace`]. The timer is allocated only when the client makes
    /// us wait, as most bodies arrive at once, and then kept for the body's life.
    pub struct TimedBody<B> {
        #[pin]
        inner: B,
        pace: BodyPace,
        // Time spent waiting for the client (from a `Pending` to the next piece): the rate is
        // judged on that alone, so a body read late (a slow upstream connect, a queue) is not
        // blamed on the client.
        waited: Duration,
        waiting_since: Option<tokio::time::Instant>,
        bytes: u64,
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
    }
}

impl<B> TimedBody<B> {
    pub fn new(inner: B, pace: BodyPace) -> Self {
        TimedBody {
            inner,
            pace,
            waited: Duration::ZERO,
            waiting_since: None,
            bytes: 0,
            timer: None,
        }
    }
}

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<crate::body::BoxError>,
{
    type Data = Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                // The timer stays allocated (and may stay armed): it is re-aimed when it fires,
                // not every piece, so a stream of pieces costs no timer churn.
                if let Some(since) = this.waiting_since.take() {
                    *this.waited += since.elapsed();
                }
                if let Some(d) = frame.data_ref() {
                    *this.bytes += d.len() as u64;
                }
                let waited = *this.waited;
                if waited > this.pace.grace && this.pace.min_rate > 0 {
                    let rate = (*this.bytes as f64 / waited.as_secs_f64()) as u64;
                    if rate < this.pace.min_rate {
                        return Poll::Ready(Some(Err(Box::new(BodyTooSlow::Rate {
                            rate,
                            min: this.pace.min_rate,
                        }))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let since = *this
                    .waiting_since
                    .get_or_insert_with(tokio::time::Instant::now);
                let idle = this.pace.idle;
                let deadline = since + idle;
                let timer = this
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                loop {
                    match timer.as_mut().poll(cx) {
                        Poll::Pending => return Poll::Pending,
                        // Armed for an earlier wait: this wait's deadline is later.
                        Poll::Ready(()) if timer.deadline() < deadline => {
                            timer.as_mut().reset(deadline);
                        }
                        Poll::Ready(()) => {
                            return Poll::Ready(Some(Err(Box::new(BodyTooSlow::Idle(idle)))));
                        }
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A client connection whose writes must make progress: a write, flush or shutdown that stays
/// pending for longer than `timeout` fails with `TimedOut`, which ends the connection.
pub struct WriteDeadline<S> {
    inner: S,
    timeout: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> WriteDeadline<S> {
    pub fn new(inner: S, timeout: Duration) -> Self {
        WriteDeadline {
            inner,
            timeout,
            timer: None,
        }
    }

    /// Passes on what the write did; while it is pending, runs the stall timer.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match polled {
            Poll::Ready(r) => {
                self.timer = None;
                Poll::Ready(r)
            }
            Poll::Pending => {
                let timeout = self.timeout;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the client read nothing for {timeout:?} (server.send_timeout)"),
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: crate::park::ReadReady> crate::park::ReadReady for WriteDeadline<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WriteDeadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WriteDeadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
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

    const PACE: BodyPace = BodyPace {
        idle: Duration::from_secs(30),
        min_rate: 1024,
        grace: Duration::from_secs(10),
    };

    use crate::body::ChannelBody as Chan;

    #[tokio::test(start_paused = true)]
    async fn a_silent_body_fails_at_the_idle_timeout() {
        use http_body_util::BodyExt as _;
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let mut body = TimedBody::new(Chan(rx), PACE);
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("body_read_timeout"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_fails_below_the_minimum_rate_but_a_steady_one_passes() {
        use http_body_util::BodyExt as _;
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut body = TimedBody::new(Chan(rx), PACE);
        let trickle = tokio::spawn(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
        });
        let mut failed = None;
        while let Some(f) = body.frame().await {
            if let Err(e) = f {
                failed = Some(e.to_string());
                break;
            }
        }
        assert!(failed.is_some_and(|e| e.contains("body_min_rate")));
        trickle.abort();

        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut body = TimedBody::new(Chan(rx), PACE);
        tokio::spawn(async move {
            for _ in 0..30 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let _ = tx.send(Bytes::from(vec![0u8; 2048])).await;
            }
        });
        let mut n = 0;
        while let Some(f) = body.frame().await {
            n += f.unwrap().into_data().unwrap().len();
        }
        assert_eq!(n, 30 * 2048);
    }

    #[tokio::test(start_paused = true)]
    async fn the_idle_timeout_counts_from_each_wait_not_the_first() {
        use http_body_util::BodyExt as _;
        // Pieces 0.7 idle apart outlive the timer armed by the first wait, which must be moved
        // on, not fire; then a silence of more than idle fails exactly idle after it began.
        let idle = PACE.idle;
        let pace = BodyPace {
            min_rate: 0,
            ..PACE
        };
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut body = TimedBody::new(Chan(rx), pace);
        let sender = tokio::spawn(async move {
            for _ in 0..6 {
                tokio::time::sleep(idle.mul_f64(0.7)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
            tokio::time::sleep(idle * 3).await;
            drop(tx);
        });
        for _ in 0..6 {
            assert!(body.frame().await.unwrap().is_ok());
        }
        let silent_from = tokio::time::Instant::now();
        let err = body.frame().await.unwrap().unwrap_err();
        assert!(err.to_string().contains("body_read_timeout"), "{err}");
        assert_eq!(tokio::time::Instant::now() - silent_from, idle);
        sender.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_read_late_is_not_blamed_on_the_client() {
        use http_body_util::BodyExt as _;
        // Everything arrived at once, but the body is read 20 s later (a slow upstream connect):
        // the client waited for nothing, so no rate applies.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        let mut body = TimedBody::new(Chan(rx), PACE);
        tx.send(Bytes::from_static(b"all of it")).await.unwrap();
        drop(tx);
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert!(body.frame().await.unwrap().is_ok());
        assert!(body.frame().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_never_reads_fails_at_the_send_timeout() {
        // A duplex of 64 bytes that nobody reads: the second write blocks forever.
        let (_client, server) = tokio::io::duplex(64);
        let mut w = WriteDeadline::new(server, Duration::from_secs(60));
        w.write_all(&[0u8; 64]).await.unwrap();
        let err = w.write_all(&[0u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn replay_hands_over_the_prefix_with_what_already_arrived() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        let mut r = Replay::new(Bytes::from_static(b"hello"), server);
        let mut buf = [0u8; 32];
        let n = r.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello world", "one read, not the prefix alone");
        // Nothing more has arrived: the prefix alone is still a complete read.
        let mut r = Replay::new(Bytes::from_static(b"hello"), tokio::io::duplex(64).1);
        let n = r.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
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
