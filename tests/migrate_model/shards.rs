//! `--shard`: parts copied at once, the last one following; and a dense destination read in
//! pieces.

use super::*;

/// The labels of a progress series, by migration id.
fn progress_ids(dest: &Store) -> Vec<String> {
    dest.keys()
        .filter(|l| {
            l.iter()
                .any(|(n, v)| n == "__name__" && v == PROGRESS_METRIC)
        })
        .filter_map(|l| l.iter().find(|(n, _)| n == "migration_id"))
        .map(|(_, v)| v.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_copy_their_parts_at_once_and_the_last_one_follows() {
    let (mut case, state) = make_case(0x5ba4d);
    case.interrupts.clear();
    let server = Server::start(state).await;
    let dir = std::env::temp_dir().join(format!("tenantgate-shards-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let n = 3;
    let mut runs: Vec<_> = (0..n)
        .map(|i| {
            let shard = format!("{i}/{n}");
            let mut extra = vec!["--shard", shard.as_str(), "--follow"];
            extra.extend(["--follow-lag", "1s", "--follow-interval", "100ms"]);
            spawn(&case, &server, &dir, i, &extra)
        })
        .collect();
    let ctx = |what: &str| format!("shards (files in {}): {what}", dir.display());
    // The first two copy their parts and exit; --follow is left to the last one.
    for (i, (child, out)) in runs.iter_mut().enumerate().take(n - 1) {
        let status = wait_exit(child, &ctx("a shard")).await;
        let r = report(out);
        assert_eq!(status.code(), Some(0), "{}", ctx(&format!("{r:#}")));
        assert_eq!(r["outcome"], "complete", "{}", ctx(&format!("{r:#}")));
        assert_eq!(
            r["migration_id"],
            format!("model-{}-shard-{i}-of-{n}", case.seed),
            "{r:#}"
        );
        let width = (case.end - case.start) as i128;
        let part_start = case.start + (width * i as i128 / n as i128) as i64;
        let start = tenantgate::time::parse_rfc3339(r["start"].as_str().unwrap()).unwrap();
        assert_eq!(start, part_start, "{r:#}");
    }
    let (last, out) = &mut runs[n - 1];
    // The last shard copies its part, then keeps following until it is stopped.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server.with(|s| missing(&case, &s.dest, i64::MAX).is_empty()) {
        assert!(
            last.try_wait().unwrap().is_none(),
            "{}",
            ctx("the following shard exited")
        );
        assert!(
            Instant::now() < deadline,
            "{}",
            ctx("the range was not copied in 60 s")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        last.try_wait().unwrap().is_none(),
        "{}",
        ctx("the following shard exited")
    );
    let ok = Command::new("bash")
        .args(["-c", &format!("kill -TERM {}", last.id())])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = wait_exit(last, &ctx("the following shard")).await;
    let r = report(out);
    assert_eq!(status.code(), Some(4), "{}", ctx(&format!("{r:#}")));
    assert_eq!(r["outcome"], "stopped", "{r:#}");
    let through =
        tenantgate::time::parse_rfc3339(r["completed_through"].as_str().unwrap()).unwrap();
    assert!(through > case.end, "it followed past --end: {r:#}");

    // Together: exactly the union, each sample once, one progress series per shard.
    let (dest, accepted) = server.with(|s| (s.dest.clone(), s.accepted.clone()));
    assert!(missing(&case, &dest, i64::MAX).is_empty());
    for ((labels, t), k) in &accepted {
        assert_eq!(*k, 1, "{labels:?}@{t} accepted {k} times");
    }
    let mut ids = progress_ids(&dest);
    ids.sort();
    let want: Vec<String> = (0..n)
        .map(|i| format!("model-{}-shard-{i}-of-{n}", case.seed))
        .collect();
    assert_eq!(ids, want);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn shard_flags_are_checked_before_anything_is_read() {
    let run = |extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tenantgate"))
            .args([
                "migrate",
                "--tenant",
                "t",
                "--from",
                "http://127.0.0.1:9/api/v1/read",
            ])
            .args(["--to", "http://127.0.0.1:9/api/v1/push"])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{extra:?}: a bad command line");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let range = ["--start", "1700000000", "--end", "1700003600"];
    let with = |more: &[&'static str]| [&range[..], more].concat();
    assert!(run(&with(&["--shard", "3/3"])).contains("0 to 2"));
    assert!(run(&with(&["--shard", "1"])).contains("I/N"));
    assert!(
        run(&["--start", "now-1h", "--end", "1700003600", "--shard", "0/2"]).contains("absolute")
    );
    assert!(run(&["--start", "1700000000", "--shard", "0/2"]).contains("--shard needs --end"));
    assert!(run(&with(&["--follow"])).contains("exclude each other"));
    assert!(
        run(&[
            "--start",
            "1700000000",
            "--end",
            "1700000000.002",
            "--shard",
            "0/3"
        ])
        .contains("too narrow")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_dense_with_live_data_after_the_progress_is_read_in_pieces() {
    // The one slab after the recorded progress holds far more live data than a slab's share of
    // --max-memory: it is read in smaller pieces, not given up on.
    let end = SystemTimeMs::now() / 60_000 * 60_000 - 3_600_000;
    let start = end - 2 * 3_600_000;
    let progress = start + 30 * 60_000;
    let metric: BTreeMap<i64, f64> = (0..120).map(|k| (start + k * 60_000, k as f64)).collect();
    let mut source = Store::new();
    source.insert(series_labels(0, false), metric.clone());
    let mut dest = Store::new();
    // What a killed run wrote: the history up to the progress and a little after it.
    let written: BTreeMap<i64, f64> = metric
        .range(..progress + 5 * 60_000)
        .map(|(t, v)| (*t, *v))
        .collect();
    dest.insert(series_labels(0, false), written);
    dest.insert(
        vec![
            ("__name__".to_owned(), PROGRESS_METRIC.to_owned()),
            ("migration_id".to_owned(), "model-0".to_owned()),
        ],
        BTreeMap::from([(progress - 1, progress as f64 / 1000.0)]),
    );
    // 20 live series sampled every 100 ms over the whole window: 1.44M samples.
    for i in 0..20 {
        let live: BTreeMap<i64, f64> = (0..72_000).map(|k| (start + k * 100, 1.0)).collect();
        dest.insert(series_labels(100 + i, false), live);
    }
    let mut wanted = Store::new();
    wanted.insert(series_labels(0, false), metric);
    let case = Case {
        seed: 0,
        start,
        end,
        max_slab_min: 60,
        concurrency: 1,
        wanted,
        before: dest.clone(),
        interrupts: vec![],
    };
    let server = Server::start(State {
        source,
        dest,
        ..State::default()
    })
    .await;
    let dir = std::env::temp_dir().join(format!("tenantgate-dense-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut child, out) = spawn(&case, &server, &dir, 0, &["--max-memory", "28MiB"]);
    let status = wait_exit(&mut child, "the dense resume").await;
    let r = report(&out);
    let stderr = std::fs::read_to_string(dir.join("run0.stderr")).unwrap_or_default();
    assert_eq!(status.code(), Some(0), "{r:#}\n{stderr}");
    assert_eq!(r["outcome"], "complete", "{r:#}");
    assert_eq!(
        r["total"]["samples_skipped"], 5,
        "the 5 samples written after the progress: {r:#}"
    );
    assert_eq!(r["total"]["samples_written"], 90 - 5, "{r:#}");
    let (dest, accepted) = server.with(|s| (s.dest.clone(), s.accepted.clone()));
    assert!(missing(&case, &dest, i64::MAX).is_empty());
    assert!(accepted.values().all(|n| *n == 1));
    let _ = std::fs::remove_dir_all(&dir);
}
