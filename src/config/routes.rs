//! Validation of `routes`: matches, rewrites, tenants and `prometheus:` blocks.

use std::collections::BTreeMap;

use http::Method;
use serde_saphyr::Spanned;

use super::UpstreamSettings;
use super::raw::{RawPrometheus, RawRoute};
use super::units::parse_duration;
use super::validate::{DEFAULT_MAX_REQUEST_BODY, Errors, valid_name};
use crate::promapi::{
    DEFAULT_VERSION, Emulation, LowestTimestamp, validate_label_name, validate_semver,
};
use crate::route::{PathMatch, Rewrite, Route, normalize_path, prefix_matches};
use crate::time::{now_millis, parse_rfc3339};

fn process_start_ms() -> i64 {
    static START: std::sync::OnceLock<i64> = std::sync::OnceLock::new();
    *START.get_or_init(now_millis)
}

fn config_path(
    errs: &mut Errors,
    key: &str,
    p: &str,
    span: &Spanned<super::raw::RawMatch>,
) -> bool {
    match normalize_path(p) {
        // Escapes in a route path would match differently from what the upstream decodes.
        Ok(n) if n == p && p.contains('%') => {
            errs.at(
                key,
                Some(span),
                format!("{p:?}: route paths cannot contain percent-escapes"),
            );
            false
        }
        Ok(n) if n == p => true,
        Ok(n) => {
            errs.at(
                key,
                Some(span),
                format!("{p:?} is not in normal form; write {n:?}"),
            );
            false
        }
        Err(e) => {
            errs.at(key, Some(span), format!("{p:?}: {e}"));
            false
        }
    }
}

fn emulation(errs: &mut Errors, key: &str, p: &Spanned<RawPrometheus>) -> Option<Emulation> {
    let labels = &p.value.external_labels;
    let mut ok = true;
    if labels.value.is_empty() {
        errs.at(format!("{key}.external_labels"), Some(labels), "at least one external label is needed: a Thanos sidecar exits when Prometheus has none");
        ok = false;
    }
    for (name, value) in &labels.value {
        if let Err(e) = validate_label_name(name) {
            errs.at(format!("{key}.external_labels.{name}"), Some(labels), e);
            ok = false;
        }
        if value.is_empty() {
            errs.at(
                format!("{key}.external_labels.{name}"),
                Some(labels),
                "label values must not be empty",
            );
            ok = false;
        }
    }
    let version = match &p.value.version {
        Some(v) => {
            if let Err(e) = validate_semver(&v.value) {
                errs.at(format!("{key}.version"), Some(v), e);
                ok = false;
            }
            v.value.clone()
        }
        None => DEFAULT_VERSION.to_owned(),
    };
    let lowest = match &p.value.lowest_timestamp {
        None => LowestTimestamp::At(0),
        Some(s) => match parse_rfc3339(&s.value) {
            Ok(ms) if ms >= 0 => LowestTimestamp::At(ms),
            Ok(_) => {
                errs.at(
                    format!("{key}.lowest_timestamp"),
                    Some(s),
                    "must not be before 1970",
                );
                ok = false;
                LowestTimestamp::At(0)
            }
            Err(_) => match parse_duration(&s.value) {
                Ok(d) if d.is_zero() => LowestTimestamp::At(0),
                Ok(d) => LowestTimestamp::Ago(d),
                Err(_) => {
                    errs.at(
                        format!("{key}.lowest_timestamp"),
                        Some(s),
                        format!("{:?} is neither an RFC 3339 time (2024-01-01T00:00:00Z) nor a duration (400d)", s.value),
                    );
                    ok = false;
                    LowestTimestamp::At(0)
                }
            },
        },
    };
    if !ok {
        return None;
    }
    match Emulation::new(
        labels.value.clone(),
        version,
        lowest,
        process_start_ms(),
        now_millis(),
    ) {
        Ok(e) => Some(e),
        Err(e) => {
            errs.at(key, Some(p), e);
            None
        }
    }
}

