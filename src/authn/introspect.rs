//! Opaque access tokens: tokens that are not JWTs are checked with the issuer that made them, by RFC 7662
//! introspection or at its OpenID Connect userinfo endpoint, including Hugging Face's own OAuth
//! (`hf_oauth_…` tokens, `https://huggingface.co/oauth/userinfo`).
//!
//! Answers are cached by token digest (never the token): an active one until the token's `exp` and at most
//! the issuer's `cache`, an inactive or refused one for `negative_cache`. Requests presenting the same new
//! token share one call to the identity provider. A provider that is down, slow or answers garbage makes
//! the request fail with 503 naming the issuer, and nothing is cached, so the next request asks again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use http_body_util::{BodyExt, Limited};
use moka::sync::Cache;
use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use super::jwks::{IssuerKeys, origin_of_uri};
use super::{AuthError, Identity, claims, printable};
use crate::client::{FetchError, HttpClient, error_chain};
use crate::config::{ClientAuthMethod, IssuerSettings, OpaqueCheck, OpaqueSettings};
use crate::jose::unix_now;
use crate::oauth::{ClientAuth, OAuthError, ProviderMetadata, is_secure_url, post_form};

/// Hugging Face's issuer: its OAuth access tokens are opaque and checked at its userinfo endpoint.
pub const HUGGING_FACE_ISSUER: &str = "https://huggingface.co";
/// How Hugging Face OAuth access tokens begin (other `hf_` tokens are user access tokens).
pub const HUGGING_FACE_OAUTH_PREFIX: &str = "hf_oauth_";
/// The longest a request waits for an introspection or userinfo answer.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// Whether a token has the shape of a compact JWS: three `.`-separated base64url segments, the first two
/// non-empty. Anything else is opaque.
pub fn looks_like_jwt(token: &str) -> bool {
    let b64url = |part: &str| part.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    let mut parts = token.split('.');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(header), Some(payload), Some(signature), None) => {
            !header.is_empty() && !payload.is_empty() && [header, payload, signature].into_iter().all(b64url)
        }
        _ => false,
    }
}

/// Whether an issuer is Hugging Face's OAuth (its URL, with or without a trailing slash).
pub fn is_hugging_face(settings: &IssuerSettings) -> bool {
    settings.issuer.trim_end_matches('/') == HUGGING_FACE_ISSUER
}

/// Hugging Face's `orgs[]` as groups: each organisation gives `<org>` and, when the answer has the user's
/// role there, `<org>:<roleInOrg>` (`acme`, `acme:admin`).
pub fn hugging_face_groups(claims: &Map<String, Value>) -> Vec<String> {
    let mut groups = Vec::new();
    for org in claims.get("orgs").and_then(Value::as_array).into_iter().flatten() {
        let Some(name) = org.get("preferred_username").and_then(Value::as_str).filter(|n| !n.is_empty()) else {
            continue;
        };
        groups.push(name.to_string());
        if let Some(role) = org.get("roleInOrg").and_then(Value::as_str).filter(|r| !r.is_empty()) {
            groups.push(format!("{name}:{role}"));
        }
    }
    groups
}

/// One issuer whose opaque tokens hfgate checks.
struct OpaqueIssuer {
    settings: Arc<IssuerSettings>,
    opaque: OpaqueSettings,
    hugging_face: bool,
    /// The endpoint from the discovery document when none is configured; a failed discovery is retried.
    discovered: OnceCell<String>,
}

impl OpaqueIssuer {
    fn via(&self) -> &'static str {
        match self.opaque.check {
            OpaqueCheck::Introspection { .. } => "introspection",
            OpaqueCheck::Userinfo { .. } => "userinfo",
        }
    }
}

/// What one issuer said about a token.
enum Said {
    /// Active, with the claims of the answer.
    Active(Map<String, Value>),
    /// `active: false`, or 401 from the userinfo endpoint.
    Inactive,
}

/// A remembered answer: what to return for the token, and until when.
#[derive(Clone)]
struct Answer {
    outcome: Result<Arc<Identity>, AuthError>,
    until: Instant,
}

struct UntilDeadline;

