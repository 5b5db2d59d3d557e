#!/usr/bin/env python3
"""Writes the seed corpus of every fuzz target into fuzz/corpus/<target>/ (README, "Fuzzing").

A handful of meaningful inputs per target, each laid out as its harness reads it
(fuzz/harness/*.rs): usually a first byte of flags, then the bytes under test. Run it again
after changing a harness's input layout; libFuzzer grows the corpus from these in a scratch
copy, which is never committed.
"""
import base64
import pathlib
import struct

ROOT = pathlib.Path(__file__).resolve().parent / "corpus"


def write(target, name, data):
    d = ROOT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# ---- protobuf, snappy, CRC32C by hand (Python's standard library has none of them) ----

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(tag, wire, payload):
    key = varint(tag << 3 | wire)
    if wire == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def msg(tag, payload):
    return field(tag, 2, payload if isinstance(payload, bytes) else payload.encode())


def uint(tag, n):
    return field(tag, 0, varint(n))


def double(tag, x):
    return field(tag, 1, struct.pack("<d", x))


def snappy_literal(raw):
    """A snappy block of one literal run (valid, uncompressed)."""
    n = len(raw)
    if n == 0:
        return varint(0)
    if n <= 60:
        tag = bytes([(n - 1) << 2])
    else:
        tag = bytes([61 << 2]) + struct.pack("<H", n - 1)
    return varint(n) + tag + raw


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


# ---- path: selector byte (method, host), then the raw request path ----
for name, sel, p in [
    ("query", 0, "/prometheus/api/v1/query"),
    ("push", 1, "/api/v1/push"),
    ("team-a", 0, "/team-a/api/v1/query_range"),
    ("strip", 0, "/strip/x/y"),
    ("add", 0, "/add"),
    ("hosted", 4, "/prometheus/api/v1/rules/x"),
    ("escapes", 0, "/%70rometheus/label/a%7cb/values"),
    ("dots", 0, "/a/../b"),
    ("encoded-slash", 0, "/a%2Fb"),
    ("upload", 2, "/api/v1/upload/block/01H/files/index"),
]:
    write("path", name, bytes([sel]) + p.encode())

# ---- config: YAML text ----
write("config", "minimal", """upstreams:
  mimir: { url: "http://127.0.0.1:8080" }
routes:
  - name: all
    match: { path_prefix: / }
    upstream: mimir
    tenant: dev
""")
write("config", "identities", """server:
  listen: 127.0.0.1:9090
  max_failed_logins: 5
upstreams:
  mimir:
    url: https://mimir.example:8443/base
    timeouts: { connect: 2s, response_header: 30s, idle: 90s }
    health_check: { path: /ready, interval: 10s, timeout: 2s }
identities:
  - name: grafana
    tenant: team-a|team-b
    basic_auth: { user: grafana, htpasswd_file: secrets/grafana.htpasswd }
  - name: bot
    tenant: team-a
    bearer_token: { file: secrets/bot.token }
routes:
  - name: prom
    match: { path_prefix: /prometheus, methods: [GET, POST] }
    upstream: mimir
    tenant: { from: identity, federation: true }
    prometheus: { external_labels: { source: tenantgate } }
  - name: push
    match: { path: /api/v1/push, methods: [POST] }
    upstream: mimir
    tenant: { from: label, labels: [team], default: shared, remove_label: true, allow: [a, b, shared] }
  - name: header
    match: { path_prefix: /internal }
    upstream: mimir
    tenant: { from: header, allow: [a, b], aliases: { x: a } }
    rewrite: { strip_prefix: /internal, add_prefix: /prometheus }
""")
write("config", "errors", """upstreams:
  mimir: { url: 12 }
routes:
  - name: bad
    match: { path_prefix: [1] }
    upstream: mimri
    tenant: "a|a"
    bogus: true
""")
write("config", "anchors", """x: &a [*a, *a]
routes: [*a]
""")
write("config", "flow", "{upstreams: {u: {url: 'http://h:1'}}, routes: [{name: r, match: {path: /x}, upstream: u, tenant: t, rewrite: {path: /y}}]}\n")

# ---- tenant: flags (bit 0 federation, bit 1 a second header), then the header value ----
for name, flags, v in [
    ("single", 0, "team-a"),
    ("set", 1, "team-a|team-b"),
    ("set-off", 0, "team-a|c"),
    ("dup", 1, "c|c"),
    ("alias", 0, "alias"),
    ("twice", 2, "team-a"),
    ("dots", 1, "x.y|.."),
    ("reserved", 0, "__mimir_cluster"),
    ("empty", 0, ""),
    ("long", 0, "a" * 151),
]:
    write("tenant", name, bytes([flags]) + v.encode())

# ---- basic_auth: an Authorization header value ----
def b64(s):
    return base64.b64encode(s.encode()).decode()


