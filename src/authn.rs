//! The door: a bearer JWT from the `Authorization` header, verified against the issuer named by its
//! `iss`, becomes an [`Identity`]; so does an opaque token an issuer vouches for by introspection or at its
//! userinfo endpoint ([`introspect`]). Every refusal is an [`AuthError`] that names the exact check that failed.

pub mod claims;
pub mod introspect;
pub mod jwks;
pub mod jwt;
pub mod session;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use http::StatusCode;

pub use claims::{Identity, IdentityKind};
use jwks::IssuerKeys;

use crate::cache::ExpiringCache;
use crate::client::HttpClient;
use crate::config::IssuerSettings;
use crate::jose::{Algorithm, unix_now};
use crate::metrics::Metrics;

/// Why a request was not authenticated. The `Display` text is the `error_description` a caller sees:
/// it names the failed check and never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization` header.
    #[error("missing bearer token: send Authorization: Bearer <token from your identity provider>")]
    MissingToken,
    /// Two or more `Authorization` headers; which one counts would be a guess.
    #[error("more than one Authorization header")]
    DuplicateAuthorization,
    /// An `Authorization` header with another scheme (Basic, Digest...).
    #[error("Authorization scheme must be Bearer")]
    NotBearer,
    /// A Hugging Face user token: clients send `HF_TOKEN` to any `base_url`.
    #[error(
        "this is a Hugging Face token (hf_...), not a token from your identity provider: hfgate adds the organisation's Hugging Face credential itself; unset HF_TOKEN or set it to a token from your identity provider (HF_TOKEN=$(hfgate token))"
    )]
    HuggingFaceToken,
    /// Longer than any real access token; refused before it is parsed or hashed.
    #[error("token too large: more than {} bytes", jwt::MAX_TOKEN_BYTES)]
    TooLarge,
    /// Not a compact JWS, or a part that does not decode.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    #[error("alg none is never accepted")]
    AlgNone,
    #[error("alg {0} is never accepted: hfgate only verifies asymmetric signatures")]
    AlgSymmetric(String),
    #[error("alg {0} is not supported")]
    AlgUnsupported(String),
    #[error("token has a crit header hfgate does not understand")]
    Crit,
    #[error("missing iss claim")]
    MissingIssuer,
    #[error("iss is not a configured issuer: expected one of [{0}]")]
    UnknownIssuer(String),
    #[error("alg {alg} is not allowed for issuer {issuer}: allowed [{allowed}]")]
    AlgNotAllowed { alg: Algorithm, issuer: String, allowed: String },
    #[error("token has no kid and issuer {0} publishes several keys for its alg")]
    KidRequired(String),
    #[error("unknown kid '{kid}': not in the JWKS of issuer {issuer}")]
    UnknownKid { kid: String, issuer: String },
    #[error("key '{kid}' is {family} and does not fit alg {alg}")]
    KeyMismatch { kid: String, family: String, alg: Algorithm },
    #[error("signature verification failed")]
    BadSignature,
    /// The issuer's keys could not be fetched (or are older than `jwks_max_stale`): not the caller's fault.
    #[error("signing keys of issuer {0} are unavailable; try again later")]
    KeysUnavailable(String),
    #[error("missing exp claim")]
    MissingExp,
    #[error("token expired {ago}s ago (leeway {leeway}s)")]
    Expired { ago: u64, leeway: u64 },
    #[error("token not valid yet: nbf is {wait}s in the future (leeway {leeway}s)")]
    NotYetValid { wait: u64, leeway: u64 },
    #[error("iat is {0}s in the future")]
    IssuedInFuture(u64),
    #[error("token lifetime {lifetime} exceeds max_token_lifetime {max}")]
    LifetimeTooLong { lifetime: String, max: String },
    #[error("aud mismatch: expected one of [{0}]")]
    AudMismatch(String),
    #[error("missing aud claim: expected one of [{0}]")]
    MissingAudience(String),
    #[error("typ mismatch: expected {0}")]
    TypMismatch(String),
    #[error("missing sub claim")]
    MissingSubject,
    #[error("claim {claim} is not a {expected}")]
    BadClaimType { claim: &'static str, expected: &'static str },
    /// A claim condition of the issuer (`require`) does not hold.
    #[error("claim {claim} {} does not satisfy issuer {issuer}'s require: expected one of [{expected}]", match found { Some(v) => format!("is '{v}' and"), None => "is missing and".to_string() })]
    Requirement { issuer: String, claim: String, expected: String, found: Option<String> },
    /// An opaque token the issuers asked (`issuer corp`, `issuers corp and partner`) do not know or no
    /// longer honour: introspection said `active: false`, or the userinfo endpoint answered 401.
    #[error("token is not active according to {0}")]
    Inactive(String),
    /// An introspection answer for something other than an access token (a refresh token).
    #[error("token_type {0} is not an access token")]
    NotAccessToken(String),
    /// The issuer's introspection or userinfo endpoint could not answer: not the caller's fault.
    #[error("issuer {issuer} cannot check the token now: {reason}; try again later")]
    OpaqueUnavailable { issuer: String, reason: String },
}

