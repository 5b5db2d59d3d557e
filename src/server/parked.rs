//! The data listener's HTTP/1 connections, parked between requests when the listener is
//! crowded ([`crate::park`]): hyper
//! serves while requests come; when it waits for a next one with nothing read, it lets go of
//! the socket (and of its buffers) and this loop waits for the client, then starts hyper anew
//! with whatever hyper had already read.
//!
//! While parked, the bounds hyper would apply still hold: a connection that stays silent for
//! `server.header_read_timeout` after its last answer (or `server.idle_timeout` after its last
//! request began) is closed without an answer, the server's drain closes it at once, and so
//! does a close asked of it. A request head that then arrives only in part is closed by hyper's
//! header-read timeout (without an answer, as hyper does), counted from its first bytes.

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

/// hyper's HTTP/1 connection, run without shutting the socket down when it ends, so that an
/// idle one can be taken back ([`http1::Connection::into_parts`]).
struct KeepIo<S: AsyncRead + AsyncWrite + Unpin + Send + 'static>(
    http1::Connection<Io<S>, DataService>,
);

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Future for KeepIo<S> {
    type Output = hyper::Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.0.poll_without_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> Served for KeepIo<S> {
    type Error = hyper::Error;

    fn graceful_shutdown(mut self: Pin<&mut Self>) {
        Pin::new(&mut self.0).graceful_shutdown();
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
    loop {
        parking.resume(&prefix);
        let mut conn = KeepIo(h1.serve_connection(TokioIo::new(Replay::new(prefix, io)), service));
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
        let parts = conn.0.into_parts();
        io = parts.io.into_inner().into_inner();
        service = parts.service;
        if ended == Ended::Closed {
            // What hyper does at the end of a connection it ran with shutdown.
            return Ok(io.shutdown().await?);
        }
        // hyper read part of a next request before going idle: it goes on from there.
        if !parts.read_buf.is_empty() {
            prefix = parts.read_buf;
            continue;
        }
        // Even empty, hyper's read buffer keeps its 8 KiB: drop it, not keep it parked.
        drop(parts.read_buf);
        prefix = Bytes::new();
        if !wait_parked(&io, &mut stop, &limits, activity, close, &mut tick).await? {
            return Ok(io.shutdown().await?);
        }
    }
}

/// Waits, holding no buffer, until the client sends something (`true`) or the connection is
/// to close (`false`): silent for `header_read` since now or for `idle` since its last request
/// began, the server draining, or a close asked.
async fn wait_parked<S: ReadReady>(
    io: &S,
    stop: &mut watch::Receiver<bool>,
    limits: &Limits,
    activity: &AtomicU64,
    close: &Notify,
    tick: &mut tokio::time::Interval,
) -> std::io::Result<bool> {
    if *stop.borrow() {
        return Ok(false);
    }
    let since = conn::mono_ms();
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
