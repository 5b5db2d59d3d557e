//! Splitting one remote write request into one request per tenant, chosen by series labels.
//!
//! Every series goes to exactly one tenant, with all its samples, exemplars and histograms;
//! Remote Write 2.0 gets a symbol table of its own per tenant. Remote Write 1.0 metadata goes
//! with the series of its metric family (to each tenant that has some), else to the default
//! tenant; without one it is dropped (it describes no series of this request).

use std::collections::HashMap;

use bytes::Bytes;
use prost::Message;

use super::scan;
use super::wire::{V1MetadataName, V1Request, V1Series, V2Request, V2Series};
use crate::auth::Identity;
use crate::tenant::{LabelTenancy, TenantId};

/// Why a request cannot be split (each is the client's to fix: 400 or 403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SplitError {
    #[error("the request is not a valid remote write message: {0}")]
    Decode(String),
    #[error(
        "series {series} has none of the labels that name the tenant ({labels}), and this route has no default tenant"
    )]
    NoTenantLabel { series: String, labels: String },
    #[error("series {series}: {value:?} is not a valid tenant ID: {why}")]
    InvalidTenant {
        series: String,
        value: String,
        why: String,
    },
    #[error("series {series} is for tenant {tenant:?}, which {who} may not write to")]
    Forbidden {
        series: String,
        tenant: String,
        who: String,
    },
    #[error("the request has series for more than {max} tenants (max_tenants)")]
    TooManyTenants { max: usize },
}

impl SplitError {
    /// 403 for a tenant the caller may not write; 400 for the rest.
    pub fn is_forbidden(&self) -> bool {
        matches!(self, SplitError::Forbidden { .. })
    }
}

/// The tenant rules of one request: the route's, and who is calling.
pub struct Policy<'a> {
    pub tenancy: &'a LabelTenancy,
    /// The authenticated caller, on a route that requires one: it writes only to its tenants.
    pub caller: Option<&'a Identity>,
}

/// One tenant's part of a request, encoded (not compressed).
#[derive(Debug, Clone, PartialEq)]
pub struct Part {
    pub tenant: TenantId,
    pub body: Bytes,
    pub series: usize,
}

/// At most `max` bytes of `s`, cut on a character boundary, with "..." when cut.
pub(super) fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// `{__name__="up", job="x"}`, cut short: how a series is named in an error.
fn describe<'a>(labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut s = String::from("{");
    for (i, (n, v)) in labels.enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(&format!("{n}={v:?}"));
        if s.len() > 200 {
            break;
        }
    }
    let mut s = cut(&s, 200);
    s.push('}');
    s
}

impl Policy<'_> {
    pub(super) fn allowed(&self, t: &TenantId) -> bool {
        let by_route = self
            .tenancy
            .allow
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x == t));
        let by_caller = self
            .caller
            .is_none_or(|c| c.tenant.as_str().split('|').any(|m| m == t.as_str()));
        by_route && by_caller
    }

    fn who(&self) -> String {
        match self.caller {
            Some(c) => format!("identity {:?}", &*c.name),
            None => "this route".to_owned(),
        }
    }

    /// The tenant of one series and the index of the label that named it (to remove).
    fn tenant_of(&self, labels: &[(&str, &str)]) -> Result<(TenantId, Option<usize>), SplitError> {
        self.tenant_of_names(labels, &self.tenancy.labels)
    }

    /// The same, naming the tenant by the first of `names` present (labels, or OTLP resource
    /// attributes).
    pub(super) fn tenant_of_names(
        &self,
        labels: &[(&str, &str)],
        names: &[String],
    ) -> Result<(TenantId, Option<usize>), SplitError> {
        let t = self.tenancy;
        let named = names
            .iter()
            .find_map(|want| labels.iter().position(|(n, v)| n == want && !v.is_empty()));
        let series = || describe(labels.iter().copied());
        let Some(at) = named else {
            let Some(default) = &t.default else {
                return Err(SplitError::NoTenantLabel {
                    series: series(),
                    labels: names.join(", "),
                });
            };
            return self.checked(default.clone(), series).map(|d| (d, None));
        };
        let value = format!("{}{}", t.prefix, labels[at].1);
        let tenant = TenantId::parse(&value).map_err(|e| SplitError::InvalidTenant {
            series: series(),
            value: cut(&value, 200),
            why: e.to_string(),
        })?;
        if self.allowed(&tenant) {
            return Ok((tenant, Some(at)));
        }
        match &t.default {
            Some(default) if t.forbidden_to_default => {
                self.checked(default.clone(), series).map(|d| (d, None))
            }
            _ => Err(SplitError::Forbidden {
                series: series(),
                tenant: tenant.as_str().to_owned(),
                who: self.who(),
            }),
        }
    }

    pub(super) fn checked(
        &self,
        tenant: TenantId,
        series: impl Fn() -> String,
    ) -> Result<TenantId, SplitError> {
        if self.allowed(&tenant) {
            Ok(tenant)
        } else {
            Err(SplitError::Forbidden {
                series: series(),
                tenant: tenant.as_str().to_owned(),
                who: self.who(),
            })
        }
    }
}

