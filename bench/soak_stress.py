#!/usr/bin/env python3
"""The soak's stressors one at a time (issue #12: is RSS growth a leak or the allocator?).

  python3 bench/soak_stress.py --reloads 50000 [--rotate-every 10]   reloads back to back
  python3 bench/soak_stress.py --secs 240 --rate 200                  TLS HTTP/1.1 traffic only
  ... --restart-every 5 --reload-every 1 --rotate-every 10 --burst-at 30   combined, plus a burst
      of --burst-threads clients on fresh TLS connections for 10 s
  ... --env MALLOC_ARENA_MAX=1                                        allocator knobs for the gate

Prints one JSON line per sample (VmRSS, RssAnon, threads, open fds, metric series count) every
--sample-every seconds (or reloads), and which metric families changed size. Needs openssl and
Python's bcrypt; BIN= picks the binary (target/release/tenantgate by default). HTTP/2 is not
driven here (the stdlib has no client): tests/soak does that.
"""
import argparse, base64, http.client, json, os, socket, ssl, subprocess, sys, threading, time
import http.server, shutil, socketserver, tempfile, bcrypt

D = tempfile.mkdtemp(prefix="tenantgate-stress-")
BIN = os.environ.get("BIN", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "tenantgate"))


def sh(*a):
    subprocess.run(a, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def pki(serial):
    if not os.path.exists(f"{D}/ca.pem"):
        sh("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
           "-keyout", f"{D}/ca.key", "-out", f"{D}/ca.pem", "-subj", "/CN=drv CA", "-days", "2")
    sh("openssl", "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
       "-keyout", f"{D}/s.key", "-out", f"{D}/s.csr", "-subj", "/CN=tenantgate")
    with open(f"{D}/ext", "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    sh("openssl", "x509", "-req", "-in", f"{D}/s.csr", "-CA", f"{D}/ca.pem", "-CAkey", f"{D}/ca.key",
       "-set_serial", str(serial), "-days", "2", "-extfile", f"{D}/ext", "-out", f"{D}/server.pem.new")
    os.replace(f"{D}/s.key", f"{D}/server.key")
    os.replace(f"{D}/server.pem.new", f"{D}/server.pem")


def config(up_port, v):
    tenant = "soak-even" if v % 2 == 0 else "soak-odd"
    label = "even" if v % 2 == 0 else "odd"
    return f"""server:
  listen: 127.0.0.1:0
  shutdown_grace: 2s
  max_failed_logins: 0
  tls:
    cert_file: {D}/server.pem
    key_file: {D}/server.key
admin:
  listen: 127.0.0.1:0
upstreams:
  mimir:
    url: http://127.0.0.1:{up_port}
    timeouts: {{ connect: 1s, response_header: 5s, idle: 5s }}
identities:
  - name: soak
    tenant: soak-auth
    basic_auth: {{ user: soak-user, htpasswd_file: {D}/htpasswd }}
routes:
  - name: query
    match: {{ path_prefix: /prometheus }}
    upstream: mimir
    tenant: {tenant}
    prometheus:
      external_labels: {{ cluster: soak, epoch: {label} }}
  - name: push
    match: {{ path: /api/v1/push, methods: [POST] }}
    upstream: mimir
    tenant: soak-writer
  - name: auth
    match: {{ path_prefix: /auth }}
    upstream: mimir
    tenant: {{ from: identity, identities: [soak] }}
  - name: other
    match: {{ path_prefix: /other }}
    upstream: mimir
    tenant: soak-b
"""


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        out = json.dumps({"path": self.path, "org": self.headers.get("X-Scope-OrgID"), "n": len(body)}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_HEAD = _any


class Srv(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False


class Upstream:
    def __init__(self):
        self.srv = Srv(("127.0.0.1", 0), Echo)
        self.port = self.srv.server_address[1]
        self._start()

    def _start(self):
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def crash(self):
        self.srv.shutdown()
        self.srv.server_close()

    def again(self):
        self.srv = Srv(("127.0.0.1", self.port), Echo)
        self._start()


def status(pid):
    out = {}
    for l in open(f"/proc/{pid}/status"):
        k, _, v = l.partition(":")
        if k in ("VmRSS", "Threads", "RssAnon"):
            out[k] = v.split()[0]
    for l in open(f"/proc/{pid}/smaps_rollup"):
        if l.startswith("Anonymous:"):
            out["Anon"] = l.split()[1]
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    return out


def series(admin):
    c = http.client.HTTPConnection("127.0.0.1", admin, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    c.close()
    lines = [l for l in text.splitlines() if l and not l.startswith("#")]
    fam = {}
    for l in lines:
        name = l.split("{")[0].split(" ")[0]
        fam[name] = fam.get(name, 0) + 1
    return len(lines), fam


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reloads", type=int, default=0)
    ap.add_argument("--rotate-every", type=int, default=0)
    ap.add_argument("--secs", type=float, default=0)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--fresh-ratio", type=float, default=0.2)
    ap.add_argument("--restart-every", type=float, default=0)
    ap.add_argument("--sample-every", type=float, default=30)
    ap.add_argument("--env", action="append", default=[])
    ap.add_argument("--tag", default="run")
    ap.add_argument("--reload-every", type=float, default=0)
    ap.add_argument("--burst-at", type=float, default=0)
    ap.add_argument("--burst-threads", type=int, default=64)
    a = ap.parse_args()
    serial = 1000
    pki(serial)
    h = bcrypt.hashpw(b"soak-password-1", bcrypt.gensalt(rounds=4)).decode()
    open(f"{D}/htpasswd", "w").write(f"soak-user:{h}\n")
    up = Upstream()
    cfg = f"{D}/tenantgate.yaml"
    open(cfg, "w").write(config(up.port, 0))
    env = dict(os.environ)
    for e in a.env:
        k, _, v = e.partition("=")
        env[k] = v
    log = open(f"{D}/gate-{a.tag}.log", "w")
    p = subprocess.Popen([BIN, "--config", cfg, "--log.format=json", "--log.access=false"],
                         stdout=log, stderr=log, env=env)
    data = admin = None
    for _ in range(400):
        time.sleep(0.05)
        for l in open(f"{D}/gate-{a.tag}.log"):
            try:
                v = json.loads(l)
            except ValueError:
                continue
            f = v.get("fields", v)
            if f.get("message") == "listening":
                port = int(f["addr"].rsplit(":", 1)[1])
                if f.get("listener") == "data":
                    data = port
                else:
                    admin = port
        if data and admin:
            break
    assert data and admin, open(f"{D}/gate-{a.tag}.log").read()
    stop = threading.Event()
    counts = {"ok": 0, "err": 0, "reloads": 0, "restarts": 0}
    ctx = ssl.create_default_context(cafile=f"{D}/ca.pem")
    auth = "Basic " + base64.b64encode(b"soak-user:soak-password-1").decode()
    paths = [("GET", "/prometheus/api/v1/query?query=up", None), ("GET", "/prometheus/api/v1/status/config", None),
             ("POST", "/api/v1/push", b"x" * 300), ("GET", "/auth/api/v1/labels", None), ("GET", "/other/x", None)]

    def worker(i, rate):
        conn = None
        n = 0
        period = 1.0 / rate
        nxt = time.monotonic()
        while not stop.is_set():
            nxt += period
            d = nxt - time.monotonic()
            if d > 0:
                time.sleep(d)
            fresh = (n % 10) < int(a.fresh_ratio * 10)
            m, path, body = paths[n % len(paths)]
            n += 1
            try:
                if conn is None or fresh:
                    if conn:
                        conn.close()
                    conn = http.client.HTTPSConnection("127.0.0.1", data, context=ctx, timeout=10)
                hdr = {"Authorization": auth} if path.startswith("/auth") else {}
                conn.request(m, path, body=body, headers=hdr)
                r = conn.getresponse()
                r.read()
                counts["ok" if r.status == 200 else "err"] += 1
                if r.getheader("Connection", "").lower() == "close":
                    conn.close(); conn = None
            except Exception:
                counts["err"] += 1
                try:
                    conn.close()
                except Exception:
                    pass
                conn = None
        if conn:
            conn.close()

    threads = []
    if a.rate:
        nthreads = 8
        for i in range(nthreads):
            t = threading.Thread(target=worker, args=(i, a.rate / nthreads), daemon=True)
            t.start(); threads.append(t)

    def restarter():
        while not stop.wait(a.restart_every):
            up.crash(); time.sleep(0.3); up.again(); counts["restarts"] += 1

    if a.restart_every:
        threading.Thread(target=restarter, daemon=True).start()

    t0 = time.monotonic()

    def reload_to(ac, v):
        """Config version v (a new certificate every --rotate-every), then POST /-/reload."""
        nonlocal serial
        if a.rotate_every and v % a.rotate_every == 0:
            serial += 1
            pki(serial)
        open(cfg + ".tmp", "w").write(config(up.port, v))
        os.replace(cfg + ".tmp", cfg)
        ac.request("POST", "/-/reload")
        r = ac.getresponse()
        return r.status, r.read()

    def reloader():
        ac = http.client.HTTPConnection("127.0.0.1", admin, timeout=30)
        v = 0
        while not stop.wait(a.reload_every):
            v += 1
            reload_to(ac, v)
            counts["reloads"] += 1

    if a.reload_every:
        threading.Thread(target=reloader, daemon=True).start()

    def burst():
        time.sleep(a.burst_at)
        bstop = time.monotonic() + 10
        def one():
            while time.monotonic() < bstop:
                try:
                    c = http.client.HTTPSConnection("127.0.0.1", data, context=ctx, timeout=10)
                    c.request("POST", "/api/v1/push", body=b"y" * 20000)
                    c.getresponse().read(); c.close(); counts["burst"] = counts.get("burst", 0) + 1
                except Exception:
                    counts["err"] += 1
        ts = [threading.Thread(target=one, daemon=True) for _ in range(a.burst_threads)]
        [t.start() for t in ts]; [t.join() for t in ts]

    if a.burst_at:
        threading.Thread(target=burst, daemon=True).start()

    def sample(what):
        s = status(p.pid)
        n, fam = series(admin)
        print(json.dumps({"t": round(time.monotonic() - t0, 1), "at": what, **s, "series": n,
                          **{k: v for k, v in counts.items() if v}}), flush=True)
        return fam

    fam0 = sample("start")
    if a.reloads:
        ac = http.client.HTTPConnection("127.0.0.1", admin, timeout=30)
        step = int(a.sample_every) if a.sample_every >= 1 else 500
        for v in range(1, a.reloads + 1):
            status_code, body = reload_to(ac, v)
            assert status_code == 200, body
            counts["reloads"] += 1
            if v % step == 0:
                sample(f"reload {v}")
    else:
        end = t0 + a.secs
        while time.monotonic() < end:
            time.sleep(min(a.sample_every, max(0, end - time.monotonic())))
            sample("traffic")
    stop.set()
    for t in threads:
        t.join(5)
    time.sleep(2)
    fam1 = sample("end")
    diff = {k: (fam0.get(k, 0), v) for k, v in fam1.items() if fam0.get(k, 0) != v}
    print("series changed:", json.dumps(diff), flush=True)
    p.terminate(); p.wait(10)
    up.crash()
    shutil.rmtree(D, ignore_errors=True)


if __name__ == "__main__":
    main()
