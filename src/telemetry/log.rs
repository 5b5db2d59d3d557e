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
pub fn init_logging(format: LogFormat, level: LogLevel, buffered: bool) {
    match buffered.then(super::logbuf::init).flatten() {
        Some(writer) => install(format, level, writer),
        None => install(format, level, std::io::stderr),
    }
}

fn install<W>(format: LogFormat, level: LogLevel, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_writer(writer)
        .with_max_level(level.filter());
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Logfmt => builder.event_format(Logfmt).try_init(),
    };
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
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

struct LogfmtFields<'a> {
    scratch: &'a mut Scratch,
    has_message: bool,
}

fn logfmt_value(out: &mut String, v: &str) {
    let needs_quotes = v.is_empty()
        || v.chars()
            .any(|c| c == ' ' || c == '=' || c == '"' || c.is_control());
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
        crate::time::write_rfc3339(writer, crate::time::now_millis())?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
