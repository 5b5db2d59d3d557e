//! Build facts for `--version` and `tenantgate_build_info`: the git revision and branch (when
//! built from a checkout), the build time (`SOURCE_DATE_EPOCH` for reproducible builds) and the
//! compiler. Nothing here can fail the build: an unknown fact is "unknown".

use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!s.is_empty()).then_some(s)
}

fn main() {
    let git = |args: &[&str]| output("git", args).unwrap_or_else(|| "unknown".to_owned());
    let revision = git(&["rev-parse", "--short=12", "HEAD"]);
    let branch = git(&["rev-parse", "--abbrev-ref", "HEAD"]);
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let rust_version = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".to_owned());
    let built = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".to_owned());
    println!("cargo:rustc-env=TENANTGATE_REVISION={revision}");
    println!("cargo:rustc-env=TENANTGATE_BRANCH={branch}");
    println!("cargo:rustc-env=TENANTGATE_RUST_VERSION={rust_version}");
    println!("cargo:rustc-env=TENANTGATE_BUILD_UNIX={built}");
    println!("cargo:rustc-env=TENANTGATE_TARGET={target}");
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=build.rs");
    // Run again when the checked-out commit moves (not on every build: the build date would
    // change and rebuild the crate each time).
    if Path::new(".git/HEAD").is_file() {
        println!("cargo:rerun-if-changed=.git/HEAD");
        if let Ok(head) = std::fs::read_to_string(".git/HEAD")
            && let Some(reference) = head.trim().strip_prefix("ref: ")
        {
            let path = format!(".git/{reference}");
            if Path::new(&path).is_file() {
                println!("cargo:rerun-if-changed={path}");
            }
            if Path::new(".git/packed-refs").is_file() {
                println!("cargo:rerun-if-changed=.git/packed-refs");
            }
        }
    }
}
