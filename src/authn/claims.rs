//! From verified claims to one [`Identity`]: subject, email, groups, kind and client, as configured
//! per issuer (`groups_claim`, `email_claim`, `kind`).

use std::sync::Arc;

use http::HeaderValue;
use serde::Serialize;
use serde_json::{Map, Value};

use super::AuthError;
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
    /// Every claim of the token, flattened, for policies (Cedar entity tags).
    pub tags: Vec<(String, String)>,
    /// The authorizer's digest of this caller (with the policy-analysis flags it was computed under),
    /// filled on first use: the decision cache's key for who is asking.
    pub policy_key: std::sync::OnceLock<(u8, [u8; 32])>,
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
            // Client-credentials tokens name the client as the subject (RFC 9068; Auth0 appends `@clients`).
            let client_subject =
                client_id.as_deref().is_some_and(|id| subject == id || subject.strip_suffix("@clients") == Some(id));
            if client_subject || subject.starts_with("system:serviceaccount:") {
                IdentityKind::Workload
            } else {
                IdentityKind::User
            }
        }
    };
    let tags = claim_tags(claims);
    identity_from_parts(issuer, IdentityParts { subject, email, groups, kind, client_id, tags }, expires_at)
}

/// The most claims a token contributes to policies, and the longest value kept: a token is attacker-sized.
const MAX_TAGS: usize = 128;
const MAX_TAG_BYTES: usize = 1024;

/// Every claim, for policies (Cedar entity tags: `principal.getTag("repository") like "acme/*"`). Nested
/// objects are flattened with `.` (`kubernetes.io.namespace`); strings stay as they are, numbers and
/// booleans become their JSON text, and a list of those becomes its items joined with `,`. Objects in
/// lists, `null`, and values over 1 KiB are left out, as is anything past the first 128.
pub fn claim_tags(claims: &Map<String, Value>) -> Vec<(String, String)> {
    fn scalar(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
            _ => None,
        }
    }
    fn walk(prefix: &str, claims: &Map<String, Value>, out: &mut Vec<(String, String)>, depth: usize) {
        for (key, value) in claims {
            if out.len() >= MAX_TAGS {
                return;
            }
            let name = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
            let text = match value {
                Value::Object(inner) if depth < 4 => {
                    walk(&name, inner, out, depth + 1);
                    continue;
                }
                Value::Array(items) => {
                    let parts: Option<Vec<String>> = items.iter().map(scalar).collect();
                    parts.map(|p| p.join(","))
                }
                other => scalar(other),
            };
            if let Some(text) = text.filter(|t| t.len() <= MAX_TAG_BYTES) {
                out.push((name, text));
            }
        }
    }
    let mut out = Vec::new();
    walk("", claims, &mut out, 0);
    out
}

/// The issuer's claim conditions (`require`), checked after the signature and the registered claims.
/// The message names the claim and the patterns; a value from the (verified) token is quoted printably.
pub fn check_requirements(issuer: &IssuerSettings, claims: &Map<String, Value>) -> Result<(), AuthError> {
    for condition in &issuer.require {
        if condition.holds(claims) {
            continue;
        }
        let expected = condition.any_of.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let found = match condition.claim.lookup(claims) {
            None => None,
            Some(Value::String(s)) => Some(super::printable(s)),
            Some(other) => Some(super::printable(&other.to_string())),
        };
        return Err(AuthError::Requirement {
            issuer: issuer.name.clone(),
            claim: super::printable(&condition.claim.0),
            expected,
            found,
        });
    }
    Ok(())
}

/// Who a caller is, before it becomes an [`Identity`]: from a token's claims, or from a session cookie.
#[derive(Debug, Clone)]
pub struct IdentityParts {
    pub subject: String,
    pub email: Option<String>,
    pub groups: Vec<String>,
    pub kind: IdentityKind,
    pub client_id: Option<String>,
    /// Every claim, flattened, for policies ([`claim_tags`]); empty for a browser session.
    pub tags: Vec<(String, String)>,
}

