//! Request path normalization, then routing on the normalized path.

use std::sync::OnceLock;

use http::Method;
use tenantgate::config::{Overrides, from_yaml};
use tenantgate::route::{PathMatch, Route, RouteMatch, RouteTable, normalize_path, prefix_matches};

/// Routes of every matching shape: exact and prefix, methods, a host, and each kind of rewrite.
const ROUTES: &str = r#"
upstreams:
  u: { url: "http://127.0.0.1:1" }
routes:
  - { name: push, match: { path: /api/v1/push, methods: [POST] }, upstream: u, tenant: t, rewrite: { path: /api/v1/write } }
  - { name: push-any, match: { path: /api/v1/push }, upstream: u, tenant: t }
  - { name: team-a, match: { path_prefix: /team-a }, upstream: u, tenant: a, rewrite: { strip_prefix: /team-a, add_prefix: /prometheus } }
  - { name: strip, match: { path_prefix: /strip/ }, upstream: u, tenant: t, rewrite: { strip_prefix: /strip/ } }
  - { name: add, match: { path_prefix: /add }, upstream: u, tenant: t, rewrite: { add_prefix: /x/ } }
  - { name: rules, match: { path_prefix: /prometheus/api/v1/rules }, upstream: u, tenant: t }
  - { name: hosted, match: { path_prefix: /prometheus, host: a.example }, upstream: u, tenant: a }
  - { name: prom, match: { path_prefix: /prometheus }, upstream: u, tenant: t }
  - { name: upload, match: { path_prefix: /api/v1/upload/block/, methods: [POST, PUT] }, upstream: u, tenant: t }
  - { name: root, match: { path_prefix: /, methods: [GET, HEAD] }, upstream: u, tenant: t }
"#;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(
        || match from_yaml(ROUTES, "fuzz routes", &Overrides::default()) {
            Ok(c) => RouteTable::new(c.routes),
            Err(e) => panic!("the fuzz route table does not load: {e}"),
        },
    )
}

const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];
const HOSTS: [Option<&str>; 3] = [None, Some("a.example"), Some("A.EXAMPLE")];

/// The route NGINX `location` order picks, found the slow way: exact matches in file order,
/// then prefixes longest first (ties in file order), the first whose host and method fit.
fn reference<'a>(
    routes: &'a [std::sync::Arc<Route>],
    path: &str,
    m: &Method,
    host: Option<&str>,
) -> Option<&'a str> {
    let host_ok = |r: &Route| match (&r.host, host) {
        (None, _) => true,
        (Some(w), Some(h)) => w.eq_ignore_ascii_case(h),
        (Some(_), None) => false,
    };
    let mut candidates: Vec<&Route> = routes
        .iter()
        .map(|r| &**r)
        .filter(|r| matches!(&r.path, PathMatch::Exact(p) if p == path))
        .collect();
    let mut prefixes: Vec<&Route> = routes
        .iter()
        .map(|r| &**r)
        .filter(|r| matches!(&r.path, PathMatch::Prefix(p) if prefix_matches(p, path)))
        .collect();
    prefixes.sort_by_key(|r| std::cmp::Reverse(r.path.as_str().len()));
    candidates.extend(prefixes);
    candidates
        .into_iter()
        .find(|r| host_ok(r) && r.methods.as_ref().is_none_or(|ms| ms.contains(m)))
        .map(|r| &*r.name)
}

pub fn run(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Ok(raw) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(path) = normalize_path(raw) else {
        return;
    };
    // A normal path is a fixed point: normalizing it again changes nothing and copies nothing.
    match normalize_path(&path) {
        Ok(std::borrow::Cow::Borrowed(again)) => {
            assert_eq!(again, &*path, "normalizing twice changed {raw:?}")
        }
        other => panic!("normalizing {raw:?} gave {path:?}, which normalizes to {other:?}"),
    }
    assert!(
        path.starts_with('/') && path.is_ascii(),
        "{raw:?} -> {path:?}"
    );
    let method = &METHODS[usize::from(sel & 3)];
    let host = HOSTS[usize::from(sel >> 2) % HOSTS.len()];
    let t = table();
    let got = match t.lookup(&path, method, host) {
        RouteMatch::Found(r) => {
            assert!(
                r.path.matches(&path),
                "route {} does not match {path:?}",
                r.name
            );
            // What is forwarded is a normal path too: the upstream serves the path routed on.
            let forwarded = r.rewrite.apply(&path);
            assert!(
                matches!(normalize_path(&forwarded), Ok(n) if n == forwarded),
                "route {} rewrites {path:?} to {forwarded:?}, which is not a normal path",
                r.name
            );
            Some(&*r.name)
        }
        RouteMatch::MethodNotAllowed | RouteMatch::NotFound => None,
    };
    assert_eq!(
        got,
        reference(t.routes(), &path, method, host),
        "route for {method} {path:?} host {host:?}"
    );
}
