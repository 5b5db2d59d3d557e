#!/usr/bin/env python3
"""Offline consistency checks of deploy/ and the Dockerfile, called by deploy/check.sh.

Each subcommand prints one line per check, "ok   <what>" or "FAIL <what>: <why>", and exits 1
if any check failed. Needs PyYAML only.

  configmap RENDERED OUT       tenantgate.yaml out of a rendered kustomization's ConfigMap, and
                               the Deployment's wiring of it (mount, --config, probes, grace)
  thanos-k8s RENDERED CONFIG   the Thanos sidecar in rendered manifests against tenantgate CONFIG
  compose COMPOSE_FILE OUT     the compose stack: sidecar, remote_write, tenantgate build and config
                               (its tenantgate config is copied to OUT)
  dockerfile DOCKERFILE        build command, COPY sources, binary path, non-root user, pinned bases
  systemd UNIT                 TimeoutStopSec longer than shutdown_grace, reload by SIGHUP
"""

import fnmatch
import glob
import os
import re
import shlex
import sys
from urllib.parse import urlsplit

import yaml

CONFIG_PATH = "/etc/tenantgate/tenantgate.yaml"
ADMIN_PORT = 9091
DEFAULT_GRACE_S = 30.0

failures = 0


def ok(what):
    print(f"ok   {what}")


def fail(what, why):
    global failures
    failures += 1
    print(f"FAIL {what}: {why}")


def check(cond, what, why):
    if cond:
        ok(what)
    else:
        fail(what, why)
    return cond


# ---------------------------------------------------------------------------------------------
# tenantgate config helpers