/// One group per tenant, in first-seen order (so the parts, and tests, are deterministic), at
/// most `max` of them.
pub(super) struct Groups<G> {
    index: HashMap<TenantId, usize>,
    pub(super) groups: Vec<(TenantId, G)>,
    max: usize,
}

impl<G: Default> Groups<G> {
    pub(super) fn new(max: usize) -> Self {
        Groups {
            index: HashMap::new(),
            groups: Vec::new(),
            max,
        }
    }

    /// The group of `tenant`, made if new.
    pub(super) fn slot(&mut self, tenant: TenantId) -> Result<&mut G, SplitError> {
        let i = match self.index.get(&tenant) {
            Some(i) => *i,
            None => {
                if self.groups.len() == self.max {
                    return Err(SplitError::TooManyTenants { max: self.max });
                }
                self.index.insert(tenant.clone(), self.groups.len());
                self.groups.push((tenant, G::default()));
                self.groups.len() - 1
            }
        };
        Ok(&mut self.groups[i].1)
    }
}

/// The metric families a series name can belong to: itself, and without a suffix that
/// Prometheus adds to a family's series (`x_bucket`, `x_sum`, ... of family `x`).
fn families_of(name: &str) -> impl Iterator<Item = &str> {
    const SUFFIXES: [&str; 8] = [
        "_bucket", "_sum", "_count", "_total", "_created", "_info", "_gcount", "_gsum",
    ];
    std::iter::once(name).chain(SUFFIXES.iter().filter_map(move |s| name.strip_suffix(s)))
}

/// A Remote Write 1.0 `WriteRequest` with series already grouped, for encoding.
#[derive(Clone, PartialEq, Message)]
struct V1Part {
    #[prost(message, repeated, tag = "1")]
    timeseries: Vec<V1Series>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    metadata: Vec<Bytes>,
}

/// Splits a Remote Write 1.0 request (decompressed).
pub fn split_v1(raw: Bytes, policy: &Policy<'_>) -> Result<Vec<Part>, SplitError> {
    let counts = scan::count(&raw, &[1, 3])?;
    scan::bound(counts[0], scan::MAX_SERIES, "series")?;
    scan::bound(counts[1], scan::MAX_METADATA, "metadata entries")?;
    let req = V1Request::decode(raw).map_err(|e| SplitError::Decode(e.to_string()))?;
    let mut groups: Groups<Vec<V1Series>> = Groups::new(policy.tenancy.max_tenants);
    for ts in req.timeseries {
        scan::bound(
            scan::count(&ts, &[1])?[0],
            scan::MAX_LABELS,
            "labels in a series",
        )?;
        let mut s = V1Series::decode(ts).map_err(|e| SplitError::Decode(e.to_string()))?;
        if s.labels.is_empty() || s.labels.iter().any(|l| l.name.is_empty()) {
            return Err(SplitError::Decode(
                "a series without labels, or with an empty label name".into(),
            ));
        }
        let (tenant, at) = {
            let labels: Vec<(&str, &str)> = s
                .labels
                .iter()
                .map(|l| (l.name.as_str(), l.value.as_str()))
                .collect();
            policy.tenant_of(&labels)?
        };
        if let Some(at) = at.filter(|_| policy.tenancy.remove_label) {
            // Every copy: a second one left behind would still name a tenant.
            let name = s.labels[at].name.clone();
            s.labels.retain(|l| l.name != name);
        }
        groups.slot(tenant)?.push(s);
    }
    // Which groups hold series of each metric family (`x`, `x_bucket`, ... all of family x).
    let mut families: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, (_, series)) in groups.groups.iter().enumerate() {
        for s in series {
            let Some(name) = s.labels.iter().find(|l| l.name == "__name__") else {
                continue;
            };
            for family in families_of(&name.value) {
                let at = families.entry(family.to_owned()).or_default();
                if at.last() != Some(&i) {
                    at.push(i);
                }
            }
        }
    }
    let mut metadata: Vec<Vec<Bytes>> = vec![Vec::new(); groups.groups.len()];
    // Metadata of no series here (Prometheus sends metadata in requests of its own) goes to
    // the default tenant, if this caller may write there; else it is dropped.
    let default = policy.tenancy.default.clone().filter(|d| policy.allowed(d));
    for md in req.metadata {
        let family = V1MetadataName::decode(md.clone())
            .map_err(|e| SplitError::Decode(e.to_string()))?
            .metric_family_name;
        match families.get(&family) {
            Some(at) => {
                for i in at {
                    metadata[*i].push(md.clone());
                }
            }
            None => {
                if let Some(default) = &default {
                    groups.slot(default.clone())?;
                    metadata.resize(groups.groups.len(), Vec::new());
                    if let Some(i) = groups.groups.iter().position(|(t, _)| t == default) {
                        metadata[i].push(md);
                    }
                }
            }
        }
    }
    Ok(groups
        .groups
        .into_iter()
        .zip(metadata)
        .map(|((tenant, timeseries), metadata)| Part {
            series: timeseries.len(),
            body: V1Part {
                timeseries,
                metadata,
            }
            .encode_to_vec()
            .into(),
            tenant,
        })
        .collect())
}

