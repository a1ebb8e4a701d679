//! Browser sign-in, end to end: hfgate in front of a small in-process OpenID provider (authorization
//! code + PKCE, rotating refresh tokens, scriptable claims and failures) and a recording upstream.
//! The test client plays the browser: it keeps the cookies by hand and follows each redirect itself,
//! mapping `https://gate.example` (hfgate's public URL) onto the real listener.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Form, Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use common::{Gate, Probe, Reply, route_table};
use hfgate::authn::session::Session;
use hfgate::jose::{Algorithm, SigningKey, unix_now};
use hfgate::login::{SessionAuth, SignIn};
use http::{HeaderMap, Request, StatusCode, header};
use serde_json::{Value, json};

const PUBLIC_URL: &str = "https://gate.example";
const REDIRECT_URI: &str = "https://gate.example/.hfgate/callback";
const CLIENT_ID: &str = "web";
const CLIENT_SECRET: &str = "web-secret";
const SESSION: &str = "__Host-hfgate";
const LOGIN: &str = "__Host-hfgate-login";
const HTML: &str = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8";
const JSON: &str = "application/json";
/// `session_lifetime` and `session_idle_timeout` of the test config.
const LIFETIME: u64 = 3600;
const IDLE: u64 = 600;
const KEY: [u8; 32] = [0x42; 32];

// --- the OpenID provider ------------------------------------------------------------------------------

/// The person the provider signs in, as its ID tokens describe them.
#[derive(Debug, Clone)]
struct User {
    sub: String,
    email: Option<String>,
    groups: Vec<String>,
}

/// What the provider does next; tests change it between steps.
#[derive(Debug, Clone)]
struct Script {
    user: User,
    /// Seconds from issue to `exp` of every ID token.
    id_token_lifetime: u64,
    /// A fixed `exp` instead (an IdP capping tokens at the end of its own session).
    fixed_exp: Option<u64>,
    /// A `nonce` other than the one of the authorization request.
    nonce: Option<String>,
    /// An `aud` other than the web client.
    aud: Option<String>,
    /// `/authorize` answers with this `error` instead of a code.
    authorize_error: Option<String>,
    /// Every refresh_token grant is refused.
    refuse_refresh: bool,
    /// How long a refresh_token grant takes.
    refresh_delay: Duration,
    /// Every refresh_token grant fails with a 500 (the provider is down, not refusing).
    refresh_broken: bool,
}

/// An authorization code, bound to what the authorization request carried.
#[derive(Debug, Clone)]
struct Code {
    nonce: String,
    challenge: String,
    redirect_uri: String,
    user: User,
}

/// What the provider saw.
#[derive(Debug, Default, Clone)]
struct Observed {
    /// Every authorization request's query.
    authorize: Vec<BTreeMap<String, String>>,
    /// authorization_code grants (every attempt) and the `code_verifier` each carried.
    code_grants: usize,
    verifiers: Vec<String>,
    /// refresh_token grants: every attempt, the refresh token each presented, and those that succeeded.
    refresh_grants: usize,
    refresh_presented: Vec<String>,
    refresh_succeeded: usize,
    /// Refresh tokens issued, in order (the code grant's first).
    refresh_issued: Vec<String>,
    /// Every token endpoint refusal (`error: description`).
    refusals: Vec<String>,
}

struct ProviderState {
    issuer: String,
    key: SigningKey,
    script: Mutex<Script>,
    seen: Mutex<Observed>,
    codes: Mutex<BTreeMap<String, Code>>,
    /// Live refresh tokens and whom they belong to; a used one is removed (rotation).
    refresh_tokens: Mutex<BTreeMap<String, String>>,
}

/// An OpenID provider on 127.0.0.1 that signs in its scripted user without asking.
struct Provider {
    state: Arc<ProviderState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Provider {
    async fn start() -> Provider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind provider");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(ProviderState {
            issuer: format!("http://{addr}"),
            key: SigningKey::generate(Algorithm::ES256).expect("key"),
            script: Mutex::new(Script {
                user: User {
                    sub: "alice".into(),
                    email: Some("alice@example.com".into()),
                    groups: vec!["ml".into(), "ops".into()],
                },
                id_token_lifetime: 600,
                fixed_exp: None,
                nonce: None,
                aud: None,
                authorize_error: None,
                refuse_refresh: false,
                refresh_delay: Duration::ZERO,
                refresh_broken: false,
            }),
            seen: Mutex::new(Observed::default()),
            codes: Mutex::new(BTreeMap::new()),
            refresh_tokens: Mutex::new(BTreeMap::new()),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/logout", get(|| async { "signed out at the provider" }))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Provider { state, task }
    }

    fn issuer(&self) -> &str {
        &self.state.issuer
    }

    fn script(&self, change: impl FnOnce(&mut Script)) {
        change(&mut self.state.script.lock().expect("lock"));
    }

    fn seen(&self) -> Observed {
        self.state.seen.lock().expect("lock").clone()
    }

    /// An access token for hfgate's bearer path (audience `hfgate`).
    fn access_token(&self, sub: &str) -> String {
        let now = unix_now();
        let claims = json!({"iss": self.issuer(), "aud": "hfgate", "sub": sub, "iat": now, "exp": now + 600});
        self.state.key.sign_jwt(&json!({"typ": "at+jwt"}), &claims).expect("sign")
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (status, axum::Json(json!({"error": error, "error_description": description}))).into_response()
}

fn found(location: &str) -> Response {
    (StatusCode::FOUND, [(header::LOCATION, location.to_string())]).into_response()
}

fn with_query(url: &str, params: &[(&str, &str)]) -> String {
    format!("{url}?{}", serde_urlencoded::to_string(params).expect("query"))
}

fn random(tag: &str) -> String {
    format!("{tag}-{}", hfgate::oauth::random_urlsafe(12))
}

async fn discovery(State(p): State<Arc<ProviderState>>) -> Response {
    let iss = &p.issuer;
    axum::Json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "end_session_endpoint": format!("{iss}/logout"),
        "jwks_uri": format!("{iss}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
    }))
    .into_response()
}

async fn jwks(State(p): State<Arc<ProviderState>>) -> Response {
    axum::Json(json!({"keys": [p.key.public_jwk()]})).into_response()
}

async fn authorize(State(p): State<Arc<ProviderState>>, Query(query): Query<BTreeMap<String, String>>) -> Response {
    p.seen.lock().expect("lock").authorize.push(query.clone());
    let param = |name: &str| query.get(name).map(String::as_str).unwrap_or_default();
    let bad = [
        (param("client_id") != CLIENT_ID, "unknown client_id"),
        (param("redirect_uri") != REDIRECT_URI, "redirect_uri is not registered"),
        (param("response_type") != "code", "response_type must be code"),
        (!param("scope").split(' ').any(|s| s == "openid"), "scope lacks openid"),
        (param("code_challenge_method") != "S256", "PKCE S256 required"),
        (param("code_challenge").is_empty(), "no code_challenge"),
        (param("state").is_empty(), "no state"),
        (param("nonce").is_empty(), "no nonce"),
    ];
    if let Some((_, why)) = bad.iter().find(|(failed, _)| *failed) {
        return (StatusCode::BAD_REQUEST, *why).into_response();
    }
    let script = p.script.lock().expect("lock").clone();
    if let Some(error) = &script.authorize_error {
        let params = [
            ("error", error.as_str()),
            ("error_description", "the user said no"),
            ("state", param("state")),
            ("iss", p.issuer.as_str()),
        ];
        return found(&with_query(REDIRECT_URI, &params));
    }
    let code = random("code");
    p.codes.lock().expect("lock").insert(
        code.clone(),
        Code {
            nonce: param("nonce").to_string(),
            challenge: param("code_challenge").to_string(),
            redirect_uri: param("redirect_uri").to_string(),
            user: script.user.clone(),
        },
    );
    found(&with_query(REDIRECT_URI, &[("code", &code), ("state", param("state")), ("iss", &p.issuer)]))
}

fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes()))
}

/// Tokens for `user`: an ID token as scripted, an access token and a fresh refresh token.
fn tokens(p: &ProviderState, user: &User, nonce: Option<&str>) -> Response {
    let script = p.script.lock().expect("lock").clone();
    let now = unix_now();
    let mut claims = json!({
        "iss": p.issuer,
        "sub": user.sub,
        "aud": script.aud.as_deref().unwrap_or(CLIENT_ID),
        "azp": CLIENT_ID,
        "iat": now,
        "exp": script.fixed_exp.unwrap_or(now + script.id_token_lifetime),
        "groups": user.groups,
    });
    if let Some(email) = &user.email {
        claims["email"] = json!(email);
    }
    if let Some(nonce) = script.nonce.as_deref().or(nonce) {
        claims["nonce"] = json!(nonce);
    }
    let id_token = p.key.sign_jwt(&json!({"typ": "JWT"}), &claims).expect("sign");
    let refresh = random("refresh");
    p.refresh_tokens.lock().expect("lock").insert(refresh.clone(), user.sub.clone());
    p.seen.lock().expect("lock").refresh_issued.push(refresh.clone());
    axum::Json(json!({
        "access_token": random("access"),
        "token_type": "Bearer",
        "expires_in": script.id_token_lifetime,
        "id_token": id_token,
        "refresh_token": refresh,
        "scope": "openid email groups offline_access",
    }))
    .into_response()
}

async fn token(
    State(p): State<Arc<ProviderState>>,
    headers: HeaderMap,
    Form(form): Form<BTreeMap<String, String>>,
) -> Response {
    let refused = |status: StatusCode, error: &str, description: &str| {
        p.seen.lock().expect("lock").refusals.push(format!("{error}: {description}"));
        oauth_error(status, error, description)
    };
    // client_secret_basic (RFC 6749 §2.3.1).
    let expected = format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return refused(StatusCode::UNAUTHORIZED, "invalid_client", "client_secret_basic for web required");
    }
    let field = |name: &str| form.get(name).map(String::as_str).unwrap_or_default();
    match field("grant_type") {
        "authorization_code" => {
            {
                let mut seen = p.seen.lock().expect("lock");
                seen.code_grants += 1;
                seen.verifiers.push(field("code_verifier").to_string());
            }
            // One-time: a code is gone once presented, whether or not the rest checks out.
            let Some(code) = p.codes.lock().expect("lock").remove(field("code")) else {
                return refused(StatusCode::BAD_REQUEST, "invalid_grant", "unknown or used code");
            };
            if field("redirect_uri") != code.redirect_uri {
                return refused(StatusCode::BAD_REQUEST, "invalid_grant", "redirect_uri differs");
            }
            if s256(field("code_verifier")) != code.challenge {
                return refused(StatusCode::BAD_REQUEST, "invalid_grant", "PKCE verification failed");
            }
            tokens(&p, &code.user, Some(&code.nonce))
        }
        "refresh_token" => {
            let (delay, refuse, broken, user) = {
                let script = p.script.lock().expect("lock");
                (script.refresh_delay, script.refuse_refresh, script.refresh_broken, script.user.clone())
            };
            {
                let mut seen = p.seen.lock().expect("lock");
                seen.refresh_grants += 1;
                seen.refresh_presented.push(field("refresh_token").to_string());
            }
            tokio::time::sleep(delay).await;
            if broken {
                return (StatusCode::INTERNAL_SERVER_ERROR, "upstream database down").into_response();
            }
            if refuse {
                return refused(StatusCode::BAD_REQUEST, "invalid_grant", "the session at the provider ended");
            }
            // Rotation: the presented token is used up; a second use is refused.
            match p.refresh_tokens.lock().expect("lock").remove(field("refresh_token")) {
                Some(sub) if sub == user.sub => {}
                _ => return refused(StatusCode::BAD_REQUEST, "invalid_grant", "unknown or reused refresh token"),
            }
            p.seen.lock().expect("lock").refresh_succeeded += 1;
            tokens(&p, &user, None)
        }
        other => refused(StatusCode::BAD_REQUEST, "unsupported_grant_type", other),
    }
}

// --- hfgate in front of it ----------------------------------------------------------------------------

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// The `[login]` table (issuer `corp`, web client `web`) with these cookie keys.
fn login_table(keys: &[[u8; 32]]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("\"{}\"", b64(k))).collect();
    format!(
        r#"
[login]
issuer = "corp"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scopes = ["openid", "email", "groups", "offline_access"]
cookie_keys = [{keys}]
session_lifetime = "{LIFETIME}s"
session_idle_timeout = "{IDLE}s"
cli_client_id = "hfgate-cli"
cli_scopes = ["openid", "groups", "offline_access"]
cli_parameters = {{ resource = "urn:hfgate", audience = "https://models.example" }}
cli_token = "id_token"
"#,
        keys = keys.join(", ")
    )
}

/// hfgate's config: `/app/` sends browsers to sign in, `/api/` does not; both forward to `upstream`.
fn gate_config(issuer: &str, upstream: SocketAddr, dir: &Path, login: &str) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
public_url = "{PUBLIC_URL}"
shutdown_grace = "5s"

[audit]
path = "{audit}"

[[issuer]]
name = "corp"
issuer = "{issuer}"
audiences = ["hfgate"]
jwks_refetch_min_interval = "1s"
{login}
{app}
{api}
"#,
        audit = dir.join("audit.jsonl").display(),
        app = route_table("app", "/app/", upstream, "login = \"redirect\""),
        api = route_table("api", "/api/", upstream, ""),
    )
}

/// A `SignIn` of its own, sealing and opening with `keys` only (another server, an older config).
fn sign_in_with_keys(issuer: &str, keys: &[[u8; 32]]) -> SignIn {
    let text = format!(
        "[server]\npublic_url = \"{PUBLIC_URL}\"\n[[issuer]]\nname = \"corp\"\nissuer = \"{issuer}\"\n\
         audiences = [\"hfgate\"]\n{}",
        login_table(keys)
    );
    let settings = hfgate::config::parse(Path::new("keys.toml"), &text).expect("valid config");
    SignIn::new(&settings, hfgate::client::build(Duration::from_secs(5))).expect("sign-in configured")
}

struct Harness {
    idp: Provider,
    probe: Probe,
    gate: Gate,
}

impl Harness {
    async fn start() -> Harness {
        Harness::start_with_keys(&[KEY]).await
    }

    async fn start_with_keys(keys: &[[u8; 32]]) -> Harness {
        Harness::start_with_issuer(keys, "").await
    }

