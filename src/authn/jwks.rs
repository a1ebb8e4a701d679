//! An issuer's signing keys: decoded once per `kid` into a [`KeySet`] held in an atomic snapshot,
//! refreshed in the background, refetched on an unknown `kid` at most once per interval (single-flight),
//! and kept through fetch failures for a bounded time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use aws_lc_rs::signature::ParsedPublicKey;
use serde::Deserialize;
use serde_json::Value;

use super::AuthError;
use crate::client::{FetchError, HttpClient, get_json};
use crate::config::{IssuerSettings, JwksSource, is_loopback_host};
use crate::jose::{Algorithm, KeyFamily, b64url_decode};
use crate::metrics::Metrics;

const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// Real issuers publish a handful of keys; parsing thousands would let a hostile JWKS burn CPU.
pub const MAX_KEYS: usize = 64;
/// The longest a request with an unknown kid waits for the refetch it triggers before being refused.
pub const ON_DEMAND_WAIT: Duration = Duration::from_secs(2);

/// One public key from a JWKS, pre-parsed for every algorithm it may verify.
pub struct VerifyingKey {
    pub kid: Option<String>,
    pub family: KeyFamily,
    /// SHA-256 of the public key: tells whether a later JWKS still holds this key, whatever its kid.
    pub fingerprint: [u8; 32],
    parsed: Vec<(Algorithm, ParsedPublicKey)>,
}

impl std::fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let algs: Vec<_> = self.parsed.iter().map(|(a, _)| a.name()).collect();
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("family", &self.family)
            .field("algs", &algs)
            .finish()
    }
}

impl VerifyingKey {
    /// The parsed key for `alg`, or why this key cannot verify it (wrong `kty`/curve, or a JWK `alg`
    /// pinning another algorithm).
    pub fn for_alg(&self, alg: Algorithm) -> Result<&ParsedPublicKey, AuthError> {
        self.parsed.iter().find(|(a, _)| *a == alg).map(|(_, key)| key).ok_or_else(|| AuthError::KeyMismatch {
            kid: super::printable(self.kid.as_deref().unwrap_or("")),
            family: self.family.to_string(),
            alg,
        })
    }
}

#[derive(Debug, Deserialize)]
struct RawJwk {
    kty: Option<String>,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
}

/// Why one JWK was left out of a key set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwkError {
    #[error("not a signature key (use={0})")]
    NotForSignatures(String),
    #[error("unsupported key type {0}")]
    UnsupportedType(String),
    #[error("alg {0} is not accepted")]
    AlgNotAccepted(String),
    #[error("missing or invalid parameter {0}")]
    BadParameter(&'static str),
    #[error("key rejected by the crypto library")]
    Rejected,
    #[error("the JWKS holds more than {MAX_KEYS} keys; the rest are ignored")]
    TooMany,
}

