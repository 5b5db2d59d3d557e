//! The model test of `tenantgate migrate`'s resume rule: random sources, random data already in
//! the destination (some identical to the source, some live data at other timestamps, a series
//! of its own), random `kill -9` and SIGTERM points and resumes. Whatever happens, the
//! destination must end as exactly the union of what it held and the source's range, each
//! source sample accepted exactly once (a resumed run never sends again what a killed one
//! wrote), and every run's exit code and outcome must tell the truth.
//!
//! The real binary runs against an in-test source and destination that speak remote read
//! (samples, not streamed) and remote write. The destination counts every write and can hold
//! the Nth one, applied or not, while the test kills or stops the process: that puts a kill
//! between any two requests, including between a slab's last write and its progress record.
//!
//! `TENANTGATE_MODEL_CASES` (default 300) and `TENANTGATE_MODEL_SEED` pick the cases; a failure
//! names its seed, and `TENANTGATE_MODEL_CASES=1 TENANTGATE_MODEL_SEED=<seed>` replays it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prost::Message;
use serde_json::Value;
use tokio::sync::watch;

use tenantgate::migrate::read::PROGRESS_METRIC;
use tenantgate::migrate::wire::{
    self, Label, LabelMatcher, MatchType, QueryResult, ReadRequest, ReadResponse, Sample,
    TimeSeries, WriteRequest,
};

type Labels = Vec<(String, String)>;
type Store = BTreeMap<Labels, BTreeMap<i64, f64>>;

const METRIC: &str = "model_metric";

// ---------------------------------------------------------------------------------------------
// A small deterministic random source (the cases must replay from their seed)

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// In `[lo, hi]`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.next() as usize % items.len()]
    }
}

mod server;
mod shards;

use server::{Server, State};

// ---------------------------------------------------------------------------------------------
// One case

#[derive(Debug, Clone, Copy, PartialEq)]
enum Interrupt {
    /// `kill -9` while the Nth write is held; `applied` says whether it reached the destination.
    Kill { at: u64, applied: bool },
    /// SIGTERM while the Nth write is held (which then succeeds).
    Term { at: u64 },
}

struct Case {
    seed: u64,
    start: i64,
    end: i64,
    max_slab_min: u64,
    concurrency: u64,
    /// The source's samples inside `[start, end)`, the ones that must be copied.
    wanted: Store,
    /// The destination before the first run.
    before: Store,
    interrupts: Vec<Interrupt>,
}

fn series_labels(i: u64, extra: bool) -> Labels {
    let mut l = vec![
        ("__name__".to_owned(), METRIC.to_owned()),
        ("series".to_owned(), i.to_string()),
    ];
    if extra {
        l.push(("zone".to_owned(), format!("z{}", i % 3)));
    }
    l.sort();
    l
}