    /// `issuer_extra` goes into the sign-in issuer's table (a `require`, say).
    async fn start_with_issuer(keys: &[[u8; 32]], issuer_extra: &str) -> Harness {
        let idp = Provider::start().await;
        let probe = Probe::start().await;
        let dir = common::temp_dir("login");
        let text = gate_config(idp.issuer(), probe.addr(), &dir, &login_table(keys)).replacen(
            "jwks_refetch_min_interval = \"1s\"",
            &format!("jwks_refetch_min_interval = \"1s\"\n{issuer_extra}"),
            1,
        );
        let gate = Gate::start(dir, &text).await;
        assert!(gate.becomes_ready(Duration::from_secs(10)).await, "the provider's keys did not load");
        Harness { idp, probe, gate }
    }

    fn signin(&self) -> &SignIn {
        self.gate.server.gateway.signin.as_ref().expect("sign-in configured")
    }

    /// A `https://gate.example/...` location (or a bare path) as a URL on the real listener.
    fn local(&self, location: &str) -> String {
        let path = location.strip_prefix(PUBLIC_URL).unwrap_or(location);
        assert!(path.starts_with('/'), "not a location on {PUBLIC_URL}: {location}");
        self.gate.url(path)
    }

    async fn send(&self, method: &str, location: &str, accept: &str, cookie: Option<&str>) -> Reply {
        let url = if location.starts_with("http://127.0.0.1") { location.to_string() } else { self.local(location) };
        let mut builder = Request::builder().method(method).uri(url).header(header::ACCEPT, accept);
        if let Some(cookie) = cookie {
            builder = builder.header(header::COOKIE, cookie);
        }
        common::send(&self.gate.client, builder.body(Body::empty()).expect("request")).await
    }

    async fn get(&self, location: &str, accept: &str, cookie: Option<&str>) -> Reply {
        self.send("GET", location, accept, cookie).await
    }

    /// `/.hfgate/login?rd=...`, up to the provider's door.
    async fn begin(&self, rd: &str) -> Begun {
        let reply = self.get(&format!("/.hfgate/login?{}", query(&[("rd", rd)])), HTML, None).await;
        assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.text());
        let location = reply.header("location").to_string();
        let authorize = format!("{}/authorize?", self.idp.issuer());
        assert!(location.starts_with(&authorize), "not sent to the provider: {location}");
        let login_cookie = set_cookie(&reply, LOGIN).unwrap_or_else(|| panic!("no login cookie: {:?}", reply.headers));
        Begun { location, login_cookie: value_of(&login_cookie).to_string() }
    }

    /// The provider approves: the callback URL it sends the browser to.
    async fn approve(&self, begun: &Begun) -> String {
        let reply = self.get(&begun.location, HTML, None).await;
        assert_eq!(reply.status, StatusCode::FOUND, "the provider refused: {}", reply.text());
        let location = reply.header("location").to_string();
        assert!(location.starts_with(&format!("{REDIRECT_URI}?")), "{location}");
        location
    }

    /// The browser arrives at the callback with its login cookie.
    async fn callback(&self, begun: &Begun, callback: &str) -> Reply {
        self.get(callback, HTML, Some(&format!("{LOGIN}={}", begun.login_cookie))).await
    }

    /// A whole sign-in returning to `rd`: the session cookie's value.
    async fn sign_in(&self, rd: &str) -> String {
        let begun = self.begin(rd).await;
        let callback = self.approve(&begun).await;
        let done = self.callback(&begun, &callback).await;
        assert_eq!(done.status, StatusCode::FOUND, "{}", done.text());
        let session = set_cookie(&done, SESSION).unwrap_or_else(|| panic!("no session cookie: {:?}", done.headers));
        value_of(&session).to_string()
    }

    /// The first audit line that `matches`, waiting for it a little.
    async fn audit_line(&self, matches: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.gate.audit();
            if let Some(line) = lines.iter().find(|l| matches(l)) {
                return line.clone();
            }
            assert!(Instant::now() < deadline, "no such audit line among {lines:#?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A sign-in on its way to the provider.
#[derive(Debug)]
struct Begun {
    /// The authorization request.
    location: String,
    login_cookie: String,
}

fn query(params: &[(&str, &str)]) -> String {
    serde_urlencoded::to_string(params).expect("query")
}

fn params_of(url: &str) -> BTreeMap<String, String> {
    let query = url.split_once('?').map(|(_, q)| q).unwrap_or_default();
    serde_urlencoded::from_str(query).expect("form-encoded query")
}

/// The `Set-Cookie` of `name`, if the reply sets it.
fn set_cookie(reply: &Reply, name: &str) -> Option<String> {
    let prefix = format!("{name}=");
    reply
        .headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&prefix))
        .map(str::to_string)
}

fn value_of(set_cookie: &str) -> &str {
    set_cookie.split(';').next().and_then(|pair| pair.split_once('=')).map_or("", |(_, v)| v)
}

fn cleared(name: &str) -> String {
    format!("{name}=; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=0")
}

fn session_cookie(value: &str) -> String {
    format!("{SESSION}={value}")
}

/// The session cookie must be cleared on `reply`.
fn assert_session_cleared(reply: &Reply) {
    assert_eq!(set_cookie(reply, SESSION).as_deref(), Some(cleared(SESSION).as_str()), "{:?}", reply.headers);
}

fn session(subject: &str, started: u64, seen: u64, claims_expire: u64) -> Session {
    Session {
        id: format!("test-{subject}-{started}-{seen}"),
        subject: subject.into(),
        email: Some(format!("{subject}@example.com")),
        groups: vec!["ml".into()],
        started,
        seen,
        claims_expire,
        refresh_token: None,
    }
}

// --- 1. the browser flow ------------------------------------------------------------------------------

