#!/usr/bin/env python3
"""Offline consistency checks of deploy/ and the Dockerfile, called by deploy/check.sh.

Each subcommand prints one line per check, "ok   <what>" or "FAIL <what>: <why>", and exits 1
if any check failed. Needs PyYAML only.

  configmap RENDERED OUT       tenantgate.yaml out of a rendered kustomization's (or the Helm
                               chart's) ConfigMap, and the Deployment's wiring of it (a config
                               change rolls the Pods: hash-named ConfigMap or checksum/config,
                               --config is that ConfigMap's file as mounted, probes, grace,
                               Service ports)
  secrets RENDERED CONFIG CHECK_OUTPUT
                               every file CONFIG names (TLS, htpasswd, tokens) is a Secret key the
                               Deployment mounts at that path, readable by the Pod's user;
                               CHECK_OUTPUT is `tenantgate check --syntax-only`'s, whose
                               "not read" lines must all be among them
  thanos-k8s RENDERED CONFIG   the Thanos sidecar in rendered manifests against tenantgate CONFIG
  migrate RENDERED HELP        the `tenantgate migrate` Indexed Job against HELP (the binary's
                               `migrate --help`): Indexed, completions = parallelism = the N of
                               --shard=$(JOB_COMPLETION_INDEX)/N, absolute --start/--end, memory
                               limit above --max-memory, every --*-file flag a mounted Secret key,
                               flags the binary knows, API rules the schemas miss
  compose COMPOSE_FILE OUT     the compose stack: sidecar, remote_write, tenantgate build and config
                               (its tenantgate config is copied to OUT)
  dockerfile DOCKERFILE        build command, COPY sources, binary path, non-root user, pinned bases
  systemd UNIT                 TimeoutStopSec longer than shutdown_grace, reload by SIGHUP
"""

import fnmatch
import glob
import hashlib
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


def octal(mode):
    return "0" + format(mode, "o") if isinstance(mode, int) else str(mode)


def volume_sources(vol):
    """The Secrets and ConfigMaps a volume holds, as (relpath, kind, name, key, mode, optional).

    relpath is None for a source without `items`: each of its keys is a file named after the key,
    and which keys exist is known only to the cluster."""
    out = []

    def add(kind, obj, name, default_mode):
        items = obj.get("items")
        for it in items or [None]:
            if it is None:
                out.append((None, kind, name, None, default_mode, bool(obj.get("optional"))))
            else:
                out.append((os.path.normpath(it["path"]), kind, name, it["key"],
                            it.get("mode", default_mode), bool(obj.get("optional"))))

    if vol.get("secret") is not None:
        sec = vol["secret"]
        add("Secret", sec, sec.get("secretName"), sec.get("defaultMode", 0o644))
    elif vol.get("configMap") is not None:
        cm = vol["configMap"]
        add("ConfigMap", cm, cm.get("name"), cm.get("defaultMode", 0o644))
    elif vol.get("projected") is not None:
        mode = vol["projected"].get("defaultMode", 0o644)
        for src in vol["projected"].get("sources") or []:
            if src.get("secret") is not None:
                add("Secret", src["secret"], src["secret"].get("name"), mode)
            elif src.get("configMap") is not None:
                add("ConfigMap", src["configMap"], src["configMap"].get("name"), mode)
    return out


KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")


