//! Opaque access tokens: hfgate in front of loopback identity providers that introspect tokens (RFC 7662,
//! client authentication basic or post, form fields checked) or answer at a userinfo endpoint shaped like
//! Hugging Face's (`orgs[]` with `roleInOrg`). Active answers reach the upstream as the user, inactive,
//! expired and foreign ones are refused naming the check, answers are cached (positive until `exp` and at
//! most `cache`, negative for `negative_cache`), one call serves concurrent requests, and a provider that is
//! down, hangs or answers garbage is a 503 that names it and is not remembered.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use common::{Gate, Probe, Reply, route_table, temp_dir};
use hfgate::jose::{Algorithm, SigningKey, unix_now};
use http::{HeaderMap, Request, StatusCode, header};
use serde_json::{Value, json};

const CLIENT_ID: &str = "hfgate";
const CLIENT_SECRET: &str = "s3cret";

// --- the identity provider ------------------------------------------------------------------------------

/// How the provider expects hfgate to authenticate at its introspection endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Basic,
    Post,
}

/// What the introspection and userinfo endpoints do next.
#[derive(Debug, Clone)]
enum Mode {
    Normal,
    /// This status with a plain-text body.
    Status(u16),
    /// 200 with an HTML page.
    Garbage,
    /// 200 with this JSON document, whatever the token.
    Json(Value),
    /// Never answers.
    Hang,
}

struct IdpState {
    issuer: String,
    key: SigningKey,
    expect: Expect,
    /// Discovery's `introspection_endpoint`, when not the provider's own.
    introspection_endpoint: Mutex<Option<String>>,
    /// Token → the claims of an active answer; any other token is inactive.
    tokens: Mutex<HashMap<String, Value>>,
    mode: Mutex<Mode>,
    delay: Mutex<Duration>,
    /// (endpoint, token) of every call: `discovery`, `introspect`, `userinfo`.
    calls: Mutex<Vec<(&'static str, String)>>,
    /// Requests that broke the protocol (wrong client authentication, missing form fields...).
    violations: Mutex<Vec<String>>,
}

/// A loopback provider. Stopping it closes every connection it holds, so hfgate meets a refused connection.
struct Idp {
    addr: SocketAddr,
    state: Arc<IdpState>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Idp {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Idp {
    async fn start(expect: Expect) -> Idp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind provider");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(IdpState {
            issuer: format!("http://{addr}"),
            key: SigningKey::generate(Algorithm::ES256).expect("key"),
            expect,
            introspection_endpoint: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            mode: Mutex::new(Mode::Normal),
            delay: Mutex::new(Duration::ZERO),
            calls: Mutex::new(Vec::new()),
            violations: Mutex::new(Vec::new()),
        });
        let idp = Idp { addr, state, task: Mutex::new(None) };
        idp.listen(listener);
        idp
    }

    fn listen(&self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/introspect", post(introspect))
            .route("/oauth/userinfo", get(userinfo))
            .with_state(self.state.clone());
        let task = tokio::spawn(async move {
            // Connections live in this set: aborting the task closes them all.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let service = hyper_util::service::TowerToHyperService::new(app.clone());
                connections.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        *self.task.lock().expect("lock") = Some(task);
    }

    fn stop(&self) {
        if let Some(task) = self.task.lock().expect("lock").take() {
            task.abort();
        }
    }

    async fn restart(&self) {
        self.stop();
        self.listen(common::rebind(self.addr).await);
    }

    fn issuer(&self) -> &str {
        &self.state.issuer
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.state.issuer)
    }

    /// Makes `token` active with these claims (merged into the answer).
    fn grant(&self, token: &str, claims: Value) {
        self.state.tokens.lock().expect("lock").insert(token.to_string(), claims);
    }

    fn revoke(&self, token: &str) {
        self.state.tokens.lock().expect("lock").remove(token);
    }

    fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().expect("lock") = mode;
    }

    fn set_delay(&self, delay: Duration) {
        *self.state.delay.lock().expect("lock") = delay;
    }

    /// Calls to `endpoint` about `token` (any token when `None`).
    fn calls(&self, endpoint: &str, token: Option<&str>) -> usize {
        let calls = self.state.calls.lock().expect("lock");
        calls.iter().filter(|(e, t)| *e == endpoint && token.is_none_or(|token| token == t)).count()
    }

    fn violations(&self) -> Vec<String> {
        self.state.violations.lock().expect("lock").clone()
    }

    /// Introspection claims of an ordinary active token for `sub`.
    fn claims(&self, sub: &str, groups: &[&str]) -> Value {
        let now = unix_now();
        json!({
            "sub": sub, "email": format!("{sub}@acme.example"), "groups": groups, "scope": "models:read models:write",
            "aud": ["hfgate", "other"], "iss": self.issuer(), "client_id": "cli", "token_type": "Bearer",
            "iat": now, "exp": now + 600,
        })
    }

