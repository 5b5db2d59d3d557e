//! Idle HTTP/1 connections hold no buffers.
//!
//! hyper gives every HTTP/1 connection an 8 KiB read buffer and an 8 KiB buffer for response
//! heads, and keeps both for the connection's whole life. Most kept-alive connections are idle
//! most of the time, so that is most of what an open connection costs. NGINX frees its header
//! buffer as soon as a kept-alive connection goes idle; tenantgate does the same by *parking*
//! the connection: once hyper has finished a response and finds nothing more to read, the
//! connection is handed back from hyper (buffers freed), tenantgate waits for the socket to
//! become readable, and a new hyper connection takes over with what hyper had already read.
//!
//! Parking costs CPU: a new hyper connection per request, its buffers allocated anew (about a
//! quarter more instructions per forwarded request, measured with callgrind). With few
//! connections, their buffers are a few MiB at most and that CPU is better kept, so a
//! connection is parked only while the data listener has more than [`PARK_ABOVE`] open
//! ([`Crowd`]): a gateway fronted by a few busy clients (Grafana, a Thanos sidecar, a load
//! balancer's pool) never parks; one with thousands of kept-alive clients holds 16 KiB less
//! for each idle one.
//!
//! The moment to park is told by [`Parking`], shared by the connection's pieces (all on one
//! task, so its flags need no ordering stronger than relaxed; but a request body dropped
//! before its end is let go of by the discard task, so the count in flight and the time a head
//! is awaited since share one atomic word, changed at once):
//! - the service counts the request in ([`Parking::request_started`]) and its response body
//!   counts it out when hyper drops it ([`Tracked`]);
//! - [`Watched`], around the socket, sees hyper's reads and writes: a read that finds nothing
//!   while no request is in progress, with nothing read since the last one ended, means hyper
//!   is idle waiting for the next request head. A write still pending means a response is not
//!   yet fully out, and the connection is not parked until it is.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::time::mono_ms;

/// Open data connections above which an idle HTTP/1 connection is parked.
pub const PARK_ABOVE: usize = 128;

/// How many data connections are open, read from the listener's connection semaphore (each
/// connection holds one of its `max` permits).
#[derive(Debug)]
pub struct Crowd {
    permits: Arc<tokio::sync::Semaphore>,
    max: usize,
    above: usize,
}

impl Crowd {
    pub fn new(permits: Arc<tokio::sync::Semaphore>, max: usize, above: usize) -> Crowd {
        Crowd {
            permits,
            max,
            above,
        }
    }

    /// Whether idle connections should give back their buffers now.
    pub fn crowded(&self) -> bool {
        self.max.saturating_sub(self.permits.available_permits()) > self.above
    }
}

/// A stream that can wait until it is readable without reading (and so without a buffer).
pub trait ReadReady {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>>;
}

impl ReadReady for tokio::net::TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        tokio::net::TcpStream::poll_read_ready(self, cx)
    }
}

/// A TLS stream is parked only after a read found nothing, so rustls holds no decrypted
/// bytes then: new input can only come from the socket.
impl<S: ReadReady> ReadReady for tokio_rustls::server::TlsStream<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }
}

/// What one HTTP/1 connection's pieces tell each other about when it may be parked.
#[derive(Debug, Default)]
pub struct Parking {
    /// Two things in one word, so that no thread can come between them: in the low
    /// [`COUNT_BITS`], the request bodies and responses hyper has not yet let go of (two per
    /// request; a body dropped early is let go of by the discard task, maybe on another
    /// thread); above them, since when ([`mono_ms`]) hyper waits for a request head, 0 while a
    /// request is in progress. That wait began when the last body and response were let go of,
    /// or when this hyper connection started. It is bounded by `server.header_read_timeout`
    /// ([`Parking::head_overdue`]) in place of hyper's own timer, which allocated and
    /// registered a timer every request.
    state: AtomicU64,
    /// Bytes arrived since the last request and response ended (a next request on its way).
    read_since_idle: AtomicBool,
    /// hyper's last write found the client not reading: a response is not fully out.
    write_stalled: AtomicBool,
    /// A request body was dropped before its end (an early answer, a discard cut short):
    /// hyper is mid-message, draining or closing, until the next request head.
    cut: AtomicBool,
    /// hyper waited for a request head with nothing read.
    idle: AtomicBool,
}

