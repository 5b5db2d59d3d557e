"""What a run prints and writes: the tables, the #13 targets as met / not met (from the same
run's medians), and bench/RESULTS.md."""

from .load import PUSH_BYTES
from .setups import SETUPS
from .stats import cell, median, ratio, worst

NAMES = {s.key: s.name for s in SETUPS}
MIB = 1024  # KiB per MiB

# Saturated cases: (case, label, reference setup for the ratio column).
LOAD_CASES = [
    ("get", "forwarded GET", "nginx"),
    ("emu", "emulated status/config (NGINX: `return 200`)", "nginx"),
    ("post", f"push-sized POST ({PUSH_BYTES >> 10} KiB body), forwarded", "nginx"),
    ("get_logs", "forwarded GET, access logs on", "nginx-logs"),
]


def num(d):
    return lambda v: f"{v:,.{d}f}"


def ratio_text(results, setup, ref, case, key):
    if setup == ref:
        return "1.00x"
    r = ratio(results, setup, ref, case, key)
    return f"{r:.2f}x" if r is not None else ""


def load_table(results):
    lines = ["| case | setup | CPU µs per request | vs ref | requests/s | vs ref | wrk socket errors (worst) |",
             "|---|---|---|---|---|---|---|"]
    for case, label, ref in LOAD_CASES:
        for s in SETUPS:
            if case not in s.cases or s.key not in results:
                continue
            lines.append(
                f"| {label} | {s.name} | {cell(results, s.key, case, 'cpu_us', num(1))} | "
                f"{ratio_text(results, s.key, ref, case, 'cpu_us')} | {cell(results, s.key, case, 'rps', num(0))} | "
                f"{ratio_text(results, s.key, ref, case, 'rps')} | {worst(results, s.key, case, 'sock_errors') or 0} |")
    logged = [f"{NAMES[k]} {median(results, k, 'get_logs', 'logged'):.2f}"
              for k in ("nginx-logs", "tg-logs") if median(results, k, "get_logs", "logged") is not None]
    if logged:
        lines.append("")
        lines.append("Access-log lines written per request completed (median): " + ", ".join(logged) + ".")
    return "\n".join(lines)


