//! Operating tenantgate: metrics that a real parser accepts and that count exactly, reloads that
//! never fail a request, readiness that follows health checks and draining, and a shutdown that
//! completes every request it accepted.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::*;
use http::Request;
use http_body_util::BodyExt;
use tokio::net::TcpListener;

async fn admin_get(gate: &Gate, path: &str) -> (u16, String) {
    let (status, _, body) = get(&format!(
        "http://{}{path}",
        gate.admin.expect("admin listener")
    ))
    .await;
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn metrics_count_known_traffic_exactly_and_promtool_parses_them() {
    let up = Upstream::start().await;
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let down = closed.local_addr().unwrap();
    drop(closed);
    let yaml = format!(
        "{SIDECAR}  - name: broken\n    match: {{ path_prefix: /broken }}\n    upstream: down\n    tenant: team-c\n"
    )
    .replace("upstreams:\n", &format!("upstreams:\n  down:\n    url: http://{down}\n"));
    let gate = Gate::start(&yaml, &up.url()).await;

    for _ in 0..3 {
        assert_eq!(get(&gate.url("/prometheus/api/v1/labels")).await.0, 200);
    }
    assert_eq!(
        get(&gate.url("/prometheus/api/v1/status/config")).await.0,
        200
    );
    for _ in 0..2 {
        assert_eq!(get(&gate.url("/status/500")).await.0, 500);
    }
    assert_eq!(get(&gate.url("/broken/x")).await.0, 502);
    let resp = raw(
        gate.addr,
        "GET /prometheus/../x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 400"));
    let post = Request::post(gate.url("/api/v1/push"))
        .body(bytes(vec![1u8; 1000]))
        .unwrap();
    assert_eq!(send(post).await.0, 200);

    let (status, text) = admin_get(&gate, "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        r#"tenantgate_requests_total{route="sidecar",tenant="team-a",method="GET",code="200"} 4"#,
        r#"tenantgate_requests_total{route="rest",tenant="team-b",method="GET",code="500"} 2"#,
        r#"tenantgate_requests_total{route="broken",tenant="team-c",method="GET",code="502"} 1"#,
        r#"tenantgate_requests_total{route="none",tenant="none",method="GET",code="400"} 1"#,
        r#"tenantgate_requests_total{route="push",tenant="team-a",method="POST",code="200"} 1"#,
        r#"tenantgate_upstream_errors_total{upstream="down",kind="connect"} 1"#,
        r#"tenantgate_emulated_requests_total{route="sidecar",endpoint="config"} 1"#,
        r#"tenantgate_request_body_bytes_total{route="push"} 1000"#,
        r#"tenantgate_requests_in_flight{route="sidecar"} 0"#,
        r#"tenantgate_request_duration_seconds_count{route="sidecar",tenant="team-a"} 4"#,
        "tenantgate_config_last_reload_successful 1",
        "tenantgate_log_lines_dropped_total 0",
        "# TYPE tenantgate_requests_total counter",
        "# TYPE tenantgate_build_info gauge",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }

    let Some(promtool) = required_binary("promtool") else {
        return;
    };
    let dir = temp_dir("metrics");
    let file = dir.join("metrics.txt");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("run promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn openmetrics_is_served_to_scrapers_that_ask_for_it() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let req = Request::get(format!("http://{}/metrics", gate.admin.unwrap()))
        .header(
            "accept",
            "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
        )
        .body(empty())
        .unwrap();
    let (_, headers, body) = send(req).await;
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(String::from_utf8_lossy(&body).ends_with("# EOF\n"));
}

fn config_for(upstream: &str, tenant: &str) -> String {
    format!(
        "server: {{ listen: 127.0.0.1:0 }}\nadmin: {{ listen: 127.0.0.1:0 }}\nupstreams: {{ mimir: {{ url: \"{upstream}\" }} }}\nroutes:\n  - {{ name: all, match: {{ path_prefix: / }}, upstream: mimir, tenant: {tenant} }}\n"
    )
}

#[tokio::test]
async fn a_valid_reload_takes_effect_and_an_invalid_one_keeps_the_old_config() {
    let up = Upstream::start().await;
    let dir = temp_dir("reload");
    let file = dir.join("tenantgate.yaml");
    std::fs::write(&file, config_for(&up.url(), "tenant-one")).unwrap();
    let gate = Gate::start_file(&file).await;
    get(&gate.url("/x")).await;
    assert_eq!(up.last().all("x-scope-orgid"), ["tenant-one"]);

    std::fs::write(&file, config_for(&up.url(), "tenant-two")).unwrap();
    gate.handle.reload().await.expect("valid reload");
    get(&gate.url("/x")).await;
    assert_eq!(up.last().all("x-scope-orgid"), ["tenant-two"]);

    std::fs::write(&file, config_for(&up.url(), "\"a|b\"")).unwrap();
    let err = gate
        .handle
        .reload()
        .await
        .expect_err("invalid reload must fail");
    assert!(
        err.contains("routes[0].tenant: \"a|b\" is not a valid tenant ID"),
        "{err}"
    );
    get(&gate.url("/x")).await;
    assert_eq!(
        up.last().all("x-scope-orgid"),
        ["tenant-two"],
        "the old config must keep running"
    );
    let (_, metrics) = admin_get(&gate, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "tenantgate_config_last_reload_successful 0"),
        "{metrics}"
    );

    // The same through the admin endpoint.
    std::fs::write(&file, config_for(&up.url(), "tenant-three")).unwrap();
    let req = Request::post(format!("http://{}/-/reload", gate.admin.unwrap()))
        .body(empty())
        .unwrap();
    assert_eq!(send(req).await.0, 200);
    get(&gate.url("/x")).await;
    assert_eq!(up.last().all("x-scope-orgid"), ["tenant-three"]);
    let (_, metrics) = admin_get(&gate, "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "tenantgate_config_last_reload_successful 1"),
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_under_load_fails_no_request() {
    let up = Upstream::start().await;
    let dir = temp_dir("reload-load");
    let file = dir.join("tenantgate.yaml");
    std::fs::write(&file, config_for(&up.url(), "tenant-one")).unwrap();
    let gate = Gate::start_file(&file).await;
    let url = gate.url("/prometheus/api/v1/labels");
    let ok = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (url, ok, stop) = (url.clone(), ok.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            let client = client();
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client
                    .request(Request::get(&url).body(empty()).unwrap())
                    .await
                {
                    Ok(r) if r.status() == 200 => {
                        let _ = r.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => failures.push(format!("status {}", r.status())),
                    Err(e) => failures.push(format!("{e:?}")),
                }
            }
            failures
        }));
    }
    // Ten reloads, alternating tenants, while the workers run.
    for i in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(
            &file,
            config_for(
                &up.url(),
                if i % 2 == 0 {
                    "tenant-two"
                } else {
                    "tenant-one"
                },
            ),
        )
        .unwrap();
        gate.handle.reload().await.expect("reload");
    }
    stop.store(true, Ordering::Relaxed);
    let mut failures = Vec::new();
    for w in workers {
        failures.extend(w.await.unwrap());
    }
    assert!(
        failures.is_empty(),
        "{} failed requests during reloads: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(
        ok.load(Ordering::Relaxed) > 40,
        "too little traffic to mean anything: {}",
        ok.load(Ordering::Relaxed)
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_503_at_once_while_a_long_stream_drains_to_completion() {
    let up = Upstream::start().await;
    let mut gate = Gate::start(SIDECAR, &up.url()).await;
    assert_eq!(admin_get(&gate, "/-/ready").await.0, 200);
    // A two-second stream, started before the shutdown.
    let resp = client()
        .request(Request::get(gate.url("/drip/2000")).body(empty()).unwrap())
        .await
        .expect("stream starts");
    assert_eq!(resp.status(), 200);
    gate.begin_stop();
    let admin = gate.admin.unwrap();
    eventually(5, "readiness 503 during the drain", || async move {
        get(&format!("http://{admin}/-/ready")).await.0 == 503
    })
    .await;
    // New connections to the data port are refused once draining.
    let data = gate.addr;
    eventually(5, "data listener closed", || async move {
        tokio::net::TcpStream::connect(data).await.is_err()
    })
    .await;
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("the in-flight stream completes")
        .to_bytes();
    assert_eq!(body.len(), 10 * 1024);
    gate.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_under_load_completes_every_request_it_accepted() {
    let up = Upstream::start().await;
    let mut gate = Gate::start(SIDECAR, &up.url()).await;
    let addr = gate.addr;
    let completed = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let completed = completed.clone();
        workers.push(tokio::spawn(async move {
            let mut broken = Vec::new();
            loop {
                // One connection per request: a refused connection was never accepted.
                let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                    return broken;
                };
                let io = hyper_util::rt::TokioIo::new(stream);
                let Ok((mut sender, conn)) =
                    hyper::client::conn::http1::handshake::<_, TestBody>(io).await
                else {
                    return broken;
                };
                tokio::spawn(conn);
                let req = Request::get("/drip/200")
                    .header("host", "x")
                    .body(empty())
                    .unwrap();
                match sender.send_request(req).await {
                    Ok(resp) => {
                        match resp.into_body().collect().await.map(|b| b.to_bytes().len()) {
                            Ok(n) if n == 10 * 1024 => {
                                completed.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(n) => broken.push(format!("truncated body: {n} bytes")),
                            Err(e) => broken.push(format!("body error: {e}")),
                        }
                    }
                    // Closed before a response: the listener's backlog was dropped, never served.
                    Err(e) if e.is_incomplete_message() || e.is_canceled() => return broken,
                    Err(e) => broken.push(format!("request error: {e}")),
                }
            }
        }));
    }
    eventually(10, "some requests completed", || {
        let c = completed.clone();
        async move { c.load(Ordering::Relaxed) >= 8 }
    })
    .await;
    gate.begin_stop();
    let mut broken = Vec::new();
    for w in workers {
        broken.extend(w.await.unwrap());
    }
    gate.stopped().await;
    assert!(
        broken.is_empty(),
        "accepted requests that did not complete: {broken:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_upstream_health_checks() {
    let up = Upstream::start().await;
    let with_check = |path: &str| {
        SIDECAR.replace(
            "    timeouts: { connect: 1s, response_header: 1s, idle: 2s }\n",
            &format!("    timeouts: {{ connect: 1s, response_header: 1s, idle: 2s }}\n    health_check: {{ path: {path}, interval: 100ms, timeout: 100ms }}\n"),
        )
    };
    let healthy = Gate::start(&with_check("/"), &up.url()).await;
    let admin = healthy.admin.unwrap();
    eventually(5, "ready once the health check passes", || async move {
        get(&format!("http://{admin}/-/ready")).await.0 == 200
    })
    .await;

    let sick = Gate::start(&with_check("/status/503"), &up.url()).await;
    let admin = sick.admin.unwrap();
    eventually(
        5,
        "the failing health check shows in metrics",
        || async move {
            let (_, _, body) = get(&format!("http://{admin}/metrics")).await;
            String::from_utf8_lossy(&body).contains(r#"tenantgate_upstream_up{upstream="mimir"} 0"#)
        },
    )
    .await;
    let (status, body) = admin_get(&sick, "/-/ready").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("health check failing for upstream(s) mimir"),
        "{body}"
    );
    // Requests are still served: readiness is advice to the load balancer, not a block.
    assert_eq!(get(&sick.url("/prometheus/api/v1/labels")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shutdown_delay_keeps_accepting_while_readiness_is_503() {
    let up = Upstream::start().await;
    let yaml = SIDECAR.replace(
        "server:\n  listen: 127.0.0.1:0\n",
        "server:\n  listen: 127.0.0.1:0\n  shutdown_delay: 1s\n",
    );
    let mut gate = Gate::start(&yaml, &up.url()).await;
    let admin = gate.admin.unwrap();
    gate.begin_stop();
    eventually(5, "readiness 503", || async move {
        get(&format!("http://{admin}/-/ready")).await.0 == 503
    })
    .await;
    // Not ready, yet new connections are still served during the delay.
    assert_eq!(get(&gate.url("/prometheus/api/v1/labels")).await.0, 200);
    gate.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_max_requests_in_flight_get_503_with_retry_after() {
    let up = Upstream::start().await;
    let yaml = SIDECAR.replace(
        "server:\n  listen: 127.0.0.1:0\n",
        "server:\n  listen: 127.0.0.1:0\n  max_requests_in_flight: 2\n",
    );
    let gate = Gate::start(&yaml, &up.url()).await;
    // Two streams hold both slots until their bodies are done.
    let a = client()
        .request(Request::get(gate.url("/drip/1500")).body(empty()).unwrap())
        .await
        .unwrap();
    let b = client()
        .request(Request::get(gate.url("/drip/1500")).body(empty()).unwrap())
        .await
        .unwrap();
    let (status, headers, body) = get(&gate.url("/prometheus/api/v1/labels")).await;
    assert_eq!(status, 503);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(json(&body)["errorType"], "unavailable");
    // The refusal is counted under its reason; the limit is exported beside it.
    let (_, text) = admin_get(&gate, "/metrics").await;
    for line in [
        r#"tenantgate_requests_refused_total{reason="in_flight_limit"} 1"#,
        r#"tenantgate_requests_refused_total{reason="credential_check_queue"} 0"#,
        r#"tenantgate_requests_refused_total{reason="failed_login_limit"} 0"#,
        "tenantgate_requests_in_flight_limit 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    a.into_body().collect().await.unwrap();
    b.into_body().collect().await.unwrap();
    assert_eq!(get(&gate.url("/prometheus/api/v1/labels")).await.0, 200);
}