impl VerifyingKey {
    /// Decodes a JWK for the algorithms in `allowed`.
    pub fn from_jwk(jwk: &Value, allowed: &[Algorithm]) -> Result<VerifyingKey, JwkError> {
        let raw: RawJwk =
            serde_json::from_value(jwk.clone()).map_err(|_| JwkError::BadParameter("(not a JWK object)"))?;
        if let Some(use_) = &raw.use_
            && use_ != "sig"
        {
            return Err(JwkError::NotForSignatures(use_.clone()));
        }
        let pinned = match &raw.alg {
            Some(name) => Some(Algorithm::from_name(name).ok_or_else(|| JwkError::AlgNotAccepted(name.clone()))?),
            None => None,
        };
        let part = |v: &Option<String>, name: &'static str| {
            v.as_deref().and_then(b64url_decode).filter(|b| !b.is_empty()).ok_or(JwkError::BadParameter(name))
        };
        let (family, bytes) = match (raw.kty.as_deref(), raw.crv.as_deref()) {
            (Some("RSA"), _) => (KeyFamily::Rsa, rsa_public_key_der(&part(&raw.n, "n")?, &part(&raw.e, "e")?)),
            (Some("EC"), Some(crv @ ("P-256" | "P-384"))) => {
                let (family, size) = if crv == "P-256" { (KeyFamily::EcP256, 32) } else { (KeyFamily::EcP384, 48) };
                let (x, y) = (part(&raw.x, "x")?, part(&raw.y, "y")?);
                if x.len() != size || y.len() != size {
                    return Err(JwkError::BadParameter("x/y length"));
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (family, point)
            }
            (Some("OKP"), Some("Ed25519")) => {
                let x = part(&raw.x, "x")?;
                if x.len() != 32 {
                    return Err(JwkError::BadParameter("x length"));
                }
                (KeyFamily::Ed25519, x)
            }
            (Some(kty), crv) => {
                return Err(JwkError::UnsupportedType(format!(
                    "{kty}{}",
                    crv.map(|c| format!(" {c}")).unwrap_or_default()
                )));
            }
            (None, _) => return Err(JwkError::BadParameter("kty")),
        };
        let mut parsed = Vec::new();
        for alg in allowed.iter().copied().filter(|a| a.family() == family && pinned.is_none_or(|p| p == *a)) {
            parsed.push((alg, ParsedPublicKey::new(alg.verification(), &bytes).map_err(|_| JwkError::Rejected)?));
        }
        if parsed.is_empty() {
            return Err(JwkError::AlgNotAccepted(match pinned {
                Some(p) => p.name().to_string(),
                None => format!("any for {family}"),
            }));
        }
        let mut fingerprint = [0u8; 32];
        fingerprint.copy_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &bytes).as_ref());
        Ok(VerifyingKey { kid: raw.kid, family, fingerprint, parsed })
    }
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` (RFC 8017 A.1.1).
fn rsa_public_key_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, bytes: &[u8]) {
        let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len().saturating_sub(1));
        let bytes = &bytes[start..];
        let pad = bytes.first().is_some_and(|b| b & 0x80 != 0);
        out.push(0x02);
        length(out, bytes.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(bytes);
    }
    fn length(out: &mut Vec<u8>, len: usize) {
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let be = len.to_be_bytes();
            let skip = be.iter().position(|&b| b != 0).unwrap_or(be.len() - 1);
            out.push(0x80 | (be.len() - skip) as u8);
            out.extend_from_slice(&be[skip..]);
        }
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(0x30);
    length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// The keys of one issuer at one point in time.
#[derive(Debug)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyingKey>>,
    all: Vec<Arc<VerifyingKey>>,
    /// When these keys were last confirmed by a successful fetch.
    pub fetched_at: Instant,
    /// Keys left out and why, for the logs.
    pub skipped: Vec<(Option<String>, JwkError)>,
}

impl KeySet {
    /// Builds a key set from a JWKS document; unusable keys are skipped, an empty result is an error.
    pub fn from_jwks(doc: &Value, allowed: &[Algorithm]) -> Result<KeySet, JwksError> {
        let keys = doc.get("keys").and_then(Value::as_array).ok_or(JwksError::NotAJwks)?;
        let mut set =
            KeySet { by_kid: HashMap::new(), all: Vec::new(), fetched_at: Instant::now(), skipped: Vec::new() };
        for (index, jwk) in keys.iter().enumerate() {
            if index >= MAX_KEYS {
                set.skipped.push((None, JwkError::TooMany));
                break;
            }
            match VerifyingKey::from_jwk(jwk, allowed) {
                Ok(key) => {
                    let key = Arc::new(key);
                    if let Some(kid) = &key.kid {
                        set.by_kid.insert(kid.clone(), key.clone());
                    }
                    set.all.push(key);
                }
                Err(err) => set.skipped.push((jwk.get("kid").and_then(Value::as_str).map(String::from), err)),
            }
        }
        if set.all.is_empty() {
            return Err(JwksError::NoUsableKeys(set.skipped.len()));
        }
        Ok(set)
    }

    /// The key for a token's `kid`. A token without `kid` is accepted only when exactly one key fits its
    /// algorithm, so a missing `kid` never means "try them all".
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Lookup<'_> {
        match kid {
            Some(kid) => self.by_kid.get(kid).map_or(Lookup::Unknown, Lookup::Found),
            None => {
                let mut fitting = self.all.iter().filter(|k| k.for_alg(alg).is_ok());
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Lookup::Found(key),
                    (None, _) => Lookup::Unknown,
                    (Some(_), Some(_)) => Lookup::Ambiguous,
                }
            }
        }
    }

    pub fn len(&self) -> usize {
        self.all.len()
    }

    /// Whether two sets hold the same keys (in any order).
    pub fn same_keys(&self, other: &KeySet) -> bool {
        self.all.len() == other.all.len() && self.all.iter().all(|key| other.holds(&key.fingerprint))
    }

    /// Whether this set still holds the key with this fingerprint.
    pub fn holds(&self, fingerprint: &[u8; 32]) -> bool {
        self.all.iter().any(|key| key.fingerprint == *fingerprint)
    }

    pub fn is_empty(&self) -> bool {
        self.all.is_empty()
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.all.iter().filter_map(|k| k.kid.as_deref())
    }
}

#[derive(Debug)]
pub enum Lookup<'a> {
    Found(&'a Arc<VerifyingKey>),
    Unknown,
    Ambiguous,
}

/// `scheme://host[:port]` of a URL, lowercased, with the scheme's default port left out.
fn origin_of(url: &str) -> Option<String> {
    origin_of_uri(&url.parse::<http::Uri>().ok()?)
}

