//! What this binary is: version, git revision and branch, build date, compiler and target, for
//! `--version` (laid out as Prometheus tools print it) and `tenantgate_build_info`.

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const REVISION: &str = env!("TENANTGATE_REVISION");
pub const BRANCH: &str = env!("TENANTGATE_BRANCH");
pub const RUST_VERSION: &str = env!("TENANTGATE_RUST_VERSION");
pub const TARGET: &str = env!("TENANTGATE_TARGET");
const BUILD_UNIX: &str = env!("TENANTGATE_BUILD_UNIX");

/// When it was built, RFC 3339 in UTC (from `SOURCE_DATE_EPOCH` when set).
pub fn build_date() -> String {
    let secs: i64 = BUILD_UNIX.parse().unwrap_or(0);
    let full = crate::time::format_rfc3339(secs.saturating_mul(1000));
    // Whole seconds: drop the ".000".
    match full.strip_suffix(".000Z") {
        Some(s) => format!("{s}Z"),
        None => full,
    }
}

/// The text of `--version`.
pub fn long_version() -> String {
    format!(
        "{VERSION} (branch: {BRANCH}, revision: {REVISION})\n  build date:   {}\n  rust version: {RUST_VERSION}\n  platform:     {TARGET}",
        build_date()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_version_names_revision_date_and_compiler() {
        let v = super::long_version();
        assert!(v.starts_with(super::VERSION), "{v}");
        for part in [
            "revision: ",
            "build date:   ",
            "rust version: ",
            "platform:     ",
        ] {
            assert!(v.contains(part), "{v}");
        }
        assert!(!super::build_date().contains(".000"));
    }
}
