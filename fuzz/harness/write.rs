//! The remote write splitter's decoders, as a `tenant: { from: label }` route runs them: Remote
//! Write 1.0 and 2.0 protobuf (also through snappy), and OTLP metrics. A split that succeeds
//! must put every series, unchanged but for a removed tenant label, into the part of the tenant
//! the route's rules name: split-then-merge gives the original batch back.

use bytes::Bytes;
use prost::Message;
use tenantgate::migrate::wire::{snappy, unsnappy};
use tenantgate::push::otlp::{self, Export, ResourceOnly};
use tenantgate::push::split::{Part, Policy, SplitError, split_v1, split_v2};
use tenantgate::push::wire::{V1MetadataName, V1Request, V1Series, V2Request, V2Series};
use tenantgate::tenant::{LabelTenancy, TenantId};

const LABELS: [&str; 2] = ["team", "namespace"];
const ATTRIBUTES: [&str; 2] = ["service.namespace", "team"];
const SNAPPY_LIMIT: usize = 1 << 20;

fn tenant(s: &str) -> TenantId {
    match TenantId::parse(s) {
        Ok(t) => t,
        Err(e) => panic!("fixture tenant {s:?}: {e}"),
    }
}

/// The route's rules, from the flag bits of the first input byte (bits 0-1 pick the format).
fn tenancy(flags: u8) -> LabelTenancy {
    LabelTenancy {
        labels: LABELS.map(String::from).to_vec(),
        attributes: ATTRIBUTES.map(String::from).to_vec(),
        remove_label: flags & 4 != 0,
        default: (flags & 8 != 0).then(|| tenant("shared")),
        forbidden_to_default: flags & 16 != 0,
        prefix: if flags & 32 != 0 { "p-" } else { "" }.to_owned(),
        allow: (flags & 64 != 0).then(|| ["a", "b", "shared", "p-a"].map(tenant).to_vec()),
        identities: None,
        max_tenants: if flags & 128 != 0 { 2 } else { 16 },
    }
}

/// The tenant a series goes to and the label (or attribute) that named it, worked out from the
/// route's documented rules; `None` when the series must be refused.
fn expected(
    t: &LabelTenancy,
    labels: &[(String, String)],
    names: &[&str],
) -> Option<(String, Option<String>)> {
    let allowed = |id: &str| {
        t.allow
            .as_ref()
            .is_none_or(|a| a.iter().any(|x| x.as_str() == id))
    };
    let default = || {
        t.default
            .as_ref()
            .map(|d| d.as_str().to_owned())
            .filter(|d| allowed(d))
    };
    let named = names
        .iter()
        .find_map(|n| labels.iter().find(|(k, v)| k == n && !v.is_empty()));
    let Some((name, value)) = named else {
        return default().map(|d| (d, None));
    };
    let value = format!("{}{value}", t.prefix);
    TenantId::parse(&value).ok()?;
    if allowed(&value) {
        Some((value, Some(name.clone())))
    } else if t.forbidden_to_default {
        default().map(|d| (d, None))
    } else {
        None
    }
}

/// Items grouped by tenant in first-seen order, as the splitter orders its parts.
fn group<T>(items: impl IntoIterator<Item = (String, T)>) -> Vec<(String, Vec<T>)> {
    let mut out: Vec<(String, Vec<T>)> = Vec::new();
    for (tenant, item) in items {
        match out.iter_mut().find(|(t, _)| *t == tenant) {
            Some((_, v)) => v.push(item),
            None => out.push((tenant, vec![item])),
        }
    }
    out
}

fn is_policy_error(e: &SplitError) -> bool {
    matches!(
        e,
        SplitError::NoTenantLabel { .. }
            | SplitError::InvalidTenant { .. }
            | SplitError::Forbidden { .. }
    )
}

