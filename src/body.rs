//! The response body type: either bytes tenantgate produced, or the upstream's body streamed
//! through frame by frame, never collected.

use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Errors while streaming a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The upstream sent nothing for longer than the upstream's `timeouts.idle`.
#[derive(Debug, thiserror::Error)]
#[error("upstream body idle for more than {0:?}")]
pub struct IdleTimeout(pub Duration);

pin_project_lite::pin_project! {
    /// A response body. `Full` is answered by tenantgate itself; `Upstream` streams the
    /// upstream's body with an idle timeout between frames (there is no total deadline: a remote
    /// read may stream for minutes).
    #[project = ProxyBodyProj]
    pub enum ProxyBody {
        Full { data: Option<Bytes> },
        Upstream {
            #[pin] inner: crate::forward::PooledBody,
            idle: Duration,
            // Armed only when the upstream makes us wait, and re-armed only after progress: most
            // responses arrive in one piece and never touch the timer wheel.
            timer: Option<Pin<Box<Sleep>>>,
            progressed: bool,
        },
    }
}

impl ProxyBody {
    pub fn full(data: impl Into<Bytes>) -> Self {
        let data = data.into();
        ProxyBody::Full {
            data: if data.is_empty() { None } else { Some(data) },
        }
    }

    pub fn upstream(inner: crate::forward::PooledBody, idle: Duration) -> Self {
        ProxyBody::Upstream {
            inner,
            idle,
            timer: None,
            progressed: false,
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.project() {
            ProxyBodyProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            ProxyBodyProj::Upstream {
                inner,
                idle,
                timer,
                progressed,
            } => match inner.poll_frame(cx) {
                Poll::Ready(frame) => {
                    *progressed = true;
                    Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
                }
                Poll::Pending => {
                    let deadline = Instant::now() + *idle;
                    match timer {
                        Some(t) if *progressed => t.as_mut().reset(deadline),
                        Some(_) => {}
                        None => *timer = Some(Box::pin(tokio::time::sleep_until(deadline))),
                    }
                    *progressed = false;
                    match timer.as_mut() {
                        Some(t) => {
                            ready!(t.as_mut().poll(cx));
                            Poll::Ready(Some(Err(Box::new(IdleTimeout(*idle)))))
                        }
                        None => Poll::Pending,
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Full { data } => data.is_none(),
            ProxyBody::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            ProxyBody::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}

/// The start of a body, for an error message: reads until at least `limit` bytes (or the end,
/// or an error) and returns what came, so a large or endless body is never read whole.
pub async fn read_prefix<B>(body: B, limit: usize) -> Vec<u8>
where
    B: Body<Data = Bytes>,
{
    use http_body_util::BodyExt as _;
    let mut body = std::pin::pin!(body);
    let mut out = Vec::new();
    while out.len() < limit {
        match body.as_mut().frame().await {
            Some(Ok(frame)) => {
                if let Some(d) = frame.data_ref() {
                    out.extend_from_slice(d);
                }
            }
            _ => break,
        }
    }
    out
}

/// A request body fed from a channel, for tests of the body wrappers: the sender sees when
/// nothing reads it any more.
#[cfg(test)]
pub(crate) struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

#[cfg(test)]
impl ChannelBody {
    /// A body and the sender that feeds it (one piece buffered).
    pub(crate) fn pair() -> (tokio::sync::mpsc::Sender<Bytes>, ChannelBody) {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        (tx, ChannelBody(rx))
    }
}

#[cfg(test)]
impl Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// A request's declared `Content-Length`, if it has a valid one.
pub fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