impl moka::Expiry<[u8; 32], Answer> for UntilDeadline {
    fn expire_after_create(&self, _: &[u8; 32], answer: &Answer, now: Instant) -> Option<Duration> {
        Some(answer.until.saturating_duration_since(now))
    }
}

type Flight = Arc<OnceCell<Result<Arc<Identity>, AuthError>>>;

/// The checks in flight, one per token digest; the last request waiting on one removes it.
struct InFlight<'a> {
    map: &'a Mutex<HashMap<[u8; 32], Flight>>,
    digest: [u8; 32],
    cell: Flight,
}

impl<'a> InFlight<'a> {
    fn join(map: &'a Mutex<HashMap<[u8; 32], Flight>>, digest: [u8; 32]) -> InFlight<'a> {
        let mut flights = map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let cell = flights.entry(digest).or_default().clone();
        InFlight { map, digest, cell }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        let mut flights = self.map.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        // The map's clone and this one: nobody else is waiting on this check.
        if flights.get(&self.digest).is_some_and(|c| Arc::ptr_eq(c, &self.cell)) && Arc::strong_count(&self.cell) <= 2 {
            flights.remove(&self.digest);
        }
    }
}

/// Checks opaque tokens against every issuer configured with `introspection` or `userinfo`.
pub struct OpaqueTokens {
    issuers: Vec<OpaqueIssuer>,
    client: HttpClient,
    metrics: Arc<crate::metrics::Metrics>,
    answers: Cache<[u8; 32], Answer>,
    in_flight: Mutex<HashMap<[u8; 32], Flight>>,
}

impl std::fmt::Debug for OpaqueTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.issuers.iter().map(|i| i.settings.name.as_str()).collect();
        f.debug_struct("OpaqueTokens").field("issuers", &names).finish_non_exhaustive()
    }
}