/// Checks what any split answer promises; `expect` is the reference's grouping of the input
/// (`None` when some series must be refused), `got` the parts decoded back.
fn check<T: PartialEq + std::fmt::Debug>(
    t: &LabelTenancy,
    result: &Result<Vec<Part>, SplitError>,
    expect: Option<Vec<(String, Vec<T>)>>,
    got: impl FnOnce(&[Part]) -> Vec<(String, Vec<T>)>,
) {
    match result {
        Ok(parts) => {
            assert!(
                parts.len() <= t.max_tenants,
                "{} parts, max_tenants {}",
                parts.len(),
                t.max_tenants
            );
            let Some(expect) = expect else {
                panic!("the split accepted a batch with a series its rules refuse");
            };
            let got = got(parts);
            for ((tenant, items), part) in got.iter().zip(parts) {
                assert_eq!(tenant, part.tenant.as_str());
                assert_eq!(items.len(), part.series, "the part's series count");
            }
            // Parts made only for metadata of no series hold no series: not a series' tenant.
            let got: Vec<(String, Vec<T>)> =
                got.into_iter().filter(|(_, v)| !v.is_empty()).collect();
            assert_eq!(got, expect, "split-then-merge is not the original batch");
        }
        Err(e) => {
            let _ = e.to_string();
            if is_policy_error(e)
                && let Some(expect) = expect
            {
                panic!("the split refused ({e}) a batch its rules accept: {expect:?}");
            }
        }
    }
}

/// Label pairs with every copy of the label that named the tenant removed, if the route says so.
fn kept(
    t: &LabelTenancy,
    labels: Vec<(String, String)>,
    used: &Option<String>,
) -> Vec<(String, String)> {
    match used {
        Some(name) if t.remove_label => labels.into_iter().filter(|(n, _)| n != name).collect(),
        _ => labels,
    }
}

fn v1(t: &LabelTenancy, raw: Bytes) {
    let policy = Policy {
        tenancy: t,
        caller: None,
    };
    let result = split_v1(raw.clone(), &policy);
    // The reference only needs the input decoded when the split got past decoding.
    let input = V1Request::decode(raw.clone()).ok().and_then(|r| {
        r.timeseries
            .into_iter()
            .map(V1Series::decode)
            .collect::<Result<Vec<_>, _>>()
            .ok()
    });
    let Some(input) = input else {
        assert!(
            result.is_err(),
            "the split accepted a body that does not decode"
        );
        return;
    };
    let expect = input
        .into_iter()
        .map(|mut s| {
            let pairs: Vec<(String, String)> = s
                .labels
                .iter()
                .map(|l| (l.name.clone(), l.value.clone()))
                .collect();
            let (tenant, used) = expected(t, &pairs, &LABELS)?;
            if let Some(name) = used.filter(|_| t.remove_label) {
                s.labels.retain(|l| l.name != name);
            }
            Some((tenant, s))
        })
        .collect::<Option<Vec<_>>>()
        .map(group);
    let metadata = V1Request::decode(raw)
        .map(|r| r.metadata)
        .unwrap_or_default();
    check(t, &result, expect, |parts| {
        parts
            .iter()
            .map(|p| {
                let r = V1Request::decode(p.body.clone());
                let Ok(r) = r else {
                    panic!("a part does not decode: {r:?}")
                };
                for md in &r.metadata {
                    assert!(
                        metadata.contains(md),
                        "a part has metadata the request did not"
                    );
                    assert!(V1MetadataName::decode(md.clone()).is_ok());
                }
                let series = r
                    .timeseries
                    .into_iter()
                    .map(V1Series::decode)
                    .collect::<Result<Vec<_>, _>>();
                let Ok(series) = series else {
                    panic!("a part's series does not decode: {series:?}")
                };
                (p.tenant.as_str().to_owned(), series)
            })
            .collect()
    });
}

/// A v2 series with every symbol reference resolved, the way a receiver reads it.
type Meaning = (
    Vec<(String, String)>,
    Vec<Bytes>,
    Vec<Bytes>,
    Vec<(Vec<(String, String)>, u64, i64)>,
    Option<(i32, String, String)>,
    i64,
);

