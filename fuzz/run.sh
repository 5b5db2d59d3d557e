#!/usr/bin/env bash
# Builds the cargo-fuzz targets and runs each for a bounded time, starting from the committed
# corpus (fuzz/corpus/<target>/ and fuzz/regressions/<target>/) copied to a scratch directory, so
# the checkout is never written to (except fuzz/target, the build). Any crash fails the run and
# is printed as base64 and hex, to be saved as fuzz/regressions/<target>/<name> once fixed.
#
#   bash fuzz/run.sh                      # every target, 50 s each
#   bash fuzz/run.sh --seconds 300 path   # one target, longer
#   bash fuzz/run.sh --ci                 # what CI runs: reproducible (see below)
#
# --ci runs a fixed number of inputs per target (about 30 s each here), not a time, so a slow
# machine fuzzes as far as a fast one, from a seed derived from the commit (printed) that each new
# commit changes. The inputs tried still vary a little from run to run: coverage depends on the
# hash-map order of the code under test.
#
# Needs rustup: installs the nightly toolchain (minimal profile) and cargo-fuzz if missing.
set -euo pipefail
cd "$(dirname "$0")"

seconds=50
ci=0
targets=()
while [ $# -gt 0 ]; do
    case "$1" in
        --ci) ci=1; shift ;;
        --seconds) seconds="${2:?--seconds needs a number}"; shift 2 ;;
        --seconds=*) seconds="${1#--seconds=}"; shift ;;
        -h|--help) sed -n '2,15p' "${0##*/}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        -*) echo "fuzz: unknown option $1" >&2; exit 2 ;;
        *) targets+=("$1"); shift ;;
    esac
done
case "$seconds" in ''|*[!0-9]*) echo "fuzz: --seconds takes whole seconds, not $seconds" >&2; exit 2 ;; esac
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz_targets/*.rs; do targets+=("$(basename "$f" .rs)"); done
fi
for t in "${targets[@]}"; do
    [ -f "fuzz_targets/$t.rs" ] || { echo "fuzz: no target $t (fuzz/fuzz_targets/$t.rs)" >&2; exit 2; }
done

# The version CI was checked with; a newer one is fine to use locally.
cargo_fuzz_version=0.13.2
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: installing the nightly toolchain (cargo-fuzz needs it)"
    rustup toolchain install nightly --profile minimal
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz $cargo_fuzz_version"
    cargo install cargo-fuzz --locked --version "$cargo_fuzz_version"
fi

start=$(date +%s)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/tenantgate-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# Like --locked: cargo fuzz build would quietly update fuzz/Cargo.lock instead of failing.
cargo +nightly metadata --locked --format-version 1 >/dev/null
# No sanitizer: tenantgate forbids unsafe code, so what is left to find is panics, which need
# none, and overflow, which the profile's overflow checks catch (fuzz/Cargo.toml). Without
# AddressSanitizer the build is faster and each input runs several times faster.
echo "fuzz: building the targets"
if ! cargo +nightly fuzz build --sanitizer none --debug-assertions >"$scratch/build.log" 2>&1; then
    grep -Ev '^\s+(Compiling|Downloaded|Downloading) ' "$scratch/build.log" >&2
    echo "fuzz: the build failed" >&2
    exit 1
fi
built=$(date +%s)
echo "fuzz: built in $((built - start)) s"

bin_dir="target/$(rustc +nightly -vV | sed -n 's/^host: //p')/release"

# --ci: inputs per target, about 30 s each on the 2-core CI machines (config parses YAML, slow).
ci_runs() {
    case "$1" in
        config) echo 120000 ;;
        basic_auth) echo 4000000 ;;
        *) echo 1500000 ;;
    esac
}
seed_args=()
if [ "$ci" = 1 ]; then
    # The commit's first 8 hex digits, as a number libFuzzer takes (never 0: that means random).
    rev=$(git rev-parse HEAD 2>/dev/null || echo 1)
    seed=$(( (16#${rev:0:8} % 2147483646) + 1 ))
    echo "fuzz: --ci: seed $seed (from commit ${rev:0:12})"
    seed_args=(-seed="$seed")
fi
failed=()
for t in "${targets[@]}"; do
    corpus="$scratch/$t/corpus"
    artifacts="$scratch/$t/artifacts/"
    mkdir -p "$corpus" "$artifacts"
    for d in corpus regressions; do
        [ -d "$d/$t" ] && cp "$d/$t"/* "$corpus"/ 2>/dev/null || true
    done
    log="$scratch/$t/log"
    # -timeout: an input taking 10 s is a hang, reported like a crash.
    status=0
    if [ "$ci" = 1 ]; then
        # A count, not a time: how far it gets must not depend on the machine's speed.
        bound=(-runs="$(ci_runs "$t")" "${seed_args[@]}")
    else
        bound=(-max_total_time="$seconds")
    fi
    "$bin_dir/$t" "${bound[@]}" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$artifacts" "$corpus" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    seed=$(sed -n 's/.*Seed: \([0-9]*\).*/\1/p' "$log" | head -1)
    echo "fuzz: $t: ${execs:-?} runs, ${rate:-?} exec/s, corpus $(find "$corpus" -type f | wc -l) inputs (seed ${seed:-?})"
    if [ "$status" != 0 ] || [ -n "$(ls -A "$artifacts")" ]; then
        failed+=("$t")
        echo "fuzz: $t FAILED (exit $status); the end of its log:" >&2
        # The panic message, then libFuzzer's summary (the backtrace in between is long).
        grep -A3 -m1 'panicked at' "$log" >&2 || true
        grep -v '^#[0-9]' "$log" | grep -A8 -m1 '^==[0-9]*== ERROR' >&2 || tail -20 "$log" >&2
        for a in "$artifacts"*; do
            [ -f "$a" ] || continue
            echo "fuzz: $t: input $(basename "$a") ($(wc -c <"$a") bytes), base64:" >&2
            base64 -w0 "$a" >&2; echo >&2
            echo "fuzz: hex:" >&2
            od -An -v -tx1 "$a" | tr -d ' \n' >&2; echo >&2
            echo "fuzz: save it with: echo '$(base64 -w0 "$a")' | base64 -d > fuzz/regressions/$t/<name>" >&2
        done
    fi
done
echo "fuzz: ${#targets[@]} targets in $(($(date +%s) - start)) s (build $((built - start)) s)"
if [ ${#failed[@]} -gt 0 ]; then
    echo "fuzz: crashes in: ${failed[*]}" >&2
    exit 1
fi
