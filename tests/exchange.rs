//! Per-user upstream credentials (`credential = "exchange:NAME"`), end to end: hfgate in front of a
//! recording upstream, exchanging each caller's identity at a loopback token endpoint that holds hfgate to
//! the documented Hugging Face Enterprise token-exchange contract byte for byte (content type, Basic auth,
//! every form field) and answers the way Hugging Face does, or at a generic RFC 8693 endpoint.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Logs, Options, Probe, Stack, route_table};
use http::{HeaderMap, Request, StatusCode, header};
use serde_json::{Value, json};

const CLIENT_ID: &str = "a1b2c3d4-e5f6-7890-abcd-ef1234567890";
/// With characters form-encoding would change: Hugging Face documents `base64(client_id:client_secret)`
/// of the two as they are.
const CLIENT_SECRET: &str = "hf-app-s3cr3t+/=~";
const SCOPE: &str = "inference-api";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const USER_EMAIL: &str = "urn:huggingface:token-type:user-email";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";

// --- the token endpoint ---------------------------------------------------------------------------------

/// What the token endpoint does next; tests change it between steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Hugging Face's contract: members get a token, others `invalid_grant`.
    HuggingFace,
    /// Hugging Face refusing the OAuth app itself.
    InvalidClient,
    /// A 503 HTML page, as a load balancer gives.
    Down,
    /// A generic RFC 8693 server: any subject token gets a token.
    Rfc8693,
}

/// One request as the token endpoint received it.
#[derive(Debug, Clone)]
struct Call {
    content_type: String,
    authorization: Option<String>,
    body: String,
    form: Vec<(String, String)>,
}

