//! The OAuth 2.0 / OpenID Connect client side hfgate needs for sign-in: provider discovery, PKCE, and
//! form posts to the token and device authorization endpoints. The browser login (server side) and
//! `hfgate login` / `hfgate token` (command line) both use it; ID tokens are verified by [`crate::authn`].
//!
//! Written on hfgate's one HTTP client and aws-lc rather than the `oauth2` crate: the protocol pieces are
//! small, and that crate would bring a second digest and random stack plus `url` and its IDNA tables.

use std::time::Duration;

use axum::body::Body;
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::client::{FetchError, HttpClient, error_chain, get_json};
use crate::config::is_loopback_host;

const TIMEOUT: Duration = Duration::from_secs(10);
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

/// Why a call to the identity provider failed.
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("discovery {url}: {source}")]
    Discovery { url: String, source: FetchError },
    #[error("discovery document issuer {found:?} differs from {expected:?}")]
    IssuerMismatch { found: String, expected: String },
    #[error("the identity provider publishes no {0}")]
    MissingEndpoint(&'static str),
    #[error("{name} {url:?} must be https (loopback or insecure = true excepted)")]
    InsecureEndpoint { name: &'static str, url: String },
    #[error("{url}: {source}")]
    Request { url: String, source: FetchError },
    /// An RFC 6749 §5.2 error answer (`invalid_grant`, `authorization_pending`...).
    #[error("{}", match .description { Some(d) => format!("{error}: {d}"), None => .error.clone() })]
    Refused { error: String, description: Option<String> },
    #[error("{url}: unexpected answer: {detail}")]
    Unexpected { url: String, detail: String },
}

impl OAuthError {
    /// The RFC 6749 error code when the provider refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            OAuthError::Refused { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// The endpoints of an OpenID provider, from its discovery document.
#[derive(Debug, Clone, Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub authorization_endpoint: Option<String>,
    pub token_endpoint: Option<String>,
    pub end_session_endpoint: Option<String>,
    pub device_authorization_endpoint: Option<String>,
    pub revocation_endpoint: Option<String>,
    pub userinfo_endpoint: Option<String>,
    /// RFC 8414 / RFC 7662: where opaque access tokens are introspected.
    pub introspection_endpoint: Option<String>,
}

impl ProviderMetadata {
    /// Fetches `{issuer}/.well-known/openid-configuration`; the document must name exactly this issuer,
    /// and every endpoint must be https unless on loopback or `insecure`.
    pub async fn discover(client: &HttpClient, issuer: &str, insecure: bool) -> Result<ProviderMetadata, OAuthError> {
        if !is_secure_url(issuer, insecure) {
            return Err(OAuthError::InsecureEndpoint { name: "issuer", url: issuer.to_string() });
        }
        let url = format!("{}/.well-known/openid-configuration", issuer.trim_end_matches('/'));
        let doc = get_json(client, &url, TIMEOUT, MAX_RESPONSE_BYTES)
            .await
            .map_err(|source| OAuthError::Discovery { url: url.clone(), source })?;
        let metadata: ProviderMetadata = serde_json::from_value(doc)
            .map_err(|e| OAuthError::Unexpected { url: url.clone(), detail: e.to_string() })?;
        if metadata.issuer != issuer {
            return Err(OAuthError::IssuerMismatch { found: metadata.issuer, expected: issuer.to_string() });
        }
        for (name, endpoint) in [
            ("authorization_endpoint", &metadata.authorization_endpoint),
            ("token_endpoint", &metadata.token_endpoint),
            ("end_session_endpoint", &metadata.end_session_endpoint),
            ("device_authorization_endpoint", &metadata.device_authorization_endpoint),
            ("revocation_endpoint", &metadata.revocation_endpoint),
            ("userinfo_endpoint", &metadata.userinfo_endpoint),
        ] {
            if let Some(url) = endpoint
                && !is_secure_url(url, insecure)
            {
                return Err(OAuthError::InsecureEndpoint { name, url: url.clone() });
            }
        }
        Ok(metadata)
    }

    /// An endpoint the flow cannot do without.
    pub fn require<'a>(&self, name: &'static str, endpoint: &'a Option<String>) -> Result<&'a str, OAuthError> {
        endpoint.as_deref().ok_or(OAuthError::MissingEndpoint(name))
    }

    pub fn token_endpoint(&self) -> Result<&str, OAuthError> {
        self.require("token_endpoint", &self.token_endpoint)
    }
}

/// https, or http on loopback (or when the operator said `insecure = true`).
pub fn is_secure_url(url: &str, insecure: bool) -> bool {
    match url.parse::<http::Uri>().ok().as_ref().map(|uri| (uri.scheme_str(), uri.host())) {
        Some((Some("https"), Some(_))) => true,
        Some((Some("http"), Some(host))) => insecure || is_loopback_host(host),
        _ => false,
    }
}

/// A token endpoint answer (RFC 6749 §5.1, OpenID Connect Core §3.1.3.3).
#[derive(Clone, Deserialize)]
pub struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub token_type: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub scope: Option<String>,
    /// RFC 8693 §2.2.1: what a token exchange issued (`urn:ietf:params:oauth:token-type:access_token`...).
    #[serde(default)]
    pub issued_token_type: Option<String>,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens never reach a log line, not even through a debug print.
        f.debug_struct("TokenResponse")
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token.is_some())
            .field("id_token", &self.id_token.is_some())
            .finish_non_exhaustive()
    }
}

