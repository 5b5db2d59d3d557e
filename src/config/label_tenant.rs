//! `tenant: { from: label, ... }`: the checks of a route that takes each series' tenant from its
//! labels. Series choose their tenant there, so the route must bound which: with an `allow`
//! list, or with `identities`, each caller then writing only to its own tenants.

use std::sync::Arc;

use serde_saphyr::Spanned;

use super::raw::{RawTenant, RawTenantSource};
use super::validate::Errors;
use crate::auth::Identities;
use crate::tenant::{LabelTenancy, TenantId, TenantSource};

/// Default of `max_tenants`, and its ceiling.
const DEFAULT_MAX_TENANTS: usize = 64;
const MAX_MAX_TENANTS: usize = 1000;

/// Whether a `from: identity` or `from: header` map carries keys of `from: label`.
pub(super) fn has_label_keys(src: &RawTenantSource) -> bool {
    src.labels.is_some()
        || src.attributes.is_some()
        || src.default.is_some()
        || src.remove_label
        || src.prefix.is_some()
        || src.forbidden.is_some()
        || src.max_tenants.is_some()
}

/// A Prometheus label name: `[a-zA-Z_][a-zA-Z0-9_]*`.
fn label_name(s: &str) -> bool {
    let mut c = s.chars();
    c.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == '_')
        && c.all(|x| x.is_ascii_alphanumeric() || x == '_')
}

pub(super) fn label_source(
    errs: &mut Errors,
    key: &str,
    raw: &Spanned<RawTenant>,
    src: &RawTenantSource,
    identities: &Identities,
) -> Option<TenantSource> {
    let mut ok = true;
    let mut bad = |errs: &mut Errors, k: String, msg: String| {
        errs.at(k, Some(raw), msg);
        ok = false;
    };
    if src.aliases.is_some() || src.federation {
        bad(
            errs,
            key.to_owned(),
            "aliases and federation belong to `from: header`; a write goes to one tenant per series"
                .into(),
        );
    }
    let labels = src.labels.clone().unwrap_or_default();
    let attributes = src.attributes.clone().unwrap_or_default();
    if labels.is_empty() && attributes.is_empty() {
        bad(
            errs,
            format!("{key}.labels"),
            "`from: label` needs the labels that name the tenant, e.g. [team, namespace] (or, \
             for OTLP, the resource attributes, e.g. attributes: [service.namespace])"
                .into(),
        );
    }
    for a in &attributes {
        if a.is_empty() || a.chars().any(char::is_whitespace) {
            bad(
                errs,
                format!("{key}.attributes"),
                format!("{a:?} is not a resource attribute name"),
            );
        }
    }
    for l in &labels {
        if !label_name(l) || l == "__name__" {
            bad(
                errs,
                format!("{key}.labels"),
                format!("{l:?} is not a label that can name a tenant"),
            );
        }
    }
    let prefix = src.prefix.clone().unwrap_or_default();
    if !prefix.is_empty() && TenantId::parse(&format!("{prefix}x")).is_err() {
        bad(
            errs,
            format!("{key}.prefix"),
            format!("{prefix:?} cannot start a tenant ID"),
        );
    }
    let tenant = |errs: &mut Errors, k: String, s: &str| match TenantId::parse(s) {
        Ok(t) => Some(t),
        Err(e) => {
            errs.at(k, Some(raw), format!("{s:?} is not a valid tenant ID: {e}"));
            None
        }
    };
    let allow = src.allow.as_ref().map(|a| {
        a.iter()
            .filter_map(|t| tenant(errs, format!("{key}.allow"), t))
            .collect::<Vec<_>>()
    });
    let default = src
        .default
        .as_ref()
        .and_then(|d| tenant(errs, format!("{key}.default"), d));
    if let (Some(d), Some(a)) = (&default, &allow)
        && !a.contains(d)
    {
        bad(
            errs,
            format!("{key}.default"),
            format!("{d} is not in the allow list"),
        );
    }
    let callers = src.identities.as_ref().map(|list| {
        for name in list {
            if identities.get(name).is_none() && !errs.identity_names.contains(name) {
                let known: Vec<&str> = errs.identity_names.iter().map(String::as_str).collect();
                errs.at(
                    format!("{key}.identities"),
                    Some(raw),
                    format!("unknown identity {name:?} (known: {})", known.join(", ")),
                );
            }
        }
        list.iter()
            .map(|n| Arc::from(n.as_str()))
            .collect::<Vec<_>>()
    });
    if allow.as_ref().is_none_or(Vec::is_empty) && callers.as_ref().is_none_or(Vec::is_empty) {
        bad(
            errs,
            key.to_owned(),
            "`from: label` lets each series choose its tenant: bound it with `allow` (the \
             tenants series may name) or `identities` (callers, each writing only to its own \
             tenants), or both"
                .into(),
        );
    }
    let forbidden_to_default = match src.forbidden.as_deref() {
        None | Some("refuse") => false,
        Some("default") if default.is_some() => true,
        Some("default") => {
            bad(
                errs,
                format!("{key}.forbidden"),
                "`default` needs a default tenant".into(),
            );
            false
        }
        Some(other) => {
            bad(
                errs,
                format!("{key}.forbidden"),
                format!("{other:?}: use refuse or default"),
            );
            false
        }
    };
    let max_tenants = src.max_tenants.unwrap_or(DEFAULT_MAX_TENANTS);
    if !(1..=MAX_MAX_TENANTS).contains(&max_tenants) {
        bad(
            errs,
            format!("{key}.max_tenants"),
            format!("must be 1 to {MAX_MAX_TENANTS}"),
        );
    }
    ok.then(|| {
        TenantSource::Label(Arc::new(LabelTenancy {
            labels,
            attributes,
            default,
            remove_label: src.remove_label,
            prefix,
            allow,
            identities: callers,
            forbidden_to_default,
            max_tenants,
        }))
    })
}