/// A browser without a session is sent to sign in, comes back to where it was with a session cookie,
/// and is then forwarded as the signed-in user; API clients and non-GET requests get 401 instead.
#[tokio::test]
async fn a_browser_signs_in_and_is_forwarded_as_the_user() {
    let h = Harness::start().await;
    let target = "/app/echo?x=1&y=two%20words";

    // The protected page sends the browser to sign in, remembering where it was.
    let first = h.get(target, HTML, Some("theme=dark")).await;
    assert_eq!(first.status, StatusCode::FOUND, "{}", first.text());
    let to_login = first.header("location").to_string();
    assert!(to_login.starts_with(&format!("{PUBLIC_URL}/.hfgate/login?")), "{to_login}");
    assert_eq!(params_of(&to_login).get("rd").map(String::as_str), Some(target));
    assert!(h.probe.log().requests.is_empty(), "nothing is forwarded before signing in");

    // hfgate's login endpoint sends it to the provider with a fresh state, nonce and PKCE challenge.
    let reply = h.get(&to_login, HTML, Some("theme=dark")).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.text());
    assert_eq!(reply.header("cache-control"), "no-store");
    let authorize = reply.header("location").to_string();
    assert!(authorize.starts_with(&format!("{}/authorize?", h.idp.issuer())), "{authorize}");
    let params = params_of(&authorize);
    assert_eq!(params["response_type"], "code");
    assert_eq!(params["client_id"], CLIENT_ID);
    assert_eq!(params["redirect_uri"], REDIRECT_URI);
    assert!(params["scope"].split(' ').any(|s| s == "openid"), "{}", params["scope"]);
    assert_eq!(params["code_challenge_method"], "S256");
    for name in ["state", "nonce", "code_challenge"] {
        assert!(params.get(name).is_some_and(|v| v.len() >= 16), "{name} missing or short: {params:?}");
    }
    let set_login = set_cookie(&reply, LOGIN).unwrap_or_else(|| panic!("no login cookie: {:?}", reply.headers));
    assert!(set_login.ends_with("; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=600"), "{set_login}");
    let login_cookie = value_of(&set_login).to_string();
    assert!(!login_cookie.is_empty());

    // The provider approves and sends the browser back with a code, the state and its name.
    let approved = h.get(&authorize, HTML, None).await;
    assert_eq!(approved.status, StatusCode::FOUND, "{}", approved.text());
    let callback = approved.header("location").to_string();
    let answer = params_of(&callback);
    assert_eq!(answer["state"], params["state"]);
    assert_eq!(answer["iss"], h.idp.issuer());

    // The callback redeems the code (with the verifier behind the challenge) and starts the session.
    let done = h.get(&callback, HTML, Some(&format!("theme=dark; {LOGIN}={login_cookie}"))).await;
    assert_eq!(done.status, StatusCode::FOUND, "{}", done.text());
    assert_eq!(done.header("location"), format!("{PUBLIC_URL}{target}"));
    let set_session = set_cookie(&done, SESSION).unwrap_or_else(|| panic!("no session cookie: {:?}", done.headers));
    let session_value = value_of(&set_session).to_string();
    assert!(session_value.len() > 20, "{set_session}");
    assert_eq!(
        set_session,
        format!("{SESSION}={session_value}; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age={LIFETIME}")
    );
    assert_eq!(set_cookie(&done, LOGIN).as_deref(), Some(cleared(LOGIN).as_str()));
    let seen = h.idp.seen();
    assert_eq!(seen.code_grants, 1);
    assert_eq!(seen.refusals, Vec::<String>::new());
    assert_eq!(s256(&seen.verifiers[0]), params["code_challenge"], "the challenge is S256 of the verifier");

    // Back at the page: forwarded as alice, with the browser's own cookies but none of hfgate's.
    let cookies = format!("theme=dark; {SESSION}={session_value}; lang=en; {LOGIN}=leftover");
    let page = h.get(target, HTML, Some(&cookies)).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let log = h.probe.log();
    assert_eq!(log.requests.len(), 1);
    let upstream = &log.requests[0];
    assert_eq!(upstream.target, "/echo?x=1&y=two%20words");
    assert_eq!(upstream.header_values("x-forwarded-user"), ["alice"]);
    assert_eq!(upstream.header_values("x-forwarded-email"), ["alice@example.com"]);
    assert_eq!(upstream.header_values("x-forwarded-groups"), ["ml,ops"]);
    assert_eq!(upstream.header_values("cookie"), ["theme=dark; lang=en"]);
    assert!(!upstream.headers.iter().any(|(_, v)| v.contains(&session_value)), "the session went upstream");

    let line = h.audit_line(|l| l["path"] == "/app/echo" && l["status"] == 200).await;
    assert_eq!(line["identity"]["subject"], "alice");
    assert_eq!(line["identity"]["issuer"], h.idp.issuer());
    assert_eq!(line["route"], "app");

    // Who am I, as JSON and as a page.
    let who = h.get("/.hfgate/whoami", JSON, Some(&session_cookie(&session_value))).await;
    assert_eq!(who.status, StatusCode::OK, "{}", who.text());
    let who = who.json();
    assert_eq!(who["subject"], "alice");
    assert_eq!(who["email"], "alice@example.com");
    assert_eq!(who["groups"], json!(["ml", "ops"]));
    assert_eq!(who["issuer"], h.idp.issuer());
    assert_eq!(who["kind"], "user");
    let routes: Vec<&str> =
        who["routes"].as_array().expect("routes").iter().filter_map(|r| r["route"].as_str()).collect();
    assert_eq!(routes, ["app", "api"]);
    let page = h.get("/.hfgate/whoami", HTML, Some(&session_cookie(&session_value))).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    assert!(page.header("content-type").starts_with("text/html"), "{:?}", page.headers);
    let html = page.text();
    for needle in [
        "<dd>alice</dd>",
        "<dd>alice@example.com</dd>",
        "<li class=\"group\">ml</li>",
        "<li class=\"group\">ops</li>",
        "hfgate login --server https://gate.example",
        "export HF_TOKEN=$(hfgate token)",
    ] {
        assert!(html.contains(needle), "{needle:?} not in\n{html}");
    }

    // An API client on the same route is refused, not redirected; so is a browser's POST.
    let api = h.get(target, JSON, None).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED, "{}", api.text());
    assert!(api.header("www-authenticate").starts_with("Bearer realm=\"hfgate\""), "{:?}", api.headers);
    assert_eq!(api.header("location"), "");
    let post = h.send("POST", target, HTML, None).await;
    assert_eq!(post.status, StatusCode::UNAUTHORIZED, "{}", post.text());
    assert_eq!(post.header("location"), "");
    assert!(post.header("www-authenticate").starts_with("Bearer "), "{:?}", post.headers);
    assert_eq!(h.probe.log().requests.len(), 1, "only the signed-in request reached the upstream");

    // Who am I without a session: a browser is sent to sign in (and back), anyone else gets 401.
    let anonymous = h.get("/.hfgate/whoami", HTML, None).await;
    assert_eq!(anonymous.status, StatusCode::FOUND, "{}", anonymous.text());
    assert_eq!(params_of(anonymous.header("location")).get("rd").map(String::as_str), Some("/.hfgate/whoami"));
    let anonymous = h.get("/.hfgate/whoami", JSON, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED, "{}", anonymous.text());
    assert!(anonymous.header("www-authenticate").starts_with("Bearer "), "{:?}", anonymous.headers);
}

/// The contract's whoami JSON: `"session": {"expires_at": ...}` for a session, `null` for a bearer token.
#[tokio::test]
async fn whoami_json_names_the_session_as_the_contract_says() {
    let h = Harness::start().await;
    let before = unix_now();
    let cookie = h.sign_in("/").await;
    let who = h.get("/.hfgate/whoami", JSON, Some(&session_cookie(&cookie))).await;
    assert_eq!(who.status, StatusCode::OK, "{}", who.text());
    let who = who.json();
    assert_eq!(who["subject"], "alice");
    let expires_at = who["session"]["expires_at"].as_u64().unwrap_or_else(|| panic!("no session.expires_at: {who}"));
    assert!((before + LIFETIME..=unix_now() + LIFETIME).contains(&expires_at), "{expires_at}");

    let request = Request::get(h.gate.url("/.hfgate/whoami"))
        .header(header::ACCEPT, JSON)
        .header(header::AUTHORIZATION, format!("Bearer {}", h.idp.access_token("robot")))
        .body(Body::empty())
        .expect("request");
    let bearer = common::send(&h.gate.client, request).await;
    assert_eq!(bearer.status, StatusCode::OK, "{}", bearer.text());
    let bearer = bearer.json();
    assert_eq!(bearer["subject"], "robot");
    assert!(bearer.get("session").is_some_and(Value::is_null), "a bearer token has no session: {bearer}");
}

// --- 2. logout ----------------------------------------------------------------------------------------