for name, v in [
    ("basic", "Basic " + b64("prom:s3cret")),
    ("basic-lower-unpadded", "basic " + b64("u:pw").rstrip("=")),
    ("basic-colon-in-password", "Basic " + b64("u:a:b")),
    ("basic-no-colon", "Basic " + b64("nocolon")),
    ("basic-bad-base64", "Basic !!!"),
    ("bearer", "Bearer s3cret-token"),
    ("bearer-spaces", "bearer   s3cret-token  "),
    ("bearer-wrong", "Bearer nope"),
    ("no-scheme", "s3cret-token"),
]:
    write("basic_auth", name, v)

# ---- read_frames: mode byte (bits 0-1: 0 raw stream, 1 payloads framed by the harness,
# 2 one XOR chunk; bits 2-7: piece size - 1), then the bytes ----

def xor_chunk():
    """Two samples: t=1000 v=1.0, t=1015 v=1.0 (the second value unchanged: a 0 bit)."""
    first = varint(2000) + struct.pack(">d", 1.0)  # zig-zag 1000, then the value's 64 bits
    second = varint(15) + bytes([0])  # uvarint delta 15, then a 0 bit: the same value
    return struct.pack(">H", 2) + first + second


def chunked_response(chunk_data, query_index=0):
    labels = msg(1, msg(1, "__name__") + msg(2, "up")) + msg(1, msg(1, "job") + msg(2, "a"))
    chunk = uint(1, 1000) + uint(2, 1015) + uint(3, 1) + msg(4, chunk_data)
    series = labels + msg(2, chunk)
    return msg(1, series) + uint(2, query_index)


def frame(payload):
    return varint(len(payload)) + struct.pack(">I", crc32c(payload)) + payload


resp = chunked_response(xor_chunk())
write("read_frames", "stream-one-frame", bytes([0]) + frame(resp))
write("read_frames", "stream-two-frames-3-byte-pieces", bytes([0 | 2 << 2]) + frame(resp) + frame(chunked_response(xor_chunk(), 1)))
write("read_frames", "stream-bad-crc", bytes([0]) + varint(len(resp)) + b"\0\0\0\0" + resp)
write("read_frames", "stream-cut-short", bytes([0]) + frame(resp)[:-3])
write("read_frames", "framed-payload", bytes([1 | 1 << 2]) + bytes([len(resp)]) + resp)
write("read_frames", "xor-chunk", bytes([2]) + xor_chunk())
write("read_frames", "xor-empty", bytes([2]) + b"\0\0")

# ---- remote_write: flags (bits 0-1: 0 RW1, 1 RW2, 2 OTLP, 3 snappy RW1; 4 remove_label,
# 8 default, 16 forbidden_to_default, 32 prefix "p-", 64 allow list, 128 max 2 tenants) ----

def label(n, v):
    return msg(1, n) + msg(2, v)


def v1_series(labels, value=1.0, t=1000):
    out = b"".join(msg(1, label(n, v)) for n, v in labels)
    return out + msg(2, double(1, value) + uint(2, t))


v1 = (
    msg(1, v1_series([("__name__", "up"), ("team", "a"), ("job", "x")]))
    + msg(1, v1_series([("__name__", "up"), ("namespace", "b"), ("job", "y")]))
    + msg(1, v1_series([("__name__", "up"), ("job", "z")]))
    + msg(3, uint(1, 1) + msg(2, "up") + msg(4, "help"))
)
write("remote_write", "v1-default-remove", bytes([0 | 4 | 8]) + v1)
write("remote_write", "v1-allow-forbidden-to-default", bytes([0 | 8 | 16 | 64]) + v1)
write("remote_write", "v1-prefix", bytes([0 | 32 | 8]) + v1)
write("remote_write", "v1-snappy", bytes([3 | 8]) + snappy_literal(v1))

symbols = ["", "__name__", "up", "team", "a", "job", "x", "trace_id", "t1", "help", "seconds"]
v2_series = (
    field(1, 2, b"".join(varint(r) for r in [1, 2, 3, 4, 5, 6]))
    + msg(2, double(1, 1.0) + uint(2, 1000))
    + msg(4, field(1, 2, varint(7) + varint(8)) + double(2, 1.0) + uint(3, 1000))
    + msg(5, uint(1, 1) + uint(3, 9) + uint(4, 10))
    + uint(6, 500)
)
v2 = b"".join(msg(4, s) for s in symbols) + msg(5, v2_series)
write("remote_write", "v2-remove", bytes([1 | 4 | 8]) + v2)
write("remote_write", "v2-no-default", bytes([1]) + v2)


def kv(k, v):
    return msg(1, k) + msg(2, msg(1, v))


resource = msg(1, msg(1, kv("service.namespace", "a")) + msg(1, kv("host", "h")))
otlp = msg(1, resource + msg(2, msg(2, msg(1, "up")))) + msg(1, msg(1, msg(1, kv("team", "b"))))
write("remote_write", "otlp", bytes([2 | 8]) + otlp)
write("remote_write", "otlp-max-2", bytes([2 | 128]) + otlp + msg(1, msg(1, msg(1, kv("team", "c")))))
