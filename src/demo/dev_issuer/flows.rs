//! Sign-in at the development issuer, for the clients registered with it: the authorization code flow
//! with PKCE S256 (a page where the person picks a demo user, then back to the client's registered
//! `redirect_uri` with `code`, `state` and `iss`), rotating refresh tokens, the device authorization grant
//! (RFC 8628; a page where the person approves the code as a demo user), token revocation and an
//! end-session endpoint. Plain HTML forms, no script, no passwords: development only, like the issuer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use axum::Router;
use axum::body::Body;
use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::json;

use super::{DEMO_USERS, DemoUser, IssuerState, TokenRequest, user_claims};
use crate::jose::unix_now;
use crate::login::pages::escape;
use crate::oauth::{pkce_challenge, random_urlsafe, with_query};

pub(super) const AUTHORIZE_PATH: &str = "/authorize";
pub(super) const DEVICE_AUTHORIZATION_PATH: &str = "/device/code";
pub(super) const DEVICE_PAGE_PATH: &str = "/device";
pub(super) const END_SESSION_PATH: &str = "/logout";
pub(super) const REVOKE_PATH: &str = "/revoke";
pub(super) const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

/// An authorization code is redeemed within this long (seconds), once.
const CODE_LIFETIME: u64 = 120;
/// A device code waits this long for the person (seconds).
const DEVICE_CODE_LIFETIME: u64 = 600;
/// How often `hfgate login` polls (seconds): the demo answers at once, so there is no reason to wait long.
const DEVICE_POLL_INTERVAL: u64 = 1;
/// A refresh token lasts this long unused (seconds); every use replaces it.
const REFRESH_LIFETIME: u64 = 24 * 3600;
/// Grants kept in each table at most (codes, device codes, refresh tokens): expired ones are dropped first.
const MAX_GRANTS: usize = 10_000;
/// The alphabet of user codes: consonants only (RFC 8628 §6.1), no look-alikes.
const USER_CODE_ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";

/// A client of the sign-in flows, registered with [`super::DevIssuer::register_client`]. Clients are
/// public: PKCE protects the code flow, and the device code the device flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevClient {
    pub client_id: String,
    /// Where the authorization code flow may return, compared exactly; none: no code flow.
    pub redirect_uris: Vec<String>,
    /// Where the end-session endpoint may send the browser afterwards, compared exactly.
    pub post_logout_redirect_uris: Vec<String>,
    /// Whether the client may use the device authorization grant.
    pub device_grant: bool,
}

impl DevClient {
    /// A hfgate server's web client: it returns to `{public_url}/.hfgate/callback` and signs out to
    /// `{public_url}/.hfgate/signed-out`.
    pub fn web(client_id: &str, public_url: &str) -> DevClient {
        let public_url = public_url.trim_end_matches('/');
        DevClient {
            client_id: client_id.to_string(),
            redirect_uris: vec![format!("{public_url}/.hfgate/callback")],
            post_logout_redirect_uris: vec![format!("{public_url}/.hfgate/signed-out")],
            device_grant: false,
        }
    }

    /// `hfgate login`'s client: the device grant only.
    pub fn cli(client_id: &str) -> DevClient {
        DevClient {
            client_id: client_id.to_string(),
            redirect_uris: Vec::new(),
            post_logout_redirect_uris: Vec::new(),
            device_grant: true,
        }
    }
}

/// An authorization code waiting to be redeemed.
#[derive(Debug)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    nonce: Option<String>,
    scope: String,
    user: &'static DemoUser,
    auth_time: u64,
    expires: u64,
}

/// What a refresh token stands for.
#[derive(Debug)]
struct RefreshGrant {
    client_id: String,
    scope: String,
    user: &'static DemoUser,
    auth_time: u64,
    expires: u64,
}

#[derive(Debug, Clone, Copy)]
enum DeviceStatus {
    Pending,
    Approved { user: &'static DemoUser, at: u64 },
    Denied,
}

/// A device authorization waiting for the person.
#[derive(Debug)]
struct DeviceGrant {
    client_id: String,
    user_code: String,
    scope: String,
    status: DeviceStatus,
    expires: u64,
}

/// The registered clients and the grants in progress. Everything lives in memory and is bounded.
#[derive(Debug, Default)]
pub(super) struct Grants {
    clients: RwLock<HashMap<String, DevClient>>,
    codes: Mutex<HashMap<String, CodeGrant>>,
    refresh_tokens: Mutex<HashMap<String, RefreshGrant>>,
    /// Keyed by device code.
    devices: Mutex<HashMap<String, DeviceGrant>>,
}

impl Grants {
    pub(super) fn register(&self, client: DevClient) {
        let mut clients = self.clients.write().unwrap_or_else(|p| p.into_inner());
        clients.insert(client.client_id.clone(), client);
    }

