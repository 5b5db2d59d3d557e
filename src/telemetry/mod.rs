//! What tenantgate tells its operators: logs ([`log`]), metrics ([`metrics`]), and
//! [`Exchange`], which records one request in both when its response body is finished.

mod access;
pub mod build;
mod exchange;
mod handles;
mod log;
pub mod logbuf;
mod metrics;
mod process;

pub use exchange::{Exchange, Metered};
pub use handles::{RouteHandles, TenantHandles};
pub use log::{LogFormat, LogLevel, init_logging};
pub use metrics::{
    EmulatedLabels, Metrics, OPENMETRICS, Refusal, RefusedLabels, RequestLabels, RouteLabels,
    RouteTenantLabels, UpstreamErrorLabels, UpstreamLabels, method_label, openmetrics_to_text,
};