def mounted_file(pod, c, path):
    """What a container sees at the absolute `path`: a dict with the mount (the deepest one that
    contains the path hides the others), its volume, and the Secret/ConfigMap key behind the file
    (kind, name, key, mode, optional), or with "why" when no key of a mounted object lands there."""
    path = os.path.normpath(path)
    vols = {v["name"]: v for v in pod.get("volumes") or []}
    best = None
    for m in c.get("volumeMounts") or []:
        mp = os.path.normpath(m.get("mountPath", ""))
        if (path == mp or path.startswith(mp.rstrip("/") + "/")) and (best is None or len(mp) > len(best[1])):
            best = (m, mp)
    if best is None:
        return {"why": f"no volumeMount contains {path}"}
    m, mp = best
    vol = vols.get(m["name"]) or {}
    rel = os.path.relpath(path, mp)
    if m.get("subPath"):
        rel = os.path.normpath(os.path.join(m["subPath"], rel))
    hit = {"mount": m, "mountPath": mp, "volume": m["name"], "subPath": m.get("subPath")}
    for relpath, kind, name, key, mode, optional in volume_sources(vol):
        if relpath == rel or (relpath is None and KEY_RE.match(rel) and rel not in (".", "..")):
            hit.update(kind=kind, name=name, key=key or rel, mode=mode, optional=optional)
            return hit
    kinds = [k for k in ("secret", "configMap", "projected", "emptyDir", "hostPath",
                         "persistentVolumeClaim") if k in vol]
    where = f"volume {m['name']} ({', '.join(kinds) or 'unknown'}) mounted at {mp}"
    hit["why"] = f"{where} has no file {rel}"
    return hit


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

    tg = [(w, c) for w in workloads(docs) for c in containers(w) if c.get("name") == "tenantgate"]
    # A config change rolls the Pods: kustomize's configMapGenerator names the ConfigMap after a
    # hash of its content; the Helm chart keeps the name and puts the config's sha256 on the Pod
    # template (checksum/config).
    checksum = (((tg[0][0]["spec"]["template"].get("metadata") or {}).get("annotations") or {})
                .get("checksum/config") if len(tg) == 1 else None)
    if checksum is not None:
        want = hashlib.sha256(cm["data"]["tenantgate.yaml"].encode()).hexdigest()
        check(checksum == want,
              f"{where}: Pod template checksum/config is the sha256 of ConfigMap {cm_name}'s "
              "tenantgate.yaml (config change rolls pods)", f"{checksum} != {want}")
    else:
        check(re.search(r"-[a-z0-9]{10}$", cm_name) is not None,
              f"{where}: ConfigMap name {cm_name} carries a content hash (config change rolls pods)",
              "no hash suffix: is it from configMapGenerator? (or a checksum/config Pod annotation)")

    if not check(len(tg) == 1, f"{where}: one tenantgate container", f"found {len(tg)}"):
        return
    w, c = tg[0]
    pod = w["spec"]["template"]["spec"]
    # --config must name the file the ConfigMap's tenantgate.yaml key becomes, as mounted.
    args = container_args(c)
    config_path = flag_value(args, "--config")
    if not (config_path and os.path.isabs(config_path)):
        fail(f"{where}: tenantgate runs --config=ABSOLUTE_PATH", f"args: {args}")
    else:
        hit = mounted_file(pod, c, config_path)
        mounts = [(m["name"], m.get("mountPath")) for m in c.get("volumeMounts") or []]
        if hit.get("why"):
            fail(f"{where}: --config={config_path} is the ConfigMap's tenantgate.yaml",
                 f"{hit['why']}; mounts: {mounts}")
        elif (hit["kind"], hit["name"], hit["key"]) != ("ConfigMap", cm_name, "tenantgate.yaml"):
            fail(f"{where}: --config={config_path} is the ConfigMap's tenantgate.yaml",
                 f"it is key {hit['key']} of {hit['kind']} {hit['name']} (volume {hit['volume']})")
        elif hit["subPath"]:
            fail(f"{where}: --config={config_path} is the ConfigMap's tenantgate.yaml",
                 f"mounted with subPath {hit['subPath']}: the kubelet never updates it, so in-place reloads see no change")
        else:
            ok(f"{where}: --config={config_path} is key tenantgate.yaml of ConfigMap {cm_name} "
               f"(volume {hit['volume']} at {hit['mountPath']})")

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

    # Services of these Pods: every port reaches a declared container port, and tenantgate's data
    # port is called https exactly when server.tls is set.
    tls = ((cfg or {}).get("server") or {}).get("tls") is not None
    labels = (w["spec"]["template"].get("metadata") or {}).get("labels") or {}
    pod_ports = {}
    for cc in containers(w):
        for p in cc.get("ports") or []:
            entry = (cc.get("name"), p.get("containerPort"))
            pod_ports[p.get("containerPort")] = entry
            if p.get("name"):
                pod_ports[p["name"]] = entry
    for svc in docs:
        sel = (svc.get("spec") or {}).get("selector") or {}
        if svc.get("kind") != "Service" or not sel or any(labels.get(k) != v for k, v in sel.items()):
            continue
        for sp in svc["spec"].get("ports") or []:
            tp = sp.get("targetPort", sp.get("port"))
            what = f"{where}: Service {svc['metadata']['name']} port {sp.get('name')} ({sp.get('port')}) -> {tp}"
            target = pod_ports.get(tp)
            if target is None:
                fail(what, "no container port of the Pod has that name or number")
            elif target[0] == "tenantgate" and target[1] in listen_ports(cfg):
                named = str(sp.get("name") or "").startswith("https")
                check(named == tls, f"{what}: tenantgate's {'TLS' if tls else 'plain HTTP'} data port",
                      "server.tls is set: name the port https" if tls
                      else "no server.tls: tenantgate speaks plain HTTP there, do not call it https")
            else:
                ok(f"{what}: {target[0]} port {target[1]}")

    grace = shutdown_grace(cfg)
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    check(grace is not None and tgps > grace,
          f"{where}: terminationGracePeriodSeconds {tgps} > shutdown_grace {grace:g}s"
          if grace is not None else f"{where}: shutdown_grace",
          "the kubelet would SIGKILL tenantgate while it drains")

    check_security_context(where, pod, c)


