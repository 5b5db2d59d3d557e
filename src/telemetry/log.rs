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

struct LogfmtFields<'a> {
    out: &'a mut String,
    message: Option<String>,
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

impl Visit for LogfmtFields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.out.push(' ');
            self.out.push_str(field.name());
            self.out.push('=');
            logfmt_value(self.out, value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.record_str(field, &value.to_string());
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
        let mut fields = String::new();
        let mut v = LogfmtFields {
            out: &mut fields,
            message: None,
        };
        event.record(&mut v);
        let message = v.message.take();
        let mut line = String::with_capacity(64 + fields.len());
        line.push_str("ts=");
        line.push_str(&crate::time::format_rfc3339(crate::time::now_millis()));
        line.push_str(" level=");
        line.push_str(&event.metadata().level().as_str().to_ascii_lowercase());
        if let Some(m) = message {
            line.push_str(" msg=");
            logfmt_value(&mut line, &m);
        }
        line.push_str(&fields);
        writeln!(writer, "{line}")
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