    fn client(&self, client_id: &str) -> Option<DevClient> {
        self.clients.read().unwrap_or_else(|p| p.into_inner()).get(client_id).cloned()
    }

    fn codes(&self) -> MutexGuard<'_, HashMap<String, CodeGrant>> {
        self.codes.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn refresh_tokens(&self) -> MutexGuard<'_, HashMap<String, RefreshGrant>> {
        self.refresh_tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn devices(&self) -> MutexGuard<'_, HashMap<String, DeviceGrant>> {
        self.devices.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Makes room in a table: expired grants go; a table still full refuses the new grant.
fn has_room<T>(table: &mut HashMap<String, T>, expires: impl Fn(&T) -> u64) -> bool {
    if table.len() >= MAX_GRANTS {
        let now = unix_now();
        table.retain(|_, grant| expires(grant) > now);
    }
    table.len() < MAX_GRANTS
}

/// The people among the demo users (not the workload): who may sign in on a page.
fn person(name: &str) -> Option<&'static DemoUser> {
    DEMO_USERS.iter().find(|u| u.name == name && !u.workload)
}

fn people() -> impl Iterator<Item = &'static DemoUser> {
    DEMO_USERS.iter().filter(|u| !u.workload)
}

pub(super) fn routes() -> Router<Arc<IssuerState>> {
    Router::new()
        .route(AUTHORIZE_PATH, get(authorize_page).post(authorize_decision))
        .route(DEVICE_AUTHORIZATION_PATH, post(device_authorization))
        .route(DEVICE_PAGE_PATH, get(device_page).post(device_decision))
        .route(END_SESSION_PATH, get(end_session))
        .route(REVOKE_PATH, post(revoke))
}

// --- pages ---------------------------------------------------------------------------------------

/// A small page: no script, nothing framed, nothing cached. No `form-action` in the policy: a sign-in
/// form's answer redirects to the client, on another origin.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title} - hfgate demo issuer</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\n<body>\n{body}\
         <p><small>hfgate demo issuer: development only, no passwords, loopback only.</small></p>\n</body></html>\n",
        title = escape(title),
    );
    let mut response = crate::login::pages::html_response(status, html, &[]);
    // Its forms answer with a redirect to the client, on another origin: no `form-action 'self'` here.
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    response
}

fn error_page(status: StatusCode, message: &str) -> Response {
    page(status, "Error", &format!("<h1>Cannot sign in</h1>\n<p id=\"error\">{}</p>\n", escape(message)))
}

fn hidden(name: &str, value: &str) -> String {
    format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">\n", escape(name), escape(value))
}

/// One submit button per demo person (`name="user"`), and one that refuses (`name="deny"`).
fn user_buttons(deny_label: &str) -> String {
    let mut html = String::from("<ul>\n");
    for user in people() {
        html.push_str(&format!(
            "<li><button type=\"submit\" name=\"user\" value=\"{name}\" id=\"user-{name}\">{name}</button> \
             {email} (groups: {groups})</li>\n",
            name = escape(user.name),
            email = escape(user.email.unwrap_or_default()),
            groups = escape(&user.groups.join(", ")),
        ));
    }
    html.push_str(&format!(
        "</ul>\n<p><button type=\"submit\" name=\"deny\" value=\"1\" id=\"deny\">{}</button></p>\n",
        escape(deny_label)
    ));
    html
}

