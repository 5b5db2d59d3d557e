//! Request paths and the route table.
//!
//! A path is normalized once, before routing, and the normalized path is both the one that is
//! matched and the one that is forwarded: there is no gap in which a route is chosen for one path
//! and the upstream (which decodes percent-escapes, as Go's `net/http` does) serves another.
//!
//! Normalization (RFC 3986 §6.2.2): percent-escapes of unreserved characters are decoded
//! (`%41` -> `A`), other escapes get upper-case hex. Anything whose meaning could differ between
//! tenantgate and the upstream is rejected with 400 instead: dot-segments (`/./`, `/../`, §5.2.4),
//! escaped `/`, `\` and `.`, a literal `\`, empty segments (`//`), and malformed escapes.
//!
//! Matching follows NGINX `location`: an exact `path` beats any prefix, and the longest
//! `path_prefix` wins. A prefix matches whole segments only: `/prometheus` matches `/prometheus`
//! and `/prometheus/api/v1/query`, never `/prometheus-old`.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use http::Method;

use crate::promapi::Emulation;
use crate::telemetry::{Metrics, RouteHandles};
use crate::tenant::TenantSource;

/// Why a request path was rejected before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("dot-segments ('.' or '..') are not allowed in the path")]
    DotSegment,
    #[error("empty path segments ('//') are not allowed")]
    EmptySegment,
    #[error("percent-encoded '{0}' is not allowed in the path")]
    EncodedSeparator(char),
    #[error("'\\' is not allowed in the path")]
    Backslash,
    #[error("malformed percent-escape in the path")]
    BadEscape,
    #[error("the path must be ASCII (percent-encode other bytes)")]
    NonAscii,
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~')
}

/// Refuses `.` and `..` segments and empty ones (`//`), except the empty last segment of a
/// trailing slash. `path` starts with `/`. One pass over the bytes: this runs on every request.
fn check_segments(path: &[u8]) -> Result<(), PathError> {
    // Each segment starts after a '/'; `start` is where the current one begins.
    let mut start = 1;
    for i in 1..=path.len() {
        if i < path.len() && path[i] != b'/' {
            continue;
        }
        match &path[start..i] {
            b"." | b".." => return Err(PathError::DotSegment),
            b"" if i < path.len() => return Err(PathError::EmptySegment),
            _ => {}
        }
        start = i + 1;
    }
    Ok(())
}

/// Bytes a normal path may hold as they are: everything printable in ASCII but `%` (an escape,
/// which may need decoding or re-casing) and `\\` (refused). A lookup per byte.
static PLAIN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0x21;
    while b < 0x7f {
        t[b] = b != b'%' as usize && b != b'\\' as usize;
        b += 1;
    }
    t
};

/// One pass over `path` (which starts with `/`) while its bytes are [`PLAIN`], checking each
/// segment as its `/` is reached. `Ok(None)`: the whole path is plain and its segments are
/// fine. `Ok(Some(i))`: byte `i` needs the full pass (which checks the segments again).
fn plain_prefix(path: &[u8]) -> Result<Option<usize>, PathError> {
    let mut start = 1;
    for (i, &b) in path.iter().enumerate().skip(1) {
        if !PLAIN[usize::from(b)] {
            return Ok(Some(i));
        }
        if b == b'/' {
            match &path[start..i] {
                b"." | b".." => return Err(PathError::DotSegment),
                b"" => return Err(PathError::EmptySegment),
                _ => {}
            }
            start = i + 1;
        }
    }
    match &path[start..] {
        b"." | b".." => Err(PathError::DotSegment),
        // A trailing slash ("/api/") is an empty last segment and is fine.
        _ => Ok(None),
    }
}