pub(crate) fn origin_of_uri(uri: &http::Uri) -> Option<String> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let host = uri.host()?.to_ascii_lowercase();
    let default_port = if scheme == "https" { 443 } else { 80 };
    Some(match uri.port_u16() {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Why keys could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("discovery {url}: {source}")]
    Discovery { url: String, source: FetchError },
    #[error("discovery document issuer {found:?} differs from the configured issuer {expected:?}")]
    IssuerMismatch { found: String, expected: String },
    #[error("discovery document has no jwks_uri")]
    NoJwksUri,
    #[error("jwks_uri {0:?} must be https (loopback or insecure = true excepted)")]
    InsecureJwksUri(String),
    /// A discovered `jwks_uri` on another origin than the issuer: hfgate fetches keys only from hosts the
    /// operator named, so a tampered or mistaken discovery document cannot point it anywhere else.
    #[error(
        "discovery document's jwks_uri {found:?} is not on the issuer's origin {expected:?}; set jwks_uri in the issuer's configuration to trust it"
    )]
    ForeignJwksUri { found: String, expected: String },
    #[error("jwks {url}: {source}")]
    Fetch { url: String, source: FetchError },
    #[error("document is not a JWKS (no \"keys\" array)")]
    NotAJwks,
    #[error("JWKS has no usable signing keys ({0} skipped)")]
    NoUsableKeys(usize),
}

/// The live key state of one configured issuer.
pub struct IssuerKeys {
    pub settings: Arc<IssuerSettings>,
    current: ArcSwapOption<KeySet>,
    /// When the last on-demand refetch started; held while it runs, so refetches are single-flight.
    on_demand: Arc<tokio::sync::Mutex<Option<Instant>>>,
    client: HttpClient,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for IssuerKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerKeys").field("issuer", &self.settings.name).field("loaded", &self.is_loaded()).finish()
    }
}

impl IssuerKeys {
    pub fn new(settings: Arc<IssuerSettings>, client: HttpClient, metrics: Arc<Metrics>) -> IssuerKeys {
        IssuerKeys {
            settings,
            current: ArcSwapOption::empty(),
            on_demand: Arc::new(tokio::sync::Mutex::new(None)),
            client,
            metrics,
        }
    }

