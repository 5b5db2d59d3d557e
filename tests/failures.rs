//! Errors tenantgate answers itself: Prometheus-style JSON, the right status code, and the
//! process keeps serving.

mod common;

use std::time::Duration;

use common::*;
use http::Request;
use tokio::net::TcpListener;

#[tokio::test]
async fn upstream_down_gives_502_and_the_next_request_works_once_it_is_back() {
    // Reserve a port, then close it: nothing listens there.
    let port_holder = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = port_holder.local_addr().unwrap();
    drop(port_holder);
    let gate = Gate::start(SIDECAR, &format!("http://{addr}")).await;

    let (status, headers, body) = get(&gate.url("/prometheus/api/v1/labels")).await;
    assert_eq!(status, 502);
    assert_eq!(headers["content-type"], "application/json");
    let v = json(&body);
    assert_eq!(v["status"], "error");
    assert_eq!(v["errorType"], "unavailable");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("upstream mimir: cannot connect"),
        "{v}"
    );

    let up = Upstream::start_on(
        TcpListener::bind(addr)
            .await
            .expect("rebind the upstream port"),
    )
    .await;
    let (status, _, _) = get(&gate.url("/prometheus/api/v1/labels")).await;
    assert_eq!(status, 200);
    assert_eq!(up.requests().len(), 1);
}

#[tokio::test]
async fn slow_upstream_gives_504() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let (status, _, body) = get(&gate.url("/slow")).await;
    assert_eq!(status, 504);
    let v = json(&body);
    assert_eq!(v["errorType"], "timeout");
    assert_eq!(v["error"], "upstream mimir: no response headers within 1s");
    // Still serving.
    assert_eq!(get(&gate.url("/prometheus/api/v1/labels")).await.0, 200);
}

