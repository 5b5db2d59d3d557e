//! The soak: the real binary under mixed traffic at a fixed rate for a bounded time, over
//! HTTP/1.1 and HTTP/2 with TLS, while its config is reloaded every second (a route's tenant
//! and an emulated label flip each time), its certificate is rotated every ten reloads, and
//! its upstream crashes and comes back every five seconds.
//!
//! It passes when every request got a right answer (checked against what the upstream saw) or
//! a documented 502/503/504 while the upstream was down, nothing hung, the process is still
//! serving, and its RSS at the end is within [`RSS_GROWTH_LIMIT`] of the RSS after warm-up.
//! No latency is asserted. `TENANTGATE_SOAK_SECS` sets the duration (60 s by default, what CI
//! runs); `bench/soak.sh` runs it for 10 minutes against a release build and records the
//! figures in `bench/SOAK.md`.

#[path = "../common/mod.rs"]
mod common;
mod traffic;
mod upstream;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::ChildGuard;
use common::pki::Pki;
use http_body_util::{BodyExt, Full};
use tokio::task::JoinSet;
use traffic::{Clock, KINDS, SERIAL_BASE, TRANSPORTS, Traffic, epoch_label, epoch_tenant};

/// Total requests per second, open loop: sent on schedule whether or not earlier ones finished.
const DEFAULT_RATE: u64 = 200;
/// How much the RSS may grow from the end of warm-up to the end of the run. A leak of one
/// allocation per request (12,000 requests a minute at 200/s) of a few hundred bytes would
/// not fit; allocator arenas and connection buffers settling after warm-up (the process idles
/// at about 7 MiB, and each HTTP/2 or keep-alive connection holds tens of KiB) do.
const RSS_GROWTH_LIMIT_KIB: u64 = 16 * 1024;
/// Requests in flight at most (see the load loop).
const MAX_IN_FLIGHT: usize = 64;
const RELOAD_EVERY: Duration = Duration::from_secs(1);
const ROTATE_EVERY_RELOADS: u64 = 10;
const RESTART_EVERY: Duration = Duration::from_secs(5);
const DOWN_FOR: Duration = Duration::from_millis(300);

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

fn config(dir: &Path, upstream: &str, version: u64) -> String {
    let d = dir.display();
    format!(
        r#"server:
  listen: 127.0.0.1:0
  shutdown_grace: 2s
  max_failed_logins: 0
  tls:
    cert_file: {d}/server.pem
    key_file: {d}/server.key
admin:
  listen: 127.0.0.1:0
upstreams:
  mimir:
    url: {upstream}
    timeouts: {{ connect: 1s, response_header: 5s, idle: 5s }}
identities:
  - name: soak
    tenant: soak-auth
    basic_auth: {{ user: {user}, htpasswd_file: {d}/htpasswd }}
routes:
  - name: query
    match: {{ path_prefix: /prometheus }}
    upstream: mimir
    tenant: {tenant}
    prometheus:
      external_labels: {{ cluster: soak, epoch: {label} }}
  - name: push
    match: {{ path: /api/v1/push, methods: [POST] }}
    upstream: mimir
    tenant: soak-writer
  - name: auth
    match: {{ path_prefix: /auth }}
    upstream: mimir
    tenant: {{ from: identity, identities: [soak] }}
  - name: other
    match: {{ path_prefix: /other }}
    upstream: mimir
    tenant: soak-b
"#,
        user = traffic::USER,
        tenant = epoch_tenant(version),
        label = epoch_label(version),
    )
}

/// The running binary and the addresses it logged.
struct Gate {
    child: ChildGuard,
    data: u16,
    admin: u16,
}

