#!/usr/bin/env bash
# shellcheck disable=SC2015  # "A && B || die" is meant: die when either A or B fails.
# Offline validation of deploy/ and the Dockerfile, for CI: bash deploy/check.sh (from anywhere).
#
#   1. renders the three kustomizations (deploy/kubernetes/{sidecar,gateway,migrate})
#   2. validates the rendered objects against Kubernetes 1.29 schemas, strictly (kubernetes-validate)
#   3. runs `tenantgate check --syntax-only` on the tenantgate config the sidecar and gateway
#      kustomizations embed (their TLS keys, htpasswd and token files come from Secrets that are
#      never in the repo), and `tenantgate check` on compose's
#   4. checks the wiring: --config is the ConfigMap's file where it is mounted, every secret file
#      the config names is a Secret key mounted at that path, Service ports, probes on the admin
#      port, grace periods, Thanos sidecar --prometheus.url = tenantgate's emulated route prefix,
#      no --objstore.config, remote_write through tenantgate, the Dockerfile's build, COPY sources,
#      binary path and user, the systemd unit; and the migrate Indexed Job against
#      `tenantgate migrate --help`: args start with migrate, flags the binary knows,
#      completions = parallelism = the N of --shard=$(JOB_COMPLETION_INDEX)/N, absolute
#      --start/--end, memory limit above --max-memory, every --*-file flag a mounted Secret key,
#      the Job rules the API server enforces but the schemas do not (restartPolicy Never, ...)
#   5. the Helm chart deploy/helm/tenantgate: `helm lint --strict` with each of its ci/ values
#      files, `helm template` of both modes (defaults, and values exercising the optional parts:
#      HPA and PDB on and off, extra Secrets, a token from an env var, another route prefix),
#      each validated, config-checked and wiring-checked as in 1-4, plus deploy/check_chart.py:
#      the kinds rendered, HPA/PDB/Service wiring, the defaults rendering what the kustomizations
#      do, the checksum/config that rolls the Pods; and that values.schema.json refuses typos
#
# Tools, installed when missing:
#   - kustomize: `kustomize build` or `kubectl kustomize` if on PATH (the project's machine image
#     ships kubectl), else Debian's kubernetes-client package via apt-get: the only kustomize binary
#     the reachable registries offer (its kubectl 1.20 embeds kustomize v2; the manifests use only
#     resources, configMapGenerator and images, which it renders too).
#     Override with KUSTOMIZE="kustomize build".
#   - kubernetes-validate (PyPI, pinned, it ships the schemas) and PyYAML, in a venv under
#     ${XDG_CACHE_HOME:-~/.cache}/tenantgate-ci, reused by later runs.
#   - tenantgate: $TENANTGATE_BIN, default target/debug/tenantgate, built with `cargo build --locked`
#     if missing.
#   - helm, not installed here: $HELM, else the pinned one `bash tests/peers/build.sh helm` builds
#     from its Go module into the peers' cache (tests/peers/versions), else helm on PATH. Missing:
#     the chart checks are a loud skip; under CI=true a FAIL.
# Optional, skipped when absent: promtool (checks the compose Prometheus config), systemd-analyze.
#
# One line per check ("ok", "FAIL", "skip"); exits 1 if any check failed, 2 if a tool is missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

KV_VERSION=1.31.0          # kubernetes-validate release (ships schemas up to 1.31)
PYYAML_VERSION=6.0.2
K8S_VERSION=1.29.0         # the Kubernetes API version the manifests must be valid for
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/tenantgate-ci"
VENV="$CACHE/venv-kv$KV_VERSION-pyyaml$PYYAML_VERSION"
TENANTGATE_BIN="${TENANTGATE_BIN:-target/debug/tenantgate}"
KUSTOMIZATIONS=(deploy/kubernetes/sidecar deploy/kubernetes/gateway deploy/kubernetes/migrate)
COMPOSE=deploy/compose/compose.yaml
UNIT=deploy/systemd/tenantgate.service

failed=0
started=$SECONDS
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

ok()   { printf 'ok   %s\n' "$*"; }
bad()  { printf 'FAIL %s\n' "$*"; failed=1; }
skip() { printf 'skip %s\n' "$*"; }
die()  { printf 'FAIL %s\n' "$*" >&2; echo "deploy/check.sh: cannot continue without this tool" >&2; exit 2; }
# Run a command quietly; on failure print FAIL with its output indented.
run() {
    local what="$1"; shift
    if "$@" >"$work/out" 2>&1; then ok "$what"; else bad "$what"; sed 's/^/     | /' "$work/out"; fi
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }

