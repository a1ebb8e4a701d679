//! Configuration for machines and per-user credentials: an issuer's claim conditions (`require`), how an
//! issuer's opaque tokens are checked (`introspection`, `userinfo`), and `[[exchange]]` blocks that turn
//! the caller's identity into a per-user upstream credential.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::settings::duration_or;
use super::{Source, Text};
use crate::config::ClaimPath;

// --- require ---------------------------------------------------------------------------------------

/// One value of `require = { claim = ... }` as written: a string or a list of strings.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawCondition {
    One(String),
    AnyOf(Vec<String>),
    /// Anything else (a number, a table): refused with what is expected.
    Other(#[allow(dead_code)] toml::Value),
}

/// A pattern a claim must match: exact, or a glob where `*` stands for any run of characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(pub String);

impl Pattern {
    pub fn matches(&self, text: &str) -> bool {
        glob_match(&self.0, text)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `*` matches any run of characters (including `/`); every other character matches itself.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let Some((first, rest)) = pattern.split_once('*') else {
        return pattern == text;
    };
    let Some(mut remaining) = text.strip_prefix(first) else {
        return false;
    };
    let mut parts: Vec<&str> = rest.split('*').collect();
    let last = parts.pop().unwrap_or_default();
    for part in parts {
        match remaining.find(part) {
            Some(at) => remaining = &remaining[at + part.len()..],
            None => return false,
        }
    }
    remaining.len() >= last.len() && remaining.ends_with(last)
}

/// A claim condition of a workload issuer: the claim at `claim` must match one of `any_of`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimCondition {
    pub claim: ClaimPath,
    pub any_of: Vec<Pattern>,
}

impl ClaimCondition {
    /// Whether the claims satisfy this condition. A string claim must match; a number or boolean is
    /// compared as written in JSON; a list of them matches when any element does. A missing claim, an
    /// object or `null` never matches.
    pub fn holds(&self, claims: &serde_json::Map<String, serde_json::Value>) -> bool {
        use serde_json::Value;
        let one = |value: &Value| match value {
            Value::String(s) => self.any_of.iter().any(|p| p.matches(s)),
            Value::Number(_) | Value::Bool(_) => {
                let text = value.to_string();
                self.any_of.iter().any(|p| p.matches(&text))
            }
            _ => false,
        };
        match self.claim.lookup(claims) {
            Some(Value::Array(items)) => items.iter().any(one),
            Some(value) => one(value),
            None => false,
        }
    }
}

pub(super) fn validate_require(
    src: &mut Source<'_>,
    raw: &Spanned<BTreeMap<String, Spanned<RawCondition>>>,
    key: &str,
) -> Option<Vec<ClaimCondition>> {
    let mut out = Vec::new();
    let mut ok = true;
    for (claim, condition) in raw.get_ref() {
        let field = format!("{key}.require.{claim}");
        let at = condition.span().start;
        let patterns = match condition.get_ref() {
            RawCondition::One(one) => vec![one.clone()],
            RawCondition::AnyOf(list) if !list.is_empty() => list.clone(),
            RawCondition::AnyOf(_) => {
                src.issue(at, &field, "an empty list matches nothing: list the values allowed");
                ok = false;
                continue;
            }
            RawCondition::Other(_) => {
                src.issue(at, &field, "expected a string (exact or glob with *) or a list of them (any of)");
                ok = false;
                continue;
            }
        };
        let mut any_of = Vec::with_capacity(patterns.len());
        for pattern in patterns {
            match super::interpolate(&pattern) {
                Ok(p) if !p.is_empty() && !p.chars().any(char::is_control) => any_of.push(Pattern(p)),
                Ok(_) => {
                    src.issue(at, &field, "a pattern must be non-empty, without control characters");
                    ok = false;
                }
                Err(message) => {
                    src.issue(at, &field, message);
                    ok = false;
                }
            }
        }
        if claim.is_empty() {
            src.issue(at, key, "a claim name must not be empty");
            ok = false;
            continue;
        }
        out.push(ClaimCondition { claim: ClaimPath(claim.clone()), any_of });
    }
    ok.then_some(out)
}

// --- opaque tokens -----------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIntrospection {
    /// Default: `introspection_endpoint` from the issuer's discovery document.
    pub endpoint: Option<Text>,
    pub client_id: Text,
    pub client_secret: Option<Text>,
    /// `basic` (client_secret_basic, the default) or `post` (client_secret_post).
    pub auth: Option<Text>,
    pub cache: Option<Text>,
    pub negative_cache: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUserinfo {
    /// Default: `userinfo_endpoint` from the issuer's discovery document.
    pub endpoint: Option<Text>,
    pub cache: Option<Text>,
    pub negative_cache: Option<Text>,
}

