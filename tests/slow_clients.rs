//! Slow clients cannot hold request slots: a body that stops coming or trickles gets 408, and a
//! client that stops reading its response loses the connection, within the configured bounds;
//! after each, the one request slot of this config is free again.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ONE_SLOT: &str = r#"
server:
  listen: 127.0.0.1:0
  max_requests_in_flight: 1
  body_read_timeout: 1s
  body_min_rate: 1KiB
  send_timeout: 1s
upstreams:
  mimir: { url: "{UPSTREAM}" }
routes:
  - name: all
    match: { path_prefix: / }
    upstream: mimir
    tenant: team-a
"#;

/// The slot is free again: a plain request is served (not 503).
async fn slot_is_free(gate: &Gate) {
    let (status, _, body) = get(&gate.url("/api/v1/labels")).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
}

async fn read_answer(s: &mut TcpStream) -> String {
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut out))
        .await
        .expect("an answer within 30s")
        .unwrap_or(0);
    String::from_utf8_lossy(&out[..n]).into_owned()
}

#[tokio::test]
async fn a_body_that_stops_coming_gets_408_and_frees_the_slot() {
    let up = Upstream::start().await;
    let gate = Gate::start(ONE_SLOT, &up.url()).await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(
        b"POST /api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nfirst bytes",
    )
    .await
    .unwrap();
    let began = Instant::now();
    let answer = read_answer(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout"), "{answer}");
    assert!(began.elapsed() < Duration::from_secs(20));
    slot_is_free(&gate).await;
}

#[tokio::test]
async fn a_body_trickling_a_byte_a_second_gets_408_and_frees_the_slot() {
    let up = Upstream::start().await;
    let gate = Gate::start(ONE_SLOT, &up.url()).await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(b"POST /api/v1/push HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
        .await
        .unwrap();
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        // Twice as often as the idle timeout allows silence, far below the minimum rate.
        for _ in 0..60 {
            if wr.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut out = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(30), rd.read(&mut out))
        .await
        .expect("an answer within 30s")
        .unwrap_or(0);
    let answer = String::from_utf8_lossy(&out[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_min_rate"), "{answer}");
    trickle.abort();
    slot_is_free(&gate).await;
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_loses_the_connection_and_the_slot() {
    let up = Upstream::start().await;
    let gate = Gate::start(ONE_SLOT, &up.url()).await;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    // 64 MiB that this client never reads: the socket buffers fill, writes stall.
    s.write_all(b"GET /bytes/67108864 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, _) = get(&gate.url("/api/v1/labels")).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "while the stalled response holds the slot");
        assert!(
            Instant::now() < deadline,
            "the stalled response still holds the slot after 30s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(s);
}

#[tokio::test]
async fn a_slow_but_steady_stream_is_not_cut() {
    // /drip/3000: ten pieces over three seconds, longer than send_timeout and
    // body_read_timeout but never stalled for either.
    let up = Upstream::start().await;
    let gate = Gate::start(ONE_SLOT, &up.url()).await;
    let (status, _, body) = get(&gate.url("/x/drip/3000")).await;
    assert_eq!(status, 200);
    assert_eq!(body.len(), 10 * 1024);
}