fn redirect(location: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::FOUND;
    if let Ok(value) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

// --- the authorization code flow ------------------------------------------------------------------

/// The parameters of an authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3, OpenID Connect Core
/// §3.1.2.1); the decision form carries them again, with the person's choice.
#[derive(Debug, Default, Deserialize)]
struct AuthorizeParams {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    /// The decision form: the demo user chosen, or `deny`.
    user: Option<String>,
    deny: Option<String>,
}

/// A request that is fit to be answered.
#[derive(Debug, Clone)]
struct Authorization {
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    nonce: Option<String>,
    challenge: String,
}

/// Why a request cannot be answered: before the redirect URI is known good the person is told (never
/// redirected to an unregistered URI); after, the client is.
#[derive(Debug)]
enum AuthorizeError {
    Page(String),
    Redirect { authorization: Box<Authorization>, error: &'static str, description: String },
}

fn check_authorization(state: &IssuerState, params: &AuthorizeParams) -> Result<Authorization, AuthorizeError> {
    let client_id = params.client_id.as_deref().unwrap_or_default();
    let Some(client) = state.grants.client(client_id).filter(|c| !c.redirect_uris.is_empty()) else {
        return Err(AuthorizeError::Page(format!(
            "unknown client_id {client_id:?}: this issuer knows only the clients hfgate demo registered"
        )));
    };
    let redirect_uri = params.redirect_uri.as_deref().unwrap_or_default();
    if !client.redirect_uris.iter().any(|r| r == redirect_uri) {
        return Err(AuthorizeError::Page(format!(
            "redirect_uri {redirect_uri:?} is not registered for {client_id}; registered: {}",
            client.redirect_uris.join(", ")
        )));
    }
    let authorization = Authorization {
        client_id: client.client_id,
        redirect_uri: redirect_uri.to_string(),
        scope: params.scope.clone().unwrap_or_default(),
        state: params.state.clone(),
        nonce: params.nonce.clone(),
        challenge: params.code_challenge.clone().unwrap_or_default(),
    };
    let refuse = |error, description: &str| {
        Err(AuthorizeError::Redirect {
            authorization: Box::new(authorization.clone()),
            error,
            description: description.to_string(),
        })
    };
    if params.response_type.as_deref() != Some("code") {
        return refuse("unsupported_response_type", "only response_type=code is supported");
    }
    // RFC 7636 §4.2: S256 of a 43-128 character verifier is 43 base64url characters.
    let challenge_ok = authorization.challenge.len() == 43
        && authorization.challenge.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if params.code_challenge_method.as_deref() != Some("S256") || !challenge_ok {
        return refuse("invalid_request", "PKCE is required: code_challenge with code_challenge_method=S256");
    }
    Ok(authorization)
}

/// Back to the client with `params`, the request's `state` and the issuer (RFC 9207).
fn back_to_client(state: &IssuerState, authorization: &Authorization, params: &[(&str, &str)]) -> Response {
    let mut query: Vec<(&str, &str)> = params.to_vec();
    if let Some(s) = &authorization.state {
        query.push(("state", s));
    }
    query.push(("iss", &state.issuer));
    redirect(&with_query(&authorization.redirect_uri, &query))
}

fn authorize_failed(state: &IssuerState, error: AuthorizeError) -> Response {
    match error {
        AuthorizeError::Page(message) => error_page(StatusCode::BAD_REQUEST, &message),
        AuthorizeError::Redirect { authorization, error, description } => {
            back_to_client(state, &authorization, &[("error", error), ("error_description", &description)])
        }
    }
}

/// `GET /authorize`: "Sign in to the hfgate demo as: alice / bob".
async fn authorize_page(State(state): State<Arc<IssuerState>>, Query(params): Query<AuthorizeParams>) -> Response {
    let authorization = match check_authorization(&state, &params) {
        Ok(a) => a,
        Err(error) => return authorize_failed(&state, error),
    };
    let mut form = format!("<form method=\"post\" action=\"{AUTHORIZE_PATH}\" id=\"sign-in\">\n");
    for (name, value) in [
        ("response_type", Some("code")),
        ("client_id", Some(authorization.client_id.as_str())),
        ("redirect_uri", Some(authorization.redirect_uri.as_str())),
        ("scope", Some(authorization.scope.as_str())),
        ("state", authorization.state.as_deref()),
        ("nonce", authorization.nonce.as_deref()),
        ("code_challenge", Some(authorization.challenge.as_str())),
        ("code_challenge_method", Some("S256")),
    ] {
        if let Some(value) = value {
            form.push_str(&hidden(name, value));
        }
    }
    form.push_str(&user_buttons("Cancel"));
    form.push_str("</form>\n");
    let body = format!(
        "<h1>Sign in to the hfgate demo as:</h1>\n<p>{client} asks who you are; pick a demo user.</p>\n{form}",
        client = escape(&authorization.client_id),
    );
    page(StatusCode::OK, "Sign in", &body)
}

/// `POST /authorize`: the person chose; back to the client with a one-time code (or `access_denied`).
async fn authorize_decision(State(state): State<Arc<IssuerState>>, Form(params): Form<AuthorizeParams>) -> Response {
    let authorization = match check_authorization(&state, &params) {
        Ok(a) => a,
        Err(error) => return authorize_failed(&state, error),
    };
    if params.deny.is_some() {
        return back_to_client(
            &state,
            &authorization,
            &[("error", "access_denied"), ("error_description", "the person cancelled the sign-in")],
        );
    }
    let Some(user) = params.user.as_deref().and_then(person) else {
        return error_page(StatusCode::BAD_REQUEST, "choose one of the demo users");
    };
    let now = unix_now();
    let code = random_urlsafe(32);
    {
        let mut codes = state.grants.codes();
        if !has_room(&mut codes, |g| g.expires) {
            return back_to_client(
                &state,
                &authorization,
                &[("error", "temporarily_unavailable"), ("error_description", "too many sign-ins in progress")],
            );
        }
        codes.insert(
            code.clone(),
            CodeGrant {
                client_id: authorization.client_id.clone(),
                redirect_uri: authorization.redirect_uri.clone(),
                challenge: authorization.challenge.clone(),
                nonce: authorization.nonce.clone(),
                scope: authorization.scope.clone(),
                user,
                auth_time: now,
                expires: now + CODE_LIFETIME,
            },
        );
    }
    back_to_client(&state, &authorization, &[("code", &code)])
}

// --- the token endpoint ---------------------------------------------------------------------------

/// An RFC 6749 §5.2 error answer.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (status, axum::Json(json!({"error": error, "error_description": description}))).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn invalid_grant(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

/// The client: `client_id` in the form (public clients), else the user name of HTTP Basic.
fn client_of(headers: &HeaderMap, form: Option<&str>) -> Option<String> {
    if let Some(id) = form.filter(|id| !id.is_empty()) {
        return Some(id.to_string());
    }
    let basic = headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(basic.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, _secret) = text.split_once(':')?;
    // RFC 6749 §2.3.1: the id is form-encoded before it is joined.
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(&format!("id={id}")).ok()?;
    pairs.into_iter().next().map(|(_, id)| id).filter(|id| !id.is_empty())
}

/// Grants other than the original `user=` one.
pub(super) fn token(state: &IssuerState, grant: &str, headers: &HeaderMap, request: TokenRequest) -> Response {
    let Some(client_id) = client_of(headers, request.client_id.as_deref()) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "client_id is required");
    };
    let Some(client) = state.grants.client(&client_id) else {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client", "unknown client");
    };
    match grant {
        "authorization_code" => authorization_code(state, &client, request),
        "refresh_token" => refresh(state, &client, request),
        DEVICE_CODE_GRANT => device_token(state, &client, request),
        _ => oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "use authorization_code, refresh_token or the device grant",
        ),
    }
}