/// How the client authenticates to the introspection endpoint (RFC 7662 §2.1, RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    Basic,
    Post,
}

/// How an issuer's opaque (non-JWT) tokens are checked.
#[derive(Clone, PartialEq, Eq)]
pub enum OpaqueCheck {
    /// RFC 7662 token introspection.
    Introspection { endpoint: Option<String>, client_id: String, client_secret: Option<String>, auth: ClientAuthMethod },
    /// The OpenID Connect userinfo endpoint (a token it answers for is valid; its claims are the identity).
    Userinfo { endpoint: Option<String> },
}

impl fmt::Debug for OpaqueCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpaqueCheck::Introspection { endpoint, client_id, auth, .. } => f
                .debug_struct("Introspection")
                .field("endpoint", endpoint)
                .field("client_id", client_id)
                .field("auth", auth)
                .finish_non_exhaustive(),
            OpaqueCheck::Userinfo { endpoint } => f.debug_struct("Userinfo").field("endpoint", endpoint).finish(),
        }
    }
}

/// `introspection = {...}` or `userinfo = {...}` on an issuer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueSettings {
    pub check: OpaqueCheck,
    /// The longest an active answer is trusted (also never past the token's `exp`).
    pub cache: Duration,
    /// How long an inactive answer is remembered.
    pub negative_cache: Duration,
}

pub(super) fn validate_opaque(
    src: &mut Source<'_>,
    introspection: Option<&Spanned<RawIntrospection>>,
    userinfo: Option<&Spanned<RawUserinfo>>,
    key: &str,
    insecure: bool,
) -> Option<Option<OpaqueSettings>> {
    let endpoint = |src: &mut Source<'_>, value: &Option<Text>, field: &str| -> Option<Option<String>> {
        match value {
            Some(v) => src.text(v, field).and_then(|url| {
                if crate::oauth::is_secure_url(&url, insecure) {
                    Some(Some(url))
                } else {
                    src.issue(
                        v.span().start,
                        field,
                        format!("{url:?} must be https (loopback or insecure = true excepted)"),
                    );
                    None
                }
            }),
            None => Some(None),
        }
    };
    let caches = |src: &mut Source<'_>, cache: &Option<Text>, negative: &Option<Text>, field: &str| {
        let positive = duration_or(src, cache.as_ref(), &format!("{field}.cache"), Duration::from_secs(300));
        let negative = duration_or(src, negative.as_ref(), &format!("{field}.negative_cache"), Duration::from_secs(10));
        Some((positive?, negative?))
    };
    match (introspection, userinfo) {
        (Some(_), Some(u)) => {
            src.issue(u.span().start, format!("{key}.userinfo"), "use introspection or userinfo, not both");
            None
        }
        (Some(raw), None) => {
            let field = format!("{key}.introspection");
            let raw = raw.get_ref();
            let endpoint = endpoint(src, &raw.endpoint, &format!("{field}.endpoint"));
            let client_id = src.text(&raw.client_id, &format!("{field}.client_id"));
            let client_secret = match &raw.client_secret {
                Some(v) => src.text(v, &format!("{field}.client_secret")).map(Some),
                None => Some(None),
            };
            let auth = match &raw.auth {
                Some(v) => match v.get_ref().as_str() {
                    "basic" => Some(ClientAuthMethod::Basic),
                    "post" => Some(ClientAuthMethod::Post),
                    other => {
                        src.issue(
                            v.span().start,
                            format!("{field}.auth"),
                            format!("unknown auth {other:?}: use basic or post"),
                        );
                        None
                    }
                },
                None => Some(ClientAuthMethod::Basic),
            };
            let (cache, negative_cache) = caches(src, &raw.cache, &raw.negative_cache, &field)?;
            Some(Some(OpaqueSettings {
                check: OpaqueCheck::Introspection {
                    endpoint: endpoint?,
                    client_id: client_id?,
                    client_secret: client_secret?,
                    auth: auth?,
                },
                cache,
                negative_cache,
            }))
        }
        (None, Some(raw)) => {
            let field = format!("{key}.userinfo");
            let raw = raw.get_ref();
            let endpoint = endpoint(src, &raw.endpoint, &format!("{field}.endpoint"));
            let (cache, negative_cache) = caches(src, &raw.cache, &raw.negative_cache, &field)?;
            Some(Some(OpaqueSettings { check: OpaqueCheck::Userinfo { endpoint: endpoint? }, cache, negative_cache }))
        }
        (None, None) => Some(None),
    }
}

