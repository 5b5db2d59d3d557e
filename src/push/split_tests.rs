use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;
use crate::push::wire::{Label, V2Exemplar, V2Metadata};

/// Label pairs of a v2 series, resolved.
fn v2_labels(symbols: &[String], refs: &[u32]) -> Vec<Label> {
    refs.chunks(2)
        .map(|p| Label {
            name: symbols.get(p[0] as usize).cloned().unwrap_or_default(),
            value: symbols
                .get(*p.get(1).unwrap_or(&0) as usize)
                .cloned()
                .unwrap_or_default(),
        })
        .collect()
}

fn tenancy(labels: &[&str], default: Option<&str>, allow: Option<&[&str]>) -> LabelTenancy {
    LabelTenancy {
        labels: labels.iter().map(|s| s.to_string()).collect(),
        attributes: vec![],
        default: default.map(|d| TenantId::parse(d).unwrap()),
        remove_label: false,
        prefix: String::new(),
        allow: allow.map(|a| a.iter().map(|t| TenantId::parse(t).unwrap()).collect()),
        identities: None,
        forbidden_to_default: false,
        max_tenants: 16,
    }
}

fn label(n: &str, v: &str) -> Label {
    Label {
        name: n.into(),
        value: v.into(),
    }
}

/// A v1 series as the sender encodes it, with a sample, an exemplar and a histogram that are
/// opaque to the splitter.
fn v1_series(labels: &[(&str, &str)], seed: u8) -> V1Series {
    V1Series {
        labels: labels.iter().map(|(n, v)| label(n, v)).collect(),
        samples: vec![Bytes::from(vec![9, seed, 16, seed])],
        exemplars: vec![Bytes::from(vec![seed; 3])],
        histograms: vec![Bytes::from(vec![seed, 1, 2])],
    }
}

fn v1_request(series: &[V1Series], metadata: &[&str]) -> Bytes {
    #[derive(Clone, PartialEq, Message)]
    struct Out {
        #[prost(message, repeated, tag = "1")]
        timeseries: Vec<V1Series>,
        #[prost(bytes = "bytes", repeated, tag = "3")]
        metadata: Vec<Bytes>,
    }
    Out {
        timeseries: series.to_vec(),
        metadata: metadata
            .iter()
            .map(|f| {
                V1MetadataName {
                    metric_family_name: (*f).into(),
                }
                .encode_to_vec()
                .into()
            })
            .collect(),
    }
    .encode_to_vec()
    .into()
}

fn decode_v1(part: &Part) -> (Vec<V1Series>, Vec<String>) {
    let r = V1Request::decode(part.body.clone()).unwrap();
    (
        r.timeseries
            .into_iter()
            .map(|t| V1Series::decode(t).unwrap())
            .collect(),
        r.metadata
            .into_iter()
            .map(|m| V1MetadataName::decode(m).unwrap().metric_family_name)
            .collect(),
    )
}

#[test]
fn the_first_configured_label_wins_in_config_order_not_series_order() {
    let t = tenancy(&["team", "namespace"], None, Some(&["a", "b", "ns"]));
    let p = Policy {
        tenancy: &t,
        caller: None,
    };
    let s = v1_series(&[("__name__", "up"), ("namespace", "ns"), ("team", "a")], 1);
    let parts = split_v1(v1_request(std::slice::from_ref(&s), &[]), &p).unwrap();
    assert_eq!(parts.len(), 1);
    assert_eq!(parts[0].tenant.as_str(), "a");
    assert_eq!(decode_v1(&parts[0]).0, [s], "every field kept");
}