/// The bits of [`Parking`]'s state that count what is in flight.
const COUNT_BITS: u32 = 16;
const COUNT: u64 = (1 << COUNT_BITS) - 1;

impl Parking {
    pub fn new() -> Arc<Parking> {
        Arc::default()
    }

    /// A request head was read; returns what its body and its response must hold until
    /// they are dropped.
    pub fn request_started(self: &Arc<Self>) -> (InFlight, InFlight) {
        // Two more in flight, and no head awaited.
        let _ = self
            .state
            .fetch_update(Relaxed, Relaxed, |s| Some((s & COUNT) + 2));
        self.cut.store(false, Relaxed);
        let body = InFlight {
            parking: self.clone(),
            ended: false,
        };
        let response = InFlight {
            parking: self.clone(),
            ended: true,
        };
        (body, response)
    }

    /// A new hyper connection starts on this one, with `prefix` already read: bytes of a
    /// request are there, so it is not idle until that request is answered. That request's
    /// head is due within `server.header_read_timeout` from now (its first bytes are read or
    /// readable).
    pub fn resume(&self, prefix: &Bytes) {
        self.read_since_idle.store(!prefix.is_empty(), Relaxed);
        self.idle.store(false, Relaxed);
        let since = mono_ms() << COUNT_BITS;
        let _ = self
            .state
            .fetch_update(Relaxed, Relaxed, |s| Some((s & COUNT) | since));
    }

    /// Whether hyper has waited for a request head for `limit_ms` by `now` (both [`mono_ms`]),
    /// everything before it written out: the client is silent, or sends its head too slowly.
    /// A response the client does not read is bounded by the send timeout instead.
    pub fn head_overdue(&self, now: u64, limit_ms: u64) -> bool {
        let state = self.state.load(Relaxed);
        let since = state >> COUNT_BITS;
        state & COUNT == 0
            && since != 0
            && !self.write_stalled.load(Relaxed)
            && now.saturating_sub(since) >= limit_ms
    }

    /// Whether hyper waits for a next request with both directions of the last one done and
    /// everything written. Reading it clears it: the next wait sets it again.
    pub fn take_idle(&self) -> bool {
        self.idle.swap(false, Relaxed)
            && self.quiet()
            && !self.read_since_idle.load(Relaxed)
            && !self.write_stalled.load(Relaxed)
            && !self.cut.load(Relaxed)
    }

    fn quiet(&self) -> bool {
        self.state.load(Relaxed) & COUNT == 0
    }
}

/// Held by a request body or a response until dropped.
#[derive(Debug)]
pub struct InFlight {
    parking: Arc<Parking>,
    /// For a request body: whether it was read to its end.
    ended: bool,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let p = &self.parking;
        if !self.ended {
            p.cut.store(true, Relaxed);
        }
        // One fewer in flight; the last one starts the wait for the next head.
        let before = p.state.fetch_update(Relaxed, Relaxed, |s| {
            Some(match s & COUNT {
                0 => s,
                1 => mono_ms() << COUNT_BITS,
                _ => s - 1,
            })
        });
        if let Ok(s) = before
            && s & COUNT == 1
        {
            p.read_since_idle.store(false, Relaxed);
        }
    }
}

pin_project_lite::pin_project! {
    /// A request body or a response body that holds its [`InFlight`] until dropped, and for a
    /// request body notes that it was read to its end.
    pub struct Tracked<B> {
        #[pin]
        inner: B,
        in_flight: Option<InFlight>,
    }
}

impl<B: Body> Tracked<B> {
    pub fn new(inner: B, mut in_flight: Option<InFlight>) -> Self {
        if inner.is_end_stream()
            && let Some(f) = in_flight.as_mut()
        {
            f.ended = true;
        }
        Tracked { inner, in_flight }
    }
}