/// A device authorization answer (RFC 8628 §3.2).
#[derive(Clone, Deserialize)]
pub struct DeviceAuthorization {
    pub device_code: String,
    pub user_code: String,
    pub verification_uri: String,
    #[serde(default)]
    pub verification_uri_complete: Option<String>,
    pub expires_in: u64,
    #[serde(default)]
    pub interval: Option<u64>,
}

impl std::fmt::Debug for DeviceAuthorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The device code is a bearer secret until the grant completes.
        f.debug_struct("DeviceAuthorization")
            .field("user_code", &self.user_code)
            .field("verification_uri", &self.verification_uri)
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy)]
pub enum ClientAuth<'a> {
    /// A public client: `client_id` in the form (PKCE or device flow protects it).
    Public { client_id: &'a str },
    /// `client_secret_basic` (RFC 6749 §2.3.1).
    Basic { client_id: &'a str, client_secret: &'a str },
    /// `Basic base64(client_id:client_secret)` without form-encoding the two first, as Hugging Face
    /// documents it for its token exchange.
    BasicUnencoded { client_id: &'a str, client_secret: &'a str },
}

impl std::fmt::Debug for ClientAuth<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientAuth::Public { client_id } => f.debug_struct("Public").field("client_id", client_id).finish(),
            ClientAuth::Basic { client_id, .. } => f.debug_struct("Basic").field("client_id", client_id).finish(),
            ClientAuth::BasicUnencoded { client_id, .. } => {
                f.debug_struct("BasicUnencoded").field("client_id", client_id).finish()
            }
        }
    }
}

/// Posts a form to an OAuth endpoint and reads a JSON answer: `T` on 2xx, [`OAuthError::Refused`] for an
/// RFC 6749 error body.
pub async fn post_form<T: DeserializeOwned>(
    client: &HttpClient,
    url: &str,
    auth: ClientAuth<'_>,
    form: &[(&str, &str)],
) -> Result<T, OAuthError> {
    let mut fields: Vec<(&str, &str)> = form.to_vec();
    let mut request = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, concat!("hfgate/", env!("CARGO_PKG_VERSION")));
    match auth {
        ClientAuth::Public { client_id } => fields.push(("client_id", client_id)),
        ClientAuth::Basic { client_id, client_secret } => {
            request = request.header(http::header::AUTHORIZATION, basic_auth(client_id, client_secret));
        }
        ClientAuth::BasicUnencoded { client_id, client_secret } => {
            let credentials = STANDARD.encode(format!("{client_id}:{client_secret}"));
            request = request.header(http::header::AUTHORIZATION, format!("Basic {credentials}"));
        }
    }
    let body = serde_urlencoded::to_string(&fields)
        .map_err(|e| OAuthError::Unexpected { url: url.to_string(), detail: e.to_string() })?;
    let request = request
        .body(Body::from(body))
        .map_err(|e| OAuthError::Request { url: url.to_string(), source: FetchError::Request(e.to_string()) })?;
    let request_error = |source| OAuthError::Request { url: url.to_string(), source };
    let work = async {
        let response =
            client.request(request).await.map_err(|e| request_error(FetchError::Request(error_chain(&e))))?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_RESPONSE_BYTES)
            .collect()
            .await
            .map_err(|_| request_error(FetchError::TooLarge(MAX_RESPONSE_BYTES)))?
            .to_bytes();
        if status.is_success() {
            return serde_json::from_slice(&body)
                .map_err(|e| OAuthError::Unexpected { url: url.to_string(), detail: e.to_string() });
        }
        #[derive(Deserialize)]
        struct ErrorBody {
            error: String,
            error_description: Option<String>,
        }
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(e) => Err(OAuthError::Refused { error: e.error, description: e.error_description }),
            Err(_) => Err(request_error(FetchError::Status(status.as_u16()))),
        }
    };
    tokio::time::timeout(TIMEOUT, work).await.map_err(|_| request_error(FetchError::Timeout(TIMEOUT)))?
}

