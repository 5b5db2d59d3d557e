//! Remote write routes whose tenant comes from each series' labels (`tenant: { from: label }`):
//! one request in, one request per tenant out, in parallel, and one answer back that tells the
//! sender the truth about retrying.

pub mod merge;
pub mod otlp;
pub mod scan;
pub mod serve;
pub mod split;
pub mod wire;