impl AuthError {
    /// A short stable code, for metrics labels and the audit `decision.reason`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingToken => "missing_token",
            AuthError::DuplicateAuthorization => "duplicate_authorization",
            AuthError::NotBearer => "not_bearer",
            AuthError::HuggingFaceToken => "hf_token",
            AuthError::TooLarge => "token_too_large",
            AuthError::Malformed(_) => "malformed",
            AuthError::AlgNone => "alg_none",
            AuthError::AlgSymmetric(_) => "alg_symmetric",
            AuthError::AlgUnsupported(_) => "alg_unsupported",
            AuthError::Crit => "crit",
            AuthError::MissingIssuer => "missing_iss",
            AuthError::UnknownIssuer(_) => "unknown_issuer",
            AuthError::AlgNotAllowed { .. } => "alg_not_allowed",
            AuthError::KidRequired(_) => "kid_required",
            AuthError::UnknownKid { .. } => "unknown_kid",
            AuthError::KeyMismatch { .. } => "key_mismatch",
            AuthError::BadSignature => "bad_signature",
            AuthError::KeysUnavailable(_) => "keys_unavailable",
            AuthError::MissingExp => "missing_exp",
            AuthError::Expired { .. } => "expired",
            AuthError::NotYetValid { .. } => "not_yet_valid",
            AuthError::IssuedInFuture(_) => "iat_in_future",
            AuthError::LifetimeTooLong { .. } => "lifetime_too_long",
            AuthError::AudMismatch(_) => "aud_mismatch",
            AuthError::MissingAudience(_) => "missing_aud",
            AuthError::TypMismatch(_) => "typ_mismatch",
            AuthError::MissingSubject => "missing_sub",
            AuthError::BadClaimType { .. } => "bad_claim",
            AuthError::Requirement { .. } => "requirement_failed",
            AuthError::Inactive(_) => "inactive",
            AuthError::NotAccessToken(_) => "not_access_token",
            AuthError::OpaqueUnavailable { .. } => "introspection_unavailable",
        }
    }

    /// 401 for anything about the token, 503 when hfgate cannot get the issuer's keys or its answer about
    /// an opaque token.
    pub fn status(&self) -> StatusCode {
        match self {
            AuthError::KeysUnavailable(_) | AuthError::OpaqueUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

/// Attacker-supplied text (a `kid`, an `alg`) made safe to quote in a message: visible ASCII without
/// quotes or backslashes, at most 64 characters.
pub(crate) fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(64)
        .map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' && c != '\'' { c } else { '?' })
        .collect();
    if text.chars().count() > 64 {
        out.push_str("...");
    }
    out
}

/// The bearer token of a request: exactly one `Authorization` header, scheme `Bearer` in any case.
/// Tokens are never read from the query string or a form body.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingToken)?;
    if values.next().is_some() {
        return Err(AuthError::DuplicateAuthorization);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed("Authorization header is not visible ASCII"))?;
    let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::NotBearer);
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Err(AuthError::MissingToken);
    }
    if token.len() > jwt::MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    Ok(token)
}