impl Call {
    fn field(&self, name: &str) -> Option<&str> {
        self.form.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// The Basic credentials, decoded.
    fn basic(&self) -> Option<String> {
        let encoded = self.authorization.as_deref()?.strip_prefix("Basic ")?;
        String::from_utf8(STANDARD.decode(encoded).ok()?).ok()
    }
}

struct EndpointState {
    mode: Mutex<Mode>,
    members: Mutex<HashSet<String>>,
    expires_in: AtomicU64,
    delay: Mutex<Duration>,
    calls: Mutex<Vec<Call>>,
    /// Ways a request broke the documented contract (each also answered `invalid_request`).
    violations: Mutex<Vec<String>>,
    issued: AtomicU64,
}

struct TokenEndpoint {
    addr: SocketAddr,
    state: Arc<EndpointState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TokenEndpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TokenEndpoint {
    async fn start(mode: Mode, members: &[&str]) -> TokenEndpoint {
        let state = Arc::new(EndpointState {
            mode: Mutex::new(mode),
            members: Mutex::new(members.iter().map(|m| m.to_string()).collect()),
            expires_in: AtomicU64::new(28800),
            delay: Mutex::new(Duration::ZERO),
            calls: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
            issued: AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = Router::new().route("/oauth/token", post(token)).with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        TokenEndpoint { addr, state, task }
    }

    fn url(&self) -> String {
        format!("http://{}/oauth/token", self.addr)
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().expect("lock") = mode;
    }

    fn calls(&self) -> Vec<Call> {
        self.state.calls.lock().expect("lock").clone()
    }

    fn violations(&self) -> Vec<String> {
        self.state.violations.lock().expect("lock").clone()
    }
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = json!({"error": error, "error_description": description});
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// What the documented Hugging Face contract asks of a token-exchange request; every broken rule.
fn hugging_face_violations(call: &Call, raw_form: &[(String, String)]) -> Vec<String> {
    let mut broken = Vec::new();
    if call.content_type != "application/x-www-form-urlencoded" {
        broken.push(format!("content type {:?}", call.content_type));
    }
    let expected = format!("{CLIENT_ID}:{CLIENT_SECRET}");
    if call.basic().as_deref() != Some(expected.as_str()) {
        broken.push(format!("Authorization {:?} is not Basic base64(client_id:client_secret)", call.authorization));
    }
    let names: Vec<&str> = raw_form.iter().map(|(n, _)| n.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    if sorted != ["grant_type", "scope", "subject_token", "subject_token_type"] {
        broken.push(format!("form fields {names:?}"));
    }
    for (name, value) in [("grant_type", GRANT_TYPE), ("subject_token_type", USER_EMAIL), ("scope", SCOPE)] {
        if call.field(name) != Some(value) {
            broken.push(format!("{name} = {:?}", call.field(name)));
        }
    }
    if !call.field("subject_token").is_some_and(|email| email.contains('@')) {
        broken.push(format!("subject_token {:?} is not an email address", call.field("subject_token")));
    }
    broken
}

async fn token(State(state): State<Arc<EndpointState>>, headers: HeaderMap, body: Bytes) -> Response {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let call = Call {
        content_type: text(header::CONTENT_TYPE).unwrap_or_default(),
        authorization: text(header::AUTHORIZATION),
        body: String::from_utf8_lossy(&body).into_owned(),
        form: form.clone(),
    };
    state.calls.lock().expect("lock").push(call.clone());
    let delay = *state.delay.lock().expect("lock");
    tokio::time::sleep(delay).await;
    let mode = *state.mode.lock().expect("lock");
    let n = state.issued.fetch_add(1, Ordering::SeqCst) + 1;
    let expires_in = state.expires_in.load(Ordering::SeqCst);
    match mode {
        Mode::Down => {
            (StatusCode::SERVICE_UNAVAILABLE, [(header::CONTENT_TYPE, "text/html")], "<h1>503</h1>").into_response()
        }
        Mode::InvalidClient => oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client is not authorized to use token exchange, or the app is not bound to an organization",
        ),
        Mode::HuggingFace => {
            let broken = hugging_face_violations(&call, &form);
            if !broken.is_empty() {
                state.violations.lock().expect("lock").extend(broken.iter().cloned());
                return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", &broken.join("; "));
            }
            let email = call.field("subject_token").unwrap_or_default().to_string();
            if !state.members.lock().expect("lock").contains(&email) {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "User not found in the bound organization",
                );
            }
            let user: String =
                email.split('@').next().unwrap_or_default().chars().filter(char::is_ascii_alphanumeric).collect();
            json_reply(json!({
                "access_token": format!("hf_oauth_{user}_{n}"),
                "token_type": "bearer",
                "expires_in": expires_in,
                "scope": SCOPE,
                "issued_token_type": ACCESS_TOKEN,
            }))
        }
        Mode::Rfc8693 => json_reply(json!({
            "access_token": format!("exchanged-{n}"),
            "token_type": "Bearer",
            "expires_in": expires_in,
            "issued_token_type": ACCESS_TOKEN,
        })),
    }
}

fn json_reply(value: Value) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], value.to_string()).into_response()
}

// --- hfgate ---------------------------------------------------------------------------------------------

fn hugging_face_exchange(endpoint: &str) -> String {
    format!(
        r#"
[[exchange]]
name = "hf"
kind = "huggingface"
token_endpoint = "{endpoint}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
scope = "{SCOPE}"
"#
    )
}

/// A stack whose `/probe/` route forwards to a recording upstream with `credential = "exchange:hf"`;
/// `tables` holds the `[[exchange]]` (and anything else).
async fn stack_with(tables: &str) -> (Stack, Probe) {
    let probe = Probe::start().await;
    let tail = route_table("probe", "/probe/", probe.addr(), "credential = \"exchange:hf\"") + tables;
    (Stack::start_with(Options { tail, ..Options::default() }).await, probe)
}

/// A token of the development issuer for `sub`, with `email` (verified) when given.
fn token_for(stack: &Stack, sub: &str, email: Option<&str>) -> String {
    let mut claims = stack.issuer.claims(sub, &["ml-research"], Duration::from_secs(600));
    if let Some(email) = email {
        claims["email"] = json!(email);
        claims["email_verified"] = json!(true);
    }
    stack.issuer.mint(&claims)
}

/// The `Authorization` the upstream received for `target`.
fn upstream_authorization(probe: &Probe, target: &str) -> String {
    let log = probe.log();
    let seen =
        log.request(target).unwrap_or_else(|| panic!("{target} did not reach the upstream: {:#?}", log.requests));
    let values = seen.header_values("authorization");
    assert_eq!(values.len(), 1, "{values:?}");
    values[0].to_string()
}

/// The audit file as written, for "never appears" checks.
fn audit_text(stack: &Stack) -> String {
    stack.server.gateway.audit.flush();
    std::fs::read_to_string(stack.dir.join("audit.jsonl")).unwrap_or_default()
}

// --- kind = "huggingface" --------------------------------------------------------------------------------

/// The documented request, byte for byte; the upstream gets `Bearer hf_oauth_…` of that user; two users get
/// two tokens; the token is never in the audit, nor is the client secret.
#[tokio::test]
async fn each_user_reaches_the_upstream_with_their_own_hugging_face_token() {
    let hub = TokenEndpoint::start(Mode::HuggingFace, &["alice@acme.test", "bob@acme.test"]).await;
    let (stack, probe) = stack_with(&hugging_face_exchange(&hub.url())).await;

    let alice = stack.get("/probe/echo/alice", Some(&token_for(&stack, "alice", Some("alice@acme.test")))).await;
    assert_eq!(alice.status, StatusCode::OK, "{}", alice.text());
    let bob = stack.get("/probe/echo/bob", Some(&token_for(&stack, "bob", Some("bob@acme.test")))).await;
    assert_eq!(bob.status, StatusCode::OK, "{}", bob.text());
    assert!(hub.violations().is_empty(), "{:?}", hub.violations());

    let alice_auth = upstream_authorization(&probe, "/echo/alice");
    let bob_auth = upstream_authorization(&probe, "/echo/bob");
    assert!(alice_auth.starts_with("Bearer hf_oauth_alice_"), "{alice_auth}");
    assert!(bob_auth.starts_with("Bearer hf_oauth_bob_"), "{bob_auth}");
    assert_ne!(alice_auth, bob_auth);

    let calls = hub.calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    let first = &calls[0];
    assert_eq!(first.content_type, "application/x-www-form-urlencoded");
    assert_eq!(first.basic().as_deref(), Some(format!("{CLIENT_ID}:{CLIENT_SECRET}").as_str()));
    assert_eq!(
        first.body,
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token=alice%40acme.test\
         &subject_token_type=urn%3Ahuggingface%3Atoken-type%3Auser-email&scope=inference-api"
    );
    assert_eq!(calls[1].field("subject_token"), Some("bob@acme.test"));

    // Alice again: the cached token, no second exchange.
    let again = stack.get("/probe/echo/alice-again", Some(&token_for(&stack, "alice", Some("alice@acme.test")))).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(upstream_authorization(&probe, "/echo/alice-again"), alice_auth);
    assert_eq!(hub.calls().len(), 2);

    stack.audit_at_least(3).await;
    let audit = audit_text(&stack);
    assert!(!audit.contains("hf_oauth_"), "a token reached the audit:\n{audit}");
    assert!(!audit.contains(CLIENT_SECRET), "the client secret reached the audit:\n{audit}");
    let line = stack.audit_for_path("/probe/echo/alice").pop().expect("audit line");
    assert_eq!(line["status"], 200);
    assert_eq!(line["identity"]["email"], "alice@acme.test");
    assert_eq!(line["upstream"], format!("http://{}", probe.addr()));
}

/// Twenty requests of one user at once, while the exchange takes a while: one exchange, one token for all.
#[tokio::test]
async fn concurrent_requests_of_one_user_share_one_exchange() {
    let hub = TokenEndpoint::start(Mode::HuggingFace, &["alice@acme.test"]).await;
    *hub.state.delay.lock().expect("lock") = Duration::from_millis(300);
    let (stack, probe) = stack_with(&hugging_face_exchange(&hub.url())).await;
    let token = token_for(&stack, "alice", Some("alice@acme.test"));

    let mut requests = tokio::task::JoinSet::new();
    for i in 0..20 {
        let request = Request::get(stack.url(&format!("/probe/echo/c{i}")))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .body(Body::empty())
            .expect("request");
        let client = stack.client.clone();
        requests.spawn(async move { common::send(&client, request).await });
    }
    while let Some(reply) = requests.join_next().await {
        let reply = reply.expect("request task");
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(hub.calls().len(), 1, "one exchange for twenty concurrent requests");
    let tokens: HashSet<String> = (0..20).map(|i| upstream_authorization(&probe, &format!("/echo/c{i}"))).collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let request = Request::get(stack.admin_url("/metrics")).body(Body::empty()).expect("request");
    let metrics = common::send(&stack.client, request).await.text();
    assert!(metrics.contains("hfgate_credential_exchanges_total{exchange=\"hf\",result=\"issued\"} 1"), "{metrics}");
}

/// A token is reused until shortly before `expires_in`, then exchanged again.
#[tokio::test]
async fn a_cached_token_is_reused_until_shortly_before_it_expires() {
    let hub = TokenEndpoint::start(Mode::HuggingFace, &["alice@acme.test"]).await;
    hub.state.expires_in.store(2, Ordering::SeqCst);
    let (stack, probe) = stack_with(&hugging_face_exchange(&hub.url())).await;
    let token = token_for(&stack, "alice", Some("alice@acme.test"));

    assert_eq!(stack.get("/probe/echo/1", Some(&token)).await.status, StatusCode::OK);
    assert_eq!(stack.get("/probe/echo/2", Some(&token)).await.status, StatusCode::OK);
    assert_eq!(hub.calls().len(), 1);
    assert_eq!(upstream_authorization(&probe, "/echo/1"), upstream_authorization(&probe, "/echo/2"));

    // A 2 s token is refreshed a tenth of its life early: after 1.8 s.
    tokio::time::sleep(Duration::from_millis(1900)).await;
    assert_eq!(stack.get("/probe/echo/3", Some(&token)).await.status, StatusCode::OK);
    assert_eq!(hub.calls().len(), 2);
    let fresh = upstream_authorization(&probe, "/echo/3");
    assert_ne!(fresh, upstream_authorization(&probe, "/echo/1"));
    assert_eq!(stack.get("/probe/echo/4", Some(&token)).await.status, StatusCode::OK);
    assert_eq!(upstream_authorization(&probe, "/echo/4"), fresh);
    assert_eq!(hub.calls().len(), 2);
}

/// `invalid_grant` (not a member of the organisation) is a 403 that says so; nothing reaches the upstream.
#[tokio::test]
async fn a_user_outside_the_organisation_is_refused_naming_membership() {
    let hub = TokenEndpoint::start(Mode::HuggingFace, &["alice@acme.test"]).await;
    let (stack, probe) = stack_with(&hugging_face_exchange(&hub.url())).await;

    let reply = stack.get("/probe/echo/mallory", Some(&token_for(&stack, "mallory", Some("mallory@else.test")))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    let body = reply.json();
    assert_eq!(body["error"], "insufficient_scope");
    let description = body["error_description"].as_str().expect("description");
    assert!(description.contains("not a member of the organisation"), "{description}");
    assert!(description.contains("mallory@else.test") && description.contains("invalid_grant"), "{description}");
    assert!(reply.header("www-authenticate").contains("insufficient_scope"));
    assert!(probe.log().requests.is_empty());
    assert!(hub.violations().is_empty(), "{:?}", hub.violations());

    let line = stack.one_audit_line("/probe/echo/mallory").await;
    assert_eq!(line["status"], 403);
    assert_eq!(line["decision"]["allow"], false);
    assert_eq!(line["decision"]["reason"], "exchange_not_member");
    assert!(line["upstream"].is_null());
}

/// `invalid_client`: a 502 for the caller, and a warning for the operator that names the exchange and the
/// error code, never the secret.
#[tokio::test]
async fn a_refused_client_is_a_502_and_a_warning_for_the_operator() {
    let (logs, _guard) = Logs::capture();
    let hub = TokenEndpoint::start(Mode::InvalidClient, &["alice@acme.test"]).await;
    let (stack, probe) = stack_with(&hugging_face_exchange(&hub.url())).await;

    let reply = stack.get("/probe/echo/a", Some(&token_for(&stack, "alice", Some("alice@acme.test")))).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert_eq!(reply.json()["error"], "bad_gateway");
    let description = reply.json()["error_description"].as_str().expect("description").to_string();
    assert!(description.contains("credential exchange hf") && description.contains("invalid_client"), "{description}");
    assert!(probe.log().requests.is_empty());

    let line = logs
        .line(Duration::from_secs(5), |l| l.contains("WARN") && l.contains("invalid_client"))
        .await
        .unwrap_or_else(|| panic!("no operator warning:\n{}", logs.text()));
    assert!(line.contains("exchange=hf"), "{line}");
    assert!(line.contains(&hub.url()), "{line}");
    assert!(!logs.text().contains(CLIENT_SECRET), "the secret reached the logs:\n{}", logs.text());

    let audit = stack.one_audit_line("/probe/echo/a").await;
    assert_eq!(audit["status"], 502);
    let error = audit["error"].as_str().expect("audit error");
    assert!(error.contains("credential exchange hf") && error.contains("invalid_client"), "{error}");
    assert!(!audit_text(&stack).contains(CLIENT_SECRET));

    // Fixed at Hugging Face: the next request gets its token (a refusal of the client is not remembered).
    hub.set_mode(Mode::HuggingFace);
    let reply = stack.get("/probe/echo/b", Some(&token_for(&stack, "alice", Some("alice@acme.test")))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

/// The exchange needs an email: none (or one the IdP marks unverified) is a 403 that says so, and Hugging
/// Face is not asked.
#[tokio::test]
async fn a_caller_without_a_verified_email_is_refused() {
    let hub = TokenEndpoint::start(Mode::HuggingFace, &["alice@acme.test"]).await;
    let (stack, probe) = stack_with(&hugging_face_exchange(&hub.url())).await;

    let reply = stack.get("/probe/echo/none", Some(&token_for(&stack, "svc", None))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.json()["error"], "insufficient_scope");
    let description = reply.json()["error_description"].as_str().expect("description").to_string();
    assert!(description.contains("verified email"), "{description}");

    let mut claims = stack.issuer.claims("alice", &[], Duration::from_secs(600));
    claims["email"] = json!("alice@acme.test");
    claims["email_verified"] = json!(false);
    let unverified = stack.get("/probe/echo/unverified", Some(&stack.issuer.mint(&claims))).await;
    assert_eq!(unverified.status, StatusCode::FORBIDDEN, "{}", unverified.text());

    assert!(hub.calls().is_empty());
    assert!(probe.log().requests.is_empty());
    assert_eq!(stack.one_audit_line("/probe/echo/none").await["decision"]["reason"], "exchange_no_email");
}

/// The token endpoint refusing connections, or answering 503: a 502 naming the exchange, every time.
#[tokio::test]
async fn an_unreachable_token_endpoint_is_a_502() {
    let closed = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        listener.local_addr().expect("addr")
    };
    let hub = TokenEndpoint::start(Mode::Down, &["alice@acme.test"]).await;
    let tables = hugging_face_exchange(&format!("http://{closed}/oauth/token"))
        + &hugging_face_exchange(&hub.url()).replace("name = \"hf\"", "name = \"hf-down\"")
        + &route_table("down", "/down/", "127.0.0.1:9".parse().expect("addr"), "credential = \"exchange:hf-down\"");
    let (stack, probe) = stack_with(&tables).await;
    let token = token_for(&stack, "alice", Some("alice@acme.test"));

    for path in ["/probe/echo/1", "/probe/echo/2", "/down/echo/1"] {
        let reply = stack.get(path, Some(&token)).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{path}: {}", reply.text());
        assert_eq!(reply.json()["error"], "bad_gateway");
        let description = reply.json()["error_description"].as_str().expect("description").to_string();
        assert!(description.contains("is unavailable"), "{description}");
        let line = stack.one_audit_line(path).await;
        assert_eq!(line["decision"]["reason"], "exchange_unavailable");
    }
    assert_eq!(hub.calls().len(), 1);
    assert!(stack.one_audit_line("/down/echo/1").await["error"].as_str().expect("error").contains("503"));
    assert!(probe.log().requests.is_empty());
}

/// A token endpoint that accepts the connection and never answers: a 504 after hfgate's 10 s limit.
#[tokio::test]
async fn a_silent_token_endpoint_is_a_504() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            sockets.push(socket);
        }
    });
    let (stack, _probe) = stack_with(&hugging_face_exchange(&format!("http://{addr}/oauth/token"))).await;
    let started = Instant::now();
    let reply = stack.get("/probe/echo/slow", Some(&token_for(&stack, "alice", Some("alice@acme.test")))).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT, "{}", reply.text());
    assert_eq!(reply.json()["error"], "gateway_timeout");
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
    assert_eq!(stack.one_audit_line("/probe/echo/slow").await["decision"]["reason"], "exchange_timeout");
    held.abort();
}

