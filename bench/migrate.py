#!/usr/bin/env python3
"""Helper of bench/migrate.sh: runs the benchmark (servers, data, timed runs, kill tests), and
writes bench/MIGRATE.md from the measurements. Standard library only.

  migrate.py run ...          what bench/migrate.sh calls (binaries, scratch folder, --quick)
  migrate.py gen OUT --series S --samples N --start UNIX_S --step S
  migrate.py compare --src URL --dst URL --dst-kind prom|vm --start MS --end MS
  migrate.py render RESULTS.json OUT.md     (MIGRATE.md again from a run's results.json)

The data: G metric names bench_metric_0 .. bench_metric_{G-1}; series i is
bench_metric_{i % G}{instance="i-XXXXX", job="bench"}; every series has N samples, STEP seconds
apart from START. Values are gauge-like floats with one decimal (not constant, so the XOR
chunks are not trivially small).
"""

import argparse
import json
import statistics
import sys
import urllib.parse
import urllib.request


def series_value(i, k):
    # Deterministic, varied, one decimal: a slow wave plus noise.
    return ((i * 7919 + k * 31) % 997) / 10.0 + (k % 60)


def cmd_gen(a):
    with open(a.out, "w", buffering=1 << 20) as f:
        for g in range(a.groups):
            name = f"bench_metric_{g}"
            f.write(f"# HELP {name} benchmark data\n# TYPE {name} gauge\n")
            for i in range(g, a.series, a.groups):
                prefix = f'{name}{{instance="i-{i:05d}",job="bench"}} '
                lines = []
                for k in range(a.samples):
                    ts = a.start + k * a.step
                    lines.append(f"{prefix}{series_value(i, k):.1f} {ts}\n")
                f.write("".join(lines))
        f.write("# EOF\n")


def http_get(url, timeout=600):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read()


def prom_series(base, group, start_ms, end_ms):
    """Raw samples of one metric name from a Prometheus HTTP API: {labels: [(ts_ms, value)]}."""
    rng = (end_ms - start_ms) // 1000 + 60
    q = f"bench_metric_{group}[{rng}s]"
    # At end-1ms: the range (t - rng, t] then holds every sample of [start, end).
    url = base + "/api/v1/query?" + urllib.parse.urlencode(
        {"query": q, "time": f"{(end_ms - 1) / 1000:.3f}"})
    body = json.loads(http_get(url))
    if body.get("status") != "success":
        raise SystemExit(f"query {q} failed: {body}")
    out = {}
    for s in body["data"]["result"]:
        m = s["metric"]
        key = (m.get("__name__"), m.get("instance"), m.get("job"))
        out[key] = [(int(round(float(t) * 1000)), float(v)) for t, v in s.get("values", [])
                    if start_ms <= int(round(float(t) * 1000)) < end_ms]
    return out


def vm_series(base, group, start_ms, end_ms):
    """Raw samples (duplicates included) of one metric name from VictoriaMetrics' export API."""
    url = base + "/api/v1/export?" + urllib.parse.urlencode(
        {"match[]": f"bench_metric_{group}", "start": f"{start_ms / 1000:.3f}",
         "end": f"{(end_ms - 1) / 1000:.3f}"})
    out = {}
    with urllib.request.urlopen(url, timeout=600) as r:
        for line in r:
            if not line.strip():
                continue
            s = json.loads(line)
            m = s["metric"]
            key = (m.get("__name__"), m.get("instance"), m.get("job"))
            pts = [(t, float(v)) for t, v in zip(s["timestamps"], s["values"])
                   if start_ms <= t < end_ms]
            # One series can come as several lines (one per storage part): merge them.
            out.setdefault(key, []).extend(pts)
    return out


def fetch(kind, base, group, start_ms, end_ms):
    return (prom_series if kind == "prom" else vm_series)(base, group, start_ms, end_ms)


def cmd_compare(a):
    res = {"series_source": 0, "series_destination": 0, "series_missing": 0, "series_extra": 0,
           "samples_source": 0, "samples_destination": 0, "gaps": 0, "duplicates": 0,
           "extra": 0, "value_mismatches": 0, "series_with_gaps": 0,
           "series_with_duplicates": 0}
    for g in range(a.groups):
        src = prom_series(a.src, g, a.start, a.end)
        dst = fetch(a.dst_kind, a.dst, g, a.start, a.end)
        res["series_source"] += len(src)
        res["series_destination"] += len(dst)
        res["series_missing"] += len(set(src) - set(dst))
        res["series_extra"] += len(set(dst) - set(src))
        for key, pts in src.items():
            res["samples_source"] += len(pts)
            want = dict(pts)
            got = dst.get(key, [])
            res["samples_destination"] += len(got)
            seen = {}
            for t, v in got:
                seen.setdefault(t, []).append(v)
            dups = sum(len(v) - 1 for v in seen.values())
            gaps = sum(1 for t in want if t not in seen)
            extra = sum(1 for t in seen if t not in want)
            mism = sum(1 for t, vs in seen.items() if t in want and any(v != want[t] for v in vs))
            res["duplicates"] += dups
            res["gaps"] += gaps
            res["extra"] += extra
            res["value_mismatches"] += mism
            res["series_with_gaps"] += 1 if gaps else 0
            res["series_with_duplicates"] += 1 if dups else 0
        for key in set(dst) - set(src):
            res["samples_destination"] += len(dst[key])
    print(json.dumps(res))


# ---------------------------------------------------------------- render

def fmt_int(n):
    return f"{int(round(n)):,}"


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def spread(xs):
    if not xs:
        return "n/a"
    m = med(xs)
    return f"{min(xs):,.0f}–{max(xs):,.0f} ({(max(xs) - min(xs)) / m * 100:.0f}%)"