/// Normalizes a request path, or says why it cannot be routed safely.
///
/// Returns the input unchanged (borrowed) when it is already normal, which is the common case.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    // Fast path: a path of bytes that never need a second look (most paths) is checked for
    // its segments only. Anything else starts the byte-by-byte pass where it occurs.
    let Some(mut i) = plain_prefix(bytes)? else {
        return Ok(Cow::Borrowed(raw));
    };
    let mut out: Option<String> = None;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            // hyper lets UTF-8 through in request targets; RFC 3986 paths are ASCII, and a raw
            // non-ASCII byte would be re-encoded differently by different upstreams.
            0x80.. => return Err(PathError::NonAscii),
            b'\\' => return Err(PathError::Backslash),
            b'%' => {
                let (h, l) = match (
                    bytes.get(i + 1).copied().and_then(hex),
                    bytes.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => (h, l),
                    _ => return Err(PathError::BadEscape),
                };
                let decoded = h << 4 | l;
                match decoded {
                    b'/' => return Err(PathError::EncodedSeparator('/')),
                    b'\\' => return Err(PathError::EncodedSeparator('\\')),
                    b'.' => return Err(PathError::EncodedSeparator('.')),
                    _ => {}
                }
                // An escape already in canonical form (upper-case hex of a reserved byte) is
                // copied only once something before it changed: a normal path stays borrowed.
                let upper =
                    !bytes[i + 1].is_ascii_lowercase() && !bytes[i + 2].is_ascii_lowercase();
                if out.is_none() && upper && !is_unreserved(decoded) {
                    i += 3;
                    continue;
                }
                let buf = out.get_or_insert_with(|| raw[..i].to_owned());
                if is_unreserved(decoded) {
                    buf.push(decoded as char);
                } else {
                    buf.push('%');
                    buf.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                    buf.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
                }
                i += 3;
                continue;
            }
            _ => {
                if let Some(buf) = out.as_mut() {
                    buf.push(b as char);
                }
            }
        }
        i += 1;
    }
    // Every byte was checked to be ASCII above, so pushing bytes as chars is exact. Segment
    // checks run on the normalized form.
    let path: Cow<'_, str> = match out {
        Some(s) => Cow::Owned(s),
        None => Cow::Borrowed(raw),
    };
    check_segments(path.as_bytes())?;
    Ok(path)
}

/// How a route matches paths.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// Exactly this path.
    Exact(String),
    /// This path and everything below it, segment-wise.
    Prefix(String),
}

impl PathMatch {
    /// Whether `path` (already normalized) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Exact(p) => path == p,
            PathMatch::Prefix(p) => prefix_matches(p, path),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            PathMatch::Exact(p) | PathMatch::Prefix(p) => p,
        }
    }
}

/// Segment-wise prefix match: `/a` matches `/a` and `/a/b`, not `/ab`.
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || prefix.ends_with('/') || rest.starts_with('/'),
        None => false,
    }
}

/// Path rewriting applied after matching, before forwarding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Removed from the front of the path (validated at load to be a prefix of every matched path).
    pub strip_prefix: Option<String>,
    /// Put in front of the path after stripping.
    pub add_prefix: Option<String>,
    /// Replaces the whole path (validated at load to go with an exact match, alone).
    pub path: Option<String>,
}

impl Rewrite {
    /// Rewrites a normalized, matched path.
    pub fn apply<'a>(&self, path: &'a str) -> Cow<'a, str> {
        if let Some(whole) = &self.path {
            return Cow::Owned(whole.clone());
        }
        let mut rest: &str = path;
        if let Some(strip) = &self.strip_prefix
            && prefix_matches(strip, path)
        {
            rest = &path[strip.trim_end_matches('/').len()..];
        }
        match &self.add_prefix {
            // Exactly the stripped prefix: the added one as written (no trailing slash added,
            // which an upstream such as Prometheus would answer with a redirect).
            Some(add) if rest.is_empty() => Cow::Owned(if add.is_empty() {
                "/".to_owned()
            } else {
                add.clone()
            }),
            Some(add) => Cow::Owned(format!("{}{rest}", add.trim_end_matches('/'))),
            None if rest.is_empty() => Cow::Borrowed("/"),
            None if rest.len() == path.len() => Cow::Borrowed(path),
            None => Cow::Owned(rest.to_owned()),
        }
    }
}

/// One route, as the proxy runs it.
#[derive(Debug)]
pub struct Route {
    pub name: Arc<str>,
    pub path: PathMatch,
    /// Allowed methods; `None` allows every method.
    pub methods: Option<Vec<Method>>,
    /// Required `Host` (lower case, without port); `None` matches any host.
    pub host: Option<String>,
    /// Name of the upstream requests are forwarded to.
    pub upstream: Arc<str>,
    pub tenant: TenantSource,
    /// Forward the caller's `Authorization` header upstream (removed by default).
    pub forward_authorization: bool,
    pub rewrite: Rewrite,
    /// Largest request body accepted, in bytes.
    pub max_request_body: u64,
    /// Prometheus endpoints answered by tenantgate under this route's prefix.
    pub prometheus: Option<Emulation>,
    /// This route's metric series, made by the first request it serves.
    pub handles: OnceLock<Arc<RouteHandles>>,
}

