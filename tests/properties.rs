//! Properties that must hold for every input, not just the ones we thought of.

use http::Method;
use proptest::prelude::*;
use tenantgate::config::{Overrides, from_yaml};
use tenantgate::route::{PathMatch, Rewrite, Route, RouteMatch, RouteTable, normalize_path};
use tenantgate::tenant::{TenantId, TenantSource};

fn route(name: &str, path: PathMatch) -> Route {
    Route {
        name: name.into(),
        path,
        methods: None,
        host: None,
        upstream: "u".into(),
        tenant: TenantSource::Fixed(TenantId::parse(name).unwrap()),
        forward_authorization: false,
        rewrite: Rewrite::default(),
        max_request_body: 1 << 20,
        prometheus: None,
        handles: Default::default(),
    }
}

fn table() -> RouteTable {
    RouteTable::new(vec![
        route("root", PathMatch::Prefix("/".into())),
        route("prom", PathMatch::Prefix("/prometheus".into())),
        route(
            "rules",
            PathMatch::Prefix("/prometheus/api/v1/rules".into()),
        ),
        route("admin", PathMatch::Prefix("/admin".into())),
        route("push", PathMatch::Exact("/api/v1/push".into())),
        route("a", PathMatch::Prefix("/a".into())),
    ])
}

fn chosen(t: &RouteTable, path: &str) -> Option<String> {
    match t.lookup(path, &Method::GET, None) {
        RouteMatch::Found(r) => Some(r.name.to_string()),
        _ => None,
    }
}

/// What a Go upstream's router sees: every escape decoded (net/http's URL.Path), then cleaned
/// like path.Clean (dot-segments resolved, slashes merged).
fn upstream_view(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(b) = u8::from_str_radix(&path[i + 1..i + 3], 16)
        {
            decoded.push(b);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let s = String::from_utf8_lossy(&decoded).into_owned();
    let mut out: Vec<&str> = Vec::new();
    for seg in s.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            x => out.push(x),
        }
    }
    let mut cleaned = format!("/{}", out.join("/"));
    if s.ends_with('/') && cleaned != "/" {
        cleaned.push('/');
    }
    cleaned
}

/// Path pieces that matter to routing and to attacks on it.
fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("/".to_owned()),
        Just("//".to_owned()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("prometheus".to_owned()),
        Just("admin".to_owned()),
        Just("api".to_owned()),
        Just("v1".to_owned()),
        Just("push".to_owned()),
        Just("rules".to_owned()),
        Just("a".to_owned()),
        Just("\\".to_owned()),
        Just("%".to_owned()),
        (0u8..=255).prop_map(|b| format!("%{b:02x}")),
        (0u8..=255).prop_map(|b| format!("%{b:02X}")),
        "[a-z0-9._~-]{1,4}",
    ]
}

fn request_path() -> impl Strategy<Value = String> {
    prop::collection::vec(piece(), 0..10).prop_map(|v| format!("/{}", v.concat()))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]
    /// Whatever the input, a path that is accepted is routed exactly as the upstream will
    /// understand it: the route that chose the tenant is the route of the path Mimir serves.
    #[test]
    fn accepted_paths_reach_the_route_their_upstream_view_selects(raw in request_path()) {
        let t = table();
        if let Ok(normalized) = normalize_path(&raw) {
            // Normal form is a fixed point: forwarding it and normalizing again changes nothing.
            prop_assert_eq!(normalize_path(&normalized).unwrap().into_owned(), normalized.clone().into_owned());
            prop_assert!(!normalized.contains("/./") && !normalized.contains("/../") && !normalized.contains("//"));
            prop_assert_eq!(chosen(&t, &normalized), chosen(&t, &upstream_view(&normalized)), "raw {:?} normalized {:?}", raw, normalized);
        }
    }

    /// Normalization never panics, whatever bytes the path holds.
    #[test]
    fn normalization_never_panics(raw in "\\PC{0,64}") {
        let _ = normalize_path(&raw);
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Config parsing never panics on arbitrary text.
    #[test]
    fn config_parsing_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        let _ = from_yaml(&text, "fuzz.yaml", &Overrides::default());
    }

    /// Nor on YAML-shaped text built from the config's own keys and YAML's sharp edges.
    #[test]
    fn config_parsing_never_panics_on_yaml_shaped_text(lines in prop::collection::vec(yaml_line(), 0..30)) {
        let _ = from_yaml(&lines.join("\n"), "fuzz.yaml", &Overrides::default());
    }
}

fn yaml_line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("server"),
        Just("listen"),
        Just("admin"),
        Just("upstreams"),
        Just("mimir"),
        Just("url"),
        Just("routes"),
        Just("- name"),
        Just("match"),
        Just("path_prefix"),
        Just("path"),
        Just("tenant"),
        Just("from"),
        Just("allow"),
        Just("prometheus"),
        Just("external_labels"),
        Just("version"),
        Just("lowest_timestamp"),
        Just("tls"),
        Just("identities"),
        Just("timeouts"),
        Just("connect"),
        Just("<<"),
        Just("? "),
        Just("&a x"),
        Just("*a"),
    ];
    let value = prop_oneof![
        Just(""),
        Just("x"),
        Just("/"),
        Just("/prometheus"),
        Just("http://m:8080"),
        Just("5m"),
        Just("0s"),
        Just("[1, 2"),
        Just("{a: b}"),
        Just("&anchor [x, x]"),
        Just("*anchor"),
        Just("!!binary aGk="),
        Just("\"a|b\""),
        Just("~"),
        Just("2024-01-01T00:00:00Z"),
        Just("64MiB"),
        Just("- - -"),
        Just("|"),
        Just(">-"),
        Just("'"),
        Just("{identity}"),
    ];
    (0usize..8, key, value).prop_map(|(indent, k, v)| format!("{}{}: {}", " ".repeat(indent), k, v))
}