fn authorization_code(state: &IssuerState, client: &DevClient, request: TokenRequest) -> Response {
    let code = request.code.unwrap_or_default();
    // Removed whatever follows: a code is good for one attempt (RFC 6749 §4.1.2).
    let Some(grant) = state.grants.codes().remove(&code) else {
        return invalid_grant("unknown, expired or already used code");
    };
    if grant.expires < unix_now() {
        return invalid_grant("the code expired");
    }
    if grant.client_id != client.client_id {
        return invalid_grant("the code was issued to another client");
    }
    if request.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
        return invalid_grant("redirect_uri differs from the authorization request's");
    }
    let verifier = request.code_verifier.unwrap_or_default();
    let verifier_ok = (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
    if !verifier_ok || !constant_time_eq(pkce_challenge(&verifier).as_bytes(), grant.challenge.as_bytes()) {
        return invalid_grant("code_verifier does not match the code_challenge (PKCE S256)");
    }
    issue(state, &client.client_id, grant.user, &grant.scope, grant.nonce.as_deref(), grant.auth_time)
}

fn refresh(state: &IssuerState, client: &DevClient, request: TokenRequest) -> Response {
    let token = request.refresh_token.unwrap_or_default();
    let grant = {
        let mut tokens = state.grants.refresh_tokens();
        match tokens.get(&token) {
            None => return invalid_grant("unknown, expired or already used refresh token"),
            Some(grant) if grant.client_id != client.client_id => {
                return invalid_grant("the refresh token was issued to another client");
            }
            // Rotation: the token is spent now; the answer carries its successor.
            Some(_) => tokens.remove(&token),
        }
    };
    let Some(grant) = grant.filter(|g| g.expires >= unix_now()) else {
        return invalid_grant("the refresh token expired");
    };
    // OpenID Connect Core §12.2: a refreshed ID token carries no nonce, and the original auth_time.
    issue(state, &client.client_id, grant.user, &grant.scope, None, grant.auth_time)
}

