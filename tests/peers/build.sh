#!/usr/bin/env bash
# Builds the real peers (Thanos, Cortex, Prometheus 3 with promtool) from their Go modules into a
# cache outside the checkout, one folder per name and version, and Helm, which deploy/check.sh
# lints the chart with. A binary already built is kept, so a warm run does nothing.
#
#   bash tests/peers/build.sh            # build what is missing
#   bash tests/peers/build.sh helm       # ... of the peers named (thanos, cortex, prometheus, helm)
#   bash tests/peers/build.sh --print    # print where each binary is (or will be)
#
# Runs at the same time wait for each other: one builds a binary, the other then finds it cached
# (a lock per folder, with flock where it exists).
#
# The cache is $TENANTGATE_PEERS, else ${XDG_CACHE_HOME:-$HOME/.cache}/tenantgate/peers.
#
# Why not `go install module/cmd/x@version`: Thanos, Cortex and Prometheus have `replace`
# directives in their go.mod, which `go install` refuses. So the module is downloaded (read-only,
# into the module cache), copied to a scratch folder and built there with -mod=mod.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
# shellcheck source=/dev/null
. <(grep -E '^[a-z_]+=' "$here/versions")
cache="${TENANTGATE_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/tenantgate/peers}"

# The zenhack.net domain expired, so its module is no longer served; Thanos' own go.mod points it
# at the GitHub copy since v0.38. Older Thanos releases get the same replace here.
zenhack=zenhack.net/go/util=github.com/zenhack/go-util@v0.0.0-20231005031245-66f5419c2aea

# name version module package binary tags [go.mod replace]
peers=(
    # First: deploy/check.sh lints the Helm chart with it, early in .ci/run, while the rest builds.
    # No replace directives, but built the same way, with the version flags its Makefile sets.
    # Helm uses no build tags; netgo is a no-op with CGO_ENABLED=0 and fills the field.
    "helm $helm helm.sh/helm/v3 ./cmd/helm helm netgo"
    "thanos $thanos github.com/thanos-io/thanos ./cmd/thanos thanos netgo,slicelabels"
    "thanos $thanos_old github.com/thanos-io/thanos ./cmd/thanos thanos netgo,slicelabels $zenhack"
    # slicelabels is mandatory for Cortex: without it, it compiles and corrupts labels at run time.
    "cortex $cortex github.com/cortexproject/cortex ./cmd/cortex cortex netgo,slicelabels"
    # No builtinassets tag: the web UI's assets are not part of the module. remove_all_sd leaves
    # out every service-discovery plugin (Kubernetes, the clouds): the tests use static targets,
    # and those SDKs were most of a cold build.
    "prometheus $prometheus github.com/prometheus/prometheus ./cmd/prometheus prometheus netgo,slicelabels,remove_all_sd"
    "prometheus $prometheus github.com/prometheus/prometheus ./cmd/promtool promtool netgo,slicelabels,remove_all_sd"
)

if [ "${1:-}" = "--print" ]; then
    for p in "${peers[@]}"; do
        read -r name version _ _ bin _ <<<"$p"
        echo "$cache/$name-$version/$bin"
    done
    exit 0
fi

# Names on the command line: build only those peers.
if [ "$#" -gt 0 ]; then
    wanted=()
    for p in "${peers[@]}"; do
        for n in "$@"; do
            if [ "${p%% *}" = "$n" ]; then wanted+=("$p"); fi
        done
    done
    for n in "$@"; do
        printf '%s\n' "${wanted[@]}" | grep -q "^$n " \
            || { echo "peers: no peer named $n (known: thanos cortex prometheus helm)" >&2; exit 2; }
    done
    peers=("${wanted[@]}")
fi

command -v go >/dev/null || { echo "peers: go is not installed (Go 1.24 or newer is needed)" >&2; exit 1; }
# GOWORK=off: Prometheus ships a go.work, and workspace mode refuses -mod=mod.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod GOWORK=off