    /// A JWT access token of this issuer, signed with its published key.
    fn jwt(&self, sub: &str) -> String {
        let now = unix_now();
        let claims = json!({"iss": self.issuer(), "aud": "hfgate", "sub": sub, "iat": now, "exp": now + 600});
        self.state.key.sign_jwt(&json!({"typ": "at+jwt"}), &claims).expect("sign")
    }
}

async fn discovery(State(s): State<Arc<IdpState>>) -> Response {
    s.calls.lock().expect("lock").push(("discovery", String::new()));
    let introspection =
        s.introspection_endpoint.lock().expect("lock").clone().unwrap_or_else(|| format!("{}/introspect", s.issuer));
    axum::Json(json!({
        "issuer": s.issuer,
        "jwks_uri": format!("{}/jwks", s.issuer),
        "introspection_endpoint": introspection,
        "userinfo_endpoint": format!("{}/oauth/userinfo", s.issuer),
        "response_types_supported": ["code"],
    }))
    .into_response()
}

async fn jwks(State(s): State<Arc<IdpState>>) -> Response {
    axum::Json(json!({"keys": [s.key.public_jwk()]})).into_response()
}

/// The scripted failure modes, or `None` to answer normally (after the configured delay).
async fn scripted(s: &IdpState) -> Option<Response> {
    let delay = *s.delay.lock().expect("lock");
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    let mode = s.mode.lock().expect("lock").clone();
    match mode {
        Mode::Normal => None,
        Mode::Status(code) => {
            let status = StatusCode::from_u16(code).expect("status");
            Some((status, "the provider is having a bad day").into_response())
        }
        Mode::Garbage => Some(([(header::CONTENT_TYPE, "text/html")], "<html>maintenance</html>").into_response()),
        Mode::Json(doc) => Some(axum::Json(doc).into_response()),
        Mode::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            None
        }
    }
}

fn oauth_error(status: StatusCode, error: &str) -> Response {
    (status, axum::Json(json!({"error": error}))).into_response()
}

/// RFC 7662 §2.1: a form POST with `token` (and here `token_type_hint=access_token`), from an authenticated
/// client. §2.2: `{"active": false}` for anything the provider does not vouch for.
async fn introspect(State(s): State<Arc<IdpState>>, headers: HeaderMap, body: String) -> Response {
    let violation = |status: StatusCode, error: &str, what: String| {
        s.violations.lock().expect("lock").push(what);
        oauth_error(status, error)
    };
    if headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) != Some("application/x-www-form-urlencoded") {
        return violation(StatusCode::BAD_REQUEST, "invalid_request", "not a form".into());
    }
    let fields: Vec<(String, String)> = serde_urlencoded::from_str(&body).expect("form");
    let mut form: HashMap<String, String> = HashMap::new();
    for (name, value) in fields {
        if form.insert(name.clone(), value).is_some() {
            return violation(StatusCode::BAD_REQUEST, "invalid_request", format!("{name} sent twice"));
        }
    }
    let field = |name: &str| form.get(name).map(String::as_str);
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match s.expect {
        Expect::Basic => {
            let expected = format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
            if authorization != Some(expected.as_str()) || field("client_secret").is_some() {
                return violation(StatusCode::UNAUTHORIZED, "invalid_client", "client_secret_basic expected".into());
            }
        }
        Expect::Post => {
            if authorization.is_some()
                || field("client_id") != Some(CLIENT_ID)
                || field("client_secret") != Some(CLIENT_SECRET)
            {
                return violation(StatusCode::UNAUTHORIZED, "invalid_client", "client_secret_post expected".into());
            }
        }
    }
    if field("token_type_hint") != Some("access_token") {
        return violation(StatusCode::BAD_REQUEST, "invalid_request", "token_type_hint access_token expected".into());
    }
    let Some(token) = field("token").filter(|t| !t.is_empty()).map(str::to_string) else {
        return violation(StatusCode::BAD_REQUEST, "invalid_request", "no token".into());
    };
    s.calls.lock().expect("lock").push(("introspect", token.clone()));
    if let Some(reply) = scripted(&s).await {
        return reply;
    }
    let known = s.tokens.lock().expect("lock").get(&token).cloned();
    match known {
        Some(Value::Object(mut claims)) => {
            claims.insert("active".into(), Value::Bool(true));
            axum::Json(Value::Object(claims)).into_response()
        }
        _ => axum::Json(json!({"active": false})).into_response(),
    }
}