#[tokio::test]
async fn unsafe_paths_are_rejected_with_400_before_routing() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    for path in [
        "/prometheus/../admin",
        "/prometheus/./api",
        "/prometheus%2Fapi",
        "/prometheus/%2e%2e/x",
        "/a%5Cb",
        "//prometheus",
        "/a%zz",
        "/prometheus/é",
    ] {
        let resp = raw(
            gate.addr,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(resp.starts_with("HTTP/1.1 400"), "{path}: {resp}");
        assert!(resp.contains(r#""errorType":"bad_data""#), "{path}: {resp}");
    }
    assert!(
        up.requests().is_empty(),
        "a rejected path reached the upstream"
    );
}

#[tokio::test]
async fn no_route_gives_404_and_wrong_method_405() {
    let up = Upstream::start().await;
    let yaml = "server: { listen: 127.0.0.1:0 }\nupstreams: { m: { url: \"{UPSTREAM}\" } }\nroutes:\n  - { name: push, match: { path: /api/v1/push, methods: [POST] }, upstream: m, tenant: t }\n";
    let gate = Gate::start(yaml, &up.url()).await;
    let (status, _, body) = get(&gate.url("/nothing/here")).await;
    assert_eq!(status, 404);
    assert_eq!(json(&body)["error"], "no route for GET /nothing/here");
    let (status, _, body) = get(&gate.url("/api/v1/push")).await;
    assert_eq!(status, 405);
    assert_eq!(json(&body)["status"], "error");
    assert!(up.requests().is_empty());
}

#[tokio::test]
async fn bodies_over_max_request_body_get_413() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    // Declared too large: refused before the upstream is contacted.
    let req = Request::post(gate.url("/small/x"))
        .body(bytes(vec![0u8; 2048]))
        .unwrap();
    let (status, _, body) = send(req).await;
    assert_eq!(status, 413);
    assert_eq!(json(&body)["errorType"], "bad_data");
    assert!(up.requests().is_empty());
    // Streamed without a length: cut off as soon as it grows past the limit.
    let req = Request::post(gate.url("/small/x"))
        .body(pattern_body(64 * 1024))
        .unwrap();
    let (status, _, _) = send(req).await;
    assert_eq!(status, 413);
    // At the limit: fine.
    let req = Request::post(gate.url("/small/x"))
        .body(bytes(vec![0u8; 1024]))
        .unwrap();
    assert_eq!(send(req).await.0, 200);
}

#[tokio::test]
async fn a_stalled_client_cannot_hold_accepts() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    // Half a request line, then nothing.
    let _stalled = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let (status, _, _) = tokio::time::timeout(
        Duration::from_secs(5),
        get(&gate.url("/prometheus/api/v1/labels")),
    )
    .await
    .expect("served despite a stalled client");
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_stream_that_goes_quiet_longer_than_the_idle_timeout_is_cut() {
    use http_body_util::BodyExt;
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    // 10 chunks 3 s apart; the upstream's idle timeout is 2 s.
    let resp = client()
        .request(Request::get(gate.url("/drip/30000")).body(empty()).unwrap())
        .await
        .expect("response headers arrive");
    assert_eq!(resp.status(), 200);
    let started = tokio::time::Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
        .await
        .expect("cut well before the stream's 30 s");
    assert!(
        result.is_err(),
        "the body should end in an error, not look complete"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "cut too early: {:?}",
        started.elapsed()
    );
    let admin = gate.admin.unwrap();
    let (_, _, body) = get(&format!("http://{admin}/metrics")).await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains(r#"tenantgate_upstream_errors_total{upstream="mimir",kind="timeout"} 1"#),
        "{text}"
    );
}

#[tokio::test]
async fn a_slow_but_steady_stream_is_not_cut() {
    use http_body_util::BodyExt;
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    // 10 chunks 0.4 s apart: 4 s in all, longer than the 2 s idle timeout, but never idle that long.
    let resp = client()
        .request(Request::get(gate.url("/drip/4000")).body(empty()).unwrap())
        .await
        .unwrap();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("complete")
        .to_bytes();
    assert_eq!(body.len(), 10 * 1024);
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let yaml = sidecar_with_server("  header_read_timeout: 1s\n");
    let gate = Gate::start(&yaml, &up.url()).await;
    let mut s = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(b"GET /prometheus/api/v1/labels HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // Kept alive, then idle: closed by the server within about the timeout.
    let started = tokio::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the idle connection was not closed");
    assert!(matches!(n, Ok(0) | Err(_)), "expected EOF, got data");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "closed too early: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn the_header_read_timeout_bounds_heads_never_a_slow_response() {
    // tenantgate keeps this deadline itself (not hyper's timer): it must not run while a
    // response takes longer than it, and must run again for the next head.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let up = Upstream::start().await;
    let yaml = sidecar_with_server("  header_read_timeout: 1s\n");
    let gate = Gate::start(&yaml, &up.url()).await;
    let mut s = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let started = tokio::time::Instant::now();
    // Ten chunks over 2.5 s: the response takes longer than the header-read timeout.
    s.write_all(b"GET /drip/2500 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    while !got.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the response stalled")
            .unwrap();
        assert!(n > 0, "closed mid-response after {:?}", started.elapsed());
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(started.elapsed() >= Duration::from_secs(2));
    // Then half a head: dropped without an answer, about the timeout after the response.
    s.write_all(b"GET /prometheus/api/v1/labels HTTP/1.1\r\nHo")
        .await
        .unwrap();
    let waiting = tokio::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the half head was not closed");
    assert!(matches!(n, Ok(0) | Err(_)), "expected no answer, got {n:?}");
    assert!(
        waiting.elapsed() >= Duration::from_millis(700),
        "closed too early: {:?}",
        waiting.elapsed()
    );
}

#[tokio::test]
async fn a_half_first_head_does_not_hold_the_drain_past_the_header_read_timeout() {
    // Draining asks hyper to finish gracefully, and hyper then waits for a first head it has
    // begun to read: the header-read deadline (tenantgate's, not hyper's timer) must still
    // close the connection, or it would hold the drain for all of `shutdown_grace`.
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    let yaml = sidecar_with_server("  header_read_timeout: 1s\n  shutdown_grace: 60s\n");
    let mut gate = Gate::start(&yaml, &up.url()).await;
    let mut s = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    s.write_all(b"GET /prometheus/api/v1/labels HTTP/1.1\r\nHo")
        .await
        .unwrap();
    // A whole exchange on another connection: the server has run since the half head came.
    let answer = raw(
        gate.addr,
        "GET /prometheus/api/v1/labels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    gate.begin_stop();
    closed_after(s, "a half head during the drain").await;
    tokio::time::timeout(Duration::from_secs(5), gate.stopped())
        .await
        .expect("the drain was still waiting 5 s after the last connection closed");
}

/// Waits for the server to close `s`, returning how long that took.
async fn closed_after(mut s: tokio::net::TcpStream, what: &str) -> Duration {
    use tokio::io::AsyncReadExt;
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) => continue,
            Err(_) => panic!("{what}: the connection was still open after 5 s"),
        }
    }
}