/// Logout clears the cookie and sends the browser to the provider's end_session_endpoint; the old
/// cookie, replayed, no longer works anywhere.
#[tokio::test]
async fn logout_ends_the_session_here_and_at_the_provider() {
    let h = Harness::start().await;
    let cookie = h.sign_in("/").await;
    assert_eq!(h.get("/api/echo/before", JSON, Some(&session_cookie(&cookie))).await.status, StatusCode::OK);

    let out = h.get("/.hfgate/logout", HTML, Some(&session_cookie(&cookie))).await;
    assert_eq!(out.status, StatusCode::FOUND, "{}", out.text());
    let location = out.header("location").to_string();
    assert!(location.starts_with(&format!("{}/logout?", h.idp.issuer())), "{location}");
    let params = params_of(&location);
    assert_eq!(params["client_id"], CLIENT_ID);
    assert_eq!(params["post_logout_redirect_uri"], "https://gate.example/.hfgate/signed-out");
    assert_session_cleared(&out);

    let signed_out = h.get(&params["post_logout_redirect_uri"], HTML, None).await;
    assert_eq!(signed_out.status, StatusCode::OK);
    assert!(signed_out.text().contains("You are signed out"), "{}", signed_out.text());
    assert!(signed_out.text().contains("/.hfgate/login"), "{}", signed_out.text());

    // The old cookie replayed by an API client: refused, naming why, and cleared again.
    let replay = h.get("/api/echo/after", JSON, Some(&session_cookie(&cookie))).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "{}", replay.text());
    assert!(replay.description().contains("signed out"), "{}", replay.text());
    assert_session_cleared(&replay);

    // ... and by a browser on the redirect route: off to sign in again.
    let browser = h.get("/app/echo/after", HTML, Some(&session_cookie(&cookie))).await;
    assert_eq!(browser.status, StatusCode::FOUND, "{}", browser.text());
    assert!(browser.header("location").starts_with(&format!("{PUBLIC_URL}/.hfgate/login?")), "{:?}", browser.headers);
    assert_eq!(params_of(browser.header("location")).get("rd").map(String::as_str), Some("/app/echo/after"));
    assert_session_cleared(&browser);
    let metrics = h.gate.metrics().await;
    assert!(metrics.contains("hfgate_sessions_total{event=\"signed_in\"} 1"), "{metrics}");
    assert!(metrics.contains("hfgate_sessions_total{event=\"signed_out\"} 1"), "{metrics}");

    let targets: Vec<String> = h.probe.log().requests.iter().map(|r| r.target.clone()).collect();
    assert_eq!(targets, ["/echo/before"], "nothing after the logout reached the upstream");

    // A POST works as well (the whoami page's sign-out button).
    let second = h.sign_in("/").await;
    let post = h.send("POST", "/.hfgate/logout", HTML, Some(&session_cookie(&second))).await;
    assert_eq!(post.status, StatusCode::FOUND, "{}", post.text());
    assert_session_cleared(&post);
    let replay = h.get("/api/echo/after-post", JSON, Some(&session_cookie(&second))).await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "{}", replay.text());
    assert!(replay.description().contains("signed out"), "{}", replay.text());
}

// --- 3. cookies ---------------------------------------------------------------------------------------

/// Every way a session cookie can be bad is refused with its own reason; the cookie is cleared and
/// nothing reaches the upstream. A good cookie sealed the same way is the control.
#[tokio::test]
async fn bad_session_cookies_are_refused_naming_the_check() {
    let h = Harness::start().await;
    let now = unix_now();
    let signin = h.signin();
    let good = signin.seal_session(&session("carol", now - 60, now - 1, now + 600)).expect("sealed");
    let control = h.get("/api/echo/control", JSON, Some(&session_cookie(&good))).await;
    assert_eq!(control.status, StatusCode::OK, "{}", control.text());
    assert_eq!(h.probe.log().requests[0].header_values("x-forwarded-user"), ["carol"]);

    let mut tampered: Vec<char> = good.chars().collect();
    let middle = tampered.len() / 2;
    tampered[middle] = if tampered[middle] == 'A' { 'B' } else { 'A' };
    let tampered: String = tampered.into_iter().collect();
    let stranger = sign_in_with_keys(h.idp.issuer(), &[[0x17; 32]]);
    let foreign = stranger.seal_session(&session("carol", now - 60, now - 1, now + 600)).expect("sealed");
    let expired = signin.seal_session(&session("carol", now - LIFETIME - 5, now - 1, now + 600)).expect("sealed");
    let idle = signin.seal_session(&session("carol", now - IDLE - 100, now - IDLE - 5, now + 600)).expect("sealed");

    for (name, cookie, reason, words) in [
        ("tampered", tampered.as_str(), "session_unopenable", "does not open with any configured key"),
        ("another key", foreign.as_str(), "session_unopenable", "does not open with any configured key"),
        ("expired", expired.as_str(), "session_expired", "session_lifetime is 1h"),
        ("idle", idle.as_str(), "session_idle", "session_idle_timeout 10m"),
        ("not base64", "!!not*base64!!", "session_malformed", "malformed"),
    ] {
        let path = format!("/api/echo/{}", name.replace(' ', "-"));
        let reply = h.get(&path, JSON, Some(&format!("theme=dark; {}", session_cookie(cookie)))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name}: {}", reply.text());
        let description = reply.description();
        assert!(description.contains(words), "{name}: {description}");
        assert_session_cleared(&reply);
        let line = h.audit_line(|l| l["path"] == path.as_str()).await;
        assert_eq!(line["decision"]["reason"], reason, "{name}: {line}");
        assert_eq!(line["status"], 401);
    }
    assert_eq!(h.probe.log().requests.len(), 1, "only the control reached the upstream");
}

/// Rotation: with `cookie_keys = [new, old]`, a cookie sealed with the old key still opens, and the
/// cookie hfgate sets when it touches the session is sealed with the new key.
#[tokio::test]
async fn rotated_keys_open_old_cookies_and_reseal_with_the_new_key() {
    let (old, new) = ([0x01; 32], [0x02; 32]);
    let h = Harness::start_with_keys(&[new, old]).await;
    let old_only = sign_in_with_keys(h.idp.issuer(), &[old]);
    let new_only = sign_in_with_keys(h.idp.issuer(), &[new]);
    let now = unix_now();
    // Last seen long enough ago (past the touch interval, within the idle timeout) to be touched now.
    let sealed = old_only.seal_session(&session("dave", now - 300, now - 200, now + 600)).expect("sealed");
    let authn = &h.gate.server.gateway.authn;
    let headers_with = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, session_cookie(value).parse().expect("cookie header"));
        headers
    };
    assert!(
        matches!(new_only.authenticate(authn, &headers_with(&sealed)).await, SessionAuth::Invalid { .. }),
        "the control: the new key alone does not open an old cookie"
    );

    let reply = h.get("/api/echo/rotated", JSON, Some(&session_cookie(&sealed))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(h.probe.log().requests[0].header_values("x-forwarded-user"), ["dave"]);
    let resealed =
        set_cookie(&reply, SESSION).unwrap_or_else(|| panic!("the session was not touched: {:?}", reply.headers));
    // Max-Age counts to the end of the session's lifetime, which began 300 s ago.
    let max_age: u64 = resealed.rsplit_once("; Max-Age=").and_then(|(_, n)| n.parse().ok()).expect("Max-Age");
    assert!((LIFETIME - 302..=LIFETIME - 300).contains(&max_age), "{resealed}");
    assert!(resealed.contains("; Path=/; HttpOnly; SameSite=Lax; Secure;"), "{resealed}");
    let resealed = value_of(&resealed).to_string();
    match new_only.authenticate(authn, &headers_with(&resealed)).await {
        SessionAuth::Valid { identity, .. } => assert_eq!(identity.subject, "dave"),
        other => panic!("the touched cookie does not open with the new key alone: {other:?}"),
    }
    assert!(
        matches!(old_only.authenticate(authn, &headers_with(&resealed)).await, SessionAuth::Invalid { .. }),
        "the touched cookie must not be sealed with the old key"
    );
}