def cmd_render(a):
    r = json.load(open(a.results))
    out = []
    w = out.append
    env = r["env"]
    d = r["data"]
    w("# Migration benchmark: `tenantgate migrate` vs `vmctl remote-read`")
    w("")
    w(f"Measured with `bash bench/migrate.sh` on {env['date']}"
      f"{' (QUICK mode: smaller data, not the published result)' if r['quick'] else ''}. "
      "Every number below comes from that run; the script rewrites this file.")
    w("")
    t = r["targets"]
    w("## Summary")
    w("")
    w(f"{fmt_int(d['total'])} samples, defaults against defaults, medians of {r['runs']} interleaved runs: "
      f"tenantgate → Prometheus {fmt_int(t['tg_sps'])} samples/s at {t['tg_rss'] / 1024:.1f} MiB peak RSS; "
      f"vmctl → VictoriaMetrics {fmt_int(t['vm_sps'])} samples/s at {t['vm_rss'] / 1024:.1f} MiB; "
      f"tenantgate into the same VictoriaMetrics {fmt_int(t['tg_vm_sps'])} samples/s. Against the issue's targets "
      f"(vmctl standing in for prom-migrator): speed {t['ratio_sps']:.2f}x (target 2x: "
      f"{'met' if t['ratio_sps'] >= 2 else 'not met'}), memory {t['ratio_rss']:.2f}x (target at most 0.25x: "
      f"{'met' if t['ratio_rss'] <= 0.25 else 'not met'}), after kill -9 and resume {t['tg_gaps']} gaps and "
      f"{t['tg_dups']} duplicates (target zero: {'met' if t['tg_gaps'] == 0 and t['tg_dups'] == 0 else 'not met'}; "
      f"vmctl, which cannot resume: {fmt_int(t['vm_gaps'])} gaps, {fmt_int(t['vm_dups'])} duplicates).")
    w("")
    w("## What was compared, and why vmctl")
    w("")
    w("The issue asks for a comparison with prom-migrator (Promscale's migration tool, module "
      "`github.com/timescale/promscale/migration-tool`, `./cmd/prom-migrator`). It cannot be built here: "
      "the Go module proxy refuses every version of it. The script asks again on every run; this run's "
      "answers:")
    w("")
    w("```")
    for c in r["prom_migrator"]:
        w(f"$ {c['cmd']}")
        w(c["out"].rstrip() or "(no output)")
        w(f"exit status {c['rc']}")
    w("```")
    w("")
    w("`GOPROXY` ends in `,direct`, but the go command falls back to the origin only when the proxy "
      "answers 404 or 410, not 403; so no version of prom-migrator can be fetched, and nothing of it was "
      "built.")
    w("")
    w("As the issue says for that case, the read side is compared with VictoriaMetrics' `vmctl` "
      "instead: its `remote-read` mode reads a Prometheus remote-read endpoint, like prom-migrator and "
      "tenantgate. vmctl writes only to VictoriaMetrics (its import API), and VictoriaMetrics does not "
      "serve remote read, which tenantgate needs to read its progress back. So **the destinations "
      "differ**: tenantgate writes into a Prometheus 3 (remote-write receiver, out-of-order window "
      f"{r['ooo_window']}), vmctl into a single-node VictoriaMetrics. To show how much of the "
      "difference is the destination, one more row runs tenantgate into the same VictoriaMetrics "
      "(`--to .../api/v1/write`), with `--to-read` pointing at an empty Prometheus: its progress is "
      "written to VictoriaMetrics but never found again, which is harmless for a run from scratch "
      "(and is not how tenantgate is meant to be used: no resume there).")
    w("")
    w("## Versions and machine")
    w("")
    for k, v in env["versions"].items():
        w(f"- {k}: {v}")
    w(f"- Machine: {env['nproc']} CPUs ({env['cpu']}), {env['mem']} memory, {env['kernel']}")
    w(f"- Load average before the runs: {env['load_before']}; after: {env.get('load_after', 'n/a')} "
      "(the machine was shared: see the notes on fairness)")
    w("")
    w("## Rerun")
    w("")
    w("```sh")
    w("bash bench/migrate.sh           # the full run: builds what is missing, rewrites bench/MIGRATE.md")
    w("bash bench/migrate.sh --quick   # ~1M samples, a fast sanity run; writes nothing under bench/")
    w("```")
    w("")
    w("## Data and setup")
    w("")
    w(f"- {fmt_int(d['series'])} series ({d['groups']} metric names) x {fmt_int(d['samples_per_series'])} "
      f"samples, {d['step']} s apart = **{fmt_int(d['total'])} samples**, from {d['start_rfc']} to "
      f"{d['end_rfc']} (end exclusive, {d['range_h']:.1f} h, ending {d['ago_h']:.1f} h before the run). Made "
      "as OpenMetrics text by `bench/migrate.py gen` and turned into blocks by "
      "`promtool tsdb create-blocks-from openmetrics` (Prometheus 3's promtool), in "
      f"{d['gen_s']:.0f} s + {d['blocks_s']:.0f} s.")
    w(f"- Source: Prometheus {env['prom_version']} serving those blocks "
      "(`--storage.tsdb.retention.time=3650d`; min and max block duration 2h, so it does not compact them "
      "during the runs; no scrape targets), checked before measuring: it "
      f"answered {fmt_int(d['source_check']['series'])} series and {fmt_int(d['source_check']['samples'])} "
      "samples in the range (raw samples through the query API).")
    w("- Destinations, a fresh empty one for every run: Prometheus "
      f"{env['prom_version']} (`--web.enable-remote-write-receiver`, "
      f"`storage.tsdb.out_of_order_time_window: {r['ooo_window']}`), and VictoriaMetrics "
      f"{env['vm_version']} (`{r['vm_flags']}`; no `-dedup.minScrapeInterval`, so VictoriaMetrics "
      "keeps duplicate samples and the export API shows them).")
    w("- CPU pinning (`taskset`): source and destination on CPU 1, the migrating tool on CPU 0.")
    w(f"- Commands (`$S` source, `$D` destination, times in Unix seconds / RFC 3339):")
    w("")
    w("```")
    for k, v in r["commands"].items():
        w(f"{k}: {v}")
    w("```")
    w("")
    w("Both read the same range in hour-long pieces (tenantgate's default `--max-slab 1h`; vmctl has "
      "no default step and requires `--remote-read-step-interval`, so `hour`). Everything else is each "
      "tool's default: tenantgate reads streamed XOR chunks with 2 slabs ahead; vmctl reads in SAMPLES "
      "mode (its default, `--remote-read-use-stream=false`), 1 reader, 2 writers to VictoriaMetrics.")
    w("")
    w("## Results")
    w("")
    w(f"{r['runs']} runs of each, interleaved (the order alternates from round to round). Samples/s is "
      "the range's samples divided by the tool's wall-clock time (process start to exit, validation "
      "included). CPU is the tool's own user+sys and peak RSS its `Maximum resident set size`, both "
      "from `/usr/bin/time -v`; the source and destination CPU columns are their utime+stime (from "
      "`/proc`) during the run. Medians, with min–max and the spread in percent of the median.")
    w("")
    w("| tool → destination | runs | samples landed | samples/s (median) | samples/s min–max (spread) | "
      "wall s | tool CPU s | peak RSS | source CPU s | destination CPU s | CPU 1 busy | after kill -9: gaps / duplicates |")
    w("|---|---|---|---|---|---|---|---|---|---|---|---|")
    killed = {k["name"]: k["compare"] for k in r["kill"]}
    for name, rows in r["results"].items():
        ok = [x for x in rows if x["rc"] == 0]
        sps = [x["samples_per_s"] for x in ok]
        w(f"| {name} | {len(ok)}/{len(rows)} | "
          f"{', '.join(sorted(set(fmt_int(x['landed']) for x in rows)))} | "
          f"**{fmt_int(med(sps))}** | {spread(sps)} | {med([x['wall_s'] for x in ok]):.1f} | "
          f"{med([x['cpu_s'] for x in ok]):.1f} | {med([x['rss_kib'] for x in ok]) / 1024:.1f} MiB | "
          f"{med([x['src_cpu_s'] for x in ok]):.1f} | {med([x['dst_cpu_s'] for x in ok]):.1f} | "
          f"{med([(x['src_cpu_s'] + x['dst_cpu_s']) / x['wall_s'] * 100 for x in ok]):.0f}% | "
          + (f"{fmt_int(killed[name]['gaps'])} / {fmt_int(killed[name]['duplicates'])} |" if name in killed
             else "not tested |"))
    w("")
    w("Every run, per run (s = wall seconds):")
    w("")
    w("| round | tool | rc | wall s | samples/s | user s | sys s | peak RSS MiB | landed | load avg |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for x in sorted((x for rows in r["results"].values() for x in rows), key=lambda x: x["seq"]):
        w(f"| {x['round']} | {x['tool']} | {x['rc']} | {x['wall_s']:.1f} | {fmt_int(x['samples_per_s'])} | "
          f"{x['user_s']:.1f} | {x['sys_s']:.1f} | {x['rss_kib'] / 1024:.1f} | {fmt_int(x['landed'])} | "
          f"{x['load']} |")
    w("")
    if r.get("concurrency"):
        w("tenantgate `--concurrency` variation (into Prometheus, one run each, after the main runs):")
        w("")
        w("| --concurrency | wall s | samples/s | CPU s | peak RSS MiB |")
        w("|---|---|---|---|---|")
        for x in r["concurrency"]:
            w(f"| {x['concurrency']} | {x['wall_s']:.1f} | {fmt_int(x['samples_per_s'])} | {x['cpu_s']:.1f} | "
              f"{x['rss_kib'] / 1024:.1f} |")
        w("")
    w("### Kill and resume")
    w("")
    w("For each tool: a fresh destination, the migration started, `kill -9` after a random delay "
      "(between 25% and 65% of that tool's median run time), the samples that had landed counted, then "
      "the same command run again to the end. tenantgate resumes from its progress record; vmctl has no "
      "resume, so running it again copies the whole range again. Then every series of the source is "
      "compared with the destination, timestamp by timestamp (values too): a gap is a source sample "
      "missing in the destination, a duplicate a second sample at the same timestamp of the same series.")
    w("")
    w("| tool → destination | killed after | landed at kill | 2nd run: samples sent | re-sent (sent − missing) | "
      "gaps | duplicates | extra | value mismatches | 2nd run exit |")
    w("|---|---|---|---|---|---|---|---|---|---|")
    for k in r["kill"]:
        c = k["compare"]
        w(f"| {k['name']} | {k['delay_s']:.1f} s | {fmt_int(k['landed_at_kill'])} | {fmt_int(k['sent_2nd'])} | "
          f"{fmt_int(k['sent_2nd'] - (d['total'] - k['landed_at_kill']))} | "
          f"**{fmt_int(c['gaps'])}** | **{fmt_int(c['duplicates'])}** | {fmt_int(c['extra'])} | "
          f"{fmt_int(c['value_mismatches'])} | {k['rc_2nd']} |")
    w("")
    for k in r["kill"]:
        w(f"- {k['name']}: {k['note']}")
    w("")
    w("### What each tool prints at the end")
    w("")
    for name, text in r["reports"].items():
        w(f"{name}:")
        w("")
        w("```")
        w(text.rstrip())
        w("```")
        w("")
    w("## Against the issue's targets")
    w("")
    w("The targets are set against prom-migrator; vmctl stands in for it here, from the same run:")
    w("")
    t = r["targets"]
    w(f"- **At least 2x the samples/s**: tenantgate {fmt_int(t['tg_sps'])}/s vs vmctl {fmt_int(t['vm_sps'])}/s "
      f"= {t['ratio_sps']:.2f}x → **{'met' if t['ratio_sps'] >= 2 else 'NOT met'}**.")
    w(f"- **At most a quarter of the peak memory**: tenantgate {t['tg_rss'] / 1024:.1f} MiB vs vmctl "
      f"{t['vm_rss'] / 1024:.1f} MiB = {t['ratio_rss']:.2f}x → "
      f"**{'met' if t['ratio_rss'] <= 0.25 else 'NOT met'}**.")
    w(f"- **Zero gaps or duplicates after a kill**: tenantgate {t['tg_gaps']} gaps, {t['tg_dups']} duplicates → "
      f"**{'met' if t['tg_gaps'] == 0 and t['tg_dups'] == 0 else 'NOT met'}** (vmctl: {t['vm_gaps']} gaps, "
      f"{t['vm_dups']} duplicates).")
    if "tg_vm_sps" in t:
        w(f"- Same destination (both into VictoriaMetrics): tenantgate {fmt_int(t['tg_vm_sps'])}/s vs vmctl "
          f"{fmt_int(t['vm_sps'])}/s = {t['tg_vm_sps'] / t['vm_sps']:.2f}x.")
    w("")
    w("## Where the time goes")
    w("")
    w("From the same runs (medians): CPU 0 holds only the tool, CPU 1 the source and the destination. "
      "A CPU 1 near 100% busy means the tool was waiting for the servers, not for itself.")
    w("")
    for name, rows in r["results"].items():
        ok = [x for x in rows if x["rc"] == 0]
        if not ok:
            continue
        line = (f"- {name}: the tool used {med([x['cpu_s'] / x['wall_s'] * 100 for x in ok]):.0f}% of CPU 0, "
                f"the source and destination {med([(x['src_cpu_s'] + x['dst_cpu_s']) / x['wall_s'] * 100 for x in ok]):.0f}% "
                f"of CPU 1 (source {med([x['src_cpu_s'] for x in ok]):.1f} s, destination "
                f"{med([x['dst_cpu_s'] for x in ok]):.1f} s of {med([x['wall_s'] for x in ok]):.1f} s); "
                f"tool CPU per million samples {med([x['cpu_s'] for x in ok]) / d['total'] * 1e6:.2f} s")
        idle = [x["vmctl_idle_s"] / x["vmctl_import_s"] * 100 for x in ok if x.get("vmctl_import_s")]
        if idle:
            line += (f"; vmctl's own stats say its VictoriaMetrics importer was idle {med(idle):.0f}% of the time "
                     "(waiting for data from the reader)")
        w(line + ".")
    w("")
    if r.get("perf"):
        w(r["perf"].rstrip())
        w("")
    if r.get("notes"):
        w("## Notes on fairness, and findings")
        w("")
        for n in r["notes"]:
            w(f"- {n}")
        w("")
    open(a.out, "w").write("\n".join(out))


# ---------------------------------------------------------------- the benchmark

import atexit
import datetime
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

PROCS = []          # every process started, stopped at exit
TICK = os.sysconf("SC_CLK_TCK")


def log(msg):
    print(f"migrate-bench: {msg}", file=sys.stderr, flush=True)


def die(msg):
    log(f"ERROR: {msg}")
    raise SystemExit(1)


def stop_all():
    for p in reversed(PROCS):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + 15
    for p in reversed(PROCS):
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    PROCS.clear()


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, logfile, **kw):
    """A process in its own process group (so it and its children can be stopped), logged to a file."""
    f = open(logfile, "ab")
    p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                         start_new_session=True, **kw)
    f.close()
    PROCS.append(p)
    return p