/// Builds the shared [`Identity`]: header values and the audit record are encoded here, once.
pub fn identity_from_parts(issuer: &IssuerSettings, parts: IdentityParts, expires_at: u64) -> Identity {
    let IdentityParts { subject, email, groups, kind, client_id, tags } = parts;
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
        tags,
        policy_key: std::sync::OnceLock::new(),
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
        let auth0 = serde_json::json!({"sub": "Xy12@clients", "azp": "Xy12", "gty": "client-credentials"});
        assert_eq!(identity_from_claims(&issuer(), &claims(auth0), 0).kind, IdentityKind::Workload);
        let okta = serde_json::json!({"sub": "0oa1", "cid": "0oa1", "scp": ["models.read"]});
        assert_eq!(identity_from_claims(&issuer(), &claims(okta), 0).kind, IdentityKind::Workload);
        let person = serde_json::json!({"sub": "alice@clients.example", "azp": "alice"});
        assert_eq!(identity_from_claims(&issuer(), &claims(person), 0).kind, IdentityKind::User);
        let sa =
            identity_from_claims(&issuer(), &claims(serde_json::json!({"sub": "system:serviceaccount:ml:runner"})), 0);
        assert_eq!(sa.kind, IdentityKind::Workload);
        assert_eq!(verified.kind, IdentityKind::User);
    }

    /// Claims of a GitHub Actions OIDC token, as GitHub documents them.
    fn github_claims() -> Map<String, Value> {
        serde_json::json!({
            "jti": "example-id", "sub": "repo:acme/models:environment:prod", "environment": "prod",
            "aud": "hfgate", "ref": "refs/heads/main", "sha": "d6a3f1", "repository": "acme/models",
            "repository_owner": "acme", "repository_owner_id": "123", "repository_id": "456",
            "repository_visibility": "private", "run_id": "7", "run_number": "3", "run_attempt": "1",
            "actor": "octocat", "workflow": "release", "event_name": "push", "ref_type": "branch",
            "job_workflow_ref": "acme/models/.github/workflows/release.yml@refs/heads/main",
            "iss": "https://token.actions.githubusercontent.com", "nbf": 1, "exp": 2, "iat": 1
        })
        .as_object()
        .cloned()
        .expect("object")
    }

    fn condition(claim: &str, any_of: &[&str]) -> crate::config::ClaimCondition {
        crate::config::ClaimCondition {
            claim: ClaimPath(claim.into()),
            any_of: any_of.iter().map(|p| crate::config::Pattern(p.to_string())).collect(),
        }
    }

    #[test]
    fn requirements_match_exactly_by_glob_or_any_of() {
        let mut github = issuer();
        github.name = "github".into();
        github.require = vec![
            condition("repository", &["acme/*"]),
            condition("ref", &["refs/heads/main"]),
            condition("environment", &["prod", "staging"]),
        ];
        let claims = github_claims();
        assert_eq!(check_requirements(&github, &claims), Ok(()));
        let mut forked = claims.clone();
        forked.insert("repository".into(), "evil/models".into());
        let err = check_requirements(&github, &forked).expect_err("foreign repository");
        assert_eq!(
            err.to_string(),
            "claim repository is 'evil/models' and does not satisfy issuer github's require: expected one of [acme/*]"
        );
        let mut dev = claims.clone();
        dev.remove("environment");
        let err = check_requirements(&github, &dev).expect_err("no environment");
        assert!(err.to_string().contains("claim environment is missing"), "{err}");
        // Nested claims (Kubernetes), numbers and lists.
        let mut k8s = issuer();
        k8s.require = vec![
            condition("kubernetes.io.namespace", &["ml-*"]),
            condition("roles", &["deployer"]),
            condition("run_number", &["3"]),
        ];
        let ok = serde_json::json!({"kubernetes.io": {"namespace": "ml-prod"}, "roles": ["reader", "deployer"], "run_number": 3});
        assert_eq!(check_requirements(&k8s, ok.as_object().expect("object")), Ok(()));
        let bad =
            serde_json::json!({"kubernetes.io": {"namespace": "default"}, "roles": ["deployer"], "run_number": 3});
        assert!(check_requirements(&k8s, bad.as_object().expect("object")).is_err());
        // The glob: `*` anywhere, including across `/`; anchored at both ends.
        assert!(crate::config::glob_match("acme/*", "acme/x/y"));
        assert!(crate::config::glob_match("*/models", "acme/models"));
        assert!(crate::config::glob_match("a*b*c", "aXbYc"));
        assert!(!crate::config::glob_match("acme/*", "acmex/y"));
        assert!(!crate::config::glob_match("a*b", "ab_"));
        assert!(crate::config::glob_match("a*a", "aa"));
        assert!(!crate::config::glob_match("a*a", "a"));
    }

    #[test]
    fn every_claim_becomes_a_tag() {
        let claims = serde_json::json!({
            "repository": "acme/models",
            "kubernetes.io": {"namespace": "ml", "serviceaccount": {"name": "runner", "uid": "u-1"}},
            "roles": ["a", "b"],
            "amr": [{"not": "scalar"}],
            "n": 3, "flag": true, "nothing": null,
            "big": "x".repeat(2000),
        });
        let tags: std::collections::BTreeMap<String, String> =
            claim_tags(claims.as_object().expect("object")).into_iter().collect();
        assert_eq!(tags.get("repository").map(String::as_str), Some("acme/models"));
        assert_eq!(tags.get("kubernetes.io.namespace").map(String::as_str), Some("ml"));
        assert_eq!(tags.get("kubernetes.io.serviceaccount.name").map(String::as_str), Some("runner"));
        assert_eq!(tags.get("roles").map(String::as_str), Some("a,b"));
        assert_eq!(tags.get("n").map(String::as_str), Some("3"));
        assert_eq!(tags.get("flag").map(String::as_str), Some("true"));
        for absent in ["amr", "nothing", "big", "kubernetes.io"] {
            assert!(!tags.contains_key(absent), "{absent}");
        }
        let many: Map<String, Value> = (0..500).map(|i| (format!("c{i}"), Value::from(i))).collect();
        assert_eq!(claim_tags(&many).len(), MAX_TAGS);
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