fn device_token(state: &IssuerState, client: &DevClient, request: TokenRequest) -> Response {
    let device_code = request.device_code.unwrap_or_default();
    let mut devices = state.grants.devices();
    let Some(grant) = devices.get(&device_code) else {
        return invalid_grant("unknown device_code");
    };
    if grant.client_id != client.client_id {
        return invalid_grant("the device_code was issued to another client");
    }
    if grant.expires < unix_now() {
        devices.remove(&device_code);
        return oauth_error(StatusCode::BAD_REQUEST, "expired_token", "the code expired; start again");
    }
    match grant.status {
        DeviceStatus::Pending => oauth_error(
            StatusCode::BAD_REQUEST,
            "authorization_pending",
            "waiting for the person to approve the code at the demo issuer",
        ),
        DeviceStatus::Denied => {
            devices.remove(&device_code);
            oauth_error(StatusCode::BAD_REQUEST, "access_denied", "the person denied the sign-in")
        }
        DeviceStatus::Approved { user, at } => {
            let scope = grant.scope.clone();
            devices.remove(&device_code);
            drop(devices);
            issue(state, &client.client_id, user, &scope, None, at)
        }
    }
}

/// A token answer: an access token for the issuer's audience (the user's sub, email and groups), an ID
/// token for the client when `openid` was asked for, and a new refresh token.
fn issue(
    state: &IssuerState,
    client_id: &str,
    user: &'static DemoUser,
    scope: &str,
    nonce: Option<&str>,
    auth_time: u64,
) -> Response {
    let key = match state.keys.read() {
        Ok(keys) => keys[0].clone(),
        Err(_) => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    };
    let now = unix_now();
    let lifetime = state.token_lifetime.as_secs();
    let mut access = user_claims(state, user);
    access["client_id"] = json!(client_id);
    access["jti"] = json!(random_urlsafe(12));
    let Ok(access_token) = key.sign_jwt(&json!({"typ": "at+jwt"}), &access) else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let mut answer = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": lifetime,
        "scope": scope,
    });
    if scope.split(' ').any(|s| s == "openid") {
        let mut id = json!({
            "iss": state.issuer,
            "sub": user.name,
            "aud": client_id,
            "azp": client_id,
            "iat": now,
            "exp": now + lifetime,
            "auth_time": auth_time,
            "preferred_username": user.name,
            "groups": user.groups,
        });
        if let Some(email) = user.email {
            id["email"] = json!(email);
            id["email_verified"] = json!(true);
        }
        if let Some(nonce) = nonce {
            id["nonce"] = json!(nonce);
        }
        let Ok(id_token) = key.sign_jwt(&json!({"typ": "JWT"}), &id) else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        answer["id_token"] = json!(id_token);
    }
    let refresh_token = random_urlsafe(32);
    {
        let mut tokens = state.grants.refresh_tokens();
        if has_room(&mut tokens, |g| g.expires) {
            tokens.insert(
                refresh_token.clone(),
                RefreshGrant {
                    client_id: client_id.to_string(),
                    scope: scope.to_string(),
                    user,
                    auth_time,
                    expires: now + REFRESH_LIFETIME,
                },
            );
            answer["refresh_token"] = json!(refresh_token);
        }
    }
    let mut response = axum::Json(answer).into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

// --- the device grant -----------------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct DeviceAuthorizationRequest {
    client_id: Option<String>,
    scope: Option<String>,
}

