//! The command line. Everything else lives in the library.

#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use tenantgate::app::AppOptions;
use tenantgate::config::{self, Config, Overrides};
use tenantgate::migrate::MigrateArgs;
use tenantgate::server::{ConfigSource, Server};
use tenantgate::signals::Signals;
use tenantgate::telemetry::{self, LogFormat, LogLevel};

/// A reverse proxy that makes Grafana Mimir look like Prometheus: it sets X-Scope-OrgID per route
/// and answers the Prometheus endpoints Mimir lacks, so a Thanos sidecar, Grafana or promtool can
/// use Mimir as if it were Prometheus.
///
/// Without --config it runs the built-in dev shim: listen on 127.0.0.1:9090, forward to Mimir on
/// http://127.0.0.1:8080 as tenant "anonymous", emulate Prometheus under /prometheus.
#[derive(Parser, Debug)]
#[command(name = "tenantgate", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: CommonArgs,
    /// Log level.
    #[arg(long = "log.level", value_enum, default_value = "info", global = true)]
    log_level: LogLevel,
    /// Log format.
    #[arg(
        long = "log.format",
        value_enum,
        default_value = "logfmt",
        global = true
    )]
    log_format: LogFormat,
    /// Serving without the word `serve`.
    #[command(flatten)]
    serve: ServeArgs,
}

/// What every command reads.
#[derive(Args, Debug, Clone)]
struct CommonArgs {
    /// Config file (YAML). Without it, the built-in dev shim config is used.
    #[arg(
        long,
        short = 'c',
        value_name = "FILE",
        env = "TENANTGATE_CONFIG",
        global = true
    )]
    config: Option<PathBuf>,
    /// Override the tenant of every route that has a fixed tenant (routes that take it from the
    /// caller's identity or a header keep their authentication). For `migrate`: the tenant the
    /// history is written as.
    #[arg(long, value_name = "ID", global = true)]
    tenant: Option<String>,
}

/// Overrides of the config's values, for serving and `check`.
#[derive(Args, Debug, Clone, Default)]
struct OverrideArgs {
    /// Override the URL of the config's only upstream.
    #[arg(long, value_name = "URL")]
    upstream: Option<String>,
    /// Override the data listen address (e.g. 127.0.0.1:9090 or :9090).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Override the admin listen address (/metrics, /-/healthy, /-/ready, /-/reload).
    #[arg(long = "admin-listen", value_name = "ADDR")]
    admin_listen: Option<String>,
}

impl OverrideArgs {
    /// These, or where not given, `outer`'s (flags given before the command name).
    fn or(self, outer: OverrideArgs) -> OverrideArgs {
        OverrideArgs {
            upstream: self.upstream.or(outer.upstream),
            listen: self.listen.or(outer.listen),
            admin_listen: self.admin_listen.or(outer.admin_listen),
        }
    }

    fn given(&self) -> Option<&'static str> {
        [
            ("--upstream", self.upstream.is_some()),
            ("--listen", self.listen.is_some()),
            ("--admin-listen", self.admin_listen.is_some()),
        ]
        .into_iter()
        .find_map(|(flag, given)| given.then_some(flag))
    }
}

/// `tenantgate [serve]`'s own flags.
#[derive(Args, Debug, Clone, Default)]
struct ServeArgs {
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Worker threads serving requests (default: one per CPU). With 1, a single-threaded
    /// scheduler runs everything, like one NGINX worker process.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Write one access-log line per request [default: true].
    #[arg(long = "log.access", action = clap::ArgAction::Set, value_name = "BOOL")]
    log_access: Option<bool>,
}