def check_security_context(where, pod, c):
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


def config_files(cfg):
    """Files and environment variables a tenantgate config reads besides itself, as
    (key path, file path or None, env var or None, public). Public files (CA bundles) may come
    from a ConfigMap; the rest must come from Secrets."""
    out = []
    cfg = cfg or {}
    tls = ((cfg.get("server") or {}).get("tls")) or {}
    for k in ("cert_file", "key_file", "client_ca_file"):
        if tls.get(k):
            out.append((f"server.tls.{k}", str(tls[k]), None, k == "client_ca_file"))
    for name, u in (cfg.get("upstreams") or {}).items():
        utls = (u or {}).get("tls") or {}
        for k in ("ca_file", "cert_file", "key_file"):
            if utls.get(k):
                out.append((f"upstreams.{name}.tls.{k}", str(utls[k]), None, k == "ca_file"))
    for i, ident in enumerate(cfg.get("identities") or []):
        ident = ident or {}
        ba = ident.get("basic_auth") or {}
        if ba.get("htpasswd_file"):
            out.append((f"identities[{i}].basic_auth.htpasswd_file", str(ba["htpasswd_file"]), None, False))
        bt = ident.get("bearer_token") or {}
        if bt.get("file"):
            out.append((f"identities[{i}].bearer_token.file", str(bt["file"]), None, False))
        if bt.get("env"):
            out.append((f"identities[{i}].bearer_token.env", None, str(bt["env"]), False))
    return out


def unread_by_check(check_output):
    """What `tenantgate check --syntax-only` said it did not read: file paths and $ENV names."""
    files, envs = set(), set()
    if not os.path.isfile(check_output):
        return files, envs
    with open(check_output) as f:
        for line in f:
            m = re.match(r"not read \(--syntax-only\): [^:]+: (.*)$", line.rstrip("\n"))
            if not m:
                continue
            for v in m.group(1).split(", "):
                if v.startswith("$"):
                    envs.add(v[1:])
                else:
                    files.add(v)
    return files, envs


