#!/usr/bin/env python3
"""Before/after: CPU time per forwarded GET of two tenantgate binaries, measured the way
bench.py measures it (one --threads 1 proxy pinned to CPU 0, NGINX upstream and wrk -c64 on
the other CPU), the two binaries interleaved round by round so drift on a shared machine hits
both alike.

    python3 bench/ab.py --before /tmp/tenantgate-before --after target/release/tenantgate
    python3 bench/ab.py ... --callgrind   # also instructions per request under valgrind
    python3 bench/ab.py ... --rounds 0 --callgrind --callgrind-out /tmp/cg   # dumps kept to annotate

Prints every round and the median and spread per binary. Writes nothing.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

from proxybench import setups
from proxybench.load import wrk
from proxybench.procs import PROXY_CPU, Proc, cpu_seconds, free_port, pin

TENANT = setups.TENANT
PATH = "/prometheus/api/v1/labels"
CONNS = 64  # saturating, as bench.py


LOGS = False  # --logs: the access log on, as in production


def start_gate(binary, ctx, name, wrap=()):
    port = free_port()
    cfg = os.path.join(ctx.workdir, f"{name}.yaml")
    with open(cfg, "w") as f:
        f.write(setups.TENANTGATE.format(port=port, up=ctx.up_port, tenant=TENANT))
    logs = [] if LOGS else ["--log.access=false", "--log.level=warn"]
    argv = pin(PROXY_CPU) + list(wrap) + [binary, "--config", cfg, "--threads", "1"] + logs
    return Proc(name, argv, port, ctx.workdir)


def cpu_round(binary, ctx, name, seconds, path=PATH):
    """µs of proxy CPU per forwarded request, and requests per second, for one wrk run."""
    gate = start_gate(binary, ctx, name)
    try:
        url = f"http://127.0.0.1:{gate.port}{path}"
        wrk(url, 1, [], CONNS)  # warm the upstream pool
        before = cpu_seconds(gate.pids())
        rps, total, _ = wrk(url, seconds, [], CONNS)
        cpu = cpu_seconds(gate.pids()) - before
        return cpu / total * 1e6, rps
    finally:
        gate.stop()


def callgrind_round(binary, ctx, name, seconds, path=PATH):
    """Instructions per forwarded request: counters zeroed after a warm-up, dumped after the run."""
    out = os.path.join(ctx.workdir, f"{name}.callgrind")
    gate = start_gate(binary, ctx, name,
                      wrap=["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"])
    try:
        url = f"http://127.0.0.1:{gate.port}{path}"
        wrk(url, 2, [], 8)
        pid = str(gate.p.pid)
        subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
        _, total, _ = wrk(url, seconds, [], 8)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        time.sleep(0.5)
    finally:
        gate.stop()
    dumps = sorted(f for f in os.listdir(ctx.workdir) if f.startswith(f"{name}.callgrind"))
    instructions = 0
    for d in dumps:
        text = open(os.path.join(ctx.workdir, d)).read()
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
    ap.add_argument("--path", default=PATH, help=f"what is requested (default {PATH}, forwarded; "
                    "/prometheus/api/v1/status/config is answered from config)")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--logs", action="store_true", help="access log on (the default logfmt, info) to a file")
    ap.add_argument("--callgrind", action="store_true", help="also instructions per request (valgrind)")
    ap.add_argument("--callgrind-rounds", type=int, default=2)
    ap.add_argument("--callgrind-out", help="keep the callgrind dumps in this directory (for callgrind_annotate)")
    args = ap.parse_args()
    global LOGS
    LOGS = args.logs
    workdir = tempfile.mkdtemp(prefix="tenantgate-ab-")
    os.chmod(workdir, 0o755)
    ctx = setups.Ctx(workdir=workdir, up_port=0, binary="", nginx=shutil.which("nginx") or "/usr/sbin/nginx")
    upstream = None
    try:
        upstream = setups.start_upstream(ctx)
        cpu = {"before": [], "after": []}
        rps = {"before": [], "after": []}
        for r in range(args.rounds):
            # Alternate which goes first, so neither always runs on a warmer (or busier) machine.
            order = ["before", "after"] if r % 2 == 0 else ["after", "before"]
            for which in order:
                us, rate = cpu_round(getattr(args, which), ctx, f"{which}-{r}", args.seconds, args.path)
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
                    v = callgrind_round(getattr(args, which), ctx, f"cg-{which}-{r}", args.seconds, args.path)
                    ir[which].append(v)
                    if args.callgrind_out:
                        os.makedirs(args.callgrind_out, exist_ok=True)
                        for d in os.listdir(workdir):
                            if d.startswith(f"cg-{which}-{r}.callgrind"):
                                shutil.copy(os.path.join(workdir, d), args.callgrind_out)
                    print(f"callgrind round {r} {which}: {v:.0f} instructions/request", flush=True)
            for which in ("before", "after"):
                print(summary(f"{which} instructions per request", ir[which], ""))
    finally:
        if upstream:
            upstream.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