def memory_table(results, args):
    keys = [s.key for s in SETUPS if "stream" in s.cases and s.key in results]
    mb = args.stream_bytes >> 20
    rows = [
        ("proxy RSS idle, MiB", "idle", "rss_kib", num(1), 1 / MIB),
        (f"proxy RSS with {args.conns} idle keep-alive connections, opened at once (peak), MiB", "conns", "rss_kib", num(1), 1 / MIB),
        (f"proxy RSS with {args.conns} idle keep-alive connections, opened one by one (peak), MiB", "conns_seq", "rss_kib", num(1), 1 / MIB),
        (f"{mb} MiB response, MB/s", "stream", "down_mbs", num(0), 1),
        (f"{mb} MiB request body (upload), MB/s", "stream", "up_mbs", num(0), 1),
        ("proxy peak RSS while streaming, MiB", "stream", "peak_rss_kib", num(1), 1 / MIB),
        ("RSS growth within one transfer (2nd half − 1st half peak), MiB", "stream", "growth_kib", num(1), 1 / MIB),
    ]
    lines = ["| | " + " | ".join(NAMES[k] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for label, case, key, fmt, scale in rows:
        lines.append(f"| {label} | " + " | ".join(cell(results, k, case, key, fmt, scale) for k in keys) + " |")
    return "\n".join(lines)


def latency_table(results, args):
    keys = [s.key for s in SETUPS if "latency" in s.cases and median(results, s.key, "latency", "p50") is not None]
    if not keys:
        return "Latency: not measured (oha is not installed)."
    lines = ["| | " + " | ".join(NAMES[k] for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for p in ("p50", "p99", "p99.9"):
        lines.append(f"| forwarded GET latency {p} at {args.rate}/s, ms | "
                     + " | ".join(cell(results, k, "latency", p, num(3)) for k in keys) + " |")
    return "\n".join(lines)


def targets(results, args):
    """Each #13 target: met / NOT met / not measured, with the figure it was judged on."""
    out = []

    def line(a, b, case, key, limit, higher, text):
        r = ratio(results, a, b, case, key)
        if r is None:
            out.append(f"- not measured: {text}")
        else:
            ok = r >= limit if higher else r <= limit
            # A third decimal when two would round onto the limit and hide which side it is on.
            shown = f"{r:.3f}" if abs(r - limit) < 0.005 else f"{r:.2f}"
            out.append(f"- {'met' if ok else 'NOT met'}: {text} ({shown}x)")

    line("tg", "nginx", "get", "cpu_us", 1.10, False, "forwarded CPU per request ≤ 1.10x one NGINX layer")
    line("tg", "nginx", "emu", "cpu_us", 1.0, False, "emulated CPU per request ≤ 1.0x NGINX `return 200`")
    logged = median(results, "tg-logs", "get_logs", "logged")
    r = ratio(results, "tg-logs", "nginx-logs", "get_logs", "cpu_us")
    text = "access logs on in both: tenantgate CPU per request ≤ 0.9x NGINX's"
    if r is None:
        out.append(f"- not measured: {text}")
    elif logged is not None and logged < 0.99:
        out.append(f"- NOT met: {text} ({r:.2f}x, but tenantgate logged only {logged:.0%} of its requests)")
    else:
        out.append(f"- {'met' if r <= 0.9 else 'NOT met'}: {text} ({r:.2f}x)")
    line("tg", "seed", "get", "cpu_us", 0.55, False, "forwarded CPU per request ≤ 0.55x the seed's two-layer chain")
    line("tg", "nginx", "get", "rps", 0.95, True, "forwarded requests/s ≥ 0.95x one NGINX layer")
    line("tg", "seed", "get", "rps", 2.0, True, "forwarded requests/s ≥ 2.0x the seed's two-layer chain")
    line("tg", "nginx", "post", "rps", 1.0, True, f"push-sized POST ({PUSH_BYTES >> 10} KiB) requests/s ≥ 1.0x NGINX")
    line("tg", "nginx", "stream", "up_mbs", 1.0, True, f"{args.stream_bytes >> 20} MiB upload MB/s ≥ 1.0x NGINX")
    line("tg", "nginx", "conns", "rss_kib", 1.2, False, f"RSS with {args.conns:,} idle keep-alive connections ≤ 1.2x NGINX, opened at once (the peak includes the burst of their first requests)")
    line("tg", "nginx", "conns_seq", "rss_kib", 1.2, False, f"RSS with {args.conns:,} idle keep-alive connections ≤ 1.2x NGINX, opened one by one (idle connections alone)")
    idle = median(results, "tg", "idle", "rss_kib")
    if idle is None:
        out.append("- not measured: idle RSS ≤ 10 MiB")
    else:
        out.append(f"- {'met' if idle <= 10 * MIB else 'NOT met'}: idle RSS ≤ 10 MiB ({idle / MIB:.1f} MiB)")
    growth = worst(results, "tg", "stream", "growth_kib")
    text = "streaming memory flat: RSS grows ≤ 2 MiB from the first half of a transfer to the second (worst round)"
    if growth is None:
        out.append(f"- not measured: {text}")
    else:
        out.append(f"- {'met' if growth <= 2 * MIB else 'NOT met'}: {text} ({growth / MIB:.1f} MiB)")
    line("tg-t2", "tg", "get", "cpu_us", 1.10, False, "`--threads 2` forwarded CPU per request within 10% of `--threads 1`")
    return "\n".join(out)


def render(meta, args, tables, goals, notes):
    v = meta["versions"]
    cap = ""
    if meta["cpus"] == 2:
        cap = ("- **On this 2-core machine requests/s is capped by the load generator's core**: wrk and the upstream "
               "share CPU 1, so a proxy that is cheaper than the others may not show it in requests/s. CPU per "
               "request is the headline for that reason. `--threads 2` shares CPU 1 with them too.\n")
    return f"""# Benchmark results

Run with `bash bench/run.sh{(' ' + meta['flags']) if meta['flags'] else ''}` ({args.rounds} rounds) on {meta['date']}.

- Machine: {meta['machine']}
- Versions: {v['tenantgate']}; {v['nginx']}; {v['wrk']}; {v['oha']}; {v['curl'].split(' (')[0]}
- Every proxy gets one worker (NGINX `worker_processes 1`, tenantgate `--threads 1`) pinned to CPU 0; the load
  generators and the upstream NGINX share the other CPU(s). `--threads 2` is given CPUs 0 and 1, as it would be
  deployed: two runtime threads pinned to one CPU would measure oversubscription, not the runtime.
{cap}- Rounds: the setups run round-robin, each started afresh in every round (the first setup rotates from round to
  round); every figure is the median over the rounds with the min–max in parentheses. Ratios are of medians,
  against one NGINX layer (with access logs: against one NGINX layer with its access log on).
- Saturated load: `wrk -t1 -c{args.load_conns} -d{args.seconds}s` (closed loop) after a 1 s warm-up. **CPU µs per
  request**: the proxy's utime+stime (all its processes and threads, from /proc) during the run, divided by the
  requests completed. The push-sized POST sends a {PUSH_BYTES >> 10} KiB body (a wrk Lua script) to
  `/prometheus/api/v1/push`, forwarded as is.
- Access logs: NGINX writes its usual `main` format to a file, unbuffered (a stock install); tenantgate runs with
  its defaults (access log on, logfmt, info) and stderr redirected to a file; it buffers lines and writes them
  from a thread of its own. Elsewhere access logs are off.
- Latency: `oha -q {args.rate} -c 32 --latency-correction` (open loop), when oha is installed. RSS: VmRSS of all
  the proxy's processes, sampled every 20 ms. Streaming: curl through the proxy, a {args.stream_bytes >> 20} MiB
  response (NGINX serving a sparse file) and a {args.stream_bytes >> 20} MiB request body with Content-Length,
  which the upstream reads whole before it answers (as Mimir reads a push; it spools the body to a file).

## Saturated load

{tables['load']}

## Memory and streaming

{tables['memory']}

## Latency

{tables['latency']}

## Targets (issue #13), from this run

{goals}
""" + ("\n" + notes if notes else "")
