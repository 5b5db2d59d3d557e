//! The real peers: where `tests/peers/build.sh` put them, and how to run each on loopback.
//!
//! Every peer binds 127.0.0.1 explicitly (Cortex and Thanos default to all interfaces and would
//! advertise the machine's address), on ports picked free just before the start; a start that
//! fails (a port taken meanwhile) is retried on fresh ports. Readiness is polled, never slept
//! for. Processes are killed and reaped on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{Binaries, Http, Process, free_port, wait_until_ok};

/// How long a peer gets to become ready (Cortex joins its rings first; 2 busy cores).
const START_TIMEOUT: Duration = Duration::from_secs(90);
const START_ATTEMPTS: u32 = 3;

/// The versions pinned in `tests/peers/versions`.
fn versions() -> Vec<(String, String)> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/versions");
    let text = std::fs::read_to_string(&file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The same folder as `tests/peers/build.sh` builds into.
fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("TENANTGATE_PEERS") {
        return PathBuf::from(p);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("tenantgate/peers")
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// The built peers, with the versions they were built from.
#[derive(Debug, Clone)]
pub struct Peers {
    pub thanos: PathBuf,
    pub thanos_old: PathBuf,
    pub cortex: PathBuf,
    pub prometheus: PathBuf,
    pub promtool: PathBuf,
}

impl Peers {
    /// Finds every peer. A missing one fails the test under `CI=true`; elsewhere the test is
    /// skipped, loudly, naming the command that builds them (`None`).
    pub fn require(test: &str) -> Option<Peers> {
        let v = versions();
        let version = |name: &str| {
            v.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| panic!("tests/peers/versions has no {name}="))
        };
        let cache = cache_dir();
        let at = |name: &str, key: &str, bin: &str| {
            cache.join(format!("{name}-{}", version(key))).join(bin)
        };
        let peers = Peers {
            thanos: at("thanos", "thanos", "thanos"),
            thanos_old: at("thanos", "thanos_old", "thanos"),
            cortex: at("cortex", "cortex", "cortex"),
            prometheus: at("prometheus", "prometheus", "prometheus"),
            promtool: at("prometheus", "prometheus", "promtool"),
        };
        let missing: Vec<String> = [
            &peers.thanos,
            &peers.thanos_old,
            &peers.cortex,
            &peers.prometheus,
            &peers.promtool,
        ]
        .into_iter()
        .filter(|p| !p.is_file())
        .map(|p| p.display().to_string())
        .collect();
        if missing.is_empty() {
            return Some(peers);
        }
        let msg = format!(
            "real-peers test `{test}` needs binaries built by `bash tests/peers/build.sh` \
             (missing: {})",
            missing.join(", ")
        );
        if in_ci() {
            panic!("{msg}. CI=true, so a missing peer is a failure, not a skip.");
        }
        eprintln!("\n!!!!!!!! SKIPPED: {msg}. !!!!!!!!\n");
        None
    }

    /// Prometheus 3 and its promtool in the shape the e2e harness starts (it needs no NGINX).
    pub fn prometheus3(&self) -> Binaries {
        Binaries {
            prometheus: self.prometheus.clone(),
            promtool: self.promtool.clone(),
            nginx: PathBuf::new(),
        }
    }
}

/// A peer process listening on ports of its own.
pub struct Peer {
    pub ports: Vec<u16>,
    pub process: Process,
}

impl Peer {
    /// Starts `command(ports)` with `n` fresh ports until `ready(ports)` answers 200.
    pub async fn start(
        name: &str,
        dir: &Path,
        http: &Http,
        n: usize,
        command: impl Fn(&[u16]) -> Command,
        ready: impl Fn(&[u16]) -> String,
    ) -> Result<Peer, String> {
        let mut failures = Vec::new();
        for attempt in 1..=START_ATTEMPTS {
            let ports = (0..n).map(|_| free_port()).collect::<Result<Vec<_>, _>>()?;
            let mut cmd = command(&ports);
            let mut peer = Peer {
                process: Process::spawn(&format!("{name}-{attempt}"), dir, &mut cmd)?,
                ports: ports.clone(),
            };
            let url = ready(&ports);
            match wait_until_ok(&mut peer.process, http, &url, START_TIMEOUT).await {
                Ok(()) => return Ok(peer),
                Err(e) => failures.push(format!("attempt {attempt} (ports {ports:?}): {e}")),
            }
        }
        Err(format!("{name} did not start:\n{}", failures.join("\n\n")))
    }

    /// `http://127.0.0.1:<first port>`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.ports[0])
    }
}

/// Cortex, single process (`-target=all`), with authentication on: it reads `X-Scope-OrgID`
/// exactly as Mimir does. Rings in memory, blocks on the local disk, gossip off.
pub async fn cortex(peers: &Peers, http: &Http, dir: &Path, extra: &str) -> Result<Peer, String> {
    cortex_with(peers, http, dir, extra, &[]).await
}