    /// Whether keys have ever been loaded (readiness).
    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    pub fn snapshot(&self) -> Option<Arc<KeySet>> {
        self.current.load_full()
    }

    /// Fetches discovery (when configured) and the JWKS, and swaps the new keys in.
    pub async fn refresh(&self) -> Result<Arc<KeySet>, JwksError> {
        let result = self.fetch().await;
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.jwks_fetch(&self.settings.name, outcome);
        let set = Arc::new(result?);
        // Logged when something happened: the first load, or a change of keys (whichever path fetched).
        let previous = self.current.swap(Some(set.clone()));
        if previous.is_none_or(|old| !old.same_keys(&set)) {
            for (kid, why) in &set.skipped {
                tracing::warn!(issuer = %self.settings.name, kid = kid.as_deref().unwrap_or("-"), %why, "skipped a JWKS key");
            }
            tracing::info!(issuer = %self.settings.name, keys = set.len(), "JWKS loaded");
        }
        Ok(set)
    }

    async fn fetch(&self) -> Result<KeySet, JwksError> {
        let jwks_uri = match &self.settings.jwks {
            JwksSource::Uri(uri) => uri.clone(),
            JwksSource::Discovery(url) => self.discover(url).await?,
        };
        let doc = get_json(&self.client, &jwks_uri, FETCH_TIMEOUT, MAX_DOCUMENT_BYTES)
            .await
            .map_err(|source| JwksError::Fetch { url: jwks_uri.clone(), source })?;
        KeySet::from_jwks(&doc, &self.settings.algorithms)
    }

    async fn discover(&self, url: &str) -> Result<String, JwksError> {
        let doc = get_json(&self.client, url, FETCH_TIMEOUT, MAX_DOCUMENT_BYTES)
            .await
            .map_err(|source| JwksError::Discovery { url: url.to_string(), source })?;
        // OpenID Connect Discovery §4.3: the issuer in the document must be exactly the one configured.
        let found = doc.get("issuer").and_then(Value::as_str).unwrap_or_default();
        if found != self.settings.issuer {
            return Err(JwksError::IssuerMismatch { found: found.to_string(), expected: self.settings.issuer.clone() });
        }
        let jwks_uri = doc.get("jwks_uri").and_then(Value::as_str).ok_or(JwksError::NoJwksUri)?;
        let parsed = jwks_uri.parse::<http::Uri>().ok();
        let secure = match parsed.as_ref().map(|uri| (uri.scheme_str(), uri.host())) {
            Some((Some("https"), Some(_))) => true,
            Some((Some("http"), Some(host))) => self.settings.insecure || is_loopback_host(host),
            _ => false,
        };
        if !secure {
            return Err(JwksError::InsecureJwksUri(jwks_uri.to_string()));
        }
        let expected = origin_of(&self.settings.issuer);
        if parsed.as_ref().and_then(origin_of_uri) != expected {
            return Err(JwksError::ForeignJwksUri {
                found: jwks_uri.to_string(),
                expected: expected.unwrap_or_default(),
            });
        }
        Ok(jwks_uri.to_string())
    }

    /// The key that should verify a token with this `kid` and `alg`.
    pub async fn key_for(self: &Arc<Self>, kid: Option<&str>, alg: Algorithm) -> Result<Arc<VerifyingKey>, AuthError> {
        let issuer = &self.settings.name;
        if let Some(set) = self.usable_snapshot() {
            match set.find(kid, alg) {
                Lookup::Found(key) => return Ok(key.clone()),
                Lookup::Ambiguous => return Err(AuthError::KidRequired(issuer.clone())),
                Lookup::Unknown => {}
            }
        }
        // Unknown kid (the issuer may have rotated) or no usable keys yet: refetch, single-flight and
        // at most once per `jwks_refetch_min_interval`, then look again.
        self.refetch_on_demand().await;
        let Some(set) = self.usable_snapshot() else {
            return Err(AuthError::KeysUnavailable(issuer.clone()));
        };
        match set.find(kid, alg) {
            Lookup::Found(key) => Ok(key.clone()),
            Lookup::Ambiguous => Err(AuthError::KidRequired(issuer.clone())),
            Lookup::Unknown => Err(match kid {
                Some(kid) => AuthError::UnknownKid { kid: super::printable(kid), issuer: issuer.clone() },
                None => AuthError::KeyMismatch { kid: String::new(), family: "no key".into(), alg },
            }),
        }
    }

