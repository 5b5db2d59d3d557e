//! The Prometheus endpoints Mimir lacks are answered by tenantgate over real sockets, never
//! forwarded; everything else under the prefix is forwarded. The admin listener reports it all.

mod common;

use common::*;

#[tokio::test]
async fn emulated_endpoints_are_answered_and_not_forwarded() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    for path in [
        "api/v1/status/config",
        "api/v1/status/buildinfo",
        "api/v1/status/flags",
        "api/v1/status/runtimeinfo",
        "api/v1/targets",
        "api/v1/status/tsdb",
    ] {
        let (status, headers, body) = get(&gate.url(&format!("/prometheus/{path}"))).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers["content-type"], "application/json", "{path}");
        assert_eq!(json(&body)["status"], "success", "{path}");
    }
    let (status, headers, body) = get(&gate.url("/prometheus/metrics")).await;
    assert_eq!(status, 200);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.contains("# TYPE prometheus_tsdb_lowest_timestamp_seconds gauge\nprometheus_tsdb_lowest_timestamp_seconds 0\n"), "{text}");
    assert!(
        up.requests().is_empty(),
        "an emulated endpoint reached the upstream: {:?}",
        up.requests()
    );

    let (_, _, body) = get(&gate.url("/prometheus/api/v1/status/config")).await;
    let yaml = json(&body)["data"]["yaml"].as_str().unwrap().to_owned();
    assert!(yaml.contains("external_labels:"), "{yaml}");
    assert!(yaml.contains("cluster: loopback"), "{yaml}");
    let (_, _, body) = get(&gate.url("/prometheus/api/v1/status/buildinfo")).await;
    assert_eq!(json(&body)["data"]["version"], "2.53.0");

    // Not emulated: forwarded, with the tenant.
    assert_eq!(
        get(&gate.url("/prometheus/api/v1/query?query=up")).await.0,
        200
    );
    assert_eq!(up.last().all("x-scope-orgid"), ["team-a"]);
}

#[tokio::test]
async fn admin_listener_serves_health_readiness_and_metrics() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let admin = gate.admin.expect("admin listener");
    assert_eq!(get(&format!("http://{admin}/-/healthy")).await.0, 200);
    assert_eq!(get(&format!("http://{admin}/-/ready")).await.0, 200);

    get(&gate.url("/prometheus/api/v1/status/config")).await;
    get(&gate.url("/prometheus/api/v1/labels")).await;
    get(&gate.url("/prometheus/api/v1/labels")).await;
    let (status, _, body) = get(&format!("http://{admin}/metrics")).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(body.to_vec()).unwrap();
    assert!(text.contains(r#"tenantgate_requests_total{route="sidecar",tenant="team-a",method="GET",code="200"} 3"#), "{text}");
    assert!(
        text.contains(r#"tenantgate_emulated_requests_total{route="sidecar",endpoint="config"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("tenantgate_sidecar_last_seen_timestamp_seconds{route=\"sidecar\"}"),
        "{text}"
    );
    assert!(text.contains("tenantgate_build_info{version="), "{text}");
    assert_eq!(get(&format!("http://{admin}/nope")).await.0, 404);
}

#[tokio::test]
async fn only_a_successful_get_of_status_config_moves_the_sidecar_gauge() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let admin = gate.admin.expect("admin listener");
    let last_seen = || async move {
        let (_, _, body) = get(&format!("http://{admin}/metrics")).await;
        String::from_utf8(body.to_vec())
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix(
                    r#"tenantgate_sidecar_last_seen_timestamp_seconds{route="sidecar"} "#,
                )
            })
            .map(str::to_owned)
    };
    let config = gate.url("/prometheus/api/v1/status/config");
    let not_reads = || async {
        let post = http::Request::post(&config).body(empty()).unwrap();
        assert_eq!(send(post).await.0, 405, "POST status/config");
        let head = http::Request::head(&config).body(empty()).unwrap();
        assert_eq!(send(head).await.0, 200, "HEAD status/config");
    };

    not_reads().await;
    assert_eq!(
        last_seen().await,
        None,
        "a POST (405) or a HEAD of status/config is no sidecar reading it"
    );
    assert_eq!(get(&config).await.0, 200);
    let seen = last_seen()
        .await
        .expect("a GET of status/config sets the gauge");
    // The gauge has millisecond resolution: anything that moved it would show.
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    not_reads().await;
    assert_eq!(
        last_seen().await.as_deref(),
        Some(seen.as_str()),
        "a POST (405) or a HEAD moved the gauge"
    );
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert_eq!(get(&config).await.0, 200);
    let again = last_seen().await.unwrap();
    assert!(
        again.parse::<f64>().unwrap() > seen.parse::<f64>().unwrap(),
        "the next GET did not move the gauge: {seen} then {again}"
    );
}

#[tokio::test]
async fn readiness_goes_false_while_draining() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let admin = gate.admin.expect("admin listener");
    assert_eq!(get(&format!("http://{admin}/-/ready")).await.0, 200);
    gate.stop().await;
    // After the drain the listener is gone: connecting fails.
    assert!(tokio::net::TcpStream::connect(admin).await.is_err());
}
