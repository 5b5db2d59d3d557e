//! Remote write from Prometheus 3, versions 1.0 and 2.0, through tenantgate into Cortex. A
//! recording relay on each side of tenantgate shows that the request headers a receiver needs
//! and the receiver's whole answer (status, body, `Retry-After`, the `*-Written` counts) pass
//! unchanged, and that nothing is invented.

use crate::harness::{Http, TempDir, TenantGate};
use crate::relay::{Exchange, Relay};
use crate::rig::{self, Peers};
use crate::topology::{two_tenants, writer};
use crate::{instant, until};

/// Request headers a remote-write receiver acts on: they must reach it as the sender wrote them.
const REQUEST_HEADERS: [&str; 4] = [
    "content-type",
    "content-encoding",
    "x-prometheus-remote-write-version",
    "retry-attempt",
];

/// Answer headers a sender acts on: they must reach it as the receiver wrote them, or not at all.
const RESPONSE_HEADERS: [&str; 5] = [
    "content-type",
    "retry-after",
    "x-prometheus-remote-write-samples-written",
    "x-prometheus-remote-write-histograms-written",
    "x-prometheus-remote-write-exemplars-written",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_1_0_from_prometheus_3_lands_in_cortex_with_answers_unchanged() {
    let Some(peers) = Peers::require("remote_write_1_0_from_prometheus_3") else {
        return;
    };
    if let Err(e) = writes(&peers, "prometheus.WriteRequest").await {
        panic!("{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_2_0_from_prometheus_3_reaches_cortex_with_answers_unchanged() {
    let Some(peers) = Peers::require("remote_write_2_0_from_prometheus_3") else {
        return;
    };
    if let Err(e) = writes(&peers, "io.prometheus.write.v2.Request").await {
        panic!("{e}");
    }
}

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> Vec<&'a [u8]> {
    h.get_all(name).iter().map(|v| v.as_bytes()).collect()
}

async fn writes(peers: &Peers, message: &str) -> Result<(), String> {
    let dir = TempDir::new("peers-writes")?;
    let http = Http::new();
    let cortex = rig::cortex(peers, &http, dir.path(), "").await?;
    let inner = Relay::start(&cortex.url()).await?;
    let gate = TenantGate::start(&two_tenants(&inner.url(""), "cortex")).await?;
    let outer = Relay::start(&gate.url("")).await?;
    let _prometheus = writer(peers, &http, dir.path(), &outer.url(""), message).await?;

    // Enough pushes of both tenants, each seen on both sides of tenantgate.
    let pairs: Vec<(Exchange, Exchange)> = until("pushes through both relays", 90, || async {
        let (out, inn) = (outer.exchanges(), inner.exchanges());
        let pairs: Vec<(Exchange, Exchange)> = out
            .iter()
            .filter_map(|o| {
                inn.iter()
                    .find(|i| i.body_sha256 == o.body_sha256)
                    .map(|i| (o.clone(), i.clone()))
            })
            .collect();
        let tenants = |t: &str| pairs.iter().filter(|(o, _)| o.path.starts_with(t)).count();
        if tenants("/team-a/") >= 3 && tenants("/team-b/") >= 3 {
            Ok(pairs)
        } else {
            Err(format!(
                "{} pushes in, {} out so far: {:?}",
                out.len(),
                inn.len(),
                out.iter().map(|e| e.status).collect::<Vec<_>>()
            ))
        }
    })
    .await?;

    for (sent, got) in &pairs {
        let tenant = if sent.path.starts_with("/team-a/") {
            "team-a"
        } else {
            "team-b"
        };
        if header(&got.request_headers, "x-scope-orgid") != [tenant.as_bytes()] {
            return Err(format!(
                "push to {} reached Cortex with tenant {:?}",
                sent.path,
                got.request_headers.get_all("x-scope-orgid")
            ));
        }
        for h in REQUEST_HEADERS {
            if header(&sent.request_headers, h) != header(&got.request_headers, h) {
                return Err(format!(
                    "request header {h} changed on the way: Prometheus sent {:?}, Cortex got {:?}",
                    sent.request_headers.get_all(h),
                    got.request_headers.get_all(h)
                ));
            }
        }
        if sent.status != got.status || sent.response_body != got.response_body {
            return Err(format!(
                "Cortex answered {} {:?}, Prometheus got {} {:?}",
                got.status, got.response_body, sent.status, sent.response_body
            ));
        }
        for h in RESPONSE_HEADERS {
            if header(&sent.response_headers, h) != header(&got.response_headers, h) {
                return Err(format!(
                    "answer header {h}: Cortex sent {:?}, Prometheus got {:?}",
                    got.response_headers.get_all(h),
                    sent.response_headers.get_all(h)
                ));
            }
        }
    }
    let version = header(
        &pairs[0].0.request_headers,
        "x-prometheus-remote-write-version",
    );
    let statuses: Vec<u16> = pairs.iter().map(|(s, _)| s.status.as_u16()).collect();
    eprintln!(
        "{message}: version {:?}, {} pushes compared, statuses {statuses:?}, samples-written {:?}",
        version.first().map(|v| String::from_utf8_lossy(v)),
        pairs.len(),
        pairs[0]
            .1
            .response_headers
            .get("x-prometheus-remote-write-samples-written")
    );

    // Where Cortex accepted the pushes, the samples are there, each tenant's own.
    if pairs.iter().all(|(_, got)| got.status.is_success()) {
        let base = format!("{}/prometheus", cortex.url());
        for (tenant, job, other) in [("team-a", "a", "b"), ("team-b", "b", "a")] {
            until(&format!("{tenant}'s samples in Cortex"), 60, || async {
                let own = instant(
                    &http,
                    &base,
                    &format!("up{{job=\"{job}\"}}"),
                    &[("X-Scope-OrgID", tenant)],
                )
                .await?;
                let foreign = instant(
                    &http,
                    &base,
                    &format!("up{{job=\"{other}\"}}"),
                    &[("X-Scope-OrgID", tenant)],
                )
                .await?;
                match (own.len(), foreign.len()) {
                    (1, 0) => Ok(()),
                    _ => Err(format!("own {own:?}, foreign {foreign:?}")),
                }
            })
            .await?;
        }
    }
    Ok(())
}
