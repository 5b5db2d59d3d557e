"""What is measured on one running setup. Each case returns the figures of one sample; the
runner collects them over the rounds. CPU per request is the proxy's utime+stime over the load
run (every process and thread of it, from /proc) divided by the requests wrk completed."""

import os
import time

from . import load
from .procs import Sampler, cpu_seconds, rss_kib

GET = "/prometheus/api/v1/labels"
EMU = "/prometheus/api/v1/status/config"
PUSH = "/prometheus/api/v1/push"


def base(run):
    return f"http://127.0.0.1:{run.front}"


def saturate(run, args, path, script=None, settle=0.0):
    """wrk at args.load_conns connections; the proxy's CPU during it (and `settle` seconds
    after, for work a proxy defers, such as a buffered log flush)."""
    before = cpu_seconds(run.pids())
    rps, n, errors = load.wrk(base(run) + path, args.seconds, run.headers, args.load_conns, script)
    if settle:
        time.sleep(settle)
    cpu = cpu_seconds(run.pids()) - before
    out = {"rps": rps, "requests": n, "sock_errors": errors}
    if run.procs and n:
        out["cpu_us"] = cpu / n * 1e6
    return out


def warm(run, args):
    """Fills the proxies' upstream pools and caches before anything is measured."""
    load.wrk(base(run) + GET, 1, run.headers, args.load_conns)


def idle(run, args, ctx):
    time.sleep(0.5)
    return {"rss_kib": rss_kib(run.pids())} if run.procs else {}


def case_get(run, args, ctx):
    return saturate(run, args, GET)


def case_emu(run, args, ctx):
    # direct has no emulation: the upstream answers with its generic body (the floor).
    return saturate(run, args, EMU)


def case_post(run, args, ctx):
    r = saturate(run, args, PUSH, script=ctx.post_script)
    r["mbs"] = r["rps"] * load.PUSH_BYTES / 1e6
    return r


def count_lines(path, needle):
    try:
        with open(path, errors="replace") as f:
            return sum(1 for line in f if needle in line)
    except OSError:
        return 0


def case_get_logs(run, args, ctx):
    # tenantgate writes its log from a buffer every 100 ms; the settle takes that write in,
    # and the line count shows whether every request was logged (a full buffer drops lines).
    time.sleep(0.3)
    before = count_lines(run.access_log, GET)
    r = saturate(run, args, GET, settle=0.3)
    lines = count_lines(run.access_log, GET) - before
    r["logged"] = lines / r["requests"] if r["requests"] else 0.0
    return r


def case_latency(run, args, ctx):
    lat = load.oha_latency(base(run) + GET, args.seconds, args.rate, run.headers)
    return lat or {}


def case_stream(run, args, ctx):
    # Streaming before the connection case: RSS after 1,000 connections would hide what
    # streaming alone costs. One sampler per direction, so "flat" is judged per transfer.
    roots = run.roots()
    with Sampler(roots) as down_s:
        down, _ = load.curl_speed([], base(run) + "/prometheus/big", run.headers)
    big = os.path.join(ctx.workdir, "big.bin")
    with Sampler(roots) as up_s:
        _, up = load.curl_speed(["-T", big, "-X", "POST", "-H", "Content-Type: application/x-protobuf"],
                                base(run) + "/prometheus/api/v1/upload", run.headers)
    r = {"down_mbs": down / 1e6, "up_mbs": up / 1e6}
    if run.procs:
        r["peak_rss_kib"] = max(down_s.peak, up_s.peak)
        r["growth_kib"] = max(down_s.growth(), up_s.growth())
    return r


def case_conns(run, args, ctx):
    with Sampler(run.roots()) as s:
        socks = load.hold_connections(run.front, args.conns, 1.0, run.headers)
    load.close_all(socks)
    return {"rss_kib": s.peak}


def case_conns_seq(run, args, ctx):
    # Before the burst case: the allocator keeps what a burst took, which would hide what idle
    # connections alone cost.
    with Sampler(run.roots()) as s:
        socks = load.hold_connections(run.front, args.conns, 1.0, run.headers, one_by_one=True)
    load.close_all(socks)
    return {"rss_kib": s.peak}


CASES = {
    "get": case_get,
    "emu": case_emu,
    "post": case_post,
    "get_logs": case_get_logs,
    "latency": case_latency,
    "stream": case_stream,
    "conns": case_conns,
    "conns_seq": case_conns_seq,
}
