//! `tenant: { from: label }` against real Cortex: a real Prometheus 3 remote-writes series of
//! three teams in one stream (Remote Write 1.0 and 2.0) to one tenantgate route, and each team's
//! series land in that team's Cortex tenant, exactly, queried back per tenant. A tenant over its
//! Cortex ingestion limit makes the merged answer retryable (429), while the other tenants'
//! samples land; a series naming a tenant the route does not allow is refused and nothing lands.
//! OTLP metrics of two namespaces, gzip-compressed as collectors send them, land in two tenants
//! through Cortex's OTLP endpoint.

use bytes::Bytes;
use prost::Message;

use crate::common::otlp;
use crate::harness::{Http, Prometheus, TempDir, TenantGate};
use crate::rig::{self, Peers};
use crate::{instant, until};
use tenantgate::migrate::wire::{Label, snappy};
use tenantgate::push::wire::V1Series;

const TEAMS: [&str; 3] = ["team-a", "team-b", "team-c"];

fn gate_config(cortex: &str) -> String {
    format!(
        r#"
server: {{ listen: 127.0.0.1:0 }}
upstreams: {{ cortex: {{ url: "{cortex}" }} }}
routes:
  - name: push
    match: {{ path: /api/v1/push }}
    upstream: cortex
    tenant: {{ from: label, labels: [team], allow: [team-a, team-b, team-c, limited] }}
  - name: otlp
    match: {{ path: /otlp/v1/metrics }}
    upstream: cortex
    rewrite: {{ path: /api/v1/otlp/v1/metrics }}
    tenant: {{ from: label, attributes: [service.namespace], allow: [team-a, team-b] }}
"#
    )
}

/// Prometheus 3 scraping itself as one job per team, each job labelled with its team, all
/// remote-written in one queue.
fn sender_config(port: u16, push: &str, message: &str) -> String {
    let mut jobs = String::new();
    for team in TEAMS {
        jobs.push_str(&format!(
            "  - job_name: {team}\n    static_configs: [{{ targets: ['127.0.0.1:{port}'], labels: {{ team: {team} }} }}]\n"
        ));
    }
    format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n{jobs}remote_write:\n  - url: {push}\n    protobuf_message: {message}\n    queue_config: {{ batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s }}\n"
    )
}