impl OpaqueTokens {
    /// The opaque-token checks of these issuers, in configuration order; `None` when no issuer has any.
    pub fn new(
        issuers: &[Arc<IssuerKeys>],
        client: HttpClient,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Option<OpaqueTokens> {
        let issuers: Vec<OpaqueIssuer> = issuers
            .iter()
            .filter_map(|keys| {
                let opaque = keys.settings.opaque.clone()?;
                let hugging_face =
                    is_hugging_face(&keys.settings) && matches!(opaque.check, OpaqueCheck::Userinfo { .. });
                Some(OpaqueIssuer {
                    settings: keys.settings.clone(),
                    opaque,
                    hugging_face,
                    discovered: OnceCell::new(),
                })
            })
            .collect();
        if issuers.is_empty() {
            return None;
        }
        let answers = Cache::builder().max_capacity(100_000).expire_after(UntilDeadline).build();
        Some(OpaqueTokens { issuers, client, metrics, answers, in_flight: Mutex::new(HashMap::new()) })
    }

    /// Whether Hugging Face OAuth is configured as an issuer (`https://huggingface.co` with `userinfo`).
    pub fn checks_hugging_face(&self) -> bool {
        self.issuers.iter().any(|i| i.hugging_face)
    }

    /// The issuers a token goes to: `hf_oauth_…` tokens only to Hugging Face, every other token to the
    /// other issuers (never to Hugging Face), in configuration order.
    fn candidates(&self, token: &str) -> impl Iterator<Item = &OpaqueIssuer> {
        let hugging_face = token.starts_with(HUGGING_FACE_OAUTH_PREFIX);
        self.issuers.iter().filter(move |i| i.hugging_face == hugging_face)
    }

    /// Whether any issuer would check this token.
    pub fn handles(&self, token: &str) -> bool {
        self.candidates(token).next().is_some()
    }

    /// Authenticates an opaque token: a remembered answer, or the answer of the check another request
    /// already started for it, or a new check.
    pub async fn authenticate(&self, token: &str, digest: [u8; 32]) -> Result<Arc<Identity>, AuthError> {
        if let Some(answer) = self.answers.get(&digest) {
            if Instant::now() < answer.until {
                return answer.outcome;
            }
            self.answers.invalidate(&digest);
        }
        let flight = InFlight::join(&self.in_flight, digest);
        flight.cell.get_or_init(|| self.check(token, digest)).await.clone()
    }

    /// Asks the candidate issuers in order; the first that says active decides, and its answer is checked
    /// and remembered. Inactive everywhere is remembered briefly; an issuer that could not answer, when no
    /// other said active, is a 503 and not remembered.
    async fn check(&self, token: &str, digest: [u8; 32]) -> Result<Arc<Identity>, AuthError> {
        let mut refused_by: Vec<&str> = Vec::new();
        let mut negative_for: Option<Duration> = None;
        let mut unavailable = None;
        for issuer in self.candidates(token) {
            let said = self.ask(issuer, token).await;
            let result = match &said {
                Ok(Said::Active(_)) => "active",
                Ok(Said::Inactive) => "inactive",
                Err(_) => "unavailable",
            };
            self.metrics.opaque_check(&issuer.settings.name, result);
            match said {
                Ok(Said::Active(answer)) => {
                    let now = Instant::now();
                    let outcome = accept(issuer, answer, unix_now()).map(Arc::new);
                    let until = match &outcome {
                        // Until `exp` (the provider is asked again after it), and never longer than `cache`.
                        Ok(identity) => {
                            let left = identity.expires_at.saturating_sub(unix_now());
                            now + issuer.opaque.cache.min(Duration::from_secs(left))
                        }
                        Err(_) => now + issuer.opaque.negative_cache,
                    };
                    if until > now {
                        self.answers.insert(digest, Answer { outcome: outcome.clone(), until });
                    }
                    return outcome;
                }
                Ok(Said::Inactive) => {
                    refused_by.push(&issuer.settings.name);
                    let brief = issuer.opaque.negative_cache;
                    negative_for = Some(negative_for.map_or(brief, |d| d.min(brief)));
                }
                Err(err) => {
                    unavailable.get_or_insert(err);
                }
            }
        }
        if let Some(err) = unavailable {
            return Err(err);
        }
        let err = AuthError::Inactive(match refused_by.split_last() {
            Some((last, [])) => format!("issuer {last}"),
            Some((last, rest)) => format!("issuers {} and {last}", rest.join(", ")),
            None => "no issuer".to_string(),
        });
        if let Some(brief) = negative_for.filter(|d| !d.is_zero()) {
            self.answers.insert(digest, Answer { outcome: Err(err.clone()), until: Instant::now() + brief });
        }
        Err(err)
    }

    /// One call to one issuer. Every failure that is not the token's fault is [`AuthError::OpaqueUnavailable`].
    async fn ask(&self, issuer: &OpaqueIssuer, token: &str) -> Result<Said, AuthError> {
        let endpoint = self.endpoint(issuer).await?;
        let unavailable = |reason: String, detail: &dyn std::fmt::Display| {
            tracing::warn!(
                issuer = %issuer.settings.name, endpoint, check = issuer.via(), %detail,
                "cannot check an opaque token"
            );
            AuthError::OpaqueUnavailable { issuer: issuer.settings.name.clone(), reason }
        };
        let what = format!("the {} endpoint", issuer.via());
        let timed_out =
            || unavailable(format!("{what} did not answer within {}s", CHECK_TIMEOUT.as_secs()), &"timeout");
        match &issuer.opaque.check {
            OpaqueCheck::Introspection { client_id, client_secret, auth, .. } => {
                let mut form = vec![("token", token), ("token_type_hint", "access_token")];
                let client = match (auth, client_secret.as_deref()) {
                    (ClientAuthMethod::Basic, Some(secret)) => ClientAuth::Basic { client_id, client_secret: secret },
                    (ClientAuthMethod::Post, Some(secret)) => {
                        form.push(("client_secret", secret));
                        ClientAuth::Public { client_id }
                    }
                    (_, None) => ClientAuth::Public { client_id },
                };
                let call = post_form::<Value>(&self.client, endpoint, client, &form);
                let answer = match tokio::time::timeout(CHECK_TIMEOUT, call).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Ok(answer)) => answer,
                    Ok(Err(err)) => {
                        let reason = match &err {
                            OAuthError::Refused { error, .. } => {
                                tracing::error!(
                                    issuer = %issuer.settings.name, endpoint, error = %err,
                                    "the introspection endpoint refused hfgate's request: check introspection.client_id, client_secret and auth"
                                );
                                format!("{what} refused hfgate's request ({})", printable(error))
                            }
                            OAuthError::Request { source: FetchError::Status(status), .. } => {
                                format!("{what} answered HTTP {status}")
                            }
                            OAuthError::Request { source: FetchError::Timeout(_), .. } => {
                                format!("{what} did not answer within {}s", CHECK_TIMEOUT.as_secs())
                            }
                            OAuthError::Request { source: FetchError::TooLarge(_), .. } => {
                                format!("{what} answered more than {MAX_ANSWER_BYTES} bytes")
                            }
                            OAuthError::Unexpected { .. } => format!("{what} answered something that is not JSON"),
                            _ => format!("{what} is unreachable"),
                        };
                        return Err(unavailable(reason, &err));
                    }
                };
                let not_rfc7662 = || {
                    unavailable(
                        format!("{what} answered without a boolean active (not an RFC 7662 response)"),
                        &"no boolean active",
                    )
                };
                let Value::Object(claims) = answer else { return Err(not_rfc7662()) };
                match claims.get("active") {
                    Some(Value::Bool(true)) => Ok(Said::Active(claims)),
                    Some(Value::Bool(false)) => Ok(Said::Inactive),
                    _ => Err(not_rfc7662()),
                }
            }
            OpaqueCheck::Userinfo { .. } => {
                let call = self.userinfo(endpoint, token);
                let (status, body) = match tokio::time::timeout(CHECK_TIMEOUT, call).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Err(detail)) => return Err(unavailable(format!("{what} is unreachable"), &detail)),
                    Ok(Ok(answer)) => answer,
                };
                match status {
                    // RFC 6750 §3.1: invalid_token. The provider does not know or no longer honours it.
                    http::StatusCode::UNAUTHORIZED => Ok(Said::Inactive),
                    http::StatusCode::OK => match serde_json::from_slice::<Value>(&body) {
                        Ok(Value::Object(claims)) => Ok(Said::Active(claims)),
                        _ => Err(unavailable(
                            format!("{what} answered something that is not a JSON object"),
                            &"not JSON",
                        )),
                    },
                    other => Err(unavailable(format!("{what} answered HTTP {}", other.as_u16()), &other)),
                }
            }
        }
    }

    /// `GET endpoint` with the token as a bearer token: the status and (bounded) body.
    async fn userinfo(&self, endpoint: &str, token: &str) -> Result<(http::StatusCode, bytes::Bytes), String> {
        let request = http::Request::get(endpoint)
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, concat!("hfgate/", env!("CARGO_PKG_VERSION")))
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let response = self.client.request(request).await.map_err(|e| error_chain(&e))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|_| format!("answer larger than {MAX_ANSWER_BYTES} bytes"))?
            .to_bytes();
        Ok((status, body))
    }

    /// The configured endpoint, or the one the issuer's discovery document names (same origin as the
    /// issuer, https unless loopback or `insecure`). Discovery is fetched once; a failure is retried.
    async fn endpoint<'a>(&self, issuer: &'a OpaqueIssuer) -> Result<&'a str, AuthError> {
        let (configured, field) = match &issuer.opaque.check {
            OpaqueCheck::Introspection { endpoint, .. } => (endpoint, "introspection_endpoint"),
            OpaqueCheck::Userinfo { endpoint } => (endpoint, "userinfo_endpoint"),
        };
        if let Some(endpoint) = configured {
            return Ok(endpoint);
        }
        let settings = &issuer.settings;
        let fail = |reason: String| {
            tracing::warn!(issuer = %settings.name, %reason, "cannot find the endpoint to check opaque tokens");
            AuthError::OpaqueUnavailable { issuer: settings.name.clone(), reason }
        };
        let discovered = issuer
            .discovered
            .get_or_try_init(|| async {
                let metadata = ProviderMetadata::discover(&self.client, &settings.issuer, settings.insecure)
                    .await
                    .map_err(|e| fail(format!("discovery failed: {e}")))?;
                let found = match &issuer.opaque.check {
                    OpaqueCheck::Introspection { .. } => metadata.introspection_endpoint,
                    OpaqueCheck::Userinfo { .. } => metadata.userinfo_endpoint,
                };
                let url = found.ok_or_else(|| {
                    fail(format!("the discovery document has no {field}: set {}.endpoint", issuer.via()))
                })?;
                if !is_secure_url(&url, settings.insecure) {
                    return Err(fail(format!("the discovered {field} {url} must be https")));
                }
                // The token (and for introspection hfgate's client secret) goes there: only to the issuer's
                // own origin unless the operator names another endpoint.
                let origin = |u: &str| u.parse::<http::Uri>().ok().as_ref().and_then(origin_of_uri);
                if origin(&url).is_none() || origin(&url) != origin(&settings.issuer) {
                    return Err(fail(format!(
                        "the discovered {field} {url} is not on the issuer's origin: set {}.endpoint to trust it",
                        issuer.via()
                    )));
                }
                tracing::info!(issuer = %settings.name, endpoint = %url, "opaque tokens are checked at the discovered endpoint");
                Ok(url)
            })
            .await?;
        Ok(discovered.as_str())
    }
}

