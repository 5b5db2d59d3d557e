#!/usr/bin/env python3
"""Remote write split benchmark: tenantgate's `tenant: {from: label}` route against the same
batch forwarded by a plain fixed-tenant route, on loopback, into an NGINX `return 204` sink.

Run it through `bash bench/split.sh` (full) or `bash bench/split.sh --quick` (5 s rounds).
Only the Python 3 standard library: the WriteRequest protobuf is encoded by hand and the
snappy block is literal-only (valid snappy, just not compressed).

Layout (2 CPUs): tenantgate (`--threads 1`) pinned to CPU 0; wrk and the NGINX sink share CPU 1.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request

# Ports and readiness, as the side-by-side benchmark does them.
from proxybench.procs import Proc, descendants, free_port, wait_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENANTS = [f"t{i}" for i in range(10)]
SERIES = 2000
CLK_TCK = os.sysconf("SC_CLK_TCK")
TG_CPU, LOAD_CPU = "0", "1"

# --------------------------------------------------------------------------------------------
# The batch: prometheus.WriteRequest, hand-encoded, in a literal-only snappy block


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field, data):
    """A length-delimited field (wire type 2)."""
    return varint((field << 3) | 2) + varint(len(data)) + data


def label(name, value):
    return ld(1, name.encode()) + ld(2, value.encode())


def sample(value, ts_ms):
    # Sample { double value = 1; int64 timestamp = 2; }
    return b"\x09" + struct.pack("<d", value) + b"\x10" + varint(ts_ms)


def timeseries(labels, samples):
    # TimeSeries { repeated Label labels = 1; repeated Sample samples = 2; }
    body = b"".join(ld(1, label(k, v)) for k, v in sorted(labels.items()))
    body += b"".join(ld(2, sample(v, t)) for v, t in samples)
    return body


def write_request(series):
    # WriteRequest { repeated TimeSeries timeseries = 1; }
    return b"".join(ld(1, s) for s in series)


def snappy_literal(data):
    """A valid snappy block made only of literal elements, chunks of at most 65536 bytes."""
    out = bytearray(varint(len(data)))
    for i in range(0, len(data), 65536):
        chunk = data[i : i + 65536]
        n = len(chunk) - 1
        if n < 60:
            out.append(n << 2)
        elif n < 256:
            out += bytes([60 << 2, n])
        else:
            out += bytes([61 << 2]) + struct.pack("<H", n)
        out += chunk
    return bytes(out)


def unsnappy(buf):
    """Full snappy block decoder (literals and copies), to check our bodies."""
    n, shift, i = 0, 0, 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            break
    out = bytearray()
    while i < len(buf):
        tag = buf[i]
        i += 1
        kind = tag & 3
        if kind == 0:
            ln = tag >> 2
            if ln >= 60:
                extra = ln - 59
                ln = int.from_bytes(buf[i : i + extra], "little")
                i += extra
            ln += 1
            out += buf[i : i + ln]
            i += ln
            continue
        if kind == 1:
            ln = ((tag >> 2) & 7) + 4
            off = ((tag >> 5) << 8) | buf[i]
            i += 1
        elif kind == 2:
            ln = (tag >> 2) + 1
            off = int.from_bytes(buf[i : i + 2], "little")
            i += 2
        else:
            ln = (tag >> 2) + 1
            off = int.from_bytes(buf[i : i + 4], "little")
            i += 4
        for _ in range(ln):
            out.append(out[-off])
    if len(out) != n:
        raise ValueError(f"snappy: header says {n} bytes, got {len(out)}")
    return bytes(out)


METRICS = [
    "node_cpu_seconds_total", "node_memory_MemAvailable_bytes", "node_network_receive_bytes_total",
    "node_filesystem_avail_bytes", "node_load1", "http_requests_total",
    "http_request_duration_seconds_bucket", "http_request_duration_seconds_count",
    "process_resident_memory_bytes", "process_cpu_seconds_total", "go_goroutines",
    "go_memstats_heap_inuse_bytes", "container_cpu_usage_seconds_total",
    "container_memory_working_set_bytes", "kube_pod_container_status_restarts_total",
    "up", "scrape_duration_seconds", "grpc_server_handled_total", "rpc_durations_seconds",
    "prometheus_tsdb_head_series",
]
JOBS = ["node-exporter", "api-server", "kube-state-metrics", "cadvisor", "payments", "checkout"]


def make_batch(samples_per_series, seed=1):
    """SERIES series, team=t0..t9 spread evenly (interleaved, as a Prometheus shard mixes them)."""
    rnd = random.Random(seed)
    t0 = 1764590400000  # 2025-12-01T12:00:00Z, in ms
    chars = "bcdfghjklmnpqrstvwxz2456789"
    series = []
    for i in range(SERIES):
        team = TENANTS[i % len(TENANTS)]
        job = JOBS[(i // 10) % len(JOBS)]
        host = i // 20
        pod = f"{job}-{rnd.randrange(16**9):09x}-{''.join(rnd.choice(chars) for _ in range(5))}"
        labels = {
            "__name__": METRICS[(i // 7) % len(METRICS)],
            "cluster": "prod-eu-west-1",
            "instance": f"10.{(host >> 8) & 255}.{host & 255}.{10 + i % 10}:9100",
            "job": job,
            "pod": pod,
            "team": team,
        }
        base = rnd.uniform(0, 1e6)
        samples = [(base + k * rnd.uniform(0, 100), t0 + k * 15000) for k in range(samples_per_series)]
        series.append(timeseries(labels, samples))
    raw = write_request(series)
    body = snappy_literal(raw)
    assert unsnappy(body) == raw
    return raw, body


# --------------------------------------------------------------------------------------------
# Processes


def cpu_ticks(pid):
    """utime + stime of one process, in clock ticks."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_times():
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+) (.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                idle = v[3] + v[4]
                out[m.group(1)] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


NGINX_CONF = """
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  client_max_body_size 256m;
  client_body_buffer_size 16m;
  keepalive_requests 100000000;
  keepalive_timeout 600s;
  # Only requests carrying the calibration header (the few sent by this script before the
  # load, copied by tenantgate onto every part) are logged; wrk's requests are not.
  map $http_x_bench_calibration $calibration {{ default 0; "1" 1; }}
  log_format calibration '$http_x_scope_orgid $status $content_length $http_content_encoding';
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    access_log {d}/calibration.log calibration if=$calibration;
    location = /nginx_status {{ stub_status; }}
    location / {{ return 204; }}
  }}
}}
"""

SPLIT_CONF = """
server:
  listen: 127.0.0.1:{port}
upstreams:
  sink:
    url: http://127.0.0.1:{up}
routes:
  - name: push
    match: {{ path: /api/v1/push }}
    upstream: sink
    tenant: {{ from: label, labels: [team], allow: [{allow}] }}
"""

FIXED_CONF = """
server:
  listen: 127.0.0.1:{port}
upstreams:
  sink:
    url: http://127.0.0.1:{up}
routes:
  - name: push
    match: {{ path: /api/v1/push }}
    upstream: sink
    tenant: bench
"""

WRK_LUA = """
wrk.method = "POST"
local f = assert(io.open("{file}", "rb"))
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/x-protobuf"
wrk.headers["Content-Encoding"] = "snappy"
wrk.headers["X-Prometheus-Remote-Write-Version"] = "0.1.0"
wrk.headers["User-Agent"] = "Prometheus/2.53.0"
"""


def nginx_requests(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/nginx_status", timeout=5) as r:
        text = r.read().decode()
    return int(text.splitlines()[2].split()[2])


def post(port, body, calibration=True):
    import http.client

    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {
        "Content-Type": "application/x-protobuf",
        "Content-Encoding": "snappy",
        "X-Prometheus-Remote-Write-Version": "0.1.0",
    }
    if calibration:
        headers["X-Bench-Calibration"] = "1"
    c.request("POST", "/api/v1/push", body=body, headers=headers)
    r = c.getresponse()
    text = r.read()
    c.close()
    return r.status, text


# --------------------------------------------------------------------------------------------
# Load


def wrk(port, script, seconds, conns):
    argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", script,
            f"http://127.0.0.1:{port}/api/v1/push"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", out)
    n = int(m.group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def lat(p):
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        v, u = float(m.group(1)), m.group(2)
        return v / 1000 if u == "us" else v * 1000 if u == "s" else v

    return {
        "requests": n, "rps": rps, "wrk_cpu_s": wrk_cpu,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": sum(int(x) for x in sock.groups()) if sock else 0,
        "p50_ms": lat(50), "p99_ms": lat(99), "raw": out,
    }


def round_(name, tg, nginx, case, args, others):
    nginx_pids = descendants(nginx.p.pid)
    ours = [p.p.pid for p in others] + [os.getpid()]
    req0 = nginx_requests(nginx.port)
    c0 = cpu_ticks(tg.p.pid)
    n0 = sum(cpu_ticks(p) for p in nginx_pids)
    o0 = sum(cpu_ticks(p) for p in ours)
    s0 = cpu_times()
    t0 = time.monotonic()
    w = wrk(tg.port, case["lua"], args.seconds, args.conns)
    wall = time.monotonic() - t0
    c1 = cpu_ticks(tg.p.pid)
    n1 = sum(cpu_ticks(p) for p in nginx_pids)
    o1 = sum(cpu_ticks(p) for p in ours)
    s1 = cpu_times()
    time.sleep(0.3)  # parts still in flight when wrk stopped reach the sink
    req1 = nginx_requests(nginx.port)
    tg_cpu = (c1 - c0) / CLK_TCK
    samples = case["samples"]
    util = tg_cpu / wall
    busy = {k: (s1[k][0] - s0[k][0]) / max(1, s1[k][1] - s0[k][1]) for k in s1}
    busy_s = sum(s1[k][0] - s0[k][0] for k in s1) / CLK_TCK
    nginx_cpu = (n1 - n0) / CLK_TCK
    # CPU time of processes that are not part of this benchmark (the machine is shared).
    foreign = busy_s - tg_cpu - nginx_cpu - w["wrk_cpu_s"] - (o1 - o0) / CLK_TCK
    r = {
        "config": name, "case": case["name"], "wall_s": wall, **{k: v for k, v in w.items() if k != "raw"},
        "samples_per_s": w["rps"] * samples,
        "tg_cpu_s": tg_cpu,
        "tg_util": util,
        "cpu_us_per_req": tg_cpu * 1e6 / max(1, w["requests"]),
        "cpu_s_per_msamples": tg_cpu / max(1, w["requests"] * samples) * 1e6,
        "samples_per_core_s": w["rps"] * samples / util if util > 0 else float("nan"),
        "sink_requests_per_batch": (req1 - req0 - 1) / max(1, w["requests"]),
        "nginx_cpu_s": nginx_cpu, "nginx_util": nginx_cpu / wall, "wrk_util": w["wrk_cpu_s"] / wall,
        "foreign_cores": max(0.0, foreign / wall),
        "cpu0_busy": busy.get("0", 0), "cpu1_busy": busy.get("1", 0),
        "rss_kib": status_kib(tg.p.pid, "VmRSS"), "hwm_kib": status_kib(tg.p.pid, "VmHWM"),
    }
    print(f"  {name:8} {case['name']:22} {r['rps']:8.1f} req/s {r['samples_per_s'] / 1e6:6.2f} M samples/s "
          f"tg {util * 100:5.1f}% CPU {r['cpu_us_per_req']:7.0f} us/req  cpu0 {r['cpu0_busy'] * 100:3.0f}% "
          f"cpu1 {r['cpu1_busy'] * 100:3.0f}% (nginx {r['nginx_util'] * 100:.0f}% wrk {r['wrk_util'] * 100:.0f}%) "
          f"foreign {r['foreign_cores']:.2f} cores  sink {r['sink_requests_per_batch']:.2f}/batch  "
          f"non2xx {r['non2xx']} sockerr {r['socket_errors']}  RSS {r['rss_kib'] / 1024:.1f} MiB "
          f"HWM {r['hwm_kib'] / 1024:.1f} MiB", flush=True)
    return r


def calibrate(tg, nginx, case, expect_tenants, logfile):
    before = os.path.getsize(logfile) if os.path.exists(logfile) else 0
    req0 = nginx_requests(nginx.port)
    status, text = post(tg.port, case["body"])
    time.sleep(0.3)
    req1 = nginx_requests(nginx.port)
    with open(logfile) as f:
        f.seek(before)
        lines = [l.split() for l in f.read().splitlines() if l.strip()]
    tenants = sorted(l[0] for l in lines)
    ok = status == 204 and tenants == sorted(expect_tenants) and all(l[1] == "204" for l in lines) \
        and all(l[3] == "snappy" for l in lines) and req1 - req0 - 1 == len(expect_tenants)
    info = {
        "status": status, "answer": text[:200].decode(errors="replace"),
        "sink_requests": req1 - req0 - 1, "tenants": tenants,
        "part_bytes": [int(l[2]) for l in lines], "ok": ok,
    }
    print(f"  calibration {tg.name} {case['name']}: answer {status}, sink saw {info['sink_requests']} requests, "
          f"tenants {' '.join(tenants)}, part sizes {min(info['part_bytes'])}-{max(info['part_bytes'])} bytes "
          f"-> {'ok' if ok else 'FAILED'}", flush=True)
    if not ok:
        raise SystemExit(f"calibration failed: {info}")
    return info


# --------------------------------------------------------------------------------------------
# Report


def med(rows, key):
    return statistics.median(r[key] for r in rows)


def spread(rows, key, fmt):
    vals = [r[key] for r in rows]
    if len(vals) == 1:
        return fmt(vals[0])
    return f"{fmt(statistics.median(vals))} ({fmt(min(vals))}–{fmt(max(vals))})"


def table(results, cases):
    n = lambda v: f"{v:,.0f}"
    out = []
    for case in cases:
        split = [r for r in results if r["case"] == case["name"] and r["config"] == "split"]
        fixed = [r for r in results if r["case"] == case["name"] and r["config"] == "fixed"]
        out.append(f"**{case['name']}**: {SERIES} series x {case['spp']} sample(s) = {case['samples']:,} samples "
                   f"per batch, {len(case['raw']):,} bytes of protobuf, {len(case['body']):,} bytes on the wire; "
                   f"split into {len(TENANTS)} parts of {min(case['parts'])}–{max(case['parts'])} bytes (snappy "
                   f"as tenantgate compresses them).\n")
        out.append("| | split by `team` (10 tenants) | fixed tenant (baseline, no split) |")
        out.append("|---|---|---|")
        rows = [
            ("requests/s (batches)", "rps", lambda v: f"{v:,.1f}"),
            ("samples/s", "samples_per_s", n),
            ("tenantgate CPU utilisation (1 thread)", "tg_util", lambda v: f"{v * 100:.1f}%"),
            ("tenantgate CPU µs per request", "cpu_us_per_req", n),
            ("tenantgate CPU-seconds per million samples", "cpu_s_per_msamples", lambda v: f"{v:.3f}"),
            ("samples/s per core (samples/s ÷ utilisation)", "samples_per_core_s", n),
            ("latency p50 (wrk, ms)", "p50_ms", lambda v: f"{v:.2f}"),
            ("latency p99 (wrk, ms)", "p99_ms", lambda v: f"{v:.2f}"),
            ("CPU 0 busy (tenantgate's CPU, whole machine view)", "cpu0_busy", lambda v: f"{v * 100:.0f}%"),
            ("CPU 1 busy (wrk + NGINX sink)", "cpu1_busy", lambda v: f"{v * 100:.0f}%"),
            ("NGINX sink CPU utilisation (CPU 1)", "nginx_util", lambda v: f"{v * 100:.0f}%"),
            ("wrk CPU utilisation (CPU 1)", "wrk_util", lambda v: f"{v * 100:.0f}%"),
            ("CPU used by processes outside the benchmark (cores, of 2)", "foreign_cores", lambda v: f"{v:.2f}"),
            ("NGINX sink requests per batch", "sink_requests_per_batch", lambda v: f"{v:.3f}"),
            ("non-2xx answers / socket errors (sum over rounds)", None, None),
            ("tenantgate VmRSS after the round", "rss_kib", lambda v: f"{v / 1024:.1f} MiB"),
        ]
        for label_, key, fmt in rows:
            if key is None:
                cells = [f"{sum(r['non2xx'] for r in rs)} / {sum(r['socket_errors'] for r in rs)}" for rs in (split, fixed)]
            else:
                cells = [spread(rs, key, fmt) for rs in (split, fixed)]
            out.append(f"| {label_} | {cells[0]} | {cells[1]} |")
        out.append(f"| split's own cost, CPU µs per request (split − baseline medians) | "
                   f"{med(split, 'cpu_us_per_req') - med(fixed, 'cpu_us_per_req'):,.0f} | |")
        out.append("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="5 s rounds")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target/release/tenantgate"))
    ap.add_argument("--seconds", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--json", default=None, help="also write every round's numbers here")
    args = ap.parse_args()
    if args.seconds is None:
        args.seconds = 5 if args.quick else 20
    warm = 2 if args.quick else 5

    def bail(signum, frame):
        raise SystemExit(f"stopped by signal {signum}")

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, bail)

    nginx_bin = shutil.which("nginx") or "/usr/sbin/nginx"

    def first(argv):
        r = subprocess.run(argv, capture_output=True, text=True)
        return (r.stdout or r.stderr).strip().splitlines()[0]

    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    print(f"date {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; {os.cpu_count()} CPUs ({model}); "
          f"{platform.system()} {platform.release()}")
    print(f"versions: {first([args.binary, '--version'])}; {first([nginx_bin, '-v'])}; {first(['wrk', '-v'])}; "
          f"Python {platform.python_version()}")
    print(f"load average at start: {open('/proc/loadavg').read().strip()}", flush=True)
    workdir = tempfile.mkdtemp(prefix="tenantgate-split-")
    os.chmod(workdir, 0o755)  # NGINX workers run unprivileged when the master is root
    procs = []
    results = []
    try:
        cases = []
        for spp in (1, 10):
            raw, body = make_batch(spp)
            name = f"{spp} sample/series" if spp == 1 else f"{spp} samples/series"
            path = os.path.join(workdir, f"batch-{spp}.bin")
            with open(path, "wb") as f:
                f.write(body)
            lua = os.path.join(workdir, f"post-{spp}.lua")
            with open(lua, "w") as f:
                f.write(WRK_LUA.format(file=path))
            cases.append({"name": name, "spp": spp, "samples": SERIES * spp, "raw": raw, "body": body, "lua": lua})
            print(f"batch {name}: {SERIES} series, {SERIES * spp} samples, protobuf {len(raw)} bytes, "
                  f"snappy (literal-only) {len(body)} bytes", flush=True)

        ngx_dir = os.path.join(workdir, "nginx")
        os.makedirs(ngx_dir)
        ngx_port = free_port()
        with open(os.path.join(ngx_dir, "nginx.conf"), "w") as f:
            f.write(NGINX_CONF.format(d=ngx_dir, port=ngx_port))
        nginx = Proc("nginx", ["taskset", "-c", LOAD_CPU, nginx_bin, "-p", ngx_dir, "-c",
                               os.path.join(ngx_dir, "nginx.conf"), "-e", os.path.join(ngx_dir, "error.log"),
                               "-g", "daemon off;"], ngx_port, workdir)
        procs.append(nginx)

        tgs = {}
        for name, tmpl in (("split", SPLIT_CONF), ("fixed", FIXED_CONF)):
            port = free_port()
            cfg = os.path.join(workdir, f"tenantgate-{name}.yaml")
            with open(cfg, "w") as f:
                f.write(tmpl.format(port=port, up=ngx_port, allow=", ".join(TENANTS)))
            chk = subprocess.run([args.binary, "check", "--config", cfg], capture_output=True, text=True)
            if chk.returncode != 0:
                raise SystemExit(f"tenantgate check {cfg} failed:\n{chk.stdout}{chk.stderr}")
            tg = Proc(f"tenantgate-{name}", ["taskset", "-c", TG_CPU, args.binary, "--config", cfg,
                                             "--threads", "1", "--log.access", "false"], port, workdir)
            procs.append(tg)
            tgs[name] = tg
        idle = {k: status_kib(t.p.pid, "VmRSS") for k, t in tgs.items()}
        print(f"tenantgate idle VmRSS: split {idle['split'] / 1024:.1f} MiB, fixed {idle['fixed'] / 1024:.1f} MiB")

        calib_log = os.path.join(ngx_dir, "calibration.log")
        calibration = {}
        for case in cases:
            info = calibrate(tgs["split"], nginx, case, TENANTS, calib_log)
            case["parts"] = info["part_bytes"]
            calibrate(tgs["fixed"], nginx, case, ["bench"], calib_log)
            calibration[case["name"]] = info

        # Warm-up (not counted), then rounds interleaving split and baseline (ABBA order).
        print(f"warm-up {warm}s per config and case", flush=True)
        warmups = []
        for case in cases:
            for name in ("split", "fixed"):
                w = wrk(tgs[name].port, case["lua"], warm, args.conns)
                warmups.append((name, case["name"], w["requests"], w["non2xx"], w["socket_errors"]))
        print(f"rounds: {args.rounds} x {args.seconds}s, wrk -t1 -c{args.conns}", flush=True)
        for rnd in range(args.rounds):
            print(f" round {rnd + 1}", flush=True)
            order = ("split", "fixed") if rnd % 2 == 0 else ("fixed", "split")
            for case in cases:
                for name in order:
                    other = [t for k, t in tgs.items() if k != name]
                    r = round_(name, tgs[name], nginx, case, args, other)
                    r["round"] = rnd + 1
                    results.append(r)

        hwm = {k: status_kib(t.p.pid, "VmHWM") for k, t in tgs.items()}
        rss_end = {k: status_kib(t.p.pid, "VmRSS") for k, t in tgs.items()}
        # Idle after the load: memory returned or kept?
        time.sleep(2)
        rss_idle_after = {k: status_kib(t.p.pid, "VmRSS") for k, t in tgs.items()}
        alive = {k: t.p.poll() is None for k, t in tgs.items()}
        logs = {}
        for t in tgs.values():
            with open(t.log_path) as f:
                logs[t.name] = [l.rstrip() for l in f if re.search(r"level=(warn|error)", l)]
        with open(os.path.join(ngx_dir, "error.log")) as f:
            logs["nginx"] = [l.rstrip() for l in f if l.strip()]
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(table(results, cases))
    print(f"| tenantgate peak RSS (VmHWM over the whole run) | split {hwm['split'] / 1024:.1f} MiB | "
          f"fixed {hwm['fixed'] / 1024:.1f} MiB |")
    print(f"| tenantgate VmRSS idle before / at the end / 2 s after | split {idle['split'] / 1024:.1f} / "
          f"{rss_end['split'] / 1024:.1f} / {rss_idle_after['split'] / 1024:.1f} MiB | fixed "
          f"{idle['fixed'] / 1024:.1f} / {rss_end['fixed'] / 1024:.1f} / {rss_idle_after['fixed'] / 1024:.1f} MiB |")
    print()
    print("warm-ups (config, case, requests, non-2xx, socket errors):", warmups)
    print("processes alive at the end:", alive)
    print(f"load average at the end: {open('/proc/loadavg').read().strip()}")
    for k, v in logs.items():
        print(f"{k} warn/error log lines: {len(v)}")
        for line in v[:10]:
            print("   ", line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": results, "hwm_kib": hwm, "idle_kib": idle, "rss_end_kib": rss_end,
                       "rss_idle_after_kib": rss_idle_after, "calibration": calibration, "warmups": warmups,
                       "logs": logs, "args": vars(args)}, f, indent=1)


if __name__ == "__main__":
    main()
