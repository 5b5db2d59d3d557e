//! An upstream response body that hands its HTTP/1 connection back to the pool once it has
//! been read to the end, and not before: a connection whose response is still arriving cannot
//! carry another request, and one whose body was abandoned half-way is closed instead.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::pool::{H1Sender, Shared};

/// A response body from an upstream (see the module docs).
pub struct PooledBody {
    inner: Incoming,
    /// The connection this body arrives on, and where it goes back to (HTTP/1 only).
    back: Option<(H1Sender, Arc<Shared>)>,
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PooledBody")
            .field("pooled", &self.back.is_some())
            .finish()
    }
}

impl PooledBody {
    pub(crate) fn new(inner: Incoming, back: Option<(H1Sender, Arc<Shared>)>) -> PooledBody {
        let mut body = PooledBody { inner, back };
        // No body at all (HEAD, 204, 304, Content-Length: 0): the exchange is over already.
        if body.inner.is_end_stream() {
            body.release();
        }
        body
    }

    fn release(&mut self) {
        let Some((mut tx, shared)) = self.back.take() else {
            return;
        };
        if tx.is_ready() {
            shared.put(tx);
            return;
        }
        if tx.is_closed() {
            return;
        }
        // The connection's task runs apart from this one: it may not have asked for its next
        // request yet, or it is still sending a request body the upstream answered early.
        // Rare; wait for it on the side.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if tx.ready().await.is_ok() {
                    shared.put(tx);
                }
            });
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            // With a Content-Length the last frame says so: readers stop polling there.
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            // A broken body leaves a connection in no state to be reused.
            Poll::Ready(Some(Err(_))) => this.back = None,
            _ => {}
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

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Dropped at its end: reusable. Dropped before: the connection closes with `back`.
        if self.inner.is_end_stream() {
            self.release();
        }
    }
}