/// Checks an active answer the way a JWT's claims are checked, then builds the identity: `exp` and `nbf`
/// (with the issuer's leeway), `iss` when present, the audience when the answer names one, `token_type`
/// when present, `sub`, and the issuer's `require`.
fn accept(issuer: &OpaqueIssuer, mut answer: Map<String, Value>, now: u64) -> Result<Identity, AuthError> {
    let settings = &issuer.settings;
    let leeway = settings.leeway.as_secs();
    let exp = numeric_date(&answer, "exp")?;
    if let Some(exp) = exp
        && now > exp.saturating_add(leeway)
    {
        return Err(AuthError::Expired { ago: now - exp, leeway });
    }
    if let Some(nbf) = numeric_date(&answer, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(AuthError::NotYetValid { wait: nbf - now, leeway });
    }
    match answer.get("iss") {
        None => {}
        Some(Value::String(iss)) if iss == &settings.issuer => {}
        Some(Value::String(_)) => return Err(AuthError::UnknownIssuer(settings.issuer.clone())),
        Some(_) => return Err(AuthError::BadClaimType { claim: "iss", expected: "string" }),
    }
    super::jwt::check_audience(&answer, settings, false)?;
    if let Some(kind) = answer.get("token_type").and_then(Value::as_str)
        && kind.to_ascii_lowercase().contains("refresh")
    {
        return Err(AuthError::NotAccessToken(printable(kind)));
    }
    match answer.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => {}
        Some(Value::String(_)) | None => return Err(AuthError::MissingSubject),
        Some(_) => return Err(AuthError::BadClaimType { claim: "sub", expected: "string" }),
    }
    claims::check_requirements(settings, &answer)?;
    if issuer.hugging_face && settings.groups_claim.lookup(&answer).is_none() {
        let groups = hugging_face_groups(&answer);
        answer.insert(settings.groups_claim.0.clone(), Value::from(groups));
    }
    // Without `exp` (userinfo answers never have one) the identity is trusted as long as it is cached.
    let expires_at = exp.unwrap_or_else(|| now.saturating_add(issuer.opaque.cache.as_secs()));
    Ok(claims::identity_from_claims(settings, &answer, expires_at))
}

