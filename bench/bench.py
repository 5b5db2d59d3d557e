#!/usr/bin/env python3
"""Side-by-side benchmark (issue #13): the seed's two NGINX layers, one NGINX layer, tenantgate
(also with access logs on, and with --threads 2), and the upstream directly, on loopback, against
the same NGINX upstream. The proxy is saturated (wrk -c64); CPU µs per request is the headline.

    bash bench/run.sh            # full run (5 rounds), writes bench/RESULTS.md
    bash bench/run.sh --smoke    # 1 round, a second per case, writes nothing (CI)

The setups run round-robin over the rounds, each started afresh, so a busy moment of a shared
machine lands on every setup alike rather than on one; every figure is reported as the median
over the rounds with its min-max. See proxybench/ for the parts.
"""

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from proxybench import cases, report, setups
from proxybench.load import write_post_script
from proxybench.procs import cpus

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="1 round, 1 s per case, small bodies; write nothing")
    ap.add_argument("--rounds", type=int, help="rounds over all setups (default 5; smoke 1)")
    ap.add_argument("--seconds", type=int, help="length of each load run (default 5; smoke 1)")
    ap.add_argument("--load-conns", type=int, default=64, help="wrk connections (saturating)")
    ap.add_argument("--rate", type=int, help="fixed request rate of the latency run (default 2000; smoke 200)")
    ap.add_argument("--conns", type=int, help="idle keep-alive connections held (default 1000; smoke 100)")
    ap.add_argument("--stream-mib", type=int, help="streamed body size (default 1024; smoke 64)")
    ap.add_argument("--setups", help="comma-separated setup keys to run (default all: "
                    + ",".join(s.key for s in setups.SETUPS) + ")")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "RESULTS.md"))
    ap.add_argument("--no-write", action="store_true", help="print the results but do not write --out")
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "tenantgate"))
    args = ap.parse_args()
    full = {"rounds": 5, "seconds": 5, "rate": 2000, "conns": 1000, "stream_mib": 1024}
    smoke = {"rounds": 1, "seconds": 1, "rate": 200, "conns": 100, "stream_mib": 64}
    for k, v in (smoke if args.smoke else full).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.stream_bytes = args.stream_mib << 20
    return args


def run_setup(setup, ctx, args, results):
    run = setup.start(ctx)
    try:
        mine = results.setdefault(setup.key, {})
        mine.setdefault("idle", []).append(cases.idle(run, args, ctx))
        cases.warm(run, args)
        for case in setup.cases:
            mine.setdefault(case, []).append(cases.CASES[case](run, args, ctx))
    finally:
        run.stop()
    return mine


def summary_line(setup, mine):
    parts = []
    for case in ("get", "emu", "post", "get_logs"):
        if case in mine:
            s = mine[case][-1]
            cpu = f", {s['cpu_us']:.1f} µs/req" if "cpu_us" in s else ""
            err = f", {s['sock_errors']} socket errors" if s.get("sock_errors") else ""
            parts.append(f"{case} {s['rps']:,.0f}/s{cpu}{err}")
    return f"  {setup.name}: " + "; ".join(parts)


def main():
    args = parse_args()
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    chosen = setups.SETUPS
    if args.setups:
        keys = args.setups.split(",")
        chosen = [s for s in setups.SETUPS if s.key in keys]
        unknown = set(keys) - {s.key for s in chosen}
        if unknown or not chosen:
            print(f"bench: unknown setup(s) {','.join(sorted(unknown)) or '(none given)'}", file=sys.stderr)
            return 2
    workdir = tempfile.mkdtemp(prefix="tenantgate-bench-")
    os.chmod(workdir, 0o755)  # NGINX workers run as an unprivileged user when started by root
    big = os.path.join(workdir, "big.bin")
    with open(big, "wb") as f:
        f.truncate(args.stream_bytes)  # sparse: reading it costs no disk I/O
    os.chmod(big, 0o644)
    ctx = setups.Ctx(workdir, 0, args.binary, nginx)
    ctx.post_script = write_post_script(workdir)
    results = {}
    started = time.time()
    upstream = None
    try:
        upstream = setups.start_upstream(ctx)
        for rnd in range(args.rounds):
            # Rotate the first setup so none always runs right after the same neighbour.
            k = rnd % len(chosen)
            print(f"round {rnd + 1}/{args.rounds}", flush=True)
            for s in chosen[k:] + chosen[:k]:
                mine = run_setup(s, ctx, args, results)
                print(summary_line(s, mine), flush=True)
    finally:
        if upstream:
            upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"ran {args.rounds} round(s) in {time.time() - started:.0f} s\n")

    tables = {"load": report.load_table(results), "memory": report.memory_table(results, args),
              "latency": report.latency_table(results, args)}
    goals = report.targets(results, args)
    print("\n\n".join(tables.values()))
    print("\nTargets (issue #13):")
    print(goals)
    if args.smoke or args.no_write:
        return 0
    meta = {
        "cpus": cpus(),
        "flags": " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpus()} CPUs ({cpu_model()}), {mem_gib():.0f} GiB, {platform.system()} {platform.release()}",
        "versions": versions(args.binary, nginx),
    }
    analysis = os.path.join(ROOT, "bench", "analysis.md")
    notes = open(analysis).read() if os.path.exists(analysis) else ""
    with open(args.out, "w") as f:
        f.write(report.render(meta, args, tables, goals, notes))
    print(f"\nwrote {args.out}")
    return 0


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


def versions(binary, nginx):
    def first(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True)
            return (r.stdout or r.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return f"{os.path.basename(argv[0])} not installed"
    return {
        "tenantgate": first([binary, "--version"]),
        "nginx": first([nginx, "-v"]),
        "wrk": first(["wrk", "-v"]),
        "oha": first(["oha", "--version"]),
        "curl": first(["curl", "--version"]),
    }


if __name__ == "__main__":
    sys.exit(main())
