//! Header hygiene, both directions. Upstream: hop-by-hop headers (and those named in `Connection`),
//! the caller's credentials and every identity header a client could spoof are removed before hfgate
//! sets its own. Downstream: hop-by-hop headers are removed.

use std::net::SocketAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::authn::Identity;

/// RFC 9110 §7.6.1 connection-specific fields, plus the legacy ones proxies still see.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers only hfgate may set upstream.
const SPOOFABLE: [&str; 10] = [
    "x-hf-bill-to",
    "authorization",
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "forwarded",
    "x-request-id",
];

/// hfgate's own cookies (sessions and sign-in state, over https and plain http): never sent upstream.
pub const OWN_COOKIES: [&str; 4] = ["__Host-hfgate", "__Host-hfgate-login", "hfgate", "hfgate-login"];

pub const X_FORWARDED_USER: HeaderName = HeaderName::from_static("x-forwarded-user");
pub const X_FORWARDED_EMAIL: HeaderName = HeaderName::from_static("x-forwarded-email");
pub const X_FORWARDED_GROUPS: HeaderName = HeaderName::from_static("x-forwarded-groups");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_HFGATE_ASSERTION: HeaderName = HeaderName::from_static("x-hfgate-assertion");
/// Which organisation Hugging Face bills; set only from policy, never passed through unchecked.
pub const X_HF_BILL_TO: HeaderName = HeaderName::from_static("x-hf-bill-to");

/// Names listed in `Connection` (lowercased), which are hop-by-hop for this message.
fn connection_named(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().to_ascii_lowercase().as_bytes()).ok())
        .collect()
}

fn is_hop_by_hop(name: &HeaderName, named: &[HeaderName]) -> bool {
    HOP_BY_HOP.contains(&name.as_str()) || named.contains(name)
}

/// What hfgate puts on the upstream request besides the copied headers.
#[derive(Debug)]
pub struct UpstreamIdentity<'a> {
    pub identity: &'a Identity,
    pub authorization: Option<HeaderValue>,
    pub assertion: Option<HeaderValue>,
    pub request_id: &'a str,
    pub peer: SocketAddr,
    pub proto: &'static str,
    pub trust_forwarded: bool,
    pub bill_to: Option<HeaderValue>,
}

/// Builds the upstream request's headers from the client's.
pub fn upstream_headers(client: &HeaderMap, up: UpstreamIdentity<'_>) -> HeaderMap {
    let named = connection_named(client);
    let mut out = HeaderMap::with_capacity(client.len() + 8);
    let mut prior_for: Option<&HeaderValue> = None;
    let mut host: Option<&HeaderValue> = None;
    for (name, value) in client {
        let n = name.as_str();
        if *name == header::HOST {
            host = Some(value);
            continue;
        }
        if *name == X_FORWARDED_FOR && prior_for.is_none() {
            prior_for = Some(value);
        }
        if is_hop_by_hop(name, &named) || SPOOFABLE.contains(&n) || n.starts_with("x-hfgate-") {
            continue;
        }
        if *name == header::COOKIE && value.as_bytes().windows(6).any(|w| w == b"hfgate") {
            let kept = value.to_str().ok().and_then(|v| crate::authn::session::strip_cookies(v, &OWN_COOKIES));
            if let Some(value) = kept.and_then(|v| HeaderValue::from_str(&v).ok()) {
                out.append(header::COOKIE, value);
            }
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if let Some(auth) = up.authorization {
        out.insert(header::AUTHORIZATION, auth);
    }
    let headers = &up.identity.headers;
    out.insert(X_FORWARDED_USER, headers.user.clone());
    if let Some(email) = &headers.email {
        out.insert(X_FORWARDED_EMAIL, email.clone());
    }
    if let Some(groups) = &headers.groups {
        out.insert(X_FORWARDED_GROUPS, groups.clone());
    }
    if let Some(assertion) = up.assertion {
        out.insert(X_HFGATE_ASSERTION, assertion);
    }
    if let Some(org) = up.bill_to {
        out.insert(X_HF_BILL_TO, org);
    }
    if let Ok(id) = HeaderValue::from_str(up.request_id) {
        out.insert(X_REQUEST_ID, id);
    }
    let peer_ip = ip_text(up.peer.ip());
    let forwarded_for = match (up.trust_forwarded, prior_for.and_then(|v| v.to_str().ok())) {
        (true, Some(prior)) => format!("{prior}, {peer_ip}"),
        _ => peer_ip,
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        out.insert(X_FORWARDED_FOR, value);
    }
    out.insert(X_FORWARDED_PROTO, HeaderValue::from_static(up.proto));
    if let Some(host) = host {
        out.insert(X_FORWARDED_HOST, host.clone());
    }
    out
}

/// An address as text; IPv4 without the formatting machinery, which cost more than the rest of this header.
fn ip_text(ip: std::net::IpAddr) -> String {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut text = String::with_capacity(15);
            for (n, octet) in v4.octets().into_iter().enumerate() {
                if n > 0 {
                    text.push('.');
                }
                if octet >= 100 {
                    text.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    text.push(char::from(b'0' + octet / 10 % 10));
                }
                text.push(char::from(b'0' + octet % 10));
            }
            text
        }
        std::net::IpAddr::V6(_) => ip.to_string(),
    }
}