/// A NumericDate of an answer: `null` counts as absent (some introspection endpoints send it).
fn numeric_date(answer: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, AuthError> {
    match answer.get(name) {
        Some(Value::Null) => Ok(None),
        _ => super::jwt::numeric_date(answer, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::claims::tests::issuer;

    fn map(value: Value) -> Map<String, Value> {
        value.as_object().cloned().expect("object")
    }

    fn opaque_issuer(settings: IssuerSettings, check: OpaqueCheck) -> OpaqueIssuer {
        let opaque = OpaqueSettings { check, cache: Duration::from_secs(300), negative_cache: Duration::from_secs(10) };
        let hugging_face = is_hugging_face(&settings) && matches!(opaque.check, OpaqueCheck::Userinfo { .. });
        OpaqueIssuer { settings: Arc::new(settings), opaque, hugging_face, discovered: OnceCell::new() }
    }

    fn introspected() -> OpaqueIssuer {
        let check = OpaqueCheck::Introspection {
            endpoint: Some("https://idp/introspect".into()),
            client_id: "hfgate".into(),
            client_secret: Some("s".into()),
            auth: ClientAuthMethod::Basic,
        };
        opaque_issuer(issuer(), check)
    }

    #[test]
    fn jwt_shapes_are_told_from_opaque_tokens() {
        assert!(looks_like_jwt("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"));
        assert!(looks_like_jwt("a.b."));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d.e"));
        assert!(!looks_like_jwt(".b.c"));
        assert!(!looks_like_jwt("a+b.c.d"));
        assert!(!looks_like_jwt("2YotnFZFEjr1zCsicMWpAA"));
        assert!(!looks_like_jwt("ya29.a0AfH6SMB"));
    }

    #[test]
    fn hugging_face_orgs_become_groups() {
        let answer = map(serde_json::json!({
            "sub": "6512", "preferred_username": "alice", "orgs": [
                {"sub": "1", "name": "Acme", "preferred_username": "acme", "roleInOrg": "admin", "isEnterprise": true},
                {"sub": "2", "name": "Friends", "preferred_username": "friends"},
                {"sub": "3", "name": "Nameless"},
            ]
        }));
        assert_eq!(hugging_face_groups(&answer), ["acme", "acme:admin", "friends"]);
        let mut hf = issuer();
        hf.issuer = "https://huggingface.co".into();
        let hf = opaque_issuer(hf, OpaqueCheck::Userinfo { endpoint: None });
        assert!(hf.hugging_face);
        let identity = accept(&hf, answer.clone(), 1000).expect("accepted");
        assert_eq!(identity.groups, ["acme", "acme:admin", "friends"]);
        assert_eq!(identity.expires_at, 1300, "no exp: trusted for the cache duration");
        // A groups claim the answer has wins over the mapping.
        let mut with_groups = answer;
        with_groups.insert("groups".into(), serde_json::json!(["custom"]));
        assert_eq!(accept(&hf, with_groups, 1000).expect("accepted").groups, ["custom"]);
    }

    #[test]
    fn active_answers_are_checked_like_claims() {
        let corp = introspected();
        let ok = map(serde_json::json!({"active": true, "sub": "alice", "aud": ["x", "hfgate"], "exp": 2000,
            "iss": "https://idp", "scope": "read write", "groups": ["ml"]}));
        let identity = accept(&corp, ok.clone(), 1000).expect("accepted");
        assert_eq!((identity.subject.as_str(), identity.expires_at), ("alice", 2000));
        assert!(identity.tags.contains(&("scope".into(), "read write".into())));
        let with = |key: &str, value: Value| {
            let mut answer = ok.clone();
            answer.insert(key.into(), value);
            accept(&corp, answer, 1000).expect_err("refused")
        };
        assert_eq!(with("exp", 100.into()), AuthError::Expired { ago: 900, leeway: 60 });
        assert_eq!(with("nbf", 5000.into()), AuthError::NotYetValid { wait: 4000, leeway: 60 });
        assert_eq!(with("aud", "other".into()), AuthError::AudMismatch("hfgate".into()));
        assert_eq!(with("iss", "https://evil".into()), AuthError::UnknownIssuer("https://idp".into()));
        assert_eq!(with("sub", "".into()), AuthError::MissingSubject);
        assert_eq!(with("token_type", "refresh_token".into()), AuthError::NotAccessToken("refresh_token".into()));
        let mut bare = ok.clone();
        bare.remove("aud");
        bare.remove("iss");
        assert!(accept(&corp, bare.clone(), 1000).is_ok(), "aud and iss are optional");
        bare.remove("sub");
        assert_eq!(accept(&corp, bare, 1000).expect_err("no sub"), AuthError::MissingSubject);
    }
}
