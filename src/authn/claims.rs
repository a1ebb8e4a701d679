//! From verified claims to one [`Identity`]: subject, email, groups, kind and client, as configured
//! per issuer (`groups_claim`, `email_claim`, `kind`).

use std::sync::Arc;

use http::HeaderValue;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::config::{IssuerSettings, KindRule};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityKind {
    User,
    Workload,
}

/// The verified caller. Built once per token and shared by every request that presents it.
#[derive(Debug)]
pub struct Identity {
    /// The configured issuer name.
    pub issuer: Arc<str>,
    /// The issuer URL (`iss`).
    pub issuer_url: Arc<str>,
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub kind: IdentityKind,
    pub client_id: Option<String>,
    /// The token's `exp` (Unix seconds).
    pub expires_at: u64,
    /// `exp` plus the issuer's leeway: a cached identity is not used past this.
    pub valid_until: u64,
    /// The values hfgate sends upstream, encoded once.
    pub headers: IdentityHeaders,
}

/// `X-Forwarded-User/Email/Groups` values, percent-encoded where a raw claim could not be a header.
#[derive(Debug, Clone)]
pub struct IdentityHeaders {
    pub user: HeaderValue,
    pub email: Option<HeaderValue>,
    pub groups: Option<HeaderValue>,
}

/// Client ids live in different claims per IdP: `client_id` (RFC 9068, Okta), `azp` (OIDC, Keycloak,
/// Entra v2), `appid` (Entra v1), `cid` (Okta classic).
const CLIENT_ID_CLAIMS: [&str; 4] = ["client_id", "azp", "appid", "cid"];

pub fn identity_from_claims(issuer: &IssuerSettings, claims: &Map<String, Value>, expires_at: u64) -> Identity {
    let subject = claims.get("sub").and_then(Value::as_str).unwrap_or_default().to_string();
    let email = issuer.email_claim.lookup(claims).and_then(Value::as_str).map(str::to_string);
    let groups = match issuer.groups_claim.lookup(claims) {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(one)) => vec![one.clone()],
        _ => Vec::new(),
    };
    let client_id = CLIENT_ID_CLAIMS.iter().find_map(|c| claims.get(*c).and_then(Value::as_str)).map(str::to_string);
    let kind = match issuer.kind {
        KindRule::User => IdentityKind::User,
        KindRule::Workload => IdentityKind::Workload,
        KindRule::Auto => {
            if client_id.as_deref() == Some(subject.as_str()) || subject.starts_with("system:serviceaccount:") {
                IdentityKind::Workload
            } else {
                IdentityKind::User
            }
        }
    };
    let headers = IdentityHeaders {
        user: header_value(&encode_header_text(&subject, false)),
        email: email.as_deref().map(|e| header_value(&encode_header_text(e, false))),
        groups: (!groups.is_empty()).then(|| {
            let joined: Vec<String> = groups.iter().map(|g| encode_header_text(g, true)).collect();
            header_value(&joined.join(","))
        }),
    };
    Identity {
        issuer: issuer.name.as_str().into(),
        issuer_url: issuer.issuer.as_str().into(),
        subject,
        email,
        groups,
        kind,
        client_id,
        expires_at,
        valid_until: expires_at.saturating_add(issuer.leeway.as_secs()),
        headers,
    }
}

/// Percent-encodes what cannot stand in a header value or would be ambiguous in a list: `%`, control
/// characters, non-ASCII bytes and, in list items, `,`.
pub fn encode_header_text(text: &str, list_item: bool) -> String {
    let needs = |b: u8| !(0x20..0x7f).contains(&b) || b == b'%' || (list_item && b == b',');
    if !text.bytes().any(needs) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 8);
    for b in text.bytes() {
        if needs(b) {
            out.push_str(&format!("%{b:02X}"));
        } else {
            out.push(b as char);
        }
    }
    out
}

fn header_value(text: &str) -> HeaderValue {
    // encode_header_text leaves only visible ASCII and spaces, which are always valid.
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_encoding_is_reversible_and_header_safe() {
        assert_eq!(encode_header_text("alice", false), "alice");
        assert_eq!(encode_header_text("a,b", true), "a%2Cb");
        assert_eq!(encode_header_text("a,b", false), "a,b");
        assert_eq!(encode_header_text("50%\r\n", false), "50%25%0D%0A");
        assert_eq!(encode_header_text("é", false), "%C3%A9");
    }
}
