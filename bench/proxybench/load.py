"""The load generators, all on the load generator's CPUs: wrk (closed loop, saturating),
oha (open loop at a fixed rate, when installed), curl (one big body), idle keep-alive sockets."""

import json
import os
import random
import re
import shutil
import socket
import subprocess
import time

from .procs import loadgen_cpus, pin

PUSH_BYTES = 256 << 10

# wrk reads the body once and sends it with every request; the headers are a remote write's.
# The proxies forward it without looking inside (a fixed-tenant route does not parse pushes),
# so its bytes need not be valid protobuf.
POST_SCRIPT = """-- A push-sized POST: one body, read once, sent on every request.
local f = assert(io.open("{body}", "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = "application/x-protobuf"
wrk.headers["Content-Encoding"] = "snappy"
wrk.headers["X-Prometheus-Remote-Write-Version"] = "0.1.0"
"""


def write_post_script(workdir):
    body = os.path.join(workdir, "push.bin")
    with open(body, "wb") as f:
        # Incompressible, like snappy output; seeded so every run sends the same bytes.
        f.write(random.Random(13).randbytes(PUSH_BYTES))
    script = os.path.join(workdir, "push.lua")
    with open(script, "w") as f:
        f.write(POST_SCRIPT.format(body=body))
    return script


def header_args(flag, headers):
    return [a for h in headers for a in (flag, h)]


def wrk(url, seconds, headers, conns, script=None):
    """Closed loop: `conns` connections, each sending as soon as the last answer came.
    Returns (requests/s, requests completed, socket errors)."""
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s"] + header_args("-H", headers)
    if script:
        argv += ["-s", script]
    out = subprocess.run(pin(loadgen_cpus()) + argv + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} non-2xx responses\n{out}")
    # Connections the proxy dropped or timed out: counted, since a proxy that drops them
    # would look cheaper per request than one that serves them all.
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return rps, total, sum(int(g) for g in sock.groups()) if sock else 0


def oha_latency(url, seconds, rate, headers):
    """Open-loop latency at a fixed rate (oha -q with latency correction); None without oha."""
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


def hold_connections(port, n, seconds, headers=(), one_by_one=False):
    """Opens n keep-alive connections that each send one request and then stay idle: all
    requests sent before any answer is read (a burst), or with `one_by_one` each answered
    before the next connection opens (idle connections alone, without the burst)."""
    socks = []
    extra = "".join(f"{h}\r\n" for h in headers)
    req = f"GET /prometheus/api/v1/labels HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode()
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            socks.append(s)
            s.sendall(req)
            if one_by_one:
                s.settimeout(5)
                s.recv(4096)
        for s in socks if not one_by_one else ():
            s.settimeout(5)
            s.recv(4096)
        time.sleep(seconds)
    except OSError:
        close_all(socks)
        raise
    return socks


def close_all(socks):
    for s in socks:
        s.close()


def curl_speed(args, url, headers):
    """One transfer; returns (download, upload) bytes/s as curl measured them."""
    out = subprocess.run(
        pin(loadgen_cpus()) + ["curl", "-s", "-S", "-o", "/dev/null", "-w", "%{http_code} %{speed_download} %{speed_upload}"]
        + header_args("-H", headers) + args + [url],
        capture_output=True, text=True, check=True,
    ).stdout.split()
    code, down, up = int(out[0]), float(out[1]), float(out[2])
    if code != 200:
        raise RuntimeError(f"{url}: HTTP {code}")
    return down, up