def stop(p):
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if p in PROCS:
        PROCS.remove(p)


def wait_ready(p, url, what, logfile, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            die(f"{what} exited with status {p.returncode} before it was ready; its log {logfile}:\n"
                + open(logfile, errors="replace").read()[-3000:])
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    die(f"{what} was not ready at {url} within {timeout} s; its log: {logfile}")


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def loadavg():
    return " ".join(open("/proc/loadavg").read().split()[:3])


class Bench:
    def __init__(self, a):
        self.a = a
        self.work = a.work
        self.n = 0

    # -- servers

    def prometheus(self, name, data, extra_args=(), config=""):
        port = free_port()
        cfg = os.path.join(self.work, f"{name}.yml")
        open(cfg, "w").write("global:\n  scrape_interval: 1h\n" + config)
        logfile = os.path.join(self.work, f"{name}.log")
        p = start(["taskset", "-c", "1", self.a.prometheus, f"--config.file={cfg}",
                   f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{port}",
                   *extra_args], logfile)
        url = f"http://127.0.0.1:{port}"
        wait_ready(p, url + "/-/ready", name, logfile)
        return p, url

    def dest_prometheus(self, name):
        data = os.path.join(self.work, name)
        return self.prometheus(name, data, ["--web.enable-remote-write-receiver",
                                            "--storage.tsdb.retention.time=3650d"],
                               f"storage:\n  tsdb:\n    out_of_order_time_window: {OOO_WINDOW}\n")

    def dest_vm(self, name):
        port = free_port()
        data = os.path.join(self.work, name)
        logfile = os.path.join(self.work, f"{name}.log")
        p = start(["taskset", "-c", "1", self.a.victoria_metrics, f"-storageDataPath={data}",
                   f"-httpListenAddr=127.0.0.1:{port}", *VM_FLAGS], logfile)
        url = f"http://127.0.0.1:{port}"
        wait_ready(p, url + "/health", name, logfile)
        return p, url

    # -- counting

    def count(self, kind, url):
        if kind == "vm":
            urllib.request.urlopen(url + "/internal/force_flush", timeout=60).read()
            total = series = 0
            for g in range(GROUPS):
                s = vm_series(url, g, self.start_ms, self.end_ms)
                series += len(s)
                total += sum(len(v) for v in s.values())
            return series, total
        # Server-side: sum(count_over_time(...)) per metric name.
        rng = (self.end_ms - self.start_ms) // 1000 + 60
        total = series = 0
        for g in range(GROUPS):
            for q, acc in ((f"sum(count_over_time(bench_metric_{g}[{rng}s]))", "samples"),
                           (f"count(count_over_time(bench_metric_{g}[{rng}s]))", "series")):
                u = url + "/api/v1/query?" + urllib.parse.urlencode(
                    {"query": q, "time": f"{(self.end_ms - 1) / 1000:.3f}"})
                res = json.loads(http_get(u))["data"]["result"]
                v = int(float(res[0]["value"][1])) if res else 0
                if acc == "samples":
                    total += v
                else:
                    series += v
        return series, total

    # -- the tools

    def tg_cmd(self, src, to, to_read=None, extra=()):
        cmd = [self.a.tenantgate, "migrate", "--from", src + "/api/v1/read", "--to", to,
               "--tenant", "bench", "--start", str(self.start_ms // 1000),
               "--end", str(self.end_ms // 1000)]
        if to_read:
            cmd += ["--to-read", to_read]
        return cmd + list(extra)

    def vm_cmd(self, src, vm):
        return [self.a.vmctl, "remote-read", "-s", "--remote-read-src-addr", src,
                "--remote-read-filter-time-start", self.start_rfc,
                "--remote-read-filter-time-end", self.end_rfc,
                "--remote-read-step-interval", "hour", "--vm-addr", vm,
                # Needed off a terminal: its progress bar otherwise fails the run ("error when puts
                # the terminal connected to the given file descriptor: inappropriate ioctl").
                "--disable-progress-bar"]

    def timed(self, name, cmd, extra_pids=(), perf=None):
        """Runs cmd on CPU 0 under /usr/bin/time -v; returns its figures and output."""
        self.n += 1
        tag = f"{self.n:02d}-{name.replace(' ', '_').replace('→', 'to')}"
        out = os.path.join(self.work, f"{tag}.out")
        err = os.path.join(self.work, f"{tag}.err")
        tfile = os.path.join(self.work, f"{tag}.time")
        pre = ["taskset", "-c", "0", "/usr/bin/time", "-v", "-o", tfile]
        if perf:
            pre += ["perf", "record", "-q", "-F", "999", "-e", "cpu-clock", "-g", "-o", perf, "--"]
        before = {pid: cpu_s(pid) for pid in extra_pids}
        load = loadavg()
        t0 = time.monotonic()
        with open(out, "wb") as fo, open(err, "wb") as fe:
            p = subprocess.Popen(pre + cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
            PROCS.append(p)
            rc = p.wait()
            PROCS.remove(p)
        wall = time.monotonic() - t0
        after = {pid: cpu_s(pid) for pid in extra_pids}
        t = open(tfile).read()

        def field(label):
            m = re.search(re.escape(label) + r":\s*([0-9.]+)", t)
            return float(m.group(1)) if m else float("nan")
        return {
            "tag": tag, "rc": rc, "wall_s": wall,
            "user_s": field("User time (seconds)"), "sys_s": field("System time (seconds)"),
            "cpu_s": field("User time (seconds)") + field("System time (seconds)"),
            "rss_kib": field("Maximum resident set size (kbytes)"),
            "extra_cpu": [after[p] - before[p] for p in extra_pids],
            "load": load, "stdout": open(out, errors="replace").read(),
            "stderr": open(err, errors="replace").read(),
        }


OOO_WINDOW = "30d"
NOTES = [
    "**The destinations differ** (Prometheus 3's TSDB for tenantgate, VictoriaMetrics for vmctl), and "
    "the destination runs on the same CPU as the source, so a slower destination slows the source's "
    "answers too. The tenantgate → VictoriaMetrics row takes the destination out of the comparison "
    "(not its progress reads: they go to an empty Prometheus and find nothing, a few milliseconds each).",
    "Both tools read the same source Prometheus, the same blocks (in the page cache for every run: "
    "they were just written), the same range, in one-hour pieces, pinned the same way: the tool alone "
    "on CPU 0, source and destination on CPU 1. Each destination is fresh and empty for each run.",
    "The read formats differ by default: tenantgate asks for streamed XOR chunks (the source sends its "
    "stored chunks as they are), vmctl for SAMPLES (the source decodes every chunk and sends samples in "
    "one snappy message per query). The source CPU column shows that cost; it lands on CPU 1, not on "
    "the tool. vmctl's `--remote-read-use-stream` would ask for chunks too; it was not used (defaults vs "
    "defaults).",
    "tenantgate's time includes what vmctl does not do: the start-up validation (an empty write, a "
    "progress read), a progress write and the pacing of writes in time order, one request at a time. "
    "vmctl's time includes its own start-up checks of VictoriaMetrics.",
    "A write counts as done when the destination answered it: Prometheus after appending to its head "
    "(and WAL), VictoriaMetrics after buffering in memory (it makes data searchable within a second or "
    "so; the harness calls `/internal/force_flush` before counting).",
    "The machine is small and was shared while measuring (another engineer was compiling Rust on the "
    "same two CPUs): the load average column shows when. Interleaving the runs spreads that noise over "
    "both tools; the spread column says how large it was.",
    "Peak RSS is the tool's `Maximum resident set size` from `/usr/bin/time -v` (VmHWM). tenantgate's "
    "own report gives the same figure as `peak_memory_bytes`.",
    "vmctl run off a terminal needs `--disable-progress-bar`: without it, it stops at once with \"error "
    "when puts the terminal connected to the given file descriptor: inappropriate ioctl for device\" "
    "(exit status 1). `-s` skips its confirmation prompt.",
    "While building this harness (1M samples, 4 tries), VictoriaMetrics twice answered `/api/v1/export` "
    "for a selector with only the series that existed when that selector was first queried (during the "
    "killed run), also after the second vmctl run had written every series and `/internal/force_flush`; "
    "another selector, or a restart, showed them all. So the kill test restarts VictoriaMetrics before "
    "comparing, and reports both counts.",
]
VM_FLAGS = ["-retentionPeriod=100y", "-loggerLevel=WARN"]
GROUPS = 10


def rfc(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def sh(cmd):
    return " ".join(c if re.fullmatch(r"[A-Za-z0-9_@%+=:,./-]+", c) else "'" + c.replace("'", "'\\''") + "'"
                    for c in cmd)


def cmd_run(a):
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    atexit.register(stop_all)
    b = Bench(a)
    quick = a.quick
    series, per = (500, 2000) if quick else (2000, 5000)
    step = 15
    now = int(time.time())
    # End on a whole hour at least an hour ago; the range is series-independent.
    end_s = (now // 3600 - 1) * 3600
    start_s = end_s - per * step
    b.start_ms, b.end_ms = start_s * 1000, end_s * 1000
    b.start_rfc, b.end_rfc = rfc(b.start_ms), rfc(b.end_ms)
    total = series * per
    res = {"quick": quick, "runs": a.runs, "ooo_window": OOO_WINDOW, "vm_flags": " ".join(VM_FLAGS),
           "prom_migrator": json.load(open(a.prom_migrator)), "env": json.load(open(a.env)),
           "results": {}, "kill": [], "reports": {}, "notes": []}
    res["env"]["load_before"] = loadavg()
    log(f"data: {series} series x {per} samples = {total:,} samples, {b.start_rfc} .. {b.end_rfc}")

    # -- data
    om = os.path.join(b.work, "data.om")
    t0 = time.monotonic()
    cmd_gen(argparse.Namespace(out=om, series=series, samples=per, start=start_s, step=step, groups=GROUPS))
    gen_s = time.monotonic() - t0
    srcdata = os.path.join(b.work, "source")
    t0 = time.monotonic()
    subprocess.run(["nice", a.promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", om, srcdata],
                   check=True, stdout=subprocess.DEVNULL)
    blocks_s = time.monotonic() - t0
    os.remove(om)
    log(f"blocks made in {blocks_s:.0f} s")
    # min = max block duration: the source never compacts its blocks during the runs.
    src_p, src = b.prometheus("source", srcdata, ["--storage.tsdb.retention.time=3650d",
                                                  "--storage.tsdb.min-block-duration=2h",
                                                  "--storage.tsdb.max-block-duration=2h"])
    s_series, s_samples = b.count("prom", src)
    if (s_series, s_samples) != (series, total):
        die(f"the source holds {s_series} series and {s_samples} samples, expected {series} and {total}")
    log(f"source checked: {s_series} series, {s_samples:,} samples")
    res["data"] = {"series": series, "groups": GROUPS, "samples_per_series": per, "step": step, "total": total,
                   "start_rfc": b.start_rfc, "end_rfc": b.end_rfc, "range_h": per * step / 3600,
                   "ago_h": (now - end_s) / 3600, "gen_s": gen_s, "blocks_s": blocks_s,
                   "source_check": {"series": s_series, "samples": s_samples}}
    # For the tenantgate -> VictoriaMetrics row: somewhere to (not) find progress.
    empty_p, empty = b.prometheus("empty", os.path.join(b.work, "empty"))

    res["commands"] = {
        "tenantgate → Prometheus": sh(b.tg_cmd("$S", "$D/api/v1/write")).replace(a.tenantgate, "tenantgate"),
        "tenantgate → VictoriaMetrics": sh(b.tg_cmd("$S", "$D/api/v1/write", "$EMPTY/api/v1/read")).replace(a.tenantgate, "tenantgate"),
        "vmctl → VictoriaMetrics": sh(b.vm_cmd("$S", "$D")).replace(a.vmctl, "vmctl"),
        "all run as": "taskset -c 0 /usr/bin/time -v <command>",
    }

    variants = {
        "tenantgate → Prometheus": ("prom", lambda d: b.tg_cmd(src, d + "/api/v1/write")),
        "vmctl → VictoriaMetrics": ("vm", lambda d: b.vm_cmd(src, d)),
        "tenantgate → VictoriaMetrics": ("vm", lambda d: b.tg_cmd(src, d + "/api/v1/write", empty + "/api/v1/read")),
    }
    for name in variants:
        res["results"][name] = []
    seq = 0
    for rnd in range(1, a.runs + 1):
        order = list(variants) if rnd % 2 else list(reversed(variants))
        for name in order:
            kind, mk = variants[name]
            seq += 1
            dname = f"dest-{seq:02d}"
            dp, d = (b.dest_prometheus if kind == "prom" else b.dest_vm)(dname)
            log(f"round {rnd}: {name} ...")
            r = b.timed(name, mk(d), extra_pids=[src_p.pid, dp.pid])
            ls, lt = b.count(kind, d)
            stop(dp)
            shutil.rmtree(os.path.join(b.work, dname), ignore_errors=True)
            row = {"seq": seq, "round": rnd, "tool": name, "rc": r["rc"], "wall_s": r["wall_s"],
                   "user_s": r["user_s"], "sys_s": r["sys_s"], "cpu_s": r["cpu_s"], "rss_kib": r["rss_kib"],
                   "src_cpu_s": r["extra_cpu"][0], "dst_cpu_s": r["extra_cpu"][1],
                   "samples_per_s": total / r["wall_s"], "landed": lt, "landed_series": ls, "load": r["load"]}
            idle = re.search(r"idle duration: (\S+);", r["stderr"])
            spent = re.search(r"time spent while importing: (\S+);", r["stderr"])
            if idle and spent:
                row["vmctl_idle_s"], row["vmctl_import_s"] = go_duration(idle.group(1)), go_duration(spent.group(1))
            res["results"][name].append(row)
            log(f"  rc {r['rc']}, {r['wall_s']:.1f} s, {total / r['wall_s']:,.0f} samples/s, cpu {r['cpu_s']:.1f} s, "
                f"rss {r['rss_kib'] / 1024:.1f} MiB, landed {lt:,}/{total:,} in {ls} series, load {r['load']}")
            if r["rc"] != 0 or lt != total:
                log(f"  stdout: {r['stdout'][-2000:]}\n  stderr: {r['stderr'][-2000:]}")
            if rnd == 1:
                res["reports"][name] = (r["stdout"] + ("\n[stderr, last lines]\n" + "\n".join(r["stderr"].strip().splitlines()[-12:]) if r["stderr"].strip() else "")).strip()
    res["env"]["load_after"] = loadavg()

    def med_of(name, key):
        return statistics.median(x[key] for x in res["results"][name] if x["rc"] == 0)
    med_wall = {n: med_of(n, "wall_s") for n in variants}

    # -- tenantgate --concurrency variation (one run each)
    if not quick and a.concurrency:
        res["concurrency"] = []
        for c in (1, 2, 4):
            dp, d = b.dest_prometheus(f"dest-conc-{c}")
            log(f"tenantgate --concurrency {c} ...")
            r = b.timed(f"tg-conc-{c}", b.tg_cmd(src, d + "/api/v1/write", None, ["--concurrency", str(c)]))
            stop(dp)
            shutil.rmtree(os.path.join(b.work, f"dest-conc-{c}"), ignore_errors=True)
            res["concurrency"].append({"concurrency": c, "wall_s": r["wall_s"], "samples_per_s": total / r["wall_s"],
                                       "cpu_s": r["cpu_s"], "rss_kib": r["rss_kib"]})

    # -- kill -9 and resume
    rng = random.Random(a.seed)
    for name, kind, mk, json_report in (
            ("tenantgate → Prometheus", "prom", lambda d: b.tg_cmd(src, d + "/api/v1/write", None, ["--report-format", "json"]), True),
            ("vmctl → VictoriaMetrics", "vm", lambda d: b.vm_cmd(src, d), False)):
        for attempt in range(3):
            dname = f"dest-kill-{'tg' if json_report else 'vm'}-{attempt}"
            dp, d = (b.dest_prometheus if kind == "prom" else b.dest_vm)(dname)
            cmd = mk(d)
            delay = rng.uniform(0.25, 0.65) * med_wall[name]
            log(f"kill test: {name}: kill -9 after {delay:.1f} s ...")
            klog = os.path.join(b.work, f"{dname}-first.log")
            with open(klog, "wb") as f:
                p = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=f, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
            PROCS.append(p)
            time.sleep(delay)  # the random kill point, not a readiness wait
            exited = p.poll()
            if exited is None:
                p.send_signal(signal.SIGKILL)
            p.wait()
            PROCS.remove(p)
            # A killed run's last request can still be being appended, and a query can see part of
            # it (Prometheus runs without isolation once an out-of-order window is set; seen as a
            # count that grew a moment later): count until two counts a second apart agree.
            landed = b.count(kind, d)[1]
            for _ in range(30):
                time.sleep(1)
                again = b.count(kind, d)[1]
                if again == landed:
                    break
                landed = again
            if exited is not None or landed == 0 or landed >= total:
                log(f"  no useful kill point (exited: {exited}, landed {landed:,}); again")
                stop(dp)
                shutil.rmtree(os.path.join(b.work, dname), ignore_errors=True)
                continue
            log(f"  killed with {landed:,} samples landed; running the same command again")
            r = b.timed(f"{name} resume", cmd)
            if kind == "vm":
                # Restarted before comparing: VictoriaMetrics answered the same selector with the
                # series list it had cached at the count above (during the killed run), missing
                # the series created since, until restarted (seen with v1.151.0).
                stale = b.count(kind, d)
                stop(dp)
                dp, d = b.dest_vm(dname)
                fresh = b.count(kind, d)
                vm_cache_note = (f" Counted with the same selectors right after the second run, VictoriaMetrics "
                                 f"answered {stale[0]:,} series / {stale[1]:,} samples; after a restart "
                                 f"{fresh[0]:,} / {fresh[1]:,}"
                                 + (" (it had cached the series list of the count made after the kill)"
                                    if stale != fresh else " (the same, this time)")
                                 + ". The comparison is made after the restart.")
            cmp_ = compare(src, d, kind, b.start_ms, b.end_ms, vm_flush=True)
            stop(dp)
            shutil.rmtree(os.path.join(b.work, dname), ignore_errors=True)
            if json_report:
                try:
                    rep = json.loads(r["stdout"])
                except ValueError:
                    die(f"tenantgate's JSON report did not parse: {r['stdout'][:2000]}")
                sent = rep["total"]["samples_written"]
                skipped = rep["total"]["samples_skipped"]
                note = (f"the second run said outcome `{rep['outcome']}`, resumed from `{rep.get('resumed_from')}`, "
                        f"read {rep['total']['samples_read']:,}, wrote {sent:,}, skipped {skipped:,} (already in the "
                        f"destination), rejected {rep['total']['samples_rejected']:,}; peak memory "
                        f"{(rep.get('peak_memory_bytes') or 0) / 2**20:.1f} MiB. Duplicates cannot be stored by a "
                        "Prometheus destination (an identical sample is a no-op), so the re-sent column is what "
                        "shows whether tenantgate sent anything twice.")
                if rep["total"]["series_written"] > rep["total"]["series_read"]:
                    res.setdefault("findings", []).append(
                        f"tenantgate's JSON report after the resume gives `total.series_read` "
                        f"{rep['total']['series_read']:,} (distinct series) but `total.series_written` "
                        f"{rep['total']['series_written']:,}: the written figure is summed over slabs, so a series "
                        "is counted once per slab, although the README says the totals count each series once.")
                summary = {k: rep[k] for k in ("outcome", "resumed_from", "start", "completed_through",
                                                "duration_ms", "samples_per_second", "peak_memory_bytes")}
                summary["total"] = rep["total"]
                res["reports"]["tenantgate after kill -9 (second run, --report-format json, slabs left out)"] = json.dumps(summary, indent=2)
            else:
                m = re.search(r"total samples: (\d+)", r["stdout"] + r["stderr"])
                sent = int(m.group(1)) if m else -1
                note = ("vmctl has no progress record: the second run copies the whole range again, so every "
                        "sample that had landed before the kill is written a second time; VictoriaMetrics "
                        f"without `-dedup.minScrapeInterval` keeps both ({'flags: ' + ' '.join(VM_FLAGS)}). With "
                        "`-dedup.minScrapeInterval=1ms` it would keep one per timestamp (at merge and query time)."
                        + vm_cache_note)
                out = (r["stdout"] + r["stderr"]).strip().splitlines()
                res["reports"]["vmctl (second run after kill -9, last lines)"] = "\n".join(out[-14:])
            res["kill"].append({"name": name, "delay_s": delay, "landed_at_kill": landed, "sent_2nd": sent,
                                "rc_2nd": r["rc"], "compare": cmp_, "note": note})
            log(f"  compare: {cmp_}")
            break
        else:
            die(f"kill test {name}: no kill point left samples partly copied in 3 attempts")

    # -- where tenantgate's time goes: perf, one run
    if not quick and a.perf and shutil.which("perf"):
        dp, d = b.dest_prometheus("dest-perf")
        pdata = os.path.join(b.work, "perf.data")
        log("perf record of one tenantgate run ...")
        r = b.timed("tg-perf", b.tg_cmd(src, d + "/api/v1/write"), extra_pids=[src_p.pid, dp.pid], perf=pdata)
        stop(dp)
        rep = subprocess.run(["perf", "report", "-i", pdata, "--stdio", "--no-children", "--sort", "dso,symbol",
                              "--percent-limit", "1.5", "-g", "none"], capture_output=True, text=True)
        lines = [re.sub(r"(\s+-)+\s*$", "", l).rstrip() for l in rep.stdout.splitlines()
                 if l.strip() and not l.startswith("#")]
        res["perf"] = ("One more tenantgate → Prometheus run under `perf record -F 999 -e cpu-clock -g` "
                       f"(wall {r['wall_s']:.1f} s, tenantgate CPU {r['cpu_s']:.1f} s, source Prometheus "
                       f"{r['extra_cpu'][0]:.1f} s, destination Prometheus {r['extra_cpu'][1]:.1f} s). "
                       "tenantgate's own samples, symbols above 1.5%:\n\n```\n" + "\n".join(lines[:30]) + "\n```")
    res["results_raw_dir"] = b.work
    json.dump(res, open(os.path.join(b.work, "results.json"), "w"), indent=1)
    log(f"results: {os.path.join(b.work, 'results.json')}")

    # -- targets
    tg, vm = "tenantgate → Prometheus", "vmctl → VictoriaMetrics"
    kill = {k["name"]: k["compare"] for k in res["kill"]}
    res["targets"] = {
        "tg_sps": total / med_wall[tg], "vm_sps": total / med_wall[vm],
        "ratio_sps": med_wall[vm] / med_wall[tg],
        "tg_rss": med_of(tg, "rss_kib"), "vm_rss": med_of(vm, "rss_kib"),
        "ratio_rss": med_of(tg, "rss_kib") / med_of(vm, "rss_kib"),
        "tg_gaps": kill[tg]["gaps"], "tg_dups": kill[tg]["duplicates"],
        "vm_gaps": kill[vm]["gaps"], "vm_dups": kill[vm]["duplicates"],
        "tg_vm_sps": total / med_wall["tenantgate → VictoriaMetrics"],
    }
    res["notes"] = NOTES + res.get("findings", [])
    json.dump(res, open(os.path.join(b.work, "results.json"), "w"), indent=1)
    out = a.out or os.path.join(b.work, "MIGRATE.md")
    cmd_render(argparse.Namespace(results=os.path.join(b.work, "results.json"), out=out))
    log(f"wrote {out}")
    print(open(out).read())


def go_duration(text):
    """Seconds in a Go time.Duration's String(): 1m2.5s, 620.5ms, 12µs."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}
    return sum(float(n) * units[u] for n, u in re.findall(r"([0-9.]+)(h|ms|m|s|µs|us|ns)", text))


def compare(src, dst, kind, start_ms, end_ms, vm_flush=False):
    if vm_flush and kind == "vm":
        urllib.request.urlopen(dst + "/internal/force_flush", timeout=60).read()
    import io
    import contextlib
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        cmd_compare(argparse.Namespace(src=src, dst=dst, dst_kind=kind, start=start_ms, end=end_ms, groups=GROUPS))
    return json.loads(buf.getvalue())


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("out")
    g.add_argument("--series", type=int, required=True)
    g.add_argument("--samples", type=int, required=True)
    g.add_argument("--start", type=int, required=True)
    g.add_argument("--step", type=int, required=True)
    g.add_argument("--groups", type=int, default=GROUPS)
    m = sub.add_parser("compare")
    m.add_argument("--src", required=True)
    m.add_argument("--dst", required=True)
    m.add_argument("--dst-kind", choices=["prom", "vm"], required=True)
    m.add_argument("--start", type=int, required=True)
    m.add_argument("--end", type=int, required=True)
    m.add_argument("--groups", type=int, default=GROUPS)
    r = sub.add_parser("render")
    r.add_argument("results")
    r.add_argument("out")
    x = sub.add_parser("run")
    x.add_argument("--quick", action="store_true")
    x.add_argument("--runs", type=int, default=3)
    x.add_argument("--seed", type=int, default=None)
    x.add_argument("--work", required=True)
    x.add_argument("--out")
    x.add_argument("--env", required=True)
    x.add_argument("--prom-migrator", required=True)
    x.add_argument("--no-perf", dest="perf", action="store_false")
    x.add_argument("--no-concurrency", dest="concurrency", action="store_false")
    for t in ("tenantgate", "prometheus", "promtool", "vmctl", "victoria-metrics"):
        x.add_argument(f"--{t}", required=True)
    a = p.parse_args()
    {"gen": cmd_gen, "compare": cmd_compare, "render": cmd_render, "run": cmd_run}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