// --- [[exchange]] ------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawExchange {
    pub name: Text,
    pub kind: Text,
    pub token_endpoint: Option<Text>,
    pub client_id: Text,
    pub client_secret: Option<Text>,
    pub scope: Option<Text>,
    pub audience: Option<Text>,
    pub resource: Option<Text>,
    pub issuers: Option<Vec<Text>>,
    pub insecure: Option<Spanned<bool>>,
}

/// What an exchange turns the caller into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// Hugging Face Enterprise token exchange: the caller's verified email → an `hf_oauth_…` token.
    HuggingFace,
    /// RFC 8693: the caller's own token → one for the upstream's audience.
    Rfc8693,
}

/// A validated `[[exchange]]`.
#[derive(Clone, PartialEq, Eq)]
pub struct ExchangeSettings {
    pub name: String,
    pub kind: ExchangeKind,
    pub token_endpoint: String,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub resource: Option<String>,
    /// Names of the issuers whose callers this exchange serves; empty = every issuer.
    pub issuers: Vec<String>,
}

impl fmt::Debug for ExchangeSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExchangeSettings")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("audience", &self.audience)
            .field("resource", &self.resource)
            .field("issuers", &self.issuers)
            .finish_non_exhaustive()
    }
}

/// Hugging Face's token endpoint (RFC 8693 exchange for Enterprise organisations).
pub const HUGGING_FACE_TOKEN_ENDPOINT: &str = "https://huggingface.co/oauth/token";

pub(super) fn validate_exchange(
    src: &mut Source<'_>,
    raw: &Spanned<RawExchange>,
    key: &str,
    issuer_names: &[&str],
) -> Option<ExchangeSettings> {
    let table_at = raw.span().start;
    let raw = raw.get_ref();
    let name = src.text(&raw.name, &format!("{key}.name"));
    let kind = match raw.kind.get_ref().as_str() {
        "huggingface" => Some(ExchangeKind::HuggingFace),
        "rfc8693" => Some(ExchangeKind::Rfc8693),
        other => {
            src.issue(
                raw.kind.span().start,
                format!("{key}.kind"),
                format!("unknown kind {other:?}: use huggingface or rfc8693"),
            );
            None
        }
    };
    let insecure = raw.insecure.as_ref().map(|b| *b.get_ref()).unwrap_or(false);
    let token_endpoint = match (&raw.token_endpoint, kind) {
        (Some(v), _) => src.text(v, &format!("{key}.token_endpoint")).and_then(|url| {
            if crate::oauth::is_secure_url(&url, insecure) {
                Some(url)
            } else {
                src.issue(
                    v.span().start,
                    format!("{key}.token_endpoint"),
                    format!("{url:?} must be https (loopback or insecure = true excepted)"),
                );
                None
            }
        }),
        (None, Some(ExchangeKind::HuggingFace)) => Some(HUGGING_FACE_TOKEN_ENDPOINT.to_string()),
        (None, _) => {
            src.issue(table_at, format!("{key}.token_endpoint"), "required for kind = \"rfc8693\"");
            None
        }
    };
    let optional = |src: &mut Source<'_>, value: &Option<Text>, field: &str| match value {
        Some(v) => src.text(v, &format!("{key}.{field}")).map(Some),
        None => Some(None),
    };
    let client_id = src.text(&raw.client_id, &format!("{key}.client_id"));
    let client_secret = optional(src, &raw.client_secret, "client_secret");
    if kind == Some(ExchangeKind::HuggingFace) && raw.client_secret.is_none() {
        src.issue(
            table_at,
            format!("{key}.client_secret"),
            "required for kind = \"huggingface\" (sent with Basic auth)",
        );
    }
    let scope = optional(src, &raw.scope, "scope");
    let audience = optional(src, &raw.audience, "audience");
    let resource = optional(src, &raw.resource, "resource");
    let mut issuers = Vec::new();
    let mut issuers_ok = true;
    for value in raw.issuers.iter().flatten() {
        let field = format!("{key}.issuers");
        match src.text(value, &field) {
            Some(name) if issuer_names.contains(&name.as_str()) => issuers.push(name),
            Some(name) => {
                let message = format!("no [[issuer]] named {name:?}: expected one of [{}]", issuer_names.join(", "));
                src.issue(value.span().start, &field, message);
                issuers_ok = false;
            }
            None => issuers_ok = false,
        }
    }
    if !issuers_ok {
        return None;
    }
    Some(ExchangeSettings {
        issuers,
        name: name?,
        kind: kind?,
        token_endpoint: token_endpoint?,
        client_id: client_id?,
        client_secret: client_secret?,
        scope: scope?,
        audience: audience?,
        resource: resource?,
    })
}

/// Default `max_token_lifetime` of a `kind = "workload"` issuer: CI and service-account tokens live
/// minutes to an hour, so a token claiming a day is suspect.
pub const WORKLOAD_MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);
