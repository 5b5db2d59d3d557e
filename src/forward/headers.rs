//! Header hygiene for forwarded requests and responses.

use std::net::IpAddr;

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};

use crate::tenant::{TENANT_HEADER, TenantId};

const HOPS: usize = 8;

/// Hop-by-hop headers: meaningful for one connection only, never forwarded (RFC 9110 §7.6.1,
/// plus the non-standard `Keep-Alive` and `Proxy-Connection` that clients still send).
const HOP_BY_HOP: [HeaderName; HOPS] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including every header named in `Connection`
/// (RFC 9110 §7.6.1: "a proxy ... MUST remove ... each connection option ... listed").
/// `Upgrade` is removed too: tenantgate does not tunnel protocol upgrades.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the (usually few) headers present notes which hop-by-hop names occur, so
    // only those are removed: this runs twice per request, and an upstream's answer usually
    // has just `Connection: keep-alive`.
    let mut present = [false; HOPS + 1];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = hop_by_hop_index(name) {
            present[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    // The names `Connection` lists go too. Nearly every peer sends only `keep-alive` or
    // `close`, which name nothing more (Keep-Alive is hop-by-hop anyway): that value is
    // recognised whole, without splitting, and nothing is allocated.
    if present[0] {
        let mut listed: Vec<HeaderName> = Vec::new();
        for value in headers.get_all(header::CONNECTION) {
            if names_nothing_more(value.as_bytes()) {
                continue;
            }
            let Ok(value) = value.to_str() else { continue };
            for token in value.split(',').map(str::trim_ascii) {
                if names_nothing_more(token.as_bytes()) {
                    continue;
                }
                if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                    listed.push(name);
                }
            }
        }
        for name in listed {
            headers.remove(name);
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate() {
        if present[i] {
            headers.remove(name);
        }
    }
    if present[HOPS] {
        headers.remove(header::UPGRADE);
    }
}

/// A `Connection` token (or a whole value) that names no header to remove.
fn names_nothing_more(token: &[u8]) -> bool {
    token.is_empty()
        || token.eq_ignore_ascii_case(b"keep-alive")
        || token.eq_ignore_ascii_case(b"close")
}

/// The index of a hop-by-hop name in [`HOP_BY_HOP`], or [`HOPS`] for `Upgrade`.
fn hop_by_hop_index(name: &HeaderName) -> Option<usize> {
    // Names are lower case; a match on the string is a length check and a compare, where
    // comparing against each `HeaderName` would build (and drop) the constant array per call.
    Some(match name.as_str() {
        "connection" => 0,
        "keep-alive" => 1,
        "proxy-connection" => 2,
        "proxy-authenticate" => 3,
        "proxy-authorization" => 4,
        "te" => 5,
        "trailer" => 6,
        "transfer-encoding" => 7,
        "upgrade" => HOPS,
        _ => return None,
    })
}

/// Mimir's label-based access policy, enforced from this header: only tenantgate may set it.
pub const LABEL_POLICY_HEADER: &str = "x-prom-label-policy";

/// Replaces every client-supplied `X-Scope-OrgID` (header names are case-insensitive, and
/// `HeaderMap::insert` drops every earlier copy) with exactly the one tenantgate chose, after
/// [`remove_control_headers`].
pub fn set_tenant(headers: &mut HeaderMap, tenant: &TenantId) {
    remove_control_headers(headers);
    headers.insert(TENANT_NAME, tenant.header_value().clone());
}

// Made once at compile time, not validated again on every request.
const TENANT_NAME: HeaderName = HeaderName::from_static(TENANT_HEADER);
const LABEL_POLICY_NAME: HeaderName = HeaderName::from_static(LABEL_POLICY_HEADER);
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Removes every `X-Scope-OrgID` without setting one (and the other control headers).
pub fn remove_tenant(headers: &mut HeaderMap) {
    remove_control_headers(headers);
    headers.remove(TENANT_NAME);
}

/// Removes the headers a client must never set itself: `X-Prom-Label-Policy`, and any header
/// that reads as it or as `X-Scope-OrgID` once `_` is taken for `-`. NGINX with
/// `underscores_in_headers on` (and other servers) treat `X_Scope_OrgID` as the tenant header,
/// and would read the client's copy ahead of ours.
pub fn remove_control_headers(headers: &mut HeaderMap) {
    headers.remove(LABEL_POLICY_NAME);
    // Names are lower case here; lookalikes need an underscore, which real headers rarely have.
    if !headers.keys().any(|k| k.as_str().contains('_')) {
        return;
    }
    let lookalikes: Vec<HeaderName> = headers
        .keys()
        .filter(|k| is_control_lookalike(k.as_str()))
        .cloned()
        .collect();
    for name in lookalikes {
        headers.remove(name);
    }
}

fn is_control_lookalike(name: &str) -> bool {
    [TENANT_HEADER, LABEL_POLICY_HEADER].iter().any(|control| {
        name.len() == control.len()
            && name
                .bytes()
                .zip(control.bytes())
                .all(|(a, b)| a == b || (a == b'_' && b == b'-'))
    })
}

/// Appends the client address to `X-Forwarded-For` (as NGINX's `$proxy_add_x_forwarded_for`
/// does) and sets `X-Forwarded-Proto` to the scheme the client used.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, https: bool) {
    add_forwarded_value(headers, &ip_value(client), https);
}

/// A client address as an `X-Forwarded-For` value, made once per connection by the server.
pub fn ip_value(client: IpAddr) -> HeaderValue {
    HeaderValue::from_str(&client.to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// [`add_forwarded`] with the client's address already a header value: the usual request,
/// with no `X-Forwarded-For` of its own, copies nothing.
pub fn add_forwarded_value(headers: &mut HeaderMap, client: &HeaderValue, https: bool) {
    // One lookup: the usual request has no `X-Forwarded-For` and gets the client's address.
    match headers.entry(X_FORWARDED_FOR) {
        Entry::Vacant(e) => {
            e.insert(client.clone());
        }
        Entry::Occupied(mut e) => {
            let earlier: Vec<&str> = e.iter().filter_map(|v| v.to_str().ok()).collect();
            let ip = client.to_str().unwrap_or("unknown");
            let joined = if earlier.is_empty() {
                ip.to_owned()
            } else {
                format!("{}, {ip}", earlier.join(", "))
            };
            let value = HeaderValue::from_str(&joined)
                .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
            // Replaces every earlier copy: one header, the whole chain.
            e.insert(value);
        }
    }
    let proto = if https { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// Underscore lookalikes of the tenant and policy headers and the policy header itself go;
    /// other headers with underscores stay.
    #[test]
    fn lookalikes_of_control_headers_are_removed() {
        let mut h = map(&[
            ("x_scope_orgid", "evil"),
            ("x-scope_orgid", "evil"),
            ("x_prom_label_policy", "evil"),
            ("x-prom-label-policy", "evil"),
            ("x_custom_thing", "kept"),
        ]);
        set_tenant(&mut h, &TenantId::parse("team-a").unwrap());
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-scope-orgid"], "team-a");
        assert_eq!(h["x_custom_thing"], "kept");
    }

    /// Every hop-by-hop header of RFC 9110 §7.6.1 is removed; end-to-end headers stay.
    #[test]
    fn every_hop_by_hop_name_is_classified_at_its_own_index() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert_eq!(hop_by_hop_index(name), Some(i), "{name}");
        }
        assert_eq!(hop_by_hop_index(&header::UPGRADE), Some(HOPS));
        assert_eq!(hop_by_hop_index(&header::CONTENT_LENGTH), None);
    }

    #[test]
    fn strips_the_standard_hop_by_hop_headers() {
        let mut h = map(&[
            ("connection", "keep-alive"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("proxy-authorization", "Basic x"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("content-type", "application/x-protobuf"),
            ("content-encoding", "snappy"),
        ]);
        strip_hop_by_hop(&mut h);
        // Sorted: the order of fields with different names carries no meaning (RFC 9110 §5.3),
        // and HeaderMap's removals reorder them.
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-encoding", "content-type"]);
    }

    /// Headers named in Connection are connection-specific and removed too.
    #[test]
    fn strips_headers_named_in_connection() {
        let mut h = map(&[
            ("connection", "close, X-Hop"),
            ("connection", "x-other"),
            ("x-hop", "1"),
            ("x-other", "2"),
            ("x-keep", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-hop").is_none() && h.get("x-other").is_none());
        assert_eq!(h["x-keep"], "3");
    }

    /// `keep-alive` and `close`, whole or among other tokens and in any case, name nothing
    /// more; the other tokens still do.
    #[test]
    fn keep_alive_and_close_name_nothing_more() {
        let mut h = map(&[("connection", "Keep-Alive"), ("x-keep", "1")]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("connection").is_none());
        assert_eq!(h["x-keep"], "1");
        let mut h = map(&[
            ("connection", "keep-alive,x-hop , CLOSE"),
            ("x-hop", "1"),
            ("x-keep", "2"),
        ]);
        strip_hop_by_hop(&mut h);
        assert!(h.get("x-hop").is_none() && h.get("connection").is_none());
        assert_eq!(h["x-keep"], "2");
    }

    /// Garbage in Connection does not panic and does not remove anything else.
    #[test]
    fn ignores_invalid_connection_tokens() {
        let mut h = map(&[("connection", "a b, , @@"), ("x-keep", "1")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h["x-keep"], "1");
    }

    /// Every client copy of X-Scope-OrgID is replaced by exactly one value.
    #[test]
    fn tenant_header_is_replaced_never_appended() {
        let mut h = map(&[
            ("x-scope-orgid", "evil"),
            ("X-SCOPE-ORGID", "evil2"),
            ("X-Scope-OrgID", "a|b"),
        ]);
        set_tenant(&mut h, &TenantId::parse("team-a").unwrap());
        let all: Vec<_> = h.get_all("x-scope-orgid").iter().collect();
        assert_eq!(all, ["team-a"]);
    }

    #[test]
    fn remove_tenant_removes_every_copy() {
        let mut h = map(&[("x-scope-orgid", "a"), ("x-scope-orgid", "b")]);
        remove_tenant(&mut h);
        assert!(h.get("x-scope-orgid").is_none());
    }

    /// X-Forwarded-For is appended to, X-Forwarded-Proto is set.
    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, "10.0.0.1".parse().unwrap(), false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
            ("x-forwarded-proto", "ftp"),
        ]);
        add_forwarded(&mut h, "::1".parse().unwrap(), true);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, ::1");
        assert_eq!(
            h.get_all("x-forwarded-for").iter().count(),
            1,
            "one header, the chain"
        );
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