# Every step checks its own result: `set -e` does not apply inside a function called from `||`.
build() {
    local name=$1 version=$2 module=$3 pkg=$4 bin=$5 tags=$6 replace=${7:-}
    local out="$cache/$name-$version/$bin"
    if [ -x "$out" ]; then
        echo "peers: $name $version $bin: cached at $out"
        return
    fi
    mkdir -p "$cache/$name-$version" || return 1
    if ! command -v flock >/dev/null; then
        build_unlocked "$@"
        return
    fi
    # Another run building the same binary (CI's background build and a foreground one): wait
    # for it, then take what it built. The lock is released whatever the outcome.
    local lock rc=0
    exec {lock}>"$cache/$name-$version/.lock" || return 1
    if ! flock -n "$lock"; then
        echo "peers: $name $version $bin: another build holds $cache/$name-$version/.lock; waiting"
        flock "$lock" || rc=1
    fi
    if [ "$rc" = 0 ] && [ -x "$out" ]; then
        echo "peers: $name $version $bin: cached at $out"
    elif [ "$rc" = 0 ]; then
        build_unlocked "$@" || rc=1
    fi
    exec {lock}>&-
    return "$rc"
}

build_unlocked() {
    local name=$1 version=$2 module=$3 pkg=$4 bin=$5 tags=$6 replace=${7:-}
    local out="$cache/$name-$version/$bin"
    local started=$SECONDS dir scratch
    echo "peers: $name $version $bin: downloading $module@$version"
    # Outside any module, so the download does not touch a go.mod.
    local info
    info=$(cd / && go mod download -json "$module@$version" || true)
    dir=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p' <<<"$info")
    if [ -z "$dir" ] || [ ! -d "$dir" ]; then
        echo "peers: $module@$version cannot be downloaded: $(sed -n 's/^[[:space:]]*"Error": "\(.*\)",$/\1/p' <<<"$info")" >&2
        return 1
    fi
    scratch=$(mktemp -d)
    cp -r "$dir/." "$scratch/" && chmod -R u+w "$scratch" || return 1
    if [ -n "$replace" ] && ! grep -q "^[[:space:]]*${replace%%=*} =>" "$scratch/go.mod"; then
        (cd "$scratch" && go mod edit -replace "$replace") || return 1
    fi
    # The version the binary reports (`--version`, buildinfo): Prometheus 3 modules are v0.3xx.y.
    local shown=${version#v}
    if [ "$name" = prometheus ]; then
        local minor patch
        IFS=. read -r _ minor patch <<<"$shown"
        shown="$((minor / 100)).$((minor % 100)).$patch"
    fi
    local ldflags="-s -w -X github.com/prometheus/common/version.Version=$shown -X github.com/prometheus/common/version.Branch=HEAD -X github.com/prometheus/common/version.Revision=$version"
    if [ "$name" = helm ]; then
        # As Helm's Makefile: the version, the commit, and the Kubernetes version its lint and
        # `.Capabilities` default to, from the client-go it is built with (v0.N.x = Kubernetes 1.N).
        local commit k8s_minor
        commit=$(sed -n 's/^[[:space:]]*"Hash": "\([0-9a-f]*\)",\{0,1\}$/\1/p' <<<"$info")
        k8s_minor=$(sed -n 's/^[[:space:]]*k8s.io\/client-go v0\.\([0-9]*\)\..*/\1/p' "$scratch/go.mod")
        ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
        ldflags+=" -X helm.sh/helm/v3/internal/version.gitCommit=$commit -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
        if [ -n "$k8s_minor" ]; then
            local rule
            for rule in pkg/lint/rules pkg/chartutil; do
                ldflags+=" -X helm.sh/helm/v3/$rule.k8sVersionMajor=1 -X helm.sh/helm/v3/$rule.k8sVersionMinor=$k8s_minor"
            done
        fi
    fi
    echo "peers: $name $version $bin: building (go build -tags $tags)"
    (cd "$scratch" && nice go build -trimpath -tags "$tags" -ldflags "$ldflags" \
        -o "$out.tmp" "$pkg") || { rm -rf "$scratch"; return 1; }
    mv "$out.tmp" "$out" || return 1
    rm -rf "$scratch"
    echo "peers: $name $version $bin: built in $((SECONDS - started)) s -> $out"
    built_any=1
}

failed=()
built_any=0
for p in "${peers[@]}"; do
    # shellcheck disable=SC2086
    build $p || failed+=("${p%% *}")
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "peers: FAILED to build: ${failed[*]}" >&2
    exit 1
fi

# A cold build leaves about 14 GB of Go module and build caches behind. CI machines are fresh and
# their disks are shared, so under CI=true give that space back once every binary is cached; a
# developer's machine keeps the caches for the next version bump.
if [ "${CI:-}" = true ] && [ "$built_any" = 1 ]; then
    echo "peers: CI=true: removing the Go build and module caches ($(go env GOCACHE), $(go env GOMODCACHE))"
    go clean -cache -modcache || echo "peers: could not clean the Go caches (left in place)" >&2
fi
