//! A client never chooses its tenant: whatever X-Scope-OrgID it sends, in whatever letter case
//! and however many copies, the upstream sees exactly the route's tenant.

mod common;

use common::*;

async fn upstream_tenants_for(raw_headers: &str) -> Vec<String> {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let req = format!(
        "GET /prometheus/api/v1/labels HTTP/1.1\r\nHost: x\r\n{raw_headers}Connection: close\r\n\r\n"
    );
    let resp = raw(gate.addr, &req).await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    up.last().all("x-scope-orgid")
}

#[tokio::test]
async fn lower_case_header_is_replaced() {
    assert_eq!(
        upstream_tenants_for("x-scope-orgid: evil\r\n").await,
        ["team-a"]
    );
}

#[tokio::test]
async fn upper_case_header_is_replaced() {
    assert_eq!(
        upstream_tenants_for("X-SCOPE-ORGID: evil\r\n").await,
        ["team-a"]
    );
}

#[tokio::test]
async fn two_copies_in_different_case_become_one() {
    assert_eq!(
        upstream_tenants_for("X-Scope-OrgID: evil\r\nx-scope-orgid: evil2\r\n").await,
        ["team-a"]
    );
}

#[tokio::test]
async fn federation_attempt_is_replaced() {
    assert_eq!(
        upstream_tenants_for("X-Scope-OrgID: team-a|team-b\r\n").await,
        ["team-a"]
    );
}

#[tokio::test]
async fn empty_header_is_replaced() {
    assert_eq!(
        upstream_tenants_for("X-Scope-OrgID: \r\n").await,
        ["team-a"]
    );
}

#[tokio::test]
async fn a_header_named_in_connection_cannot_remove_the_tenant() {
    assert_eq!(
        upstream_tenants_for("Connection: x-scope-orgid\r\nX-Scope-OrgID: evil\r\n").await,
        ["team-a"]
    );
}

#[tokio::test]
async fn each_route_sends_only_its_own_tenant() {
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    raw(
        gate.addr,
        "GET /other HTTP/1.1\r\nHost: x\r\nX-Scope-OrgID: team-a\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(up.last().all("x-scope-orgid"), ["team-b"]);
    raw(gate.addr, "POST /api/v1/push HTTP/1.1\r\nHost: x\r\nX-Scope-OrgID: team-b\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").await;
    assert_eq!(up.last().all("x-scope-orgid"), ["team-a"]);
}

#[tokio::test]
async fn underscore_lookalikes_and_the_label_policy_header_never_reach_the_upstream() {
    // NGINX with `underscores_in_headers on` reads X_Scope_OrgID as the tenant header, and Mimir
    // enforces label-based access from X-Prom-Label-Policy: a client may set neither.
    let up = Upstream::start().await;
    let gate = Gate::start(SIDECAR, &up.url()).await;
    let resp = raw(
        gate.addr,
        "GET /prometheus/api/v1/labels HTTP/1.1\r\nHost: x\r\nX_Scope_OrgID: evil\r\nX-Prom-Label-Policy: evil:%7Bjob%3D%22x%22%7D\r\nX_Prom_Label_Policy: evil\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let seen = up.last();
    assert_eq!(seen.all("x-scope-orgid"), ["team-a"]);
    for name in [
        "x_scope_orgid",
        "x-prom-label-policy",
        "x_prom_label_policy",
    ] {
        assert!(seen.all(name).is_empty(), "{name} reached the upstream");
    }
}