fn make_case(seed: u64) -> (Case, State) {
    let mut rng = Rng(seed);
    let now = SystemTimeMs::now();
    // Whole seconds would hide an off-by-one at the edges: keep the milliseconds.
    let end = now - 3_600_000 - rng.range(0, 3_600_000) as i64;
    let start = end - rng.range(20, 6 * 60) as i64 * 60_000 - rng.range(0, 999) as i64;
    let mut source = Store::new();
    let series = rng.range(1, 6);
    for i in 0..series {
        let step = *rng.pick(&[15_000i64, 30_000, 60_000, 300_000]);
        let gaps = rng.range(0, 30);
        let mut samples = BTreeMap::new();
        // From before the range to after it: the edges must be cut exactly.
        let mut t = start - rng.range(0, 2) as i64 * step - rng.range(0, 999) as i64;
        while t <= end + step {
            if !rng.chance(gaps) {
                samples.insert(t, (rng.next() % 10_000) as f64 / 8.0);
            }
            t += step;
        }
        if rng.chance(20) {
            samples.insert(start, 1.5);
            samples.insert(end - 1, 2.5);
            samples.insert(end, 3.5);
        }
        source.insert(series_labels(i, rng.chance(30)), samples);
    }
    let wanted: Store = source
        .iter()
        .map(|(l, s)| {
            (
                l.clone(),
                s.range(start..end).map(|(t, v)| (*t, *v)).collect(),
            )
        })
        .filter(|(_, s): &(Labels, BTreeMap<i64, f64>)| !s.is_empty())
        .collect();

    // The destination: some of the history already there, identical; live data of the same
    // series at other timestamps; a series of its own.
    let mut before = Store::new();
    let identical = rng.range(0, 40);
    let live = rng.range(0, 30);
    for (labels, samples) in &source {
        let mut held = BTreeMap::new();
        for (t, v) in samples {
            if rng.chance(identical) {
                held.insert(*t, *v);
            }
            let other = t + 7_001;
            if rng.chance(live) && !samples.contains_key(&other) {
                held.insert(other, -1.0);
            }
        }
        if !held.is_empty() {
            before.insert(labels.clone(), held);
        }
    }
    if rng.chance(50) {
        let own: BTreeMap<i64, f64> = (0..50).map(|k| (start + k * 60_000, k as f64)).collect();
        before.insert(series_labels(99, false), own);
    }

    let samples: u64 = wanted.values().map(|s| s.len() as u64).sum();
    // Roughly how many writes a run makes (4 KiB requests of about 12 bytes a sample, a
    // progress record a slab): kill points spread over the whole run, and a few past its end.
    let max_slab_min = *rng.pick(&[10u64, 25, 60]);
    let slabs = ((end - start) / (max_slab_min as i64 * 60_000) + 1) as u64;
    let writes = 1 + samples * 14 / 4096 + slabs * 2;
    let interrupts = (0..rng.range(0, 3))
        .map(|_| {
            let at = rng.range(1, writes);
            if rng.chance(65) {
                Interrupt::Kill {
                    at,
                    applied: rng.chance(50),
                }
            } else {
                Interrupt::Term { at }
            }
        })
        .collect();
    let case = Case {
        seed,
        start,
        end,
        max_slab_min,
        concurrency: rng.range(1, 3),
        wanted,
        before: before.clone(),
        interrupts,
    };
    let state = State {
        source,
        dest: before,
        ..State::default()
    };
    (case, state)
}

struct SystemTimeMs;

impl SystemTimeMs {
    fn now() -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    }
}

fn seconds(ms: i64) -> String {
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn spawn(
    case: &Case,
    server: &Server,
    dir: &std::path::Path,
    run: usize,
    extra: &[&str],
) -> (Child, std::path::PathBuf) {
    let out = dir.join(format!("run{run}.json"));
    let child = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
        .args(["migrate", "--tenant", "model", "--progress", "log"])
        .args(["--from", &server.url("/src/read")])
        .args(["--to", &server.url("/dst/write")])
        .args(["--to-read", &server.url("/dst/read")])
        .args(["--start", &seconds(case.start), "--end", &seconds(case.end)])
        .args(["--migration-id", &format!("model-{}", case.seed)])
        .args(["--max-slab", &format!("{}m", case.max_slab_min)])
        .args(["--concurrency", &case.concurrency.to_string()])
        .args(["--max-write-size", "4KiB", "--retry-backoff", "10ms"])
        .args(["--report-format", "json"])
        .args(extra)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(dir.join(format!("run{run}.stderr"))).unwrap())
        .spawn()
        .unwrap();
    (child, out)
}

