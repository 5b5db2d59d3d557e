#!/usr/bin/env bash
# The migration benchmark, in one command: `tenantgate migrate` against VictoriaMetrics' vmctl
# (`remote-read` mode), both reading the same Prometheus, timed side by side, then killed with -9
# and resumed, with the destination compared sample by sample against the source.
#
#   bash bench/migrate.sh            # full run (>= 10M samples, 3 runs each): rewrites bench/MIGRATE.md
#   bash bench/migrate.sh --quick    # 1M samples, a fast sanity run: writes nothing under bench/
#   options: --runs N (default 3), --seed N (kill points), --keep (keep the scratch folder)
#
# Why vmctl and not prom-migrator (which the issue names): prom-migrator's module is not served
# by the Go module proxy; this script asks again every run and MIGRATE.md quotes the answers.
#
# Needs: cargo, go (>= 1.26, GOTOOLCHAIN=local), python3, taskset, /usr/bin/time, perf (optional).
# Builds what is missing into ${TENANTGATE_PEERS:-~/.cache/tenantgate/peers} (never into the
# checkout): Prometheus 3 and promtool through tests/peers/build.sh, vmctl and victoria-metrics
# here. Everything listens on 127.0.0.1 on ports chosen free at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

# The VictoriaMetrics release vmctl and the single-node server are built from.
vm_version=v1.151.0
vm_module=github.com/VictoriaMetrics/VictoriaMetrics
# VictoriaMetrics v1.151.0's go.mod requires github.com/prometheus/client_golang/exp at
# v0.0.0-20260723095000-436bf2e0fb60, which the module proxy refuses (403, "not available"). It is
# an indirect dependency (through prometheus/prometheus' config package); the build points it at
# the version Prometheus 3.16 itself uses, which is served.
vm_replace=github.com/prometheus/client_golang/exp=github.com/prometheus/client_golang/exp@v0.0.0-20261019101427-217707f26b14

