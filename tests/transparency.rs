//! Transparency: what the client sends is what the upstream gets, and back, except for what a
//! proxy must change (hop-by-hop headers, the tenant, Host, X-Forwarded-*).

mod common;

use common::*;
use http::{Request, Version};

#[tokio::test]
async fn hop_by_hop_request_headers_are_stripped_and_end_to_end_ones_kept() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let req = Request::get(gate.url("/prometheus/api/v1/labels"))
        .header("connection", "keep-alive, x-listed")
        .header("keep-alive", "timeout=5")
        .header("x-listed", "secret")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-custom", "kept")
        .header("accept-encoding", "gzip")
        .body(empty())
        .unwrap();
    let (status, _, _) = send(req).await;
    assert_eq!(status, 200);
    let seen = up.last();
    for gone in ["keep-alive", "x-listed", "te", "proxy-authorization"] {
        assert!(
            seen.headers.get(gone).is_none(),
            "{gone} reached the upstream: {:?}",
            seen.headers
        );
    }
    assert_eq!(seen.all("x-custom"), ["kept"]);
    assert_eq!(seen.all("accept-encoding"), ["gzip"]);
}

#[tokio::test]
async fn hop_by_hop_response_headers_are_stripped() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let (status, headers, _) = get(&gate.url("/hop")).await;
    assert_eq!(status, 200);
    assert!(
        headers.get("x-secret").is_none(),
        "a header named in Connection came through"
    );
    assert!(headers.get("keep-alive").is_none());
    assert_eq!(headers["x-end-to-end"], "kept");
}

#[tokio::test]
async fn content_length_zero_is_kept_and_no_transfer_encoding_is_invented() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let post = Request::post(gate.url("/api/v1/push"))
        .header("content-length", "0")
        .body(empty())
        .unwrap();
    assert_eq!(send(post).await.0, 200);
    let seen = up.last();
    assert_eq!(seen.all("content-length"), ["0"]);
    assert!(seen.headers.get("transfer-encoding").is_none());

    let (status, _, _) = get(&gate.url("/prometheus/api/v1/labels")).await;
    assert_eq!(status, 200);
    let seen = up.last();
    assert_eq!(seen.method, "GET");
    assert!(
        seen.headers.get("transfer-encoding").is_none(),
        "a bodiless GET got Transfer-Encoding"
    );
    assert!(
        seen.headers.get("content-length").is_none(),
        "a bodiless GET got Content-Length"
    );
}

#[tokio::test]
async fn content_length_zero_response_is_kept() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let resp = raw(
        gate.addr,
        "GET /empty HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.to_ascii_lowercase().contains("content-length: 0\r\n"),
        "{resp}"
    );
    assert!(
        !resp.to_ascii_lowercase().contains("transfer-encoding"),
        "{resp}"
    );
}

#[tokio::test]
async fn head_is_forwarded_as_head_and_answers_without_a_body() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let resp = raw(
        gate.addr,
        "HEAD /prometheus/api/v1/labels HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(
        resp.ends_with("\r\n\r\n"),
        "HEAD answer carried a body: {resp:?}"
    );
    assert_eq!(up.last().method, "HEAD");
}

#[tokio::test]
async fn content_type_and_content_encoding_pass_byte_for_byte_both_ways() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let req = Request::post(gate.url("/remote-read"))
        .header("content-type", "application/x-stream-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-read-version", "0.1.0")
        .body(bytes(vec![0xffu8, 0x00, 0x10]))
        .unwrap();
    let (status, headers, _) = send(req).await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["content-type"],
        "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"
    );
    assert_eq!(headers["content-encoding"], "snappy");
    let seen = up.last();
    assert_eq!(seen.all("content-type"), ["application/x-stream-protobuf"]);
    assert_eq!(seen.all("content-encoding"), ["snappy"]);
    assert_eq!(seen.all("x-prometheus-remote-read-version"), ["0.1.0"]);
    assert_eq!(seen.body_len, 3);
}

