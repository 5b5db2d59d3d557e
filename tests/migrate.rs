//! `tenantgate migrate` end to end: the real binary copies history between real Prometheus
//! servers. The source holds days of blocks made by `promtool tsdb create-blocks-from
//! openmetrics`; the destination is the Mimir stand-in (Prometheus with its remote write
//! receiver behind NGINX, which demands a tenant and refuses the tenant `e2e-denied`). Its TSDB
//! has no out-of-order window, like a default Mimir: a sample sent twice out of order is refused
//! with a 400, so "no duplicates" is checked by the destination itself.
//!
//! A relay between tenantgate and NGINX can hold write requests, which lets a test stop or kill
//! the migration at an exact request instead of at a moment.
//!
//! Needs `prometheus`, `promtool` and `nginx`: skipped loudly without them, failed under `CI=true`.

#[allow(dead_code)]
#[path = "e2e/harness.rs"]
mod harness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::sync::watch;

use harness::{
    Binaries, Deadline, History, Http, Prometheus, StandIn, TempDir, count_between, count_samples,
    history, now_ms, scalar,
};

const METRIC: &str = "mig_history";
const TENANT: &str = "team-a";

// ---------------------------------------------------------------------------------------------
// `tenantgate migrate`, as a child process

struct Run {
    child: Child,
    name: String,
    stdout: PathBuf,
    stderr: PathBuf,
}

struct Finished {
    code: Option<i32>,
    /// The JSON report (`Null` when stdout is not JSON, e.g. a dry run's plan).
    report: Value,
    stdout: String,
    stderr: String,
}

