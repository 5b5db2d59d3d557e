//! The access log's line, one per request. In logfmt it is written here, straight into the
//! log buffer, rather than through tracing: visiting the line's fifteen fields one `dyn` call
//! at a time cost more instructions than everything else the line does (callgrind, in
//! `bench/analysis.md`). The line is the one tracing's logfmt formatter writes for the same
//! event, field for field (a test holds the two to that), except that `duration_ms` always
//! has three decimals (`2.500`, where tracing's `f64` would be `2.5`). Before
//! [`write_directly`] is called (the JSON format; an embedder's own subscriber), lines go
//! through tracing.

use std::cell::RefCell;
use std::io::Write as _;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::log::{LogLevel, Stamp, decimal, enabled, logfmt_value};
use super::logbuf::Buffer;

/// One request's access-log line.
pub(super) struct AccessLine<'a> {
    pub(super) client: &'a str,
    pub(super) route: &'a str,
    pub(super) tenant: &'a str,
    pub(super) tenant_from: &'a str,
    pub(super) identity: &'a str,
    pub(super) upstream: &'a str,
    pub(super) method: &'a str,
    pub(super) path: &'a str,
    pub(super) status: u16,
    pub(super) elapsed: Duration,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) error: &'a str,
}

/// Where lines written directly go, and which levels are on.
struct Direct {
    /// `None`: straight to stderr (logging unbuffered, or the log buffer's thread could not
    /// start).
    buffer: Option<Arc<Buffer>>,
    info: bool,
    warn: bool,
}

static DIRECT: OnceLock<Direct> = OnceLock::new();

/// From now on, access lines are formatted here as logfmt and written to `buffer` (or stderr),
/// at `level`; called once the logfmt subscriber writing to the same place is installed.
pub(super) fn write_directly(level: LogLevel, buffer: Option<Arc<Buffer>>) {
    let _ = DIRECT.set(Direct {
        buffer,
        info: enabled(level, tracing::Level::INFO),
        warn: enabled(level, tracing::Level::WARN),
    });
}

/// The line being formatted and the timestamp cache, reused from one line to the next.
#[derive(Default)]
struct Scratch {
    line: String,
    stamp: Stamp,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::default();
}