#[test]
fn series_without_the_label_go_to_the_default_or_are_named_in_a_400() {
    let p_no_default = tenancy(&["team"], None, Some(&["a"]));
    let lonely = v1_series(&[("__name__", "up"), ("job", "x")], 1);
    let err = split_v1(
        v1_request(std::slice::from_ref(&lonely), &[]),
        &Policy {
            tenancy: &p_no_default,
            caller: None,
        },
    )
    .unwrap_err();
    assert!(!err.is_forbidden());
    assert!(
        err.to_string().contains(r#"{__name__="up", job="x"}"#),
        "{err}"
    );
    let with_default = tenancy(&["team"], Some("shared"), Some(&["a", "shared"]));
    let parts = split_v1(
        v1_request(&[lonely], &[]),
        &Policy {
            tenancy: &with_default,
            caller: None,
        },
    )
    .unwrap();
    assert_eq!(parts[0].tenant.as_str(), "shared");
}

#[test]
fn label_values_are_checked_as_tenant_ids_and_against_the_allowed_tenants() {
    let t = tenancy(&["team"], None, Some(&["a"]));
    let p = Policy {
        tenancy: &t,
        caller: None,
    };
    for bad in ["..", "a|b", "../etc", &"x".repeat(151)] {
        let s = v1_series(&[("__name__", "up"), ("team", bad)], 1);
        let e = split_v1(v1_request(&[s], &[]), &p).unwrap_err();
        assert!(matches!(e, SplitError::InvalidTenant { .. }), "{bad}: {e}");
    }
    let other = v1_series(&[("__name__", "up"), ("team", "b")], 1);
    let e = split_v1(v1_request(std::slice::from_ref(&other), &[]), &p).unwrap_err();
    assert!(e.is_forbidden(), "{e}");
    assert!(e.to_string().contains("\"b\""), "{e}");
    // Or, where the route says so, to the default.
    let mut to_default = tenancy(&["team"], Some("a"), Some(&["a"]));
    to_default.forbidden_to_default = true;
    let parts = split_v1(
        v1_request(&[other], &[]),
        &Policy {
            tenancy: &to_default,
            caller: None,
        },
    )
    .unwrap();
    assert_eq!(parts[0].tenant.as_str(), "a");
}

#[test]
fn an_identity_writes_only_to_its_own_tenants() {
    let mut t = tenancy(&["team"], None, None);
    t.identities = Some(vec!["prom".into()]);
    let caller = crate::auth::Identity {
        name: "prom".into(),
        tenant: TenantId::parse_with("a|b", true).unwrap(),
        credential: crate::auth::Credential::Bearer([0; 32]),
    };
    let p = Policy {
        tenancy: &t,
        caller: Some(&caller),
    };
    let a = v1_series(&[("__name__", "up"), ("team", "a")], 1);
    let b = v1_series(&[("__name__", "up"), ("team", "b")], 2);
    assert_eq!(split_v1(v1_request(&[a, b], &[]), &p).unwrap().len(), 2);
    let c = v1_series(&[("__name__", "up"), ("team", "c")], 3);
    let e = split_v1(v1_request(&[c], &[]), &p).unwrap_err();
    assert!(e.to_string().contains("identity \"prom\""), "{e}");
}

#[test]
fn prefix_remove_label_metadata_and_the_tenant_bound() {
    let mut t = tenancy(&["team"], Some("shared"), None);
    t.prefix = "org-".into();
    t.remove_label = true;
    t.max_tenants = 3;
    let p = Policy {
        tenancy: &t,
        caller: None,
    };
    let a = v1_series(&[("__name__", "http_requests_total"), ("team", "a")], 1);
    let b = v1_series(&[("__name__", "lat_bucket"), ("team", "b")], 2);
    let parts = split_v1(v1_request(&[a, b], &["http_requests", "lat", "unused"]), &p).unwrap();
    let tenants: Vec<&str> = parts.iter().map(|p| p.tenant.as_str()).collect();
    assert_eq!(
        tenants,
        ["org-a", "org-b", "shared"],
        "unmatched metadata to the default"
    );
    let (series, metadata) = decode_v1(&parts[0]);
    assert_eq!(series[0].labels, [label("__name__", "http_requests_total")]);
    assert_eq!(metadata, ["http_requests"]);
    assert_eq!(decode_v1(&parts[1]).1, ["lat"]);
    assert_eq!(decode_v1(&parts[2]), (vec![], vec!["unused".to_owned()]));
    t.max_tenants = 1;
    let p = Policy {
        tenancy: &t,
        caller: None,
    };
    let a = v1_series(&[("__name__", "x"), ("team", "a")], 1);
    let b = v1_series(&[("__name__", "x"), ("team", "b")], 2);
    let e = split_v1(v1_request(&[a, b], &[]), &p).unwrap_err();
    assert!(
        matches!(e, SplitError::TooManyTenants { max: 1, .. }),
        "{e}"
    );
}

#[test]
fn garbage_is_a_decode_error_not_a_panic() {
    let t = tenancy(&["team"], Some("x"), None);
    let p = Policy {
        tenancy: &t,
        caller: None,
    };
    for junk in [&b"\xff\xff\xff"[..], b"\x0a\x05ab"] {
        assert!(split_v1(Bytes::copy_from_slice(junk), &p).is_err());
        assert!(split_v2(Bytes::copy_from_slice(junk), &p).is_err());
    }
    // A v2 series whose label references are cut off.
    assert!(split_v2(Bytes::from_static(b"\x2a\x02\x08\xff"), &p).is_err());
    // A v2 reference past the symbol table.
    let req = V2Request {
        symbols: vec![String::new(), "__name__".into()],
        timeseries: vec![V2Series {
            labels_refs: vec![1, 7],
            ..V2Series::default()
        }],
    };
    let e = split_v2(req.encode_to_vec().into(), &p).unwrap_err();
    assert!(matches!(e, SplitError::Decode(_)), "{e}");
}

// ---- split, then merge back: nothing lost, nothing added, nothing moved ----

/// A series as a sender means it: its labels (sorted) and everything else.
type Meaning = (
    Vec<(String, String)>,
    Vec<Bytes>,
    Vec<Bytes>,
    Vec<(Vec<(String, String)>, u64)>,
    Option<(i32, String, String)>,
    i64,
);

fn v2_meaning(symbols: &[String], s: &V2Series) -> Meaning {
    let pairs = |refs: &[u32]| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = v2_labels(symbols, refs)
            .into_iter()
            .map(|l| (l.name, l.value))
            .collect();
        v.sort();
        v
    };
    (
        pairs(&s.labels_refs),
        s.samples.clone(),
        s.histograms.clone(),
        s.exemplars
            .iter()
            .map(|e| (pairs(&e.labels_refs), e.value.to_bits()))
            .collect(),
        s.metadata.as_ref().map(|m| {
            (
                m.r#type,
                symbols[m.help_ref as usize].clone(),
                symbols[m.unit_ref as usize].clone(),
            )
        }),
        s.created_timestamp,
    )
}

