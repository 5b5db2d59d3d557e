//! A crowded data listener parks its idle HTTP/1 connections (their buffers freed between
//! requests): what a client sees must not change. Each test first fills the listener past
//! `tenantgate::park::PARK_ABOVE` with connections that asked once and sit idle.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ASK: &[u8] = b"GET /prometheus/api/v1/labels HTTP/1.1\r\nHost: x\r\n\r\n";

/// Reads one whole response (it has a `content-length`) from `s`, `pending` holding what
/// was read past the previous one; returns its head.
async fn response<S: AsyncRead + Unpin>(s: &mut S, pending: &mut Vec<u8>) -> String {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_string();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| panic!("no content-length in {head}"))
                .parse()
                .unwrap();
            if pending.len() >= end + 4 + len {
                pending.drain(..end + 4 + len);
                return head;
            }
        }
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("an answer within 10 s")
            .unwrap();
        assert!(n > 0, "closed before the answer was complete");
        pending.extend_from_slice(&buf[..n]);
    }
}

/// Opens enough kept-alive, idle connections that the listener parks.
async fn crowd(gate: &Gate) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..=tenantgate::park::PARK_ABOVE {
        let mut s = TcpStream::connect(gate.addr).await.unwrap();
        s.write_all(ASK).await.unwrap();
        held.push(s);
    }
    for s in &mut held {
        let head = response(s, &mut Vec::new()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    held
}

#[tokio::test]
async fn parked_connections_serve_request_after_request_pipelined_or_split() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let mut held = crowd(&gate).await;
    let before = up.requests().len();

    // Pauses between requests: parked each time, then served again.
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    let mut pending = Vec::new();
    for _ in 0..5 {
        s.write_all(ASK).await.unwrap();
        let head = response(&mut s, &mut pending).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            !head.to_ascii_lowercase().contains("connection: close"),
            "{head}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    // Three pipelined in one write, the third cut short and finished after a pause.
    let mut three = ASK.repeat(3);
    let rest = three.split_off(ASK.len() * 2 + 17);
    s.write_all(&three).await.unwrap();
    for _ in 0..2 {
        let head = response(&mut s, &mut pending).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(&rest).await.unwrap();
    let head = response(&mut s, &mut pending).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(pending.is_empty(), "more than asked for: {pending:?}");
    assert_eq!(
        up.requests().len(),
        before + 8,
        "each request reached the upstream once"
    );

    // The crowd's connections were parked too, and still answer.
    for s in held.iter_mut().take(3) {
        s.write_all(ASK).await.unwrap();
        let head = response(s, &mut Vec::new()).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
}

#[tokio::test]
async fn a_parked_connection_is_closed_silently_after_the_header_read_timeout_even_with_half_a_head()
 {
    let up = Upstream::start().await;
    let gate = Gate::start(
        &sidecar_with_server("  header_read_timeout: 1s\n"),
        &up.url(),
    )
    .await;
    let _held = crowd(&gate).await;

    // Silent after its answer: closed without a word, about the timeout later.
    let mut silent = TcpStream::connect(gate.addr).await.unwrap();
    silent.write_all(ASK).await.unwrap();
    response(&mut silent, &mut Vec::new()).await;
    let began = tokio::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut rest))
        .await
        .expect("closed within 5 s")
        .ok();
    assert!(
        rest.is_empty(),
        "an idle connection got an answer: {rest:?}"
    );
    assert!(
        began.elapsed() >= Duration::from_millis(800),
        "closed too early: {:?}",
        began.elapsed()
    );

    // Half a head after a pause wakes it; hyper's header-read timeout then closes it without
    // an answer (as hyper does unparked), counted from those first bytes.
    let mut half = TcpStream::connect(gate.addr).await.unwrap();
    half.write_all(ASK).await.unwrap();
    response(&mut half, &mut Vec::new()).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    half.write_all(&ASK[..30]).await.unwrap();
    let began = tokio::time::Instant::now();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), half.read_to_end(&mut answer))
        .await
        .expect("closed within 5 s")
        .ok();
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    assert!(
        began.elapsed() >= Duration::from_millis(800),
        "closed too early: {:?}",
        began.elapsed()
    );
}