/// Verifies bearer tokens for every configured issuer and caches the verified ones.
pub struct Authenticator {
    issuers: Vec<Arc<IssuerKeys>>,
    /// hfgate's own key and issuer, for the tokens it mints at `/oauth/token`.
    minted: Option<(String, Arc<jwks::VerifyingKey>)>,
    by_iss: HashMap<String, usize>,
    cache: ExpiringCache<[u8; 32], Verified, DigestHashBuilder>,
    expected_issuers: String,
    /// Issuers whose opaque tokens are introspected or checked at their userinfo endpoint.
    opaque: Option<introspect::OpaqueTokens>,
}

/// A verified token as cached: who it names, and which issuer's key signed it, so that a key the IdP
/// withdraws stops vouching for cached tokens too.
#[derive(Clone)]
struct Verified {
    identity: Arc<Identity>,
    issuer: usize,
    key: [u8; 32],
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("issuers", &self.issuers).field("opaque", &self.opaque).finish()
    }
}

impl Authenticator {
    pub fn new(issuers: &[IssuerSettings], client: HttpClient, metrics: Arc<Metrics>) -> Authenticator {
        let issuers: Vec<Arc<IssuerKeys>> = issuers
            .iter()
            .map(|s| Arc::new(IssuerKeys::new(Arc::new(s.clone()), client.clone(), metrics.clone())))
            .collect();
        let by_iss = issuers.iter().enumerate().map(|(i, k)| (k.settings.issuer.clone(), i)).collect();
        let expected_issuers = issuers.iter().map(|k| k.settings.issuer.as_str()).collect::<Vec<_>>().join(", ");
        let cache = ExpiringCache::new(100_000, DigestHashBuilder::default());
        let opaque = introspect::OpaqueTokens::new(&issuers, client, metrics.clone());
        Authenticator { issuers, minted: None, by_iss, cache, expected_issuers, opaque }
    }

    /// Accepts the tokens `signer` mints (`typ` hfgate-at+jwt, `aud` hfgate) as bearer tokens.
    pub fn trust_minted(&mut self, signer: &crate::assertion::AssertionSigner) {
        self.minted = signer.verifying_key().map(|key| (signer.issuer().to_string(), Arc::new(key)));
    }

    pub fn issuers(&self) -> &[Arc<IssuerKeys>] {
        &self.issuers
    }

    /// Starts the key refresh task of every issuer.
    pub fn spawn_key_refresh(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.issuers.iter().map(|keys| tokio::spawn(keys.clone().run_refresh())).collect()
    }

    /// Verified tokens held by the cache.
    pub fn cached_tokens(&self) -> usize {
        self.cache.len()
    }

    /// Ready once every issuer's keys have loaded.
    pub fn ready(&self) -> bool {
        self.issuers.iter().all(|k| k.is_loaded())
    }