fn migrate(dir: &Path, name: &str, args: &[String]) -> Run {
    let stdout = dir.join(format!("{name}.stdout"));
    let stderr = dir.join(format!("{name}.stderr"));
    let child = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .arg("migrate")
        .args(args)
        .args(["--report-format", "json", "--retry-backoff", "100ms"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Run {
        child,
        name: name.to_owned(),
        stdout,
        stderr,
    }
}

impl Run {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        // The shell's builtin: no procps needed.
        let ok = Command::new("bash")
            .args(["-c", &format!("kill -{sig} {}", self.pid())])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {} failed", self.pid());
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// `VmHWM` of the running process, in bytes.
    fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        tenantgate::migrate::report::vm_hwm(&status)
    }

    async fn finish(mut self, timeout: Duration) -> Finished {
        let deadline = Deadline::new(format!("{} exiting", self.name), timeout);
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if let Err(e) = deadline.retry("still running").await {
                panic!("{e}\n--- stderr ---\n{}", self.stderr());
            }
        };
        let stdout = std::fs::read_to_string(&self.stdout).unwrap();
        let stderr = self.stderr();
        Finished {
            code: status.code(),
            report: serde_json::from_str(&stdout).unwrap_or(Value::Null),
            stdout,
            stderr,
        }
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn total(report: &Value, field: &str) -> i64 {
    report["total"][field]
        .as_i64()
        .unwrap_or_else(|| panic!("report has no total.{field}: {report:#}"))
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------------
// A relay that can hold, throttle or fail remote writes

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Pass,
    /// Forward this many more data writes, then hold the next data write that follows another
    /// data write (so the slab it belongs to is partly written) until released.
    HoldAfter(u64),
    /// Answer this many writes 429 with `Retry-After: 1`.
    Throttle(u64),
}

#[derive(Debug)]
struct RelayState {
    mode: Mode,
    /// Data writes (not the empty validation write, not progress records) since `set`.
    data_forwarded: u64,
    last_was_data: bool,
    held: u64,
    /// Forwarding failed (the target is down): the client's connection was dropped.
    failed: u64,
    throttled: u64,
    /// Whether released writes are dropped (their client is gone) instead of forwarded.
    drop_held: bool,
}

struct Relay {
    addr: SocketAddr,
    state: Arc<Mutex<RelayState>>,
    release: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

type RelayBody = BoxBody<Bytes, hyper::Error>;
type RelayClient = Client<HttpConnector, Full<Bytes>>;

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(RelayState {
            mode: Mode::Pass,
            data_forwarded: 0,
            last_was_data: false,
            held: 0,
            failed: 0,
            throttled: 0,
            drop_held: false,
        }));
        let (release, _) = watch::channel(0u64);
        let client: RelayClient = Client::builder(TokioExecutor::new()).build_http();
        let (st, rel) = (state.clone(), release.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (client, st, rel, target) =
                    (client.clone(), st.clone(), rel.clone(), target.clone());
                let svc = hyper::service::service_fn(move |req| {
                    relay_one(req, client.clone(), st.clone(), rel.clone(), target.clone())
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        Relay {
            addr,
            state,
            release,
            task,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn set(&self, mode: Mode) {
        let mut s = self.state.lock().unwrap();
        s.mode = mode;
        s.data_forwarded = 0;
        s.drop_held = false;
    }

    fn with<T>(&self, f: impl FnOnce(&RelayState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }

    /// Lets held writes go on (or drops them, with `drop_held`), and future ones pass.
    fn release(&self, drop_held: bool) {
        {
            let mut s = self.state.lock().unwrap();
            s.mode = Mode::Pass;
            s.drop_held = drop_held;
        }
        self.release.send_modify(|g| *g += 1);
    }

    async fn wait_for(&self, what: &str, cond: impl Fn(&RelayState) -> bool, run: &Run) {
        let deadline = Deadline::new(what, Duration::from_secs(60));
        while !self.with(&cond) {
            let last = format!(
                "{}\n--- migrate stderr ---\n{}",
                self.with(|s| format!("{s:?}")),
                run.stderr()
            );
            deadline.retry(&last).await.unwrap();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether a remote write body carries samples other than a progress record.
fn is_data_write(body: &[u8]) -> bool {
    use prost::Message as _;
    use tenantgate::migrate::wire::WriteRequest;
    let Ok(raw) = snap::raw::Decoder::new().decompress_vec(body) else {
        return false;
    };
    let Ok(req) = WriteRequest::decode(raw.as_slice()) else {
        return false;
    };
    req.timeseries.iter().any(|ts| {
        !ts.labels
            .iter()
            .any(|l| l.name == "__name__" && l.value == "tenantgate_migration_progress")
    })
}

type RelayResult = Result<Response<RelayBody>, Box<dyn std::error::Error + Send + Sync>>;

async fn relay_one(
    req: Request<hyper::body::Incoming>,
    client: RelayClient,
    state: Arc<Mutex<RelayState>>,
    release: watch::Sender<u64>,
    target: String,
) -> RelayResult {
    let (mut parts, body) = req.into_parts();
    let body = body.collect().await?.to_bytes();
    if parts.method == http::Method::POST && parts.uri.path() == "/api/v1/push" {
        let data = is_data_write(&body);
        loop {
            let mut released = release.subscribe();
            enum Act {
                Forward,
                Hold,
                Throttle,
            }
            let act = {
                let mut s = state.lock().unwrap();
                match s.mode {
                    Mode::HoldAfter(n) if data && s.last_was_data && s.data_forwarded >= n => {
                        s.held += 1;
                        Act::Hold
                    }
                    Mode::Throttle(k) if k > 0 => {
                        s.mode = Mode::Throttle(k - 1);
                        s.throttled += 1;
                        Act::Throttle
                    }
                    _ => {
                        s.data_forwarded += u64::from(data);
                        s.last_was_data = data;
                        Act::Forward
                    }
                }
            };
            match act {
                Act::Forward => break,
                Act::Throttle => {
                    let body = Full::new(Bytes::from_static(b"slow down\n"))
                        .map_err(|never| match never {})
                        .boxed();
                    return Ok(Response::builder()
                        .status(StatusCode::TOO_MANY_REQUESTS)
                        .header("retry-after", "1")
                        .body(body)?);
                }
                Act::Hold => {
                    let _ = released.changed().await;
                    let mut s = state.lock().unwrap();
                    s.held -= 1;
                    if s.drop_held {
                        return Err("held write dropped".into());
                    }
                }
            }
        }
    }
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    parts.uri = format!("{target}{pq}").parse()?;
    match client
        .request(Request::from_parts(parts, Full::new(body)))
        .await
    {
        Ok(resp) => Ok(resp.map(|b| b.boxed())),
        Err(e) => {
            state.lock().unwrap().failed += 1;
            Err(Box::new(e))
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// A client, a source of `series` series sampled every minute for `hours`, and the Mimir
/// stand-in as the destination; `None` (skipped, loudly) when the binaries are missing.
async fn source_and_stand_in(
    test: &str,
    label: &str,
    series: i64,
    hours: i64,
) -> Option<(Http, History, StandIn)> {
    let bins = Binaries::require(test)?;
    let http = Http::new();
    let src = history(
        &bins,
        &http,
        &format!("{label}-src"),
        METRIC,
        series,
        hours,
        60,
    )
    .await;
    let dst = StandIn::start(&bins, &http, &format!("{label}-dst"))
        .await
        .unwrap();
    Some((http, src, dst))
}

fn base_args(src: &History, to: &str) -> Vec<String> {
    args(&[
        "--from",
        &src.read_url(),
        "--to",
        to,
        "--tenant",
        TENANT,
        "--start",
        &src.start.to_string(),
        "--end",
        &src.end.to_string(),
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_writes_nothing_and_a_full_copy_has_exactly_the_source_samples() {
    let Some((http, src, dst)) =
        source_and_stand_in("migrate_full_copy", "migrate-full", 20, 48).await
    else {
        return;
    };
    let to = format!("{}/api/v1/push", dst.url());
    let dir = dst.dir.path().to_owned();
    let dst_prom = dst.prometheus.url();
    assert_eq!(src.samples(), 20 * 48 * 60);

    let dry = migrate(
        &dir,
        "dry-run",
        &[base_args(&src, &to), args(&["--dry-run"])].concat(),
    )
    .finish(Duration::from_secs(60))
    .await;
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    let plan = dry.stdout;
    assert!(plan.contains("nothing was written"), "{plan}");
    assert_eq!(
        plan.matches("   20 ").count(),
        48,
        "48 one-hour slabs of 20 series:\n{plan}"
    );
    assert_eq!(
        count_samples(&http, &dst_prom, METRIC, src.start, src.end).await,
        0
    );

    let run = migrate(
        &dir,
        "full",
        &[base_args(&src, &to), args(&["--verify"])].concat(),
    );
    let done = run.finish(Duration::from_secs(120)).await;
    assert_eq!(done.code, Some(0), "{}\n{:#}", done.stderr, done.report);
    let r = &done.report;
    assert_eq!(r["outcome"], "complete");
    assert_eq!(total(r, "samples_read"), src.samples());
    assert_eq!(total(r, "samples_written"), src.samples());
    assert_eq!(total(r, "samples_rejected"), 0);
    assert_eq!(r["slabs"].as_array().unwrap().len(), 48);
    assert_eq!(r["source_format"], "streamed XOR chunks");
    let v = &r["verification"];
    assert_eq!(v["source_samples"], v["destination_samples"], "{v:#}");
    assert_eq!(v["mismatches"].as_array().unwrap().len(), 0, "{v:#}");
    // Checked independently, through the destination's query API.
    assert_eq!(
        count_samples(&http, &dst_prom, METRIC, src.start, src.end).await,
        src.samples()
    );
    let series = scalar(
        &http,
        &dst_prom,
        &format!("count(count_over_time({METRIC}[{}s]))", src.end - src.start),
        src.end as f64 - 0.001,
        &[],
    )
    .await;
    assert_eq!(series as i64, src.series);
    // Every request reached the destination with exactly one X-Scope-OrgID: the tenant.
    let seen: Vec<_> = dst
        .seen()
        .into_iter()
        .filter(|s| s.uri == "/api/v1/push" || s.uri == "/prometheus/api/v1/read")
        .collect();
    assert!(seen.len() > 2 * 48, "{}", seen.len());
    for s in &seen {
        assert_eq!(s.tenants, vec![TENANT.to_owned()], "{s:?}");
    }
    // Run again: the progress series says it is all there; nothing is copied twice.
    let again = migrate(&dir, "again", &base_args(&src, &to))
        .finish(Duration::from_secs(60))
        .await;
    assert_eq!(again.code, Some(0), "{}", again.stderr);
    assert_eq!(
        total(&again.report, "samples_written"),
        0,
        "{:#}",
        again.report
    );
    assert!(again.report["resumed_from"].is_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_and_a_killed_migration_resume_without_gaps_or_duplicates() {
    let Some((http, src, dst)) =
        source_and_stand_in("migrate_resume", "migrate-resume", 20, 24).await
    else {
        return;
    };
    let relay = Relay::start(dst.url()).await;
    let dir = dst.dir.path().to_owned();
    let dst_prom = dst.prometheus.url();
    // Small write requests, so each one-hour slab (20 series x 60 samples) takes several.
    let run_args = [
        base_args(&src, &relay.url("/api/v1/push")),
        args(&["--migration-id", "resume-test", "--max-write-size", "4KiB"]),
    ]
    .concat();
    let per_hour = src.series * 3600 / src.step;
    let hours = |p: i64| (p / 1000 - src.start) / 3600;

    // 1. SIGTERM while a slab is half written: it is finished, progress recorded, exit 0.
    relay.set(Mode::HoldAfter(20));
    let run = migrate(&dir, "stopped", &run_args);
    relay
        .wait_for("a write held mid-slab", |s| s.held > 0, &run)
        .await;
    run.signal("TERM");
    relay.release(false);
    let stopped = run.finish(Duration::from_secs(60)).await;
    assert_eq!(stopped.code, Some(4), "{}", stopped.stderr);
    let r = &stopped.report;
    assert_eq!(r["outcome"], "stopped", "{r:#}");
    assert!(
        r["resume_command"].as_str().unwrap().contains("migrate"),
        "{r:#}"
    );
    let done_hours =
        hours(tenantgate::time::parse_rfc3339(r["completed_through"].as_str().unwrap()).unwrap());
    assert!(done_hours > 0 && done_hours < 24, "{r:#}");
    assert_eq!(r["slabs"].as_array().unwrap().len() as i64, done_hours);
    // The slab in flight was finished, nothing beyond it started.
    assert_eq!(
        count_samples(&http, &dst_prom, METRIC, src.start, src.end).await,
        per_hour * done_hours
    );

    // 2. SIGKILL in the middle of a slab: some of its writes landed, its progress did not.
    relay.set(Mode::HoldAfter(15));
    let run = migrate(&dir, "killed", &run_args);
    relay
        .wait_for("a write held mid-slab", |s| s.held > 0, &run)
        .await;
    drop(run); // SIGKILL, reaped
    relay.release(true);
    let landed = count_samples(&http, &dst_prom, METRIC, src.start, src.end).await;

    // 3. Resume: what landed of that slab is skipped, the rest is written, nothing is refused.
    let done = migrate(
        &dir,
        "resumed",
        &[run_args.clone(), args(&["--verify"])].concat(),
    )
    .finish(Duration::from_secs(120))
    .await;
    assert_eq!(done.code, Some(0), "{}\n{:#}", done.stderr, done.report);
    let r = &done.report;
    let resumed =
        hours(tenantgate::time::parse_rfc3339(r["resumed_from"].as_str().unwrap()).unwrap());
    assert!(resumed > done_hours, "{r:#}");
    let skipped = total(r, "samples_skipped");
    assert!(
        skipped > 0 && skipped < per_hour,
        "a partly written slab: {skipped} skipped\n{r:#}"
    );
    assert_eq!(landed, per_hour * resumed + skipped, "{r:#}");
    assert_eq!(total(r, "samples_rejected"), 0, "{r:#}");
    assert_eq!(
        total(r, "samples_written") + skipped,
        total(r, "samples_read"),
        "{r:#}"
    );
    assert_eq!(
        count_samples(&http, &dst_prom, METRIC, src.start, src.end).await,
        src.samples()
    );
    assert_eq!(
        r["verification"]["mismatches"].as_array().unwrap().len(),
        0,
        "{r:#}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_waits_out_a_throttling_or_down_destination_and_completes() {
    let Some((http, src, mut dst)) =
        source_and_stand_in("migrate_destination_down", "migrate-down", 10, 12).await
    else {
        return;
    };
    let relay = Relay::start(dst.url()).await;
    let dir = dst.dir.path().to_owned();

    // Two 429s with Retry-After first, then hold the 5th write while NGINX is stopped.
    relay.set(Mode::Throttle(2));
    let run = migrate(
        &dir,
        "down",
        &[
            base_args(&src, &relay.url("/api/v1/push")),
            args(&["--max-write-size", "4KiB"]),
        ]
        .concat(),
    );
    relay
        .wait_for("two throttled writes", |s| s.throttled == 2, &run)
        .await;
    relay.set(Mode::HoldAfter(4));
    relay.wait_for("a held write", |s| s.held > 0, &run).await;
    dst.nginx.stop().await.unwrap();
    relay.release(false);
    relay
        .wait_for(
            "three failed attempts while NGINX is down",
            |s| s.failed >= 3,
            &run,
        )
        .await;
    dst.nginx.start_again(&http).await.unwrap();
    let done = run.finish(Duration::from_secs(120)).await;
    assert_eq!(done.code, Some(0), "{}\n{:#}", done.stderr, done.report);
    let r = &done.report;
    assert!(total(r, "retries") >= 3, "{r:#}");
    assert_eq!(total(r, "samples_rejected"), 0);
    assert_eq!(total(r, "samples_written"), src.samples());
    assert_eq!(
        count_samples(&http, &dst.prometheus.url(), METRIC, src.start, src.end).await,
        src.samples()
    );
    assert!(done.stderr.contains("retrying"), "{}", done.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_refuses_the_tenant_stops_the_migration_before_any_data() {
    let Some((http, src, dst)) =
        source_and_stand_in("migrate_tenant_refused", "migrate-denied", 5, 4).await
    else {
        return;
    };
    let dir = dst.dir.path().to_owned();
    let to = format!("{}/api/v1/push", dst.url());

    let mut a = base_args(&src, &to);
    let t = a.iter().position(|x| x == TENANT).unwrap();
    a[t] = "e2e-denied".into();
    let done = migrate(&dir, "denied", &a)
        .finish(Duration::from_secs(60))
        .await;
    assert_eq!(done.code, Some(1), "{}", done.stderr);
    let err = done.report["error"].as_str().unwrap();
    assert!(
        err.contains("refuses tenant \"e2e-denied\"") && err.contains("403"),
        "{err}"
    );
    let writes: Vec<_> = dst
        .nginx
        .access_log()
        .unwrap()
        .into_iter()
        .filter(|l| l.request_uri == "/api/v1/push")
        .collect();
    assert_eq!(
        writes.len(),
        1,
        "only the empty validation write: {writes:?}"
    );
    assert_eq!(writes[0].status, 403);
    assert_eq!(
        count_samples(&http, &dst.prometheus.url(), METRIC, src.start, src.end).await,
        0
    );

    // A tenant Mimir would not take is refused before anything is contacted.
    a[t] = "../etc".into();
    let before = dst.nginx.access_log().unwrap().len();
    let run = migrate(&dir, "invalid", &a);
    let deadline = Deadline::new("migrate exiting", Duration::from_secs(30));
    let mut run = run;
    let status = loop {
        if let Some(s) = run.child.try_wait().unwrap() {
            break s;
        }
        deadline.retry("running").await.unwrap();
    };
    assert_eq!(status.code(), Some(2), "a bad command line");
    assert!(run.stderr().contains("--tenant"), "{}", run.stderr());
    assert_eq!(dst.nginx.access_log().unwrap().len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_keeps_copying_new_samples_until_stopped() {
    let Some(bins) = Binaries::require("migrate_follow") else {
        return;
    };
    let http = Http::new();
    let dst = StandIn::start(&bins, &http, "migrate-follow-dst")
        .await
        .unwrap();
    let dir = dst.dir.path().to_owned();
    // A source that keeps getting new samples: it scrapes itself every second.
    let src = Prometheus::start(
        &bins,
        &http,
        &dir,
        "live-source",
        "",
        &[],
        |port| {
            format!(
                "global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: self\n    static_configs: [{{ targets: ['127.0.0.1:{port}'] }}]\n"
            )
        },
    )
    .await
    .unwrap();
    let began = now_ms() / 1000;
    let run = migrate(
        &dir,
        "follow",
        &args(&[
            "--from",
            &format!("{}/api/v1/read", src.url()),
            "--to",
            &format!("{}/api/v1/push", dst.url()),
            "--tenant",
            TENANT,
            "--start",
            &(began - 600).to_string(),
            "--match",
            "up{job=\"self\"}",
            "--follow",
            "--follow-lag",
            "1s",
            "--follow-interval",
            "1s",
        ]),
    );
    // Samples scraped after the migration started keep reaching the destination.
    let deadline = Deadline::new("new samples in the destination", Duration::from_secs(60));
    loop {
        let now = now_ms() as f64 / 1000.0;
        let newest = scalar(
            &http,
            &dst.prometheus.url(),
            "timestamp(up{job=\"self\"})",
            now,
            &[],
        )
        .await;
        let copied = count_between(
            &http,
            &dst.prometheus.url(),
            "up",
            (began - 600) as f64,
            now,
            &[],
        )
        .await;
        if newest > (began + 3) as f64 && copied >= 5 {
            break;
        }
        deadline
            .retry(&format!(
                "newest {newest}, {copied} samples; migrate: {}",
                run.stderr()
            ))
            .await
            .unwrap();
    }
    run.signal("INT");
    let done = run.finish(Duration::from_secs(60)).await;
    assert_eq!(done.code, Some(4), "{}", done.stderr);
    let r = &done.report;
    assert_eq!(r["outcome"], "stopped", "{r:#}");
    assert!(r["resume_command"].as_str().unwrap().contains("--follow"));
    let through = tenantgate::time::parse_rfc3339(r["completed_through"].as_str().unwrap()).unwrap()
        as f64
        / 1000.0;
    let from = (began - 600) as f64;
    let want = count_between(&http, &src.url(), "up", from, through, &[]).await;
    assert!(want >= 5, "{r:#}\n{}", done.stderr);
    assert_eq!(
        count_between(&http, &dst.prometheus.url(), "up", from, through, &[]).await,
        want
    );
    assert_eq!(total(r, "samples_rejected"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_under_the_cap_on_a_dense_source() {
    let Some(bins) = Binaries::require("migrate_memory_cap") else {
        return;
    };
    let http = Http::new();
    // 300 series every 2s for 6h: 3.24M samples, about 50MiB decoded for one 6h slab.
    let src = history(&bins, &http, "migrate-dense-src", "mig_dense", 300, 6, 2).await;
    let dir = TempDir::new("migrate-dense-dst").unwrap();
    // A destination that takes history in any order (an out-of-order window), so wide slabs
    // are allowed and only the memory cap narrows them.
    let dst = Prometheus::start(
        &bins,
        &http,
        dir.path(),
        "dense-destination",
        "",
        &["--web.enable-remote-write-receiver"],
        |_| "storage:\n  tsdb:\n    out_of_order_time_window: 30d\n".to_owned(),
    )
    .await
    .unwrap();
    let cap: u64 = 40 << 20;
    let run = migrate(
        dir.path(),
        "dense",
        &[
            base_args(&src, &format!("{}/api/v1/write", dst.url())),
            args(&["--max-memory", "40MiB", "--max-slab", "6h"]),
        ]
        .concat(),
    );
    // Sampled while it runs, from outside; the report has the process's own final figure.
    let mut peak = 0;
    let deadline = Deadline::new("the dense migration finishing", Duration::from_secs(300));
    let mut run = run;
    while run.child.try_wait().unwrap().is_none() {
        peak = peak.max(run.peak_rss().unwrap_or(0));
        deadline.retry("running").await.unwrap();
    }
    let done = run.finish(Duration::from_secs(5)).await;
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    let r = &done.report;
    let reported = r["peak_memory_bytes"].as_u64().unwrap();
    let slabs = r["slabs"].as_array().unwrap().len();
    println!(
        "dense copy: {} samples in {slabs} slabs, {:.0} samples/s, peak RSS {:.1} MiB (sampled {:.1} MiB), cap {} MiB",
        total(r, "samples_written"),
        r["samples_per_second"].as_f64().unwrap(),
        reported as f64 / 1048576.0,
        peak as f64 / 1048576.0,
        cap >> 20
    );
    assert_eq!(total(r, "samples_written"), src.samples());
    assert!(
        slabs > 4,
        "one 6h slab would not fit: the slabs must narrow ({slabs})"
    );
    assert!(reported <= cap, "peak RSS {reported} over the {cap} cap");
    assert!(peak <= cap, "sampled RSS {peak} over the {cap} cap");
    assert_eq!(
        count_samples(&http, &dst.url(), "mig_dense", src.start, src.end).await,
        src.samples()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_copied_whole_into_a_destination_that_already_has_live_data_of_the_same_series()
{
    // The README's main scenario: a Prometheus already remote-writes into the destination,
    // then its history is copied. The destination's newest sample of a series is no proof that
    // it holds the older ones.
    let Some(bins) = Binaries::require("live data in the destination") else {
        return;
    };
    let http = Http::new();
    let dir = TempDir::new("mig-live").unwrap();
    let dst = Prometheus::start(
        &bins,
        &http,
        dir.path(),
        "dst",
        "",
        &["--web.enable-remote-write-receiver"],
        |_| "storage:\n  tsdb:\n    out_of_order_time_window: 2h\n".to_owned(),
    )
    .await
    .unwrap();
    let scrape = |port: u16| {
        format!(
            "global: {{ scrape_interval: 1s }}\nscrape_configs:\n  - job_name: self\n    static_configs: [{{ targets: ['127.0.0.1:{port}'] }}]\n"
        )
    };
    let src = Prometheus::start(
        &bins,
        &http,
        dir.path(),
        "src",
        "",
        &["--web.enable-lifecycle"],
        scrape,
    )
    .await
    .unwrap();
    let start = now_ms() / 1000 - 1;
    // One family of many series (count_over_time drops the name, so one family only).
    let selector = "prometheus_http_request_duration_seconds_bucket";
    let url = src.url();
    let deadline = Deadline::new("the source scraping for a while", Duration::from_secs(60));
    loop {
        deadline.retry("not yet").await.unwrap();
        if count_samples(&http, &url, selector, start, now_ms() / 1000).await > 1_000 {
            break;
        }
    }
    // Now the source also writes live into the destination.
    std::fs::write(
        dir.path().join("src.yml"),
        format!(
            "{}remote_write:\n  - url: {}/api/v1/write\n    queue_config: {{ batch_send_deadline: 1s }}\n",
            scrape(src.port),
            dst.url()
        ),
    )
    .unwrap();
    let r = http
        .post(&format!("{url}/-/reload"), &[], Vec::new())
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let live_since = now_ms() / 1000;
    let deadline = Deadline::new("live samples in the destination", Duration::from_secs(60));
    while count_samples(&http, &dst.url(), selector, live_since, now_ms() / 1000 + 1).await < 2_000
    {
        deadline.retry("not yet").await.unwrap();
    }
    let end = now_ms() / 1000 - 1;

    let run = migrate(
        dir.path(),
        "live",
        &args(&[
            "--from",
            &format!("{url}/api/v1/read"),
            "--to",
            &format!("{}/api/v1/write", dst.url()),
            "--tenant",
            TENANT,
            "--start",
            &start.to_string(),
            "--end",
            &end.to_string(),
            "--match",
            selector,
        ]),
    );
    let done = run.finish(Duration::from_secs(120)).await;
    assert_eq!(done.code, Some(0), "{}\n{}", done.stdout, done.stderr);
    assert_eq!(done.report["outcome"], "complete", "{:#}", done.report);
    assert_eq!(
        total(&done.report, "samples_skipped"),
        0,
        "a first run skipped samples: {:#}",
        done.report
    );
    assert!(
        !done.stderr.contains("stopped before recording"),
        "a first run talked of an interrupted run:\n{}",
        done.stderr
    );
    let in_source = count_samples(&http, &url, selector, start, end).await;
    let in_destination = count_samples(&http, &dst.url(), selector, start, end).await;
    assert!(in_source > 1_000, "{in_source}");
    assert_eq!(
        in_destination,
        in_source,
        "the destination misses {} of {in_source} source samples after a run that said complete",
        in_source - in_destination
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_samples_leave_the_run_incomplete_and_the_next_run_sends_them_again() {
    // The destination's TSDB (no out-of-order window, like a default Mimir) already holds the
    // newer half of the history, so it refuses the older half. The run must not say complete,
    // must not move progress past the refused slab, and a rerun must try those samples again
    // instead of reporting nothing to copy.
    let Some((_http, src, dst)) =
        source_and_stand_in("migrate_rejected", "migrate-rejected", 5, 12).await
    else {
        return;
    };
    let to = format!("{}/api/v1/push", dst.url());
    let dir = dst.dir.path().to_owned();
    let middle = src.start + 6 * 3600;
    let newer = migrate(
        &dir,
        "newer-half",
        &args(&[
            "--from",
            &src.read_url(),
            "--to",
            &to,
            "--tenant",
            TENANT,
            "--start",
            &middle.to_string(),
            "--end",
            &src.end.to_string(),
            "--migration-id",
            "newer-half",
        ]),
    )
    .finish(Duration::from_secs(120))
    .await;
    assert_eq!(newer.code, Some(0), "{}", newer.stderr);

    let older_args = args(&[
        "--from",
        &src.read_url(),
        "--to",
        &to,
        "--tenant",
        TENANT,
        "--start",
        &src.start.to_string(),
        "--end",
        &middle.to_string(),
    ]);
    for attempt in ["first", "second"] {
        let done = migrate(&dir, &format!("older-{attempt}"), &older_args)
            .finish(Duration::from_secs(120))
            .await;
        let r = &done.report;
        assert_eq!(done.code, Some(3), "{attempt} run:\n{}\n{r:#}", done.stderr);
        assert_eq!(r["outcome"], "incomplete", "{attempt} run: {r:#}");
        assert!(total(r, "samples_rejected") > 0, "{attempt} run: {r:#}");
        // Progress stays before the refused slab: the run starts there again each time.
        assert_eq!(
            r["completed_through"].as_str(),
            Some(tenantgate::time::format_rfc3339(src.start * 1000).as_str()),
            "{attempt} run: {r:#}"
        );
        assert!(r["resume_command"].is_string(), "{attempt} run: {r:#}");
    }
}