async fn lands_per_team(peers: &Peers, message: &str) -> Result<(), String> {
    let dir = TempDir::new("peers-split")?;
    let http = Http::new();
    let cortex = rig::cortex_with(
        peers,
        &http,
        dir.path(),
        "",
        &["-distributor.remote-writev2-enabled=true"],
    )
    .await?;
    let gate = TenantGate::start(&gate_config(&cortex.url())).await?;
    let push = gate.url("/api/v1/push");
    let _sender = Prometheus::start(
        &peers.prometheus3(),
        &http,
        dir.path(),
        "sender",
        "",
        &[],
        |port| sender_config(port, &push, message),
    )
    .await?;
    let base = format!("{}/prometheus", cortex.url());
    for team in TEAMS {
        until(
            &format!("{team}'s series alone in its tenant ({message})"),
            90,
            || async {
                let mine = instant(&http, &base, "up", &[("X-Scope-OrgID", team)]).await?;
                let teams: Vec<&str> = mine
                    .iter()
                    .filter_map(|s| s["metric"]["team"].as_str())
                    .collect();
                if teams == [team] {
                    Ok(())
                } else {
                    Err(format!("tenant {team} holds up for teams {teams:?}"))
                }
            },
        )
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_1_0_of_three_teams_lands_in_three_cortex_tenants() {
    let Some(peers) = Peers::require("label_split_remote_write_1_0") else {
        return;
    };
    if let Err(e) = lands_per_team(&peers, "prometheus.WriteRequest").await {
        panic!("{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_write_2_0_of_three_teams_lands_in_three_cortex_tenants() {
    let Some(peers) = Peers::require("label_split_remote_write_2_0") else {
        return;
    };
    if let Err(e) = lands_per_team(&peers, "io.prometheus.write.v2.Request").await {
        panic!("{e}");
    }
}

fn batch(series: &[(&str, &str)], now_ms: i64) -> Bytes {
    #[derive(Clone, PartialEq, Message)]
    struct W {
        #[prost(message, repeated, tag = "1")]
        timeseries: Vec<V1Series>,
    }
    let sample = tenantgate::migrate::wire::Sample {
        value: 1.0,
        timestamp: now_ms,
    }
    .encode_to_vec();
    let raw = W {
        timeseries: series
            .iter()
            .map(|(name, team)| V1Series {
                labels: vec![
                    Label {
                        name: "__name__".into(),
                        value: (*name).into(),
                    },
                    Label {
                        name: "team".into(),
                        value: (*team).into(),
                    },
                ],
                // Two samples each: over a burst of one.
                samples: vec![Bytes::from(sample.clone()), Bytes::from(sample.clone())],
                ..V1Series::default()
            })
            .collect(),
    }
    .encode_to_vec();
    Bytes::from(snappy(&raw).map_err(|e| e.to_string()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_cortex_limit_makes_the_answer_retryable_and_a_foreign_one_is_refused() {
    let Some(peers) = Peers::require("label_split_limits") else {
        return;
    };
    let dir = TempDir::new("peers-split-limits").expect("temp dir");
    let http = Http::new();
    let overrides = dir
        .write(
            "overrides.yaml",
            b"overrides:\n  limited:\n    ingestion_rate: 1\n    ingestion_burst_size: 1\n",
        )
        .expect("overrides");
    let extra = format!(
        "runtime_config:\n  file: {}\n  period: 1s\n",
        overrides.display()
    );
    let cortex = rig::cortex(&peers, &http, dir.path(), &extra)
        .await
        .expect("start Cortex");
    let gate = TenantGate::start(&gate_config(&cortex.url()))
        .await
        .expect("start tenantgate");
    let post = |body: Bytes| {
        let http = http.clone();
        let url = gate.url("/api/v1/push");
        async move {
            http.post(
                &url,
                &[
                    ("content-type", "application/x-protobuf"),
                    ("content-encoding", "snappy"),
                    ("x-prometheus-remote-write-version", "0.1.0"),
                ],
                body.to_vec(),
            )
            .await
        }
    };
    let now = tenantgate::time::now_millis();
    // team-a within its limits, `limited` over its burst of one sample.
    let answer = post(batch(
        &[("split_ok", "team-a"), ("split_limited", "limited")],
        now,
    ))
    .await
    .expect("push");
    assert_eq!(answer.status.as_u16(), 429, "{}", answer.text());
    assert!(
        answer.text().contains("tenant limited: HTTP 429"),
        "{}",
        answer.text()
    );
    let base = format!("{}/prometheus", cortex.url());
    until(
        "team-a's samples in Cortex despite the 429 of another tenant",
        60,
        || async {
            let got = instant(&http, &base, "split_ok", &[("X-Scope-OrgID", "team-a")]).await?;
            if got.len() == 1 {
                Ok(())
            } else {
                Err(format!("{got:?}"))
            }
        },
    )
    .await
    .expect("team-a's part landed");

    // A tenant the route does not allow: 403 naming it, and nothing of the batch is sent.
    let answer = post(batch(
        &[("split_refused", "team-b"), ("split_refused", "team-z")],
        now,
    ))
    .await
    .expect("push");
    assert_eq!(answer.status.as_u16(), 403, "{}", answer.text());
    assert!(answer.text().contains("team-z"), "{}", answer.text());
    let got = instant(
        &http,
        &base,
        "split_refused",
        &[("X-Scope-OrgID", "team-b")],
    )
    .await
    .expect("query");
    assert!(
        got.is_empty(),
        "team-b's series of a refused batch landed: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_of_two_namespaces_lands_in_two_cortex_tenants() {
    let Some(peers) = Peers::require("label_split_otlp") else {
        return;
    };
    let dir = TempDir::new("peers-split-otlp").expect("temp dir");
    let http = Http::new();
    let cortex = rig::cortex(&peers, &http, dir.path(), "")
        .await
        .expect("start Cortex");
    let gate = TenantGate::start(&gate_config(&cortex.url()))
        .await
        .expect("start tenantgate");
    let body = otlp::export(
        &[
            (Some("team-a"), "split_otlp_a"),
            (Some("team-b"), "split_otlp_b"),
        ],
        tenantgate::time::now_millis(),
    );
    let gz = tenantgate::push::otlp::gzip(&body).expect("gzip");
    let answer = http
        .post(
            &gate.url("/otlp/v1/metrics"),
            &[
                ("content-type", "application/x-protobuf"),
                ("content-encoding", "gzip"),
            ],
            gz,
        )
        .await
        .expect("post OTLP");
    assert!(
        answer.status.is_success(),
        "{} {}",
        answer.status,
        answer.text()
    );
    let base = format!("{}/prometheus", cortex.url());
    for (tenant, own, other) in [
        ("team-a", "split_otlp_a", "split_otlp_b"),
        ("team-b", "split_otlp_b", "split_otlp_a"),
    ] {
        until(
            &format!("{tenant}'s OTLP metric in its tenant only"),
            60,
            || async {
                let mine = instant(&http, &base, own, &[("X-Scope-OrgID", tenant)]).await?;
                let foreign = instant(&http, &base, other, &[("X-Scope-OrgID", tenant)]).await?;
                match (mine.len(), foreign.len()) {
                    (1, 0) => Ok(()),
                    _ => Err(format!("own {mine:?}, foreign {foreign:?}")),
                }
            },
        )
        .await
        .expect("OTLP split into tenants");
    }
}