/// An upstream that stops taking the exchanged token (revoked at Hugging Face): once the token has been in
/// use a few seconds, a 401 drops it and the next request exchanges again.
#[tokio::test]
async fn a_token_the_upstream_refuses_is_exchanged_again() {
    let hub = TokenEndpoint::start(Mode::HuggingFace, &["alice@acme.test"]).await;
    let refused = Arc::new(Mutex::new(Vec::<String>::new()));
    let upstream = {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = refused.clone();
        let router = Router::new().route(
            "/{*path}",
            get(move |headers: HeaderMap| {
                let seen = seen.clone();
                async move {
                    let auth =
                        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    seen.lock().expect("lock").push(auth.clone());
                    if auth.ends_with("_1") { StatusCode::UNAUTHORIZED } else { StatusCode::OK }
                }
            }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        addr
    };
    let tables = hugging_face_exchange(&hub.url())
        + &route_table("revoking", "/revoking/", upstream, "credential = \"exchange:hf\"");
    let (stack, _probe) = stack_with(&tables).await;
    let token = token_for(&stack, "alice", Some("alice@acme.test"));

    assert_eq!(stack.get("/revoking/a", Some(&token)).await.status, StatusCode::UNAUTHORIZED);
    // Young tokens are kept: an upstream refusing every token must not turn each request into an exchange.
    assert_eq!(stack.get("/revoking/b", Some(&token)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(hub.calls().len(), 1);
    tokio::time::sleep(hfgate::exchange::MIN_AGE_BEFORE_FORGET + Duration::from_millis(100)).await;
    assert_eq!(stack.get("/revoking/c", Some(&token)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(stack.get("/revoking/d", Some(&token)).await.status, StatusCode::OK);
    assert_eq!(hub.calls().len(), 2);
    let seen = refused.lock().expect("lock").clone();
    assert_eq!(
        seen,
        ["Bearer hf_oauth_alice_1", "Bearer hf_oauth_alice_1", "Bearer hf_oauth_alice_1", "Bearer hf_oauth_alice_2"]
    );
}

// --- kind = "rfc8693" and browser sessions ---------------------------------------------------------------

const SESSION_KEY: [u8; 32] = [0x24; 32];

fn rfc8693_exchange(endpoint: &str, secret: Option<&str>) -> String {
    let secret = secret.map(|s| format!("client_secret = \"{s}\"\n")).unwrap_or_default();
    format!(
        r#"
[[exchange]]
name = "hf"
kind = "rfc8693"
token_endpoint = "{endpoint}"
client_id = "gate client"
{secret}audience = "https://models.example"
resource = "https://models.example/v1"
scope = "models.read"
"#
    )
}

/// `[login]` with a fixed cookie key, so a test can seal a session of its own.
fn login_table() -> String {
    format!(
        "\n[login]\nissuer = \"dev\"\nclient_id = \"web\"\nclient_secret = \"web-secret\"\ncookie_keys = [\"{}\"]\n",
        STANDARD.encode(SESSION_KEY)
    )
}

/// A live session cookie for `subject` with `email`.
fn session_cookie(stack: &Stack, subject: &str, email: &str) -> String {
    let now = hfgate::jose::unix_now();
    let session = hfgate::authn::session::Session {
        id: format!("exchange-test-{subject}"),
        subject: subject.into(),
        email: Some(email.into()),
        groups: vec!["ml-research".into()],
        started: now,
        seen: now,
        claims_expire: now + 600,
        refresh_token: None,
    };
    let signin = stack.server.gateway.signin.as_ref().expect("sign-in configured");
    format!("hfgate={}", signin.seal_session(&session).expect("sealed"))
}

async fn get_with_cookie(stack: &Stack, path: &str, cookie: &str) -> common::Reply {
    let request = Request::get(stack.url(path)).header(header::COOKIE, cookie).body(Body::empty()).expect("request");
    stack.send(request).await
}

/// The caller's own bearer token is exchanged (`subject_token`, access-token type, audience, resource and
/// scope; client_secret_basic), and the upstream gets the issued token; one exchange per caller token.
#[tokio::test]
async fn rfc8693_exchanges_the_callers_token_for_the_upstreams() {
    let idp = TokenEndpoint::start(Mode::Rfc8693, &[]).await;
    let (stack, probe) = stack_with(&(rfc8693_exchange(&idp.url(), Some("s3cret&+")) + &login_table())).await;
    let alice = token_for(&stack, "alice", None);
    let bob = token_for(&stack, "bob", None);

    assert_eq!(stack.get("/probe/echo/a1", Some(&alice)).await.status, StatusCode::OK);
    assert_eq!(stack.get("/probe/echo/a2", Some(&alice)).await.status, StatusCode::OK);
    assert_eq!(stack.get("/probe/echo/b1", Some(&bob)).await.status, StatusCode::OK);
    let calls = idp.calls();
    assert_eq!(calls.len(), 2, "{calls:#?}");
    let form: BTreeMap<&str, &str> = calls[0].form.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    assert_eq!(
        form,
        BTreeMap::from([
            ("grant_type", GRANT_TYPE),
            ("subject_token", alice.as_str()),
            ("subject_token_type", ACCESS_TOKEN),
            ("audience", "https://models.example"),
            ("resource", "https://models.example/v1"),
            ("scope", "models.read"),
        ])
    );
    assert_eq!(calls[0].content_type, "application/x-www-form-urlencoded");
    // RFC 6749 §2.3.1: client_secret_basic form-encodes both parts before base64.
    assert_eq!(calls[0].basic().as_deref(), Some("gate+client:s3cret%26%2B"));
    assert_eq!(calls[1].field("subject_token"), Some(bob.as_str()));

    let a1 = upstream_authorization(&probe, "/echo/a1");
    assert!(a1.starts_with("Bearer exchanged-"), "{a1}");
    assert_eq!(upstream_authorization(&probe, "/echo/a2"), a1);
    assert_ne!(upstream_authorization(&probe, "/echo/b1"), a1);
    stack.audit_at_least(3).await;
    assert!(!audit_text(&stack).contains("exchanged-"));

    // A browser session has no token to exchange.
    let reply =
        get_with_cookie(&stack, "/probe/echo/session", &session_cookie(&stack, "carol", "carol@acme.test")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    let description = reply.json()["error_description"].as_str().expect("description").to_string();
    assert!(description.contains("browser session"), "{description}");
    assert_eq!(idp.calls().len(), 2);
}

/// A public client (no secret) sends its client_id in the form instead of Basic auth.
#[tokio::test]
async fn rfc8693_public_clients_send_their_id_in_the_form() {
    let idp = TokenEndpoint::start(Mode::Rfc8693, &[]).await;
    let (stack, probe) = stack_with(&rfc8693_exchange(&idp.url(), None)).await;
    assert_eq!(stack.get("/probe/echo/p", Some(&token_for(&stack, "alice", None))).await.status, StatusCode::OK);
    let call = idp.calls().pop().expect("one call");
    assert_eq!(call.authorization, None);
    assert_eq!(call.field("client_id"), Some("gate client"));
    assert!(upstream_authorization(&probe, "/echo/p").starts_with("Bearer exchanged-"));
}

/// A person signed in with a browser session gets a Hugging Face token in the name of the session's email.
#[tokio::test]
async fn browser_sessions_get_a_hugging_face_token_for_their_email() {
    let hub = TokenEndpoint::start(Mode::HuggingFace, &["carol@acme.test"]).await;
    let (stack, probe) = stack_with(&(hugging_face_exchange(&hub.url()) + &login_table())).await;
    let reply = get_with_cookie(&stack, "/probe/echo/carol", &session_cookie(&stack, "carol", "carol@acme.test")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(upstream_authorization(&probe, "/echo/carol").starts_with("Bearer hf_oauth_carol_"));
    assert!(hub.violations().is_empty(), "{:?}", hub.violations());
}

/// `issuers = [...]` limits whose callers an exchange serves: another issuer's caller (whose email the
/// organisation may not vouch for) is refused before the token endpoint is asked; an unknown name is a
/// config error.
#[tokio::test]
async fn an_exchange_serves_only_the_issuers_it_names() {
    let hub = TokenEndpoint::start(Mode::HuggingFace, &["alice@acme.test"]).await;
    let partner = common::ScriptedIdp::start("127.0.0.2").await;
    let tables = hugging_face_exchange(&hub.url()).replace("scope =", "issuers = [\"partner\"]\nscope =")
        + &format!("\n[[issuer]]\nname = \"partner\"\nissuer = \"{}\"\naudiences = [\"hfgate\"]\n", partner.issuer());
    let (stack, probe) = stack_with(&tables).await;
    let reply = stack.get("/probe/echo/alice", Some(&token_for(&stack, "alice", Some("alice@acme.test")))).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert!(reply.description().contains("serves callers of issuer partner only"), "{}", reply.text());
    assert!(hub.calls().is_empty(), "the token endpoint was asked");
    assert!(probe.log().requests.is_empty());

    let text = hugging_face_exchange(&hub.url()).replace("scope =", "issuers = [\"nobody\"]\nscope =");
    let config = format!("[[issuer]]\nname = \"corp\"\nissuer = \"https://idp.example\"\naudiences = [\"a\"]\n{text}");
    let err = hfgate::config::parse(std::path::Path::new("x.toml"), &config).expect_err("unknown issuer");
    assert!(err.to_string().contains("exchange[0].issuers: no [[issuer]] named \"nobody\""), "{err}");
}