fn resolve(symbols: &[String], s: &V2Series) -> Option<Meaning> {
    let sym = |r: u32| symbols.get(r as usize).cloned();
    let pairs = |refs: &[u32]| -> Option<Vec<(String, String)>> {
        refs.chunks(2)
            .map(|p| Some((sym(p[0])?, sym(*p.get(1)?)?)))
            .collect()
    };
    let exemplars = s
        .exemplars
        .iter()
        .map(|e| {
            // An exemplar's labels need not pair up to be accepted; resolve each reference.
            let names: Option<Vec<String>> = e.labels_refs.iter().map(|r| sym(*r)).collect();
            let names = names?
                .chunks(2)
                .map(|c| (c[0].clone(), c.get(1).cloned().unwrap_or_default()))
                .collect();
            Some((names, e.value.to_bits(), e.timestamp))
        })
        .collect::<Option<Vec<_>>>()?;
    let metadata = match &s.metadata {
        Some(m) => Some((m.r#type, sym(m.help_ref)?, sym(m.unit_ref)?)),
        None => None,
    };
    Some((
        pairs(&s.labels_refs)?,
        s.samples.clone(),
        s.histograms.clone(),
        exemplars,
        metadata,
        s.created_timestamp,
    ))
}

fn v2(t: &LabelTenancy, raw: Bytes) {
    let policy = Policy {
        tenancy: t,
        caller: None,
    };
    let result = split_v2(raw.clone(), &policy);
    let Ok(req) = V2Request::decode(raw) else {
        assert!(
            result.is_err(),
            "the split accepted a body that does not decode"
        );
        return;
    };
    let ok_symbols = req.symbols.first().is_none_or(String::is_empty);
    let meanings: Option<Vec<Meaning>> = req
        .timeseries
        .iter()
        .map(|s| resolve(&req.symbols, s))
        .collect();
    let valid = ok_symbols
        && req
            .timeseries
            .iter()
            .all(|s| !s.labels_refs.is_empty() && s.labels_refs.len() % 2 == 0);
    let (Some(meanings), true) = (meanings, valid) else {
        assert!(
            result.is_err(),
            "the split accepted a request with broken symbol references"
        );
        return;
    };
    let expect = meanings
        .into_iter()
        .map(|mut m| {
            let (tenant, used) = expected(t, &m.0, &LABELS)?;
            m.0 = kept(t, m.0, &used);
            Some((tenant, m))
        })
        .collect::<Option<Vec<_>>>()
        .map(group);
    check(t, &result, expect, |parts| {
        parts
            .iter()
            .map(|p| {
                let r = V2Request::decode(p.body.clone());
                let Ok(r) = r else {
                    panic!("a part does not decode: {r:?}")
                };
                assert_eq!(
                    r.symbols.first().map(String::as_str),
                    Some(""),
                    "symbol 0 of a part"
                );
                let series = r
                    .timeseries
                    .iter()
                    .map(|s| resolve(&r.symbols, s))
                    .collect::<Option<Vec<_>>>();
                let Some(series) = series else {
                    panic!("a part refers past its own symbol table")
                };
                (p.tenant.as_str().to_owned(), series)
            })
            .collect()
    });
}

fn otlp(t: &LabelTenancy, raw: Bytes) {
    let policy = Policy {
        tenancy: t,
        caller: None,
    };
    let attributes: Vec<String> = ATTRIBUTES.map(String::from).to_vec();
    let result = otlp::split(raw.clone(), &policy, &attributes);
    let Ok(req) = Export::decode(raw) else {
        assert!(
            result.is_err(),
            "the split accepted a body that does not decode"
        );
        return;
    };
    let expect = req
        .resource_metrics
        .into_iter()
        .map(|rm| {
            let resource = ResourceOnly::decode(rm.clone())
                .ok()?
                .resource
                .unwrap_or_default();
            let pairs: Vec<(String, String)> = resource
                .attributes
                .iter()
                .filter_map(|kv| Some((kv.key.clone(), kv.value.as_ref()?.string_value.clone()?)))
                .collect();
            // Resources go whole, as the sender encoded them: nothing is removed.
            let (tenant, _) = expected(t, &pairs, &ATTRIBUTES)?;
            Some((tenant, rm))
        })
        .collect::<Option<Vec<_>>>()
        .map(group);
    check(t, &result, expect, |parts| {
        parts
            .iter()
            .map(|p| {
                let r = Export::decode(p.body.clone());
                let Ok(r) = r else {
                    panic!("a part does not decode: {r:?}")
                };
                (p.tenant.as_str().to_owned(), r.resource_metrics)
            })
            .collect()
    });
}

pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let t = tenancy(flags);
    let raw = Bytes::copy_from_slice(rest);
    match flags & 3 {
        0 => v1(&t, raw),
        1 => v2(&t, raw),
        2 => otlp(&t, raw),
        // A snappy block, as remote write bodies arrive: inflated (bounded), then split.
        _ => {
            let Ok(raw) = unsnappy(rest, SNAPPY_LIMIT) else {
                return;
            };
            if let Ok(again) = snappy(&raw) {
                assert!(
                    matches!(unsnappy(&again, SNAPPY_LIMIT), Ok(r) if r == raw),
                    "snappy round trip"
                );
            }
            v1(&t, Bytes::from(raw));
        }
    }
}
