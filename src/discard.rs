//! What a client still sends after tenantgate has answered, read and thrown away so that the
//! answer reaches it.
//!
//! tenantgate often answers before it has read the request body: 401/403 from the tenant step,
//! 404 and 405 from routing, 413 from a declared `Content-Length`, and any early answer of the
//! upstream. A client that is still uploading then loses that answer if the body is simply
//! dropped:
//! - HTTP/2: dropping the body makes h2 send `RST_STREAM(NO_ERROR)` (RFC 9113 §8.1 allows it),
//!   and curl/nghttp2 clients report the reset instead of the status they already received.
//! - HTTP/1.1: hyper closes the connection while request bytes are still arriving; the kernel
//!   answers those with a TCP RST, which can destroy the response in the client's receive buffer
//!   before it is read (RFC 9112 §9.6).
//!
//! Prometheus treats a 401 or 413 as final but a reset as retryable, so a lost answer turns a
//! wrong password into an endless retry loop. So, as NGINX does, tenantgate keeps reading and
//! discarding a request body after an early answer, within [`BODY_LIMIT`] and [`BODY_TIME`]
//! ([`RequestBody`]), and closes connections the lingering way: write side shut first, then input
//! discarded until the client closes, within [`LINGER_TIME`] ([`Lingering`]).
//!
//! On HTTP/2 that is not enough: hyper queues a response's HEADERS before its DATA, and the h2
//! connection task (on another worker) can send them alone. A client that sees an error status
//! while uploading may stop early with an empty `END_STREAM` short of its `Content-Length`; h2
//! answers that with `RST_STREAM(PROTOCOL_ERROR)` (RFC 9113 §8.1.1), which also throws away our
//! DATA frame still in the queue. So on HTTP/2 an early answer waits until the rest of the body
//! has been discarded ([`AnswerHold`]): the client never sees the status while still sending.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;

/// The most of a request body read and discarded after an early answer. Beyond it the stream
/// (HTTP/2) or connection (HTTP/1.1) is cut: by then a client has had megabytes of time to read
/// the answer. Remote-write batches are far smaller (Mimir's default limit is 100 MiB, typical
/// batches are under 1 MiB).
pub const BODY_LIMIT: u64 = 64 << 20;

/// The longest a request body is read and discarded after an early answer (NGINX's
/// `lingering_time`).
pub const BODY_TIME: Duration = Duration::from_secs(30);

/// The longest wait for the next piece of a discarded body or of lingering input (NGINX's
/// `lingering_timeout`).
pub const IDLE: Duration = Duration::from_secs(5);

/// The longest a closed connection keeps discarding input before it is dropped.
pub const LINGER_TIME: Duration = Duration::from_secs(30);

/// Connections lingering at once, process-wide. Past this, a closing connection is dropped at
/// once: lingering is a courtesy that must not pile up file descriptors under a flood.
const MAX_LINGERING: usize = 1024;

/// A request body that, if dropped before its end, goes on being read and discarded in a task
/// of its own (within [`BODY_LIMIT`] and [`BODY_TIME`]).
///
/// Not when the client asked `Expect: 100-continue` and nothing has read the body yet: hyper then
/// answers without `100 Continue`, so the client never sends the body at all.
pub struct RequestBody<B: Body + Send + Unpin + 'static> {
    inner: Option<B>,
    expects_continue: bool,
    polled: bool,
    hold: Option<Arc<Discarding>>,
}

/// Whether a dropped body is being discarded, and when that is over.
#[derive(Default)]
struct Discarding {
    started: std::sync::atomic::AtomicBool,
    done: Notify,
}

/// Ends an [`AnswerHold`]'s wait when the discarding task ends. A stored permit: the answer
/// may start waiting after this.
struct NotifyOnDrop(Option<Arc<Discarding>>);

impl Drop for NotifyOnDrop {
    fn drop(&mut self) {
        if let Some(h) = &self.0 {
            h.done.notify_one();
        }
    }
}

/// Lets an HTTP/2 answer wait until its request body, dropped unread, has been discarded.
pub struct AnswerHold(Arc<Discarding>);