    /// Authenticates a bearer token. A token seen before and not yet expired costs one digest and one
    /// cache lookup; `exp` is re-checked on every read, and so is that its signing key is still published
    /// (and not older than `jwks_max_stale`).
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        self.authenticate_digested(token, token_digest(token)).await
    }

    /// [`Authenticator::authenticate`] for a caller that already holds the token's digest.
    ///
    /// Hugging Face tokens (`hf_…`) are refused, except `hf_oauth_…` ones when Hugging Face OAuth is a
    /// configured issuer. A token that is not shaped like a JWT goes to the issuers with `introspection` or
    /// `userinfo` settings ([`introspect::OpaqueTokens`]); everything else is verified as a JWT.
    pub async fn authenticate_digested(&self, token: &str, digest: [u8; 32]) -> Result<Arc<Identity>, AuthError> {
        if token.starts_with("hf_") {
            let hugging_face_oauth = token.starts_with(introspect::HUGGING_FACE_OAUTH_PREFIX)
                && self.opaque.as_ref().is_some_and(introspect::OpaqueTokens::checks_hugging_face);
            if !hugging_face_oauth {
                return Err(AuthError::HuggingFaceToken);
            }
        }
        if let Some(opaque) = &self.opaque
            && (token.starts_with(introspect::HUGGING_FACE_OAUTH_PREFIX) || !introspect::looks_like_jwt(token))
            && opaque.handles(token)
        {
            return opaque.authenticate(token, digest).await;
        }
        if let Some(verified) = self.cache.get(&digest) {
            // hfgate's own key does not rotate while it runs; an IdP's may be withdrawn.
            let trusted = verified.issuer == MINTED || self.issuers[verified.issuer].still_trusts(&verified.key);
            if unix_now() <= verified.identity.valid_until && trusted {
                return Ok(verified.identity);
            }
            // Expired, or its key withdrawn or stale: verify afresh, which names the failed check.
            self.cache.remove(&digest);
        }
        let (identity, issuer, key) = self.verify_keyed(token).await?;
        let identity = Arc::new(identity);
        // Kept until the token's `exp` plus leeway, never longer.
        let ttl = Duration::from_secs(identity.valid_until.saturating_sub(unix_now()).saturating_add(1));
        self.cache.insert(digest, Verified { identity: identity.clone(), issuer, key }, ttl);
        Ok(identity)
    }

    /// Full verification, no cache: parse, pick the issuer by `iss`, check the algorithm, find the key,
    /// verify the signature, then the claims.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_keyed(token).await.map(|(identity, _, _)| identity)
    }

    /// [`Authenticator::verify`], also naming the issuer (by index) and the fingerprint of the key that verified.
    async fn verify_keyed(&self, token: &str) -> Result<(Identity, usize, [u8; 32]), AuthError> {
        let jwt = jwt::parse(token)?;
        let iss = jwt.issuer()?;
        if let Some((own, key)) = &self.minted
            && iss == own
        {
            return self.verify_minted(&jwt, key);
        }
        let issuer = *self.by_iss.get(iss).ok_or_else(|| AuthError::UnknownIssuer(self.expected_issuers.clone()))?;
        let settings = &self.issuers[issuer].settings;
        let key = self.verify_signature(&jwt, issuer).await?;
        let validity = jwt::check_claims(&jwt, settings, unix_now())?;
        claims::check_requirements(settings, &jwt.claims)?;
        Ok((claims::identity_from_claims(settings, &jwt.claims, validity.expires_at), issuer, key))
    }

    /// A token hfgate minted for a workload: hfgate's key and `typ`, audience `hfgate`, then the original
    /// issuer's conditions and claim mapping, as if the workload had presented its own token.
    fn verify_minted(
        &self,
        jwt: &jwt::ParsedJwt<'_>,
        key: &jwks::VerifyingKey,
    ) -> Result<(Identity, usize, [u8; 32]), AuthError> {
        if jwt.header.typ.as_deref() != Some(crate::assertion::MINTED_TYP) {
            return Err(AuthError::TypMismatch(crate::assertion::MINTED_TYP.into()));
        }
        jwt.verify(key)?;
        let idp = jwt.claims.get("idp").and_then(serde_json::Value::as_str).unwrap_or_default();
        let issuer = *self.by_iss.get(idp).ok_or_else(|| AuthError::UnknownIssuer(self.expected_issuers.clone()))?;
        let original = &self.issuers[issuer].settings;
        let mut settings = (**original).clone();
        settings.audiences = vec![crate::assertion::MINTED_AUDIENCE.into()];
        settings.audience_claims = vec!["aud".into()];
        settings.require_typ = None;
        settings.max_token_lifetime = Some(Duration::from_secs(24 * 3600));
        let validity = jwt::check_claims(jwt, &settings, unix_now())?;
        // The issuer's conditions hold for what the issuer said, not for what the job asked for.
        let mut vouched = jwt.claims.clone();
        vouched.remove(crate::ci_token::REQUESTED_RESOURCE);
        claims::check_requirements(original, &vouched)?;
        let identity = claims::identity_from_claims(original, &jwt.claims, validity.expires_at);
        Ok((identity, MINTED, key.fingerprint))
    }

    /// Verifies an ID token of issuer `issuer` (by index) whose claims are checked against `settings`: the
    /// issuer's own, with the sign-in client as the audience. Returns the claims and `exp`.
    pub async fn verify_id_token(
        &self,
        token: &str,
        issuer: usize,
        settings: &IssuerSettings,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, u64), AuthError> {
        let jwt = jwt::parse(token)?;
        if jwt.issuer()? != settings.issuer {
            return Err(AuthError::UnknownIssuer(settings.issuer.clone()));
        }
        self.verify_signature(&jwt, issuer).await?;
        let validity = jwt::check_claims(&jwt, settings, unix_now())?;
        // A person signing in meets the issuer's conditions exactly as a bearer token must.
        claims::check_requirements(settings, &jwt.claims)?;
        Ok((jwt.claims, validity.expires_at))
    }

    /// The algorithm allowlist, the key, the signature; returns the key's fingerprint.
    async fn verify_signature(&self, jwt: &jwt::ParsedJwt<'_>, issuer: usize) -> Result<[u8; 32], AuthError> {
        let keys = &self.issuers[issuer];
        let settings = &keys.settings;
        if !settings.algorithms.contains(&jwt.header.alg) {
            return Err(AuthError::AlgNotAllowed {
                alg: jwt.header.alg,
                issuer: settings.name.clone(),
                allowed: settings.algorithms.iter().map(|a| a.name()).collect::<Vec<_>>().join(", "),
            });
        }
        let key = keys.key_for(jwt.header.kid.as_deref(), jwt.header.alg).await?;
        jwt.verify(&key)?;
        Ok(key.fingerprint)
    }
}