// --- 4. callback attacks ------------------------------------------------------------------------------

/// An answer for another sign-in, a callback without the login cookie, and a callback replayed after
/// it succeeded are refused before or instead of redeeming the code again.
#[tokio::test]
async fn forged_and_replayed_callbacks_are_refused() {
    let h = Harness::start().await;
    let begun = h.begin("/app/after").await;
    let callback = h.approve(&begun).await;
    let answer = params_of(&callback);

    let forged = format!(
        "/.hfgate/callback?{}",
        query(&[("code", &answer["code"]), ("state", "someone-elses-state"), ("iss", h.idp.issuer())])
    );
    let mismatch = h.get(&forged, HTML, Some(&format!("{LOGIN}={}", begun.login_cookie))).await;
    assert_eq!(mismatch.status, StatusCode::BAD_REQUEST, "{}", mismatch.text());
    assert!(mismatch.text().contains("state mismatch"), "{}", mismatch.text());
    assert!(mismatch.header("content-type").starts_with("text/html"));
    assert_eq!(set_cookie(&mismatch, SESSION), None);

    let no_cookie = h.get(&callback, HTML, Some("theme=dark")).await;
    assert_eq!(no_cookie.status, StatusCode::BAD_REQUEST, "{}", no_cookie.text());
    assert!(no_cookie.text().contains("no sign-in in progress"), "{}", no_cookie.text());
    assert_eq!(set_cookie(&no_cookie, SESSION), None);
    assert_eq!(h.idp.seen().code_grants, 0, "neither reached the provider's token endpoint");

    let done = h.callback(&begun, &callback).await;
    assert_eq!(done.status, StatusCode::FOUND, "{}", done.text());
    assert_eq!(done.header("location"), format!("{PUBLIC_URL}/app/after"));
    assert!(set_cookie(&done, SESSION).is_some());

    let replayed = h.callback(&begun, &callback).await;
    assert_eq!(replayed.status, StatusCode::BAD_REQUEST, "{}", replayed.text());
    assert!(replayed.text().contains("already completed"), "{}", replayed.text());
    assert_eq!(set_cookie(&replayed, SESSION), None);
    assert_eq!(h.idp.seen().code_grants, 1, "the code was redeemed exactly once");
}

/// The provider's refusal (`error=access_denied`) is shown as a 401 page naming it.
#[tokio::test]
async fn a_refusal_from_the_provider_is_a_401_page() {
    let h = Harness::start().await;
    h.idp.script(|s| s.authorize_error = Some("access_denied".into()));
    let begun = h.begin("/").await;
    let callback = h.approve(&begun).await;
    assert_eq!(params_of(&callback)["error"], "access_denied");
    let reply = h.callback(&begun, &callback).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    assert!(reply.text().contains("access_denied"), "{}", reply.text());
    assert!(reply.header("content-type").starts_with("text/html"));
    assert_eq!(set_cookie(&reply, SESSION), None);
    assert_eq!(set_cookie(&reply, LOGIN).as_deref(), Some(cleared(LOGIN).as_str()));
    assert_eq!(h.idp.seen().code_grants, 0);
}

/// ID tokens that do not belong to this sign-in: a nonce of another, an audience of another client.
#[tokio::test]
async fn id_tokens_with_a_wrong_nonce_or_audience_are_refused() {
    let h = Harness::start().await;

    h.idp.script(|s| s.nonce = Some("nonce-of-another-sign-in".into()));
    let begun = h.begin("/").await;
    let callback = h.approve(&begun).await;
    let reply = h.callback(&begun, &callback).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    assert!(reply.text().contains("nonce"), "{}", reply.text());
    assert_eq!(set_cookie(&reply, SESSION), None);

    h.idp.script(|s| {
        s.nonce = None;
        s.aud = Some("another-client".into());
    });
    let begun = h.begin("/").await;
    let callback = h.approve(&begun).await;
    let reply = h.callback(&begun, &callback).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    assert!(reply.text().contains("aud mismatch"), "{}", reply.text());
    assert_eq!(set_cookie(&reply, SESSION), None);
    assert_eq!(h.idp.seen().code_grants, 2, "both codes were redeemed; the tokens were refused");

    // The control: the same flow with an honest token signs in.
    h.idp.script(|s| s.aud = None);
    h.sign_in("/").await;
}

// --- 5. return URLs -----------------------------------------------------------------------------------

/// `rd` must stay on hfgate's own origin; anything else is refused before the provider is involved.
#[tokio::test]
async fn return_urls_must_stay_on_the_public_origin() {
    let h = Harness::start().await;
    for rd in ["https://evil.example/", "//evil.example", "/\\evil.example", "http://gate.example/x"] {
        let reply = h.get(&format!("/.hfgate/login?{}", query(&[("rd", rd)])), HTML, None).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{rd}: {}", reply.text());
        assert_eq!(reply.header("location"), "", "{rd}");
        assert!(reply.text().contains("must be a path on https://gate.example"), "{rd}: {}", reply.text());
        let login = set_cookie(&reply, LOGIN);
        assert!(login.as_deref().is_none_or(|c| value_of(c).is_empty()), "{rd}: a sign-in was started: {login:?}");
    }
    assert!(h.idp.seen().authorize.is_empty(), "no browser was sent to the provider");

    let begun = h.begin("https://gate.example/ok?x=1").await;
    let callback = h.approve(&begun).await;
    let done = h.callback(&begun, &callback).await;
    assert_eq!(done.status, StatusCode::FOUND, "{}", done.text());
    assert_eq!(done.header("location"), format!("{PUBLIC_URL}/ok?x=1"));
}

// --- 6. refresh ---------------------------------------------------------------------------------------