/// OpenID Connect Core §5.3: the claims of the token's user, or 401 with an RFC 6750 challenge.
async fn userinfo(State(s): State<Arc<IdpState>>, headers: HeaderMap) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let Some(token) = authorization.strip_prefix("Bearer ").map(str::to_string) else {
        s.violations.lock().expect("lock").push("userinfo without a bearer token".into());
        return StatusCode::UNAUTHORIZED.into_response();
    };
    s.calls.lock().expect("lock").push(("userinfo", token.clone()));
    if let Some(reply) = scripted(&s).await {
        return reply;
    }
    let known = s.tokens.lock().expect("lock").get(&token).cloned();
    match known {
        Some(claims) => axum::Json(claims).into_response(),
        None => {
            let challenge = "Bearer error=\"invalid_token\", error_description=\"Invalid access token\"";
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)]).into_response()
        }
    }
}

/// A Hugging Face userinfo answer, as `huggingface.js` documents `UserInfo` (`orgs[]` with `roleInOrg`).
fn hugging_face_user(sub: &str, username: &str, orgs: &[(&str, &str)]) -> Value {
    let orgs: Vec<Value> = orgs
        .iter()
        .enumerate()
        .map(|(i, (org, role))| {
            json!({
                "sub": format!("6000000000000000000000{i:02}"), "name": format!("{org} Inc."), "preferred_username": org,
                "picture": format!("https://cdn-avatars.huggingface.co/{org}.png"), "isEnterprise": true,
                "canPay": true, "roleInOrg": role, "missingMFA": false, "pendingSSO": false,
            })
        })
        .collect();
    json!({
        "sub": sub, "name": format!("{username} Example"), "preferred_username": username,
        "profile": format!("https://huggingface.co/{username}"), "picture": "https://cdn-avatars.huggingface.co/u.png",
        "email": format!("{username}@acme.example"), "email_verified": true, "isPro": false, "orgs": orgs,
    })
}

// --- hfgate ---------------------------------------------------------------------------------------------

/// An `[[issuer]]` table for `idp` checking opaque tokens with `check` (`introspection = {...}` or
/// `userinfo = {...}`).
fn issuer_table(name: &str, issuer: &str, check: &str, extra: &str) -> String {
    format!("\n[[issuer]]\nname = \"{name}\"\nissuer = \"{issuer}\"\naudiences = [\"hfgate\"]\n{check}\n{extra}\n")
}

/// `introspection = {...}` with basic or post client authentication, and the endpoint when given.
fn introspection(idp: &Idp, endpoint: bool, caches: &str) -> String {
    let auth = if idp.state.expect == Expect::Basic { "basic" } else { "post" };
    let endpoint = if endpoint { format!("endpoint = \"{}\", ", idp.url("/introspect")) } else { String::new() };
    format!(
        "introspection = {{ {endpoint}client_id = \"{CLIENT_ID}\", client_secret = \"{CLIENT_SECRET}\", auth = \"{auth}\"{caches} }}"
    )
}

/// hfgate with these issuers, a `/probe/` route to a recording upstream, and `extra` tables.
async fn gate(issuers: &str, extra: &str) -> (Gate, Probe) {
    let probe = Probe::start().await;
    let dir = temp_dir("opaque");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[audit]\npath = \"{audit}\"\n{issuers}{route}{extra}",
        audit = dir.join("audit.jsonl").display(),
        route = route_table("probe", "/probe/", probe.addr(), ""),
    );
    (Gate::start(dir, &text).await, probe)
}

/// hfgate with one introspecting issuer named `corp` (endpoint from discovery) and these cache settings.
async fn corp_gate(idp: &Idp, caches: &str) -> (Gate, Probe) {
    gate(&issuer_table("corp", idp.issuer(), &introspection(idp, false, caches), ""), "").await
}

async fn concurrently(gate: &Gate, requests: Vec<(String, String)>) -> Vec<Reply> {
    let tasks: Vec<_> = requests
        .into_iter()
        .map(|(path, token)| {
            let client = gate.client.clone();
            let url = gate.url(&path);
            tokio::spawn(async move {
                let request = Request::get(url)
                    .header("authorization", format!("Bearer {token}"))
                    .body(Body::empty())
                    .expect("request");
                common::send(&client, request).await
            })
        })
        .collect();
    let mut replies = Vec::new();
    for task in tasks {
        replies.push(task.await.expect("request task"));
    }
    replies
}

fn audit_for(gate: &Gate, path: &str) -> Vec<Value> {
    gate.audit().into_iter().filter(|l| l["path"] == path).collect()
}

// --- introspection --------------------------------------------------------------------------------------

