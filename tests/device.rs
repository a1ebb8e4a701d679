//! `hfgate login`, `hfgate token` and `hfgate logout` as a user runs them: the built binary against an
//! in-process hfgate answering `/.hfgate/cli-config` and a fake OpenID provider with the device grant,
//! refresh token rotation and revocation.

mod common;

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::extract::{Form, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use http::StatusCode;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_hfgate");
const CLIENT_ID: &str = "hfgate-cli";
const USER_CODE: &str = "WDJB-MJHT";
const EMAIL: &str = "alice@example.com";

// --- the fake identity provider ---------------------------------------------------------------------

/// What the provider answers and what it saw.
struct Idp {
    issuer: String,
    /// Device authorization: the polling interval and the code's lifetime, in seconds.
    interval: u64,
    code_lifetime: u64,
    /// Error codes the token endpoint answers to device-code polls, in order; then success.
    script: VecDeque<&'static str>,
    /// Answer `authorization_pending` for ever (the user never comes).
    never_approve: bool,
    device_code: Option<String>,
    /// `expires_in` of token answers, and the lifetime written in the JWTs' `exp`.
    expires_in: Option<u64>,
    jwt_lifetime: u64,
    refresh_fails: bool,
    /// The refresh token that works (each refresh rotates it; an older one is refused).
    refresh_token: Option<String>,
    minted: u64,
    last_access: String,
    last_id: String,
    device_requests: Vec<HashMap<String, String>>,
    polls: Vec<Instant>,
    refreshes: Vec<String>,
    revoked: Vec<String>,
    /// Every token and device code handed out: none may reach stderr.
    secrets: Vec<String>,
}

type Shared = Arc<Mutex<Idp>>;

fn jwt(claims: Value) -> String {
    let b64 = |text: &str| hfgate::jose::b64url(text);
    format!("{}.{}.{}", b64(r#"{"alg":"ES256","typ":"JWT"}"#), b64(&claims.to_string()), b64("not-verified"))
}

fn oauth_error(status: StatusCode, code: &str) -> Response {
    (status, Json(json!({"error": code, "error_description": format!("the fake says {code}")}))).into_response()
}

fn mint(idp: &mut Idp) -> Response {
    idp.minted += 1;
    let n = idp.minted;
    let now = hfgate::jose::unix_now();
    let unique = hfgate::oauth::random_urlsafe(12);
    let access = jwt(json!({"iss": idp.issuer, "sub": "u-123", "email": EMAIL, "exp": now + idp.jwt_lifetime,
        "jti": format!("at-{n}-{unique}")}));
    let id = jwt(json!({"iss": idp.issuer, "aud": CLIENT_ID, "sub": "u-123", "email": EMAIL,
        "exp": now + idp.jwt_lifetime, "jti": format!("id-{n}-{unique}")}));
    let refresh = format!("rt-{n}-{unique}");
    idp.secrets.extend([access.clone(), id.clone(), refresh.clone()]);
    idp.last_access = access.clone();
    idp.last_id = id.clone();
    idp.refresh_token = Some(refresh.clone());
    let mut answer = json!({"access_token": access, "token_type": "Bearer", "refresh_token": refresh,
        "id_token": id, "scope": "openid email offline_access"});
    if let Some(expires_in) = idp.expires_in {
        answer["expires_in"] = json!(expires_in);
    }
    Json(answer).into_response()
}

async fn discovery(State(idp): State<Shared>) -> Json<Value> {
    let issuer = idp.lock().expect("lock").issuer.clone();
    Json(json!({
        "issuer": issuer,
        "authorization_endpoint": format!("{issuer}/authorize"),
        "token_endpoint": format!("{issuer}/token"),
        "device_authorization_endpoint": format!("{issuer}/device"),
        "revocation_endpoint": format!("{issuer}/revoke"),
        "jwks_uri": format!("{issuer}/jwks.json"),
    }))
}

async fn device_authorization(State(idp): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    let mut idp = idp.lock().expect("lock");
    idp.device_requests.push(form.clone());
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    let device_code = format!("dc-{}", hfgate::oauth::random_urlsafe(16));
    idp.secrets.push(device_code.clone());
    idp.device_code = Some(device_code.clone());
    let issuer = idp.issuer.clone();
    Json(json!({
        "device_code": device_code,
        "user_code": USER_CODE,
        "verification_uri": format!("{issuer}/activate"),
        "verification_uri_complete": format!("{issuer}/activate?user_code={USER_CODE}"),
        "expires_in": idp.code_lifetime,
        "interval": idp.interval,
    }))
    .into_response()
}

async fn token_endpoint(State(idp): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    let mut idp = idp.lock().expect("lock");
    if form.get("client_id").map(String::as_str) != Some(CLIENT_ID) {
        return oauth_error(StatusCode::UNAUTHORIZED, "invalid_client");
    }
    match form.get("grant_type").map(String::as_str) {
        Some("urn:ietf:params:oauth:grant-type:device_code") => {
            idp.polls.push(Instant::now());
            if form.get("device_code") != idp.device_code.as_ref() {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            if idp.never_approve {
                return oauth_error(StatusCode::BAD_REQUEST, "authorization_pending");
            }
            match idp.script.pop_front() {
                Some(code) => oauth_error(StatusCode::BAD_REQUEST, code),
                None => mint(&mut idp),
            }
        }
        Some("refresh_token") => {
            let presented = form.get("refresh_token").cloned().unwrap_or_default();
            idp.refreshes.push(presented.clone());
            if idp.refresh_fails || idp.refresh_token.as_ref() != Some(&presented) {
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant");
            }
            mint(&mut idp)
        }
        _ => oauth_error(StatusCode::BAD_REQUEST, "unsupported_grant_type"),
    }
}

async fn revoke(State(idp): State<Shared>, Form(form): Form<HashMap<String, String>>) -> StatusCode {
    let mut idp = idp.lock().expect("lock");
    if let Some(token) = form.get("token") {
        idp.revoked.push(token.clone());
        if idp.refresh_token.as_ref() == Some(token) {
            idp.refresh_token = None;
        }
    }
    StatusCode::OK
}

async fn serve(router: Router) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (format!("http://{addr}"), task)
}

/// A fake provider and one fake hfgate naming it.
struct Fake {
    idp: Shared,
    issuer: String,
    server: String,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Fake {
    /// Polls every second, codes live a minute, tokens an hour; `token` is the server's `cli_token`.
    async fn start(token: &str) -> Fake {
        let idp = Arc::new(Mutex::new(Idp {
            issuer: String::new(),
            interval: 1,
            code_lifetime: 60,
            script: VecDeque::new(),
            never_approve: false,
            device_code: None,
            expires_in: Some(3600),
            jwt_lifetime: 3600,
            refresh_fails: false,
            refresh_token: None,
            minted: 0,
            last_access: String::new(),
            last_id: String::new(),
            device_requests: Vec::new(),
            polls: Vec::new(),
            refreshes: Vec::new(),
            revoked: Vec::new(),
            secrets: Vec::new(),
        }));
        let router = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/device", post(device_authorization))
            .route("/token", post(token_endpoint))
            .route("/revoke", post(revoke))
            .with_state(idp.clone());
        let (issuer, idp_task) = serve(router).await;
        idp.lock().expect("lock").issuer = issuer.clone();
        let (server, gate_task) = gate(&issuer, token).await;
        Fake { idp, issuer, server, tasks: vec![idp_task, gate_task] }
    }

    /// One more hfgate in front of the same provider.
    async fn another_server(&mut self) -> String {
        let (server, task) = gate(&self.issuer, "access_token").await;
        self.tasks.push(task);
        server
    }

    fn idp(&self) -> MutexGuard<'_, Idp> {
        self.idp.lock().expect("lock")
    }

    /// Neither stream of a run shows a token or device code (stdout may, for `hfgate token`).
    fn assert_no_secret(&self, text: &str) {
        for secret in &self.idp().secrets {
            assert!(!text.contains(secret.as_str()), "a token leaked: {text}");
        }
    }
}

/// A fake hfgate: only `/.hfgate/cli-config`, naming `issuer`.
async fn gate(issuer: &str, token: &str) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let server = format!("http://{}", listener.local_addr().expect("addr"));
    let config = json!({
        "server": server,
        "issuer": issuer,
        "client_id": CLIENT_ID,
        "scopes": ["openid", "email", "offline_access"],
        "parameters": {"resource": "urn:hfgate"},
        "token": token,
    });
    let router = Router::new().route("/.hfgate/cli-config", get(move || async move { Json(config) }));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    (server, task)
}

// --- running the binary -----------------------------------------------------------------------------

#[derive(Debug)]
struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Runs `hfgate args...` with its configuration in `home`, away from the user's environment.
async fn hfgate(home: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut command = Command::new(BIN);
    command.args(args).env("HFGATE_CONFIG_DIR", home);
    for name in ["HFGATE_SERVER", "BROWSER", "DISPLAY", "WAYLAND_DISPLAY", "XDG_CONFIG_HOME", "RUST_LOG"] {
        command.env_remove(name);
    }
    command.envs(env.iter().copied());
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = command.output().expect("run hfgate");
        Run {
            ok: out.status.success(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            took: started.elapsed(),
        }
    })
    .await
    .expect("join")
}

/// A configuration directory that does not exist yet.
fn home(tag: &str) -> PathBuf {
    common::temp_dir(tag).join("config")
}

async fn login(fake: &Fake, home: &Path) -> Run {
    let run = hfgate(home, &["login", "--server", &fake.server, "--no-browser"], &[]).await;
    fake.assert_no_secret(&run.stderr);
    fake.assert_no_secret(&run.stdout);
    run
}

async fn token(fake: &Fake, home: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    let run = hfgate(home, &all, env).await;
    fake.assert_no_secret(&run.stderr);
    run
}

fn credentials(home: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(home.join("credentials.json")).expect("credentials.json")).expect("json")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

// --- login --------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn login_runs_the_device_flow_and_stores_the_tokens_owner_only() {
    let fake = Fake::start("access_token").await;
    fake.idp().script.extend(["authorization_pending", "authorization_pending"]);
    let home = home("login");
    let run = login(&fake, &home).await;
    assert!(run.ok, "{run:?}");
    assert_eq!(run.stdout, "");
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines[0], format!("Sign in at: {}/activate?user_code={USER_CODE}", fake.issuer), "{run:?}");
    assert_eq!(lines[1], format!("Code: {USER_CODE}"), "{run:?}");
    assert!(lines.contains(&format!("Signed in to {} as {EMAIL}", fake.server).as_str()), "{run:?}");

    {
        let idp = fake.idp();
        let request = &idp.device_requests[0];
        assert_eq!(request["client_id"], CLIENT_ID);
        assert_eq!(request["scope"], "openid email offline_access");
        assert_eq!(request["resource"], "urn:hfgate");
        // Two pending answers, then the tokens: three polls, an interval apart.
        assert_eq!(idp.polls.len(), 3);
        for pair in idp.polls.windows(2) {
            assert!(pair[1] - pair[0] >= Duration::from_millis(950), "polled too fast");
        }
    }

    assert_eq!(mode(&home.join("credentials.json")), 0o600);
    assert_eq!(mode(&home), 0o700);
    let stored = credentials(&home);
    let servers = stored["servers"].as_object().expect("servers");
    assert_eq!(servers.keys().collect::<Vec<_>>(), vec![&fake.server]);
    let entry = &servers[&fake.server];
    assert_eq!(entry["issuer"], fake.issuer.as_str());
    assert_eq!(entry["client_id"], CLIENT_ID);
    assert_eq!(entry["token"], "access_token");
    assert_eq!(entry["access_token"], fake.idp().last_access.as_str());
    assert_eq!(entry["refresh_token"].as_str(), fake.idp().refresh_token.as_deref());

    // The stored token, without --server (one server), with it (trailing slash and all), and from the
    // environment; an hour left, so no refresh.
    let expected = format!("{}\n", fake.idp().last_access);
    let with_slash = format!("{}/", fake.server);
    for (args, env) in [
        (vec![], vec![]),
        (vec!["--server", with_slash.as_str()], vec![]),
        (vec![], vec![("HFGATE_SERVER", fake.server.as_str())]),
    ] {
        let run = token(&fake, &home, &args, &env).await;
        assert!(run.ok, "{run:?}");
        assert_eq!(run.stdout, expected);
        assert_eq!(run.stderr, "");
    }
    assert!(fake.idp().refreshes.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn slow_down_adds_five_seconds_to_the_interval() {
    let fake = Fake::start("access_token").await;
    fake.idp().script.extend(["slow_down"]);
    let run = login(&fake, &home("slow")).await;
    assert!(run.ok, "{run:?}");
    let polls = fake.idp().polls.clone();
    assert_eq!(polls.len(), 2);
    let gap = polls[1] - polls[0];
    assert!(gap >= Duration::from_millis(5900) && gap < Duration::from_secs(9), "{gap:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_denied_sign_in_exits_1_with_the_reason_and_stores_nothing() {
    let fake = Fake::start("access_token").await;
    fake.idp().script.extend(["authorization_pending", "access_denied"]);
    let home = home("denied");
    let run = login(&fake, &home).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    let last = run.stderr.lines().last().expect("a message");
    assert!(last.starts_with("hfgate: sign-in was denied") && last.contains("access_denied"), "{run:?}");
    assert!(!home.join("credentials.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_code_exits_1() {
    let fake = Fake::start("access_token").await;
    fake.idp().script.extend(["expired_token"]);
    let run = login(&fake, &home("expired")).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("expired") && run.stderr.contains("hfgate login"), "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn polling_stops_when_the_code_runs_out() {
    let fake = Fake::start("access_token").await;
    {
        let mut idp = fake.idp();
        idp.never_approve = true;
        idp.code_lifetime = 3;
    }
    let home = home("lifetime");
    let run = login(&fake, &home).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("expired"), "{run:?}");
    assert!(run.took < Duration::from_secs(8), "{run:?}");
    assert!((2..=3).contains(&fake.idp().polls.len()), "{}", fake.idp().polls.len());
    assert!(!home.join("credentials.json").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn login_opens_the_browser_named_by_browser() {
    let fake = Fake::start("access_token").await;
    let dir = common::temp_dir("browser");
    let opened = dir.join("opened");
    let script = dir.join("browser.sh");
    std::fs::write(&script, format!("#!/bin/sh\nprintf '%s\\n' \"$@\" > {}\n", opened.display())).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let browser = script.display().to_string();
    let run = hfgate(&dir.join("config"), &["login", "--server", &fake.server], &[("BROWSER", &browser)]).await;
    assert!(run.ok, "{run:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !opened.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let argument = std::fs::read_to_string(&opened).expect("the browser ran");
    assert_eq!(argument, format!("{}/activate?user_code={USER_CODE}\n", fake.issuer));
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_go_to_xdg_config_home_without_hfgate_config_dir() {
    let fake = Fake::start("access_token").await;
    let xdg = common::temp_dir("xdg");
    let xdg_text = xdg.display().to_string();
    let env = [("HFGATE_CONFIG_DIR", ""), ("XDG_CONFIG_HOME", xdg_text.as_str())];
    let run = hfgate(Path::new(""), &["login", "--server", &fake.server, "--no-browser"], &env).await;
    assert!(run.ok, "{run:?}");
    assert_eq!(mode(&xdg.join("hfgate/credentials.json")), 0o600);
    let run = token(&fake, Path::new(""), &[], &env).await;
    assert_eq!(run.stdout, format!("{}\n", fake.idp().last_access), "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_and_issuers_must_be_https_off_loopback() {
    let home = home("https");
    let run = hfgate(&home, &["login", "--server", "http://gate.example.com", "--no-browser"], &[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("https"), "{run:?}");

    // A server naming a plain-http issuer off loopback: refused before anything is fetched from it.
    let (server, task) = gate("http://idp.example.com", "access_token").await;
    let run = hfgate(&home, &["login", "--server", &server, "--no-browser"], &[]).await;
    task.abort();
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("http://idp.example.com") && run.stderr.contains("https"), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
}

// --- token ----------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn token_refreshes_near_expiry_and_keeps_the_rotated_refresh_token() {
    let fake = Fake::start("access_token").await;
    fake.idp().expires_in = Some(30);
    let home = home("refresh");
    assert!(login(&fake, &home).await.ok);
    let first_refresh = fake.idp().refresh_token.clone().expect("refresh token");

    // 30 s left: refreshed before printing.
    let run = token(&fake, &home, &[], &[]).await;
    assert!(run.ok, "{run:?}");
    let (access, rotated) = {
        let idp = fake.idp();
        assert_eq!(idp.refreshes, vec![first_refresh.clone()]);
        (idp.last_access.clone(), idp.refresh_token.clone().expect("rotated"))
    };
    assert_eq!(run.stdout, format!("{access}\n"));
    assert_ne!(rotated, first_refresh);
    let entry = &credentials(&home)["servers"][&fake.server];
    assert_eq!(entry["access_token"], access.as_str());
    assert_eq!(entry["refresh_token"], rotated.as_str());
    assert_eq!(mode(&home.join("credentials.json")), 0o600);

    // Again near expiry: the rotated refresh token is the one used (the fake refuses the old one).
    fake.idp().expires_in = Some(3600);
    let run = token(&fake, &home, &[], &[]).await;
    assert!(run.ok, "{run:?}");
    assert_eq!(fake.idp().refreshes, vec![first_refresh, rotated]);
    assert_eq!(run.stdout, format!("{}\n", fake.idp().last_access));

    // An hour left now: printed as stored.
    let run = token(&fake, &home, &[], &[]).await;
    assert!(run.ok, "{run:?}");
    assert_eq!(fake.idp().refreshes.len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn without_expires_in_the_jwt_exp_decides() {
    let fake = Fake::start("access_token").await;
    {
        let mut idp = fake.idp();
        idp.expires_in = None;
        idp.jwt_lifetime = 30;
    }
    let home = home("exp");
    assert!(login(&fake, &home).await.ok);
    fake.idp().jwt_lifetime = 3600;
    let run = token(&fake, &home, &[], &[]).await;
    assert!(run.ok, "{run:?}");
    assert_eq!(fake.idp().refreshes.len(), 1);
    let run = token(&fake, &home, &[], &[]).await;
    assert_eq!(run.stdout, format!("{}\n", fake.idp().last_access));
    assert_eq!(fake.idp().refreshes.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn token_prints_the_id_token_when_the_server_says_so() {
    let fake = Fake::start("id_token").await;
    let home = home("idtoken");
    assert!(login(&fake, &home).await.ok);
    assert_eq!(credentials(&home)["servers"][&fake.server]["token"], "id_token");
    let run = token(&fake, &home, &[], &[]).await;
    assert!(run.ok, "{run:?}");
    assert_eq!(run.stdout, format!("{}\n", fake.idp().last_id));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_refresh_says_to_log_in_again() {
    let fake = Fake::start("access_token").await;
    fake.idp().expires_in = Some(30);
    let home = home("refresh-fails");
    assert!(login(&fake, &home).await.ok);
    fake.idp().refresh_fails = true;
    let run = token(&fake, &home, &[], &[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("invalid_grant"), "{run:?}");
    assert!(run.stderr.contains(&format!("run `hfgate login --server {}` again", fake.server)), "{run:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn several_servers_are_kept_apart() {
    let mut fake = Fake::start("access_token").await;
    let other = fake.another_server().await;
    let home = home("several");
    assert!(login(&fake, &home).await.ok);
    let first = fake.idp().last_access.clone();
    let run = hfgate(&home, &["login", "--server", &other, "--no-browser"], &[]).await;
    assert!(run.ok, "{run:?}");
    let second = fake.idp().last_access.clone();
    let stored = credentials(&home);
    assert_eq!(stored["servers"].as_object().expect("servers").len(), 2);
    assert_eq!(stored["servers"][&fake.server]["access_token"], first.as_str());
    assert_eq!(stored["servers"][&other]["access_token"], second.as_str());

    let run = token(&fake, &home, &[], &[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("several servers") && run.stderr.contains("--server"), "{run:?}");
    assert_eq!(token(&fake, &home, &["--server", &fake.server], &[]).await.stdout, format!("{first}\n"));
    assert_eq!(token(&fake, &home, &[], &[("HFGATE_SERVER", &other)]).await.stdout, format!("{second}\n"));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_without_a_sign_in_says_to_log_in() {
    let fake = Fake::start("access_token").await;
    let home = home("none");
    let run = token(&fake, &home, &[], &[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("hfgate login"), "{run:?}");
    let run = token(&fake, &home, &["--server", &fake.server], &[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains(&format!("hfgate login --server {}", fake.server)), "{run:?}");
    assert!(!home.exists(), "nothing is created by a read");
}

// --- logout ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn logout_forgets_revokes_and_token_then_says_to_log_in() {
    let fake = Fake::start("access_token").await;
    let home = home("logout");
    assert!(login(&fake, &home).await.ok);
    let refresh = fake.idp().refresh_token.clone().expect("refresh token");

    let run = hfgate(&home, &["logout", "--server", &fake.server], &[]).await;
    fake.assert_no_secret(&run.stderr);
    assert!(run.ok, "{run:?}");
    assert_eq!(run.stderr.trim(), format!("Signed out of {}", fake.server));
    assert_eq!(fake.idp().revoked, vec![refresh]);
    let stored = credentials(&home);
    assert!(stored["servers"].as_object().expect("servers").is_empty(), "{stored}");
    assert!(!stored.to_string().contains("rt-"), "{stored}");
    assert_eq!(mode(&home.join("credentials.json")), 0o600);

    let run = token(&fake, &home, &[], &[]).await;
    assert_eq!(run.code, Some(1), "{run:?}");
    assert!(run.stderr.contains("hfgate login"), "{run:?}");
    assert_eq!(run.stdout, "");

    // Logging out again is not an error.
    let run = hfgate(&home, &["logout", "--server", &fake.server], &[]).await;
    assert!(run.ok, "{run:?}");
    assert!(run.stderr.contains("Not signed in"), "{run:?}");
}
