//! The seed recipe's topology, for real: Prometheus 3 remote-writes through tenantgate into
//! Cortex, one tenant per route; a Thanos sidecar per tenant reads Cortex back through
//! tenantgate; Thanos Query sees both, each with its external labels and only its own data.

use crate::harness::{Http, Prometheus, TempDir, TenantGate, now_ms};
use crate::rig::{self, Peers};
use crate::{instant, until};

/// tenantgate in front of Cortex: per tenant, the Prometheus API (emulating what Cortex lacks)
/// under `/<tenant>/prometheus` and remote write at `/<tenant>/api/v1/push`.
pub fn two_tenants(cortex: &str, replica: &str) -> String {
    let mut yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  shutdown_grace: 1s\nupstreams:\n  cortex:\n    url: {cortex}\n    timeouts: {{ connect: 2s, response_header: 30s }}\nroutes:\n"
    );
    for t in ["team-a", "team-b"] {
        yaml.push_str(&format!(
            r#"  - name: {t}
    match: {{ path_prefix: /{t}/prometheus }}
    upstream: cortex
    tenant: {t}
    rewrite: {{ strip_prefix: /{t} }}
    prometheus:
      external_labels: {{ cluster: peers, tenant: {t}, replica: {replica} }}
  - name: {t}-push
    match: {{ path: /{t}/api/v1/push, methods: [POST] }}
    upstream: cortex
    tenant: {t}
    rewrite: {{ strip_prefix: /{t} }}
"#
        ));
    }
    yaml
}

/// A Prometheus scraping itself as jobs `a` and `b` every second, and remote-writing job `a` to
/// `push_a` and job `b` to `push_b`.
pub fn scraper_config(port: u16, push_a: &str, push_b: &str, protobuf_message: &str) -> String {
    let rw = |url: &str, job: &str| {
        format!(
            r#"  - url: {url}
    protobuf_message: {protobuf_message}
    queue_config: {{ batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s }}
    metadata_config: {{ send: false }}
    write_relabel_configs:
      - {{ source_labels: [job], regex: {job}, action: keep }}
"#
        )
    };
    format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: a\n    static_configs: [{{ targets: ['127.0.0.1:{port}'] }}]\n  - job_name: b\n    static_configs: [{{ targets: ['127.0.0.1:{port}'] }}]\nremote_write:\n{}{}",
        rw(push_a, "a"),
        rw(push_b, "b")
    )
}

