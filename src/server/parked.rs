//! The data listener's HTTP/1 connections, parked between requests when the listener is
//! crowded ([`crate::park`]): hyper
//! serves while requests come; when it waits for a next one with nothing read, it lets go of
//! the socket (and of its buffers) and this loop waits for the client, then starts hyper anew
//! with whatever hyper had already read.
//!
//! While parked, the bounds hyper would apply still hold: a connection that stays silent for
//! `server.header_read_timeout` after its last answer (or `server.idle_timeout` after its last
//! request began) is closed without an answer, the server's drain closes it at once, and so
//! does a close asked of it. A request head that then arrives only in part is closed by the
//! header-read deadline [`drive`] keeps (without an answer, as hyper does), counted from its
//! first bytes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{Notify, watch};

use super::listen::DataService;
use crate::body::BoxError;
use crate::conn::{self, Limits, Replay};
use crate::drive::{self, Ended, Served, Watch};
use crate::park::{Crowd, Parking, ReadReady, Watched};

type Io<S> = TokioIo<Replay<Watched<S>>>;

/// hyper's HTTP/1 connection that can end without shutting its socket down when asked to park
/// ([`Served::park`]), so that the socket can be taken back ([`http1::Connection::into_parts`]).
/// Otherwise it ends as hyper's own future does: what is buffered flushed, the socket shut.
struct KeepIo<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    conn: http1::Connection<Io<S>, DataService>,
    park: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Future for KeepIo<S> {
    type Output = hyper::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.park {
            self.conn.poll_without_shutdown(cx)
        } else {
            Pin::new(&mut self.conn).poll(cx)
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> KeepIo<S> {
    /// The socket, the service and what hyper had read past its last request, back from hyper.
    fn into_parts(self) -> (Watched<S>, DataService, Bytes) {
        let parts = self.conn.into_parts();
        (
            parts.io.into_inner().into_inner(),
            parts.service,
            parts.read_buf,
        )
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Served for KeepIo<S> {
    type Error = hyper::Error;

    fn graceful_shutdown(mut self: Pin<&mut Self>) {
        Pin::new(&mut self.conn).graceful_shutdown();
    }

    fn park(mut self: Pin<&mut Self>, park: bool) {
        self.park = park;
    }
}

/// What a connection needs besides its socket.
pub(super) struct Serving<'a> {
    pub(super) h1: &'a http1::Builder,
    pub(super) stop: watch::Receiver<bool>,
    pub(super) limits: &'a Limits,
    pub(super) activity: &'a AtomicU64,
    pub(super) close: &'a Notify,
    pub(super) crowd: &'a Crowd,
}

/// Serves one HTTP/1 connection of the data listener to its end, `prefix` already read.
///
/// What this future holds while the connection is parked is what every idle connection costs,
/// so it is kept small: hyper's connection and the driver are boxed while hyper serves, and
/// this is a function returning an `async move` block rather than an `async fn` (which keeps
/// its arguments twice: as given, and moved into its body), whose body uses what it was given
/// in place.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice"
)]
pub(super) fn serve<'a, S>(
    mut prefix: Bytes,
    mut io: Watched<S>,
    mut service: DataService,
    parking: Arc<Parking>,
    mut cx: Serving<'a>,
) -> impl Future<Output = Result<(), BoxError>> + 'a
where
    S: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    async move {
        let mut tick = drive::ticker(cx.limits);
        // When the connection last went idle, and the request it followed: a wake-up that
        // brings no request (part of a TLS record) parks it again on the same clock.
        let mut idle_since: Option<(u64, u64)> = None;
        loop {
            parking.resume(&prefix);
            let watch = Watch {
                stop: &mut cx.stop,
                limits: *cx.limits,
                activity: cx.activity,
                close: cx.close,
                tick: &mut tick,
                parking: Some((&parking, cx.crowd)),
            };
            let h1 = cx.h1;
            // Closed: hyper flushed and shut the socket down, as it ends any connection; or the
            // header-read deadline passed, and the socket is dropped as hyper drops it then.
            let Some((back, again, read_buf)) = Box::pin(async move {
                let mut conn = KeepIo {
                    conn: h1.serve_connection(TokioIo::new(Replay::new(prefix, io)), service),
                    park: false,
                };
                let ended = drive::drive(Pin::new(&mut conn), watch).await?;
                Ok::<_, hyper::Error>((ended == Ended::Parked).then(|| conn.into_parts()))
            })
            .await?
            else {
                return Ok(());
            };
            (io, service) = (back, again);
            // hyper read part of a next request before going idle: it goes on from there.
            if !read_buf.is_empty() {
                prefix = read_buf;
                continue;
            }
            // Even empty, hyper's read buffer keeps its 8 KiB: drop it, not keep it parked.
            drop(read_buf);
            prefix = Bytes::new();
            let last = cx.activity.load(Ordering::Relaxed);
            let since = match idle_since {
                Some((request, since)) if request == last => since,
                _ => conn::mono_ms(),
            };
            idle_since = Some((last, since));
            if !wait_parked(&io, since, &mut cx, &mut tick).await? {
                // What hyper does when it closes an idle connection.
                return Ok(io.shutdown().await?);
            }
        }
    }
}

/// Waits, holding no buffer, until the client sends something (`true`) or the connection is
/// to close (`false`): silent for `header_read` since `since` (when it went idle) or for `idle`
/// since its last request began, the server draining, or a close asked. Not an `async fn`, for
/// the reason [`serve`] is not.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn would hold its arguments twice"
)]
fn wait_parked<'a, S: ReadReady>(
    io: &'a S,
    since: u64,
    cx: &'a mut Serving<'_>,
    tick: &'a mut tokio::time::Interval,
) -> impl Future<Output = std::io::Result<bool>> + 'a {
    async move {
        if *cx.stop.borrow() {
            return Ok(false);
        }
        let header_ms = cx.limits.header_read.as_millis() as u64;
        let idle_ms = cx.limits.idle.as_millis() as u64;
        let mut readable = std::future::poll_fn(|c| io.poll_read_ready(c));
        loop {
            tokio::select! {
                r = &mut readable => return r.map(|()| true),
                _ = cx.stop.changed() => return Ok(false),
                _ = cx.close.notified() => return Ok(false),
                _ = tick.tick() => {
                    let now = conn::mono_ms();
                    let last = cx.activity.load(Ordering::Relaxed);
                    if now.saturating_sub(since) >= header_ms || now.saturating_sub(last) >= idle_ms {
                        return Ok(false);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "parked_tests.rs"]
mod tests;