/// Waits for the process to exit, or for the held write; returns the exit status if it exited.
async fn exit_or_hold(
    child: &mut Child,
    server: &Server,
    what: &str,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if server.with(|s| s.held) {
            return None;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: neither exited nor reached the held write in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

async fn wait_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "{what}: did not exit in 60 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn report(out: &std::path::Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out).unwrap_or_default()).unwrap_or(Value::Null)
}

/// The source samples before `until` missing from the destination.
fn missing(case: &Case, dest: &Store, until: i64) -> Vec<String> {
    let mut out = Vec::new();
    for (labels, samples) in &case.wanted {
        for (t, v) in samples.range(..until) {
            if dest.get(labels).and_then(|d| d.get(t)) != Some(v) {
                out.push(format!("{labels:?}@{t}"));
            }
        }
    }
    out
}

/// How one case went.
struct Outcome {
    interrupts: usize,
    /// Interrupts that came before the run ended by itself.
    landed: usize,
    /// Samples the killed runs left in a slab without recording it, which the next run skipped.
    skipped: u64,
}

async fn run_case(seed: u64, dir: &std::path::Path) -> Outcome {
    let (case, state) = make_case(seed);
    let server = Server::start(state).await;
    let dir = dir.join(format!("case-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    let ctx = |what: &str| {
        format!(
            "seed {seed} ({:?}, files in {}): {what}",
            case.interrupts,
            dir.display()
        )
    };
    let mut runs = 0;
    let mut landed = 0;
    for (n, interrupt) in case.interrupts.iter().enumerate() {
        let at = match *interrupt {
            Interrupt::Kill { at, .. } | Interrupt::Term { at } => at,
        };
        server.with(|s| {
            s.writes = 0;
            s.held = false;
            s.hold_at = Some(at);
            s.apply_held = !matches!(interrupt, Interrupt::Kill { applied: false, .. });
        });
        let (mut child, out) = spawn(&case, &server, &dir, n, &[]);
        runs += 1;
        if let Some(status) = exit_or_hold(&mut child, &server, &ctx("interrupted run")).await {
            // It finished before the kill point: it must be a truthful complete run.
            let r = report(&out);
            assert_eq!(status.code(), Some(0), "{}", ctx(&format!("{r:#}")));
            assert_eq!(r["outcome"], "complete", "{}", ctx(&format!("{r:#}")));
            let gone = server.with(|s| missing(&case, &s.dest, i64::MAX));
            assert!(
                gone.is_empty(),
                "{}",
                ctx(&format!("complete but missing {gone:?}"))
            );
            continue;
        }
        landed += 1;
        match interrupt {
            Interrupt::Kill { .. } => {
                child.kill().unwrap();
                child.wait().unwrap();
                server.with(|s| s.hold_at = None);
                server.release.send_modify(|g| *g += 1);
            }
            Interrupt::Term { .. } => {
                let ok = Command::new("bash")
                    .args(["-c", &format!("kill -TERM {}", child.id())])
                    .status()
                    .unwrap()
                    .success();
                assert!(ok);
                server.with(|s| s.hold_at = None);
                server.release.send_modify(|g| *g += 1);
                let status = wait_exit(&mut child, &ctx("stopped run")).await;
                let r = report(&out);
                let outcome = r["outcome"].as_str().unwrap_or_default().to_owned();
                // Stopped before the end is exit 4, never a success; a stop that came after
                // the last slab is a complete run.
                let code = match outcome.as_str() {
                    "stopped" => 4,
                    "complete" => 0,
                    _ => panic!("{}", ctx(&format!("SIGTERM: {r:#}"))),
                };
                assert_eq!(
                    status.code(),
                    Some(code),
                    "{}",
                    ctx(&format!("SIGTERM: {r:#}"))
                );
                // What it says is copied is there.
                let through = r["completed_through"]
                    .as_str()
                    .and_then(|t| tenantgate::time::parse_rfc3339(t).ok())
                    .unwrap_or_else(|| panic!("{}", ctx(&format!("{r:#}"))));
                let until = if outcome == "complete" {
                    i64::MAX
                } else {
                    through
                };
                let gone = server.with(|s| missing(&case, &s.dest, until));
                assert!(
                    gone.is_empty(),
                    "{}",
                    ctx(&format!("{outcome} through {through}, missing {gone:?}"))
                );
                if outcome == "stopped" {
                    assert!(
                        r["resume_command"].is_string(),
                        "{}",
                        ctx(&format!("{r:#}"))
                    );
                }
            }
        }
    }

    // The last run goes to the end.
    server.with(|s| {
        s.writes = 0;
        s.held = false;
        s.hold_at = None;
    });
    let (mut child, out) = spawn(&case, &server, &dir, case.interrupts.len(), &[]);
    runs += 1;
    let status = wait_exit(&mut child, &ctx("last run")).await;
    let r = report(&out);
    assert_eq!(
        status.code(),
        Some(0),
        "{}",
        ctx(&format!("last run: {r:#}"))
    );
    assert_eq!(r["outcome"], "complete", "{}", ctx(&format!("{r:#}")));
    assert_eq!(
        r["total"]["samples_rejected"],
        0,
        "{}",
        ctx(&format!("{r:#}"))
    );
    // Each series counted once, however many slabs it spans.
    let written = r["total"]["series_written"].as_u64().unwrap_or(u64::MAX);
    assert!(
        written <= case.wanted.len() as u64,
        "{}",
        ctx(&format!("{r:#}"))
    );

    // Exactly the union: everything the destination held, and the source's range, nothing else.
    let (dest, accepted, conflicts) =
        server.with(|s| (s.dest.clone(), s.accepted.clone(), s.conflicts));
    assert_eq!(
        conflicts,
        0,
        "{}",
        ctx("a sample was sent over another value")
    );
    let mut expected = case.before.clone();
    for (labels, samples) in &case.wanted {
        expected.entry(labels.clone()).or_default().extend(samples);
    }
    let data: Store = dest
        .into_iter()
        .filter(|(l, _)| {
            !l.iter()
                .any(|(n, v)| n == "__name__" && v == PROGRESS_METRIC)
        })
        .collect();
    if data != expected {
        let gone = missing(&case, &data, i64::MAX);
        let extra: Vec<String> = data
            .iter()
            .flat_map(|(l, s)| s.keys().map(move |t| (l, t)))
            .filter(|(l, t)| expected.get(*l).and_then(|e| e.get(*t)).is_none())
            .map(|(l, t)| format!("{l:?}@{t}"))
            .collect();
        panic!(
            "{}",
            ctx(&format!("not the union: missing {gone:?}, extra {extra:?}"))
        );
    }
    // Each source sample accepted exactly once, whatever was killed where.
    for ((labels, t), n) in &accepted {
        assert_eq!(
            *n,
            1,
            "{}",
            ctx(&format!("{labels:?}@{t} accepted {n} times"))
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(runs, case.interrupts.len() + 1);
    Outcome {
        interrupts: case.interrupts.len(),
        landed,
        skipped: r["total"]["samples_skipped"].as_u64().unwrap_or(0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_and_resumes_leave_exactly_the_union_of_source_and_destination() {
    let cases: u64 = std::env::var("TENANTGATE_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let seed0: u64 = std::env::var("TENANTGATE_MODEL_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7e4a_47a7e);
    let dir = std::env::temp_dir().join(format!("tenantgate-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let began = Instant::now();
    let (mut interrupts, mut landed, mut skipping) = (0, 0, 0);
    for seed in seed0..seed0 + cases {
        let o = run_case(seed, &dir).await;
        interrupts += o.interrupts;
        landed += o.landed;
        skipping += usize::from(o.skipped > 0);
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "model: {cases} cases, {interrupts} kills or stops of which {landed} came mid-run, {skipping} \
         last runs skipped samples a killed run had written; {:.1} s",
        began.elapsed().as_secs_f64()
    );
    // The cases must exercise what they are for, or the test proves nothing.
    if cases >= 50 {
        assert!(
            landed * 2 > interrupts,
            "most kill points must fall inside a run"
        );
        assert!(
            skipping * 10 > cases as usize,
            "resumes over a partly written slab must be common"
        );
    }
}
