//! The standard process metrics (`process_cpu_seconds_total`, `process_resident_memory_bytes`,
//! `process_virtual_memory_bytes`, `process_open_fds`, `process_max_fds`,
//! `process_start_time_seconds`, `process_threads`), read from `/proc/self` at each scrape, as
//! Prometheus' Go client does. No maintained crate provides them for prometheus-client; on a
//! system without `/proc` they are left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Linux reports CPU times and start times in clock ticks of `USER_HZ`, which is 100 on every
/// architecture Linux supports for user space (it is part of the kernel's ABI).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Default)]
pub(super) struct ProcessCollector;

/// What one scrape reads.
#[derive(Debug, Default, PartialEq)]
struct Sample {
    cpu_seconds: Option<f64>,
    resident_bytes: Option<f64>,
    virtual_bytes: Option<f64>,
    threads: Option<f64>,
    start_time: Option<f64>,
    open_fds: Option<f64>,
    max_fds: Option<f64>,
}

impl Sample {
    fn read() -> Sample {
        let mut s = Sample::default();
        if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
            s.read_stat(&stat, boot_time());
        }
        if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
            s.resident_bytes = status_kib(&status, "VmRSS:");
        }
        s.open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as f64);
        if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
            s.max_fds = max_open_files(&limits);
        }
        s
    }

    /// `/proc/self/stat`: fields after the command name (which may hold spaces, so it is cut
    /// at the last ')').
    fn read_stat(&mut self, stat: &str, boot: Option<f64>) {
        let Some((_, rest)) = stat.rsplit_once(')') else {
            return;
        };
        // rest starts at field 3 (state); field N is at index N - 3.
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |n: usize| f.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (num(14), num(15)) {
            self.cpu_seconds = Some((utime + stime) / TICKS_PER_SECOND);
        }
        self.threads = num(20);
        if let (Some(start), Some(boot)) = (num(22), boot) {
            self.start_time = Some(boot + start / TICKS_PER_SECOND);
        }
        self.virtual_bytes = num(23);
    }
}

fn boot_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

fn status_kib(status: &str, key: &str) -> Option<f64> {
    let line = status.lines().find_map(|l| l.strip_prefix(key))?;
    let kib: f64 = line.split_whitespace().next()?.parse().ok()?;
    Some(kib * 1024.0)
}

fn max_open_files(limits: &str) -> Option<f64> {
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    // Soft limit first: what the process can actually open.
    line.split_whitespace().next()?.parse().ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = Sample::read();
        if let Some(v) = s.cpu_seconds {
            let c = ConstCounter::new(v);
            let m = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                c.metric_type(),
            )?;
            c.encode(m)?;
        }
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                s.resident_bytes,
            ),
            (
                "process_virtual_memory_bytes",
                "Virtual memory size in bytes",
                s.virtual_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                s.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                s.max_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                s.start_time,
            ),
            (
                "process_threads",
                "Number of OS threads in the process",
                s.threads,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let g = ConstGauge::new(v);
                let m = encoder.encode_descriptor(name, help, None, g.metric_type())?;
                g.encode(m)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_read_past_a_command_with_spaces() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime cutime cstime priority nice threads itrealvalue starttime vsize rss ...
        let stat = "42 (tenant gate) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 1000 \
                    123456789 500 18446744073709551615";
        let mut s = Sample::default();
        s.read_stat(stat, Some(1_700_000_000.0));
        assert_eq!(s.cpu_seconds, Some(3.0));
        assert_eq!(s.threads, Some(3.0));
        assert_eq!(s.start_time, Some(1_700_000_010.0));
        assert_eq!(s.virtual_bytes, Some(123_456_789.0));
        assert_eq!(
            max_open_files(
                "Max open files            1024                 524288               files\n"
            ),
            Some(1024.0)
        );
        assert_eq!(
            status_kib("VmRSS:\t    2048 kB\n", "VmRSS:"),
            Some(2_097_152.0)
        );
    }

    #[test]
    fn this_process_is_described() {
        let s = Sample::read();
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(
                s.cpu_seconds.is_some() && s.resident_bytes.unwrap_or(0.0) > 0.0,
                "{s:?}"
            );
            assert!(
                s.open_fds.unwrap_or(0.0) >= 3.0 && s.max_fds.is_some(),
                "{s:?}"
            );
            assert!(s.start_time.unwrap_or(0.0) > 1_600_000_000.0, "{s:?}");
        }
    }
}
