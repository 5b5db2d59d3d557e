//! No patched Thanos needed: a stock sidecar authenticates with `--prometheus.http-client-file`
//! (basic auth, a bearer token, a TLS client certificate) on a `from: identity` route, and
//! tenantgate gives it the tenant of that identity.

use crate::common::pki::Pki;
use crate::harness::{Http, TempDir, TenantGate};
use crate::rig::{self, Peers};
use crate::topology::{two_tenants, writer};
use crate::{instant, until};

const PASSWORD: &str = "sidecar-password";
const TOKEN: &str = "sidecar-token-0123456789abcdef";

/// tenantgate over TLS with one identity of each kind, all on one `from: identity` route.
fn identity_gate(pki: &Pki, cortex: &str) -> String {
    let server = pki.issue("server", "tenantgate", &["localhost"], true, false);
    let hash = bcrypt::hash(PASSWORD, 4).expect("bcrypt");
    std::fs::write(pki.dir.join("htpasswd"), format!("sidecar-a:{hash}\n")).expect("htpasswd");
    std::fs::write(pki.dir.join("token"), TOKEN).expect("token");
    format!(
        r#"
server:
  listen: 127.0.0.1:0
  shutdown_grace: 1s
  tls: {{ cert_file: {cert}, key_file: {key}, client_ca_file: {ca}, client_auth: optional }}
upstreams:
  cortex: {{ url: "{cortex}", timeouts: {{ connect: 2s, response_header: 30s }} }}
identities:
  - {{ name: basic-a, tenant: team-a, basic_auth: {{ user: sidecar-a, htpasswd_file: {dir}/htpasswd }} }}
  - {{ name: bearer-b, tenant: team-b, bearer_token: {{ file: {dir}/token }} }}
  - {{ name: cert-a, tenant: team-a, client_cert: {{ cn: sidecar-cert }} }}
routes:
  - name: sidecar
    match: {{ path_prefix: /prometheus }}
    upstream: cortex
    tenant: {{ from: identity }}
    prometheus:
      external_labels: {{ cluster: peers, source: cortex }}
"#,
        cert = server.0.display(),
        key = server.1.display(),
        ca = pki.ca_file().display(),
        dir = pki.dir.display(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_sidecar_gets_its_tenant_from_basic_auth_a_bearer_token_or_a_client_certificate() {
    let Some(peers) = Peers::require("a_stock_sidecar_gets_its_tenant") else {
        return;
    };
    if let Err(e) = identities(&peers).await {
        panic!("{e}");
    }
}

async fn identities(peers: &Peers) -> Result<(), String> {
    let dir = TempDir::new("peers-auth")?;
    let pki = Pki::new("peers-auth");
    let http = Http::new();
    let cortex = rig::cortex(peers, &http, dir.path(), "").await?;
    // Writes with fixed tenants (job a -> team-a, job b -> team-b), reads by identity over TLS.
    let writes = TenantGate::start(&two_tenants(&cortex.url(), "cortex")).await?;
    let reads = TenantGate::start(&identity_gate(&pki, &cortex.url())).await?;
    let _prometheus = writer(
        peers,
        &http,
        dir.path(),
        &writes.url(""),
        "prometheus.WriteRequest",
    )
    .await?;

    let ca = pki.ca_file().display().to_string();
    let (cert, key) = pki.issue("sidecar-cert", "sidecar-cert", &[], false, true);
    let tls = format!("tls_config: {{ ca_file: {ca} }}\n");
    let cases = [
        (
            "basic",
            format!("basic_auth: {{ username: sidecar-a, password: {PASSWORD} }}\n{tls}"),
            "a",
        ),
        ("bearer", format!("bearer_token: {TOKEN}\n{tls}"), "b"),
        (
            "cert",
            format!(
                "tls_config: {{ ca_file: {ca}, cert_file: {}, key_file: {} }}\n",
                cert.display(),
                key.display()
            ),
            "a",
        ),
    ];
    let base = format!("https://127.0.0.1:{}/prometheus", reads.addr.port());
    for (kind, client, job) in cases {
        let file = dir.write(&format!("http-client-{kind}.yaml"), client.as_bytes())?;
        let sidecar = rig::sidecar(
            &peers.thanos,
            &http,
            dir.path(),
            &format!("sidecar-{kind}"),
            &base,
            &[format!("--prometheus.http-client-file={}", file.display())],
        )
        .await
        .map_err(|e| format!("{kind}: {e}"))?;
        let query = rig::query(
            &peers.thanos,
            &http,
            dir.path(),
            &[format!("127.0.0.1:{}", sidecar.ports[1])],
            &[],
        )
        .await?;
        let q = query.url();
        until(
            &format!("{kind}: only job {job} through the sidecar"),
            90,
            || async {
                let result = instant(&http, &q, "up", &[]).await?;
                let jobs: Vec<&str> = result
                    .iter()
                    .filter_map(|s| s["metric"]["job"].as_str())
                    .collect();
                if jobs.iter().any(|j| *j != job) {
                    return Err(format!(
                        "FAIL: {kind} identity read another tenant's data: {result:?}"
                    ));
                }
                if jobs.is_empty() {
                    return Err("no data yet".to_owned());
                }
                Ok(())
            },
        )
        .await?;
    }
    Ok(())
}