def cmd_secrets(rendered, config, check_output):
    """Every file the config names exists in the Pod: a Secret key mounted at exactly that path."""
    where = os.environ.get("CHECK_WHERE", rendered)
    docs = load_all(rendered)
    with open(config) as f:
        cfg = yaml.safe_load(f)
    refs = config_files(cfg)

    # The syntax-only check lists what it skipped: anything this script does not know about is a
    # key added to tenantgate after config_files() was written.
    unread_files, unread_envs = unread_by_check(check_output)
    unknown = sorted((unread_files - {p for _, p, _, _ in refs if p})
                     | {"$" + e for e in unread_envs - {e for _, _, e, _ in refs if e}})
    check(not unknown, f"{where}: every file `tenantgate check --syntax-only` left unread is checked here",
          f"{unknown}: teach config_files() in deploy/check_manifests.py the config key that names it")
    if not refs:
        ok(f"{where}: the config reads no secret files")
        return

    tg = [(w, c) for w in workloads(docs) for c in containers(w) if c.get("name") == "tenantgate"]
    if len(tg) != 1:
        return fail(f"{where}: one tenantgate container", f"found {len(tg)}")
    w, c = tg[0]
    pod = w["spec"]["template"]["spec"]
    config_path = flag_value(container_args(c), "--config") or CONFIG_PATH
    base = os.path.dirname(config_path)

    by_path = {}
    for key, path, env, public in refs:
        if env is not None:
            e = next((e for e in c.get("env") or [] if e.get("name") == env), None)
            ref = ((e or {}).get("valueFrom") or {}).get("secretKeyRef")
            check(ref is not None, f"{where}: {key} ${env} comes from a Secret",
                  "no env entry with valueFrom.secretKeyRef by that name in the tenantgate container")
            continue
        full = os.path.normpath(path if os.path.isabs(path) else os.path.join(base, path))
        keys, pub = by_path.get(full, ([], True))
        by_path[full] = (keys + [key], pub and public)

    for full, (keys, public) in sorted(by_path.items()):
        check_mounted_file(f"{where}: {', '.join(keys)} {full}", pod, c, full, public)


def check_mounted_file(what, pod, c, full, public, reloaded=True):
    """The file at `full` is a key of a mounted Secret (or, if `public`, a ConfigMap), required,
    read-only and readable by the container's user. `reloaded`: the process re-reads it while
    running, so it must not come through a subPath mount (the kubelet never updates those)."""
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    uid = csc.get("runAsUser", psc.get("runAsUser"))
    fs_group = psc.get("fsGroup")
    hit = mounted_file(pod, c, full)
    if hit.get("why"):
        return fail(what, f"not mounted: {hit['why']}")
    src = f"{hit['kind']} {hit['name']} key {hit['key']} (volume {hit['volume']} at {hit['mountPath']})"
    mode = hit["mode"]
    readable = (uid == 0 or mode & 0o004
                or (mode & 0o040 and fs_group is not None))
    if hit["kind"] != "Secret" and not public:
        fail(what, f"is {src}: credentials and keys belong in a Secret")
    elif hit["optional"]:
        fail(what, f"is {src}, marked optional: the Pod would start without it")
    elif hit["subPath"] and reloaded:
        fail(what, f"is {src} through subPath {hit['subPath']}: the kubelet never updates "
                   "subPath mounts, so rotated secrets would never reach a reload")
    elif hit["mount"].get("readOnly") is not True:
        fail(what, f"is {src}: set readOnly: true on the mount")
    elif not readable:
        fail(what, f"is {src}, mode {octal(mode)}, owner root, group "
                   f"{fs_group if fs_group is not None else 'root (no fsGroup)'}: "
                   f"uid {uid if uid is not None else 'of the image'} cannot read it; "
                   "give the group read access and set the Pod's fsGroup")
    else:
        ok(f"{what} = {src}, mode {octal(mode)}" + (f", group {fs_group}" if fs_group is not None else ""))


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
# Kubernetes: `tenantgate migrate` as an Indexed Job


ENTRYPOINT = "/usr/local/bin/tenantgate"
MAX_SHARDS = 1024
SHARD_ARG_RE = re.compile(r"^\$\(JOB_COMPLETION_INDEX\)/(\d+)$")
VAR_REF_RE = re.compile(r"(\$+)\(([A-Za-z_][A-Za-z0-9_]*)\)")


def skip(what):
    print(f"skip {what}")


def migrate_help(path):
    """From `tenantgate migrate --help`: {flag: value name or None}, {flag: default}."""
    flags, defaults, last = {}, {}, None
    with open(path) as f:
        for line in f:
            m = re.match(r"^\s+(?:-\w, )?(--[A-Za-z0-9][\w.-]*)(?: <([^>]+)>)?\s*$", line)
            if m:
                last = m.group(1)
                flags[last] = m.group(2)
                continue
            d = re.search(r"\[default: ([^\]]*)\]", line)
            if d and last and last not in defaults:
                defaults[last] = d.group(1)
    return flags, defaults


