"""What is started: the upstream, the seed's two NGINX layers, one NGINX layer, tenantgate in
its variants, and direct. Every proxy worker gets CPU 0 (NGINX worker_processes 1, tenantgate
--threads 1) except `--threads 2`, which gets CPUs 0 and 1: two runtime threads squeezed onto one
CPU would measure oversubscription, not the runtime a user would deploy with two CPUs."""

import os
import re
from dataclasses import dataclass, field

from .procs import PROXY_CPU, TWO_CPUS, Proc, free_port, loadgen_cpus, pin

TENANT = "team-a"

NGINX_COMMON = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
worker_rlimit_nofile 8192;
events {{ worker_connections 4096; }}
http {{
  {access_log}
  client_body_temp_path {dir}/body; proxy_temp_path {dir}/proxy; fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi; scgi_temp_path {dir}/scgi;
  client_max_body_size 0;
  keepalive_requests 1000000;
  {body}
}}
"""

# NGINX's usual "main" format to a file, unbuffered: what a stock install writes per request.
NGINX_ACCESS_LOG = """log_format main '$remote_addr - $remote_user [$time_local] "$request" '
                  '$status $body_bytes_sent "$http_referer" '
                  '"$http_user_agent" "$http_x_forwarded_for"';
  access_log {dir}/access.log main;"""

# Mimir reads a push whole before it answers. `return` alone answers first, and a proxy that
# streams the body then has to drop the connection (NGINX does, with 502s), so the push path
# goes through NGINX's own request buffering (it reads the whole body) to a `return` on /sink.
UPSTREAM = """
  upstream sink {{ server 127.0.0.1:{port}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location = /prometheus/big {{ alias {dir}/big.bin; }}
    location = /prometheus/api/v1/push {{
      if ($http_x_scope_orgid = "") {{ return 401 "no org id\\n"; }}
      client_body_buffer_size 512k;
      proxy_pass http://sink/sink;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    # The 1 GiB upload: read whole before the answer, as Mimir reads a push, but not sent on
    # (only the head goes to /sink). Answered by `return` instead, a proxy that stops relaying
    # once the upstream has answered (NGINX does) would be measured discarding, not relaying.
    location = /prometheus/api/v1/upload {{
      if ($http_x_scope_orgid = "") {{ return 401 "no org id\\n"; }}
      client_body_buffer_size 512k;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_pass http://sink/sink;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
    location = /sink {{
      default_type application/json;
      return 200 '{{}}';
    }}
    location / {{
      if ($http_x_scope_orgid = "") {{ return 401 "no org id\\n"; }}
      default_type application/json;
      return 200 '{{"status":"success","data":["__name__","job","instance"]}}';
    }}
  }}
"""

STATUS_CONFIG = '{\\"status\\":\\"success\\",\\"data\\":{\\"yaml\\":\\"global:\\\\n  external_labels:\\\\n    source: mimir\\\\n\\"}}'
BUILDINFO = '{\\"status\\":\\"success\\",\\"data\\":{\\"version\\":\\"2.53.0\\",\\"revision\\":\\"\\",\\"branch\\":\\"\\",\\"buildUser\\":\\"\\",\\"buildDate\\":\\"\\",\\"goVersion\\":\\"\\"}}'

PROXY_TO = """
    location {loc} {{
      proxy_pass http://{pool};
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      {tenant}
      proxy_request_buffering off;
      proxy_buffering off;
    }}
"""

FAKES = f"""
    location = /prometheus/api/v1/status/config {{
      default_type application/json;
      return 200 "{STATUS_CONFIG}";
    }}
    location = /prometheus/api/v1/status/buildinfo {{
      default_type application/json;
      return 200 "{BUILDINFO}";
    }}
"""

SET_TENANT = f'proxy_set_header X-Scope-OrgID "{TENANT}";'


def pool(name, port):
    return f"  upstream {name} {{ server 127.0.0.1:{port}; keepalive 64; }}\n"


def server(port, inner):
    return f"  server {{\n    listen 127.0.0.1:{port} backlog=4096;\n" + inner + "  }\n"


def seed_layer1(port, l2):
    """Layer 1 of the seed recipe: sets the tenant, forwards everything to layer 2."""
    return pool("layer2", l2) + server(port, PROXY_TO.format(loc="/", pool="layer2", tenant=SET_TENANT))


def seed_layer2(port, up):
    """Layer 2 of the seed recipe: fakes status/config and buildinfo, forwards the rest."""
    return pool("mimir", up) + server(port, FAKES + PROXY_TO.format(loc="/", pool="mimir", tenant=""))


def one_layer(port, up):
    """One NGINX doing both jobs: the best NGINX can do here."""
    return pool("mimir", up) + server(port, FAKES + PROXY_TO.format(loc="/", pool="mimir", tenant=SET_TENANT))


TENANTGATE = """
server:
  listen: 127.0.0.1:{port}
  max_connections: 20000
upstreams:
  mimir:
    url: http://127.0.0.1:{up}
routes:
  - name: sidecar
    match: {{ path_prefix: /prometheus }}
    upstream: mimir
    tenant: {tenant}
    max_request_body: 2GiB
    prometheus:
      external_labels: {{ source: mimir }}
"""


@dataclass
class Ctx:
    """What every setup needs: the scratch dir, the upstream's port, the binaries."""
    workdir: str
    up_port: int
    binary: str
    nginx: str
    post_script: str = ""  # the wrk Lua script of the push-sized POST (load.write_post_script)


@dataclass
class Running:
    front: int  # the port clients talk to
    procs: list  # the proxy's processes (empty for direct)
    headers: list = field(default_factory=list)  # sent on every request (direct: the tenant)
    access_log: str = None  # the file its access log goes to, if on
    others: list = field(default_factory=list)  # started with it, not measured

    def roots(self):
        return [p.p.pid for p in self.procs]

    def pids(self):
        return [pid for p in self.procs for pid in p.pids()]

    def stop(self):
        for p in self.procs + self.others:
            p.stop()


def start_nginx(ctx, name, body, cpu, access_log=False):
    d = os.path.join(ctx.workdir, name)
    os.makedirs(d, exist_ok=True)
    port = int(re.search(r"listen 127\.0\.0\.1:(\d+)", body).group(1))
    conf = os.path.join(d, "nginx.conf")
    log = NGINX_ACCESS_LOG.format(dir=d) if access_log else "access_log off;"
    with open(conf, "w") as f:
        f.write(NGINX_COMMON.format(dir=d, body=body, access_log=log))
    if access_log:
        open(os.path.join(d, "access.log"), "w").close()
        os.chmod(os.path.join(d, "access.log"), 0o666)  # workers may run as nobody
    argv = pin(cpu) + [ctx.nginx, "-p", d, "-c", conf, "-e", os.path.join(d, "error.log"), "-g", "daemon off;"]
    return Proc(name, argv, port, ctx.workdir)


def start_upstream(ctx):
    """The stand-in Mimir, on the load generator's CPUs; sets ctx.up_port."""
    port = free_port()
    p = start_nginx(ctx, "upstream", UPSTREAM.format(port=port, dir=ctx.workdir), loadgen_cpus())
    ctx.up_port = p.port
    return p


def _seed(ctx):
    l2 = start_nginx(ctx, "seed-layer2", seed_layer2(free_port(), ctx.up_port), PROXY_CPU)
    try:
        l1 = start_nginx(ctx, "seed-layer1", seed_layer1(free_port(), l2.port), PROXY_CPU)
    except RuntimeError:
        l2.stop()
        raise
    return Running(l1.port, [l1, l2])


def _one(ctx, access_log=False):
    name = "one-layer-logs" if access_log else "one-layer"
    p = start_nginx(ctx, name, one_layer(free_port(), ctx.up_port), PROXY_CPU, access_log)
    return Running(p.port, [p], access_log=os.path.join(ctx.workdir, name, "access.log") if access_log else None)


def _tenantgate(ctx, name, threads=1, cpu=PROXY_CPU, access_log=False):
    port = free_port()
    cfg = os.path.join(ctx.workdir, f"{name}.yaml")
    with open(cfg, "w") as f:
        f.write(TENANTGATE.format(port=port, up=ctx.up_port, tenant=TENANT))
    # Logs on: the defaults (access log on, logfmt, info), stderr to a file (Proc's log file).
    logs = [] if access_log else ["--log.access=false", "--log.level=warn"]
    p = Proc(name, pin(cpu) + [ctx.binary, "--config", cfg, "--threads", str(threads)] + logs, port, ctx.workdir)
    return Running(port, [p], access_log=p.log_path if access_log else None)


def _direct(ctx):
    return Running(ctx.up_port, [], headers=[f"X-Scope-OrgID: {TENANT}"])


@dataclass
class Setup:
    key: str
    name: str
    cases: tuple  # case keys from cases.CASES
    start: object  # ctx -> Running


FULL = ("get", "emu", "post", "latency", "stream", "conns_seq", "conns")

SETUPS = [
    Setup("seed", "seed: two NGINX layers", FULL, _seed),
    Setup("nginx", "one NGINX layer", FULL, _one),
    Setup("tg", "tenantgate", FULL, lambda c: _tenantgate(c, "tenantgate")),
    Setup("direct", "direct", ("get", "emu", "post", "latency", "stream"), _direct),
    Setup("nginx-logs", "one NGINX layer, access log on", ("get_logs",), lambda c: _one(c, access_log=True)),
    Setup("tg-logs", "tenantgate, access log on", ("get_logs",), lambda c: _tenantgate(c, "tenantgate-logs", access_log=True)),
    Setup("tg-t2", "tenantgate --threads 2 (CPUs 0,1)", ("get", "emu"),
          lambda c: _tenantgate(c, "tenantgate-t2", threads=2, cpu=TWO_CPUS)),
]