impl AnswerHold {
    /// Returns at once unless the request body was dropped before its end; then when it has
    /// been discarded (or cut at a limit). Call it once the answer is ready: a body still being
    /// read (by the upstream) is not waited for.
    pub async fn wait(&self) {
        if self.0.started.load(std::sync::atomic::Ordering::Acquire) {
            self.0.done.notified().await;
        }
    }
}

impl<B: Body + Send + Unpin + 'static> Drop for RequestBody<B> {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() || (self.expects_continue && !self.polled) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let hold = self.hold.take();
        if let Some(h) = &hold {
            h.started.store(true, std::sync::atomic::Ordering::Release);
        }
        rt.spawn(async move {
            // Notifies however the task ends (even cancelled at shutdown), so a held answer
            // never waits forever.
            let _notify = NotifyOnDrop(hold);
            discard_body(body).await;
        });
    }
}

impl<B> RequestBody<B>
where
    B: Body + Send + Unpin + 'static,
{
    pub fn new(inner: B, expects_continue: bool) -> Self {
        RequestBody {
            inner: Some(inner),
            expects_continue,
            polled: false,
            hold: None,
        }
    }

    /// The same, with a hold for the answer (HTTP/2; see the module docs). `None` for a body
    /// that is already complete, as most GETs are: nothing to wait for, nothing allocated.
    pub fn held(inner: B) -> (Self, Option<AnswerHold>) {
        if inner.is_end_stream() {
            return (RequestBody::new(inner, false), None);
        }
        let mut body = RequestBody::new(inner, false);
        let shared = Arc::new(Discarding::default());
        body.hold = Some(shared.clone());
        (body, Some(AnswerHold(shared)))
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.get_mut();
        match this.inner.as_mut() {
            Some(b) => {
                let polled = Pin::new(b).poll_frame(cx);
                match &polled {
                    // Data came, so the client is sending: worth discarding if dropped. A poll
                    // that found nothing does not prove `100 Continue` went out (hyper sends it
                    // only before an answer starts).
                    Poll::Ready(Some(Ok(_))) => this.polled = true,
                    // Ended: nothing is left to discard.
                    Poll::Ready(None) => this.inner = None,
                    _ => {}
                }
                polled
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// Reads `body` to its end and throws it away, within the limits. Returns the bytes discarded
/// and whether the body ended (false: cut at a limit, or it failed).
pub async fn discard_body<B: Body + Unpin>(mut body: B) -> (u64, bool) {
    let deadline = Instant::now() + BODY_TIME;
    let mut total = 0u64;
    loop {
        let next = Instant::now() + IDLE;
        match tokio::time::timeout_at(next.min(deadline), body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    total += bytes::Buf::remaining(data) as u64;
                }
                if total > BODY_LIMIT {
                    tracing::debug!(
                        bytes = total,
                        "request body after an early answer too large to discard; cutting it"
                    );
                    return (total, false);
                }
            }
            Ok(None) => return (total, true),
            Ok(Some(Err(_))) => return (total, false),
            Err(_) => {
                tracing::debug!(
                    bytes = total,
                    "request body after an early answer too slow to discard; cutting it"
                );
                return (total, false);
            }
        }
    }
}

fn lingering_slots() -> &'static Arc<Semaphore> {
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    SLOTS.get_or_init(|| Arc::new(Semaphore::new(MAX_LINGERING)))
}

/// A client connection that closes the lingering way: once hyper has shut the write side
/// (after its last response), dropping the connection hands it to a task that reads and
/// discards whatever the client still sends, until the client closes, [`IDLE`] passes without
/// input, or [`LINGER_TIME`] is over. The client reads our last answer meanwhile, instead of
/// losing it to a TCP reset.
pub struct Lingering<S: AsyncRead + Unpin + Send + 'static> {
    inner: Option<S>,
    shut_down: bool,
}

impl<S: AsyncRead + Unpin + Send + 'static> Lingering<S> {
    pub fn new(inner: S) -> Self {
        Lingering {
            inner: Some(inner),
            shut_down: false,
        }
    }

    fn inner(&mut self) -> Pin<&mut S> {
        // Only `drop` takes the stream out.
        match self.inner.as_mut() {
            Some(s) => Pin::new(s),
            None => unreachable!("Lingering used after drop"),
        }
    }
}

