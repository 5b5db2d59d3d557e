#!/usr/bin/env python3
"""Checks of the Helm chart deploy/helm/tenantgate, called by deploy/check.sh on `helm template`
output. The wiring checks the kustomizations get (configmap, secrets, thanos-k8s) run on the same
output through deploy/check_manifests.py; these are what only the chart needs.

One line per check, "ok   <what>" or "FAIL <what>: <why>"; exits 1 if any check failed. Needs
PyYAML only.

  objects RENDERED KINDS       the rendered kinds are exactly KINDS (comma-separated, repeats
                               allowed); a HorizontalPodAutoscaler targets the Deployment, which
                               then has no replicas; a PodDisruptionBudget and the Service select
                               the Pods and nothing else of the release; every object is in the
                               release's namespace
  mirrors RENDERED KUSTOMIZED  with its default values the chart renders what the kustomization
                               does (KUSTOMIZED: its `kustomize build` output): the same config,
                               images, arguments, resources, effective security context, probes,
                               grace period, scrape annotations, Service ports, secret volume,
                               rollout strategy, HPA and PDB. Names, labels and mount paths differ
  in-place RENDERED            rendered with rollOnConfigChange=false: no checksum/config, and the
                               ConfigMap is mounted as a directory (the kubelet updates it, so
                               POST /-/reload sees the change)
"""

import os
import sys

import yaml

sys.dont_write_bytecode = True  # no __pycache__ in the checkout
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_manifests as cm  # noqa: E402  (the shared helpers and the ok/FAIL counter)

check, ok, fail = cm.check, cm.ok, cm.fail


def where():
    return os.environ.get("CHECK_WHERE", "chart")


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind):
    found = by_kind(docs, kind)
    return found[0] if len(found) == 1 else None


def pod_labels(deploy):
    return ((deploy["spec"]["template"].get("metadata") or {}).get("labels")) or {}


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def cmd_objects(rendered, kinds):
    w = where()
    docs = cm.load_all(rendered)
    want = sorted(k for k in kinds.split(",") if k)
    got = sorted(d.get("kind") for d in docs)
    if not check(got == want, f"{w}: renders {', '.join(want)}", f"got {got}"):
        return
    namespaces = {(d.get("metadata") or {}).get("namespace") for d in docs}
    check(len(namespaces) == 1 and None not in namespaces,
          f"{w}: every object in the release's namespace ({', '.join(sorted(map(str, namespaces)))})",
          f"namespaces {namespaces}: set metadata.namespace from .Release.Namespace")
    deploy = one(docs, "Deployment")
    labels = pod_labels(deploy)
    sel = deploy["spec"]["selector"].get("matchLabels") or {}
    check(selects(sel, labels), f"{w}: Deployment selector ({', '.join(sorted(sel))}) matches its Pod labels",
          f"selector {sel}, labels {labels}")

    hpa = one(docs, "HorizontalPodAutoscaler")
    replicas = deploy["spec"].get("replicas")
    if hpa is not None:
        ref = hpa["spec"]["scaleTargetRef"]
        check(ref.get("kind") == "Deployment" and ref.get("name") == deploy["metadata"]["name"]
              and ref.get("apiVersion") == "apps/v1",
              f"{w}: HPA {hpa['metadata']['name']} scales Deployment {deploy['metadata']['name']}", f"target {ref}")
        check(replicas is None, f"{w}: Deployment has no replicas (the HPA owns them)",
              f"replicas: {replicas} would be reset to it on every helm upgrade")
        spec = hpa["spec"]
        check(1 <= spec.get("minReplicas", 1) <= spec["maxReplicas"],
              f"{w}: HPA {spec.get('minReplicas', 1)} to {spec['maxReplicas']} Pods", "min > max")
        metrics = [m for m in spec.get("metrics") or [] if m.get("type") == "Resource"]
        has_request = all(((cc.get("resources") or {}).get("requests") or {}).get("cpu")
                          for cc in cm.containers(deploy))
        check(not metrics or has_request, f"{w}: HPA on CPU utilization, every container requests CPU",
              "utilization is relative to the request: without one the HPA cannot compute it")
    else:
        check(isinstance(replicas, int) and replicas >= 1, f"{w}: Deployment replicas {replicas} (no HPA)",
              "no HPA, so the Deployment needs replicas")

    pdb = one(docs, "PodDisruptionBudget")
    if pdb is not None:
        spec = pdb["spec"]
        psel = (spec.get("selector") or {}).get("matchLabels") or {}
        check(selects(psel, labels), f"{w}: PDB {pdb['metadata']['name']} selects the Pods", f"selector {psel}")
        budget = {k: spec[k] for k in ("minAvailable", "maxUnavailable") if k in spec}
        check(len(budget) == 1, f"{w}: PDB sets one of minAvailable and maxUnavailable ({budget})",
              "the API refuses both, and a PDB with neither protects nothing")
        floor = hpa["spec"].get("minReplicas", 1) if hpa is not None else replicas
        mina = spec.get("minAvailable")
        if isinstance(mina, int):
            check(mina < (floor or 0), f"{w}: PDB minAvailable {mina} below the {floor} Pods there are at least",
                  "no Pod could be evicted: node drains would hang")
    for svc in by_kind(docs, "Service"):
        ssel = svc["spec"].get("selector") or {}
        check(selects(ssel, labels) and "app.kubernetes.io/instance" in ssel,
              f"{w}: Service {svc['metadata']['name']} selects this release's Pods", f"selector {ssel}")


