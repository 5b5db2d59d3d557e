//! Logging: Prometheus-style `--log.level` and `--log.format` (logfmt or JSON), to stderr.

use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Log line format, as Prometheus' `--log.format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Logfmt,
    Json,
}

/// Log level, as Prometheus' `--log.level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

impl LogLevel {
    fn filter(self) -> tracing::level_filters::LevelFilter {
        use tracing::level_filters::LevelFilter;
        match self {
            LogLevel::Debug => LevelFilter::DEBUG,
            LogLevel::Info => LevelFilter::INFO,
            LogLevel::Warn => LevelFilter::WARN,
            LogLevel::Error => LevelFilter::ERROR,
        }
    }
}

/// Installs the global log subscriber, writing to stderr. Safe to call more than once (tests):
/// later calls are ignored. `buffered` (serving): lines go through [`super::logbuf`], so that
/// no request waits for stderr; call [`super::logbuf::flush`] before exiting.
///
/// In logfmt, access-log lines skip tracing and are written by [`super::access`] to the same
/// place, in the same format: they are one per request, and tracing's field visiting cost
/// more than the rest of the line. JSON lines all go through tracing's own JSON formatter.
pub fn init_logging(format: LogFormat, level: LogLevel, buffered: bool) {
    let writer = buffered.then(super::logbuf::init).flatten();
    let installed = match &writer {
        Some(writer) => install(format, level, writer.clone()),
        None => install(format, level, std::io::stderr),
    };
    if installed && format == LogFormat::Logfmt {
        super::access::write_directly(level, writer.map(|w| w.buffer()));
    }
}

/// Whether `level` lets through events at `event` (as the subscriber's max level does).
pub(super) fn enabled(level: LogLevel, event: tracing::Level) -> bool {
    level.filter() >= event
}

/// Installs the subscriber; false if one was already installed.
fn install<W>(format: LogFormat, level: LogLevel, writer: W) -> bool
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(level.filter());
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Logfmt => builder.event_format(Logfmt).try_init(),
    }
    .is_ok()
}

/// Formats events as logfmt: `ts=... level=info msg="..." key=value`.
struct Logfmt;

/// Strings reused from one event to the next on a thread: the access log formats a line per
/// request, and these would otherwise be allocated (and freed) every time.
#[derive(Default)]
struct Scratch {
    fields: String,
    message: String,
    value: String,
    stamp: Stamp,
}

/// The timestamp of a line up to its milliseconds (`2026-12-01T18:20:01.`), kept for the
/// second it names: formatting a date is the costliest part of a line, and lines come many per
/// second.
#[derive(Default)]
pub(super) struct Stamp {
    text: String,
    second: Option<i64>,
}