#[tokio::test]
async fn a_drain_closes_parked_connections_at_once() {
    let up = Upstream::start().await;
    let mut gate = Gate::start(&sidecar_with_server("  shutdown_grace: 20s\n"), &up.url()).await;
    let mut held = crowd(&gate).await;
    let began = tokio::time::Instant::now();
    gate.begin_stop();
    for s in held.iter_mut().take(5) {
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
            .await
            .expect("a parked connection still open 10 s into a 20 s drain")
            .ok();
        assert!(rest.is_empty(), "{rest:?}");
    }
    gate.stopped().await;
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "the drain waited for idle connections"
    );
}

#[tokio::test]
async fn parked_tls_connections_serve_request_after_request() {
    let pki = common::pki::Pki::new("parking-tls");
    let (cert, key) = pki.issue("server", "tenantgate", &["localhost"], true, false);
    let up = Upstream::start().await;
    let tls = format!(
        "  tls:\n    cert_file: {}\n    key_file: {}\n",
        cert.display(),
        key.display()
    );
    let gate = Gate::start(&sidecar_with_server(&tls), &up.url()).await;
    // The crowd: connections still in their TLS handshake hold their slots too.
    let mut held = Vec::new();
    for _ in 0..=tenantgate::park::PARK_ABOVE {
        held.push(TcpStream::connect(gate.addr).await.unwrap());
    }

    let mut s = common::pki::tls_connect(gate.addr, &pki.ca_file()).await;
    let mut pending = Vec::new();
    // Requests with pauses (parked each time), then two pipelined in one write.
    for pipelined in [1, 1, 1, 1, 2] {
        s.write_all(&ASK.repeat(pipelined)).await.unwrap();
        for _ in 0..pipelined {
            let head = response(&mut s, &mut pending).await;
            assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert!(pending.is_empty(), "more than asked for: {pending:?}");
    assert_eq!(up.requests().len(), 6);
    drop(held);
}

/// A request body tenantgate stopped reading (an early answer) is never taken for requests:
/// what the client sends after must not reach the upstream, parked or not.
async fn nothing_smuggled(gate: &Gate, up: &Upstream, expect_continue: bool, pause: Duration) {
    let smuggled = b"GET /prometheus/smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let len = 2048;
    let mut s = TcpStream::connect(gate.addr).await.unwrap();
    let expect = if expect_continue {
        "Expect: 100-continue\r\n"
    } else {
        ""
    };
    let head = format!("POST /small HTTP/1.1\r\nHost: x\r\nContent-Length: {len}\r\n{expect}\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    if !expect_continue {
        s.write_all(&[b'x'; 100]).await.unwrap();
    }
    let answer = response(&mut s, &mut Vec::new()).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    tokio::time::sleep(pause).await;
    let mut rest = smuggled.to_vec();
    rest.resize(len - if expect_continue { 0 } else { 100 }, b'\n');
    // The connection may be closed by now: a failed write is as good as an ignored one.
    let _ = s.write_all(&rest).await;
    let mut after = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut after)).await;
    assert!(
        up.requests().iter().all(|r| !r.uri.contains("smuggled")),
        "a request body was served as a request"
    );
    assert!(
        !String::from_utf8_lossy(&after).contains("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&after)
    );
}

#[tokio::test]
async fn a_body_left_unread_after_an_early_answer_is_never_served_as_requests() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let _held = crowd(&gate).await;
    // Never asked for (100-continue not sent), then sent anyway.
    nothing_smuggled(&gate, &up, true, Duration::from_millis(200)).await;
    // Part sent, then a silence longer than the discard's idle limit cuts the discard.
    let past_idle = tenantgate::discard::IDLE + Duration::from_secs(1);
    nothing_smuggled(&gate, &up, false, past_idle).await;
}
