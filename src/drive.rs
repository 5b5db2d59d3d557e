//! Runs hyper's connections to their end, bounding how long they sit idle.
//!
//! HTTP/2 has no idle timeout in hyper, and hyper's HTTP/1 header-read timeout (kept for the
//! admin listener) only runs while hyper holds the connection, so [`drive`] shuts a connection down gracefully when no request
//! has started on it for `server.idle_timeout` (requests in progress still finish), when the
//! server drains, or when the connection is asked to close; and it hands an idle HTTP/1
//! connection back to be parked ([`crate::park`]). For the data listener's HTTP/1 connections
//! (those that can park) it keeps the header-read deadline too, in place of hyper's timer:
//! checked on the connection's one ticker, it costs nothing per request.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::time::{Interval, MissedTickBehavior};

use crate::conn::{Limits, mono_ms};
use crate::park::{Crowd, Parking};

/// A hyper server connection that can be asked to finish what it started and end.
/// (hyper-util's `GracefulConnection` is sealed, and a parked connection is not one of its.)
pub trait Served: Future<Output = Result<(), Self::Error>> {
    type Error;
    fn graceful_shutdown(self: Pin<&mut Self>);

    /// Asks an idle connection to end without shutting its socket down, for it to be parked;
    /// `false` takes that back (the connection then ends as any other).
    fn park(self: Pin<&mut Self>, _park: bool) {}
}

impl<I, B, S> Served for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Error = hyper::Error;

    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self);
    }
}

impl<I, B, S, E> Served for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    type Error = hyper::Error;

    fn graceful_shutdown(self: Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

/// How [`drive`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The connection is over.
    Closed,
    /// hyper let go of an idle connection on request: the socket is still open, to be parked.
    Parked,
}

/// How often a connection's deadlines are checked: a quarter of the shorter one, at least
/// 100 ms. One interval per connection, for its whole life, so that checking costs no timer
/// per request.
pub fn ticker(limits: &Limits) -> Interval {
    let every = (limits.header_read.min(limits.idle) / 4).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tick
}

/// What [`drive`] watches besides the connection.
pub struct Watch<'a> {
    pub stop: &'a mut watch::Receiver<bool>,
    pub limits: Limits,
    /// The [`mono_ms`] stamp of the last request start, 0 before the first.
    pub activity: &'a AtomicU64,
    /// Asks this one connection to close ([`crate::conns`]).
    pub close: &'a Notify,
    pub tick: &'a mut Interval,
    /// For an HTTP/1 connection that is parked when idle while the listener is crowded.
    pub parking: Option<(&'a Parking, &'a Crowd)>,
}

/// Runs a connection to its end: shuts it down gracefully (in-flight requests finish) when the
/// server drains, when no first request arrives within `limits.header_read` (an HTTP/2 client
/// that sent its preface and then nothing), or when no request has started for `limits.idle`
/// after that. With `parking`, an idle HTTP/1 connection is let go as soon as hyper waits for a
/// next request with nothing read, if the listener is crowded then ([`Ended::Parked`]); and a
/// connection on which hyper has waited `limits.header_read` for a request head
/// ([`Parking::head_overdue`]) is dropped, as hyper's own timeout drops it.
///
/// The connection is pinned by the caller: taken by value, it would be stored twice in this
/// future (as the argument and as the pinned local), and this future is most of what every
/// open connection costs.
pub async fn drive<C: Served>(mut conn: Pin<&mut C>, w: Watch<'_>) -> Result<Ended, C::Error> {
    let Watch {
        stop,
        limits,
        activity,
        close,
        tick,
        parking,
    } = w;
    let opened = mono_ms();
    let mut closing = false;
    if *stop.borrow() {
        conn.as_mut().graceful_shutdown();
        closing = true;
    }
    let first_ms = limits.header_read.as_millis() as u64;
    let idle_ms = limits.idle.as_millis() as u64;
    loop {
        tokio::select! {
            // The connection first: the parking branch reads what its reads just reported.
            biased;
            result = conn.as_mut() => {
                return result.map(|()| Ended::Closed);
            }
            _ = stop.changed(), if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = close.notified(), if !closing => {
                if activity.load(Ordering::Relaxed) == 0 {
                    // Nothing was ever asked on it: nothing to finish.
                    return Ok(Ended::Closed);
                }
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            // hyper is idle between requests: asked to stop now, it closes at once, keeping
            // the socket open (the parked connection's future does not shut it down).
            _ = std::future::poll_fn(|_| match parking {
                Some((p, crowd)) if crowd.crowded() && p.take_idle() => Poll::Ready(()),
                _ => Poll::Pending,
            }), if !closing && parking.is_some() => {
                conn.as_mut().park(true);
                conn.as_mut().graceful_shutdown();
                // Idle, hyper closes at once, within this poll. If it does not, it was not
                // idle after all (mid-message): it finishes and ends as any connection does,
                // never parked.
                match std::future::poll_fn(|cx| Poll::Ready(conn.as_mut().poll(cx))).await {
                    Poll::Ready(result) => return result.map(|()| Ended::Parked),
                    Poll::Pending => {
                        conn.as_mut().park(false);
                        closing = true;
                    }
                }
            }
            _ = tick.tick(), if !closing || parking.is_some() => {
                if let Some((p, _)) = parking
                    && p.head_overdue(mono_ms(), first_ms)
                {
                    // What hyper's own header-read timeout does: the connection is dropped,
                    // without an answer. (Its timer is off for connections that park.) Closing
                    // too: hyper's graceful shutdown waits for a head it has begun to read.
                    return Ok(Ended::Closed);
                }
                if closing {
                    continue;
                }
                let last = activity.load(Ordering::Relaxed);
                if last == 0 && mono_ms().saturating_sub(opened) >= first_ms {
                    // No request ever started, so nothing is in flight: drop the connection. A
                    // graceful shutdown would wait for an HTTP/2 handshake that never comes.
                    return Ok(Ended::Closed);
                }
                if last != 0 && mono_ms().saturating_sub(last) >= idle_ms {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
        }
    }
}