impl Stamp {
    /// Writes `ms` (since the epoch) as RFC 3339 with milliseconds, as
    /// [`crate::time::write_rfc3339`] does, reusing the date of the previous line's second.
    pub(super) fn write(&mut self, out: &mut impl fmt::Write, ms: i64) -> fmt::Result {
        let (second, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
        if self.second != Some(second) {
            self.text.clear();
            crate::time::write_rfc3339(&mut self.text, second * 1000)?;
            // "…:SS.000Z": keep "…:SS." and put this line's milliseconds after it.
            if !self.text.ends_with(".000Z") {
                self.second = None;
                return crate::time::write_rfc3339(out, ms);
            }
            self.text.truncate(self.text.len() - 4);
            self.second = Some(second);
        }
        out.write_str(&self.text)?;
        let digits = [
            b'0' + (milli / 100) as u8,
            b'0' + (milli / 10 % 10) as u8,
            b'0' + (milli % 10) as u8,
        ];
        out.write_str(std::str::from_utf8(&digits).map_err(|_| fmt::Error)?)?;
        out.write_char('Z')
    }
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

struct LogfmtFields<'a> {
    scratch: &'a mut Scratch,
    has_message: bool,
}

/// Whether a logfmt value must be quoted: empty, or holding a space, `=`, `"` or a control
/// character. ASCII is checked a byte at a time; the rest by character (C1 controls).
fn needs_quotes(v: &str) -> bool {
    v.is_empty()
        || v.bytes()
            .any(|b| b <= b' ' || b == b'=' || b == b'"' || b == 0x7f)
        || (!v.is_ascii() && v.chars().any(char::is_control))
}

pub(super) fn logfmt_value(out: &mut String, v: &str) {
    let needs_quotes = needs_quotes(v);
    if needs_quotes {
        out.push('"');
        for c in v.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                c if c.is_control() => {
                    let _ = write!(out, "\\u{{{:x}}}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
    } else {
        out.push_str(v);
    }
}

impl LogfmtFields<'_> {
    /// A field whose value never needs quotes (a number, a boolean).
    fn plain(&mut self, field: &Field, value: fmt::Arguments<'_>) {
        if field.name() == "message" {
            let mut v = std::mem::take(&mut self.scratch.value);
            v.clear();
            let _ = v.write_fmt(value);
            self.record_str(field, &v);
            self.scratch.value = v;
            return;
        }
        let out = &mut self.scratch.fields;
        out.push(' ');
        out.push_str(field.name());
        out.push('=');
        let _ = out.write_fmt(value);
    }

    fn field(&mut self, name: &str, value: &str) {
        let out = &mut self.scratch.fields;
        out.push(' ');
        out.push_str(name);
        out.push('=');
        logfmt_value(out, value);
    }
}

impl Visit for LogfmtFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.scratch.message.clear();
            self.scratch.message.push_str(value);
            self.has_message = true;
        } else {
            self.field(field.name(), value);
        }
    }

    // Numbers and booleans need no quoting: written straight into the line, where the default
    // methods would format them through `record_debug` and check them for quotes.
    fn record_u64(&mut self, field: &Field, value: u64) {
        let mut digits = [0u8; 20];
        self.plain(field, format_args!("{}", decimal(value, &mut digits)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        let mut digits = [0u8; 20];
        let sign = if value < 0 { "-" } else { "" };
        self.plain(
            field,
            format_args!("{sign}{}", decimal(value.unsigned_abs(), &mut digits)),
        );
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        // Debug, as `record_debug` formats it: `1.0`, not `1`.
        self.plain(field, format_args!("{value:?}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.plain(field, format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        // Formatted into a reused string, then quoted as needed.
        let mut v = std::mem::take(&mut self.scratch.value);
        v.clear();
        let _ = write!(v, "{value:?}");
        self.record_str(field, &v);
        self.scratch.value = v;
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut v = std::mem::take(&mut self.scratch.value);
        v.clear();
        let _ = write!(v, "{value}");
        self.record_str(field, &v);
        self.scratch.value = v;
    }
}

/// `n` in decimal, in the tail of `buf`: cheaper than the formatting machinery for the
/// counters and sizes of every access-log line.
pub(super) fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

fn level_name(level: &tracing::Level) -> &'static str {
    match *level {
        tracing::Level::TRACE => "trace",
        tracing::Level::DEBUG => "debug",
        tracing::Level::INFO => "info",
        tracing::Level::WARN => "warn",
        tracing::Level::ERROR => "error",
    }
}

impl Logfmt {
    fn render(scratch: &mut Scratch, writer: &mut Writer<'_>, event: &Event<'_>) -> fmt::Result {
        scratch.fields.clear();
        let mut v = LogfmtFields {
            scratch,
            has_message: false,
        };
        event.record(&mut v);
        let has_message = v.has_message;
        write!(writer, "ts=")?;
        scratch.stamp.write(writer, crate::time::now_millis())?;
        write!(writer, " level={}", level_name(event.metadata().level()))?;
        if has_message {
            // The message goes through the same quoting as any value, via the value scratch.
            let mut quoted = std::mem::take(&mut scratch.value);
            quoted.clear();
            logfmt_value(&mut quoted, &scratch.message);
            write!(writer, " msg={quoted}")?;
            scratch.value = quoted;
        }
        writeln!(writer, "{}", scratch.fields)
    }
}

impl<S, N> FormatEvent<S, N> for Logfmt
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => Logfmt::render(&mut scratch, &mut writer, event),
            // A value's Debug that logs itself: format that one with fresh strings.
            Err(_) => Logfmt::render(&mut Scratch::default(), &mut writer, event),
        })
    }
}

/// A subscriber formatting with [`Logfmt`] into `out`, for tests comparing lines.
#[cfg(test)]
pub(super) fn logfmt_subscriber(
    out: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
) -> impl Subscriber + Send + Sync {
    struct Into(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Into {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    tracing_subscriber::fmt()
        .with_writer(move || Into(out.clone()))
        .with_max_level(tracing::level_filters::LevelFilter::TRACE)
        .event_format(Logfmt)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cached_timestamp_is_the_full_formatting() {
        let mut stamp = Stamp::default();
        // Within one second, across seconds, back again, and at the epoch.
        for ms in [
            1_764_612_001_000,
            1_764_612_001_007,
            1_764_612_001_999,
            1_764_612_002_040,
            1_764_612_001_500,
            0,
            999,
        ] {
            let mut cached = String::new();
            stamp.write(&mut cached, ms).unwrap();
            let mut full = String::new();
            crate::time::write_rfc3339(&mut full, ms).unwrap();
            assert_eq!(cached, full, "{ms}");
        }
    }

    #[test]
    fn decimals_are_written_as_display_writes_them() {
        for n in [0, 7, 10, 99, 100, 65_535, 1 << 40, u64::MAX] {
            let mut buf = [0u8; 20];
            assert_eq!(decimal(n, &mut buf), n.to_string());
        }
    }

    #[test]
    fn quoting_is_decided_as_by_character() {
        for v in [
            "plain",
            "",
            "a b",
            "a=b",
            "a\"b",
            "tab\there",
            "del\u{7f}",
            "é",
            "c1\u{85}x",
            "日本",
            "a\nb",
            "-",
            "1.5",
        ] {
            let by_char = v.is_empty()
                || v.chars()
                    .any(|c| c == ' ' || c == '=' || c == '"' || c.is_control());
            assert_eq!(needs_quotes(v), by_char, "{v:?}");
        }
    }

    #[test]
    fn logfmt_quotes_only_when_needed() {
        let mut s = String::new();
        logfmt_value(&mut s, "plain");
        s.push(' ');
        logfmt_value(&mut s, "two words");
        s.push(' ');
        logfmt_value(&mut s, "");
        s.push(' ');
        logfmt_value(&mut s, "a=\"b\"\n");
        assert_eq!(s, r#"plain "two words" "" "a=\"b\"\n""#);
    }
}