def duration_seconds(text):
    """A Prometheus-style duration (30s, 1m30s, 500ms) in seconds; None if malformed."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    text = str(text).strip()
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    return sum(int(n) * units[u] for n, u in parts)


def shutdown_grace(cfg):
    raw = ((cfg or {}).get("server") or {}).get("shutdown_grace")
    return DEFAULT_GRACE_S if raw is None else duration_seconds(raw)


def listen_ports(cfg):
    listen = ((cfg or {}).get("server") or {}).get("listen", "127.0.0.1:9090")
    addrs = listen if isinstance(listen, list) else [listen]
    ports = set()
    for a in addrs:
        m = re.search(r":(\d+)$", str(a))
        if m:
            ports.add(int(m.group(1)))
    return ports


def listen_hosts(cfg):
    listen = ((cfg or {}).get("server") or {}).get("listen", "127.0.0.1:9090")
    addrs = listen if isinstance(listen, list) else [listen]
    return {str(a).rsplit(":", 1)[0].strip("[]") or "0.0.0.0" for a in addrs}


def prometheus_prefixes(cfg):
    """Path prefixes of the routes that carry a `prometheus:` emulation block."""
    out = []
    for r in (cfg or {}).get("routes") or []:
        if isinstance(r, dict) and r.get("prometheus") is not None:
            m = r.get("match") or {}
            p = m.get("path_prefix") or m.get("path")
            if p:
                out.append(p.rstrip("/") or "/")
    return out


def route_paths(cfg):
    out = []
    for r in (cfg or {}).get("routes") or []:
        m = (r or {}).get("match") or {}
        if m.get("path"):
            out.append(("path", m["path"]))
        if m.get("path_prefix"):
            out.append(("prefix", m["path_prefix"].rstrip("/") or "/"))
    return out


def path_routed(cfg, path):
    for kind, p in route_paths(cfg):
        if kind == "path" and path == p:
            return True
        if kind == "prefix" and (p == "/" or path == p or path.startswith(p + "/")):
            return True
    return False


def flag_value(args, flag):
    """Value of --flag=value or --flag value in an argument list."""
    for i, a in enumerate(args):
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
        if a == flag and i + 1 < len(args):
            return args[i + 1]
    return None


def all_strings(node):
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from all_strings(k)
            yield from all_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from all_strings(v)


def no_objstore(docs, where):
    bad = sorted({s for s in all_strings(docs) if "objstore.config" in s})
    check(not bad, f"{where}: no --objstore.config flag", f"found {bad}")


def check_sidecar_url(where, url, cfg, hosts):
    what = f"{where}: thanos sidecar --prometheus.url={url}"
    if not url:
        return fail(f"{where}: thanos sidecar --prometheus.url", "flag missing")
    u = urlsplit(url)
    prefixes = prometheus_prefixes(cfg)
    path = u.path.rstrip("/") or "/"
    if not prefixes:
        return fail(what, "the tenantgate config has no route with a `prometheus:` block")
    if path not in prefixes:
        return fail(what, f"path must be the prefix of a route with a `prometheus:` block: {prefixes}")
    if u.hostname not in hosts:
        return fail(what, f"host must be one of {sorted(hosts)}")
    port = u.port or (443 if u.scheme == "https" else 80)
    if port not in listen_ports(cfg):
        return fail(what, f"port {port} is not tenantgate's server.listen {sorted(listen_ports(cfg))}")
    ok(f"{what} ends in the emulated route prefix {path}")


# ---------------------------------------------------------------------------------------------
# Kubernetes


def load_all(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def workloads(docs):
    return [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet", "DaemonSet")]


def containers(w):
    return ((w.get("spec") or {}).get("template") or {}).get("spec", {}).get("containers") or []


def container_args(c):
    return [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]


def tenantgate_configmap(docs):
    for d in docs:
        if d.get("kind") == "ConfigMap" and "tenantgate.yaml" in (d.get("data") or {}):
            return d
    return None


def cmd_configmap(rendered, out):
    where = os.environ.get("CHECK_WHERE", rendered)
    docs = load_all(rendered)
    cm = tenantgate_configmap(docs)
    if not check(cm is not None, f"{where}: ConfigMap with tenantgate.yaml", "none rendered"):
        return
    with open(out, "w") as f:
        f.write(cm["data"]["tenantgate.yaml"])
    cfg = yaml.safe_load(cm["data"]["tenantgate.yaml"])
    cm_name = cm["metadata"]["name"]
    check(re.search(r"-[a-z0-9]{10}$", cm_name) is not None,
          f"{where}: ConfigMap name {cm_name} carries a content hash (config change rolls pods)",
          "no hash suffix: is it from configMapGenerator?")

    tg = [(w, c) for w in workloads(docs) for c in containers(w) if c.get("name") == "tenantgate"]
    if not check(len(tg) == 1, f"{where}: one tenantgate container", f"found {len(tg)}"):
        return
    w, c = tg[0]
    pod = w["spec"]["template"]["spec"]
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    mounts = [m for m in c.get("volumeMounts") or []
              if (vols.get(m["name"]) or {}).get("configMap", {}).get("name") == cm_name]
    check(any(m.get("mountPath") == os.path.dirname(CONFIG_PATH) for m in mounts),
          f"{where}: ConfigMap {cm_name} mounted at {os.path.dirname(CONFIG_PATH)}",
          f"mounts: {[(m['name'], m.get('mountPath')) for m in c.get('volumeMounts') or []]}")
    args = container_args(c)
    check(flag_value(args, "--config") == CONFIG_PATH,
          f"{where}: tenantgate runs --config={CONFIG_PATH}", f"args: {args}")

    admin = ((cfg or {}).get("admin") or {}).get("listen")
    check(admin is not None and str(admin).endswith(f":{ADMIN_PORT}"),
          f"{where}: admin.listen on :{ADMIN_PORT}", f"admin.listen is {admin!r}")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    for probe, path in (("livenessProbe", "/-/healthy"), ("readinessProbe", "/-/ready")):
        get = (c.get(probe) or {}).get("httpGet") or {}
        port = get.get("port")
        port = ports.get(port, port)
        check(get.get("path") == path and port == ADMIN_PORT,
              f"{where}: tenantgate {probe} GET {path} on {ADMIN_PORT}", f"got {get}")

    grace = shutdown_grace(cfg)
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    check(grace is not None and tgps > grace,
          f"{where}: terminationGracePeriodSeconds {tgps} > shutdown_grace {grace:g}s"
          if grace is not None else f"{where}: shutdown_grace",
          "the kubelet would SIGKILL tenantgate while it drains")

    sc = c.get("securityContext") or {}
    psc = pod.get("securityContext") or {}
    check((sc.get("runAsNonRoot") or psc.get("runAsNonRoot"))
          and sc.get("readOnlyRootFilesystem") is True
          and sc.get("allowPrivilegeEscalation") is False
          and "ALL" in ((sc.get("capabilities") or {}).get("drop") or [])
          and ((sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
               == "RuntimeDefault"),
          f"{where}: tenantgate securityContext (non-root, read-only root, no caps, seccomp)",
          f"container {sc}, pod {psc}")


def cmd_thanos_k8s(rendered, config):
    where = os.environ.get("CHECK_WHERE", rendered)
    docs = load_all(rendered)
    with open(config) as f:
        cfg = yaml.safe_load(f)
    sidecars = [c for w in workloads(docs) for c in containers(w)
                if "thanos" in str(c.get("image")) and "sidecar" in container_args(c)[:1]]
    if check(sidecars, f"{where}: Thanos sidecar container", "none found"):
        for c in sidecars:
            check_sidecar_url(where, flag_value(container_args(c), "--prometheus.url"),
                              cfg, {"127.0.0.1", "localhost"})
    no_objstore(docs, where)


# ---------------------------------------------------------------------------------------------
# compose


def compose_args(svc):
    cmd = svc.get("command") or []
    return shlex.split(cmd) if isinstance(cmd, str) else [str(a) for a in cmd]


def cmd_compose(path, out):
    base = os.path.dirname(os.path.abspath(path))
    with open(path) as f:
        doc = yaml.safe_load(f)
    services = doc.get("services") or {}

    # tenantgate: built from the top-level Dockerfile, config mounted where the image reads it.
    tg_name, tg = next(((n, s) for n, s in services.items() if "tenantgate" in n), (None, None))
    if not check(tg is not None, f"{path}: tenantgate service", "none"):
        return
    build = tg.get("build") or {}
    ctx = os.path.normpath(os.path.join(base, build.get("context", ".") if isinstance(build, dict) else build))
    dockerfile = os.path.join(ctx, build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
    check(os.path.isfile(dockerfile) and os.path.isfile(os.path.join(ctx, "Cargo.toml")),
          f"{path}: {tg_name} built from {os.path.relpath(dockerfile)}", f"no Dockerfile/Cargo.toml in {ctx}")
    cfg_file = None
    for v in tg.get("volumes") or []:
        src, _, rest = str(v).partition(":")
        if rest.split(":")[0] == CONFIG_PATH:
            cfg_file = os.path.normpath(os.path.join(base, src))
    if not check(cfg_file and os.path.isfile(cfg_file), f"{path}: {tg_name} mounts its config at {CONFIG_PATH}",
                 "no such volume, or its source file is missing"):
        return
    args = compose_args(tg)
    check(not args or flag_value(args, "--config") == CONFIG_PATH,
          f"{path}: {tg_name} runs --config={CONFIG_PATH}", f"command: {args}")
    with open(cfg_file) as f:
        cfg = yaml.safe_load(f)
    check(listen_hosts(cfg) & {"0.0.0.0", "::"},
          f"{path}: tenantgate listens on all interfaces (clients are other containers)",
          f"server.listen hosts {sorted(listen_hosts(cfg))}")
    with open(out, "w") as f:
        f.write(open(cfg_file).read())

    # Thanos sidecar -> tenantgate's emulated prefix, no object storage.
    sidecars = [(n, s) for n, s in services.items()
                if "thanos" in str(s.get("image")) and compose_args(s)[:1] == ["sidecar"]]
    if check(sidecars, f"{path}: Thanos sidecar service", "none found"):
        for n, s in sidecars:
            check_sidecar_url(f"{path} {n}", flag_value(compose_args(s), "--prometheus.url"), cfg, {tg_name})
    no_objstore(doc, path)

    # Prometheus remote_write -> a tenantgate route.
    for n, s in services.items():
        if "prometheus" not in str(s.get("image")):
            continue
        for v in s.get("volumes") or []:
            src, _, rest = str(v).partition(":")
            if not rest.split(":")[0].endswith((".yml", ".yaml")):
                continue
            with open(os.path.join(base, src)) as f:
                pcfg = yaml.safe_load(f) or {}
            for rw in pcfg.get("remote_write") or []:
                u = urlsplit(rw.get("url", ""))
                check(u.hostname == tg_name and (u.port or 80) in listen_ports(cfg) and path_routed(cfg, u.path),
                      f"{path} {n}: remote_write {rw.get('url')} reaches a tenantgate route",
                      f"host must be {tg_name}, port in {sorted(listen_ports(cfg))}, path routed")


# ---------------------------------------------------------------------------------------------
# Dockerfile


def dockerfile_instructions(path):
    """(instruction, arguments) pairs, with continuations joined and comments dropped."""
    out, buf = [], ""
    with open(path) as f:
        for line in f:
            s = line.rstrip("\n")
            if not buf and (not s.strip() or s.lstrip().startswith("#")):
                continue
            if buf and s.lstrip().startswith("#"):
                continue
            if s.endswith("\\"):
                buf += s[:-1] + " "
                continue
            buf += s
            instr, _, rest = buf.strip().partition(" ")
            out.append((instr.upper(), rest.strip()))
            buf = ""
    return out


def dockerignore_patterns(ctx):
    p = os.path.join(ctx, ".dockerignore")
    if not os.path.isfile(p):
        return []
    with open(p) as f:
        return [l.strip() for l in f if l.strip() and not l.startswith("#")]


def ignored(rel, patterns):
    verdict = False
    parts = rel.strip("/").split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pat in patterns:
        neg = pat.startswith("!")
        pat = pat.lstrip("!").strip("/")
        for pre in prefixes:
            if fnmatch.fnmatch(pre, pat) or (pat.startswith("**/") and fnmatch.fnmatch(pre.split("/")[-1], pat[3:])):
                verdict = not neg
                break
    return verdict


def json_or_shell(rest):
    rest = rest.strip()
    if rest.startswith("["):
        import json
        return json.loads(rest)
    return shlex.split(rest)


def cmd_dockerfile(path):
    ctx = os.path.dirname(os.path.abspath(path))
    patterns = dockerignore_patterns(ctx)
    ins = dockerfile_instructions(path)
    args = {}
    stages = []  # dicts: image, name, instructions
    for instr, rest in ins:
        if instr == "ARG" and not stages:
            k, _, v = rest.partition("=")
            args[k.strip()] = v.strip().strip('"')
        elif instr == "FROM":
            toks = [t for t in rest.split() if not t.startswith("--")]
            image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), toks[0])
            name = toks[2] if len(toks) >= 3 and toks[1].upper() == "AS" else None
            stages.append({"image": image, "name": name, "ins": []})
        elif stages:
            stages[-1]["ins"].append((instr, rest))
    if not check(len(stages) >= 2, f"{path}: multi-stage", f"{len(stages)} stage(s)"):
        return

    for st in stages:
        img = st["image"]
        tag = img.rsplit("/", 1)[-1].partition(":")[2] if "@" not in img else "digest"
        check(tag and tag != "latest" and "$" not in img, f"{path}: base image {img} pinned", "no tag, or latest")

    final = stages[-1]
    from_copies = []
    for st in stages:
        for instr, rest in st["ins"]:
            if instr not in ("COPY", "ADD"):
                continue
            toks = shlex.split(rest)
            opts = [t for t in toks if t.startswith("--")]
            paths = [t for t in toks if not t.startswith("--")]
            frm = next((o.split("=", 1)[1] for o in opts if o.startswith("--from=")), None)
            if frm:
                if st is final:
                    from_copies.append((frm, paths[:-1], paths[-1]))
                continue
            for src in paths[:-1]:
                hits = glob.glob(os.path.join(ctx, src))
                rel = os.path.normpath(src)
                if not hits:
                    fail(f"{path}: COPY {src}", "not in the build context")
                elif ignored(rel, patterns):
                    fail(f"{path}: COPY {src}", "excluded by .dockerignore")
                else:
                    ok(f"{path}: COPY {src} exists in the build context")

    # The builder stage: the one the final stage copies the binary from.
    bins = [(frm, srcs, dest) for frm, srcs, dest in from_copies if any("tenantgate" in s for s in srcs)]
    if not check(len(bins) == 1, f"{path}: final stage copies the tenantgate binary from a build stage",
                 f"COPY --from lines: {from_copies}"):
        return
    frm, srcs, dest = bins[0]
    builder = next((s for s in stages if s["name"] == frm), None)
    if builder is None and frm.isdigit() and int(frm) < len(stages):
        builder = stages[int(frm)]
    if not check(builder is not None, f"{path}: stage {frm} exists", "unknown stage"):
        return
    runs = [rest for instr, rest in builder["ins"] if instr == "RUN"]
    segments = [seg.strip() for r in runs for seg in re.split(r"&&|;|\|\|", r)]
    cargo = [seg for seg in segments if re.search(r"\bcargo\s+build\b", seg)]
    # Drop RUN options (--mount=...) that precede the command in the first segment.
    cargo = [" ".join(t for t in seg.split() if not t.startswith("--mount")) for seg in cargo]
    check(cargo == ["cargo build --release --locked"],
          f"{path}: stage {frm} runs exactly `cargo build --release --locked`", f"cargo commands: {cargo}")
    check("rust" in builder["image"], f"{path}: stage {frm} builds on {builder['image']}", "not a Rust image")

    # The copied path must be what the build produced: target/release/tenantgate under WORKDIR,
    # or where a RUN in the builder installs/copies that file.
    workdir = next((rest for instr, rest in reversed(builder["ins"]) if instr == "WORKDIR"), "/")
    produced = {os.path.normpath(os.path.join(workdir, "target/release/tenantgate"))}
    for seg in segments:
        toks = seg.split()
        if toks and toks[0] in ("cp", "install", "mv") and any(t.endswith("target/release/tenantgate") for t in toks):
            produced.add(os.path.normpath(os.path.join(workdir, toks[-1])))
    src = os.path.normpath(os.path.join(workdir, srcs[0]))
    check(src in produced, f"{path}: COPY --from={frm} {srcs[0]} is the built binary", f"the build produces {sorted(produced)}")

    final_ins = final["ins"]
    entry = next((json_or_shell(rest) for instr, rest in final_ins if instr == "ENTRYPOINT"), [])
    dest_bin = dest if not dest.endswith("/") else dest + "tenantgate"
    check(entry[:1] == [dest_bin], f"{path}: ENTRYPOINT runs {dest_bin}", f"ENTRYPOINT {entry}")
    cmd = next((json_or_shell(rest) for instr, rest in final_ins if instr == "CMD"), [])
    check(flag_value([str(c) for c in cmd], "--config") == CONFIG_PATH,
          f"{path}: CMD serves {CONFIG_PATH}", f"CMD {cmd}")
    users = [rest for instr, rest in final_ins if instr == "USER"]
    user = users[-1] if users else ("nonroot" if final["image"].endswith(":nonroot") else "root")
    check(user.split(":")[0] not in ("root", "0"), f"{path}: final stage runs as non-root ({user})",
          "no USER, or root")
    exposed = {p for instr, rest in final_ins if instr == "EXPOSE" for p in rest.split()}
    check({"9090", "9091"} <= exposed, f"{path}: EXPOSE 9090 9091", f"EXPOSE {sorted(exposed)}")


# ---------------------------------------------------------------------------------------------
# systemd


def cmd_systemd(path):
    keys = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if "=" in line and not line.startswith(("#", ";", "[")):
                k, _, v = line.partition("=")
                keys.setdefault(k.strip(), []).append(v.strip())
    stop = keys.get("TimeoutStopSec", ["90s"])[-1]
    secs = duration_seconds(stop if not stop.isdigit() else stop + "s")
    check(secs is not None and secs > DEFAULT_GRACE_S,
          f"{path}: TimeoutStopSec={stop} > default shutdown_grace {DEFAULT_GRACE_S:g}s", "too short")
    check(any("kill -HUP $MAINPID" in v for v in keys.get("ExecReload", [])),
          f"{path}: ExecReload sends SIGHUP", f"ExecReload {keys.get('ExecReload')}")
    for k, want in (("DynamicUser", "yes"), ("ProtectSystem", "strict"), ("NoNewPrivileges", "yes"),
                    ("Restart", "on-failure")):
        check(keys.get(k, [""])[-1] == want, f"{path}: {k}={want}", f"got {keys.get(k)}")


def main(argv):
    cmds = {"configmap": (cmd_configmap, 2), "thanos-k8s": (cmd_thanos_k8s, 2), "compose": (cmd_compose, 2),
            "dockerfile": (cmd_dockerfile, 1), "systemd": (cmd_systemd, 1)}
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != cmds[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        cmds[argv[1]][0](*argv[2:])
    except (OSError, yaml.YAMLError, ValueError, KeyError, IndexError, TypeError) as e:
        fail(f"{argv[1]} {' '.join(argv[2:])}", f"{type(e).__name__}: {e}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
