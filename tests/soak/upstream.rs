//! The soak's upstream: an echo server that can crash and come back on the same port.
//!
//! Every answer says what the upstream saw (the `X-Scope-OrgID` values, the path and query, the
//! body's SHA-256 and whether an `Authorization` header arrived), so the client can check that
//! the answer it got is the answer to *its* request, under the right tenant. A stop drops the
//! listener and every open connection at once, as a crash does: tenantgate's pooled
//! connections die under it, and requests in flight get their 502s.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinSet;

/// What the upstream echoes back, as JSON.
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub struct Echo {
    pub tenants: Vec<String>,
    pub path: String,
    pub sha256: String,
    pub len: u64,
    pub authorization: bool,
}

/// A running (or stopped) echo upstream on a fixed loopback port.
pub struct Echoer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Echoer {
    pub async fn start() -> Echoer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let mut e = Echoer {
            addr,
            stop: None,
            task: None,
        };
        e.serve(listener);
        e
    }

    fn serve(&mut self, listener: TcpListener) {
        let (tx, mut rx) = oneshot::channel::<()>();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(async move {
            // The connections live in this set: when the task returns, dropping it aborts them
            // all, which closes their sockets (the crash).
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    a = listener.accept() => {
                        let Ok((stream, _)) = a else { continue };
                        conns.spawn(async move {
                            let svc = service_fn(echo);
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(stream), svc)
                                .await;
                        });
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    _ = &mut rx => return,
                }
            }
        }));
    }

    /// Crashes it: the listener and every connection close now.
    pub async fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    /// Listens again on the same port. The port was ours a moment ago, but another process may
    /// have taken it meanwhile (an outgoing connection's local port): retry for a while.
    pub async fn restart(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    self.serve(l);
                    return;
                }
                Err(e) => {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "cannot listen on {} again: {e}",
                        self.addr
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

async fn echo(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    // Read to the end, or until tenantgate gives up on the request (nobody reads the answer).
    let (len, sha256) = crate::common::body_digest(body).await;
    let echo = Echo {
        tenants: parts
            .headers
            .get_all("x-scope-orgid")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_default(),
        sha256,
        len,
        authorization: parts.headers.contains_key("authorization"),
    };
    let body = serde_json::to_vec(&echo).unwrap_or_default();
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut().insert(
        "content-type",
        http::HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}
