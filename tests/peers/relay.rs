//! A recording relay: forwards every request to a target unchanged and keeps what went each
//! way, so a test can compare what one side of tenantgate sent with what the other side got.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;

/// One request and its answer, as the relay passed them.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub path: String,
    pub request_headers: HeaderMap,
    pub body_sha256: String,
    pub status: StatusCode,
    pub response_headers: HeaderMap,
    pub response_body: Bytes,
}

/// A relay on an ephemeral loopback port; stops when dropped.
pub struct Relay {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Exchange>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Relays to `target` (`http://host:port`).
    pub async fn start(target: &str) -> Result<Relay, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("relay bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let client: Client<HttpConnector, Full<Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let target = target.trim_end_matches('/').to_owned();
        let record = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (client, target, record) = (client.clone(), target.clone(), record.clone());
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let (client, target, record) =
                            (client.clone(), target.clone(), record.clone());
                        async move {
                            Ok::<_, std::convert::Infallible>(
                                relay(req, &client, &target, &record).await,
                            )
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Relay { addr, seen, task })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    req: Request<Incoming>,
    client: &Client<HttpConnector, Full<Bytes>>,
    target: &str,
    record: &Mutex<Vec<Exchange>>,
) -> Response<Full<Bytes>> {
    let (mut parts, body) = req.into_parts();
    let body = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("relay: {e}")),
    };
    let path = parts
        .uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let request_headers = parts.headers.clone();
    parts.uri = match format!("{target}{path}").parse() {
        Ok(u) => u,
        Err(e) => return plain(StatusCode::BAD_REQUEST, format!("relay: {e}")),
    };
    parts.headers.remove(http::header::HOST);
    let body_sha256 = crate::hex(&Sha256::digest(&body));
    let resp = match client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(r) => r,
        Err(e) => return plain(StatusCode::BAD_GATEWAY, format!("relay: {e}")),
    };
    let (parts, body) = resp.into_parts();
    let response_body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    if let Ok(mut seen) = record.lock() {
        seen.push(Exchange {
            path,
            request_headers,
            body_sha256,
            status: parts.status,
            response_headers: parts.headers.clone(),
            response_body: response_body.clone(),
        });
    }
    Response::from_parts(parts, Full::new(response_body))
}

fn plain(status: StatusCode, text: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = status;
    r
}