/// Claims about to expire are refreshed on the next request: the upstream sees the new groups, the
/// browser gets a new cookie, and the rotated refresh token is the one used next time.
#[tokio::test]
async fn expiring_claims_are_refreshed_with_the_rotated_token() {
    let h = Harness::start().await;
    h.idp.script(|s| {
        s.id_token_lifetime = 30;
        s.user.groups = vec!["ml".into()];
    });
    let cookie = h.sign_in("/").await;
    let issued = h.idp.seen().refresh_issued;
    assert_eq!(issued.len(), 1);
    assert_eq!(h.idp.seen().refresh_grants, 0);

    h.idp.script(|s| s.user.groups = vec!["ml".into(), "admins".into()]);
    let first = h.get("/api/echo/first", JSON, Some(&session_cookie(&cookie))).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let seen = h.idp.seen();
    assert_eq!(seen.refresh_grants, 1);
    assert_eq!(seen.refresh_presented, [issued[0].clone()]);
    assert_eq!(
        h.probe.log().request("/echo/first").expect("forwarded").header_values("x-forwarded-groups"),
        ["ml,admins"]
    );
    let refreshed = set_cookie(&first, SESSION).unwrap_or_else(|| panic!("no new cookie: {:?}", first.headers));
    assert!(refreshed.contains("; Secure; Max-Age="), "{refreshed}");
    let refreshed = value_of(&refreshed).to_string();
    assert_ne!(refreshed, cookie);

    // The next refresh presents the rotated token; the provider would refuse the first one now.
    let second = h.get("/api/echo/second", JSON, Some(&session_cookie(&refreshed))).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    let seen = h.idp.seen();
    assert_eq!(seen.refresh_presented, [issued[0].clone(), seen.refresh_issued[1].clone()]);
    assert_eq!(seen.refresh_succeeded, 2, "refusals: {:?}", seen.refusals);
    let form = query(&[("grant_type", "refresh_token"), ("refresh_token", &issued[0])]);
    let request = Request::post(format!("{}/token", h.idp.issuer()))
        .header(header::AUTHORIZATION, format!("Basic {}", b64(format!("{CLIENT_ID}:{CLIENT_SECRET}").as_bytes())))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(form))
        .expect("request");
    let reuse = common::send(&h.gate.client, request).await;
    assert_eq!(reuse.status, StatusCode::BAD_REQUEST, "the provider must refuse a used refresh token");
    assert_eq!(reuse.json()["error"], "invalid_grant");
}

/// Eight requests carrying the same about-to-expire cookie at once share one refresh.
#[tokio::test]
async fn concurrent_requests_share_one_refresh() {
    let h = Harness::start().await;
    h.idp.script(|s| s.id_token_lifetime = 30);
    let cookie = h.sign_in("/").await;
    h.idp.script(|s| s.refresh_delay = Duration::from_millis(300));
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..8 {
        let request = Request::get(h.gate.url(&format!("/api/echo/concurrent-{i}")))
            .header(header::ACCEPT, JSON)
            .header(header::COOKIE, session_cookie(&cookie))
            .body(Body::empty())
            .expect("request");
        let client = h.gate.client.clone();
        requests.spawn(async move { common::send(&client, request).await });
    }
    let mut cookies = 0;
    while let Some(reply) = requests.join_next().await {
        let reply = reply.expect("request task");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        cookies += usize::from(set_cookie(&reply, SESSION).is_some_and(|c| !value_of(&c).is_empty()));
    }
    let seen = h.idp.seen();
    assert_eq!(seen.refresh_grants, 1, "one refresh for all eight: {seen:?}");
    assert_eq!(seen.refusals, Vec::<String>::new());
    assert_eq!(cookies, 8, "every response carries the refreshed session");
    assert_eq!(h.probe.log().requests.len(), 8);
}

/// A refresh the provider refuses ends the session: 401 and the cookie cleared (a browser on the
/// redirect route is sent to sign in instead).
#[tokio::test]
async fn a_refused_refresh_ends_the_session() {
    let h = Harness::start().await;
    h.idp.script(|s| s.id_token_lifetime = 30);
    let cookie = h.sign_in("/").await;
    h.idp.script(|s| s.refuse_refresh = true);

    let api = h.get("/api/echo/refused", JSON, Some(&session_cookie(&cookie))).await;
    assert_eq!(api.status, StatusCode::UNAUTHORIZED, "{}", api.text());
    assert!(api.description().contains("could not be refreshed"), "{}", api.text());
    assert_session_cleared(&api);
    let line = h.audit_line(|l| l["path"] == "/api/echo/refused").await;
    assert_eq!(line["decision"]["reason"], "session_refresh_failed", "{line}");
    assert!(h.idp.seen().refresh_grants >= 1);
    assert!(h.gate.metrics().await.contains("hfgate_sessions_total{event=\"refresh_failed\"} 1"));

    let browser = h.get("/app/echo/refused", HTML, Some(&session_cookie(&cookie))).await;
    assert_eq!(browser.status, StatusCode::FOUND, "{}", browser.text());
    assert!(browser.header("location").starts_with(&format!("{PUBLIC_URL}/.hfgate/login?")), "{:?}", browser.headers);
    assert_session_cleared(&browser);
    assert!(h.probe.log().requests.is_empty(), "nothing reached the upstream");
}

/// A refresh that changes the groups but not the expiry (an IdP capping its tokens at the end of its
/// own session does this) must still reach the upstream: the identity cached for the session may not
/// outlive the claims it was built from.
#[tokio::test]
async fn refreshed_groups_reach_the_upstream_when_the_expiry_is_unchanged() {
    let h = Harness::start().await;
    let cap = unix_now() + 40;
    h.idp.script(|s| {
        s.fixed_exp = Some(cap);
        s.user.groups = vec!["ml".into(), "admins".into()];
    });
    let cookie = h.sign_in("/").await;
    let first = h.get("/api/echo/first", JSON, Some(&session_cookie(&cookie))).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text());
    let log = h.probe.log();
    assert_eq!(log.request("/echo/first").expect("forwarded").header_values("x-forwarded-groups"), ["ml,admins"]);
    let refreshed = value_of(&set_cookie(&first, SESSION).expect("refreshed cookie")).to_string();

    // Removed from admins at the provider; the next request refreshes again (still within the margin).
    h.idp.script(|s| s.user.groups = vec!["ml".into()]);
    let second = h.get("/api/echo/second", JSON, Some(&session_cookie(&refreshed))).await;
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    assert_eq!(h.idp.seen().refresh_succeeded, 2, "the second request refreshed too");
    assert_eq!(
        h.probe.log().request("/echo/second").expect("forwarded").header_values("x-forwarded-groups"),
        ["ml"],
        "the upstream saw the groups from before the refresh"
    );
}

// --- 7. cli-config ------------------------------------------------------------------------------------

/// What `hfgate login` needs, and nothing secret.
#[tokio::test]
async fn cli_config_tells_the_command_line_where_to_sign_in() {
    let h = Harness::start().await;
    let reply = h.get("/.hfgate/cli-config", JSON, None).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.header("cache-control"), "no-store");
    assert_eq!(
        reply.json(),
        json!({
            "server": PUBLIC_URL,
            "issuer": h.idp.issuer(),
            "client_id": "hfgate-cli",
            "scopes": ["openid", "groups", "offline_access"],
            "parameters": {"audience": "https://models.example", "resource": "urn:hfgate"},
            "token": "id_token",
        })
    );
    assert!(!reply.text().contains(CLIENT_SECRET));
}

/// Without `[login]` the sign-in endpoints do not exist.
#[tokio::test]
async fn without_login_the_endpoints_are_404() {
    let idp = Provider::start().await;
    let probe = Probe::start().await;
    let dir = common::temp_dir("login-none");
    let text = gate_config(idp.issuer(), probe.addr(), &dir, "").replace("login = \"redirect\"", "");
    let gate = Gate::start(dir, &text).await;
    assert!(gate.server.gateway.signin.is_none());
    for path in ["/.hfgate/cli-config", "/.hfgate/login?rd=/", "/.hfgate/callback?code=c&state=s"] {
        let reply = gate.get(path, None).await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND, "{path}: {}", reply.text());
    }
    assert!(idp.seen().authorize.is_empty());
    assert!(probe.log().requests.is_empty());
}

// --- 8. config errors ---------------------------------------------------------------------------------

fn config_error(text: &str) -> String {
    match hfgate::config::parse(Path::new("login.toml"), text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(err) => err.to_string(),
    }
}