quick=0 keep=0 pyargs=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1; pyargs+=(--quick) ;;
        --keep) keep=1 ;;
        --runs|--seed) [ $# -ge 2 ] || { echo "migrate-bench: $1 needs a value" >&2; exit 2; }
            pyargs+=("$1" "$2"); shift ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "migrate-bench: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

for t in cargo go python3 taskset; do
    command -v "$t" >/dev/null || { echo "migrate-bench: $t is not installed" >&2; exit 1; }
done
[ -x /usr/bin/time ] || { echo "migrate-bench: /usr/bin/time is missing (apt-get install time)" >&2; exit 1; }
[ "$(nproc)" -ge 2 ] || { echo "migrate-bench: needs at least 2 CPUs (tools on CPU 0, servers on CPU 1)" >&2; exit 1; }

export GOTOOLCHAIN=local
cache="${TENANTGATE_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/tenantgate/peers}"

echo "migrate-bench: building tenantgate (cargo build --release --locked)" >&2
nice cargo build --release --locked
tenantgate="$root/target/release/tenantgate"

# Prometheus 3 (source and destination) and its promtool: the version the tests pin.
prom_version=$(sed -n 's/^prometheus=//p' tests/peers/versions)
[ -n "$prom_version" ] || { echo "migrate-bench: no prometheus= line in tests/peers/versions" >&2; exit 1; }
prom_dir="$cache/prometheus-$prom_version"
if [ ! -x "$prom_dir/prometheus" ] || [ ! -x "$prom_dir/promtool" ]; then
    echo "migrate-bench: Prometheus 3 is not built yet: running tests/peers/build.sh (builds every missing peer)" >&2
    bash tests/peers/build.sh
fi

# vmctl and victoria-metrics, like tests/peers/build.sh does its peers: download the module, copy
# it to a scratch folder (the module cache is read-only), build there with -mod=mod.
vm_dir="$cache/victoriametrics-$vm_version"
build_vm() {
    local pkg=$1 bin=$2 out="$vm_dir/$2"
    if [ -x "$out" ]; then
        echo "migrate-bench: $bin $vm_version: cached at $out" >&2
        return 0
    fi
    local info dir scratch started=$SECONDS
    echo "migrate-bench: $bin $vm_version: downloading $vm_module@$vm_version" >&2
    info=$(cd / && go mod download -json "$vm_module@$vm_version" || true)
    dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$info")
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        echo "migrate-bench: $vm_module@$vm_version cannot be downloaded: $info" >&2
        return 1
    fi
    scratch=$(mktemp -d)
    cp -r "$dir/." "$scratch/"
    chmod -R u+w "$scratch"
    (cd "$scratch" && GOWORK=off go mod edit -replace "$vm_replace")
    echo "migrate-bench: $bin $vm_version: building $pkg (nice go build, -p 1)" >&2
    mkdir -p "$vm_dir"
    if ! (cd "$scratch" && GOWORK=off GOFLAGS=-mod=mod CGO_ENABLED=0 nice go build -p 1 -trimpath \
            -ldflags "-s -w -X github.com/VictoriaMetrics/VictoriaMetrics/lib/buildinfo.Version=$bin-$vm_version" \
            -o "$out.tmp" "$pkg"); then
        rm -rf "$scratch"
        echo "migrate-bench: building $bin failed" >&2
        return 1
    fi
    mv "$out.tmp" "$out"
    rm -rf "$scratch"
    echo "migrate-bench: $bin $vm_version: built in $((SECONDS - started)) s -> $out" >&2
}
build_vm ./app/vmctl vmctl
build_vm ./app/victoria-metrics victoria-metrics

work=$(mktemp -d "${TMPDIR:-/tmp}/tenantgate-migrate-bench.XXXXXX")
py_pid=
cleanup() {
    # The Python helper stops every server and tool it started (each in its own process group);
    # this is the backstop if it is killed itself.
    if [ -n "$py_pid" ] && kill -0 "$py_pid" 2>/dev/null; then
        kill -TERM "$py_pid" 2>/dev/null || true
        wait "$py_pid" 2>/dev/null || true
    fi
    if [ "$keep" = 1 ]; then
        echo "migrate-bench: kept $work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
# A copy: a build started meanwhile (cargo replaces target/release/tenantgate) cannot change the
# binary between one run and the next.
cp "$tenantgate" "$work/tenantgate"
tenantgate="$work/tenantgate"

# Ask the module proxy for prom-migrator again, and keep its answers for MIGRATE.md.
echo "migrate-bench: asking the Go module proxy for prom-migrator" >&2
probe() {
    local out rc=0
    out=$(cd / && timeout 120 "$@" 2>&1) || rc=$?
    python3 -c 'import json,sys; print(json.dumps({"cmd": sys.argv[1], "out": sys.argv[2], "rc": int(sys.argv[3])}))' \
        "$*" "$out" "$rc"
}
{
    echo "["
    probe go env GOPROXY; echo ","
    probe go mod download -json github.com/timescale/promscale/migration-tool@latest; echo ","
    probe go mod download -json github.com/timescale/promscale/migration-tool@v0.0.5; echo ","
    probe go list -m -versions github.com/timescale/promscale/migration-tool; echo ","
    probe go list -m -versions github.com/timescale/promscale
    echo "]"
} >"$work/prom_migrator.json"

python3 - "$work/env.json" "$tenantgate" "$prom_dir/prometheus" "$vm_dir/vmctl" "$vm_dir/victoria-metrics" \
    "$vm_replace" "$root" <<'EOF'
import datetime, json, os, platform, subprocess, sys
out, tg, prom, vmctl, vm, repl, root = sys.argv[1:]
def first(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    return ((r.stdout or r.stderr).strip().splitlines() or ["?"])[0]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
mem = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) / 2**20
versions = {
    "tenantgate": first([tg, "--version"]) + ", built from the working tree at "
        + first(["git", "-C", root, "describe", "--always", "--dirty"])
        + (" (uncommitted changes under src/: " + ", ".join(
            l[3:] for l in subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                                          capture_output=True, text=True).stdout.splitlines()) + ")"
           if subprocess.run(["git", "-C", root, "status", "--porcelain", "--", "src", "Cargo.toml", "Cargo.lock"],
                             capture_output=True, text=True).stdout.strip() else ""),
    "source and destination Prometheus": first([prom, "--version"]) + f" ({prom})",
    "vmctl": first([vmctl, "--version"]) + f" (built from github.com/VictoriaMetrics/VictoriaMetrics@v1.151.0 with -replace {repl})",
    "VictoriaMetrics": first([vm, "--version"]),
    "Go": first(["go", "version"]),
    "Python (the harness)": platform.python_version(),
}
json.dump({"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
           "versions": versions, "nproc": os.cpu_count(), "cpu": cpu, "mem": f"{mem:.1f} GiB",
           "kernel": "Linux " + platform.release(),
           "prom_version": first([prom, "--version"]).split("version ")[-1].split(" ")[0],
           "vm_version": "v1.151.0"}, open(out, "w"), indent=1)
EOF

args=(run --work "$work" --env "$work/env.json" --prom-migrator "$work/prom_migrator.json"
      --tenantgate "$tenantgate" --prometheus "$prom_dir/prometheus" --promtool "$prom_dir/promtool"
      --vmctl "$vm_dir/vmctl" --victoria-metrics "$vm_dir/victoria-metrics")
if [ "$quick" = 0 ]; then
    args+=(--out "$root/bench/MIGRATE.md")
fi
python3 bench/migrate.py "${args[@]}" ${pyargs[@]+"${pyargs[@]}"} &
py_pid=$!
wait "$py_pid"