# ---------------------------------------------------------------------------------------------
# mirrors: chart defaults vs the kustomization


def effective_security(pod, c):
    """The security settings a container runs with: its own over the Pod's (fsGroup aside, which
    the chart sets for secret files in both modes)."""
    psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
    out = {}
    for k in ("runAsUser", "runAsGroup", "runAsNonRoot", "seccompProfile"):
        if k in csc or k in psc:
            out[k] = csc.get(k, psc.get(k))
    for k in ("allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities", "privileged"):
        if k in csc:
            out[k] = csc[k]
    return out


def probe(c, name):
    p = dict(c.get(name) or {})
    get = dict(p.pop("httpGet", {}) or {})
    ports = {pp.get("name"): pp.get("containerPort") for pp in c.get("ports") or []}
    get["port"] = ports.get(get.get("port"), get.get("port"))
    p["httpGet"] = get
    return p


def container_view(pod, c):
    args = [a for a in cm.container_args(c) if not a.startswith("--config=")]
    image = c.get("image", "")
    return {
        "image": image,
        "args (but --config)": args,
        "resources": c.get("resources"),
        "security context (effective)": effective_security(pod, c),
        "livenessProbe": probe(c, "livenessProbe"),
        "readinessProbe": probe(c, "readinessProbe"),
        "ports": sorted(p.get("containerPort") for p in c.get("ports") or []),
        "env": c.get("env"),
    }


def service_view(svc, deploy):
    ports = {}
    for c in cm.containers(deploy):
        for p in c.get("ports") or []:
            ports[p.get("name")] = p.get("containerPort")
    return sorted((p.get("name"), p.get("port"), ports.get(p.get("targetPort"), p.get("targetPort")))
                  for p in svc["spec"].get("ports") or [])


def secret_sources(pod):
    out = []
    for v in pod.get("volumes") or []:
        for relpath, kind, name, key, mode, optional in cm.volume_sources(v):
            if kind == "Secret":
                out.append((name, key, relpath, oct(mode), optional))
    return sorted(out)