impl Route {
    /// This route's metric handles (see [`RouteHandles`]).
    pub fn handles(&self, metrics: &Arc<Metrics>) -> &Arc<RouteHandles> {
        self.handles
            .get_or_init(|| Arc::new(RouteHandles::new(metrics, &self.name)))
    }

    fn accepts(&self, method: &Method, host: Option<&str>) -> (bool, bool) {
        let host_ok = match (&self.host, host) {
            (None, _) => true,
            (Some(want), Some(got)) => want.eq_ignore_ascii_case(got),
            (Some(_), None) => false,
        };
        let method_ok = self.methods.as_ref().is_none_or(|m| m.contains(method));
        (host_ok, method_ok)
    }
}

/// The result of looking a request up in the [`RouteTable`].
#[derive(Debug)]
pub enum RouteMatch<'a> {
    Found(&'a Arc<Route>),
    /// A route matches the path and host, but not the method.
    MethodNotAllowed,
    NotFound,
}

/// All routes, indexed for lookup in NGINX `location` order.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
    exact: HashMap<String, Vec<usize>>,
    /// Indexes of prefix routes, longest prefix first; equal lengths keep config order.
    prefixes: Vec<usize>,
    /// Whether any route matches on `Host` (else a lookup needs none).
    uses_host: bool,
}

