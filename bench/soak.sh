#!/usr/bin/env bash
# The soak, long, against a release build, with its figures written to bench/SOAK.md:
#   bash bench/soak.sh           # 600 s (10 minutes) at 200 requests/s
#   bash bench/soak.sh 120       # another duration, in seconds (at least 20)
#   bash bench/soak.sh 600 400   # ... and another rate
# It is tests/soak (which `cargo test` runs for 60 s against the debug build) with
# TENANTGATE_SOAK_SECS, TENANTGATE_SOAK_RATE and TENANTGATE_SOAK_BIN set; the test's own
# assertions decide pass or fail, and SOAK.md is written either way.
# TENANTGATE_BIN=/path/to/tenantgate soaks that binary as is instead of target/release's.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-600}
rate=${2:-200}

if [ -n "${TENANTGATE_BIN:-}" ]; then
    bin=$TENANTGATE_BIN
else
    bin=target/release/tenantgate
    echo "soak: building $bin"
    nice -n 10 cargo build --release --locked
fi
bin=$(realpath "$bin")
revision=$("$bin" --version | head -1)

report=$(mktemp -t tenantgate-soak-XXXXXX.json)
log=$(mktemp -t tenantgate-soak-XXXXXX.log)
trap 'rm -f "$report" "$log"' EXIT
command="TENANTGATE_SOAK_SECS=$secs TENANTGATE_SOAK_RATE=$rate TENANTGATE_SOAK_BIN=$bin cargo test --locked --test soak -- --nocapture"
echo "soak: $command"
status=0
TENANTGATE_SOAK_SECS=$secs TENANTGATE_SOAK_RATE=$rate TENANTGATE_SOAK_BIN=$bin \
    TENANTGATE_SOAK_REPORT=$report \
    cargo test --locked --test soak -- --nocapture 2>&1 | tee "$log" || status=$?
# The pipeline's status is tee's; the test's is in its summary line.
grep -q '^test result: ok' "$log" || status=1

if [ ! -s "$report" ]; then
    echo "soak: the test wrote no figures (it failed before the end); nothing recorded" >&2
    exit 1
fi
python3 - "$report" "$status" "$command" "$revision" "$(nproc)" "$bin" >bench/SOAK.md <<'EOF'
import json, sys, datetime
r = json.load(open(sys.argv[1]))
status, command, revision, cpus, binary = sys.argv[2:7]
when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
out = r["outcomes"]
total = r["requests"]
def mib(k): return f"{k / 1024:.1f} MiB"
print("# Soak")
print()
print(f"Recorded run: `bash bench/soak.sh {r['secs']} {r['rate']}` on {when}, {cpus} CPUs (shared with other work),")
print(f"`{revision}`, binary `{binary}`. Result: **{'PASS' if status == '0' else 'FAIL'}**.")
print()
print("The script ran:")
print()
print(f"```\n{command}\n```")
print()
print("What runs ([`tests/soak/`](../tests/soak/main.rs)): the binary with a TLS listener (HTTP/1.1 and HTTP/2 by")
print("ALPN), four routes (a forwarded route with an emulated `status/config`, a push route, a basic-auth route, a")
print("plain one) to an in-test echo upstream. Requests go open loop at the fixed rate, 8 in 10 on pooled connections")
print("(HTTP/1.1 keep-alive, one multiplexed HTTP/2 connection), 2 in 10 on fresh TLS connections. Meanwhile the")
print("config is reloaded every second (`POST /-/reload`; the forwarded route's tenant and an external label flip each")
print("time), the server certificate is replaced by a new one from the same CA every tenth reload, and the upstream")
print("crashes (listener and connections dropped) every 5 s and listens again on the same port 300 ms later. Every")
print("answer is checked against what the upstream saw (tenant, path and id, body digest); a 502 or 504 is allowed")
print("only for a forwarded request that overlapped an upstream restart, which lasts until tenantgate has closed its")
print("connections to the crashed instance. At most 64 requests are in flight. No latency is measured.")
print()
print("| figure | value |")
print("|---|---|")
print(f"| duration | {r['elapsed_secs']:.1f} s (warm-up {r['warmup_secs']} s) |")
print(f"| requests | {total:,} ({total / r['elapsed_secs']:.0f}/s) |")
for k, n in sorted(out.items(), key=lambda kv: -kv[1]):
    print(f"| outcome `{k}` | {n:,} ({100 * n / total:.2f}%) |")
print(f"| sends that waited for one of the 64 request slots (the client fell behind) | {r['waits_for_slot']:,} |")
print(f"| answers checked against a single config version | {r['exact_epoch_checks']:,} |")
print(f"| reloads | {r['reloads']} |")
print(f"| certificate rotations (new certificate seen by a fresh connection right after) | {r['rotations']} ({r['rotations_verified']} verified) |")
print(f"| upstream restarts | {r['upstream_restarts']} |")
print(f"| RSS after warm-up | {mib(r['rss_start_kib'])} |")
print(f"| RSS at the end | {mib(r['rss_end_kib'])} |")
print(f"| RSS peak (1 s samples) | {mib(r['rss_max_kib'])} |")
s = r["rss_samples_kib"]
step = max(1, len(s) // 10)
print()
print("RSS every " + f"{step} s: " + ", ".join(mib(k) for k in s[::step]) + ".")
if r["failures"]:
    print()
    print("First failures:")
    print()
    for f in r["failures"]:
        print(f"- `{f}`")
EOF
echo "soak: figures in bench/SOAK.md"
exit "$status"