impl<B: Body> Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        if let Some(f) = this.in_flight.as_mut()
            && !f.ended
        {
            f.ended = match &polled {
                Poll::Ready(None) => true,
                Poll::Ready(Some(Ok(_))) => this.inner.is_end_stream(),
                _ => false,
            };
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client connection as hyper sees it, reporting to [`Parking`].
pub struct Watched<S> {
    inner: S,
    parking: Arc<Parking>,
}

impl<S> Watched<S> {
    pub fn new(inner: S, parking: Arc<Parking>) -> Self {
        Watched { inner, parking }
    }

    fn wrote<T>(&self, polled: Poll<std::io::Result<T>>) -> Poll<std::io::Result<T>> {
        self.parking
            .write_stalled
            .store(polled.is_pending(), Relaxed);
        polled
    }
}

impl<S: ReadReady> ReadReady for Watched<S> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner.poll_read_ready(cx)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let p = &self.parking;
        if p.quiet() {
            match &polled {
                Poll::Pending if !p.read_since_idle.load(Relaxed) => p.idle.store(true, Relaxed),
                Poll::Ready(Ok(())) if buf.filled().len() > before => {
                    p.read_since_idle.store(true, Relaxed)
                }
                _ => {}
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn idle_is_a_read_that_finds_nothing_between_requests() {
        let parking = Parking::new();
        let (mut client, server) = tokio::io::duplex(64);
        let mut io = Watched::new(server, parking.clone());
        let mut buf = [0u8; 64];
        let poll_once = |io: &mut Watched<tokio::io::DuplexStream>, buf: &mut [u8]| {
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            let mut rb = ReadBuf::new(buf);
            let _ = Pin::new(io).poll_read(&mut cx, &mut rb);
        };

        // Fresh connection with a prefix: a request is on its way, not idle.
        parking.resume(&Bytes::from_static(b"GET"));
        poll_once(&mut io, &mut buf);
        assert!(!parking.take_idle(), "bytes of a request were already read");

        // A request in progress: a read that finds nothing (its body) is not idle.
        let (body, response) = parking.request_started();
        poll_once(&mut io, &mut buf);
        assert!(!parking.take_idle(), "a request is in flight");

        // Its body is read to the end and dropped, and so is the response: the next read
        // that finds nothing is idle, once.
        let mut body = Tracked::new(http_body_util::Empty::<Bytes>::new(), Some(body));
        assert!(Pin::new(&mut body).is_end_stream());
        drop(body);
        poll_once(&mut io, &mut buf);
        assert!(!parking.take_idle(), "the response is still in flight");
        drop(response);
        poll_once(&mut io, &mut buf);
        assert!(parking.take_idle());
        assert!(!parking.take_idle(), "reading the flag clears it");

        // Bytes of the next request arrived: not idle until it is answered.
        client.write_all(b"GE").await.unwrap();
        let n = io.read(&mut buf).await.unwrap();
        assert_eq!(n, 2);
        poll_once(&mut io, &mut buf);
        assert!(!parking.take_idle(), "half a request head is not idle");
    }

    #[tokio::test]
    async fn a_request_body_dropped_before_its_end_keeps_the_connection_busy() {
        // An early answer: hyper is mid-message (draining or closing) until a next head.
        let parking = Parking::new();
        let (_client, server) = tokio::io::duplex(64);
        let mut io = Watched::new(server, parking.clone());
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let (body, response) = parking.request_started();
        drop(Tracked::new(crate::body::ChannelBody(rx), Some(body)));
        drop(response);
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut buf = [0u8; 8];
        let _ = Pin::new(&mut io).poll_read(&mut cx, &mut ReadBuf::new(&mut buf));
        assert!(!parking.take_idle(), "parked mid-message");
        drop(tx);

        // The next request clears it.
        let (body, response) = parking.request_started();
        drop(Tracked::new(
            http_body_util::Empty::<Bytes>::new(),
            Some(body),
        ));
        drop(response);
        let _ = Pin::new(&mut io).poll_read(&mut cx, &mut ReadBuf::new(&mut buf));
        assert!(parking.take_idle());
    }

    #[tokio::test]
    async fn a_response_not_fully_written_is_not_idle() {
        let parking = Parking::new();
        // Nobody reads the client side: the second write stays pending.
        let (_client, server) = tokio::io::duplex(8);
        let mut io = Watched::new(server, parking.clone());
        io.write_all(&[0u8; 8]).await.unwrap();
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut io).poll_write(&mut cx, b"x").is_pending());
        let mut buf = [0u8; 8];
        let _ = Pin::new(&mut io).poll_read(&mut cx, &mut ReadBuf::new(&mut buf));
        assert!(!parking.take_idle(), "a write is still pending");
    }
}