def parse_cli(tokens, flags):
    """(flag, value or None) pairs and positional words of a command line, using the value names
    --help gives; a flag --help does not know takes the next word as its value unless it starts
    with a dash."""
    out, words, i = [], [], 0
    while i < len(tokens):
        t = tokens[i]
        if t.startswith("--"):
            name, eq, val = t.partition("=")
            takes = flags.get(name) is not None or (name not in flags and not eq and i + 1 < len(tokens)
                                                    and not tokens[i + 1].startswith("-"))
            if eq:
                out.append((name, val))
            elif takes and i + 1 < len(tokens):
                out.append((name, tokens[i + 1]))
                i += 1
            else:
                out.append((name, None))
        elif t.startswith("-") and len(t) > 1:
            out.append((t, tokens[i + 1] if i + 1 < len(tokens) else None))
            i += 1
        else:
            words.append(t)
        i += 1
    return out, words


def size_bytes(text):
    """A tenantgate size (256MiB, 4MiB, 1GB) in bytes; None if malformed."""
    m = re.fullmatch(r"(\d+)\s*(B|KiB|MiB|GiB|TiB|KB|kB|MB|GB|TB)?", str(text).strip())
    if not m:
        return None
    mult = {None: 1, "B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40,
            "KB": 10**3, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}[m.group(2)]
    return int(m.group(1)) * mult