#[tokio::test]
async fn silent_and_half_preface_connections_are_closed_at_the_header_read_timeout_on_both_listeners()
 {
    use tokio::io::AsyncWriteExt;
    let up = Upstream::start().await;
    let yaml = sidecar_with_server("  header_read_timeout: 1s\n");
    let gate = Gate::start(&yaml, &up.url()).await;
    let admin = gate.admin.unwrap();
    for addr in [gate.addr, admin] {
        for payload in [
            &b""[..],
            b"PRI * HTTP/2.0\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(payload).await.unwrap();
            let took = closed_after(s, &format!("{addr} {payload:?}")).await;
            assert!(
                took >= Duration::from_millis(800),
                "{addr} {payload:?}: closed too early ({took:?})"
            );
        }
    }
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    let up = Upstream::start().await;
    let yaml = sidecar_with_server("  idle_timeout: 1s\n");
    let gate = Gate::start(&yaml, &up.url()).await;
    let stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake::<_, _, TestBody>(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let req = http::Request::get(gate.url("/prometheus/api/v1/labels"))
        .body(empty())
        .unwrap();
    assert_eq!(
        sender.send_request(req).await.expect("h2 request").status(),
        200
    );
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("the idle h2 connection was not closed")
        .unwrap()
        .ok();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed too early: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn connect_gets_405_and_nothing_is_forwarded() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let resp = raw(
        gate.addr,
        "CONNECT example.org:443 HTTP/1.1\r\nHost: example.org:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 405"), "{resp}");
    assert!(up.requests().is_empty(), "CONNECT reached the upstream");
}

#[tokio::test]
async fn an_upstream_101_becomes_a_502() {
    // tenantgate strips Upgrade and tunnels nothing: a 101 passed on would be a bare
    // informational answer on HTTP/1.1 and an illegal one on HTTP/2.
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let (status, _, body) = get(&gate.url("/status/101")).await;
    assert_eq!(status, http::StatusCode::BAD_GATEWAY);
    let v = json(&body);
    assert!(v["error"].as_str().unwrap_or("").contains("101"), "{v}");
}

#[tokio::test]
async fn a_broken_request_body_is_the_clients_error_not_the_upstreams() {
    // A bad chunk size in the middle of an upload: 400, and no upstream error is counted (any
    // client could otherwise set off alerts about the upstream).
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let resp = raw(
        gate.addr,
        "POST /api/v1/push HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\nnot a chunk\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    assert!(resp.contains("request body from the client"), "{resp}");
    let admin = gate.admin.expect("admin listener");
    let (_, _, metrics) = get(&format!("http://{admin}/metrics")).await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("tenantgate_upstream_errors_total{") && !l.ends_with(" 0")),
        "{metrics}"
    );
}
