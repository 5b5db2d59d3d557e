#!/usr/bin/env bash
# The benchmark, in one command: `bash bench/run.sh` (full: 5 rounds, writes bench/RESULTS.md) or
# `bash bench/run.sh --smoke` (1 round, a second per case, writes nothing; CI runs this).
# Other flags go to bench/bench.py (see `python3 bench/bench.py --help`).
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
    echo "bench: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! command -v oha >/dev/null 2>&1; then
    if [ "${1:-}" = "--smoke" ]; then
        echo "bench: oha not installed; the smoke run skips the fixed-rate latency case"
    else
        echo "bench: installing oha (open-loop load generator) with cargo"
        cargo install oha --locked
    fi
fi
export PATH="$HOME/.cargo/bin:$PATH"

cargo build --release --locked
exec python3 bench/bench.py "$@"