    /// Whether a token verified earlier with this key may still be served from the cache: the key is
    /// still published (a key the IdP withdrew revokes what it signed) and the keys are not stale.
    pub fn still_trusts(&self, fingerprint: &[u8; 32]) -> bool {
        // A guard, not a clone of the Arc: every cache hit passes here, from every worker.
        let current = self.current.load();
        current
            .as_ref()
            .is_some_and(|set| set.fetched_at.elapsed() <= self.settings.jwks_max_stale && set.holds(fingerprint))
    }

    /// The current keys unless they are older than `jwks_max_stale` (then hfgate fails closed).
    fn usable_snapshot(&self) -> Option<Arc<KeySet>> {
        self.current.load_full().filter(|set| set.fetched_at.elapsed() <= self.settings.jwks_max_stale)
    }

    /// Refetches the JWKS for an unknown kid, at most once per `jwks_refetch_min_interval`. The fetch runs
    /// in its own task, so it completes even when the request that started it stops waiting after
    /// [`ON_DEMAND_WAIT`]: an issuer that hangs costs a request seconds, not the fetch timeout.
    async fn refetch_on_demand(self: &Arc<Self>) {
        let this = self.clone();
        let wait = async move {
            let mut last = this.on_demand.clone().lock_owned().await;
            if last.is_some_and(|at| at.elapsed() < this.settings.jwks_refetch_min_interval) {
                return;
            }
            *last = Some(Instant::now());
            let fetch = tokio::spawn(async move {
                let _in_flight = last;
                if let Err(err) = this.refresh().await {
                    tracing::warn!(issuer = %this.settings.name, %err, "JWKS refetch failed");
                }
            });
            let _ = fetch.await;
        };
        let _ = tokio::time::timeout(ON_DEMAND_WAIT, wait).await;
    }

