//! `tenantgate migrate`: copy history from a remote read endpoint into a remote write endpoint as
//! one tenant, in time slabs, resumably, and optionally keep replicating.
//!
//! The walk: validate (source reads, destination accepts the tenant, range sane), read the
//! progress series back from the destination to find where an earlier run stopped, then copy
//! slab after slab, oldest first. Reads run ahead of writes (`--concurrency`); writes go in time
//! order, one request at a time, so each series reaches the destination as a growing prefix and
//! no sample is older than what the destination's head accepts. After every slab, the progress
//! series records how far the destination holds the range.
//!
//! A run killed between a slab's writes and its progress record leaves a partly written slab.
//! The next run reads the destination over one slab's width after the recorded progress and
//! skips exactly the samples already there (see `resume`). A slab whose progress cannot be
//! recorded stops the run, so there is never more than one such slab.
//!
//! The files, in the order a run uses them: `args` (the command line), `setup` (the checked
//! plan), `preflight` (validation and the dry run), `resume` (the progress record and what a
//! resumed run may skip), `engine` (the copy: slabs planned by `plan`, read by `read` over
//! `remote`, written with `wire`), `verify`, `display` (progress on stderr) and `report`.

mod args;
mod display;
mod engine;
mod plan;
mod preflight;
pub mod read;
pub mod remote;
pub mod report;
mod resume;
pub mod selector;
mod setup;
mod verify;
pub mod wire;
mod write;
pub mod xor;

pub use args::{MigrateArgs, ProgressMode, ReportFormat, Shard, parse_shard, parse_time};

use crate::config::Config;
use engine::Migration;
use remote::Stop;
use report::Outcome;
use setup::Plan;

/// Runs `tenantgate migrate`; returns the process exit code: 0 done, 1 failed, 2 a bad command
/// line (checked before anything is contacted), 3 done but
/// samples were refused or verification found differences, 4 stopped by a signal before the
/// end. A stop is not success: a Kubernetes Job must run a drained shard again, and a script
/// must not delete the source after it.
pub fn main(args: MigrateArgs, tenant: Option<String>, config: Option<Config>) -> u8 {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tenantgate migrate: cannot start the async runtime: {e}");
            return 1;
        }
    };
    runtime.block_on(async move {
        let plan = match Plan::new(&args, tenant, config.as_ref()) {
            Ok(p) => p,
            // A command line that cannot work, like one that does not parse (clap's exit 2):
            // running it again fails the same way.
            Err(e) => {
                eprintln!("tenantgate migrate: {e}");
                return 2;
            }
        };
        let stop = Stop::default();
        spawn_signal_handler(stop.clone());
        let mut m = Migration::new(plan, stop, &args);
        let report = m.run(&args).await;
        let code = match report.outcome {
            Outcome::Failed => 1,
            Outcome::Stopped => 4,
            Outcome::Incomplete => 3,
            Outcome::Complete => 0,
        };
        if args.dry_run && report.outcome == Outcome::Complete {
            // The plan is the output.
            return code;
        }
        match args.report_format {
            ReportFormat::Text => print!("{}", report.to_text(40)),
            ReportFormat::Json => match serde_json::to_string_pretty(&report) {
                Ok(j) => println!("{j}"),
                Err(e) => eprintln!("tenantgate migrate: cannot encode the report: {e}"),
            },
        }
        code
    })
}

/// Registers SIGINT and SIGTERM now (a signal not yet registered would kill the process with
/// its slab half written) and handles them in a task: the first stops after the slab in flight,
/// a second abandons it.
fn spawn_signal_handler(stop: Stop) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!("cannot install signal handlers; SIGINT/SIGTERM kill the migration");
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            if stop.raise() == 1 {
                tracing::warn!(
                    "stopping after the slab in flight and recording progress; signal again to abandon it"
                );
            } else {
                tracing::warn!("abandoning the slab in flight");
            }
        }
    });
}