/// The 1-based line of the first occurrence of `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    let at = text.find(needle).unwrap_or_else(|| panic!("{needle:?} not in the config"));
    text[..at].matches('\n').count() + 1
}

const BASE: &str = "[server]\npublic_url = \"https://gate.example\"\n\
                    [[issuer]]\nname = \"corp\"\nissuer = \"https://idp.example\"\naudiences = [\"hfgate\"]\n\
                    [[route]]\nname = \"app\"\npath = \"/app/\"\nupstream = \"http://127.0.0.1:9\"\n";

#[test]
fn a_redirect_route_needs_a_login_section() {
    let text = format!("{BASE}login = \"redirect\"\n");
    let err = config_error(&text);
    let line = line_of(&text, "login = \"redirect\"");
    assert!(
        err.contains(&format!("login.toml:{line}: route[0].login: login = \"redirect\" needs a [login] section")),
        "{err}"
    );
    // The control: the same file with a [login] section is accepted.
    let fixed = format!("{text}\n[login]\nissuer = \"corp\"\nclient_id = \"web\"\ncookie_keys = [\"{}\"]\n", b64(&KEY));
    hfgate::config::parse(Path::new("login.toml"), &fixed).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn cookie_keys_must_be_32_bytes_and_are_never_repeated() {
    let short = b64(&[0xa5u8; 16]);
    let junk = "hunter2-is-not-base64!";
    let text = format!(
        "{BASE}\n[login]\nissuer = \"corp\"\nclient_id = \"web\"\ncookie_keys = [\n  \"{}\",\n  \"{short}\",\n  \"{junk}\",\n]\n",
        b64(&KEY)
    );
    let err = config_error(&text);
    let short_line = line_of(&text, &short);
    let junk_line = line_of(&text, junk);
    assert!(
        err.contains(&format!("login.toml:{short_line}: login.cookie_keys[1]: must be base64 of exactly 32 bytes")),
        "{err}"
    );
    assert!(
        err.contains(&format!("login.toml:{junk_line}: login.cookie_keys[2]: must be base64 of exactly 32 bytes")),
        "{err}"
    );
    assert!(!err.contains("cookie_keys[0]"), "the good key is fine: {err}");
    for secret in [short.as_str(), short.trim_end_matches('='), junk, "hunter2", &b64(&KEY)] {
        assert!(!err.contains(secret), "the message repeats key text {secret:?}: {err}");
    }
}

#[test]
fn scopes_must_include_openid() {
    let text = format!(
        "{BASE}\n[login]\nissuer = \"corp\"\nclient_id = \"web\"\ncookie_keys = [\"{}\"]\nscopes = [\"email\", \"profile\"]\n",
        b64(&KEY)
    );
    let err = config_error(&text);
    let line = line_of(&text, "scopes =");
    assert!(err.contains(&format!("login.toml:{line}: login.scopes: must include \"openid\"")), "{err}");
}

#[test]
fn the_login_issuer_must_be_configured() {
    let text = format!("{BASE}\n[login]\nissuer = \"nope\"\nclient_id = \"web\"\ncookie_keys = [\"{}\"]\n", b64(&KEY));
    let err = config_error(&text);
    let line = line_of(&text, "issuer = \"nope\"");
    assert!(
        err.contains(&format!("login.toml:{line}: login.issuer: no [[issuer]] named \"nope\": expected one of [corp]")),
        "{err}"
    );
}

// --- review follow-ups ---------------------------------------------------------------------------------

/// The sign-in issuer's `require` holds for people signing in, as for bearer tokens.
#[tokio::test]
async fn people_signing_in_meet_the_issuers_require() {
    let h = Harness::start_with_issuer(&[KEY], "require = { email = \"*@acme.example\" }").await;
    h.idp.script(|s| s.user.email = Some("mallory@evil.example".into()));
    let begun = h.begin("/app/").await;
    let callback = h.approve(&begun).await;
    let refused = h.callback(&begun, &callback).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED, "{}", refused.text());
    assert!(
        refused.text().contains("claim email is &#39;mallory@evil.example&#39; and does not satisfy"),
        "{}",
        refused.text()
    );
    assert!(set_cookie(&refused, SESSION).is_none(), "a session was started");

    h.idp.script(|s| s.user.email = Some("alice@acme.example".into()));
    let cookie = h.sign_in("/app/").await;
    let reply = h.get("/api/echo/ok", JSON, Some(&session_cookie(&cookie))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

/// A request that changes something, authenticated by the session, must come from hfgate's own origin.
#[tokio::test]
async fn a_session_does_not_authenticate_cross_site_writes() {
    let h = Harness::start().await;
    let cookie = h.sign_in("/").await;
    let post = |origin: Option<&'static str>, fetch_site: Option<&'static str>| {
        let mut builder = Request::post(h.gate.url("/api/echo/post"))
            .header(header::COOKIE, session_cookie(&cookie))
            .header(header::CONTENT_TYPE, "text/plain");
        if let Some(origin) = origin {
            builder = builder.header(header::ORIGIN, origin);
        }
        if let Some(site) = fetch_site {
            builder = builder.header("sec-fetch-site", site);
        }
        common::send(&h.gate.client, builder.body(Body::from("{}")).expect("request"))
    };
    for (origin, site) in [
        (None, None),
        (Some("https://evil.example"), Some("cross-site")),
        (Some("null"), None),
        (None, Some("same-site")),
    ] {
        let reply = post(origin, site).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{origin:?} {site:?}: {}", reply.text());
        assert!(reply.description().contains("must come from https://gate.example"), "{}", reply.text());
    }
    assert!(h.probe.log().requests.is_empty(), "a cross-site write reached the upstream");
    assert_eq!(post(Some("https://gate.example"), None).await.status, StatusCode::OK);
    assert_eq!(post(None, Some("same-origin")).await.status, StatusCode::OK);
    // Reads are not writes, and bearer tokens are not cookies: neither is checked.
    assert_eq!(h.get("/api/echo/get", JSON, Some(&session_cookie(&cookie))).await.status, StatusCode::OK);
}

/// The provider failing (not refusing) is not the person's fault: claims that still hold carry on; claims
/// already expired get a 503 and keep the cookie, so the next request can try again.
#[tokio::test]
async fn a_provider_outage_does_not_end_sessions() {
    let h = Harness::start().await;
    h.idp.script(|s| s.id_token_lifetime = 30);
    let cookie = h.sign_in("/").await;
    h.idp.script(|s| s.refresh_broken = true);
    let still_valid = h.get("/api/echo/soon", JSON, Some(&session_cookie(&cookie))).await;
    assert_eq!(still_valid.status, StatusCode::OK, "{}", still_valid.text());
    assert!(set_cookie(&still_valid, SESSION).is_none_or(|c| !c.contains("Max-Age=0")), "the session was ended");

    let now = unix_now();
    let mut expired = session("alice", now - 100, now - 10, now - 5);
    expired.refresh_token = Some("rt-unknown".into());
    let sealed = h.signin().seal_session(&expired).expect("sealed");
    let reply = h.get("/api/echo/expired", JSON, Some(&session_cookie(&sealed))).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    assert!(reply.description().contains("could not be reached"), "{}", reply.text());
    assert!(set_cookie(&reply, SESSION).is_none(), "the cookie was cleared: {:?}", reply.headers);
    assert!(!reply.header("retry-after").is_empty());
}