def quantity_bytes(q):
    """A Kubernetes memory quantity (320Mi, 1G, 268435456, 1e9) in bytes; None if malformed."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(?:(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)|[eE](\d+))?", str(q).strip())
    if not m:
        return None
    mult = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40, "Pi": 1 << 50,
            "Ei": 1 << 60, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
            "E": 10**18}[m.group(2)]
    if m.group(3):
        mult = 10 ** int(m.group(3))
    return int(float(m.group(1)) * mult)


def absolute_time(text):
    """Unix seconds of an absolute --start/--end (RFC 3339 with an offset, or Unix seconds);
    None for `now`, `now-30d` or anything else."""
    t = str(text).strip()
    if re.fullmatch(r"\d+", t):
        return int(t)
    if not re.fullmatch(r"\d{4}-\d\d-\d\d[Tt ]\d\d:\d\d:\d\d(\.\d+)?([Zz]|[+-]\d\d:\d\d)", t):
        return None
    import datetime
    try:
        return datetime.datetime.fromisoformat(re.sub(r"[Zz]$", "+00:00", t)).timestamp()
    except ValueError:
        return None


def human_seconds(secs):
    secs = int(secs)
    d, rest = divmod(secs, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if v]
    return "".join(parts) or "0s"


def cmd_migrate(rendered, help_file):
    """The migrate Job: Indexed, one Pod per --shard=$(JOB_COMPLETION_INDEX)/N, absolute range,
    memory above --max-memory, every file flag a mounted Secret key, `migrate` as the command."""
    where = os.environ.get("CHECK_WHERE", rendered)
    docs = load_all(rendered)
    flags, defaults = migrate_help(help_file)
    if not check("--max-memory" in flags and "--start" in flags,
                 f"{where}: `tenantgate migrate --help` lists its flags", f"could not parse {help_file}"):
        return
    jobs = [d for d in docs if d.get("kind") == "Job"]
    if not check(len(jobs) == 1, f"{where}: one Job", f"found {len(jobs)}"):
        return
    job = jobs[0]
    spec = job.get("spec") or {}
    pod = (spec.get("template") or {}).get("spec") or {}
    tg = [c for c in pod.get("containers") or [] if c.get("name") == "tenantgate"]
    if not check(len(tg) == 1, f"{where}: one tenantgate container in Job {job['metadata']['name']}",
                 f"found {len(tg)}"):
        return
    c = tg[0]

    # The command: the image's ENTRYPOINT with `migrate` first.
    command = [str(a) for a in c.get("command") or []]
    args = [str(a) for a in c.get("args") or []]
    if command:
        # A command replaces the ENTRYPOINT: it must be the binary itself.
        args = command[1:] + args
    check((not command or command[:1] == [ENTRYPOINT]) and args[:1] == ["migrate"],
          f"{where}: the container runs `tenantgate migrate` (args start with migrate)",
          f"command {command or '(image ENTRYPOINT)'}, args {args[:2]}...")
    parsed, words = parse_cli(args[1:], flags)
    given = {}
    for name, val in parsed:
        given.setdefault(name, []).append(val)

    def one(name):  # the value that counts: the last one given
        return (given.get(name) or [None])[-1]

    # Every flag is one the binary knows, with a value where it takes one.
    unknown = sorted(n for n in given if n not in flags)
    misused = sorted(n for n, vals in given.items() if n in flags
                     and (flags[n] is None) != all(v is None for v in vals))
    newer = [n for n in unknown if n == "--shard"]
    unknown = [n for n in unknown if n != "--shard"]
    check(not unknown and not misused and not words,
          f"{where}: every flag is one `tenantgate migrate --help` lists, a value given where it takes one",
          "; ".join(x for x in (f"unknown {unknown}" if unknown else "",
                                f"value missing or not taken: {misused}" if misused else "",
                                f"stray words {words}" if words else "") if x))
    if newer:
        skip(f"{where}: --shard against --help: this tenantgate binary predates --shard "
             "(rebuild it, or set TENANTGATE_BIN, to check the flag against it)")

    # Indexed, one Pod per shard, all at once.
    check(spec.get("completionMode") == "Indexed", f"{where}: completionMode Indexed",
          f"completionMode {spec.get('completionMode')!r}: JOB_COMPLETION_INDEX is only set in Indexed Jobs")
    shards = given.get("--shard") or []
    m = SHARD_ARG_RE.match(shards[0] or "") if len(shards) == 1 else None
    if not m:
        fail(f"{where}: --shard=$(JOB_COMPLETION_INDEX)/N",
             f"got {shards or 'no --shard'}: each Pod must copy the part its index names")
    else:
        n = int(m.group(1))
        completions, parallelism = spec.get("completions"), spec.get("parallelism", 1)
        check(0 < n <= MAX_SHARDS and completions == n and parallelism == n,
              f"{where}: completions {completions} = parallelism {parallelism} = N of --shard={shards[0]}",
              f"need completions == parallelism == N (1 to {MAX_SHARDS}): an index >= N is refused, "
              "an index never run leaves its part uncopied, and parallelism < N runs the shards "
              "(and the following last one) one after another")
    env = {e.get("name"): e for e in c.get("env") or []}
    refs = {name for dollars, name in VAR_REF_RE.findall(" ".join(args)) if len(dollars) % 2}
    # The Job controller adds JOB_COMPLETION_INDEX to every container of an Indexed Job's Pods.
    injected = {"JOB_COMPLETION_INDEX"} if spec.get("completionMode") == "Indexed" else set()
    missing = sorted(r for r in refs if r not in env and r not in injected)
    idx = env.get("JOB_COMPLETION_INDEX")
    idx_ok = idx is None or "job-completion-index" in str(
        (((idx.get("valueFrom") or {}).get("fieldRef")) or {}).get("fieldPath", ""))
    check(not missing and idx_ok,
          f"{where}: every $(VAR) in args is set: {', '.join(sorted(refs)) or 'none'}"
          + (" (added by the Job controller)" if "JOB_COMPLETION_INDEX" in refs and idx is None
             and "JOB_COMPLETION_INDEX" not in missing else ""),
          f"not in the container's env (the kubelet leaves them as typed): {missing}" if missing
          else "JOB_COMPLETION_INDEX is declared, but not as a fieldRef to "
               "batch.kubernetes.io/job-completion-index: every shard would get the same index")

    # An absolute range, the same for every shard.
    start, end = one("--start"), one("--end")
    t0, t1 = absolute_time(start) if start else None, absolute_time(end) if end else None
    if t0 is None or t1 is None:
        fail(f"{where}: --start and --end absolute",
             f"--start={start}, --end={end}: --shard needs both, as RFC 3339 (with Z or an offset) "
             "or Unix seconds; now-relative times differ between shards started at different moments")
    elif t0 >= t1:
        fail(f"{where}: --start={start} before --end={end}", "nothing to copy")
    else:
        n = int(m.group(1)) if m else 1
        ok(f"{where}: --start={start} and --end={end} are absolute "
           f"({n} parts of {human_seconds((t1 - t0) / n)})")
    if "--follow" in given and end is not None and not shards:
        fail(f"{where}: --follow with --end", "only with --shard (there the last shard follows)")

    # Memory: the limit above what the migration may use.
    mm_text = one("--max-memory") or defaults.get("--max-memory")
    mm = size_bytes(mm_text) if mm_text else None
    res = c.get("resources") or {}
    lim_text = (res.get("limits") or {}).get("memory")
    req_text = (res.get("requests") or {}).get("memory")
    lim = quantity_bytes(lim_text) if lim_text is not None else None
    req = quantity_bytes(req_text) if req_text is not None else None
    src = "" if one("--max-memory") else " (its default)"
    if mm is None:
        fail(f"{where}: --max-memory", f"cannot read {mm_text!r}")
    else:
        check(lim is not None and lim > mm, f"{where}: memory limit {lim_text} > --max-memory {mm_text}{src}",
              "no memory limit" if lim_text is None
              else "the kernel would OOM-kill tenantgate before --max-memory shrinks its slabs")
        check(req is not None and req >= mm, f"{where}: memory request {req_text} >= --max-memory {mm_text}{src}",
              "the scheduler would not reserve what the migration may use")

    # Files: credentials from mounted Secrets (CA bundles may be ConfigMaps).
    file_flags = sorted(n for n in given
                        if flags.get(n) == "FILE" or (n not in flags and n.endswith("-file")))
    for name in file_flags:
        for val in given[name]:
            what = f"{where}: {name}={val}"
            if not val or not os.path.isabs(val):
                fail(what, "give an absolute path, where a Secret is mounted")
                continue
            public = name.endswith("ca-file") or name == "--config"
            check_mounted_file(what, pod, c, os.path.normpath(val), public, reloaded=False)
    if not file_flags:
        ok(f"{where}: no credential files (none of the --*-file flags)")
    inline = sorted({f"{n}={v.split(':', 1)[0]}: ..." for n in ("--to-header", "--from-header")
                     for v in given.get(n) or [] if v and v.split(":", 1)[0].strip().lower()
                     in ("authorization", "proxy-authorization")})
    check(not inline, f"{where}: no credentials on the command line (headers)",
          f"{inline}: use --to-bearer-token-file/--to-basic-auth-password-file (from a Secret); "
          "args are visible to anyone who can read the Job")

    # What the API server checks but the schemas do not.
    restart = pod.get("restartPolicy")
    pfp = spec.get("podFailurePolicy")
    needs_never = [f for f in ("backoffLimitPerIndex", "podFailurePolicy") if spec.get(f) is not None]
    check(restart == "Never" if needs_never else restart in ("Never", "OnFailure"),
          f"{where}: restartPolicy Never, as {' and '.join(needs_never)} require" if needs_never
          else f"{where}: restartPolicy {restart}",
          f"it is {restart}" if needs_never else "a Job's must be Never or OnFailure")
    if pfp is not None:
        names = {cc.get("name") for cc in pod.get("containers") or []}
        problems = []
        for i, r in enumerate(pfp.get("rules") or []):
            codes = r.get("onExitCodes") or {}
            if codes.get("containerName") and codes["containerName"] not in names:
                problems.append(f"rule {i}: no container {codes['containerName']}")
            if codes.get("operator") == "In" and 0 in (codes.get("values") or []):
                problems.append(f"rule {i}: exit code 0 cannot be matched with In")
            if r.get("action") == "FailIndex" and spec.get("backoffLimitPerIndex") is None:
                problems.append(f"rule {i}: FailIndex needs backoffLimitPerIndex")
        if spec.get("podReplacementPolicy") not in (None, "Failed"):
            problems.append(f"podReplacementPolicy {spec['podReplacementPolicy']}: "
                            "only Failed is allowed with podFailurePolicy")
        check(not problems,
              f"{where}: podFailurePolicy ({len(pfp.get('rules') or [])} rules) consistent with the Job",
              "; ".join(problems))

    check_security_context(where, pod, c)


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
    cmds = {"configmap": (cmd_configmap, 2), "secrets": (cmd_secrets, 3), "thanos-k8s": (cmd_thanos_k8s, 2),
            "migrate": (cmd_migrate, 2), "compose": (cmd_compose, 2),
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