/// An active token reaches the upstream as its user; the endpoint comes from discovery (fetched once), the
/// token never reaches the upstream, and the audit names the user and the issuer.
#[tokio::test]
async fn an_active_token_reaches_the_upstream_as_its_user() {
    let idp = Idp::start(Expect::Basic).await;
    idp.grant("2YotnFZFEjr1zCsicMWpAA", idp.claims("alice", &["ml-research", "ops"]));
    idp.grant("tGzv3JOkF0XG5Qx2TlKWIA", idp.claims("bob", &[]));
    let (gate, probe) = corp_gate(&idp, "").await;

    let reply = gate.get("/probe/echo/alice", Some("2YotnFZFEjr1zCsicMWpAA")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let log = probe.log();
    let seen = log.request("/echo/alice").expect("reached the upstream");
    assert_eq!(seen.header_values("x-forwarded-user"), ["alice"]);
    assert_eq!(seen.header_values("x-forwarded-email"), ["alice@acme.example"]);
    assert_eq!(seen.header_values("x-forwarded-groups"), ["ml-research,ops"]);
    assert!(
        seen.headers.iter().all(|(_, v)| !v.contains("2YotnFZFEjr1zCsicMWpAA")),
        "the caller's token reached the upstream: {:?}",
        seen.headers
    );
    // The key loader reads the discovery document too; the opaque check reads it once, for the first token.
    let discovery_fetches = idp.calls("discovery", None);
    assert_eq!(gate.get("/probe/echo/bob", Some("tGzv3JOkF0XG5Qx2TlKWIA")).await.status, StatusCode::OK);
    assert_eq!(idp.calls("discovery", None), discovery_fetches, "the discovered endpoint is remembered");

    let line = audit_for(&gate, "/probe/echo/alice").pop().expect("audit line");
    assert_eq!(line["status"], 200);
    assert_eq!(line["identity"]["subject"], "alice");
    assert_eq!(line["identity"]["issuer"], idp.issuer());
    assert_eq!(line["identity"]["email"], "alice@acme.example");
    assert_eq!(line["identity"]["client_id"], "cli");
    assert_eq!(idp.calls("introspect", None), 2);
    assert_eq!(idp.violations(), Vec::<String>::new());
    let text = std::fs::read_to_string(gate.dir.join("audit.jsonl")).expect("audit");
    assert!(!text.contains("2YotnFZFEjr1zCsicMWpAA"), "the audit holds a token");
}

/// The answer's `scope` (and every other claim) is there for policies, as principal tags.
#[tokio::test]
async fn the_scope_of_an_answer_is_available_to_policies() {
    let idp = Idp::start(Expect::Basic).await;
    idp.grant("writer-token", idp.claims("writer", &[]));
    let mut reader = idp.claims("reader", &[]);
    reader["scope"] = json!("models:read");
    idp.grant("reader-token", reader);
    let dir = temp_dir("opaque-policy");
    let policy = "@id(\"writers\")\npermit (principal, action, resource) when {\n  principal.hasTag(\"scope\") && principal.getTag(\"scope\") like \"*models:write*\"\n};\n";
    let file = dir.join("policies.cedar");
    std::fs::write(&file, policy).expect("policy");
    let authz = format!("\n[authz]\npolicy_file = \"{}\"\n", file.display());
    let (gate, _probe) = gate(&issuer_table("corp", idp.issuer(), &introspection(&idp, true, ""), ""), &authz).await;
    assert_eq!(gate.get("/probe/echo/w", Some("writer-token")).await.status, StatusCode::OK);
    assert_eq!(gate.get("/probe/echo/r", Some("reader-token")).await.status, StatusCode::FORBIDDEN);
}

/// client_secret_post, and several opaque issuers asked in configuration order: the first that says active
/// decides; a token nobody vouches for is refused naming every issuer asked.
#[tokio::test]
async fn issuers_are_asked_in_order_with_basic_or_post_client_authentication() {
    let corp = Idp::start(Expect::Basic).await;
    let partner = Idp::start(Expect::Post).await;
    corp.grant("corp-token", corp.claims("alice", &[]));
    partner.grant("partner-token", partner.claims("pat", &["partners"]));
    let issuers = issuer_table("corp", corp.issuer(), &introspection(&corp, true, ""), "")
        + &issuer_table("partner", partner.issuer(), &introspection(&partner, true, ""), "");
    let (gate, probe) = gate(&issuers, "").await;

    let reply = gate.get("/probe/echo/partner", Some("partner-token")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(probe.log().request("/echo/partner").expect("forwarded").header_values("x-forwarded-user"), ["pat"]);
    let line = audit_for(&gate, "/probe/echo/partner").pop().expect("audit line");
    assert_eq!(line["identity"]["issuer"], partner.issuer());
    assert_eq!((corp.calls("introspect", Some("partner-token")), partner.calls("introspect", None)), (1, 1));

    assert_eq!(gate.get("/probe/echo/corp", Some("corp-token")).await.status, StatusCode::OK);
    assert_eq!(partner.calls("introspect", Some("corp-token")), 0, "the first active answer decides");

    let nobody = gate.get("/probe/echo/nobody", Some("unknown-token")).await;
    assert_eq!(nobody.status, StatusCode::UNAUTHORIZED);
    assert_eq!(nobody.description(), "token is not active according to issuers corp and partner");
    assert_eq!(corp.violations(), Vec::<String>::new());
    assert_eq!(partner.violations(), Vec::<String>::new());
}

/// `active: false` is a 401 naming it, remembered for `negative_cache` and asked again after.
#[tokio::test]
async fn an_inactive_token_is_refused_and_remembered_briefly() {
    let idp = Idp::start(Expect::Basic).await;
    let (gate, _probe) = corp_gate(&idp, ", negative_cache = \"1s\"").await;

    let first = gate.get("/probe/echo/1", Some("revoked-token")).await;
    assert_eq!(first.status, StatusCode::UNAUTHORIZED);
    assert_eq!(first.description(), "token is not active according to issuer corp");
    let line = audit_for(&gate, "/probe/echo/1").pop().expect("audit line");
    assert_eq!(line["decision"]["reason"], "inactive");
    let again = gate.get("/probe/echo/2", Some("revoked-token")).await;
    assert_eq!(again.status, StatusCode::UNAUTHORIZED);
    assert_eq!(idp.calls("introspect", Some("revoked-token")), 1, "the negative answer is remembered");

    tokio::time::sleep(Duration::from_millis(1200)).await;
    idp.grant("revoked-token", idp.claims("alice", &[]));
    assert_eq!(gate.get("/probe/echo/3", Some("revoked-token")).await.status, StatusCode::OK);
    assert_eq!(idp.calls("introspect", Some("revoked-token")), 2, "asked again after negative_cache");
}

/// Active answers that fail a check are refused naming it: `exp`, `aud`, `iss`, `sub`, `token_type`, and the
/// issuer's `require`.
#[tokio::test]
async fn active_answers_are_checked_and_each_refusal_names_its_check() {
    let idp = Idp::start(Expect::Basic).await;
    let with = |token: &str, change: &dyn Fn(&mut Value)| {
        let mut claims = idp.claims("alice", &[]);
        change(&mut claims);
        idp.grant(token, claims);
    };
    with("expired-token", &|c| c["exp"] = json!(unix_now() - 3600));
    with("foreign-aud-token", &|c| c["aud"] = json!("someone-else"));
    with("foreign-iss-token", &|c| c["iss"] = json!("https://evil.example"));
    with("no-sub-token", &|c| {
        c.as_object_mut().expect("object").remove("sub");
    });
    with("refresh-token", &|c| c["token_type"] = json!("refresh_token"));
    with("wrong-client-token", &|c| c["client_id"] = json!("intruder"));
    let require = "require = { client_id = \"cli\" }";
    let issuers = issuer_table("corp", idp.issuer(), &introspection(&idp, false, ""), require);
    let (gate, probe) = gate(&issuers, "").await;

    for (token, expected) in [
        ("expired-token", "token expired 3600s ago (leeway 60s)"),
        ("foreign-aud-token", "aud mismatch: expected one of [hfgate]"),
        ("foreign-iss-token", &format!("iss is not a configured issuer: expected one of [{}]", idp.issuer())),
        ("no-sub-token", "missing sub claim"),
        ("refresh-token", "token_type refresh_token is not an access token"),
        (
            "wrong-client-token",
            "claim client_id is 'intruder' and does not satisfy issuer corp's require: expected one of [cli]",
        ),
    ] {
        let reply = gate.get(&format!("/probe/echo/{token}"), Some(token)).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{token}: {}", reply.text());
        assert_eq!(reply.description(), expected, "{token}");
    }
    // A refusal is remembered like an inactive answer.
    assert_eq!(gate.get("/probe/echo/again", Some("expired-token")).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(idp.calls("introspect", Some("expired-token")), 1);
    assert!(probe.log().requests.is_empty(), "nothing refused reached the upstream");
}

/// Twenty concurrent requests presenting one new token cost one introspection call.
#[tokio::test]
async fn concurrent_requests_with_one_new_token_share_one_introspection() {
    let idp = Idp::start(Expect::Basic).await;
    idp.grant("busy-token", idp.claims("alice", &[]));
    idp.set_delay(Duration::from_millis(300));
    let (gate, _probe) = corp_gate(&idp, "").await;

    let requests = (0..20).map(|i| (format!("/probe/echo/{i}"), "busy-token".to_string())).collect();
    let replies = concurrently(&gate, requests).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(idp.calls("introspect", Some("busy-token")), 1);

    // The same holds for a token the provider refuses.
    let requests = (0..20).map(|i| (format!("/probe/echo/no-{i}"), "bogus-token".to_string())).collect();
    for reply in concurrently(&gate, requests).await {
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(idp.calls("introspect", Some("bogus-token")), 1);
    // One call each, counted as what the issuer said.
    let metrics = gate.metrics().await;
    assert!(metrics.contains("hfgate_opaque_checks_total{issuer=\"corp\",result=\"active\"} 1"), "{metrics}");
    assert!(metrics.contains("hfgate_opaque_checks_total{issuer=\"corp\",result=\"inactive\"} 1"), "{metrics}");
}

/// An active answer is cached until the token's `exp`, and never longer than `cache`.
#[tokio::test]
async fn active_answers_are_cached_until_exp_and_at_most_cache() {
    let idp = Idp::start(Expect::Basic).await;
    let mut short = idp.claims("short", &[]);
    short["exp"] = json!(unix_now() + 2);
    idp.grant("short-lived-token", short);
    idp.grant("long-lived-token", idp.claims("long", &[]));
    let (gate, _probe) = corp_gate(&idp, ", cache = \"4s\"").await;
    let started = Instant::now();

    for token in ["short-lived-token", "long-lived-token"] {
        for _ in 0..2 {
            assert_eq!(gate.get("/probe/echo", Some(token)).await.status, StatusCode::OK);
        }
        assert_eq!(idp.calls("introspect", Some(token)), 1, "{token} is cached");
    }

    // Past the short token's exp: the provider is asked again (and now says it is gone).
    tokio::time::sleep(Duration::from_millis(2600).saturating_sub(started.elapsed())).await;
    idp.revoke("short-lived-token");
    let gone = gate.get("/probe/echo", Some("short-lived-token")).await;
    assert_eq!(gone.status, StatusCode::UNAUTHORIZED);
    assert_eq!(idp.calls("introspect", Some("short-lived-token")), 2, "cached past exp");
    // The long-lived token is still within cache = 4s.
    assert_eq!(gate.get("/probe/echo", Some("long-lived-token")).await.status, StatusCode::OK);
    assert_eq!(idp.calls("introspect", Some("long-lived-token")), 1);

    // Past cache = 4s, even though exp is ten minutes away.
    tokio::time::sleep(Duration::from_millis(4300).saturating_sub(started.elapsed())).await;
    assert_eq!(gate.get("/probe/echo", Some("long-lived-token")).await.status, StatusCode::OK);
    assert_eq!(idp.calls("introspect", Some("long-lived-token")), 2, "cached longer than cache");
}

/// A provider refusing connections, failing, answering garbage or hanging: 503 with Retry-After naming the
/// issuer, one audit line each, nothing remembered; the same token works as soon as the provider is back.
#[tokio::test]
async fn a_provider_down_or_confused_is_a_503_naming_it_and_is_not_remembered() {
    let idp = Idp::start(Expect::Basic).await;
    let (gate, _probe) = gate(&issuer_table("corp", idp.issuer(), &introspection(&idp, true, ""), ""), "").await;

    let cases: [(&str, Option<Mode>, &str); 5] = [
        ("down", None, "the introspection endpoint is unreachable"),
        ("failing", Some(Mode::Status(500)), "the introspection endpoint answered HTTP 500"),
        ("garbage", Some(Mode::Garbage), "the introspection endpoint answered something that is not JSON"),
        ("not-rfc7662", Some(Mode::Json(json!({"active": "yes"}))), "without a boolean active"),
        ("hanging", Some(Mode::Hang), "the introspection endpoint did not answer within 5s"),
    ];
    for (name, mode, reason) in cases {
        // A token not seen before, so that nothing cached stands between hfgate and the provider.
        let token = format!("{name}-token");
        idp.grant(&token, idp.claims("alice", &[]));
        let stopped = mode.is_none();
        match mode {
            None => idp.stop(),
            Some(mode) => idp.set_mode(mode),
        }
        let path = format!("/probe/echo/{name}");
        let started = Instant::now();
        let reply = gate.get(&path, Some(&token)).await;
        assert!(started.elapsed() < Duration::from_secs(7), "{name} took {:?}", started.elapsed());
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{name}: {}", reply.text());
        assert_eq!(reply.header("retry-after"), "5", "{name}");
        let body = reply.json();
        assert_eq!(body["error"], "temporarily_unavailable", "{name}");
        let description = body["error_description"].as_str().expect("description");
        assert!(description.starts_with("issuer corp cannot check the token now: "), "{name}: {description}");
        assert!(description.contains(reason), "{name}: {description}");
        assert!(!description.contains(&token));
        let lines = audit_for(&gate, &path);
        assert_eq!(lines.len(), 1, "{name}: {lines:?}");
        assert_eq!(lines[0]["decision"]["reason"], "introspection_unavailable");

        if stopped {
            idp.restart().await;
        }
        idp.set_mode(Mode::Normal);
        let back = gate.get(&format!("/probe/echo/{name}-back"), Some(&token)).await;
        assert_eq!(back.status, StatusCode::OK, "{name}: the failure was remembered: {}", back.text());
    }
}

// --- Hugging Face OAuth and the userinfo endpoint -------------------------------------------------------

/// "Sign in with Hugging Face" as an issuer: `hf_oauth_…` tokens are checked at the userinfo endpoint,
/// each organisation becomes the groups `<org>` and `<org>:<roleInOrg>`, and an `[[allow]]` rule on
/// `acme:admin` decides. Other tokens never go to Hugging Face, `hf_oauth_…` tokens never go elsewhere, and
/// other `hf_` tokens are still refused as Hugging Face user tokens.
#[tokio::test]
async fn hugging_face_oauth_tokens_are_checked_at_userinfo_and_orgs_become_groups() {
    let hf = Idp::start(Expect::Basic).await;
    let corp = Idp::start(Expect::Basic).await;
    let alice = "hf_oauth_eyJ0aGlzIjoiYWxpY2UifQ_7b1e";
    let bob = "hf_oauth_eyJ0aGlzIjoiYm9iIn0_93c2";
    hf.grant(alice, hugging_face_user("65f2a8c9e1d0b7a4c3f10001", "alice", &[("acme", "admin"), ("friends", "read")]));
    hf.grant(bob, hugging_face_user("65f2a8c9e1d0b7a4c3f10002", "bob", &[("acme", "read")]));
    corp.grant("corp-opaque-token", corp.claims("carol", &["acme:admin"]));
    let userinfo = format!("userinfo = {{ endpoint = \"{}\", negative_cache = \"1m\" }}", hf.url("/oauth/userinfo"));
    let issuers =
        issuer_table("hf", "https://huggingface.co", &userinfo, &format!("jwks_uri = \"{}\"", hf.url("/jwks")))
            + &issuer_table("corp", corp.issuer(), &introspection(&corp, true, ""), "");
    let (gate, probe) = gate(&issuers, "\n[[allow]]\ngroups = [\"acme:admin\"]\n").await;

    let reply = gate.get("/probe/echo/alice", Some(alice)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let log = probe.log();
    let seen = log.request("/echo/alice").expect("forwarded");
    assert_eq!(seen.header_values("x-forwarded-user"), ["65f2a8c9e1d0b7a4c3f10001"]);
    assert_eq!(seen.header_values("x-forwarded-email"), ["alice@acme.example"]);
    assert_eq!(seen.header_values("x-forwarded-groups"), ["acme,acme:admin,friends,friends:read"]);
    let line = audit_for(&gate, "/probe/echo/alice").pop().expect("audit line");
    assert_eq!(line["identity"]["issuer"], "https://huggingface.co");
    assert_eq!(line["identity"]["subject"], "65f2a8c9e1d0b7a4c3f10001");
    assert_eq!(line["identity"]["groups"], json!(["acme", "acme:admin", "friends", "friends:read"]));

    let denied = gate.get("/probe/echo/bob", Some(bob)).await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN, "{}", denied.text());
    assert!(probe.log().request("/echo/bob").is_none());

    let unknown = gate.get("/probe/echo/unknown", Some("hf_oauth_revoked_0000")).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    assert_eq!(unknown.description(), "token is not active according to issuer hf");
    assert_eq!(corp.calls("introspect", None), 0, "hf_oauth_ tokens go to Hugging Face only");

    // A user access token (hf_...) is still refused as one, and never sent anywhere.
    let user_token = gate.get("/probe/echo/user-token", Some("hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345")).await;
    assert_eq!(user_token.status, StatusCode::UNAUTHORIZED);
    assert!(user_token.description().starts_with("this is a Hugging Face token"), "{}", user_token.text());

    // Another issuer's opaque token goes to that issuer, not to Hugging Face.
    assert_eq!(gate.get("/probe/echo/carol", Some("corp-opaque-token")).await.status, StatusCode::OK);
    assert_eq!(hf.calls("userinfo", Some("corp-opaque-token")), 0);
    assert_eq!(hf.calls("userinfo", None), 3);

    // Hugging Face failing is a 503 naming it.
    hf.set_mode(Mode::Status(502));
    let failing = gate.get("/probe/echo/failing", Some("hf_oauth_new_token_1")).await;
    assert_eq!(failing.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        failing.json()["error_description"],
        "issuer hf cannot check the token now: the userinfo endpoint answered HTTP 502; try again later"
    );
    assert_eq!(hf.violations(), Vec::<String>::new());
}

/// Without a Hugging Face issuer, `hf_oauth_…` tokens are refused as Hugging Face tokens, even when other
/// issuers check opaque tokens; none of them is asked.
#[tokio::test]
async fn hf_oauth_tokens_are_refused_without_a_hugging_face_issuer() {
    let idp = Idp::start(Expect::Basic).await;
    let (gate, _probe) = corp_gate(&idp, "").await;
    let reply = gate.get("/probe/echo", Some("hf_oauth_eyJ0aGlzIjoiYWxpY2UifQ_7b1e")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.description().starts_with("this is a Hugging Face token (hf_...)"), "{}", reply.text());
    let line = audit_for(&gate, "/probe/echo").pop().expect("audit line");
    assert_eq!(line["decision"]["reason"], "hf_token");
    assert_eq!(idp.calls("introspect", None), 0);
}

/// A JWT still takes the JWT path when its issuer also introspects: verified with the issuer's keys, never
/// introspected, and a bad one is refused with the JWT check that failed.
#[tokio::test]
async fn a_jwt_still_takes_the_jwt_path() {
    let idp = Idp::start(Expect::Basic).await;
    let (gate, probe) = corp_gate(&idp, "").await;
    let reply = gate.get("/probe/echo/jwt", Some(&idp.jwt("alice"))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(probe.log().request("/echo/jwt").expect("forwarded").header_values("x-forwarded-user"), ["alice"]);

    let stranger = SigningKey::generate(Algorithm::ES256).expect("key").with_kid("stranger");
    let now = unix_now();
    let claims = json!({"iss": idp.issuer(), "aud": "hfgate", "sub": "mallory", "iat": now, "exp": now + 600});
    let forged = stranger.sign_jwt(&json!({"typ": "at+jwt"}), &claims).expect("sign");
    let refused = gate.get("/probe/echo/forged", Some(&forged)).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(refused.description().starts_with("unknown kid 'stranger'"), "{}", refused.text());
    assert_eq!(idp.calls("introspect", None), 0, "JWTs are never introspected");
}

/// Discovery supplies the endpoint when none is configured: `userinfo = {}` uses the document's
/// `userinfo_endpoint`; a discovered endpoint on another origin is not trusted (503 saying so).
#[tokio::test]
async fn discovery_supplies_the_endpoint_and_only_on_the_issuers_origin() {
    let idp = Idp::start(Expect::Basic).await;
    idp.grant("userinfo-token", json!({"sub": "dana", "email": "dana@acme.example", "groups": ["ops"]}));
    let foreign = Idp::start(Expect::Basic).await;
    *foreign.state.introspection_endpoint.lock().expect("lock") =
        Some(format!("http://localhost:{}/introspect", foreign.addr.port()));
    let issuers = issuer_table("corp", idp.issuer(), "userinfo = {}", "")
        + &issuer_table("elsewhere", foreign.issuer(), &introspection(&foreign, false, ""), "");
    let (gate, probe) = gate(&issuers, "").await;

    let reply = gate.get("/probe/echo/dana", Some("userinfo-token")).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let log = probe.log();
    let seen = log.request("/echo/dana").expect("forwarded");
    assert_eq!(seen.header_values("x-forwarded-user"), ["dana"]);
    assert_eq!(seen.header_values("x-forwarded-groups"), ["ops"]);
    assert_eq!(idp.calls("userinfo", Some("userinfo-token")), 1);

    // corp's userinfo endpoint does not know this token; `elsewhere` would be asked next, but its
    // discovery document points at another origin.
    let reply = gate.get("/probe/echo/elsewhere", Some("some-other-token")).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{}", reply.text());
    let description = reply.json()["error_description"].as_str().expect("description").to_string();
    assert!(description.starts_with("issuer elsewhere cannot check the token now"), "{description}");
    assert!(description.contains("is not on the issuer's origin: set introspection.endpoint"), "{description}");
    assert_eq!(foreign.calls("introspect", None), 0, "the token was not sent to the foreign endpoint");
}

/// `hfgate explain` checks an opaque token at its issuer, as serving does, and names the failed check.
#[tokio::test]
async fn explain_checks_opaque_tokens_at_their_issuer() {
    let idp = Idp::start(Expect::Basic).await;
    idp.grant("2YotnFZFEjr1zCsicMWpAA", idp.claims("alice", &["ml-research"]));
    let dir = temp_dir("opaque-explain");
    let text = format!(
        "{}{}",
        issuer_table("corp", idp.issuer(), &introspection(&idp, true, ""), ""),
        route_table("probe", "/probe/", "127.0.0.1:9".parse().expect("addr"), ""),
    );
    let settings = hfgate::config::parse(&dir.join("hfgate.toml"), &text).expect("config");
    let authz = hfgate::authz::Authorizer::new(&settings).expect("policies");
    let explain = |token: &str| {
        let request = hfgate::explain::ExplainRequest {
            caller: hfgate::explain::Caller::Token(token.to_string()),
            method: http::Method::GET,
            path: "/probe/x".into(),
            body: None,
            bill_to: None,
        };
        hfgate::explain::explain(&settings, &authz, request)
    };
    let allowed = explain("2YotnFZFEjr1zCsicMWpAA").await;
    assert!(allowed.allowed, "{}", allowed.text);
    assert!(allowed.text.contains("ok    opaque token: active at issuer corp"), "{}", allowed.text);
    let refused = explain("unknown-opaque-token").await;
    assert!(!refused.allowed);
    assert!(
        refused.text.contains("FAIL  opaque token: token is not active according to issuer corp"),
        "{}",
        refused.text
    );
}
