#!/usr/bin/env bash
# Remote write split benchmark, in one command:
#   bash bench/split.sh           # 3 rounds x 20 s per case and config (about 5 minutes)
#   bash bench/split.sh --quick   # 3 rounds x 5 s
# Extra arguments go to bench/split.py (--rounds N, --seconds S, --conns C, --json FILE).
# Needs nginx, wrk, taskset and python3 (standard library only); 2 CPUs or more.
# Results are printed; bench/SPLIT.md holds a recorded run.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v taskset >/dev/null 2>&1 || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
    echo "split bench: missing ${need[*]} (apt-get install ${need[*]})" >&2
    exit 1
fi
export PATH="$PATH:/usr/sbin"
if [ "$(nproc)" -lt 2 ]; then
    echo "split bench: needs 2 CPUs (tenantgate on CPU 0, wrk and the NGINX sink on CPU 1)" >&2
    exit 1
fi

# TENANTGATE_BIN=/path/to/tenantgate benchmarks that binary as is. Otherwise target/release's,
# built only when it is missing or older than a source file.
if [ -n "${TENANTGATE_BIN:-}" ]; then
    bin=$TENANTGATE_BIN
else
    bin=target/release/tenantgate
    if [ ! -x "$bin" ] || [ -n "$(find src build.rs Cargo.toml Cargo.lock -newer "$bin" -print -quit 2>/dev/null)" ]; then
        echo "split bench: building $bin"
        nice -n 10 cargo build --release --locked
    fi
fi

# The Python side starts every process in its own session and stops them on exit; this trap
# forwards Ctrl-C / TERM to it so that cleanup runs.
py=""
cleanup() { [ -n "$py" ] && kill -TERM "$py" 2>/dev/null; wait "$py" 2>/dev/null || true; }
trap cleanup INT TERM HUP
python3 bench/split.py --binary "$bin" "$@" &
py=$!
wait "$py"