impl ServeArgs {
    fn or(self, outer: ServeArgs) -> ServeArgs {
        ServeArgs {
            overrides: self.overrides.or(outer.overrides),
            threads: self.threads.or(outer.threads),
            log_access: self.log_access.or(outer.log_access),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve (the default when no command is given).
    Serve(ServeArgs),
    /// Validate the config and print the route table; exit non-zero on any error.
    Check {
        #[command(flatten)]
        overrides: OverrideArgs,
        /// Also contact every upstream the way real traffic would (reachability, TLS, each
        /// route's tenant, remote read, the push endpoint, emulated endpoints) and report one
        /// line per check. Writes nothing.
        #[arg(long, conflicts_with = "syntax_only")]
        probe: bool,
        /// Do not read the files and environment variables the config refers to (TLS material,
        /// tokens, htpasswd files), e.g. in CI where the secrets are not available.
        #[arg(long)]
        syntax_only: bool,
    },
    /// Copy history from a remote read endpoint into a remote write endpoint as --tenant, in
    /// time slabs, oldest first; resumable (progress is kept in the destination), optionally
    /// replicating new data (--follow). Exit status: 0 done, 1 failed, 2 a bad command line
    /// (nothing contacted), 3 done but the destination refused samples or --verify found
    /// differences, 4 stopped by a signal before the end (run the same command to resume).
    Migrate(Box<MigrateArgs>),
}

fn config_source(common: &CommonArgs, overrides: &OverrideArgs) -> ConfigSource {
    ConfigSource {
        path: common.config.clone(),
        overrides: Overrides {
            upstream: overrides.upstream.clone(),
            tenant: common.tenant.clone(),
            listen: overrides.listen.clone(),
            admin_listen: overrides.admin_listen.clone(),
            ..Overrides::default()
        },
    }
}

fn main() -> ExitCode {
    // Once per process: clap wants the version text for as long as it runs.
    let version: &'static str = Box::leak(telemetry::build::long_version().into_boxed_str());
    let matches = <Cli as clap::CommandFactory>::command()
        .long_version(version)
        .get_matches();
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let outer = cli.serve;
    let (serve_args, check) = match cli.command {
        Some(Command::Migrate(args)) => {
            if let Some(flag) = outer
                .overrides
                .given()
                .or(outer.threads.map(|_| "--threads"))
            {
                eprintln!("tenantgate migrate: {flag} is for serving; migrate does not use it");
                return ExitCode::from(2);
            }
            return migrate(*args, &cli.common, cli.log_format, cli.log_level);
        }
        Some(Command::Serve(s)) => (s.or(outer), None),
        Some(Command::Check {
            overrides,
            probe,
            syntax_only,
        }) => (
            ServeArgs {
                overrides: overrides.or(outer.overrides),
                ..ServeArgs::default()
            },
            Some((probe, syntax_only)),
        ),
        None => (outer, None),
    };
    let mut source = config_source(&cli.common, &serve_args.overrides);
    if let Some((_, true)) = check {
        source.overrides.syntax_only = true;
    }
    let config = match source.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            eprintln!(
                "tenantgate: the config has {} error(s); nothing was started",
                e.errors.len()
            );
            if e.errors
                .iter()
                .any(|e| e.message.starts_with("cannot read "))
            {
                eprintln!(
                    "tenantgate: files the config names are missing (relative paths are relative \
                     to the config file's directory); `tenantgate check --syntax-only` checks the \
                     rest without reading them"
                );
            }
            return ExitCode::from(1);
        }
    };
    if let Some((probe, _)) = check {
        print!("{}", describe(&config));
        if !probe {
            return ExitCode::SUCCESS;
        }
        telemetry::init_logging(cli.log_format, LogLevel::Error, false);
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                eprintln!("tenantgate: cannot start the async runtime: {e}");
                return ExitCode::from(1);
            }
        };
        println!("\nprobe:");
        let report = runtime.block_on(tenantgate::probe::probe(config));
        print!("{report}");
        return if report.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        };
    }
    telemetry::init_logging(cli.log_format, cli.log_level, true);
    let code = serve(
        config,
        source,
        AppOptions {
            access_log: serve_args.log_access.unwrap_or(true),
        },
        serve_args.threads,
    );
    telemetry::logbuf::flush();
    code
}

/// `tenantgate migrate`: reads --config only when --from or --to name one of its upstreams.
fn migrate(
    args: MigrateArgs,
    source: &CommonArgs,
    log_format: LogFormat,
    log_level: LogLevel,
) -> ExitCode {
    let config = match &source.config {
        Some(path) => match config::load(Some(path), &Overrides::default()) {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("{e}");
                eprintln!(
                    "tenantgate migrate: the config has {} error(s)",
                    e.errors.len()
                );
                return ExitCode::from(1);
            }
        },
        None => None,
    };
    telemetry::init_logging(log_format, log_level, false);
    ExitCode::from(tenantgate::migrate::main(
        args,
        source.tenant.clone(),
        config,
    ))
}

fn serve(
    config: Config,
    source: ConfigSource,
    options: AppOptions,
    threads: Option<u16>,
) -> ExitCode {
    let runtime = match threads {
        // One thread: no work-stealing, no cross-thread wake-ups.
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(usize::from(n))
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tenantgate: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(async move {
        let config_name = config.source.clone();
        let (routes, upstreams) = summary(&config);
        let signals = match Signals::install() {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install signal handlers");
                return ExitCode::from(1);
            }
        };
        let server = match Server::bind(config, source, options).await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                return ExitCode::from(1);
            }
        };
        tracing::info!(
            version = env!("CARGO_PKG_VERSION"),
            config = %config_name,
            routes = %routes,
            upstreams = %upstreams,
            "tenantgate starting"
        );
        let handle = server.handle();
        server.run(signals.wait(handle)).await;
        ExitCode::SUCCESS
    })
}