/// Removes hop-by-hop headers from an upstream response.
pub fn clean_response_headers(headers: &mut HeaderMap) {
    // One pass over the names finds the few present (usually `Connection` alone, or none), instead of
    // looking up every hop-by-hop name in every response.
    let mut present: [Option<HeaderName>; HOP_BY_HOP.len()] = Default::default();
    let mut found = 0;
    // `keys` yields each name once, so at most every hop-by-hop name once.
    for name in headers.keys() {
        if found < present.len() && HOP_BY_HOP.contains(&name.as_str()) {
            present[found] = Some(name.clone());
            found += 1;
        }
    }
    if found == 0 {
        return;
    }
    // `Connection: keep-alive` (or `close`), the usual case, names nothing else to remove.
    let plain = headers
        .get_all(header::CONNECTION)
        .iter()
        .all(|v| v.as_bytes().eq_ignore_ascii_case(b"keep-alive") || v.as_bytes().eq_ignore_ascii_case(b"close"));
    let named = if plain { Vec::new() } else { connection_named(headers) };
    for name in present[..found].iter().flatten().chain(&named) {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_text_matches_display() {
        for ip in ["0.0.0.0", "127.0.0.1", "10.20.30.40", "192.168.100.255", "255.255.255.255", "::1", "fe80::1"] {
            let ip: std::net::IpAddr = ip.parse().expect("address");
            assert_eq!(ip_text(ip), ip.to_string());
        }
    }
    use crate::authn::claims::identity_from_claims;

    fn identity() -> Identity {
        let settings = crate::authn::claims::tests::issuer();
        let claims = serde_json::json!({"sub": "alice", "email": "a@x", "groups": ["ml,research", "ops"]});
        identity_from_claims(&settings, claims.as_object().expect("obj"), 0)
    }

    #[test]
    fn spoofed_and_hop_by_hop_headers_are_replaced() {
        let mut client = HeaderMap::new();
        client.insert(header::HOST, HeaderValue::from_static("gate.example"));
        client.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer caller-token"));
        client.insert("x-forwarded-user", HeaderValue::from_static("admin"));
        client.insert("x-forwarded-groups", HeaderValue::from_static("admins"));
        client.insert("x-hfgate-assertion", HeaderValue::from_static("forged"));
        client.insert("x-hfgate-anything", HeaderValue::from_static("forged"));
        client.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        client.insert(header::CONNECTION, HeaderValue::from_static("keep-alive, x-secret-hop"));
        client.insert("x-secret-hop", HeaderValue::from_static("1"));
        client.insert("te", HeaderValue::from_static("trailers"));
        client.insert("accept", HeaderValue::from_static("text/event-stream"));
        let identity = identity();
        let out = upstream_headers(
            &client,
            UpstreamIdentity {
                identity: &identity,
                authorization: Some(HeaderValue::from_static("Bearer hf_org")),
                assertion: None,
                request_id: "rid",
                peer: "10.1.2.3:5555".parse().expect("addr"),
                proto: "http",
                trust_forwarded: false,
                bill_to: None,
            },
        );
        assert_eq!(out[header::AUTHORIZATION], "Bearer hf_org");
        assert_eq!(out["x-forwarded-user"], "alice");
        assert_eq!(out["x-forwarded-email"], "a@x");
        assert_eq!(out["x-forwarded-groups"], "ml%2Cresearch,ops");
        assert_eq!(out["x-forwarded-for"], "10.1.2.3");
        assert_eq!(out["x-forwarded-host"], "gate.example");
        assert_eq!(out["x-forwarded-proto"], "http");
        assert_eq!(out["x-request-id"], "rid");
        assert_eq!(out["accept"], "text/event-stream");
        for gone in ["x-hfgate-assertion", "x-hfgate-anything", "x-secret-hop", "connection", "te", "host"] {
            assert!(!out.contains_key(gone), "{gone} must not go upstream");
        }
    }

    #[test]
    fn trusted_forwarded_for_is_appended() {
        let mut client = HeaderMap::new();
        client.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let identity = identity();
        let out = upstream_headers(
            &client,
            UpstreamIdentity {
                identity: &identity,
                authorization: None,
                assertion: None,
                request_id: "rid",
                peer: "10.1.2.3:5555".parse().expect("addr"),
                proto: "https",
                trust_forwarded: true,
                bill_to: None,
            },
        );
        assert_eq!(out["x-forwarded-for"], "1.2.3.4, 10.1.2.3");
        assert!(!out.contains_key(header::AUTHORIZATION));
    }

    #[test]
    fn response_hop_by_hop_headers_are_removed() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("x-internal"));
        headers.insert("x-internal", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("x-generated-tokens", HeaderValue::from_static("5"));
        clean_response_headers(&mut headers);
        assert_eq!(headers.len(), 1);
        assert!(headers.contains_key("x-generated-tokens"));

        // The usual answer: `Connection: keep-alive` alone, and every hop-by-hop name at once.
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Keep-Alive"));
        for name in HOP_BY_HOP.iter().skip(1) {
            headers.insert(*name, HeaderValue::from_static("1"));
        }
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        clean_response_headers(&mut headers);
        assert_eq!(headers.keys().collect::<Vec<_>>(), [header::CONTENT_TYPE]);
    }
}