async fn start_gate(dir: &Path, file: &Path) -> Gate {
    let bin = std::env::var("TENANTGATE_SOAK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_tenantgate")));
    let mut cmd = Command::new(&bin);
    cmd.arg("--config")
        .arg(file)
        .args(["--log.format=json", "--log.access=false"])
        .env_remove("TENANTGATE_CONFIG");
    let mut child = ChildGuard::spawn("tenantgate", cmd, dir.join("tenantgate.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        child.assert_running();
        let text = child.log_text();
        let (mut data, mut admin) = (None, None);
        for v in text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        {
            let f = if v["fields"].is_object() {
                &v["fields"]
            } else {
                &v
            };
            if f["message"] != "listening" {
                continue;
            }
            let port = f["addr"]
                .as_str()
                .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
                .map(|a| a.port());
            match f["listener"].as_str() {
                Some("data") => data = port,
                Some("admin") => admin = port,
                _ => {}
            }
        }
        if let (Some(data), Some(admin)) = (data, admin) {
            return Gate { child, data, admin };
        }
        assert!(
            Instant::now() < deadline,
            "{} never listened:\n{text}",
            bin.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS for pid {pid}"))
}

type Plain = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    Full<Bytes>,
>;

async fn admin(client: &Plain, port: u16, method: &str, path: &str) -> (u16, String) {
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("admin request");
    let resp = client.request(req).await.expect("admin listener answers");
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("admin body")
        .to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_through_reloads_rotations_and_upstream_restarts() {
    let secs = env_u64("TENANTGATE_SOAK_SECS", 60);
    let rate = env_u64("TENANTGATE_SOAK_RATE", DEFAULT_RATE);
    assert!(
        secs >= 20 && rate > 0,
        "TENANTGATE_SOAK_SECS must be at least 20"
    );
    let warmup = Duration::from_secs((secs / 6).min(10));
    let run_for = Duration::from_secs(secs);

    let pki = Arc::new(Pki::new("soak"));
    let dir = pki.dir.clone();
    pki.issue_serial("server", "tenantgate", &[], true, false, Some(SERIAL_BASE));
    let hash = bcrypt::hash(traffic::PASSWORD, 4).expect("bcrypt");
    std::fs::write(dir.join("htpasswd"), format!("{}:{hash}\n", traffic::USER)).expect("htpasswd");
    let mut up = upstream::Echoer::start().await;
    let upstream_url = format!("http://{}", up.addr);
    let file = dir.join("tenantgate.yaml");
    std::fs::write(&file, config(&dir, &upstream_url, 0)).expect("config");
    let mut gate = start_gate(&dir, &file).await;
    let pid = gate.child.child.id();
    let plain: Plain =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();

    let clock = Arc::new(Clock::default());
    let traffic = Arc::new(Traffic::new(clock.clone(), gate.data, &pki.ca_file()));
    let stop = Arc::new(AtomicBool::new(false));

    // Reloads, every tenth with a new certificate, each checked from a fresh connection.
    let reloader = {
        let (clock, stop, plain, dir, url, file) = (
            clock.clone(),
            stop.clone(),
            plain.clone(),
            dir.clone(),
            upstream_url.clone(),
            file.clone(),
        );
        let ca = pki.ca_file();
        let admin_port = gate.admin;
        let data_port = gate.data;
        let pki = pki.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RELOAD_EVERY);
            tick.tick().await;
            let mut verified = 0u64;
            while !stop.load(SeqCst) {
                tick.tick().await;
                let v = clock.reloads_started.load(SeqCst) + 1;
                let rotate = v.is_multiple_of(ROTATE_EVERY_RELOADS);
                if rotate {
                    let r = clock.rotations_started.fetch_add(1, SeqCst) + 1;
                    pki.issue_serial(
                        "server",
                        "tenantgate",
                        &[],
                        true,
                        false,
                        Some(SERIAL_BASE + r),
                    );
                }
                std::fs::write(&file, config(&dir, &url, v)).expect("config");
                clock.reloads_started.fetch_add(1, SeqCst);
                let (status, body) = admin(&plain, admin_port, "POST", "/-/reload").await;
                assert_eq!(status, 200, "reload {v} failed: {body}");
                clock.reloads_done.fetch_add(1, SeqCst);
                if rotate {
                    clock.rotations_done.fetch_add(1, SeqCst);
                    let served = served_serial(data_port, &ca).await;
                    let want = SERIAL_BASE + clock.rotations_done.load(SeqCst);
                    assert_eq!(
                        served, want,
                        "a new connection after rotation got an old certificate"
                    );
                    verified += 1;
                }
            }
            verified
        })
    };

    // The upstream crashes and comes back on the same port.
    let restarter = {
        let (clock, stop) = (clock.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(RESTART_EVERY);
            tick.tick().await;
            while !stop.load(SeqCst) {
                tick.tick().await;
                clock.stops_begun.fetch_add(1, SeqCst);
                up.stop().await;
                tokio::time::sleep(DOWN_FOR).await;
                up.restart().await;
                // The crash is over once tenantgate has closed its side of every connection
                // to the crashed instance. Until then a request may still be written on one it
                // has not yet seen closed, and get the 502 a reset gets (a proxy cannot know
                // until it tries); after, a 502 would be a bug.
                let port = up.addr.port();
                common::eventually(
                    30,
                    "tenantgate closing its connections to the crashed upstream",
                    || async move { close_wait_to(port) == 0 },
                )
                .await;
                clock.restarts_done.fetch_add(1, SeqCst);
            }
            up.stop().await;
        })
    };

    // The load, open loop at a fixed rate.
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut waited_for_slot = 0u64;
    // Burst (tokio's default): a late tick is made up for, so the schedule, not the
    // machine's speed, sets how many requests are sent.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = JoinSet::new();
    let mut rss = Vec::new();
    let mut next_sample = started;
    let mut sent = 0u64;
    let mut rss_start = None;
    while started.elapsed() < run_for {
        tick.tick().await;
        let (transport, kind) = (
            TRANSPORTS[(sent / 6 % 10) as usize],
            KINDS[(sent % 6) as usize],
        );
        let t = traffic.clone();
        let id = sent;
        while tasks.try_join_next().is_some() {}
        // Open loop, but bounded: on a machine so busy that answers pile up, wait for one
        // (the schedule catches up afterwards), so that the gate's memory is measured at a
        // bounded concurrency, not at whatever a stall happened to pile up.
        if tasks.len() >= MAX_IN_FLIGHT {
            waited_for_slot += 1;
            if let Some(r) = tasks.join_next().await {
                r.expect("a request task panicked");
            }
        }
        tasks.spawn(async move { t.run(transport, kind, id).await });
        sent += 1;
        if Instant::now() >= next_sample {
            let kib = rss_kib(pid);
            rss.push(kib);
            if rss_start.is_none() && started.elapsed() >= warmup {
                rss_start = Some(kib);
            }
            next_sample += Duration::from_secs(1);
        }
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("a request task panicked");
    }
    let elapsed = started.elapsed();
    stop.store(true, SeqCst);
    let verified = reloader.await.expect("the reloader failed");
    restarter.await.expect("the restarter failed");
    let rss_end = rss_kib(pid);
    gate.child.assert_running();
    let (status, metrics) = admin(&plain, gate.admin, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tenantgate_config_last_reload_successful 1"),
        "the last reload did not succeed"
    );

    let tally = traffic.tally.lock().expect("tally").clone();
    let failures = traffic.failures.lock().expect("failures").clone();
    let rss_start = rss_start.unwrap_or(rss[0]);
    let rss_max = rss.iter().copied().max().unwrap_or(rss_end);
    let kinds = tally
        .iter()
        .map(|(k, n)| format!("{k}={n}"))
        .collect::<Vec<_>>()
        .join(" ");
    let summary = format!(
        "soak: {secs}s at {rate}/s: {sent} requests in {:.1}s ({kinds}); exact-epoch checks {}; \
         waits for a free slot {waited_for_slot}; \
         reloads {}, rotations {} (verified {verified}), upstream restarts {}; \
         RSS after {}s warm-up {} KiB, end {} KiB, max {} KiB",
        elapsed.as_secs_f64(),
        traffic.exact_epoch.load(SeqCst),
        clock.reloads_done.load(SeqCst),
        clock.rotations_done.load(SeqCst),
        clock.restarts_done.load(SeqCst),
        warmup.as_secs(),
        rss_start,
        rss_end,
        rss_max,
    );
    println!("{summary}");
    eprintln!("{summary}");
    if let Ok(path) = std::env::var("TENANTGATE_SOAK_REPORT") {
        let json = serde_json::json!({
            "secs": secs, "rate": rate, "requests": sent, "waits_for_slot": waited_for_slot, "elapsed_secs": elapsed.as_secs_f64(),
            "outcomes": tally, "exact_epoch_checks": traffic.exact_epoch.load(SeqCst),
            "reloads": clock.reloads_done.load(SeqCst), "rotations": clock.rotations_done.load(SeqCst),
            "rotations_verified": verified, "upstream_restarts": clock.restarts_done.load(SeqCst),
            "warmup_secs": warmup.as_secs(), "rss_start_kib": rss_start, "rss_end_kib": rss_end,
            "rss_max_kib": rss_max, "rss_samples_kib": rss, "failures": failures,
        });
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
        .unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }

    let allowed = ["ok", "502", "503", "504", "cut during restart"];
    let bad: Vec<_> = tally
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .collect();
    assert!(
        bad.is_empty(),
        "outcomes that are not allowed: {bad:?}\nfirst failures:\n{}\nlog: {}",
        failures.join("\n"),
        gate.child.log.display()
    );
    assert!(
        tally.get("ok").copied().unwrap_or(0) * 10 >= sent * 9,
        "fewer than 90% of requests were answered right: {kinds}"
    );
    assert!(clock.restarts_done.load(SeqCst) >= 3 && verified >= 1);
    assert!(
        rss_end <= rss_start + RSS_GROWTH_LIMIT_KIB,
        "RSS grew from {rss_start} KiB to {rss_end} KiB; every second: {rss:?}"
    );
}

/// Sockets in CLOSE_WAIT whose peer is 127.0.0.1:`port`: connections the upstream closed and
/// the gate (the only client of the upstream) has not closed yet.
fn close_wait_to(port: u16) -> usize {
    let peer = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[2] == peer && f[3] == "08"
        })
        .count()
}

/// The serial of the certificate a fresh connection is served.
async fn served_serial(port: u16, ca: &Path) -> u64 {
    let tls = traffic::client_tls(ca, &[b"http/1.1"]);
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name");
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .expect("TLS handshake");
    let der = stream.get_ref().1.peer_certificates().expect("certificate")[0].clone();
    traffic::serial_of(&der).expect("serial")
}