/// [`cortex`] with extra command-line flags.
pub async fn cortex_with(
    peers: &Peers,
    http: &Http,
    dir: &Path,
    extra: &str,
    flags: &[&str],
) -> Result<Peer, String> {
    let data = dir.join("cortex");
    for sub in ["alerts", "rules", "rules-tmp"] {
        std::fs::create_dir_all(data.join(sub)).map_err(|e| e.to_string())?;
    }
    let config = |ports: &[u16]| {
        format!(
            r#"
auth_enabled: true
target: all
server:
  http_listen_address: 127.0.0.1
  http_listen_port: {http}
  grpc_listen_address: 127.0.0.1
  grpc_listen_port: {grpc}
  log_level: warn
distributor:
  ring:
    instance_addr: 127.0.0.1
    kvstore: {{ store: inmemory }}
ingester:
  lifecycler:
    address: 127.0.0.1
    min_ready_duration: 0s
    final_sleep: 0s
    join_after: 0s
    num_tokens: 64
    ring:
      kvstore: {{ store: inmemory }}
      replication_factor: 1
blocks_storage:
  backend: filesystem
  filesystem: {{ dir: {d}/blocks }}
  tsdb: {{ dir: {d}/tsdb }}
  bucket_store: {{ sync_dir: {d}/tsdb-sync }}
compactor:
  data_dir: {d}/compactor
  sharding_ring:
    instance_addr: 127.0.0.1
    kvstore: {{ store: inmemory }}
store_gateway:
  sharding_ring:
    instance_addr: 127.0.0.1
    kvstore: {{ store: inmemory }}
frontend:
  instance_interface_names: [lo]
frontend_worker:
  match_max_concurrent: true
  instance_interface_names: [lo]
ruler:
  rule_path: {d}/rules-tmp
  ring:
    instance_addr: 127.0.0.1
    kvstore: {{ store: inmemory }}
ruler_storage:
  backend: local
  local: {{ directory: {d}/rules }}
alertmanager:
  external_url: http://127.0.0.1:{http}/alertmanager
  sharding_ring:
    instance_addr: 127.0.0.1
    kvstore: {{ store: inmemory }}
  cluster:
    listen_address: ""
alertmanager_storage:
  backend: local
  local: {{ path: {d}/alerts }}
{extra}
"#,
            http = ports[0],
            grpc = ports[1],
            d = data.display(),
        )
    };
    Peer::start(
        "cortex",
        dir,
        http,
        2,
        |ports| {
            let file = dir.join(format!("cortex-{}.yaml", ports[0]));
            let _ = std::fs::write(&file, config(ports));
            let mut cmd = Command::new(&peers.cortex);
            cmd.arg(format!("-config.file={}", file.display()));
            cmd.args(flags);
            cmd
        },
        |ports| format!("http://127.0.0.1:{}/ready", ports[0]),
    )
    .await
}

/// `thanos sidecar` for the Prometheus API at `prometheus_url` (tenantgate's base URL), with no
/// object storage. Ports: HTTP, gRPC.
pub async fn sidecar(
    thanos: &Path,
    http: &Http,
    dir: &Path,
    name: &str,
    prometheus_url: &str,
    extra: &[String],
) -> Result<Peer, String> {
    let data = dir.join(format!("{name}-data"));
    std::fs::create_dir_all(&data).map_err(|e| e.to_string())?;
    Peer::start(
        name,
        dir,
        http,
        2,
        |ports| {
            let mut cmd = Command::new(thanos);
            cmd.arg("sidecar")
                .arg(format!("--prometheus.url={prometheus_url}"))
                .arg("--prometheus.get_config_interval=1s")
                .arg(format!("--http-address=127.0.0.1:{}", ports[0]))
                .arg(format!("--grpc-address=127.0.0.1:{}", ports[1]))
                .arg(format!("--tsdb.path={}", data.display()))
                .arg("--log.level=debug")
                .args(extra);
            cmd
        },
        |ports| format!("http://127.0.0.1:{}/-/ready", ports[0]),
    )
    .await
}

/// `thanos query` over the given store gRPC addresses. Ports: HTTP, gRPC.
pub async fn query(
    thanos: &Path,
    http: &Http,
    dir: &Path,
    endpoints: &[String],
    extra: &[&str],
) -> Result<Peer, String> {
    Peer::start(
        "query",
        dir,
        http,
        2,
        |ports| {
            let mut cmd = Command::new(thanos);
            cmd.arg("query")
                .arg(format!("--http-address=127.0.0.1:{}", ports[0]))
                .arg(format!("--grpc-address=127.0.0.1:{}", ports[1]))
                .args(extra);
            for e in endpoints {
                cmd.arg(format!("--endpoint={e}"));
            }
            cmd
        },
        |ports| format!("http://127.0.0.1:{}/-/ready", ports[0]),
    )
    .await
}
