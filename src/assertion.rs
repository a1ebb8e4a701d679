//! `X-Hfgate-Assertion`: a short-lived ES256 JWT from hfgate's own key that tells the upstream who the
//! verified caller is, so the upstream can trust identity without trusting plain headers. Public keys
//! are served at `/.hfgate/jwks.json`.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use serde_json::json;

use crate::authn::Identity;
use crate::cache::ExpiringCache;
use crate::jose::{Algorithm, KeyError, SigningKey, unix_now};

/// Mints assertions and caches each one for half its lifetime per (token, route), so a busy caller
/// costs one signature per few minutes rather than one per request.
pub struct AssertionSigner {
    key: SigningKey,
    issuer: String,
    lifetime: Duration,
    cache: ExpiringCache<([u8; 32], usize), (HeaderValue, u64), crate::authn::DigestHashBuilder>,
}

impl std::fmt::Debug for AssertionSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssertionSigner").field("kid", &self.key.kid()).field("issuer", &self.issuer).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AssertionKeyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: not a PEM or DER PKCS#8 P-256 private key")]
    Parse { path: String },
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl AssertionSigner {
    /// Uses the PKCS#8 key at `key_path` (PEM or DER) or, without one, a key generated now (fine for
    /// one replica; several replicas should share a key so upstreams see one `kid`).
    pub fn new(
        key_path: Option<&std::path::Path>,
        issuer: &str,
        lifetime: Duration,
    ) -> Result<AssertionSigner, AssertionKeyError> {
        let key = match key_path {
            Some(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|source| AssertionKeyError::Read { path: path.display().to_string(), source })?;
                let der = pem_to_der(&bytes).unwrap_or(bytes);
                SigningKey::from_pkcs8(Algorithm::ES256, &der)
                    .map_err(|_| AssertionKeyError::Parse { path: path.display().to_string() })?
            }
            None => SigningKey::generate(Algorithm::ES256)?,
        };
        let cache = ExpiringCache::new(100_000, crate::authn::DigestHashBuilder::default());
        Ok(AssertionSigner { key, issuer: issuer.to_string(), lifetime, cache })
    }

    /// `{"keys": [...]}` with hfgate's public key.
    pub fn jwks(&self) -> serde_json::Value {
        json!({ "keys": [self.key.public_jwk()] })
    }

    /// Assertions held by the cache.
    pub fn cached_assertions(&self) -> usize {
        self.cache.len()
    }

    pub fn kid(&self) -> &str {
        self.key.kid()
    }

    /// The assertion for `identity` calling `route`: never valid past the caller's own token.
    pub fn assertion(
        &self,
        token_digest: [u8; 32],
        route_index: usize,
        route_name: &str,
        identity: &Identity,
    ) -> Option<HeaderValue> {
        let now = unix_now();
        let cache_key = (token_digest, route_index);
        if let Some((value, exp)) = self.cache.get(&cache_key)
            && exp > now + 5
        {
            return Some(value);
        }
        let exp = (now + self.lifetime.as_secs()).min(identity.expires_at);
        let mut claims = json!({
            "iss": self.issuer,
            "aud": route_name,
            "sub": identity.subject,
            "groups": identity.groups,
            "kind": identity.kind,
            "idp": &*identity.issuer_url,
            "iat": now,
            "exp": exp,
        });
        if let Some(email) = &identity.email {
            claims["email"] = json!(email);
        }
        if let Some(client_id) = &identity.client_id {
            claims["client_id"] = json!(client_id);
        }
        let token = self.key.sign_jwt(&json!({"typ": "JWT"}), &claims).ok()?;
        let mut value = HeaderValue::from_str(&token).ok()?;
        value.set_sensitive(true);
        self.cache.insert(cache_key, (value.clone(), exp), self.lifetime / 2);
        Some(value)
    }
}

/// The `typ` of the access tokens hfgate mints for CI jobs at a hub route's `/oauth/token`; no other token
/// hfgate signs (assertions are `JWT`) carries it, so an assertion can never stand in for one.
pub const MINTED_TYP: &str = "hfgate-at+jwt";
/// The audience of the tokens hfgate mints: hfgate itself.
pub const MINTED_AUDIENCE: &str = "hfgate";

/// Claims a minted token takes from the caller's own token; the registered ones are hfgate's.
const REGISTERED: [&str; 7] = ["iss", "aud", "exp", "iat", "nbf", "jti", "idp"];

impl AssertionSigner {
    /// An access token for a verified workload: its own token's claims, re-issued by hfgate (`iss` =
    /// `public_url`, `aud` = `hfgate`, `idp` = the original issuer) for `lifetime`. Returns the token and
    /// its `exp`.
    pub fn mint(
        &self,
        original: &serde_json::Map<String, serde_json::Value>,
        idp: &str,
        lifetime: Duration,
    ) -> Option<(String, u64)> {
        let now = unix_now();
        let exp = now + lifetime.as_secs();
        let mut claims: serde_json::Map<String, serde_json::Value> = original
            .iter()
            .filter(|(k, _)| !REGISTERED.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("aud".into(), json!(MINTED_AUDIENCE));
        claims.insert("idp".into(), json!(idp));
        claims.insert("iat".into(), json!(now));
        claims.insert("exp".into(), json!(exp));
        claims.insert("jti".into(), json!(crate::oauth::random_urlsafe(12)));
        let token = self.key.sign_jwt(&json!({"typ": MINTED_TYP}), &serde_json::Value::Object(claims)).ok()?;
        Some((token, exp))
    }

    /// hfgate's public key, to verify the tokens it minted.
    pub fn verifying_key(&self) -> Option<crate::authn::jwks::VerifyingKey> {
        crate::authn::jwks::VerifyingKey::from_jwk(&self.key.public_jwk(), &[Algorithm::ES256]).ok()
    }

    /// The issuer of everything this signer signs (`public_url`).
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}

/// The DER body of the first PEM block, if `bytes` is PEM.
fn pem_to_der(bytes: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let start = text.find("-----BEGIN ")?;
    let body_start = start + text[start..].find('\n')? + 1;
    let body_end = body_start + text[body_start..].find("-----END ")?;
    let b64: String = text[body_start..body_end].chars().filter(|c| !c.is_whitespace()).collect();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

pub type SharedSigner = Arc<AssertionSigner>;