apt_install() {
    command -v apt-get >/dev/null || return 1
    # apt-cache knows nothing before the first `apt-get update`.
    if ! apt-cache policy "$@" 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        as_root apt-get update -qq >/dev/null || return 1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# --- tools ---------------------------------------------------------------------------------------

command -v python3 >/dev/null || apt_install python3 python3-venv || die "python3: not found and apt-get install python3 failed"

if [ ! -f "$VENV/.complete" ]; then
    rm -rf "$VENV"
    mkdir -p "$CACHE"
    if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
        # Debian's python3 needs python3-venv for ensurepip.
        apt_install python3-venv && python3 -m venv "$VENV" >/dev/null 2>&1 \
            || die "python3 -m venv: failed (apt-get install python3-venv did not help)"
    fi
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        "kubernetes-validate==$KV_VERSION" "PyYAML==$PYYAML_VERSION" >"$work/pip" 2>&1 \
        || { cat "$work/pip" >&2; rm -rf "$VENV"; die "pip install kubernetes-validate==$KV_VERSION (PyPI) failed"; }
    touch "$VENV/.complete"
    ok "tools: kubernetes-validate $KV_VERSION installed from PyPI into $VENV"
else
    ok "tools: kubernetes-validate $KV_VERSION (cached in $VENV)"
fi
PY="$VENV/bin/python"
KV="$VENV/bin/kubernetes-validate"

if [ -n "${KUSTOMIZE:-}" ]; then
    read -r -a kustomize <<<"$KUSTOMIZE"
elif command -v kustomize >/dev/null; then
    kustomize=(kustomize build)
elif command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1; then
    kustomize=(kubectl kustomize)
else
    echo "tools: no kustomize or kubectl; installing Debian's kubernetes-client (apt)"
    apt_install kubernetes-client && command -v kubectl >/dev/null \
        || die "kustomize: neither kustomize nor kubectl found, and apt-get install kubernetes-client failed"
    kustomize=(kubectl kustomize)
fi
ok "tools: rendering with \`${kustomize[*]}\`"

if [ ! -x "$TENANTGATE_BIN" ]; then
    echo "tools: $TENANTGATE_BIN missing; cargo build --locked"
    cargo build --locked >"$work/cargo" 2>&1 || { cat "$work/cargo" >&2; die "cargo build --locked failed"; }
    [ -x "$TENANTGATE_BIN" ] || die "$TENANTGATE_BIN: still missing after cargo build (set TENANTGATE_BIN)"
fi
ok "tools: $("$TENANTGATE_BIN" --version) ($TENANTGATE_BIN)"
# The migrate Job is checked against the flags and defaults of this binary.
"$TENANTGATE_BIN" migrate --help >"$work/migrate-help.txt" 2>&1 \
    || { cat "$work/migrate-help.txt" >&2; die "$TENANTGATE_BIN migrate --help failed"; }

tenantgate_check() { # what, config file
    run "$1: tenantgate check" "$TENANTGATE_BIN" check --config "$2"
}
helper() { # python checks print their own ok/FAIL lines
    "$PY" deploy/check_manifests.py "$@" || failed=1
}

# --- Kubernetes ----------------------------------------------------------------------------------

for dir in "${KUSTOMIZATIONS[@]}"; do
    name="$(basename "$dir")"
    out="$work/$name.yaml"
    if ! "${kustomize[@]}" "$dir" >"$out" 2>"$work/out"; then
        bad "$dir: ${kustomize[*]}"; sed 's/^/     | /' "$work/out"; continue
    fi
    ok "$dir: rendered $(grep -c '^kind:' "$out") objects ($(grep '^kind:' "$out" | awk '{print $2}' | sort | paste -sd, -))"
    run "$dir: valid for Kubernetes $K8S_VERSION (kubernetes-validate --strict)" \
        "$KV" --kubernetes-version "$K8S_VERSION" --strict --quiet "$out"
    if [ "$name" = migrate ]; then
        # A Job running `tenantgate migrate`, no config file: its wiring is its command line.
        CHECK_WHERE="$dir" helper migrate "$out" "$work/migrate-help.txt"
        continue
    fi
    CHECK_WHERE="$dir" helper configmap "$out" "$work/$name-tenantgate.yaml"
    if [ -s "$work/$name-tenantgate.yaml" ]; then
        # The Secrets the config's files come from exist only in the cluster: check the rest of
        # the config, then that the Deployment mounts each file it names (and that the check's
        # "not read" list holds nothing the helper does not look for).
        run "$dir (ConfigMap tenantgate.yaml): tenantgate check --syntax-only" \
            "$TENANTGATE_BIN" check --syntax-only --config "$work/$name-tenantgate.yaml"
        cp "$work/out" "$work/$name-check.txt"
        CHECK_WHERE="$dir" helper secrets "$out" "$work/$name-tenantgate.yaml" "$work/$name-check.txt"
        if [ "$name" = sidecar ]; then CHECK_WHERE="$dir" helper thanos-k8s "$out" "$work/$name-tenantgate.yaml"; fi
    fi
done

# --- Helm chart ----------------------------------------------------------------------------------

# helm: $HELM, else the one tests/peers/build.sh builds (pinned in tests/peers/versions), else PATH.
CHART=deploy/helm/tenantgate
HELM_VERSION="$(sed -n 's/^helm=//p' tests/peers/versions)"
HELM_CACHED="${TENANTGATE_PEERS:-${XDG_CACHE_HOME:-$HOME/.cache}/tenantgate/peers}/helm-$HELM_VERSION/helm"
HELM_BUILD="bash tests/peers/build.sh helm"
helm_bin=""
if [ -n "${HELM:-}" ]; then
    helm_bin="$HELM"
elif [ -x "$HELM_CACHED" ]; then
    helm_bin="$HELM_CACHED"
elif command -v helm >/dev/null; then
    helm_bin="$(command -v helm)"
fi

# One case: render, schemas, the config, the wiring (as for the kustomizations), what the chart adds.
#   name, mode, kinds expected, kustomization rendered above to compare with ("" for none), helm args
helm_case() {
    local name="$1" mode="$2" kinds="$3" mirror="$4"; shift 4
    local what="$CHART ($name)" out="$work/helm-$name.yaml"
    if ! "$helm_bin" template "tenantgate-$mode" "$CHART" --namespace tg-check --kube-version "$K8S_VERSION" \
        "$@" >"$out" 2>"$work/out"; then
        bad "$what: helm template $*"; sed 's/^/     | /' "$work/out"; return
    fi
    ok "$what: helm template${*:+ $*}: $(grep -c '^kind:' "$out") objects ($(grep '^kind:' "$out" | awk '{print $2}' | sort | paste -sd, -))"
    run "$what: valid for Kubernetes $K8S_VERSION (kubernetes-validate --strict)" \
        "$KV" --kubernetes-version "$K8S_VERSION" --strict --quiet "$out"
    CHECK_WHERE="$what" "$PY" deploy/check_chart.py objects "$out" "$kinds" || failed=1
    if [ -n "$mirror" ]; then
        if [ -s "$work/$mirror.yaml" ]; then
            CHECK_WHERE="$what" CHECK_MIRRORS="deploy/kubernetes/$mirror" \
                "$PY" deploy/check_chart.py mirrors "$out" "$work/$mirror.yaml" || failed=1
        else
            bad "$what: compare with deploy/kubernetes/$mirror: it did not render (above)"
        fi
    fi
    CHECK_WHERE="$what" helper configmap "$out" "$work/helm-$name-tenantgate.yaml"
    [ -s "$work/helm-$name-tenantgate.yaml" ] || return 0
    run "$what (ConfigMap tenantgate.yaml): tenantgate check --syntax-only" \
        "$TENANTGATE_BIN" check --syntax-only --config "$work/helm-$name-tenantgate.yaml"
    cp "$work/out" "$work/helm-$name-check.txt"
    CHECK_WHERE="$what" helper secrets "$out" "$work/helm-$name-tenantgate.yaml" "$work/helm-$name-check.txt"
    if [ "$mode" = sidecar ]; then
        CHECK_WHERE="$what" helper thanos-k8s "$out" "$work/helm-$name-tenantgate.yaml"
    fi
}

# Values the chart must refuse, before rendering anything: description, expected in the error, args.
helm_refuses() {
    local what="$1" expect="$2"; shift 2
    if "$helm_bin" template tenantgate "$CHART" "$@" >"$work/out" 2>&1; then
        bad "$CHART: $what: helm template succeeded, should have failed"
    elif ! grep -q -- "$expect" "$work/out"; then
        bad "$CHART: $what: helm template failed, but not naming $expect"; sed 's/^/     | /' "$work/out"
    else
        ok "$CHART: $what refused ($(grep -m1 -- "$expect" "$work/out" | sed 's/^[- ]*//; s/^Error: execution error at ([^)]*): //' | cut -c1-110))"
    fi
}

if [ -z "$helm_bin" ]; then
    if [ "${CI:-}" = true ] || [ "${CI:-}" = 1 ]; then
        bad "$CHART: helm $HELM_VERSION not found (\$HELM, $HELM_CACHED, PATH): build it with \`$HELM_BUILD\`"
    else
        skip "$CHART: NOT CHECKED: helm $HELM_VERSION not found (\$HELM, $HELM_CACHED, PATH); build it with \`$HELM_BUILD\` (a few minutes, cached)"
    fi
elif ! helm_v="$("$helm_bin" version --short 2>&1)"; then
    bad "$CHART: $helm_bin version: $helm_v"
else
    ok "tools: helm $helm_v ($helm_bin)"
    values="$CHART/ci"
    for args in "" "-f $values/gateway-values.yaml" "-f $values/gateway-options-values.yaml" \
                "-f $values/sidecar-options-values.yaml"; do
        # shellcheck disable=SC2086  # word splitting of args is meant
        run "$CHART: helm lint --strict${args:+ $args}" "$helm_bin" lint --strict "$CHART" $args
    done
    helm_case sidecar sidecar ConfigMap,Deployment,Service sidecar
    helm_case gateway gateway ConfigMap,Deployment,HorizontalPodAutoscaler,PodDisruptionBudget,Service gateway \
        -f "$values/gateway-values.yaml"
    helm_case gateway-options gateway ConfigMap,Deployment,PodDisruptionBudget,Service "" \
        -f "$values/gateway-options-values.yaml"
    helm_case sidecar-options sidecar ConfigMap,Deployment,Service "" -f "$values/sidecar-options-values.yaml"
    # HPA and PDB off: objects and schemas only (the rest is the gateway case's).
    out="$work/helm-gateway-fixed.yaml"
    if "$helm_bin" template tenantgate-gateway "$CHART" --namespace tg-check --kube-version "$K8S_VERSION" \
        -f "$values/gateway-values.yaml" --set gateway.autoscaling.enabled=false \
        --set gateway.podDisruptionBudget.enabled=false >"$out" 2>"$work/out"; then
        CHECK_WHERE="$CHART (gateway, no HPA, no PDB)" "$PY" deploy/check_chart.py objects "$out" \
            ConfigMap,Deployment,Service || failed=1
        run "$CHART (gateway, no HPA, no PDB): valid for Kubernetes $K8S_VERSION (kubernetes-validate --strict)" \
            "$KV" --kubernetes-version "$K8S_VERSION" --strict --quiet "$out"
    else
        bad "$CHART (gateway, no HPA, no PDB): helm template"; sed 's/^/     | /' "$work/out"
    fi
    # Config reloaded in place instead of rolled.
    out="$work/helm-in-place.yaml"
    if "$helm_bin" template tenantgate-gateway "$CHART" --namespace tg-check -f "$values/gateway-values.yaml" \
        --set rollOnConfigChange=false >"$out" 2>"$work/out"; then
        CHECK_WHERE="$CHART (rollOnConfigChange=false)" "$PY" deploy/check_chart.py in-place "$out" || failed=1
    else
        bad "$CHART (rollOnConfigChange=false): helm template"; sed 's/^/     | /' "$work/out"
    fi
    # Typos and wrong values fail instead of being ignored.
    printf 'replicaCont: 2\n' >"$work/typo-values.yaml"
    helm_refuses "values typo \`replicaCont: 2\` (-f)" replicaCont -f "$work/typo-values.yaml"
    helm_refuses "values typo --set gateway.autoscaling.maxReplica=3" maxReplica --set gateway.autoscaling.maxReplica=3
    helm_refuses "--set mode=gatway" mode --set mode=gatway
    helm_refuses "--set sidecar.thanos.extraArgs={--objstore.config-file=/x}" objstore \
        --set "sidecar.thanos.extraArgs={--objstore.config-file=/x}"
fi

# --- compose -------------------------------------------------------------------------------------

helper compose "$COMPOSE" "$work/compose-tenantgate.yaml"
[ -s "$work/compose-tenantgate.yaml" ] && tenantgate_check "$COMPOSE (tenantgate config)" "$work/compose-tenantgate.yaml"
if command -v promtool >/dev/null; then
    run "deploy/compose/prometheus.yml: promtool check config" promtool check config deploy/compose/prometheus.yml
else
    skip "deploy/compose/prometheus.yml: promtool not installed"
fi

# --- Dockerfile, systemd -------------------------------------------------------------------------

helper dockerfile Dockerfile
helper systemd "$UNIT"
if command -v systemd-analyze >/dev/null; then
    # Verify a copy whose binary path exists here; systemd-analyze checks that ExecStart is executable.
    sed "s|/usr/local/bin/tenantgate|$(realpath "$TENANTGATE_BIN")|g" "$UNIT" >"$work/tenantgate.service"
    run "$UNIT: systemd-analyze verify" systemd-analyze verify "$work/tenantgate.service"
else
    skip "$UNIT: systemd-analyze not installed"
fi

# -------------------------------------------------------------------------------------------------

if [ "$failed" != 0 ]; then
    echo "deploy/check.sh: FAILED ($((SECONDS - started))s)"
    exit 1
fi
echo "deploy/check.sh: all checks passed ($((SECONDS - started))s)"