/// A Prometheus 3 scraping itself as jobs `a` and `b`, remote-writing them to
/// `<base>/team-a/api/v1/push` and `<base>/team-b/api/v1/push` in the `message` format.
pub async fn writer(
    peers: &Peers,
    http: &Http,
    dir: &std::path::Path,
    base: &str,
    message: &str,
) -> Result<Prometheus, String> {
    let (push_a, push_b) = (
        format!("{base}/team-a/api/v1/push"),
        format!("{base}/team-b/api/v1/push"),
    );
    Prometheus::start(
        &peers.prometheus3(),
        http,
        dir,
        "prometheus3",
        "",
        &[],
        |port| scraper_config(port, &push_a, &push_b, message),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thanos_query_reads_each_tenant_from_cortex_through_its_own_sidecar() {
    let Some(peers) = Peers::require("thanos_query_reads_each_tenant_from_cortex") else {
        return;
    };
    if let Err(e) = topology(&peers).await {
        panic!("{e}");
    }
}

async fn topology(peers: &Peers) -> Result<(), String> {
    let dir = TempDir::new("peers-topology")?;
    let http = Http::new();
    let cortex = rig::cortex(peers, &http, dir.path(), "").await?;
    let gate = TenantGate::start(&two_tenants(&cortex.url(), "cortex")).await?;
    let _prometheus = writer(
        peers,
        &http,
        dir.path(),
        &gate.url(""),
        "prometheus.WriteRequest",
    )
    .await?;

    // The newest sidecar for team-a, the oldest supported one for team-b.
    let sidecar_a = rig::sidecar(
        &peers.thanos,
        &http,
        dir.path(),
        "sidecar-a",
        &gate.url("/team-a/prometheus"),
        &[],
    )
    .await?;
    let sidecar_b = rig::sidecar(
        &peers.thanos_old,
        &http,
        dir.path(),
        "sidecar-b",
        &gate.url("/team-b/prometheus"),
        &[],
    )
    .await?;
    let stores = [
        format!("127.0.0.1:{}", sidecar_a.ports[1]),
        format!("127.0.0.1:{}", sidecar_b.ports[1]),
    ];
    let query = rig::query(&peers.thanos, &http, dir.path(), &stores, &[]).await?;
    let q = query.url();

    // Both stores connected, with the external labels tenantgate emulates and no error.
    until(
        "Thanos Query listing both sidecars without error",
        60,
        || async {
            let data = http.get(&format!("{q}/api/v1/stores")).await?.prom_data()?;
            let sidecars = data["sidecar"].as_array().cloned().unwrap_or_default();
            if sidecars.len() != 2 {
                return Err(format!("stores: {data}"));
            }
            for s in &sidecars {
                if !s["lastError"].is_null() {
                    return Err(format!("a store has an error: {s}"));
                }
                let tenant = s["labelSets"][0]["tenant"].as_str().unwrap_or("");
                if !(tenant == "team-a" || tenant == "team-b")
                    || s["labelSets"][0]["cluster"] != "peers"
                {
                    return Err(format!("external labels not as configured: {s}"));
                }
            }
            Ok(())
        },
    )
    .await
    .map_err(|e| {
        format!(
            "{e}\n{}\n{}",
            sidecar_a.process.logs(),
            sidecar_b.process.logs()
        )
    })?;

    // `up` of each job arrives through Cortex, labelled with its own tenant only.
    let started = now_ms();
    until("`up` of both jobs through Thanos Query", 90, || async {
        let result = instant(&http, &q, "up", &[]).await?;
        let mut seen = Vec::new();
        for series in &result {
            let m = &series["metric"];
            let (job, tenant) = (
                m["job"].as_str().unwrap_or(""),
                m["tenant"].as_str().unwrap_or(""),
            );
            match (job, tenant) {
                ("a", "team-a") | ("b", "team-b") => seen.push(job.to_owned()),
                _ => {
                    return Err(format!(
                        "FAIL: series crossed tenants (job {job} under tenant {tenant}): {m}"
                    ));
                }
            }
        }
        seen.sort();
        seen.dedup();
        if seen == ["a", "b"] {
            Ok(())
        } else {
            Err(format!("only {seen:?} so far: {result:?}"))
        }
    })
    .await
    .map_err(|e| {
        if e.contains("FAIL:") {
            e
        } else {
            format!("{e}\n{}", cortex.process.logs())
        }
    })?;
    eprintln!("both tenants visible {} ms after start", now_ms() - started);

    // Each sidecar serves its own tenant only: asking team-b's store for job a finds nothing.
    for (tenant, other_job) in [("team-a", "b"), ("team-b", "a")] {
        let crossed = instant(
            &http,
            &q,
            &format!("up{{tenant=\"{tenant}\",job=\"{other_job}\"}}"),
            &[],
        )
        .await?;
        if !crossed.is_empty() {
            return Err(format!("{tenant} sees job {other_job}: {crossed:?}"));
        }
    }

    // Cortex agrees: each tenant holds its own job and nothing of the other.
    for (tenant, job, other) in [("team-a", "a", "b"), ("team-b", "b", "a")] {
        let base = format!("{}/prometheus", cortex.url());
        until(
            &format!("Cortex tenant {tenant} holding job {job} only"),
            60,
            || async {
                let as_tenant = [("X-Scope-OrgID", tenant)];
                let own =
                    instant(&http, &base, &format!("up{{job=\"{job}\"}}"), &as_tenant).await?;
                let foreign =
                    instant(&http, &base, &format!("up{{job=\"{other}\"}}"), &as_tenant).await?;
                if own.is_empty() || !foreign.is_empty() {
                    return Err(format!("own {own:?}, foreign {foreign:?}"));
                }
                Ok(())
            },
        )
        .await?;
    }

    // Thanos Query's TSDB status page has no error from either store (the v0.42 sidecar
    // forwards it to tenantgate's emulated status/tsdb).
    let tsdb = http.get(&format!("{q}/api/v1/status/tsdb")).await?;
    let body = tsdb.json()?;
    if tsdb.status != http::StatusCode::OK || body.get("warnings").is_some() {
        return Err(format!(
            "Thanos Query status/tsdb: HTTP {}: {body}",
            tsdb.status
        ));
    }
    if !body
        .to_string()
        .contains("not available through tenantgate")
    {
        return Err(format!("status/tsdb lacks tenantgate's entry: {body}"));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_deduplicated_series_spans_the_old_prometheus_and_cortex_with_no_gap() {
    let Some(peers) = Peers::require("one_deduplicated_series_spans") else {
        return;
    };
    if let Err(e) = migration_story(&peers).await {
        panic!("{e}");
    }
}

/// The migration: an "old" Prometheus with its own sidecar holds the history; a new Prometheus
/// scraping the same target writes into Cortex from the switch-over on; later the old one stops
/// scraping but keeps serving its history. One Thanos Query deduplicates by `replica`.
async fn migration_story(peers: &Peers) -> Result<(), String> {
    let dir = TempDir::new("peers-migration")?;
    let http = Http::new();
    let bins = peers.prometheus3();
    let old_config = |port: u16, scrape: bool| {
        let scrape = if scrape {
            format!(
                "scrape_configs:\n  - job_name: app\n    static_configs: [{{ targets: ['127.0.0.1:{port}'] }}]\n"
            )
        } else {
            String::new()
        };
        format!(
            "global:\n  scrape_interval: 1s\n  external_labels: {{ cluster: peers, tenant: team-a, replica: old }}\n{scrape}"
        )
    };
    let old = Prometheus::start(
        &bins,
        &http,
        dir.path(),
        "old",
        "",
        &["--web.enable-lifecycle"],
        |port| old_config(port, true),
    )
    .await?;
    let started = now_ms();
    let old_sidecar = rig::sidecar(
        &peers.thanos,
        &http,
        dir.path(),
        "sidecar-old",
        &old.url(),
        &[],
    )
    .await?;

    let cortex = rig::cortex(peers, &http, dir.path(), "").await?;
    let gate = TenantGate::start(&two_tenants(&cortex.url(), "cortex")).await?;
    let cortex_sidecar = rig::sidecar(
        &peers.thanos,
        &http,
        dir.path(),
        "sidecar-cortex",
        &gate.url("/team-a/prometheus"),
        &[],
    )
    .await?;
    let query = rig::query(
        &peers.thanos,
        &http,
        dir.path(),
        &[
            format!("127.0.0.1:{}", old_sidecar.ports[1]),
            format!("127.0.0.1:{}", cortex_sidecar.ports[1]),
        ],
        &["--query.replica-label=replica"],
    )
    .await?;
    let q = query.url();
    let target = format!("127.0.0.1:{}", old.port);

    // Some history only the old Prometheus has.
    until("history in the old Prometheus", 60, || async {
        let n = instant(
            &http,
            &old.url(),
            "count_over_time(up{job=\"app\"}[1m])",
            &[],
        )
        .await?;
        match n
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
        {
            Some(v) if v >= 5.0 => Ok(()),
            other => Err(format!("{other:?} samples so far")),
        }
    })
    .await?;

    // Switch-over: a new Prometheus scrapes the same target and writes into Cortex.
    let push = gate.url("/team-a/api/v1/push");
    let switched = now_ms();
    let _new = Prometheus::start(&bins, &http, dir.path(), "new", "", &[], |_| {
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs: [{{ targets: ['{target}'] }}]\nremote_write:\n  - url: {push}\n    queue_config: {{ batch_send_deadline: 1s, min_backoff: 100ms, max_backoff: 1s }}\n    metadata_config: {{ send: false }}\n"
        )
    })
    .await?;
    until("the new Prometheus' samples in Cortex", 90, || async {
        let base = format!("{}/prometheus", cortex.url());
        let n = instant(
            &http,
            &base,
            "count_over_time(up{job=\"app\"}[1m])",
            &[("X-Scope-OrgID", "team-a")],
        )
        .await?;
        match n
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
        {
            Some(v) if v >= 5.0 => Ok(()),
            other => Err(format!("{other:?} samples so far")),
        }
    })
    .await?;

    // The old Prometheus stops scraping; it keeps serving what it has.
    std::fs::write(dir.path().join("old.yml"), old_config(old.port, false))
        .map_err(|e| e.to_string())?;
    let reload = http
        .post(&format!("{}/-/reload", old.url()), &[], Vec::new())
        .await?;
    if reload.status != http::StatusCode::OK {
        return Err(format!(
            "reload of the old Prometheus: {} {}",
            reload.status,
            reload.text()
        ));
    }
    let stopped_old = now_ms();
    // Cortex alone for a while.
    until("samples after the old Prometheus stopped", 60, || async {
        let base = format!("{}/prometheus", cortex.url());
        let n = instant(
            &http,
            &base,
            "count_over_time(up{job=\"app\"}[5s])",
            &[("X-Scope-OrgID", "team-a")],
        )
        .await?;
        let newest_ok = now_ms() - stopped_old > 5_000;
        match n
            .first()
            .and_then(|s| s["value"][1].as_str())
            .and_then(|v| v.parse::<f64>().ok())
        {
            Some(v) if v >= 3.0 && newest_ok => Ok(()),
            other => Err(format!("{other:?} samples in the last 5s")),
        }
    })
    .await?;

    // One series over the whole range, deduplicated, raw samples with no gap at either switch.
    let span_s = (now_ms() - started) / 1000 + 5;
    let result = until("one deduplicated series from Thanos Query", 60, || async {
        let r = instant(&http, &q, &format!("up{{job=\"app\"}}[{span_s}s]"), &[]).await?;
        if r.len() == 1 {
            Ok(r)
        } else {
            Err(format!("{} series: {r:?}", r.len()))
        }
    })
    .await?;
    let series = &result[0];
    if series["metric"].get("replica").is_some() {
        return Err(format!("the replica label was not removed: {series}"));
    }
    let times: Vec<f64> = series["values"]
        .as_array()
        .ok_or("no values")?
        .iter()
        .filter_map(|v| v[0].as_f64())
        .collect();
    let (first, last) = (times[0] * 1000.0, times[times.len() - 1] * 1000.0);
    // The history begins where the old Prometheus' own first sample is.
    let old_raw = instant(
        &http,
        &old.url(),
        &format!("up{{job=\"app\"}}[{span_s}s]"),
        &[],
    )
    .await?;
    let old_first = old_raw
        .first()
        .and_then(|s| s["values"][0][0].as_f64())
        .ok_or_else(|| format!("the old Prometheus holds no history: {old_raw:?}"))?
        * 1000.0;
    if first > old_first + 1.0 || last < (stopped_old + 3_000) as f64 {
        return Err(format!(
            "the series covers {first}..{last} ms, not from the old history ({old_first}, \
             Prometheus started at {started}) to after the switch ({stopped_old})"
        ));
    }
    // Thanos' penalty deduplication seeks the other replica at the last sample + 2 scrape
    // intervals after a switch, so raw samples may skip up to 3 intervals there (by design in
    // pkg/dedup); anything wider means data is missing.
    let widest = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    if widest > 3.5 {
        return Err(format!(
            "a gap of {widest:.1}s in the deduplicated series (switch-over at {switched}, old stopped at {stopped_old}): {times:?}"
        ));
    }
    // What a user sees: a range query at the scrape interval has a value at every step.
    let url = format!(
        "{q}/api/v1/query_range?query={}&start={:.3}&end={:.3}&step=1",
        crate::harness::enc("up{job=\"app\"}"),
        first / 1000.0,
        last / 1000.0
    );
    let data = http.get(&url).await?.prom_data()?;
    let steps = data["result"][0]["values"].as_array().map_or(0, Vec::len);
    let want = ((last - first) / 1000.0).floor() as usize + 1;
    if data["result"].as_array().map_or(0, Vec::len) != 1 || steps != want {
        return Err(format!(
            "query_range over the switch-over: {steps} of {want} steps: {data}"
        ));
    }
    // Deduplication keeps one sample per scrape, not two where both replicas overlap.
    let span = (last - first) / 1000.0;
    if times.len() as f64 > span * 1.2 + 3.0 {
        return Err(format!(
            "{} samples over {span:.0}s: the overlap was not deduplicated",
            times.len()
        ));
    }
    Ok(())
}
