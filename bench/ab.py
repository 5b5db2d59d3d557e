#!/usr/bin/env python3
"""Before/after: CPU time per forwarded GET of two tenantgate binaries, measured the way
bench.py measures it (one --threads 1 proxy pinned to CPU 0, NGINX upstream and wrk on the
other CPU), the two binaries interleaved round by round so drift on a shared machine hits
both alike.

    python3 bench/ab.py --before /tmp/tenantgate-before --after target/release/tenantgate
    python3 bench/ab.py ... --callgrind   # also instructions per request under valgrind

Prints every round and the median and spread per binary. Writes nothing.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import bench

TENANT = bench.TENANT
PATH = "/prometheus/api/v1/labels"


def start_gate(binary, workdir, up_port, name, wrap=()):
    port = bench.free_port()
    cfg = os.path.join(workdir, f"{name}.yaml")
    with open(cfg, "w") as f:
        f.write(bench.TENANTGATE.format(port=port, up=up_port, tenant=TENANT))
    argv = bench.pin(bench.PROXY_CPU) + list(wrap) + [binary, "--config", cfg, "--threads", "1",
                                                      "--log.access=false", "--log.level=warn"]
    return bench.Proc(name, argv, port, workdir)


def cpu_round(binary, workdir, up_port, name, seconds):
    """µs of proxy CPU per forwarded request, and requests per second, for one wrk run."""
    gate = start_gate(binary, workdir, up_port, name)
    try:
        url = f"http://127.0.0.1:{gate.port}{PATH}"
        bench.wrk(url, 1, [])  # warm the upstream pool
        before = bench.cpu_seconds(gate.pids())
        rps, total = bench.wrk(url, seconds, [])
        cpu = bench.cpu_seconds(gate.pids()) - before
        return cpu / total * 1e6, rps
    finally:
        gate.stop()


def callgrind_round(binary, workdir, up_port, name, seconds):
    """Instructions per forwarded request: counters zeroed after a warm-up, dumped after the run."""
    out = os.path.join(workdir, f"{name}.callgrind")
    gate = start_gate(binary, workdir, up_port, name,
                      wrap=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
    try:
        url = f"http://127.0.0.1:{gate.port}{PATH}"
        bench.wrk(url, 2, [], conns=8)
        pid = str(gate.p.pid)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        _, total = bench.wrk(url, seconds, [], conns=8)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        time.sleep(0.5)
    finally:
        gate.stop()
    dumps = sorted(f for f in os.listdir(workdir) if f.startswith(f"{name}.callgrind"))
    instructions = 0
    for d in dumps:
        text = open(os.path.join(workdir, d)).read()
        # The explicit dump after the run (not the one at exit).
        if "desc: Trigger: dump" in text:
            for line in text.splitlines():
                if line.startswith("summary:") or line.startswith("totals:"):
                    instructions = int(line.split()[1])
                    break
    return instructions / total if total else float("nan")


def summary(label, values, unit):
    med = statistics.median(values)
    return (f"{label}: median {med:.2f}{unit}, min {min(values):.2f}, max {max(values):.2f} "
            f"(n={len(values)}: {', '.join(f'{v:.2f}' for v in values)})")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True)
    ap.add_argument("--after", required=True)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--callgrind", action="store_true", help="also instructions per request (valgrind)")
    ap.add_argument("--callgrind-rounds", type=int, default=2)
    args = ap.parse_args()
    bench.NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
    workdir = tempfile.mkdtemp(prefix="tenantgate-ab-")
    os.chmod(workdir, 0o755)
    upstream = None
    try:
        up_port = bench.free_port()
        upstream = bench.start_nginx("upstream", bench.UPSTREAM.format(port=up_port, dir=workdir), workdir,
                                     bench.loadgen_cpus())
        cpu = {"before": [], "after": []}
        rps = {"before": [], "after": []}
        for r in range(args.rounds):
            # Alternate which goes first, so neither always runs on a warmer (or busier) machine.
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for which in order:
                us, rate = cpu_round(getattr(args, which), workdir, up_port, f"{which}-{r}", args.seconds)
                cpu[which].append(us)
                rps[which].append(rate)
                print(f"round {r} {which}: {us:.2f} µs CPU/request, {rate:.0f} req/s", flush=True)
        for which in ("before", "after"):
            if cpu[which]:
                print(summary(f"{which} CPU per request", cpu[which], " µs"))
                print(summary(f"{which} requests/s", rps[which], ""))
        if args.callgrind:
            ir = {"before": [], "after": []}
            for r in range(args.callgrind_rounds):
                for which in ("before", "after"):
                    v = callgrind_round(getattr(args, which), workdir, up_port, f"cg-{which}-{r}", args.seconds)
                    ir[which].append(v)
                    print(f"callgrind round {r} {which}: {v:.0f} instructions/request", flush=True)
            for which in ("before", "after"):
                print(summary(f"{which} instructions per request", ir[which], ""))
    finally:
        if upstream:
            upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
