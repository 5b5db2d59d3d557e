#!/usr/bin/env python3
"""Side-by-side benchmark: the seed's two NGINX layers, one NGINX layer, tenantgate, and the
upstream directly, on loopback, against the same NGINX upstream.

    bash bench/run.sh            # full run, writes bench/RESULTS.md
    bash bench/run.sh --smoke    # a few seconds per case, writes nothing (CI)

Everything measured here is measured the same way for every setup: proxies get one worker
(NGINX worker_processes 1, tenantgate --threads 1) pinned to CPU 0; the load
generators and the upstream run on the other CPUs. Access logs are off everywhere.
"""

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TENANT = "team-a"
GIB = 1 << 30


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, name, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited early with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port}")


def cpus():
    return os.cpu_count() or 1


def pin(cpu_list):
    """taskset prefix, or nothing on a single-CPU machine."""
    if cpus() < 2 or not shutil.which("taskset"):
        return []
    return ["taskset", "-c", cpu_list]


PROXY_CPU = "0"


def loadgen_cpus():
    return "1" if cpus() == 2 else f"1-{cpus() - 1}"


def descendants(pid):
    """pid and all its children (NGINX master + workers)."""
    out = [pid]
    try:
        children = open(f"/proc/{pid}/task/{pid}/children").read().split()
    except OSError:
        return out
    for c in children:
        out.extend(descendants(int(c)))
    return out


def rss_kib(pids):
    total = 0
    for p in pids:
        try:
            for line in open(f"/proc/{p}/status"):
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def cpu_seconds(pids):
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in pids:
        try:
            fields = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            pass
    return total / tick


class Sampler:
    """Samples the summed RSS of process trees every 20 ms; keeps the peak."""

    def __init__(self, roots):
        self.roots, self.peak, self._stop = roots, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_kib([p for r in self.roots for p in descendants(r)]))
            time.sleep(0.02)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self._t.join()


# --------------------------------------------------------------------------------------------
# Configs

NGINX_COMMON = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  client_max_body_size 0;
  keepalive_requests 1000000;
  {body}
}}
"""

UPSTREAM = """
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /prometheus/big {{ alias {dir}/big.bin; }}
    location / {{
      if ($http_x_scope_orgid = "") {{ return 401 "no org id\\n"; }}
      default_type application/json;
      return 200 '{{"status":"success","data":["__name__","job","instance"]}}';
    }}
  }}
"""

STATUS_CONFIG = '{\\"status\\":\\"success\\",\\"data\\":{\\"yaml\\":\\"global:\\\\n  external_labels:\\\\n    source: mimir\\\\n\\"}}'
BUILDINFO = '{\\"status\\":\\"success\\",\\"data\\":{\\"version\\":\\"2.53.0\\",\\"revision\\":\\"\\",\\"branch\\":\\"\\",\\"buildUser\\":\\"\\",\\"buildDate\\":\\"\\",\\"goVersion\\":\\"\\"}}'

PROXY_TO = """
    location {loc} {{
      proxy_pass http://{pool};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      {tenant}
      proxy_request_buffering off;
      proxy_buffering off;
    }}
"""

FAKES = f"""
    location = /prometheus/api/v1/status/config {{
      default_type application/json;
      return 200 "{STATUS_CONFIG}";
    }}
    location = /prometheus/api/v1/status/buildinfo {{
      default_type application/json;
      return 200 "{BUILDINFO}";
    }}
"""


def pool(name, port):
    return f"  upstream {name} {{ server 127.0.0.1:{port}; keepalive 64; }}\n"


def seed_layer1(port, l2):
    """Layer 1 of the seed recipe: sets the tenant, forwards everything to layer 2."""
    tenant = f'proxy_set_header X-Scope-OrgID "{TENANT}";'
    return pool("layer2", l2) + f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n" + PROXY_TO.format(loc="/", pool="layer2", tenant=tenant) + "  }\n"


def seed_layer2(port, up):
    """Layer 2 of the seed recipe: fakes status/config and buildinfo, forwards the rest."""
    return pool("mimir", up) + f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n" + FAKES + PROXY_TO.format(loc="/", pool="mimir", tenant="") + "  }\n"


def one_layer(port, up):
    """One NGINX doing both jobs: the best NGINX can do here."""
    tenant = f'proxy_set_header X-Scope-OrgID "{TENANT}";'
    return pool("mimir", up) + f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n" + FAKES + PROXY_TO.format(loc="/", pool="mimir", tenant=tenant) + "  }\n"


TENANTGATE = """
server:
  listen: 127.0.0.1:{port}
  max_connections: 20000
upstreams:
  mimir:
    url: http://127.0.0.1:{up}
routes:
  - name: sidecar
    match: {{ path_prefix: /prometheus }}
    upstream: mimir
    tenant: {tenant}
    max_request_body: 2GiB
    prometheus:
      external_labels: {{ source: mimir }}