/// `POST /device/code` (RFC 8628 §3.1–3.2).
async fn device_authorization(
    State(state): State<Arc<IssuerState>>,
    headers: HeaderMap,
    Form(request): Form<DeviceAuthorizationRequest>,
) -> Response {
    let client = client_of(&headers, request.client_id.as_deref()).and_then(|id| state.grants.client(&id));
    let Some(client) = client.filter(|c| c.device_grant) else {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "unknown client, or not one for the device grant",
        );
    };
    let device_code = random_urlsafe(32);
    let user_code = new_user_code();
    {
        let mut devices = state.grants.devices();
        if !has_room(&mut devices, |g| g.expires) {
            return oauth_error(StatusCode::SERVICE_UNAVAILABLE, "slow_down", "too many sign-ins in progress");
        }
        devices.insert(
            device_code.clone(),
            DeviceGrant {
                client_id: client.client_id,
                user_code: user_code.clone(),
                scope: request.scope.unwrap_or_default(),
                status: DeviceStatus::Pending,
                expires: unix_now() + DEVICE_CODE_LIFETIME,
            },
        );
    }
    let verification_uri = format!("{}{DEVICE_PAGE_PATH}", state.issuer);
    let mut response = axum::Json(json!({
        "device_code": device_code,
        "user_code": user_code,
        "verification_uri": verification_uri,
        "verification_uri_complete": with_query(&verification_uri, &[("user_code", &user_code)]),
        "expires_in": DEVICE_CODE_LIFETIME,
        "interval": DEVICE_POLL_INTERVAL,
    }))
    .into_response();
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// `XXXX-XXXX` from [`USER_CODE_ALPHABET`] (about 34 bits).
fn new_user_code() -> String {
    let mut bytes = [0u8; 8];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator failed");
    let letters: String =
        bytes.iter().map(|b| char::from(USER_CODE_ALPHABET[usize::from(*b) % USER_CODE_ALPHABET.len()])).collect();
    format!("{}-{}", &letters[..4], &letters[4..])
}

/// A user code as typed: case, spaces and dashes do not matter.
fn normalize_user_code(code: &str) -> String {
    code.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_uppercase()).collect()
}

/// The device code of a pending grant with this user code.
fn pending_device(devices: &HashMap<String, DeviceGrant>, user_code: &str) -> Option<String> {
    let wanted = normalize_user_code(user_code);
    let now = unix_now();
    devices
        .iter()
        .find(|(_, g)| {
            !wanted.is_empty()
                && normalize_user_code(&g.user_code) == wanted
                && g.expires >= now
                && matches!(g.status, DeviceStatus::Pending)
        })
        .map(|(code, _)| code.clone())
}

#[derive(Debug, Default, Deserialize)]
struct DeviceDecision {
    user_code: Option<String>,
    user: Option<String>,
    deny: Option<String>,
}

fn code_entry_form(value: &str) -> String {
    format!(
        "<form method=\"get\" action=\"{DEVICE_PAGE_PATH}\" id=\"enter-code\">\n\
         <label>Code shown by <code>hfgate login</code>: \
         <input type=\"text\" name=\"user_code\" value=\"{}\" autocomplete=\"off\"></label>\n\
         <button type=\"submit\" id=\"continue\">Continue</button>\n</form>\n",
        escape(value)
    )
}

/// `GET /device[?user_code=...]`: the code to approve, and who to approve it as.
async fn device_page(State(state): State<Arc<IssuerState>>, Query(query): Query<DeviceDecision>) -> Response {
    let Some(user_code) = query.user_code.filter(|c| !c.trim().is_empty()) else {
        return page(
            StatusCode::OK,
            "Device sign-in",
            &format!("<h1>Sign in on a device</h1>\n{}", code_entry_form("")),
        );
    };
    let found = {
        let devices = state.grants.devices();
        pending_device(&devices, &user_code)
            .and_then(|device_code| devices.get(&device_code).map(|g| (g.client_id.clone(), g.user_code.clone())))
    };
    let Some((client_id, user_code)) = found else {
        return page(
            StatusCode::NOT_FOUND,
            "Device sign-in",
            &format!(
                "<h1>Sign in on a device</h1>\n<p id=\"error\">No sign-in is waiting for the code {}: it is mistyped, \
                 expired or already used. Run <code>hfgate login</code> again for a new one.</p>\n{}",
                escape(&user_code),
                code_entry_form(&user_code)
            ),
        );
    };
    let body = format!(
        "<h1>Sign in to the hfgate demo as:</h1>\n<p>{client} (<code>hfgate login</code>) shows the code \
         <strong id=\"user-code\">{code}</strong>. Approve it only if your terminal shows the same.</p>\n\
         <form method=\"post\" action=\"{DEVICE_PAGE_PATH}\" id=\"approve\">\n{hidden}{buttons}</form>\n",
        client = escape(&client_id),
        code = escape(&user_code),
        hidden = hidden("user_code", &user_code),
        buttons = user_buttons("Deny"),
    );
    page(StatusCode::OK, "Device sign-in", &body)
}