impl AccessLine<'_> {
    /// Answers tenantgate or its upstream failed are warnings; the rest is info.
    fn is_warning(&self) -> bool {
        self.status >= 500
    }

    /// Logs the line.
    pub(super) fn log(&self) {
        let Some(direct) = DIRECT.get() else {
            return self.trace();
        };
        if !(if self.is_warning() {
            direct.warn
        } else {
            direct.info
        }) {
            return;
        }
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => self.write(direct, &mut scratch),
            // Only if a line were logged while one is formatted on this thread.
            Err(_) => self.write(direct, &mut Scratch::default()),
        });
    }

    fn write(&self, direct: &Direct, scratch: &mut Scratch) {
        let Scratch { line, stamp } = scratch;
        line.clear();
        self.logfmt(line, stamp, crate::time::now_millis());
        match &direct.buffer {
            Some(buffer) => buffer.push(line.as_bytes()),
            // Nowhere to report a failing stderr to.
            None => drop(std::io::stderr().write_all(line.as_bytes())),
        }
    }

    /// The line as tracing's logfmt formatter writes the event of [`AccessLine::trace`], the
    /// timestamp `now_ms` (milliseconds since the epoch).
    fn logfmt(&self, out: &mut String, stamp: &mut Stamp, now_ms: i64) {
        out.push_str("ts=");
        // Writing to a String cannot fail.
        let _ = stamp.write(out, now_ms);
        out.push_str(if self.is_warning() {
            " level=warn msg=request"
        } else {
            " level=info msg=request"
        });
        let mut digits = [0u8; 20];
        for (name, value) in [
            (" client=", self.client),
            (" route=", self.route),
            (" tenant=", self.tenant),
            (" tenant_from=", self.tenant_from),
            (" identity=", self.identity),
            (" upstream=", self.upstream),
            (" method=", self.method),
            (" path=", self.path),
        ] {
            out.push_str(name);
            logfmt_value(out, value);
        }
        out.push_str(" status=");
        out.push_str(decimal(u64::from(self.status), &mut digits));
        // Milliseconds with three decimals: the microseconds, as the number tracing logs.
        let micros = self.micros();
        out.push_str(" duration_ms=");
        out.push_str(decimal(micros / 1000, &mut digits));
        out.push('.');
        let frac = micros % 1000;
        for d in [frac / 100, frac / 10 % 10, frac % 10] {
            out.push(char::from(b'0' + d as u8));
        }
        out.push_str(" bytes_in=");
        out.push_str(decimal(self.bytes_in, &mut digits));
        out.push_str(" bytes_out=");
        out.push_str(decimal(self.bytes_out, &mut digits));
        out.push_str(" error=");
        logfmt_value(out, self.error);
        out.push('\n');
    }

    /// The duration in whole microseconds, rounded to the nearest.
    fn micros(&self) -> u64 {
        let nanos = self.elapsed.as_nanos().saturating_add(500);
        u64::try_from(nanos / 1000).unwrap_or(u64::MAX)
    }

    /// The line as a tracing event (JSON, or no direct writer installed).
    fn trace(&self) {
        macro_rules! access_line {
            ($level:ident) => {
                tracing::$level!(
                    target: "tenantgate::access",
                    client = self.client,
                    route = self.route,
                    tenant = self.tenant,
                    tenant_from = self.tenant_from,
                    identity = self.identity,
                    upstream = self.upstream,
                    method = self.method,
                    path = self.path,
                    status = self.status,
                    // A number (milliseconds, microsecond precision), in JSON too.
                    duration_ms = self.micros() as f64 / 1e3,
                    bytes_in = self.bytes_in,
                    bytes_out = self.bytes_out,
                    error = self.error,
                    "request"
                )
            };
        }
        if self.is_warning() {
            access_line!(warn);
        } else {
            access_line!(info);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(status: u16, elapsed: Duration, path: &str, error: &str) -> AccessLine<'static> {
        let path: &'static str = Box::leak(path.to_owned().into_boxed_str());
        let error: &'static str = Box::leak(error.to_owned().into_boxed_str());
        AccessLine {
            client: "127.0.0.1:40000",
            route: "read",
            tenant: "team-a",
            tenant_from: "identity",
            identity: "",
            upstream: "mimir",
            method: "GET",
            path,
            status,
            elapsed,
            bytes_in: 0,
            bytes_out: 1 << 33,
            error,
        }
    }

    fn direct(l: &AccessLine<'_>) -> String {
        let mut out = String::new();
        l.logfmt(&mut out, &mut Stamp::default(), 1_764_612_001_042);
        out
    }

    /// The same line through tracing and tenantgate's logfmt event formatter.
    fn through_tracing(l: &AccessLine<'_>) -> String {
        let out = Arc::new(std::sync::Mutex::new(Vec::new()));
        let subscriber = super::super::log::logfmt_subscriber(out.clone());
        tracing::subscriber::with_default(subscriber, || l.trace());
        let bytes = out.lock().map(|v| v.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    /// Everything after the timestamp.
    fn after_ts(line: &str) -> &str {
        line.split_once(' ').map_or("", |(_, rest)| rest)
    }

    /// Durations here are ones tracing's `f64` writes with three decimals too; the others
    /// are in [`durations_are_milliseconds_with_three_decimals`].
    #[test]
    fn the_direct_line_is_the_line_tracing_writes() {
        for l in [
            line(200, Duration::from_micros(1_234), "/api/v1/query", ""),
            line(
                502,
                Duration::from_micros(30_000_001),
                "/x",
                "upstream: refused",
            ),
            line(
                404,
                Duration::from_nanos(999_499),
                "/a b=\"c\"",
                "said \"no\"\n",
            ),
            line(200, Duration::from_micros(7), "/prometheus/é", "\u{85}"),
        ] {
            let direct = direct(&l);
            let traced = through_tracing(&l);
            assert!(traced.starts_with("ts="), "{traced:?}");
            assert!(
                direct.starts_with("ts=2025-12-01T18:00:01.042Z "),
                "{direct:?}"
            );
            assert_eq!(after_ts(&direct), after_ts(&traced));
        }
    }

    #[test]
    fn durations_are_milliseconds_with_three_decimals() {
        for (elapsed, logged) in [
            (Duration::ZERO, " duration_ms=0.000 "),
            (Duration::from_micros(2_500), " duration_ms=2.500 "),
            (Duration::from_nanos(1_999_500), " duration_ms=2.000 "),
            (Duration::from_secs(3_600), " duration_ms=3600000.000 "),
        ] {
            let out = direct(&line(200, elapsed, "/", ""));
            assert!(out.contains(logged), "{out}");
        }
    }

    #[test]
    fn fields_come_in_order_and_quoted_as_needed() {
        let out = direct(&line(503, Duration::from_micros(1), "/", "timed out"));
        assert_eq!(
            after_ts(&out),
            "level=warn msg=request client=127.0.0.1:40000 route=read tenant=team-a \
             tenant_from=identity identity=\"\" upstream=mimir method=GET path=/ status=503 \
             duration_ms=0.001 bytes_in=0 bytes_out=8589934592 error=\"timed out\"\n"
        );
    }

    #[test]
    fn levels_let_through_what_the_subscriber_would() {
        use tracing::Level;
        // --log.level: (info lines, warn lines).
        for (level, info, warn) in [
            (LogLevel::Debug, true, true),
            (LogLevel::Info, true, true),
            (LogLevel::Warn, false, true),
            (LogLevel::Error, false, false),
        ] {
            assert_eq!(enabled(level, Level::INFO), info, "{level:?}");
            assert_eq!(enabled(level, Level::WARN), warn, "{level:?}");
        }
    }
}