/// The start-up line's view of the config: each route with its upstream and tenant, and each
/// upstream's URL (no credentials: those never appear in URLs here).
fn summary(c: &Config) -> (String, String) {
    let routes = c
        .routes
        .iter()
        .map(|r| format!("{} -> {} as {}", r.name, r.upstream, r.tenant.describe()))
        .collect::<Vec<_>>()
        .join("; ");
    let upstreams = c
        .upstreams
        .iter()
        .map(|(name, u)| {
            format!(
                "{name}={}{}",
                u.origin.to_string().trim_end_matches('/'),
                u.base_path
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    (routes, upstreams)
}

/// The route table as `tenantgate check` prints it.
fn describe(c: &Config) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let addrs = |v: &[std::net::SocketAddr]| {
        v.iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "{}: ok", c.source);
    for unread in &c.unread {
        let _ = writeln!(out, "not read (--syntax-only): {unread}");
    }
    let _ = writeln!(out, "listen: {}", addrs(&c.server.listen));
    match &c.admin {
        Some(a) => {
            let _ = writeln!(
                out,
                "admin:  {} (/metrics, /-/healthy, /-/ready, /-/reload)",
                addrs(&a.listen)
            );
        }
        None => {
            let _ = writeln!(out, "admin:  off");
        }
    }
    if let Some(t) = &c.server.tls {
        let _ = writeln!(
            out,
            "tls:    {} (client certificates: {:?})",
            t.cert_file.display(),
            t.client_auth
        );
    }
    if !c.identities.is_empty() {
        let _ = writeln!(out, "\nidentities (credentials are never printed):");
        for i in c.identities.iter() {
            let _ = writeln!(
                out,
                "  {:<24} {:<13} -> tenant {}",
                i.name,
                i.credential.kind(),
                i.tenant
            );
        }
    }
    let _ = writeln!(out, "\nupstreams:");
    for u in c.upstreams.values() {
        let t = &u.timeouts;
        let _ = writeln!(
            out,
            "  {:<16} {}{}  (http2: {}, connect {}, response_header {}, idle {}, max_idle_connections {})",
            u.name,
            u.origin.to_string().trim_end_matches('/'),
            u.base_path,
            u.http2,
            config::units::format_duration(t.connect),
            config::units::format_duration(t.response_header),
            config::units::format_duration(t.idle),
            u.max_idle_connections,
        );
    }
    let _ = writeln!(
        out,
        "\nroutes, in match order (exact paths first, then the longest prefix):"
    );
    let order = tenantgate::route::match_order(c.routes.iter().map(|r| &r.path));
    for r in order.into_iter().map(|i| &c.routes[i]) {
        let kind = match r.path {
            tenantgate::route::PathMatch::Exact(_) => "=",
            tenantgate::route::PathMatch::Prefix(_) => "prefix",
        };
        let methods = r
            .methods
            .as_ref()
            .map(|m| m.iter().map(|m| m.as_str()).collect::<Vec<_>>().join(","))
            .unwrap_or_else(|| "any".into());
        let host = r.host.as_deref().unwrap_or("any");
        let upstream = c
            .upstreams
            .get(&*r.upstream)
            .map(|u| {
                format!(
                    "{}{}",
                    u.origin.to_string().trim_end_matches('/'),
                    u.base_path
                )
            })
            .unwrap_or_default();
        let mut target = String::new();
        if let Some(whole) = &r.rewrite.path {
            let _ = write!(target, " (rewrite: path {whole:?})");
        } else if r.rewrite.strip_prefix.is_some() || r.rewrite.add_prefix.is_some() {
            let _ = write!(
                target,
                " (rewrite: strip {:?}, add {:?})",
                r.rewrite.strip_prefix.as_deref().unwrap_or(""),
                r.rewrite.add_prefix.as_deref().unwrap_or("")
            );
        }
        let _ = writeln!(out, "  {}", r.name);
        let _ = writeln!(
            out,
            "    match:    {kind} {}  methods: {methods}  host: {host}",
            r.path.as_str()
        );
        let _ = writeln!(out, "    forward:  {} {upstream}{target}", r.upstream);
        let _ = writeln!(
            out,
            "    tenant:   {}  (X-Scope-OrgID set by tenantgate; client copies removed)",
            r.tenant.describe()
        );
        let _ = writeln!(
            out,
            "    max body: {}",
            config::units::format_size(r.max_request_body)
        );
        if let Some(e) = &r.prometheus {
            let prefix = r.path.as_str().trim_end_matches('/');
            let labels: Vec<String> = e
                .external_labels
                .iter()
                .map(|(k, v)| format!("{k}={v:?}"))
                .collect();
            let _ = writeln!(
                out,
                "    emulated: version {}, external_labels {{{}}}",
                e.version,
                labels.join(", ")
            );
            for ep in tenantgate::promapi::EmulatedEndpoint::ALL {
                let _ = writeln!(out, "              {prefix}/{}", ep.subpath());
            }
        }
    }
    out
}