/// One tenant's Remote Write 2.0 part being built: its own symbol table.
struct V2Builder {
    symbols: Vec<String>,
    refs: HashMap<u32, u32>,
    timeseries: Vec<V2Series>,
}

impl Default for V2Builder {
    fn default() -> Self {
        V2Builder {
            // The spec: the first symbol is always the empty string.
            symbols: vec![String::new()],
            refs: HashMap::from([(0, 0)]),
            timeseries: Vec::new(),
        }
    }
}

impl V2Builder {
    fn map(&mut self, old: u32, symbols: &[String]) -> u32 {
        if let Some(r) = self.refs.get(&old) {
            return *r;
        }
        let new = self.symbols.len() as u32;
        self.symbols
            .push(symbols.get(old as usize).cloned().unwrap_or_default());
        self.refs.insert(old, new);
        new
    }
}

fn symbol(symbols: &[String], r: u32) -> Result<&str, SplitError> {
    symbols
        .get(r as usize)
        .map(String::as_str)
        .ok_or_else(|| SplitError::Decode(format!("symbol reference {r} is out of range")))
}

/// Splits a Remote Write 2.0 request (decompressed).
pub fn split_v2(raw: Bytes, policy: &Policy<'_>) -> Result<Vec<Part>, SplitError> {
    let counts = scan::count(&raw, &[4, 5])?;
    scan::bound(counts[0], scan::MAX_SYMBOLS, "symbols")?;
    scan::bound(counts[1], scan::MAX_SERIES, "series")?;
    let req = V2Request::decode(raw).map_err(|e| SplitError::Decode(e.to_string()))?;
    let symbols = req.symbols;
    // The spec: symbols[0] is always "", and reference 0 means "no string".
    if symbols.first().is_some_and(|s| !s.is_empty()) {
        return Err(SplitError::Decode(
            "the first symbol must be the empty string".into(),
        ));
    }
    let mut groups: Groups<V2Builder> = Groups::new(policy.tenancy.max_tenants);
    for mut ts in req.timeseries {
        scan::bound(
            ts.labels_refs.len() / 2,
            scan::MAX_LABELS,
            "labels in a series",
        )?;
        if ts.labels_refs.is_empty() {
            return Err(SplitError::Decode("a series without labels".into()));
        }
        if ts.labels_refs.len() % 2 != 0 {
            return Err(SplitError::Decode(
                "a series has an odd number of label references".into(),
            ));
        }
        let (tenant, at) = {
            let labels = ts
                .labels_refs
                .chunks(2)
                .map(|p| Ok((symbol(&symbols, p[0])?, symbol(&symbols, p[1])?)))
                .collect::<Result<Vec<_>, SplitError>>()?;
            policy.tenant_of(&labels)?
        };
        if let Some(at) = at.filter(|_| policy.tenancy.remove_label) {
            // Every copy of the tenant label: a second one would still name a tenant.
            let name = symbol(&symbols, ts.labels_refs[2 * at])?.to_owned();
            let mut kept = Vec::with_capacity(ts.labels_refs.len());
            for p in ts.labels_refs.chunks(2) {
                if symbol(&symbols, p[0])? != name {
                    kept.extend_from_slice(p);
                }
            }
            ts.labels_refs = kept;
        }
        let b = groups.slot(tenant)?;
        for r in ts.labels_refs.iter_mut() {
            *r = b.map(*r, &symbols);
        }
        for e in &mut ts.exemplars {
            for r in e.labels_refs.iter_mut() {
                symbol(&symbols, *r)?;
                *r = b.map(*r, &symbols);
            }
        }
        if let Some(m) = &mut ts.metadata {
            symbol(&symbols, m.help_ref)?;
            symbol(&symbols, m.unit_ref)?;
            m.help_ref = b.map(m.help_ref, &symbols);
            m.unit_ref = b.map(m.unit_ref, &symbols);
        }
        b.timeseries.push(ts);
    }
    Ok(groups
        .groups
        .into_iter()
        .map(|(tenant, b)| Part {
            series: b.timeseries.len(),
            body: V2Request {
                symbols: b.symbols,
                timeseries: b.timeseries,
            }
            .encode_to_vec()
            .into(),
            tenant,
        })
        .collect())
}

#[cfg(test)]
#[path = "split_tests.rs"]
mod tests;