"""


class Proc:
    def __init__(self, name, argv, port, logdir, env=None):
        self.name, self.port = name, port
        log = open(os.path.join(logdir, f"{name}.log"), "w")
        self.p = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        wait_port(port, self.p, name)

    def pids(self):
        return descendants(self.p.pid)

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGTERM)
                self.p.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.p.pid, signal.SIGKILL)


def nginx(name, body, workdir):
    d = os.path.join(workdir, name)
    os.makedirs(d, exist_ok=True)
    port = int(re.search(r"listen 127\.0\.0\.1:(\d+)", body).group(1))
    conf = os.path.join(d, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_COMMON.format(dir=d, body=body))
    return conf, port, d


def start_nginx(name, body, workdir, cpu):
    conf, port, d = nginx(name, body, workdir)
    argv = pin(cpu) + [NGINX, "-p", d, "-c", conf, "-e", os.path.join(d, "error.log"), "-g", "daemon off;"]
    return Proc(name, argv, port, workdir)


# --------------------------------------------------------------------------------------------
# Load

def header_args(flag, headers):
    return [a for h in headers for a in (flag, h)]


def wrk(url, seconds, headers, conns=32):
    out = subprocess.run(
        pin(loadgen_cpus()) + ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s"] + header_args("-H", headers) + [url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx responses\n{out}")
    return rps, total


def oha_latency(url, seconds, rate, headers):
    """Open-loop latency at a fixed rate (oha -q with latency correction)."""
    if not shutil.which("oha"):
        return None
    out = subprocess.run(
        pin(loadgen_cpus()) + ["oha", "-z", f"{seconds}s", "-q", str(rate), "-c", "32", "--latency-correction",
                               "--no-tui", "--output-format", "json"] + header_args("-H", headers) + [url],
        capture_output=True, text=True, check=True,
    ).stdout
    j = json.loads(out)
    p = j["latencyPercentiles"]
    codes = j.get("statusCodeDistribution", {})
    bad = {k: v for k, v in codes.items() if not str(k).startswith("2")}
    if bad:
        raise RuntimeError(f"{url}: non-2xx answers {bad}")
    return {"p50": p["p50"] * 1000, "p99": p["p99"] * 1000, "p99.9": p["p99.9"] * 1000}


def hold_connections(url_port, n, seconds):
    """Opens n keep-alive connections that each send one request and stay idle."""
    socks = []
    req = f"GET /prometheus/api/v1/labels HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", url_port))
        s.sendall(req)
        socks.append(s)
    for s in socks:
        s.settimeout(5)
        s.recv(4096)
    time.sleep(seconds)
    return socks


def curl_speed(args, url, headers):
    out = subprocess.run(pin(loadgen_cpus()) + ["curl", "-s", "-S", "-o", "/dev/null", "-w", "%{http_code} %{speed_download} %{speed_upload}"] + header_args("-H", headers) + args + [url],
                         capture_output=True, text=True, check=True).stdout.split()
    code, down, up = int(out[0]), float(out[1]), float(out[2])
    if code != 200:
        raise RuntimeError(f"{url}: HTTP {code}")
    return down, up


# --------------------------------------------------------------------------------------------

def measure(name, front, proxy_procs, args, workdir, headers=()):
    """Every measurement for one setup. `front` is the port clients talk to; `headers` are sent
    on every request (only the direct run needs one: the tenant no proxy adds)."""
    headers = list(headers)
    r = {"name": name}
    base = f"http://127.0.0.1:{front}"
    roots = [p.p.pid for p in proxy_procs]
    pids = lambda: [p for root in roots for p in descendants(root)]
    time.sleep(0.5)
    r["rss_idle"] = rss_kib(pids()) if proxy_procs else None

    wrk(base + "/prometheus/api/v1/labels", 1, headers)  # warm pools and caches
    # Throughput: the median of several runs, since a shared VM varies by 10-15% run to run.
    fwd, cpu, total = [], 0.0, 0
    for _ in range(args.runs):
        before = cpu_seconds(pids())
        rps, n = wrk(base + "/prometheus/api/v1/labels", args.seconds, headers)
        cpu += cpu_seconds(pids()) - before
        total += n
        fwd.append(rps)
    r["fwd_rps"] = sorted(fwd)[len(fwd) // 2]
    r["fwd_all"] = fwd
    r["cpu_per_100k"] = cpu / total * 100_000 if proxy_procs else None
    emu = [wrk(base + "/prometheus/api/v1/status/config", args.seconds, headers)[0] for _ in range(args.runs)]
    r["emu_rps"] = sorted(emu)[len(emu) // 2]
    r["latency"] = oha_latency(base + "/prometheus/api/v1/labels", args.seconds, args.rate, headers)

    # Streaming before the connection test: RSS after 1,000 connections would hide what
    # streaming alone costs.
    with Sampler(roots) as s:
        down, _ = curl_speed([], base + "/prometheus/big", headers)
        _, up = curl_speed(["-T", os.path.join(workdir, "big.bin"), "-X", "POST", "-H", "Content-Type: application/x-protobuf"],
                           base + "/prometheus/api/v1/push-sink", headers)
    r["stream_down_mbs"] = down / 1e6
    r["stream_up_mbs"] = up / 1e6
    r["stream_peak_rss"] = s.peak if proxy_procs else None

    if proxy_procs:
        with Sampler(roots) as s:
            socks = hold_connections(front, args.conns, 1.0)
        r["rss_1k"] = s.peak
        for sk in socks:
            sk.close()
    else:
        r["rss_1k"] = None

    return r


def fmt_ratio(v, ref, higher_better=True):
    if v is None or ref in (None, 0):
        return ""
    x = v / ref
    return f" ({x:.2f}x)"


def table(results, args, meta):
    by = {r["name"]: r for r in results}
    ref = by.get("one NGINX layer")
    lines = []
    lines.append("| | " + " | ".join(r["name"] for r in results) + " |")
    lines.append("|---|" + "---|" * len(results))

    def row(label, key, unit, fmtv, sub=None, higher=True):
        cells = []
        for r in results:
            v = r[key] if sub is None else (r[key] or {}).get(sub) if r[key] else None
            rv = None
            if ref:
                rv = ref[key] if sub is None else (ref[key] or {}).get(sub) if ref[key] else None
            if v is None:
                cells.append("n/a")
            else:
                cells.append(fmtv(v) + unit + (fmt_ratio(v, rv) if r is not ref else ""))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    row("forwarded GET, requests/s", "fwd_rps", "", lambda v: f"{v:,.0f}")
    row("emulated status/config, requests/s", "emu_rps", "", lambda v: f"{v:,.0f}")
    for p in ["p50", "p99", "p99.9"]:
        row(f"latency {p} at {args.rate}/s", "latency", " ms", lambda v: f"{v:.3f}", sub=p)
    row("proxy CPU seconds per 100k forwarded", "cpu_per_100k", " s", lambda v: f"{v:.2f}")
    row("proxy RSS idle", "rss_idle", " MiB", lambda v: f"{v / 1024:.1f}")
    row(f"proxy RSS with {args.conns} keep-alive connections", "rss_1k", " MiB", lambda v: f"{v / 1024:.1f}")
    row(f"{args.stream_bytes >> 20} MiB response, MB/s", "stream_down_mbs", "", lambda v: f"{v:,.0f}")
    row(f"{args.stream_bytes >> 20} MiB request body, MB/s", "stream_up_mbs", "", lambda v: f"{v:,.0f}")
    row("proxy peak RSS while streaming", "stream_peak_rss", " MiB", lambda v: f"{v / 1024:.1f}")
    return "\n".join(lines)


def targets(results):
    by = {r["name"]: r for r in results}
    tg, one, seed, direct = by.get("tenantgate"), by.get("one NGINX layer"), by.get("seed: two NGINX layers"), by.get("direct")
    out = []

    def check(ok, text):
        out.append(f"- {'met' if ok else 'NOT met'}: {text}")

    check(tg["fwd_rps"] >= 2 * seed["fwd_rps"], f"forwarded requests/s >= 2x the seed's two layers ({tg['fwd_rps'] / seed['fwd_rps']:.2f}x)")
    check(tg["fwd_rps"] >= one["fwd_rps"], f"forwarded requests/s >= 1.0x one NGINX layer ({tg['fwd_rps'] / one['fwd_rps']:.2f}x)")
    check(tg["emu_rps"] >= one["emu_rps"], f"emulated requests/s >= 1.0x NGINX `return 200` ({tg['emu_rps'] / one['emu_rps']:.2f}x)")
    if tg["latency"] and one["latency"] and direct["latency"]:
        a, b = tg["latency"]["p99"] - direct["latency"]["p99"], one["latency"]["p99"] - direct["latency"]["p99"]
        check(a <= b, f"added p99 over direct no worse than one NGINX layer ({a:.3f} ms vs {b:.3f} ms)")
    check(tg["rss_idle"] < 20 * 1024, f"RSS idle under 20 MiB ({tg['rss_idle'] / 1024:.1f} MiB)")
    check(tg["stream_peak_rss"] < 64 * 1024, f"streaming keeps peak RSS under 64 MiB ({tg['stream_peak_rss'] / 1024:.1f} MiB)")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="a few seconds per case; write nothing")
    ap.add_argument("--seconds", type=int, default=5, help="length of each load run")
    ap.add_argument("--runs", type=int, default=3, help="throughput runs per case (the median is reported)")
    ap.add_argument("--rate", type=int, default=2000, help="fixed request rate for the latency run")
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "RESULTS.md"))
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "tenantgate"))
    args = ap.parse_args()
    args.stream_bytes = GIB
    if args.smoke:
        args.seconds, args.runs, args.rate, args.conns, args.stream_bytes = 1, 1, 200, 100, 64 << 20

    global NGINX
    NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
    workdir = tempfile.mkdtemp(prefix="tenantgate-bench-")
    os.chmod(workdir, 0o755)  # NGINX workers run as an unprivileged user when started by root
    with open(os.path.join(workdir, "big.bin"), "wb") as f:
        f.truncate(args.stream_bytes)  # sparse: reading it costs no disk I/O
    os.chmod(os.path.join(workdir, "big.bin"), 0o644)
    procs = []
    results = []
    try:
        up_port = free_port()
        upstream = start_nginx("upstream", UPSTREAM.format(port=up_port, dir=workdir), workdir, loadgen_cpus())
        procs.append(upstream)

        l2 = start_nginx("seed-layer2", seed_layer2(free_port(), up_port), workdir, PROXY_CPU)
        l1 = start_nginx("seed-layer1", seed_layer1(free_port(), l2.port), workdir, PROXY_CPU)
        procs += [l1, l2]
        results.append(measure("seed: two NGINX layers", l1.port, [l1, l2], args, workdir))
        l1.stop(), l2.stop()

        one = start_nginx("one-layer", one_layer(free_port(), up_port), workdir, PROXY_CPU)
        procs.append(one)
        results.append(measure("one NGINX layer", one.port, [one], args, workdir))
        one.stop()

        tg_port = free_port()
        cfg = os.path.join(workdir, "tenantgate.yaml")
        with open(cfg, "w") as f:
            f.write(TENANTGATE.format(port=tg_port, up=up_port, tenant=TENANT))
        tg = Proc("tenantgate", pin(PROXY_CPU) + [args.binary, "--config", cfg, "--threads", "1", "--log.access=false", "--log.level=warn"], tg_port, workdir)
        procs.append(tg)
        results.append(measure("tenantgate", tg_port, [tg], args, workdir))
        tg.stop()

        # The floor: the upstream itself (it answers status/config with its generic body).
        results.append(measure("direct", up_port, [], args, workdir, headers=[f"X-Scope-OrgID: {TENANT}"]))
    finally:
        for p in procs:
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpus()} CPUs ({cpu_model()}), {mem_gib():.0f} GiB, {platform.system()} {platform.release()}",
        "versions": versions(args.binary),
    }
    text = table(results, args, meta)
    goals = targets(results)
    print(text)
    print()
    print(goals)
    if args.smoke:
        return
    analysis = os.path.join(ROOT, "bench", "analysis.md")
    notes = open(analysis).read() if os.path.exists(analysis) else ""
    with open(args.out, "w") as f:
        f.write(render(meta, args, text, goals) + ("\n" + notes if notes else ""))
    print(f"\nwrote {args.out}")


def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def mem_gib():
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / (1 << 20)
    except OSError:
        pass
    return 0


def versions(binary):
    def first(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "not installed"
    return {
        "tenantgate": first([binary, "--version"]),
        "nginx": first([NGINX, "-v"]),
        "wrk": first(["wrk", "-v"]),
        "oha": first(["oha", "--version"]),
        "curl": first(["curl", "--version"]),
    }


def render(meta, args, text, goals):
    v = meta["versions"]
    return f"""# Benchmark results

Run with `bash bench/run.sh` on {meta['date']}.

- Machine: {meta['machine']}
- Versions: {v['tenantgate']}; {v['nginx']}; {v['wrk']}; {v['oha']}; {v['curl'].split(' (')[0]}
- Every proxy gets one worker (NGINX `worker_processes 1`, tenantgate `--threads 1`) pinned to CPU 0;
  the load generators and the upstream NGINX share the other CPU(s). Access logs are off everywhere.
- Throughput: `wrk -t1 -c32 -d{args.seconds}s` (closed loop), the median of {args.runs} runs. Latency: `oha -q {args.rate} -c 32 --latency-correction`
  (open loop, {args.seconds} s). CPU: the proxies' utime+stime during the throughput run. RSS: VmRSS of all the
  proxy's processes, sampled every 20 ms. Streaming: curl through the proxy, a {args.stream_bytes >> 20} MiB
  response (NGINX serving a sparse file) and a {args.stream_bytes >> 20} MiB request body (PUT-style POST with
  Content-Length).
- Ratios in parentheses are against one NGINX layer.

{text}

## Targets

{goals}
"""


if __name__ == "__main__":
    sys.exit(main())
