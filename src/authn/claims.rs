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
    /// The audit line's `identity` object, serialized once rather than on every request.
    pub audit_record: Option<Box<serde_json::value::RawValue>>,
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
    // An address the IdP itself marks unverified must not match `users = [...]` rules or reach the upstream.
    let unverified = claims.get("email_verified") == Some(&Value::Bool(false));
    let email = issuer.email_claim.lookup(claims).and_then(Value::as_str).filter(|_| !unverified).map(str::to_string);
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
    identity_from_parts(issuer, IdentityParts { subject, email, groups, kind, client_id }, expires_at)
}

/// Who a caller is, before it becomes an [`Identity`]: from a token's claims, or from a session cookie.
#[derive(Debug, Clone)]
pub struct IdentityParts {
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub kind: IdentityKind,
    pub client_id: Option<String>,
}

/// Builds the shared [`Identity`]: header values and the audit record are encoded here, once.
pub fn identity_from_parts(issuer: &IssuerSettings, parts: IdentityParts, expires_at: u64) -> Identity {
    let IdentityParts { subject, email, groups, kind, client_id } = parts;
    let headers = IdentityHeaders {
        user: header_value(&encode_header_text(&subject, false)),
        email: email.as_deref().map(|e| header_value(&encode_header_text(e, false))),
        groups: (!groups.is_empty()).then(|| {
            let joined: Vec<String> = groups.iter().map(|g| encode_header_text(g, true)).collect();
            header_value(&joined.join(","))
        }),
    };
    let record = crate::audit::event::IdentityRecord {
        issuer: &issuer.issuer,
        subject: &subject,
        email: email.as_deref(),
        groups: &groups,
        kind,
        client_id: client_id.as_deref(),
    };
    // Serializing strings and a list of strings does not fail.
    let audit_record = serde_json::value::to_raw_value(&record).ok();
    Identity {
        audit_record,
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
pub(crate) mod tests {
    use super::*;
    use crate::config::{ClaimPath, JwksSource};
    use std::time::Duration;

    /// An issuer with default settings, for tests elsewhere in the crate too.
    pub(crate) fn issuer() -> IssuerSettings {
        IssuerSettings {
            name: "corp".into(),
            issuer: "https://idp".into(),
            audiences: vec!["hfgate".into()],
            audience_claims: vec!["aud".into()],
            jwks: JwksSource::Uri("https://idp/jwks".into()),
            algorithms: vec![],
            groups_claim: ClaimPath("groups".into()),
            email_claim: ClaimPath("email".into()),
            leeway: Duration::from_secs(60),
            max_token_lifetime: None,
            require_typ: None,
            kind: KindRule::Auto,
            insecure: false,
            jwks_refresh_interval: Duration::from_secs(300),
            jwks_refetch_min_interval: Duration::from_secs(30),
            jwks_max_stale: Duration::from_secs(3600),
            require: Vec::new(),
            opaque: None,
        }
    }

    #[test]
    fn unverified_emails_are_dropped_and_workloads_recognised() {
        let claims = |v: Value| v.as_object().cloned().expect("object");
        let verified = identity_from_claims(
            &issuer(),
            &claims(serde_json::json!({"sub": "a", "email": "a@x", "email_verified": true})),
            0,
        );
        assert_eq!(verified.email.as_deref(), Some("a@x"));
        let silent = identity_from_claims(&issuer(), &claims(serde_json::json!({"sub": "a", "email": "a@x"})), 0);
        assert_eq!(silent.email.as_deref(), Some("a@x"));
        let unverified = identity_from_claims(
            &issuer(),
            &claims(serde_json::json!({"sub": "a", "email": "ceo@x", "email_verified": false})),
            0,
        );
        assert_eq!(unverified.email, None);
        assert!(unverified.headers.email.is_none());
        let bot = identity_from_claims(&issuer(), &claims(serde_json::json!({"sub": "bot", "azp": "bot"})), 0);
        assert_eq!(bot.kind, IdentityKind::Workload);
        let sa =
            identity_from_claims(&issuer(), &claims(serde_json::json!({"sub": "system:serviceaccount:ml:runner"})), 0);
        assert_eq!(sa.kind, IdentityKind::Workload);
        assert_eq!(verified.kind, IdentityKind::User);
    }

    #[test]
    fn header_text_encoding_is_reversible_and_header_safe() {
        assert_eq!(encode_header_text("alice", false), "alice");
        assert_eq!(encode_header_text("a,b", true), "a%2Cb");
        assert_eq!(encode_header_text("a,b", false), "a,b");
        assert_eq!(encode_header_text("50%\r\n", false), "50%25%0D%0A");
        assert_eq!(encode_header_text("é", false), "%C3%A9");
    }
}
