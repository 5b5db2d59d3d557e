//! Timestamps as tenantgate reads and writes them: RFC 3339 (`lowest_timestamp` in config, the
//! times in emulated `runtimeinfo`, `migrate`'s `--start`/`--end` and reports) and HTTP dates
//! (`Retry-After`). The calendar is `jiff`'s.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Parses an RFC 3339 timestamp (`2024-01-01T00:00:00Z`, `2024-01-01T02:00:00.5+02:00`) into
/// milliseconds since the Unix epoch (finer fractions are cut, not rounded, as Prometheus does).
pub fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let bad = |e: jiff::Error| {
        format!("{s:?} is not an RFC 3339 timestamp (e.g. 2024-01-01T00:00:00Z): {e}")
    };
    let t: jiff::Timestamp = s.parse().map_err(bad)?;
    Ok(t.as_millisecond())
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC with milliseconds, as Go's
/// `time.Time` JSON encoding does (`2024-01-01T00:00:00.000Z`).
pub fn format_rfc3339(ms: i64) -> String {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        // Beyond year 9999 either way: no real timestamp, but say what it was.
        Err(_) => format!("{ms} ms since 1970"),
    }
}

/// [`format_rfc3339`] written into `out`, without a string of its own.
pub fn write_rfc3339(out: &mut impl std::fmt::Write, ms: i64) -> std::fmt::Result {
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => write!(out, "{}", t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")),
        Err(_) => write!(out, "{ms} ms since 1970"),
    }
}

/// An HTTP date (RFC 9110 IMF-fixdate, `Sun, 06 Nov 1994 08:49:37 GMT`), as `Retry-After` may
/// carry it, in milliseconds since the epoch.
pub fn parse_http_date(s: &str) -> Option<i64> {
    static PARSER: jiff::fmt::rfc2822::DateTimeParser = jiff::fmt::rfc2822::DateTimeParser::new();
    PARSER
        .parse_timestamp(s.trim())
        .ok()
        .map(jiff::Timestamp::as_millisecond)
}

/// Milliseconds since the Unix epoch of a system time (0 before the epoch).
pub fn unix_millis(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as i64
}

/// Milliseconds on a monotonic clock shared by the process, for activity stamps in atomics.
/// Never 0, which [`crate::drive::drive`] and [`crate::park::Parking`] read as "not yet".
pub fn mono_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Now, in milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    unix_millis(SystemTime::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_utc_offsets_and_fractions() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2024-01-01T00:00:00Z"), Ok(1_704_067_200_000));
        assert_eq!(
            parse_rfc3339("2024-01-01T02:00:00+02:00"),
            Ok(1_704_067_200_000)
        );
        assert_eq!(
            parse_rfc3339("2023-12-31T19:00:00-05:00"),
            Ok(1_704_067_200_000)
        );
        assert_eq!(
            parse_rfc3339("2024-01-01T00:00:00.5Z"),
            Ok(1_704_067_200_500)
        );
        assert_eq!(
            parse_rfc3339("2024-01-01T00:00:00.123456789Z"),
            Ok(1_704_067_200_123)
        );
        assert_eq!(parse_rfc3339("2024-02-29T00:00:00Z"), Ok(1_709_164_800_000));
    }

    #[test]
    fn rejects_what_is_not_rfc3339() {
        for bad in [
            "",
            "2024-01-01",
            "2024-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00",
            "2024-01-01T00:00:00.Z",
            "2024-0a-01T00:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn http_dates_are_read() {
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(parse_http_date("soon"), None);
    }

    #[test]
    fn formats_like_go() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339(1_704_067_200_123),
            "2024-01-01T00:00:00.123Z"
        );
        for ms in [0, 951_782_400_000, 1_709_164_800_000, 4_102_444_800_999] {
            assert_eq!(parse_rfc3339(&format_rfc3339(ms)), Ok(ms));
        }
    }
}
