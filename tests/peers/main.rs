//! The real-peers suite: tenantgate between real Thanos (sidecar and Query, two versions), real
//! Cortex (it reads `X-Scope-OrgID` exactly as Mimir does) and real Prometheus 3, all built from
//! their Go modules by `bash tests/peers/build.sh` at the versions in `tests/peers/versions`.
//!
//! Loopback only; every process is stopped when its test ends, pass or fail. Under `CI=true` a
//! missing peer fails the test; elsewhere the test is skipped loudly, naming the build command.

#[path = "../common/mod.rs"]
mod common;
#[path = "../e2e/harness.rs"]
#[allow(dead_code)]
mod harness;
mod relay;
mod rig;

mod auth;
mod migrate;
mod split;
mod tools;
mod topology;
mod writes;

use std::time::Duration;

use harness::{Deadline, Http};

/// Polls `f` until it returns `Ok`, for at most `secs`; fails with the last error.
pub async fn until<T, F, Fut>(what: &str, secs: u64, mut f: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Deadline::new(what, Duration::from_secs(secs));
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => deadline.retry(&e).await?,
        }
    }
}

/// An instant query against a Prometheus-API server (Thanos Query, Cortex with a tenant).
pub async fn instant(
    http: &Http,
    base: &str,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Vec<serde_json::Value>, String> {
    let url = format!("{base}/api/v1/query?query={}", harness::enc(query));
    let data = http.get_with(&url, headers).await?.prom_data()?;
    data["result"]
        .as_array()
        .cloned()
        .ok_or_else(|| format!("no result array: {data}"))
}

/// Lower-case hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