/// `POST /device`: approve the code as a demo user, or deny it.
async fn device_decision(State(state): State<Arc<IssuerState>>, Form(form): Form<DeviceDecision>) -> Response {
    let user_code = form.user_code.unwrap_or_default();
    let user = form.user.as_deref().and_then(person);
    if form.deny.is_none() && user.is_none() {
        return error_page(StatusCode::BAD_REQUEST, "choose one of the demo users, or deny");
    }
    let decided = {
        let mut devices = state.grants.devices();
        match pending_device(&devices, &user_code).and_then(|code| devices.get_mut(&code)) {
            Some(grant) => {
                grant.status = match user {
                    Some(user) if form.deny.is_none() => DeviceStatus::Approved { user, at: unix_now() },
                    _ => DeviceStatus::Denied,
                };
                true
            }
            None => false,
        }
    };
    if !decided {
        return error_page(
            StatusCode::NOT_FOUND,
            "no sign-in is waiting for this code: it expired or was already used; run hfgate login again",
        );
    }
    match user {
        Some(user) if form.deny.is_none() => page(
            StatusCode::OK,
            "Signed in",
            &format!(
                "<h1 id=\"approved\">Signed in as {}</h1>\n<p>Go back to the terminal: <code>hfgate login</code> \
                 finishes on its own.</p>\n",
                escape(user.name)
            ),
        ),
        _ => page(StatusCode::OK, "Denied", "<h1 id=\"denied\">Sign-in denied</h1>\n"),
    }
}

// --- sign-out and revocation ----------------------------------------------------------------------

#[derive(Debug, Default, Deserialize)]
struct EndSessionQuery {
    client_id: Option<String>,
    post_logout_redirect_uri: Option<String>,
    state: Option<String>,
}

/// `GET /logout` (OpenID Connect RP-Initiated Logout): the issuer keeps no session of its own, so this
/// only sends the browser on to a registered `post_logout_redirect_uri`.
async fn end_session(State(state): State<Arc<IssuerState>>, Query(query): Query<EndSessionQuery>) -> Response {
    let Some(target) = query.post_logout_redirect_uri.filter(|u| !u.is_empty()) else {
        return page(StatusCode::OK, "Signed out", "<h1 id=\"signed-out\">Signed out of the hfgate demo issuer</h1>\n");
    };
    let registered = {
        let clients = state.grants.clients.read().unwrap_or_else(|p| p.into_inner());
        clients
            .values()
            .filter(|c| query.client_id.as_deref().is_none_or(|id| id == c.client_id))
            .any(|c| c.post_logout_redirect_uris.contains(&target))
    };
    if !registered {
        return error_page(
            StatusCode::BAD_REQUEST,
            &format!("post_logout_redirect_uri {target:?} is not registered for this client"),
        );
    }
    match &query.state {
        Some(s) => redirect(&with_query(&target, &[("state", s)])),
        None => redirect(&target),
    }
}

#[derive(Debug, Default, Deserialize)]
struct RevokeRequest {
    token: Option<String>,
    client_id: Option<String>,
}

/// `POST /revoke` (RFC 7009): forgets a refresh token of the calling client; 200 whatever the token.
async fn revoke(
    State(state): State<Arc<IssuerState>>,
    headers: HeaderMap,
    Form(request): Form<RevokeRequest>,
) -> Response {
    let client = client_of(&headers, request.client_id.as_deref());
    let token = request.token.unwrap_or_default();
    let mut tokens = state.grants.refresh_tokens();
    if tokens.get(&token).is_some_and(|g| Some(&g.client_id) == client.as_ref()) {
        tokens.remove(&token);
    }
    StatusCode::OK.into_response()
}

#[cfg(test)]
mod tests;
