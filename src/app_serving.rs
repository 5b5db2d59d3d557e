//! The future of one request, once [`App::serve`](super::App::serve) has done what waits for
//! nothing: usually just the upstream exchange in flight and the request's [`Exchange`].
//!
//! Every request's future is boxed by the server and lives until the response headers, so its
//! size is memory per request waiting on the upstream and bytes copied per request. Built from
//! `async fn`s it was 4.2 KB (4.9 KB as the server boxed it): each level held the 384-byte
//! request twice (as given and moved into its body) and was sized for its largest branch
//! (HTTP/2 upstreams, credential checks). Here the forwarding future is built first and held
//! once, in place.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};

use super::ResponseBody;
use crate::body::ProxyBody;
use crate::error::ProxyError;
use crate::route::Route;
use crate::telemetry::{Exchange, Metered};

/// The upstream exchange of a forwarded request, until its response headers.
pub(super) trait Forward:
    Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + 'static
{
}

impl<F> Forward for F where
    F: Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + 'static
{
}

/// How far a request got without waiting.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once and taken apart at once; a box would be one more allocation per request"
)]
pub(super) enum Step<B, F> {
    Now(Dispatch<F>),
    /// Its tenant needs a credential checked (which may wait), or its route splits it by
    /// series labels: it goes on in a future of its own.
    Later(Box<Later<B>>),
}

/// A request whose tenant is known.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once and taken apart at once; a box would be one more allocation per request"
)]
pub(super) enum Dispatch<F> {
    /// Answered by tenantgate itself (an emulated endpoint).
    Answer(Response<ProxyBody>),
    /// On its way to the upstream.
    Forward(F),
}

/// What a request that goes on later needs.
pub(super) struct Later<B> {
    pub req: Request<B>,
    /// The normalized path.
    pub path: String,
    pub route: Arc<Route>,
}

pin_project_lite::pin_project! {
    /// One request until its response headers.
    #[project = ServingProj]
    pub(super) enum Serving<F> {
        Forward {
            #[pin]
            forwarding: F,
            exchange: Option<Box<Exchange>>,
        },
        Later {
            rest: Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>,
        },
        Ready {
            resp: Option<Response<ResponseBody>>,
        },
    }
}

impl<F> Serving<F> {
    pub(super) fn forward(forwarding: F, exchange: Box<Exchange>) -> Self {
        Serving::Forward {
            forwarding,
            exchange: Some(exchange),
        }
    }

    pub(super) fn later(
        rest: Pin<Box<dyn Future<Output = Response<ResponseBody>> + Send>>,
    ) -> Self {
        Serving::Later { rest }
    }

    pub(super) fn ready(resp: Response<ResponseBody>) -> Self {
        Serving::Ready { resp: Some(resp) }
    }
}

impl<F: Forward> Future for Serving<F> {
    type Output = Response<ResponseBody>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        const DONE: &str = "a request's future polled after it finished";
        match self.project() {
            ServingProj::Forward {
                forwarding,
                exchange,
            } => {
                let served = ready!(forwarding.poll(cx));
                Poll::Ready(finish(served, exchange.take().expect(DONE)))
            }
            ServingProj::Later { rest } => rest.as_mut().poll(cx),
            ServingProj::Ready { resp } => Poll::Ready(resp.take().expect(DONE)),
        }
    }
}

/// The response the client gets, an error made into one, with the exchange recorded when its
/// body is done.
pub(super) fn finish(
    served: Result<Response<ProxyBody>, ProxyError>,
    mut exchange: Box<Exchange>,
) -> Response<ResponseBody> {
    let resp = match served {
        Ok(resp) => resp,
        Err(e) => {
            if let ProxyError::Upstream { kind, .. } = &e
                && let Some(u) = exchange.upstream.clone()
            {
                exchange.metrics().upstream_error(&u, *kind);
            }
            exchange.error = Some(e.to_string());
            e.to_response()
        }
    };
    exchange.status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, Metered::new(body, exchange))
}
