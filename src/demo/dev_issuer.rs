//! A development OpenID Connect issuer: discovery, a JWKS, and a token endpoint that mints short-lived
//! tokens for a few demo users. Loopback only. Tests use it too, as an in-process issuer whose keys can
//! rotate and whose JWKS endpoint can fail on demand.
//!
//! For the clients registered with [`DevIssuer::register_client`] it also signs people in: the
//! authorization code flow with PKCE (a page where the person picks a demo user), refresh tokens, the
//! device authorization grant and an end-session endpoint (`dev_issuer/flows.rs`). There are no passwords: it
//! answers only on loopback, for development.

mod flows;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Form, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

use crate::jose::{Algorithm, KeyError, SigningKey, unix_now};

pub use flows::DevClient;

/// A demo user of the development issuer.
#[derive(Debug, Clone, Copy)]
pub struct DemoUser {
    pub name: &'static str,
    pub email: Option<&'static str>,
    pub groups: &'static [&'static str],
    /// A workload's token is a client-credentials token: `sub` = `client_id`.
    pub workload: bool,
}

pub const DEMO_USERS: [DemoUser; 3] = [
    DemoUser { name: "alice", email: Some("alice@demo.hfgate.dev"), groups: &["ml-research"], workload: false },
    DemoUser { name: "bob", email: Some("bob@demo.hfgate.dev"), groups: &["support"], workload: false },
    DemoUser { name: "ci-bot", email: None, groups: &["ci"], workload: true },
];

#[derive(Debug, thiserror::Error)]
pub enum DevIssuerError {
    #[error("the development issuer only listens on loopback, not {0}")]
    NotLoopback(SocketAddr),
    #[error("development issuer cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Key(#[from] KeyError),
}

struct IssuerState {
    issuer: String,
    audience: String,
    /// Signing keys, current first; all of them are published.
    keys: RwLock<Vec<Arc<SigningKey>>>,
    outage: AtomicBool,
    jwks_fetches: AtomicU64,
    token_lifetime: Duration,
    /// Registered clients and the grants in progress of the sign-in flows.
    grants: flows::Grants,
}

/// A running development issuer.
pub struct DevIssuer {
    addr: SocketAddr,
    state: Arc<IssuerState>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for DevIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevIssuer").field("issuer", &self.state.issuer).finish()
    }
}

