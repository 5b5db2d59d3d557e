//! Tests of [`super`]: the in-flight limit, refusals and pools across reloads.

use super::*;
use crate::config::{Overrides, from_yaml};

fn config(timeout: &str) -> Config {
    let yaml = format!(
        "upstreams:\n  a: {{ url: \"http://127.0.0.1:1\" }}\n  b: {{ url: \"http://127.0.0.1:2\", timeouts: {{ connect: {timeout} }} }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: a, tenant: t }}\n"
    );
    from_yaml(&yaml, "test.yaml", &Overrides::default()).unwrap()
}

fn with_in_flight_limit(limit: usize) -> Config {
    let yaml = format!(
        "server:\n  max_requests_in_flight: {limit}\nupstreams:\n  a: {{ url: \"http://127.0.0.1:1\" }}\nroutes:\n  - {{ name: r, match: {{ path_prefix: / }}, upstream: a, tenant: t }}\n"
    );
    from_yaml(&yaml, "test.yaml", &Overrides::default()).unwrap()
}

#[tokio::test]
async fn the_in_flight_limit_gauge_shows_the_running_limit_which_a_reload_keeps() {
    let app = App::new(with_in_flight_limit(7), AppOptions { access_log: false }).unwrap();
    let line = |app: &App| {
        app.metrics()
            .encode_text()
            .lines()
            .find(|l| l.starts_with("tenantgate_requests_in_flight_limit "))
            .map(str::to_owned)
    };
    assert_eq!(
        line(&app).as_deref(),
        Some("tenantgate_requests_in_flight_limit 7")
    );
    app.swap(with_in_flight_limit(9)).unwrap();
    assert_eq!(
        line(&app).as_deref(),
        Some("tenantgate_requests_in_flight_limit 7"),
        "the semaphore keeps its start size, so the gauge must too"
    );
}

#[test]
fn queued_credential_checks_and_throttled_logins_are_counted_as_refusals() {
    use crate::auth::AuthError;
    let metrics = Metrics::new();
    let source = TenantSource::Identity {
        allowed: None,
        federation: false,
    };
    let ids = Identities::default();
    let refused = |m: &Metrics, reason: &str| {
        let prefix = format!("tenantgate_requests_refused_total{{reason=\"{reason}\"}} ");
        m.encode_text()
            .lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()).map(str::to_owned))
    };
    let busy = tenant_error(
        TenantError::Unauthenticated(AuthError::Busy),
        &source,
        &ids,
        &metrics,
    );
    assert_eq!(busy.status().0, http::StatusCode::SERVICE_UNAVAILABLE);
    let throttled = tenant_error(
        TenantError::Unauthenticated(AuthError::Throttled(std::time::Duration::from_secs(3))),
        &source,
        &ids,
        &metrics,
    );
    assert_eq!(throttled.status().0, http::StatusCode::TOO_MANY_REQUESTS);
    let _ = tenant_error(
        TenantError::Unauthenticated(AuthError::Invalid),
        &source,
        &ids,
        &metrics,
    );
    assert_eq!(
        refused(&metrics, "credential_check_queue").as_deref(),
        Some("1")
    );
    assert_eq!(
        refused(&metrics, "failed_login_limit").as_deref(),
        Some("1")
    );
    assert_eq!(
        refused(&metrics, "in_flight_limit").as_deref(),
        Some("0"),
        "a wrong password is no refusal"
    );
}

#[test]
fn a_reload_keeps_the_pools_of_unchanged_upstreams_only() {
    let metrics = Arc::new(Metrics::new());
    let first = Runtime::new(config("5s"), None, &metrics).unwrap();
    let second = Runtime::new(config("7s"), Some(&first), &metrics).unwrap();
    assert!(
        Arc::ptr_eq(&first.upstreams["a"], &second.upstreams["a"]),
        "unchanged upstream got a new pool"
    );
    assert!(
        !Arc::ptr_eq(&first.upstreams["b"], &second.upstreams["b"]),
        "changed upstream kept its old pool"
    );
}

#[test]
fn a_head_is_measured_as_http1_writes_it() {
    let req = Request::get("/x").header("host", "a").body(()).unwrap();
    // "GET /x HTTP/1.1\r\n" + "host: a\r\n" + "\r\n"
    assert_eq!(head_size(&req), 17 + 9 + 2);
}

#[tokio::test]
async fn a_route_with_a_host_is_chosen_by_the_request_host() {
    // The request's Host is read only when some route matches on it: this config has one.
    let yaml = "upstreams:\n  a: { url: \"http://127.0.0.1:1\" }\nroutes:\n  - { name: by-host, match: { path_prefix: /, host: other.example }, upstream: a, tenant: t }\n  - { name: any, match: { path_prefix: / }, upstream: a, tenant: t }\n";
    let config = from_yaml(yaml, "test.yaml", &Overrides::default()).unwrap();
    let app = App::new(config, AppOptions { access_log: false }).unwrap();
    assert!(app.runtime().table.uses_host());
    for host in ["other.example:9090", "else.example"] {
        let req = Request::get("/x")
            .header(header::HOST, host)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        drop(app.handle(req).await);
    }
    let text = app.metrics().encode_text();
    for route in ["by-host", "any"] {
        let want = format!(
            r#"tenantgate_requests_total{{route="{route}",tenant="t",method="GET",code="502"}} 1"#
        );
        assert!(text.lines().any(|l| l == want), "no {want:?} in:\n{text}");
    }
    let plain = from_yaml(
        "upstreams:\n  a: { url: \"http://127.0.0.1:1\" }\nroutes:\n  - { name: r, match: { path_prefix: / }, upstream: a, tenant: t }\n",
        "test.yaml",
        &Overrides::default(),
    )
    .unwrap();
    assert!(!RouteTable::new(plain.routes).uses_host());
}

/// A forwarded request's future is boxed until the response headers: its size is memory per
/// request waiting on the upstream, and bytes moved per request. Built from `async fn`s it held the request at every
/// level, twice (4.2 KB, and 4.9 KB as the server boxed it); now the upstream exchange is built
/// first and held once (696 bytes; 712 as the server boxes it).
#[tokio::test]
async fn a_forwarded_request_s_future_holds_the_upstream_exchange_and_little_else() {
    let app = App::new(config("1s"), AppOptions { access_log: false }).unwrap();
    let req = Request::get("/api/v1/labels")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let serving = app.serve(req, &Arc::new(ConnInfo::default()));
    let size = std::mem::size_of_val(&serving);
    assert!(size < 1024, "a forwarded request's future is {size} bytes");
}