prop_compose! {
    fn labelset()(team in proptest::option::of(0u8..4), ns in proptest::option::of(0u8..3), job in 0u8..5, metric in 0u8..6)
        -> Vec<(String, String)> {
        let mut l = vec![("__name__".to_owned(), format!("m{metric}")), ("job".to_owned(), format!("j{job}"))];
        if let Some(t) = team { l.push(("team".into(), format!("t{t}"))); }
        if let Some(n) = ns { l.push(("namespace".into(), format!("n{n}"))); }
        l.sort();
        l
    }
}

proptest! {
    #[test]
    fn v1_split_then_merge_is_the_original_batch(
        sets in proptest::collection::vec((labelset(), any::<u8>()), 0..40),
        remove in any::<bool>(),
    ) {
        let mut t = tenancy(&["team", "namespace"], Some("shared"), None);
        t.remove_label = remove;
        let p = Policy { tenancy: &t, caller: None };
        let series: Vec<V1Series> = sets
            .iter()
            .map(|(l, seed)| {
                let pairs: Vec<(&str, &str)> = l.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                v1_series(&pairs, *seed)
            })
            .collect();
        let parts = split_v1(v1_request(&series, &[]), &p).unwrap();
        let mut back: BTreeMap<String, Vec<V1Series>> = BTreeMap::new();
        for part in &parts {
            let (s, _) = decode_v1(part);
            prop_assert_eq!(s.len(), part.series);
            back.entry(part.tenant.to_string()).or_default().extend(s);
        }
        prop_assert_eq!(back.values().map(Vec::len).sum::<usize>(), series.len());
        // Each original series is in exactly the tenant its labels name, unchanged but for the
        // tenant label when it is removed.
        let mut expect: BTreeMap<String, Vec<V1Series>> = BTreeMap::new();
        for s in &series {
            let find = |n: &str| s.labels.iter().find(|l| l.name == n).map(|l| l.value.clone());
            let (tenant, used) = match (find("team"), find("namespace")) {
                (Some(v), _) => (v, Some("team")),
                (None, Some(v)) => (v, Some("namespace")),
                (None, None) => ("shared".to_owned(), None),
            };
            let mut s = s.clone();
            if remove && let Some(used) = used {
                s.labels.retain(|l| l.name != used);
            }
            expect.entry(tenant).or_default().push(s);
        }
        prop_assert_eq!(back, expect);
    }

    #[test]
    fn v2_split_then_merge_is_the_original_batch(
        sets in proptest::collection::vec((labelset(), any::<u8>(), any::<bool>()), 0..40),
    ) {
        let t = tenancy(&["team", "namespace"], Some("shared"), None);
        let p = Policy { tenancy: &t, caller: None };
        // One shared symbol table, in the order a sender would build it.
        let mut symbols = vec![String::new()];
        let mut sym = |s: &str| -> u32 {
            match symbols.iter().position(|x| x == s) {
                Some(i) => i as u32,
                None => { symbols.push(s.to_owned()); (symbols.len() - 1) as u32 }
            }
        };
        let mut series = Vec::new();
        for (labels, seed, with_meta) in &sets {
            let refs: Vec<u32> = labels.iter().flat_map(|(n, v)| [sym(n), sym(v)]).collect();
            let exemplar = V2Exemplar { labels_refs: vec![sym("trace_id"), sym(&format!("tr{seed}"))], value: f64::from(*seed), timestamp: i64::from(*seed) };
            let metadata = with_meta.then(|| V2Metadata { r#type: 1, help_ref: sym(&format!("help {seed}")), unit_ref: sym("seconds") });
            series.push(V2Series {
                labels_refs: refs,
                samples: vec![Bytes::from(vec![9, *seed])],
                histograms: vec![Bytes::from(vec![*seed; 2])],
                exemplars: vec![exemplar],
                metadata,
                created_timestamp: i64::from(*seed) * 1000,
            });
        }
        let req = V2Request { symbols: symbols.clone(), timeseries: series.clone() };
        let parts = split_v2(req.encode_to_vec().into(), &p).unwrap();
        let mut back: Vec<Meaning> = Vec::new();
        for part in &parts {
            let r = V2Request::decode(part.body.clone()).unwrap();
            prop_assert_eq!(r.symbols.first().map(String::as_str), Some(""));
            // A symbol table of its own: exactly the symbols its series use, no other tenant's.
            let mut used: Vec<u32> = vec![0];
            for s in &r.timeseries {
                used.extend(&s.labels_refs);
                for e in &s.exemplars {
                    used.extend(&e.labels_refs);
                }
                if let Some(m) = &s.metadata {
                    used.extend([m.help_ref, m.unit_ref]);
                }
            }
            used.sort_unstable();
            used.dedup();
            prop_assert_eq!(used, (0..r.symbols.len() as u32).collect::<Vec<_>>());
            for s in &r.timeseries {
                let m = v2_meaning(&r.symbols, s);
                let tenant = m.0.iter().find(|(n, _)| n == "team")
                    .or_else(|| m.0.iter().find(|(n, _)| n == "namespace"))
                    .map_or("shared".to_owned(), |(_, v)| v.clone());
                prop_assert_eq!(tenant.as_str(), part.tenant.as_str());
                back.push(m);
            }
        }
        let mut want: Vec<Meaning> = series.iter().map(|s| v2_meaning(&symbols, s)).collect();
        back.sort();
        want.sort();
        prop_assert_eq!(back, want);
    }
}

// ---- found in review ----

#[test]
fn refusing_a_series_with_long_non_ascii_labels_does_not_panic() {
    let t = tenancy(&["team"], None, Some(&["a"]));
    let p = Policy {
        tenancy: &t,
        caller: None,
    };
    let long = "é".repeat(200);
    for labels in [
        vec![("__name__", "m"), ("xy", long.as_str())],
        vec![("__name__", "m"), ("team", long.as_str())],
    ] {
        let e = split_v1(v1_request(&[v1_series(&labels, 1)], &[]), &p).unwrap_err();
        assert!(e.to_string().len() < 1000, "the error is cut short: {e}");
    }
}

#[test]
fn metadata_goes_to_the_default_only_where_the_caller_may_write() {
    let mut t = tenancy(&["team"], Some("shared"), None);
    t.identities = Some(vec!["prom".into()]);
    let caller = crate::auth::Identity {
        name: "prom".into(),
        tenant: TenantId::parse("team-a").unwrap(),
        credential: crate::auth::Credential::Bearer([0; 32]),
    };
    let p = Policy {
        tenancy: &t,
        caller: Some(&caller),
    };
    // Prometheus sends metadata in requests of their own: not to `shared`, which prom may not write.
    let parts = split_v1(v1_request(&[], &["http_requests"]), &p).unwrap();
    assert!(parts.is_empty(), "{parts:?}");
    let t = tenancy(&["team"], Some("shared"), Some(&["shared"]));
    let p = Policy {
        tenancy: &t,
        caller: None,
    };
    let parts = split_v1(v1_request(&[], &["http_requests"]), &p).unwrap();
    assert_eq!(parts[0].tenant.as_str(), "shared");
}

#[test]
fn many_metadata_entries_each_go_with_their_family() {
    let t = tenancy(&["team"], None, Some(&["a"]));
    let p = Policy {
        tenancy: &t,
        caller: None,
    };
    let names: Vec<String> = (0..20_000).map(|i| format!("m{i}_total")).collect();
    let series: Vec<V1Series> = names
        .iter()
        .map(|n| v1_series(&[("__name__", n), ("team", "a")], 1))
        .collect();
    let families: Vec<&str> = names.iter().map(|n| n.trim_end_matches("_total")).collect();
    // Each entry with the series of its family (`x` of `x_total`), placed by lookup: the old
    // scan of every series for every entry took minutes at this size.
    let parts = split_v1(v1_request(&series, &families), &p).unwrap();
    let (_, metadata) = decode_v1(&parts[0]);
    assert_eq!(metadata.len(), 20_000);
    assert_eq!(metadata[19_999], "m19999");
}

#[test]
fn bodies_that_would_decode_to_far_more_than_they_weigh_are_refused() {
    let t = tenancy(&["team"], Some("x"), None);
    let p = Policy {
        tenancy: &t,
        caller: None,
    };
    // 300,000 empty series: two bytes each on the wire.
    let empty_series: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 300_000)
        .flatten()
        .collect();
    let e = split_v1(Bytes::from(empty_series), &p).unwrap_err();
    assert!(e.to_string().contains("at most 200000"), "{e}");
    // One series of 300 empty labels.
    let labels: Vec<u8> = std::iter::repeat_n([0x0a, 0x00], 300).flatten().collect();
    let mut one = vec![0x0a];
    prost::encoding::encode_varint(labels.len() as u64, &mut one);
    one.extend(labels);
    let e = split_v1(Bytes::from(one), &p).unwrap_err();
    assert!(e.to_string().contains("labels in a series"), "{e}");
    // A series without labels.
    assert!(split_v1(Bytes::from_static(&[0x0a, 0x00]), &p).is_err());
}

#[test]
fn remote_write_2_rules_symbol_zero_and_removes_every_copy_of_the_tenant_label() {
    let mut t = tenancy(&["team"], None, Some(&["team-a"]));
    t.remove_label = true;
    let p = Policy {
        tenancy: &t,
        caller: None,
    };
    let symbols: Vec<String> = ["", "__name__", "up", "team", "team-a", "team-b"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let req = V2Request {
        symbols: symbols.clone(),
        timeseries: vec![V2Series {
            labels_refs: vec![1, 2, 3, 4, 3, 5],
            ..V2Series::default()
        }],
    };
    let parts = split_v2(req.encode_to_vec().into(), &p).unwrap();
    let r = V2Request::decode(parts[0].body.clone()).unwrap();
    assert_eq!(
        v2_labels(&r.symbols, &r.timeseries[0].labels_refs),
        [label("__name__", "up")]
    );
    // Only the symbols its series use.
    assert_eq!(r.symbols, ["", "__name__", "up"]);
    let mut bad = symbols;
    bad[0] = "team-a".into();
    let req = V2Request {
        symbols: bad,
        timeseries: vec![V2Series {
            labels_refs: vec![1, 2, 3, 0],
            ..V2Series::default()
        }],
    };
    let e = split_v2(req.encode_to_vec().into(), &p).unwrap_err();
    assert!(e.to_string().contains("first symbol"), "{e}");
}
