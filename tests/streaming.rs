//! Bodies stream through in both directions, intact, without being collected in memory.

mod common;

use common::*;
use http::Request;
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

const SIZE: u64 = 256 << 20;

const STREAM: &str = r#"
server: { listen: 127.0.0.1:0 }
upstreams:
  mimir: { url: "{UPSTREAM}" }
routes:
  - name: all
    match: { path_prefix: / }
    upstream: mimir
    tenant: team-a
    max_request_body: 1GiB
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_request_body_arrives_intact() {
    let up = Upstream::start().await;
    let gate = Gate::start(STREAM, &up.url()).await;
    let req = Request::post(gate.url("/api/v1/push"))
        .header("content-encoding", "snappy")
        .body(pattern_body(SIZE))
        .unwrap();
    let (status, _, _) = send(req).await;
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(seen.body_len, SIZE);
    assert_eq!(seen.body_sha256, pattern_sha256(SIZE));
    assert!(seen.headers.get("content-length").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_response_body_arrives_intact() {
    let up = Upstream::start().await;
    let gate = Gate::start(STREAM, &up.url()).await;
    let resp = client()
        .request(
            Request::get(gate.url(&format!("/bytes/{SIZE}")))
                .body(empty())
                .unwrap(),
        )
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut h = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body frame");
        if let Some(d) = frame.data_ref() {
            len += d.len() as u64;
            h.update(d);
        }
    }
    assert_eq!(len, SIZE);
    assert_eq!(hex(&h.finalize()), pattern_sha256(SIZE));
}