    /// Loads keys at start (retrying with backoff until the first success), then refreshes them every
    /// `jwks_refresh_interval`. Runs until the task is dropped.
    pub async fn run_refresh(self: Arc<Self>) {
        let mut failures: u32 = 0;
        loop {
            let wait = match self.refresh().await {
                Ok(set) => {
                    if failures > 0 {
                        tracing::info!(issuer = %self.settings.name, keys = set.len(), "JWKS fetch recovered");
                    }
                    failures = 0;
                    self.settings.jwks_refresh_interval
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    let stale = self.current.load().as_ref().map(|s| s.fetched_at.elapsed());
                    tracing::warn!(issuer = %self.settings.name, %err, keys_age_s = stale.map(|d| d.as_secs()), "JWKS fetch failed; keeping the last good keys");
                    let backoff = Duration::from_secs(1u64 << failures.min(5));
                    backoff.min(self.settings.jwks_refresh_interval)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::SigningKey;
    use serde_json::json;

    #[test]
    fn origins_compare_scheme_host_and_explicit_port() {
        assert_eq!(origin_of("https://IdP.example/realms/a").as_deref(), Some("https://idp.example"));
        assert_eq!(origin_of("https://idp.example:443/x"), origin_of("https://idp.example"));
        assert_ne!(origin_of("https://idp.example:8443/x"), origin_of("https://idp.example"));
        assert_ne!(origin_of("https://keys.example/x"), origin_of("https://idp.example"));
        assert_ne!(origin_of("http://idp.example/x"), origin_of("https://idp.example"));
        assert_eq!(origin_of("not a url"), None);
    }

    #[test]
    fn rsa_der_encodes_lengths_and_sign_bits() {
        let der = rsa_public_key_der(&[0x00, 0x80, 0x01], &[0x01, 0x00, 0x01]);
        assert_eq!(der, vec![0x30, 0x0a, 0x02, 0x03, 0x00, 0x80, 0x01, 0x02, 0x03, 0x01, 0x00, 0x01]);
    }

    #[test]
    fn keys_of_every_family_verify_their_own_signatures() {
        for alg in [Algorithm::RS256, Algorithm::PS256, Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA] {
            let signer = SigningKey::generate(alg).expect("key");
            let key = VerifyingKey::from_jwk(&signer.public_jwk(), &Algorithm::ALL).expect("jwk");
            let sig = signer.sign(b"message").expect("sign");
            key.for_alg(alg).expect("fits").verify_sig(b"message", &sig).expect("verifies");
            assert!(key.for_alg(alg).expect("fits").verify_sig(b"other", &sig).is_err());
        }
    }

    #[test]
    fn a_pinned_jwk_alg_refuses_other_algorithms() {
        let signer = SigningKey::generate(Algorithm::RS256).expect("key");
        let key = VerifyingKey::from_jwk(&signer.public_jwk(), &Algorithm::ALL).expect("jwk");
        assert!(key.for_alg(Algorithm::RS256).is_ok());
        assert!(matches!(key.for_alg(Algorithm::PS256), Err(AuthError::KeyMismatch { .. })));
        assert!(matches!(key.for_alg(Algorithm::ES256), Err(AuthError::KeyMismatch { .. })));
    }

    #[test]
    fn unusable_keys_are_skipped_with_a_reason() {
        let good = SigningKey::generate(Algorithm::ES256).expect("key").public_jwk();
        let doc = json!({"keys": [
            good,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "crv": "P-256", "kid": "short", "x": "AQ", "y": "AQ"}
        ]});
        let set = KeySet::from_jwks(&doc, &Algorithm::ALL).expect("set");
        assert_eq!(set.len(), 1);
        assert_eq!(set.skipped.len(), 3);
        assert!(KeySet::from_jwks(&json!({"keys": []}), &Algorithm::ALL).is_err());
        assert!(KeySet::from_jwks(&json!({"nokeys": 1}), &Algorithm::ALL).is_err());
    }

    #[test]
    fn a_huge_jwks_is_cut_at_max_keys() {
        let jwk = SigningKey::generate(Algorithm::ES256).expect("key").public_jwk();
        let keys: Vec<Value> = (0..10_000)
            .map(|i| {
                let mut k = jwk.clone();
                k["kid"] = json!(format!("k{i}"));
                k
            })
            .collect();
        let set = KeySet::from_jwks(&json!({ "keys": keys }), &Algorithm::ALL).expect("set");
        assert_eq!(set.len(), MAX_KEYS);
        assert!(matches!(set.skipped.last(), Some((None, JwkError::TooMany))));
    }

    #[test]
    fn tokens_without_kid_need_exactly_one_fitting_key() {
        let a = SigningKey::generate(Algorithm::ES256).expect("key").public_jwk();
        let b = SigningKey::generate(Algorithm::ES256).expect("key").public_jwk();
        let one = KeySet::from_jwks(&json!({"keys": [a.clone()]}), &Algorithm::ALL).expect("set");
        assert!(matches!(one.find(None, Algorithm::ES256), Lookup::Found(_)));
        let two = KeySet::from_jwks(&json!({"keys": [a, b]}), &Algorithm::ALL).expect("set");
        assert!(matches!(two.find(None, Algorithm::ES256), Lookup::Ambiguous));
        assert!(matches!(two.find(Some("nope"), Algorithm::ES256), Lookup::Unknown));
    }
}