pub(super) fn route(
    errs: &mut Errors,
    i: usize,
    r: &Spanned<RawRoute>,
    upstreams: &BTreeMap<String, UpstreamSettings>,
    raw_upstreams: &[&String],
    identities: &crate::auth::Identities,
) -> Option<Route> {
    let key = format!("routes[{i}]");
    let rv = &r.value;
    let before = errs.errors.len();
    if !valid_name(&rv.name) {
        errs.at(
            format!("{key}.name"),
            Some(r),
            format!(
                "{:?} is not a valid route name (use letters, digits, '-', '_', '.')",
                rv.name
            ),
        );
    }
    let m = &rv.matcher;
    let path = match (&m.value.path, &m.value.path_prefix) {
        (Some(p), None) => config_path(errs, &format!("{key}.match.path"), p, m)
            .then(|| PathMatch::Exact(p.clone())),
        (None, Some(p)) => config_path(errs, &format!("{key}.match.path_prefix"), p, m)
            .then(|| PathMatch::Prefix(p.clone())),
        (Some(_), Some(_)) => {
            errs.at(
                format!("{key}.match"),
                Some(m),
                "set either path or path_prefix, not both",
            );
            None
        }
        (None, None) => {
            errs.at(
                format!("{key}.match"),
                Some(m),
                "set path (exact) or path_prefix",
            );
            None
        }
    };
    let methods = m.value.methods.as_ref().map(|ms| {
        if ms.is_empty() {
            errs.at(
                format!("{key}.match.methods"),
                Some(m),
                "an empty list matches nothing; leave methods out to allow all",
            );
        }
        ms.iter()
            .filter_map(|s| {
                let upper = s.to_ascii_uppercase();
                match Method::from_bytes(upper.as_bytes()) {
                    Ok(method) if upper == *s => Some(method),
                    _ => {
                        errs.at(
                            format!("{key}.match.methods"),
                            Some(m),
                            format!(
                                "{s:?} is not an HTTP method (write it in upper case, e.g. GET)"
                            ),
                        );
                        None
                    }
                }
            })
            .collect::<Vec<_>>()
    });
    let host = m.value.host.as_ref().map(|h| {
        if h.is_empty() || h.contains(['/', ' ', ':']) {
            errs.at(
                format!("{key}.match.host"),
                Some(m),
                format!("{h:?} is not a host name (no scheme, port or path)"),
            );
        }
        h.to_ascii_lowercase()
    });
    if !upstreams.contains_key(&rv.upstream.value) && !raw_upstreams.contains(&&rv.upstream.value) {
        let known: Vec<&str> = raw_upstreams.iter().map(|s| s.as_str()).collect();
        errs.at(
            format!("{key}.upstream"),
            Some(&rv.upstream),
            format!(
                "unknown upstream {:?} (known: {})",
                rv.upstream.value,
                known.join(", ")
            ),
        );
    }
    let tenant = super::security::tenant_source(errs, &key, &rv.tenant, identities);
    // A split route forwards each part to the path it was sent to: only the one write path
    // it is for, never every path under a prefix (admin endpoints included).
    if let Some(crate::tenant::TenantSource::Label(_)) = &tenant
        && !matches!(path, Some(PathMatch::Exact(_)))
    {
        errs.at(
            format!("{key}.match"),
            Some(&rv.matcher),
            "a `from: label` route needs an exact match.path (e.g. /api/v1/push or /otlp/v1/metrics)",
        );
    }
    let mut rewrite = Rewrite::default();
    if let Some(rw) = &rv.rewrite {
        if let Some(strip) = &rw.value.strip_prefix {
            let covers = match &path {
                Some(PathMatch::Prefix(p)) | Some(PathMatch::Exact(p)) => prefix_matches(strip, p),
                None => true,
            };
            if !strip.starts_with('/') || !covers {
                errs.at(
                    format!("{key}.rewrite.strip_prefix"),
                    Some(rw),
                    format!("{strip:?} must be a path prefix of the route's match"),
                );
            }
            rewrite.strip_prefix = Some(strip.clone());
        }
        if let Some(add) = &rw.value.add_prefix {
            if normalize_path(add).map(|n| n != *add).unwrap_or(true) {
                errs.at(
                    format!("{key}.rewrite.add_prefix"),
                    Some(rw),
                    format!("{add:?} must be a normalized path starting with '/'"),
                );
            }
            rewrite.add_prefix = Some(add.clone());
        }
        if let Some(whole) = &rw.value.path {
            if rw.value.strip_prefix.is_some() || rw.value.add_prefix.is_some() {
                errs.at(
                    format!("{key}.rewrite.path"),
                    Some(rw),
                    "replaces the whole path: give it alone, without strip_prefix or add_prefix",
                );
            } else if !matches!(path, Some(PathMatch::Exact(_))) {
                errs.at(
                    format!("{key}.rewrite.path"),
                    Some(rw),
                    "replaces the whole path, so it goes with an exact match.path (with a prefix, \
                     every path under it would become this one)",
                );
            } else if normalize_path(whole).map(|n| n != *whole).unwrap_or(true) {
                errs.at(
                    format!("{key}.rewrite.path"),
                    Some(rw),
                    format!("{whole:?} must be a normalized path starting with '/'"),
                );
            }
            rewrite.path = Some(whole.clone());
        }
    }
    let prometheus = match &rv.prometheus {
        None => None,
        Some(p) => {
            if !matches!(path, Some(PathMatch::Prefix(_)) | None) {
                errs.at(
                    format!("{key}.prometheus"),
                    Some(p),
                    "emulated endpoints live under a prefix: use match.path_prefix",
                );
            }
            emulation(errs, &format!("{key}.prometheus"), p)
        }
    };
    if errs.errors.len() != before {
        return None;
    }
    Some(Route {
        name: rv.name.as_str().into(),
        path: path?,
        methods,
        host,
        upstream: rv.upstream.value.as_str().into(),
        tenant: tenant?,
        forward_authorization: rv.forward_authorization,
        rewrite,
        max_request_body: rv
            .max_request_body
            .map_or(DEFAULT_MAX_REQUEST_BODY, |s| s.0),
        prometheus,
        handles: Default::default(),
    })
}