/// Indexes of `paths` in the order they are tried: exact paths in file order, then prefixes,
/// longest first (equal lengths keep file order). The route table and `tenantgate check` both
/// use it, so what `check` prints is what the proxy does.
pub fn match_order<'a>(paths: impl IntoIterator<Item = &'a PathMatch>) -> Vec<usize> {
    let paths: Vec<&PathMatch> = paths.into_iter().collect();
    let mut order: Vec<usize> = (0..paths.len())
        .filter(|&i| matches!(paths[i], PathMatch::Exact(_)))
        .collect();
    let mut prefixes: Vec<usize> = (0..paths.len())
        .filter(|&i| matches!(paths[i], PathMatch::Prefix(_)))
        .collect();
    prefixes.sort_by_key(|&i| std::cmp::Reverse(paths[i].as_str().len()));
    order.extend(prefixes);
    order
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> Self {
        let routes: Vec<Arc<Route>> = routes.into_iter().map(Arc::new).collect();
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut prefixes = Vec::new();
        for i in match_order(routes.iter().map(|r| &r.path)) {
            match &routes[i].path {
                PathMatch::Exact(p) => exact.entry(p.clone()).or_default().push(i),
                PathMatch::Prefix(_) => prefixes.push(i),
            }
        }
        RouteTable {
            uses_host: routes.iter().any(|r| r.host.is_some()),
            routes,
            exact,
            prefixes,
        }
    }

    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Whether any route matches on `Host`: if none does, a lookup needs no host.
    pub fn uses_host(&self) -> bool {
        self.uses_host
    }

    /// Finds the route for a normalized path, a method and an optional host (without port).
    pub fn lookup(&self, path: &str, method: &Method, host: Option<&str>) -> RouteMatch<'_> {
        let mut method_mismatch = false;
        // No exact routes (the usual config): no hashing of the path.
        let exact = if self.exact.is_empty() {
            None
        } else {
            self.exact.get(path)
        };
        let candidates = exact.into_iter().flatten().chain(
            self.prefixes
                .iter()
                .filter(|&&i| self.routes[i].path.matches(path)),
        );
        for &i in candidates {
            let route = &self.routes[i];
            match route.accepts(method, host) {
                (true, true) => return RouteMatch::Found(route),
                (true, false) => method_mismatch = true,
                _ => {}
            }
        }
        if method_mismatch {
            RouteMatch::MethodNotAllowed
        } else {
            RouteMatch::NotFound
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::TenantId;

    fn norm(s: &str) -> Result<String, PathError> {
        normalize_path(s).map(|c| c.into_owned())
    }

    #[test]
    fn normal_paths_pass_unchanged_and_borrowed() {
        for p in [
            "/",
            "/prometheus",
            "/prometheus/api/v1/query",
            "/api/v1/upload/block/",
            "/a-b_c~d",
            // Canonical escapes of reserved bytes are already normal (found by fuzzing).
            "/label/a%7Cb/values",
            "/x%20y%3A",
        ] {
            assert!(
                matches!(normalize_path(p), Ok(Cow::Borrowed(x)) if x == p),
                "{p}"
            );
        }
    }

    #[test]
    fn dot_segments_are_rejected() {
        for p in [
            "/.",
            "/..",
            "/a/./b",
            "/a/../b",
            "/prometheus/..",
            "/./prometheus",
            // The same after a byte that leaves the plain fast path.
            "/a/../b%20",
            "/a%20/./b",
            "/a%41/..",
        ] {
            assert_eq!(norm(p), Err(PathError::DotSegment), "{p}");
        }
        // Dots inside a segment are ordinary characters.
        assert_eq!(norm("/a.b/..c/c.."), Ok("/a.b/..c/c..".into()));
    }

    #[test]
    fn encoded_separators_and_dots_are_rejected_in_any_case() {
        for (p, c) in [
            ("/a%2Fb", '/'),
            ("/a%2fb", '/'),
            ("/a%5Cb", '\\'),
            ("/a%5cb", '\\'),
            ("/%2e%2e/x", '.'),
            ("/a%2E", '.'),
        ] {
            assert_eq!(norm(p), Err(PathError::EncodedSeparator(c)), "{p}");
        }
        assert_eq!(norm("/a\\b"), Err(PathError::Backslash));
    }

    #[test]
    fn unreserved_escapes_are_decoded_so_the_upstream_sees_the_matched_path() {
        assert_eq!(norm("/%70rometheus/api"), Ok("/prometheus/api".into()));
        assert_eq!(norm("/a%7eb%2db"), Ok("/a~b-b".into()));
        // Other escapes stay escaped, with canonical upper-case hex.
        assert_eq!(
            norm("/label/a%7cb/values"),
            Ok("/label/a%7Cb/values".into())
        );
        assert_eq!(norm("/x%20y"), Ok("/x%20y".into()));
    }

    #[test]
    fn malformed_paths_are_rejected() {
        assert_eq!(norm(""), Err(PathError::NotAbsolute));
        assert_eq!(norm("*"), Err(PathError::NotAbsolute));
        assert_eq!(norm("/a%"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%4"), Err(PathError::BadEscape));
        assert_eq!(norm("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(norm("/a/é"), Err(PathError::NonAscii));
        assert_eq!(norm("/%41é"), Err(PathError::NonAscii));
        assert_eq!(norm("//prometheus"), Err(PathError::EmptySegment));
        assert_eq!(norm("/a//b"), Err(PathError::EmptySegment));
        assert_eq!(norm("/a//b%20"), Err(PathError::EmptySegment));
        assert_eq!(norm("/a%20//b"), Err(PathError::EmptySegment));
    }

    #[test]
    fn decoding_cannot_smuggle_in_a_dot_segment() {
        // "%2e" is rejected outright, so "/a/%2e%2e/b" cannot become "/a/../b".
        assert_eq!(norm("/a/%2e%2e/b"), Err(PathError::EncodedSeparator('.')));
        assert_eq!(norm("/a/.%2e/b"), Err(PathError::EncodedSeparator('.')));
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/prometheus", "/prometheus"));
        assert!(prefix_matches("/prometheus", "/prometheus/api"));
        assert!(!prefix_matches("/prometheus", "/prometheus-old/api"));
        assert!(prefix_matches(
            "/api/v1/upload/block/",
            "/api/v1/upload/block/x"
        ));
        assert!(prefix_matches("/", "/anything"));
    }

    fn route(name: &str, path: PathMatch) -> Route {
        Route {
            name: name.into(),
            path,
            methods: None,
            host: None,
            upstream: "u".into(),
            tenant: TenantSource::Fixed(TenantId::parse("t").unwrap()),
            forward_authorization: false,
            rewrite: Rewrite::default(),
            max_request_body: 1 << 20,
            prometheus: None,
            handles: Default::default(),
        }
    }

    fn found<'a>(t: &'a RouteTable, path: &str, m: &Method, host: Option<&str>) -> Option<&'a str> {
        match t.lookup(path, m, host) {
            RouteMatch::Found(r) => Some(&r.name),
            _ => None,
        }
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let t = RouteTable::new(vec![
            route("root", PathMatch::Prefix("/".into())),
            route("prom", PathMatch::Prefix("/prometheus".into())),
            route(
                "rules",
                PathMatch::Prefix("/prometheus/api/v1/rules".into()),
            ),
            route("push", PathMatch::Exact("/api/v1/push".into())),
            route("api", PathMatch::Prefix("/api".into())),
        ]);
        let get = Method::GET;
        assert_eq!(
            found(&t, "/prometheus/api/v1/query", &get, None),
            Some("prom")
        );
        assert_eq!(
            found(&t, "/prometheus/api/v1/rules/x", &get, None),
            Some("rules")
        );
        assert_eq!(
            found(&t, "/prometheus/api/v1/rulesx", &get, None),
            Some("prom")
        );
        assert_eq!(found(&t, "/api/v1/push", &get, None), Some("push"));
        assert_eq!(found(&t, "/api/v1/push/x", &get, None), Some("api"));
        assert_eq!(found(&t, "/other", &get, None), Some("root"));
    }

    #[test]
    fn match_order_is_exact_in_file_order_then_longest_prefix_with_ties_in_file_order() {
        let paths = [
            PathMatch::Prefix("/ab".into()),
            PathMatch::Exact("/x".into()),
            PathMatch::Prefix("/abcd".into()),
            PathMatch::Prefix("/cd".into()),
            PathMatch::Exact("/a".into()),
        ];
        assert_eq!(match_order(&paths), [1, 4, 2, 0, 3]);
    }

    #[test]
    fn methods_and_hosts_narrow_a_match() {
        let mut push = route("push", PathMatch::Exact("/api/v1/push".into()));
        push.methods = Some(vec![Method::POST]);
        let mut a = route("host-a", PathMatch::Prefix("/prometheus".into()));
        a.host = Some("a.example".into());
        let b = route("any-host", PathMatch::Prefix("/prometheus".into()));
        let t = RouteTable::new(vec![push, a, b]);
        assert_eq!(found(&t, "/api/v1/push", &Method::POST, None), Some("push"));
        assert!(matches!(
            t.lookup("/api/v1/push", &Method::GET, None),
            RouteMatch::MethodNotAllowed
        ));
        assert_eq!(
            found(&t, "/prometheus/x", &Method::GET, Some("A.Example")),
            Some("host-a")
        );
        assert_eq!(
            found(&t, "/prometheus/x", &Method::GET, Some("b.example")),
            Some("any-host")
        );
        assert!(matches!(
            t.lookup("/nothing", &Method::GET, None),
            RouteMatch::NotFound
        ));
    }

    #[test]
    fn rewrite_strips_then_adds() {
        let rw = Rewrite {
            strip_prefix: Some("/team-a".into()),
            add_prefix: Some("/prometheus".into()),
            path: None,
        };
        assert_eq!(rw.apply("/team-a/api/v1/query"), "/prometheus/api/v1/query");
        assert_eq!(rw.apply("/team-a"), "/prometheus");
        assert_eq!(rw.apply("/team-a/"), "/prometheus/");
        let rename = Rewrite {
            strip_prefix: Some("/api/v1/push".into()),
            add_prefix: Some("/prometheus/api/v1/write".into()),
            path: None,
        };
        assert_eq!(rename.apply("/api/v1/push"), "/prometheus/api/v1/write");
        let exact = Rewrite {
            path: Some("/api/v1/write".into()),
            ..Rewrite::default()
        };
        assert_eq!(exact.apply("/api/v1/push"), "/api/v1/write");
        let strip = Rewrite {
            strip_prefix: Some("/team-a".into()),
            add_prefix: None,
            path: None,
        };
        assert_eq!(strip.apply("/team-a/api"), "/api");
        assert_eq!(strip.apply("/team-a"), "/");
        let add = Rewrite {
            strip_prefix: None,
            add_prefix: Some("/prometheus/".into()),
            path: None,
        };
        assert_eq!(add.apply("/api/v1/query"), "/prometheus/api/v1/query");
        assert_eq!(Rewrite::default().apply("/x"), "/x");
    }
}