/// `Basic base64(urlencode(id):urlencode(secret))`, as RFC 6749 §2.3.1 asks.
fn basic_auth(client_id: &str, client_secret: &str) -> String {
    let encode = |text: &str| -> String { form_urlencoded_component(text) };
    format!("Basic {}", STANDARD.encode(format!("{}:{}", encode(client_id), encode(client_secret))))
}

/// One `application/x-www-form-urlencoded` component.
fn form_urlencoded_component(text: &str) -> String {
    // serde_urlencoded encodes `k=v`; the value part alone is what is needed.
    serde_urlencoded::to_string([("", text)]).map(|s| s[1..].to_string()).unwrap_or_default()
}

/// `n` random bytes, base64url without padding: states, nonces, PKCE verifiers, session ids.
pub fn random_urlsafe(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    // The system generator failing is not something to carry on from: a predictable state or session id
    // would be worse than a failed request.
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A PKCE pair (RFC 7636): the verifier kept by hfgate and its S256 challenge sent to the provider.
#[derive(Clone)]
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

impl std::fmt::Debug for Pkce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pkce").field("challenge", &self.challenge).finish_non_exhaustive()
    }
}

impl Pkce {
    pub fn new() -> Pkce {
        // 32 random bytes → a 43-character verifier, the minimum length RFC 7636 §4.1 allows.
        let verifier = random_urlsafe(32);
        let challenge = pkce_challenge(&verifier);
        Pkce { verifier, challenge }
    }
}

impl Default for Pkce {
    fn default() -> Pkce {
        Pkce::new()
    }
}

/// `BASE64URL(SHA256(verifier))`.
pub fn pkce_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()))
}

/// `url?k=v&...` with the parameters form-encoded (the URL may already carry a query).
pub fn with_query(url: &str, params: &[(&str, &str)]) -> String {
    let query = serde_urlencoded::to_string(params).unwrap_or_default();
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_matches_rfc7636_appendix_b() {
        assert_eq!(
            pkce_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
        let pair = Pkce::new();
        assert_eq!(pair.verifier.len(), 43);
        assert_eq!(pair.challenge, pkce_challenge(&pair.verifier));
    }

    #[test]
    fn basic_auth_form_encodes_before_base64() {
        // RFC 6749 §2.3.1: "a:b c" → "a%3Ab+c".
        let header = basic_auth("a:b c", "s&t");
        let decoded = STANDARD.decode(header.trim_start_matches("Basic ")).expect("base64");
        assert_eq!(String::from_utf8(decoded).expect("utf8"), "a%3Ab+c:s%26t");
    }

    #[test]
    fn queries_are_encoded_and_appended() {
        assert_eq!(with_query("https://idp/auth", &[("a", "x y"), ("b", "/&")]), "https://idp/auth?a=x+y&b=%2F%26");
        assert_eq!(with_query("https://idp/auth?p=1", &[("a", "1")]), "https://idp/auth?p=1&a=1");
    }

    #[test]
    fn endpoints_must_be_https_off_loopback() {
        assert!(is_secure_url("https://idp.example/token", false));
        assert!(is_secure_url("http://127.0.0.1:9/token", false));
        assert!(!is_secure_url("http://idp.example/token", false));
        assert!(is_secure_url("http://idp.example/token", true));
        assert!(!is_secure_url("ftp://idp.example/token", true));
    }
}