/// The issuer index cache entries of hfgate-minted tokens carry.
const MINTED: usize = usize::MAX;

/// Hashes cache keys made of SHA-256 digests (of verified tokens, with a route index at most): a digest
/// is already uniformly random, so folding its words with a per-process seed is hash enough, at a tenth
/// of SipHash's cost. Only verified tokens are inserted, so nobody can pick digests that crowd one bucket.
#[derive(Debug, Clone, Copy)]
pub struct DigestHashBuilder {
    seed: u64,
}

impl Default for DigestHashBuilder {
    fn default() -> Self {
        let mut seed = [0u8; 8];
        let _ = aws_lc_rs::rand::fill(&mut seed);
        DigestHashBuilder { seed: u64::from_le_bytes(seed) }
    }
}

impl std::hash::BuildHasher for DigestHashBuilder {
    type Hasher = DigestHasher;

    fn build_hasher(&self) -> DigestHasher {
        DigestHasher { state: self.seed }
    }
}

/// See [`DigestHashBuilder`].
#[derive(Debug)]
pub struct DigestHasher {
    state: u64,
}

impl std::hash::Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.state = (self.state ^ word).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }

    fn write_usize(&mut self, word: usize) {
        self.write_u64(word as u64);
    }

    fn finish(&self) -> u64 {
        self.state
    }
}

/// SHA-256 of the token: the cache key, so tokens themselves are never kept as keys.
pub fn token_digest(token: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&'static str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(http::header::AUTHORIZATION, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(bearer_token(&headers(&["Bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&["bEaReR  abc "])), Ok("abc"));
        assert_eq!(bearer_token(&headers(&[])), Err(AuthError::MissingToken));
        assert_eq!(bearer_token(&headers(&["Bearer "])), Err(AuthError::MissingToken));
        assert_eq!(bearer_token(&headers(&["Basic YTpi"])), Err(AuthError::NotBearer));
        assert_eq!(bearer_token(&headers(&["Bearer a", "Bearer b"])), Err(AuthError::DuplicateAuthorization));
        let mut map = HeaderMap::new();
        let at_limit = format!("Bearer {}", "a".repeat(jwt::MAX_TOKEN_BYTES));
        map.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&at_limit).expect("ascii"));
        assert_eq!(bearer_token(&map).map(str::len), Ok(jwt::MAX_TOKEN_BYTES));
        map.insert(http::header::AUTHORIZATION, HeaderValue::from_str(&format!("{at_limit}a")).expect("ascii"));
        assert_eq!(bearer_token(&map), Err(AuthError::TooLarge));
    }

    #[test]
    fn printable_strips_quotes_and_truncates() {
        assert_eq!(printable("ab\"c\\d'e\n"), "ab?c?d?e?");
        assert_eq!(printable(&"k".repeat(100)).len(), 67);
    }

    #[test]
    fn descriptions_never_carry_quotes_or_backslashes() {
        // RFC 6750 §3: error_description excludes '"' and '\'.
        let samples = [
            AuthError::UnknownKid { kid: printable("a\"b"), issuer: "corp".into() },
            AuthError::AlgSymmetric(printable("HS256")),
            AuthError::HuggingFaceToken,
            AuthError::AudMismatch("hfgate".into()),
        ];
        for e in samples {
            let text = e.to_string();
            assert!(!text.contains('"') && !text.contains('\\'), "{text}");
        }
    }
}