#[tokio::test]
async fn upstream_4xx_and_5xx_reach_the_client_unchanged() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    for code in [400u16, 401, 404, 422, 429, 500, 503] {
        let (status, headers, body) = get(&gate.url(&format!("/status/{code}"))).await;
        assert_eq!(status.as_u16(), code);
        assert_eq!(&body[..], b"out of order sample\n", "body of {code}");
        assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
        assert_eq!(headers["x-prometheus-remote-write-samples-written"], "0");
        assert_eq!(headers["retry-after"], "7");
    }
}

#[tokio::test]
async fn host_is_the_upstreams_and_x_forwarded_headers_are_added() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let req = Request::get(gate.url("/prometheus/api/v1/labels"))
        .header("host", "tenantgate.example")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .body(empty())
        .unwrap();
    send(req).await;
    let seen = up.last();
    assert_eq!(seen.all("host"), [up.addr.to_string()]);
    assert_eq!(seen.all("x-forwarded-for"), ["203.0.113.9, 127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);
}

#[tokio::test]
async fn the_matched_normalized_path_is_the_forwarded_path_and_the_query_is_kept() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let resp = raw(gate.addr, "GET /%70rometheus/api/v1/series?match%5B%5D=up&start=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.last();
    assert_eq!(seen.uri, "/prometheus/api/v1/series?match%5B%5D=up&start=1");
    // Routed as /prometheus (tenant team-a), not as the catch-all (team-b).
    assert_eq!(seen.all("x-scope-orgid"), ["team-a"]);
}

#[tokio::test]
async fn rewrite_strips_and_adds_prefixes() {
    let up = Upstream::start().await;
    let yaml = r#"
server: { listen: 127.0.0.1:0 }
upstreams: { mimir: { url: "{UPSTREAM}/base" } }
routes:
  - name: team-a
    match: { path_prefix: /team-a }
    upstream: mimir
    tenant: team-a
    rewrite: { strip_prefix: /team-a, add_prefix: /prometheus }
"#;
    let gate = Gate::start(yaml, &up.url()).await;
    assert_eq!(get(&gate.url("/team-a/api/v1/query?query=up")).await.0, 200);
    assert_eq!(up.last().uri, "/base/prometheus/api/v1/query?query=up");
    // Exactly the stripped prefix: the added one, with no trailing slash made up.
    assert_eq!(get(&gate.url("/team-a")).await.0, 200);
    assert_eq!(up.last().uri, "/base/prometheus");
}

#[tokio::test]
async fn rewrite_path_renames_one_path_as_a_prometheus_upstream_needs() {
    // Senders push to Mimir's /api/v1/push; Prometheus receives at /api/v1/write.
    let up = Upstream::start().await;
    let yaml = r#"
server: { listen: 127.0.0.1:0 }
upstreams: { prometheus: { url: "{UPSTREAM}" } }
routes:
  - name: push
    match: { path: /api/v1/push }
    upstream: prometheus
    tenant: dev
    rewrite: { path: /api/v1/write }
  - name: rest
    match: { path_prefix: / }
    upstream: prometheus
    tenant: dev
"#;
    let gate = Gate::start(yaml, &up.url()).await;
    let push = Request::post(gate.url("/api/v1/push?x=1"))
        .header("content-type", "application/x-protobuf")
        .body(bytes("body"))
        .unwrap();
    assert_eq!(send(push).await.0, 200);
    assert_eq!(up.last().uri, "/api/v1/write?x=1");
    assert_eq!(up.last().body_len, 4);
    assert_eq!(get(&gate.url("/api/v1/push/more")).await.0, 200);
    assert_eq!(up.last().uri, "/api/v1/push/more", "an exact match only");
}

#[tokio::test]
async fn http2_clients_are_served_and_forwarded_as_http11() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<TestBody>();
    let resp = client
        .request(
            Request::get(gate.url("/prometheus/api/v1/labels"))
                .body(empty())
                .unwrap(),
        )
        .await
        .expect("h2 request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), Version::HTTP_2);
    let seen = up.last();
    assert_eq!(seen.version, Version::HTTP_11);
    assert_eq!(seen.all("x-scope-orgid"), ["team-a"]);
}
