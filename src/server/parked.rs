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
    pub(super) limits: Limits,
    pub(super) activity: &'a AtomicU64,
    pub(super) close: &'a Notify,
    pub(super) crowd: &'a Crowd,
}

/// Serves one HTTP/1 connection of the data listener to its end, `prefix` already read.
pub(super) async fn serve<S>(
    mut prefix: Bytes,
    stream: S,
    mut service: DataService,
    parking: Arc<Parking>,
    cx: Serving<'_>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + ReadReady + Unpin + Send + 'static,
{
    let Serving {
        h1,
        mut stop,
        limits,
        activity,
        close,
        crowd,
    } = cx;
    let mut tick = drive::ticker(&limits);
    let mut io = Watched::new(stream, parking.clone());
    // When the connection last went idle, and the request it followed: a wake-up that brings
    // no request (part of a TLS record) parks it again on the same clock.
    let mut idle_since: Option<(u64, u64)> = None;
    loop {
        parking.resume(&prefix);
        let mut conn = KeepIo {
            conn: h1.serve_connection(TokioIo::new(Replay::new(prefix, io)), service),
            park: false,
        };
        let ended = drive::drive(
            Pin::new(&mut conn),
            Watch {
                stop: &mut stop,
                limits,
                activity,
                close,
                tick: &mut tick,
                parking: Some((&parking, crowd)),
            },
        )
        .await?;
        if ended == Ended::Closed {
            // hyper flushed and shut the socket down, as it ends any connection; or the
            // header-read deadline passed, and the socket is dropped as hyper drops it then.
            return Ok(());
        }
        let parts = conn.conn.into_parts();
        io = parts.io.into_inner().into_inner();
        service = parts.service;
        // hyper read part of a next request before going idle: it goes on from there.
        if !parts.read_buf.is_empty() {
            prefix = parts.read_buf;
            continue;
        }
        // Even empty, hyper's read buffer keeps its 8 KiB: drop it, not keep it parked.
        drop(parts.read_buf);
        prefix = Bytes::new();
        let last = activity.load(Ordering::Relaxed);
        let since = match idle_since {
            Some((request, since)) if request == last => since,
            _ => conn::mono_ms(),
        };
        idle_since = Some((last, since));
        if !wait_parked(&io, since, &mut stop, &limits, activity, close, &mut tick).await? {
            // What hyper does when it closes an idle connection.
            return Ok(io.shutdown().await?);
        }
    }
}

/// Waits, holding no buffer, until the client sends something (`true`) or the connection is
/// to close (`false`): silent for `header_read` since `since` (when it went idle) or for `idle`
/// since its last request began, the server draining, or a close asked.
async fn wait_parked<S: ReadReady>(
    io: &S,
    since: u64,
    stop: &mut watch::Receiver<bool>,
    limits: &Limits,
    activity: &AtomicU64,
    close: &Notify,
    tick: &mut tokio::time::Interval,
) -> std::io::Result<bool> {
    if *stop.borrow() {
        return Ok(false);
    }
    let header_ms = limits.header_read.as_millis() as u64;
    let idle_ms = limits.idle.as_millis() as u64;
    let mut readable = std::future::poll_fn(|cx| io.poll_read_ready(cx));
    loop {
        tokio::select! {
            r = &mut readable => return r.map(|()| true),
            _ = stop.changed() => return Ok(false),
            _ = close.notified() => return Ok(false),
            _ = tick.tick() => {
                let now = conn::mono_ms();
                let last = activity.load(Ordering::Relaxed);
                if now.saturating_sub(since) >= header_ms || now.saturating_sub(last) >= idle_ms {
                    return Ok(false);
                }
            }
        }
    }
}

#[cfg(test)]
#[path = "parked_tests.rs"]
mod tests;