def first_diff(a, b, path=""):
    """Where two parsed documents first differ, and how: a short text for a FAIL line."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in b:
                return f"{path}.{k}: only in the chart"
            if k not in a:
                return f"{path}.{k}: only in the kustomization"
            d = first_diff(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for n, (x, y) in enumerate(zip(a, b)):
            d = first_diff(x, y, f"{path}[{n}]")
            if d:
                return d
        return None
    if a != b:
        short = lambda v: (repr(v)[:120] + "...") if len(repr(v)) > 120 else repr(v)
        return f"{path or 'value'}: chart {short(a)}, kustomization {short(b)}"
    return None


def cmd_mirrors(rendered, kustomized):
    w = where()
    chart, kust = cm.load_all(rendered), cm.load_all(kustomized)

    compared, differ = [], []

    def same(what, a, b):
        compared.append(what)
        if a != b:
            differ.append(what)
            fail(f"{w}: {what} as the kustomization", first_diff(a, b))

    ca, ka = cm.tenantgate_configmap(chart), cm.tenantgate_configmap(kust)
    same("tenantgate.yaml (parsed)", yaml.safe_load(ca["data"]["tenantgate.yaml"]),
         yaml.safe_load(ka["data"]["tenantgate.yaml"]))
    cd, kd = one(chart, "Deployment"), one(kust, "Deployment")
    cpod, kpod = cd["spec"]["template"]["spec"], kd["spec"]["template"]["spec"]
    cc = {c["name"]: c for c in cpod["containers"]}
    kc = {c["name"]: c for c in kpod["containers"]}
    same("containers", sorted(cc), sorted(kc))
    for name in sorted(set(cc) & set(kc)):
        cv, kv = container_view(cpod, cc[name]), container_view(kpod, kc[name])
        for aspect in cv:
            same(f"container {name}: {aspect}", cv[aspect], kv[aspect])
    for k in ("terminationGracePeriodSeconds", "automountServiceAccountToken", "enableServiceLinks"):
        same(f"Pod {k}", cpod.get(k), kpod.get(k))
    ann = lambda d: {k: v for k, v in ((d["spec"]["template"].get("metadata") or {}).get("annotations") or {}).items()
                     if k.startswith("prometheus.io/")}
    same("Pod prometheus.io annotations", ann(cd), ann(kd))
    same("secret volume (Secret, key, path, mode, optional)", secret_sources(cpod), secret_sources(kpod))
    for k in ("replicas", "strategy", "revisionHistoryLimit"):
        same(f"Deployment {k}", cd["spec"].get(k), kd["spec"].get(k))
    strip = lambda tscs: [{k: v for k, v in t.items() if k != "labelSelector"} for t in tscs or []]
    same("topologySpreadConstraints (but selector)", strip(cpod.get("topologySpreadConstraints")),
         strip(kpod.get("topologySpreadConstraints")))
    cs, ks = one(chart, "Service"), one(kust, "Service")
    same("Service ports (name, port, container port)", service_view(cs, cd), service_view(ks, kd))
    same("Service type", cs["spec"].get("type"), ks["spec"].get("type"))
    for kind in ("HorizontalPodAutoscaler", "PodDisruptionBudget"):
        co, ko = one(chart, kind), one(kust, kind)
        if co is None or ko is None:
            same(f"{kind} present", co is not None, ko is not None)
            continue
        drop = ("scaleTargetRef", "selector")
        same(f"{kind} spec (but target and selector)",
             {k: v for k, v in co["spec"].items() if k not in drop},
             {k: v for k, v in ko["spec"].items() if k not in drop})
    if not differ:
        ok(f"{w}: with its default values the chart renders what {os.environ.get('CHECK_MIRRORS', kustomized)} "
           f"does ({len(compared)} aspects: config, images, args, resources, effective securityContext, "
           "probes, grace, scrape annotations, secret volume, rollout, Service ports, HPA, PDB)")


def cmd_in_place(rendered):
    w = where()
    docs = cm.load_all(rendered)
    deploy = one(docs, "Deployment")
    ann = (deploy["spec"]["template"].get("metadata") or {}).get("annotations") or {}
    check("checksum/config" not in ann, f"{w}: no checksum/config on the Pod template (config changes do not roll)",
          "rollOnConfigChange=false still sets it")
    cmap = cm.tenantgate_configmap(docs)
    tg = next(c for c in cm.containers(deploy) if c.get("name") == "tenantgate")
    path = cm.flag_value(cm.container_args(tg), "--config")
    hit = cm.mounted_file(deploy["spec"]["template"]["spec"], tg, path)
    check(not hit.get("why") and hit.get("kind") == "ConfigMap" and hit.get("name") == cmap["metadata"]["name"]
          and not hit.get("subPath"),
          f"{w}: --config={path} is ConfigMap {cmap['metadata']['name']}, mounted as a directory "
          "(the kubelet updates it; POST /-/reload reads it)", f"{hit}")


def main(argv):
    cmds = {"objects": (cmd_objects, 2), "mirrors": (cmd_mirrors, 2), "in-place": (cmd_in_place, 1)}
    if len(argv) < 2 or argv[1] not in cmds or len(argv) - 2 != cmds[argv[1]][1]:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        cmds[argv[1]][0](*argv[2:])
    except (OSError, yaml.YAMLError, ValueError, KeyError, IndexError, TypeError, AttributeError,
            StopIteration) as e:
        fail(f"{argv[1]} {' '.join(argv[2:])}", f"{type(e).__name__}: {e}")
    return 1 if cm.failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