impl<S: AsyncRead + Unpin + Send + 'static> Drop for Lingering<S> {
    fn drop(&mut self) {
        let Some(stream) = self.inner.take() else {
            return;
        };
        if !self.shut_down {
            // Not a clean close (an error or a cut connection): nothing to wait for.
            return;
        }
        let Ok(permit) = lingering_slots().clone().try_acquire_owned() else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                linger(stream).await;
                drop(permit);
            });
        }
    }
}

/// Discards input until end of stream, an error, [`IDLE`] without input or [`LINGER_TIME`].
async fn linger<S: AsyncRead + Unpin>(mut stream: S) {
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let next = (Instant::now() + IDLE).min(deadline);
        match tokio::time::timeout_at(next, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => continue,
            _ => return,
        }
    }
}

impl<S: AsyncRead + crate::park::ReadReady + Unpin + Send + 'static> crate::park::ReadReady
    for Lingering<S>
{
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match &self.inner {
            Some(s) => s.poll_read_ready(cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl<S: AsyncRead + Unpin + Send + 'static> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.inner().poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.inner().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.inner().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.inner().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = self.inner().poll_shutdown(cx);
        if let Poll::Ready(Ok(())) = polled {
            self.shut_down = true;
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt as _;
    use tokio::sync::mpsc;

    fn channel_body() -> (mpsc::Sender<Bytes>, crate::body::ChannelBody) {
        crate::body::ChannelBody::pair()
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_is_read_to_its_end() {
        let (tx, body) = channel_body();
        let mut body = RequestBody::new(body, true);
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "first");
        drop(body);
        // The discarding task keeps reading: a channel of one slot takes all of these.
        for _ in 0..64 {
            tx.send(Bytes::from_static(&[0u8; 1024])).await.unwrap();
        }
        assert!(!tx.is_closed());
    }

    #[tokio::test]
    async fn a_body_that_expected_100_continue_and_was_never_read_is_not_waited_for() {
        let (tx, body) = channel_body();
        drop(RequestBody::new(body, true));
        assert!(tx.is_closed(), "the body of an unanswered Expect was kept");
    }

    #[tokio::test(start_paused = true)]
    async fn discarding_stops_when_the_client_stalls() {
        let (tx, body) = channel_body();
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        let (n, ended) = discard_body(body).await;
        assert_eq!((n, ended), (3, false));
        assert!(tx.is_closed());
    }

    #[tokio::test]
    async fn discarding_ends_with_the_body() {
        let (tx, body) = channel_body();
        let task = tokio::spawn(discard_body(body));
        tx.send(Bytes::from_static(b"abcd")).await.unwrap();
        drop(tx);
        assert_eq!(task.await.unwrap(), (4, true));
    }

    #[tokio::test]
    async fn an_answer_held_for_a_dropped_body_waits_until_it_is_discarded() {
        let (tx, body) = channel_body();
        let (body, hold) = RequestBody::held(body);
        let hold = hold.expect("a body still open gets a hold");
        drop(body);
        let waiting = tokio::spawn(async move { hold.wait().await });
        tx.send(Bytes::from_static(b"rest")).await.unwrap();
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "answered before the body was discarded"
        );
        drop(tx);
        waiting.await.unwrap();
    }

    #[tokio::test]
    async fn an_answer_held_for_a_body_read_to_its_end_does_not_wait() {
        let (tx, body) = channel_body();
        let (mut body, hold) = RequestBody::held(body);
        tx.send(Bytes::from_static(b"all")).await.unwrap();
        drop(tx);
        while body.frame().await.is_some() {}
        drop(body);
        hold.unwrap().wait().await;
    }

    #[tokio::test]
    async fn a_lingering_close_reads_until_the_client_closes() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut l = Lingering::new(server);
        l.shutdown().await.unwrap();
        drop(l);
        // The server side is still being read, so a client that goes on writing is not cut off.
        client.write_all(&[1u8; 4096]).await.unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn a_connection_dropped_without_shutdown_does_not_linger() {
        let (mut client, server) = tokio::io::duplex(64);
        drop(Lingering::new(server));
        assert!(client.write_all(&[1u8; 4096]).await.is_err());
    }
}