impl Drop for DevIssuer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl DevIssuer {
    /// Starts the issuer on `addr` (loopback only) with one key of `alg`.
    pub async fn start(addr: SocketAddr, audience: &str, alg: Algorithm) -> Result<DevIssuer, DevIssuerError> {
        if !addr.ip().is_loopback() {
            return Err(DevIssuerError::NotLoopback(addr));
        }
        let listener =
            tokio::net::TcpListener::bind(addr).await.map_err(|source| DevIssuerError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(|source| DevIssuerError::Bind { addr, source })?;
        let state = Arc::new(IssuerState {
            issuer: format!("http://{addr}"),
            audience: audience.to_string(),
            keys: RwLock::new(vec![Arc::new(SigningKey::generate(alg)?)]),
            outage: AtomicBool::new(false),
            jwks_fetches: AtomicU64::new(0),
            token_lifetime: Duration::from_secs(3600),
            grants: flows::Grants::default(),
        });
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks.json", get(jwks))
            .route("/token", post(token))
            .merge(flows::routes())
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(DevIssuer { addr, state, task })
    }

    /// The issuer URL (`iss`), `http://127.0.0.1:PORT`.
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The key tokens are signed with.
    pub fn current_key(&self) -> Arc<SigningKey> {
        self.state.keys.read().map(|k| k[0].clone()).unwrap_or_else(|p| p.into_inner()[0].clone())
    }

    /// Signs `claims` as given, with the current key.
    pub fn mint(&self, claims: &Value) -> String {
        self.current_key().sign_jwt(&json!({"typ": "at+jwt"}), claims).unwrap_or_default()
    }

    /// Standard access-token claims for `subject`, valid for `lifetime` from now.
    pub fn claims(&self, subject: &str, groups: &[&str], lifetime: Duration) -> Value {
        let now = unix_now();
        json!({
            "iss": self.state.issuer,
            "aud": self.state.audience,
            "sub": subject,
            "groups": groups,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime.as_secs(),
            "jti": format!("{now}-{subject}"),
        })
    }

    /// A token for one of [`DEMO_USERS`].
    pub fn token_for_user(&self, name: &str) -> Option<String> {
        let user = DEMO_USERS.iter().find(|u| u.name == name)?;
        Some(self.mint(&user_claims(&self.state, user)))
    }

    /// Adds a new key that signs from now on; older keys stay published until [`DevIssuer::retire_old_keys`].
    pub fn rotate(&self, alg: Algorithm) -> Result<Arc<SigningKey>, KeyError> {
        let key = Arc::new(SigningKey::generate(alg)?);
        if let Ok(mut keys) = self.state.keys.write() {
            keys.insert(0, key.clone());
        }
        Ok(key)
    }

    /// Publishes only the current key.
    pub fn retire_old_keys(&self) {
        if let Ok(mut keys) = self.state.keys.write() {
            keys.truncate(1);
        }
    }

    /// While set, the JWKS endpoint answers 503.
    pub fn set_outage(&self, down: bool) {
        self.state.outage.store(down, Ordering::SeqCst);
    }

    /// How many times the JWKS was requested.
    pub fn jwks_fetches(&self) -> u64 {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Registers (or replaces) a client of the sign-in flows.
    pub fn register_client(&self, client: DevClient) {
        self.state.grants.register(client);
    }
}

fn user_claims(state: &IssuerState, user: &DemoUser) -> Value {
    let now = unix_now();
    let mut claims = json!({
        "iss": state.issuer,
        "aud": state.audience,
        "sub": user.name,
        "groups": user.groups,
        "iat": now,
        "exp": now + state.token_lifetime.as_secs(),
        "scope": "infer",
    });
    if let Some(email) = user.email {
        claims["email"] = json!(email);
    }
    if user.workload {
        claims["client_id"] = json!(user.name);
    } else {
        claims["client_id"] = json!("hfgate-demo-cli");
    }
    claims
}

async fn discovery(State(state): State<Arc<IssuerState>>) -> Json<Value> {
    let at = |path: &str| format!("{}{path}", state.issuer);
    Json(json!({
        "issuer": state.issuer,
        "jwks_uri": at("/jwks.json"),
        "token_endpoint": at("/token"),
        "authorization_endpoint": at(flows::AUTHORIZE_PATH),
        "device_authorization_endpoint": at(flows::DEVICE_AUTHORIZATION_PATH),
        "end_session_endpoint": at(flows::END_SESSION_PATH),
        "revocation_endpoint": at(flows::REVOKE_PATH),
        "grant_types_supported": [
            "authorization_code",
            "refresh_token",
            flows::DEVICE_CODE_GRANT,
            DEMO_USER_GRANT,
        ],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "authorization_response_iss_parameter_supported": true,
        "scopes_supported": ["openid", "email", "profile", "groups", "offline_access"],
        "claims_supported": [
            "iss", "sub", "aud", "exp", "iat", "auth_time", "nonce",
            "email", "email_verified", "groups", "preferred_username",
        ],
        "id_token_signing_alg_values_supported": ["ES256", "RS256", "EdDSA"],
        "subject_types_supported": ["public"],
    }))
}

async fn jwks(State(state): State<Arc<IssuerState>>) -> Response {
    state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if state.outage.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "outage").into_response();
    }
    let keys: Vec<Value> = match state.keys.read() {
        Ok(keys) => keys.iter().map(|k| k.public_jwk()).collect(),
        Err(_) => Vec::new(),
    };
    Json(json!({ "keys": keys })).into_response()
}

/// The grant of the original token endpoint: `user=<demo user>`, no client, no grant type needed.
const DEMO_USER_GRANT: &str = "urn:hfgate:demo-user";

/// The token endpoint's form, for every grant it knows.
#[derive(Debug, Default, Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    /// [`DEMO_USER_GRANT`].
    user: Option<String>,
    client_id: Option<String>,
    /// `authorization_code`.
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    /// `refresh_token`.
    refresh_token: Option<String>,
    /// The device grant.
    device_code: Option<String>,
}

async fn token(
    State(state): State<Arc<IssuerState>>,
    headers: http::HeaderMap,
    Form(mut request): Form<TokenRequest>,
) -> Response {
    match request.grant_type.take().as_deref() {
        None | Some(DEMO_USER_GRANT) => demo_user_token(&state, request.user.as_deref().unwrap_or_default()),
        Some(grant) => flows::token(&state, grant, &headers, request),
    }
}

fn demo_user_token(state: &IssuerState, name: &str) -> Response {
    let Some(user) = DEMO_USERS.iter().find(|u| u.name == name) else {
        let names: Vec<&str> = DEMO_USERS.iter().map(|u| u.name).collect();
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_request", "error_description": format!("unknown demo user; use one of {names:?}")}))).into_response();
    };
    let key = match state.keys.read() {
        Ok(keys) => keys[0].clone(),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    match key.sign_jwt(&json!({"typ": "at+jwt"}), &user_claims(state, user)) {
        Ok(token) => Json(json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": state.token_lifetime.as_secs(),
        }))
        .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}
