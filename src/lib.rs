//! tenantgate: a reverse proxy that makes Grafana Mimir look like Prometheus.
//!
//! For each request: normalize the path ([`route`]), pick a route, decide the tenant
//! ([`tenant`]), then either answer from config ([`promapi`]) or forward ([`forward`]) with
//! exactly one `X-Scope-OrgID` that tenantgate chose. [`app`] wires those steps; [`server`] runs
//! them on listeners; [`telemetry`] records what happened.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tenantgate::{app::AppOptions, config, server::{ConfigSource, Server}};
//! let source = ConfigSource::default(); // the built-in dev shim config
//! let server = Server::bind(source.load()?, source, AppOptions::default()).await?;
//! println!("listening on {:?}", server.data_addrs());
//! server.run(std::future::pending()).await;
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(unreachable_pub)]

pub mod app;
pub mod auth;
pub mod body;
pub mod config;
pub mod conn;
pub mod conns;
pub mod discard;
pub mod drive;
pub mod error;
pub mod forward;
pub mod login_state;
pub mod migrate;
pub mod park;
pub mod probe;
pub mod promapi;
pub mod push;
pub mod route;
pub mod server;
pub mod signals;
pub mod telemetry;
pub mod tenant;
pub mod time;
pub mod tls;

pub use app::App;

/// Builds the proxy service for a config (for tests and embedding).
pub fn app(config: config::Config) -> Result<App, String> {
    App::new(config, app::AppOptions::default())
}
