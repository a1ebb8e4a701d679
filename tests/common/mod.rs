//! Test harness: a development issuer with generated keys, the mock model upstream and hfgate, all on
//! 127.0.0.1 with ephemeral ports, configured through the same TOML a user writes.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use hfgate::client::HttpClient;
use hfgate::demo::{DevIssuer, MockUpstream};
use hfgate::jose::{Algorithm, SigningKey};
use hfgate::server::{self, RunningServer};
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;

pub const ORG_SECRET: &str = "hf_test_org_secret_6f1d2c";
pub const AUDIENCE: &str = "hfgate";

/// A fresh directory under the system temp dir.
pub fn temp_dir(tag: &str) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "hfgate-test-{tag}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// Knobs for the generated config.
#[derive(Debug, Clone)]
pub struct Options {
    /// Extra TOML lines inside the `[server]` table.
    pub server_extra: String,
    /// Extra TOML lines inside the `[[issuer]]` table.
    pub issuer_extra: String,
    /// Extra TOML lines inside the main `[[route]]` table.
    pub route_extra: String,
    /// Whole extra tables appended at the end (more routes or issuers).
    pub tail: String,
    /// More tables that need the mock upstream's address (`host:port`).
    pub extra_routes: Option<fn(&str) -> String>,
    pub alg: Algorithm,
    pub chunk_delay: Duration,
    pub credential: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            server_extra: String::new(),
            issuer_extra: "jwks_refetch_min_interval = \"1s\"".to_string(),
            route_extra: String::new(),
            tail: String::new(),
            extra_routes: None,
            alg: Algorithm::ES256,
            chunk_delay: Duration::from_millis(0),
            credential: None,
        }
    }
}

pub struct Stack {
    pub issuer: DevIssuer,
    pub upstream: MockUpstream,
    pub server: RunningServer,
    pub dir: PathBuf,
    pub client: HttpClient,
}

pub fn config_text(issuer: &DevIssuer, upstream: SocketAddr, dir: &Path, options: &Options) -> String {
    config_text_for(issuer.issuer(), upstream, dir, options)
}

/// The same config for any issuer URL (an issuer other than the development one).
pub fn config_text_for(issuer: &str, upstream: SocketAddr, dir: &Path, options: &Options) -> String {
    let extra = options.extra_routes.map(|f| f(&upstream.to_string())).unwrap_or_default();
    let credential = options.credential.clone().unwrap_or_else(|| {
        let path = dir.join("hf_token");
        std::fs::write(&path, format!("{ORG_SECRET}\n")).expect("credential file");
        format!("file:{}", path.display())
    });
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
public_url = "http://hfgate.test"
shutdown_grace = "5s"
{server_extra}

[audit]
path = "{audit}"

[[issuer]]
name = "dev"
issuer = "{iss}"
audiences = ["{AUDIENCE}"]
{issuer_extra}

[[route]]
name = "tgi"
path = "/tgi/"
upstream = "http://{upstream}"
api = "tgi"
model = "acme/tiny-chat"
credential = "{credential}"
strip_prefix = true
{route_extra}
{tail}
"#,
        audit = dir.join("audit.jsonl").display(),
        iss = issuer,
        server_extra = options.server_extra,
        issuer_extra = options.issuer_extra,
        route_extra = options.route_extra,
        tail = extra + "\n" + &options.tail,
    )
}

impl Stack {
    pub async fn start() -> Stack {
        Stack::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> Stack {
        let loopback: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let issuer = DevIssuer::start(loopback, AUDIENCE, options.alg).await.expect("issuer");
        let upstream = MockUpstream::start(loopback, options.chunk_delay, None).await.expect("upstream");
        let dir = temp_dir("stack");
        let text = config_text(&issuer, upstream.addr(), &dir, &options);
        let path = dir.join("hfgate.toml");
        std::fs::write(&path, &text).expect("config");
        let settings = hfgate::config::load(&path).unwrap_or_else(|e| panic!("config invalid:\n{e}\n{text}"));
        let server = server::start(settings).await.expect("server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !server.gateway.authn.ready() {
            assert!(Instant::now() < deadline, "issuer keys did not load");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let client = hfgate::client::build(Duration::from_secs(5));
        Stack { issuer, upstream, server, dir, client }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.server.proxy_addr, path)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{}", self.server.admin_addr, path)
    }

    /// A valid token for `sub` with the given groups.
    pub fn token(&self, sub: &str) -> String {
        self.issuer.mint(&self.issuer.claims(sub, &["ml-research"], Duration::from_secs(600)))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut builder = Request::get(self.url(path));
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        self.send(builder.body(Body::empty()).expect("request")).await
    }

    pub async fn send(&self, request: Request<Body>) -> Reply {
        send(&self.client, request).await
    }

    /// Every audit line so far.
    pub fn audit(&self) -> Vec<Value> {
        self.server.gateway.audit.flush();
        read_audit(&self.dir.join("audit.jsonl"))
    }

    /// Waits until the audit holds at least `n` lines (a response's line is written when its body ends).
    pub async fn audit_at_least(&self, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.audit();
            if lines.len() >= n || Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

pub fn read_audit(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit line is JSON"))
        .collect()
}

#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The error_description of a 401, asserting the RFC 6750 shape on the way.
    pub fn description(&self) -> String {
        let body = self.json();
        let description = body["error_description"].as_str().expect("error_description").to_string();
        if self.status == StatusCode::UNAUTHORIZED {
            let challenge = self.header("www-authenticate");
            assert!(
                challenge.starts_with("Bearer realm=\"hfgate\", error=\"invalid_token\", error_description=\""),
                "{challenge}"
            );
            assert!(challenge.contains(&description.replace('"', "'")), "{challenge} vs {description}");
            assert_eq!(body["error"], "invalid_token");
        }
        assert_eq!(body["request_id"].as_str(), Some(self.header("x-request-id")));
        description
    }
}

pub async fn send(client: &HttpClient, request: Request<Body>) -> Reply {
    let response = tokio::time::timeout(Duration::from_secs(20), client.request(request))
        .await
        .expect("response in time")
        .expect("response");
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Reply { status: parts.status, headers: parts.headers, body }
}

/// Reads a streamed body and returns each chunk with the time it arrived since `start`.
pub async fn timed_chunks(client: &HttpClient, request: Request<Body>) -> (StatusCode, Vec<(Duration, Bytes)>) {
    let start = Instant::now();
    let response = client.request(request).await.expect("response");
    let status = response.status();
    let mut body = response.into_body();
    let mut chunks = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.expect("frame").into_data() {
            chunks.push((start.elapsed(), data));
        }
    }
    (status, chunks)
}

// ---------------------------------------------------------------------------------------------------
// Hostile-input and failing-dependency fixtures: audit counting, a recording upstream, a scriptable
// issuer, raw HTTP/1.1 over TCP, and captured logs.
// ---------------------------------------------------------------------------------------------------

impl Stack {
    /// Audit lines whose path is exactly `path`.
    pub fn audit_for_path(&self, path: &str) -> Vec<Value> {
        self.audit().into_iter().filter(|l| l["path"] == path).collect()
    }

    /// Audit lines of one request id.
    pub fn audit_for_id(&self, request_id: &str) -> Vec<Value> {
        self.audit().into_iter().filter(|l| l["request_id"] == request_id).collect()
    }

    /// Waits for the line of `path`, then a little longer, and asserts there is exactly one: a late
    /// duplicate (a body dropped after its end was already recorded) would show up in that window.
    pub async fn one_audit_line(&self, path: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.audit_for_path(path).is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let lines = self.audit_for_path(path);
        assert_eq!(lines.len(), 1, "expected exactly one audit line for {path}, got {lines:#?}");
        lines.into_iter().next().expect("one line")
    }
}

/// A `[[route]]` table in front of `upstream`, with the route prefix stripped.
pub fn route_table(name: &str, prefix: &str, upstream: SocketAddr, extra: &str) -> String {
    format!(
        "\n[[route]]\nname = \"{name}\"\npath = \"{prefix}\"\nupstream = \"http://{upstream}\"\nstrip_prefix = true\n{extra}\n"
    )
}

// --- hfgate in front of any issuer -----------------------------------------------------------------

/// hfgate alone, configured by the caller; unlike [`Stack`] it does not wait for the issuer's keys.
pub struct Gate {
    pub server: RunningServer,
    pub dir: PathBuf,
    pub client: HttpClient,
}

impl Gate {
    pub async fn start(dir: PathBuf, text: &str) -> Gate {
        let path = dir.join("hfgate.toml");
        std::fs::write(&path, text).expect("config");
        let settings = hfgate::config::load(&path).unwrap_or_else(|e| panic!("config invalid:\n{e}\n{text}"));
        let server = server::start(settings).await.expect("server");
        let client = hfgate::client::build(Duration::from_secs(5));
        Gate { server, dir, client }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.server.proxy_addr, path)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut builder = Request::get(self.url(path));
        if let Some(token) = token {
            builder = builder.header("authorization", format!("Bearer {token}"));
        }
        send(&self.client, builder.body(Body::empty()).expect("request")).await
    }

    pub async fn readyz(&self) -> Reply {
        let request = Request::get(format!("http://{}/readyz", self.server.admin_addr)).body(Body::empty());
        send(&self.client, request.expect("request")).await
    }

    pub async fn metrics(&self) -> String {
        let request = Request::get(format!("http://{}/metrics", self.server.admin_addr)).body(Body::empty());
        send(&self.client, request.expect("request")).await.text()
    }

    /// Polls `/readyz` until it answers 200 or `within` passes.
    pub async fn becomes_ready(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.readyz().await.status == StatusCode::OK {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    pub fn audit(&self) -> Vec<Value> {
        self.server.gateway.audit.flush();
        read_audit(&self.dir.join("audit.jsonl"))
    }
}

// --- a scriptable issuer ----------------------------------------------------------------------------

/// What one endpoint of a [`ScriptedIdp`] answers.
#[derive(Debug, Clone)]
pub enum IdpReply {
    /// Discovery naming this issuer and its `/jwks.json`, or the issuer's public keys.
    Normal,
    /// 200 with this JSON document.
    Json(Value),
    /// Any status, content type and bytes.
    Raw { status: u16, content_type: &'static str, body: Bytes },
    /// Accepts the connection, reads the request and never answers (a black-holed IdP).
    Hang,
}

struct IdpState {
    issuer: String,
    key: std::sync::RwLock<Arc<SigningKey>>,
    discovery: Mutex<IdpReply>,
    jwks: Mutex<IdpReply>,
    discovery_fetches: AtomicU64,
    jwks_fetches: AtomicU64,
}

/// An OpenID Connect issuer on raw TCP whose discovery and JWKS answers a test scripts: garbage,
/// oversized documents, foreign `jwks_uri`s, hanging connections, or nothing at all (stopped).
/// Every answer closes its connection, so each fetch is a fresh connection.
pub struct ScriptedIdp {
    addr: SocketAddr,
    state: Arc<IdpState>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for ScriptedIdp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedIdp").field("issuer", &self.state.issuer).finish()
    }
}

impl Drop for ScriptedIdp {
    fn drop(&mut self) {
        if let Some(task) = self.accept.lock().expect("lock").take() {
            task.abort();
        }
    }
}

impl ScriptedIdp {
    /// Starts on `ip` (a loopback address) with one fresh ES256 key.
    pub async fn start(ip: &str) -> ScriptedIdp {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.expect("bind issuer");
        let addr = listener.local_addr().expect("addr");
        let key = SigningKey::generate(Algorithm::ES256).expect("key");
        let state = Arc::new(IdpState {
            issuer: format!("http://{addr}"),
            key: std::sync::RwLock::new(Arc::new(key)),
            discovery: Mutex::new(IdpReply::Normal),
            jwks: Mutex::new(IdpReply::Normal),
            discovery_fetches: AtomicU64::new(0),
            jwks_fetches: AtomicU64::new(0),
        });
        let idp = ScriptedIdp { addr, state, accept: Mutex::new(None) };
        idp.listen(listener);
        idp
    }

    fn listen(&self, listener: tokio::net::TcpListener) {
        let state = self.state.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in this set: stopping the issuer closes every connection it holds.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((socket, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                connections.spawn(serve_idp(socket, state.clone()));
            }
        });
        *self.accept.lock().expect("lock") = Some(task);
    }

    /// Stops listening and closes every open connection: connections are refused from now on.
    pub fn stop(&self) {
        if let Some(task) = self.accept.lock().expect("lock").take() {
            task.abort();
        }
    }

    /// Listens again on the same address after [`ScriptedIdp::stop`].
    pub async fn restart(&self) {
        self.stop();
        self.listen(rebind(self.addr).await);
    }

    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn key(&self) -> Arc<SigningKey> {
        self.state.key.read().expect("lock").clone()
    }

    /// The public JWKS of the current key.
    pub fn jwks(&self) -> Value {
        serde_json::json!({"keys": [self.key().public_jwk()]})
    }

    /// The discovery document this issuer normally serves.
    pub fn discovery(&self) -> Value {
        discovery_doc(&self.state.issuer)
    }

    pub fn set_discovery(&self, reply: IdpReply) {
        *self.state.discovery.lock().expect("lock") = reply;
    }

    pub fn set_jwks(&self, reply: IdpReply) {
        *self.state.jwks.lock().expect("lock") = reply;
    }

    pub fn jwks_fetches(&self) -> u64 {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> u64 {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Access-token claims for `subject`, valid for ten minutes.
    pub fn claims(&self, subject: &str, groups: &[&str]) -> Value {
        let now = hfgate::jose::unix_now();
        serde_json::json!({
            "iss": self.state.issuer, "aud": AUDIENCE, "sub": subject, "groups": groups,
            "iat": now, "nbf": now, "exp": now + 600, "jti": format!("{now}-{subject}"),
        })
    }

    /// A token for `subject` signed with the published key.
    pub fn token(&self, subject: &str) -> String {
        self.key().sign_jwt(&serde_json::json!({"typ": "at+jwt"}), &self.claims(subject, &[])).expect("sign")
    }

    /// A well-formed token of this issuer signed by a key it never published.
    pub fn token_with_unknown_kid(&self, subject: &str, kid: &str) -> String {
        let stranger = SigningKey::generate(Algorithm::ES256).expect("key").with_kid(kid);
        stranger.sign_jwt(&serde_json::json!({"typ": "at+jwt"}), &self.claims(subject, &[])).expect("sign")
    }
}

fn discovery_doc(issuer: &str) -> Value {
    serde_json::json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/jwks.json"),
        "id_token_signing_alg_values_supported": ["ES256"],
        "response_types_supported": [],
        "subject_types_supported": ["public"],
    })
}

/// A scripted upstream speaking raw TCP: every accepted connection is handed to `serve` on a task of its
/// own. Returns the address to route to.
pub async fn raw_upstream<F, Fut>(serve: F) -> SocketAddr
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind raw upstream");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            tokio::spawn(serve(socket));
        }
    });
    addr
}

/// Reads from `socket` until the end of a request head (at most 64 KiB); `None` if it closes or errs first.
pub async fn read_request_head(socket: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match socket.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    Some(head)
}

async fn serve_idp(mut socket: tokio::net::TcpStream, state: Arc<IdpState>) {
    use tokio::io::AsyncWriteExt;
    let Some(head) = read_request_head(&mut socket).await else { return };
    let line = String::from_utf8_lossy(head.split(|&b| b == b'\r').next().unwrap_or_default()).into_owned();
    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
    let reply = match path.as_str() {
        "/.well-known/openid-configuration" => {
            state.discovery_fetches.fetch_add(1, Ordering::SeqCst);
            match state.discovery.lock().expect("lock").clone() {
                IdpReply::Normal => IdpReply::Json(discovery_doc(&state.issuer)),
                other => other,
            }
        }
        "/jwks.json" => {
            state.jwks_fetches.fetch_add(1, Ordering::SeqCst);
            match state.jwks.lock().expect("lock").clone() {
                IdpReply::Normal => {
                    let key = state.key.read().expect("lock").clone();
                    IdpReply::Json(serde_json::json!({"keys": [key.public_jwk()]}))
                }
                other => other,
            }
        }
        _ => IdpReply::Raw { status: 404, content_type: "text/plain", body: Bytes::from_static(b"not found") },
    };
    let (status, content_type, body) = match reply {
        IdpReply::Normal => unreachable!("resolved above"),
        IdpReply::Json(doc) => (200, "application/json", Bytes::from(doc.to_string())),
        IdpReply::Raw { status, content_type, body } => (status, content_type, body),
        IdpReply::Hang => {
            // Hold the connection open without a byte of answer until the issuer is stopped or dropped.
            let _held = socket;
            std::future::pending::<()>().await;
            return;
        }
    };
    let head = format!(
        "HTTP/1.1 {status} Scripted\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if socket.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for chunk in body.chunks(64 * 1024) {
        if socket.write_all(chunk).await.is_err() {
            return;
        }
    }
    let _ = socket.shutdown().await;
}

// --- a recording upstream ---------------------------------------------------------------------------

/// How a request body the probe received ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyEnd {
    Reading,
    Complete,
    Aborted(String),
}

/// One request as the probe upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body_bytes: u64,
    pub body: BodyEnd,
    /// Index of the connection it came on.
    pub connection: usize,
}

impl Seen {
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
}

/// Everything the probe upstream observed.
#[derive(Debug, Default, Clone)]
pub struct ProbeLog {
    /// Connections accepted, and how many of them have ended.
    pub connections: usize,
    pub closed: usize,
    /// The raw bytes received, per connection.
    pub raw: Vec<Vec<u8>>,
    pub requests: Vec<Seen>,
    /// Targets whose response the probe could not finish because its peer went away.
    pub cancelled: Vec<String>,
    /// Targets whose streamed response was sent to the end.
    pub finished: Vec<String>,
}

impl ProbeLog {
    pub fn request(&self, target: &str) -> Option<&Seen> {
        self.requests.iter().find(|r| r.target == target)
    }
}

/// An upstream that records what reaches it, down to the raw bytes and whether its answers were
/// abandoned. Targets (after hfgate strips the route prefix):
/// - `/echo...`: reads the whole body, answers JSON `{method, target, body_bytes}`;
/// - `/stream...?chunks=N&ms=M`: N SSE events M ms apart;
/// - `/hang...`: never answers;
/// - `/stall...`: response headers and one chunk, then silence.
pub struct Probe {
    addr: SocketAddr,
    log: Arc<Mutex<ProbeLog>>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe").field("addr", &self.addr).finish()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Probe {
    pub async fn start() -> Probe {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind probe");
        let addr = listener.local_addr().expect("addr");
        let log = Arc::new(Mutex::new(ProbeLog::default()));
        let shared = log.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let index = {
                    let mut log = shared.lock().expect("lock");
                    log.connections += 1;
                    log.raw.push(Vec::new());
                    log.connections - 1
                };
                let log = shared.clone();
                connections.spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(Tapped { inner: stream, log: log.clone(), index });
                    let for_service = log.clone();
                    let service = hyper::service::service_fn(move |request| {
                        let log = for_service.clone();
                        async move { Ok::<_, std::convert::Infallible>(probe_handle(request, log, index).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                    log.lock().expect("lock").closed += 1;
                });
            }
        });
        Probe { addr, log, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn log(&self) -> ProbeLog {
        self.log.lock().expect("lock").clone()
    }

    /// Waits until `done` holds (true) or `within` passes (false).
    pub async fn wait_for(&self, within: Duration, done: impl Fn(&ProbeLog) -> bool) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if done(&self.log.lock().expect("lock")) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Records the bytes read from a connection.
struct Tapped {
    inner: tokio::net::TcpStream,
    log: Arc<Mutex<ProbeLog>>,
    index: usize,
}

impl tokio::io::AsyncRead for Tapped {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if let std::task::Poll::Ready(Ok(())) = &polled {
            let index = self.index;
            self.log.lock().expect("lock").raw[index].extend_from_slice(&buf.filled()[before..]);
        }
        polled
    }
}

impl tokio::io::AsyncWrite for Tapped {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Records `target` as cancelled when dropped while armed (the handler's future was abandoned).
struct CancelGuard {
    log: Arc<Mutex<ProbeLog>>,
    target: String,
}

impl Drop for CancelGuard {
    fn drop(&mut self) {
        self.log.lock().expect("lock").cancelled.push(self.target.clone());
    }
}

/// A body fed from a channel: a probe's streamed response, a test's slow upload.
pub struct ChannelBody(pub tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(http_body::Frame::data(c))))
    }
}

fn query_number(target: &str, name: &str, default: u64) -> u64 {
    target
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .find_map(|pair| pair.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

async fn probe_handle(
    request: Request<hyper::body::Incoming>,
    log: Arc<Mutex<ProbeLog>>,
    connection: usize,
) -> http::Response<Body> {
    let target = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let path = request.uri().path().to_string();
    let index = {
        let mut log = log.lock().expect("lock");
        log.requests.push(Seen {
            method: request.method().to_string(),
            target: target.clone(),
            headers: request
                .headers()
                .iter()
                .map(|(n, v)| (n.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                .collect(),
            body_bytes: 0,
            body: BodyEnd::Reading,
            connection,
        });
        log.requests.len() - 1
    };
    if path.starts_with("/hang") {
        let _guard = CancelGuard { log: log.clone(), target };
        return std::future::pending().await;
    }
    let mut body = request.into_body();
    let end = loop {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    log.lock().expect("lock").requests[index].body_bytes += data.len() as u64;
                }
            }
            Some(Err(err)) => break BodyEnd::Aborted(err.to_string()),
            None => break BodyEnd::Complete,
        }
    };
    let complete = end == BodyEnd::Complete;
    log.lock().expect("lock").requests[index].body = end;
    if !complete {
        return http::Response::new(Body::empty());
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
    let streamed = |content_type: &'static str| {
        let mut response = http::Response::new(Body::new(ChannelBody(rx)));
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static(content_type));
        response
    };
    if path.starts_with("/stream") {
        let chunks = query_number(&target, "chunks", 20);
        let pause = Duration::from_millis(query_number(&target, "ms", 100));
        tokio::spawn(async move {
            for i in 0..chunks {
                if i > 0 {
                    tokio::time::sleep(pause).await;
                }
                if tx.send(Bytes::from(format!("data: {{\"n\":{i}}}\n\n"))).await.is_err() {
                    log.lock().expect("lock").cancelled.push(target);
                    return;
                }
            }
            // Every event was taken: dropping the sender ends the body.
            drop(tx);
            log.lock().expect("lock").finished.push(target);
        });
        return streamed("text/event-stream");
    }
    if path.starts_with("/stall") {
        tokio::spawn(async move {
            if tx.send(Bytes::from_static(b"first chunk\n")).await.is_ok() {
                tx.closed().await;
            }
            log.lock().expect("lock").cancelled.push(target);
        });
        return streamed("text/plain");
    }
    let (method, body_bytes) = {
        let log = log.lock().expect("lock");
        (log.requests[index].method.clone(), log.requests[index].body_bytes)
    };
    let doc = serde_json::json!({"method": method, "target": target, "body_bytes": body_bytes});
    let mut response = http::Response::new(Body::from(doc.to_string()));
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

// --- raw HTTP/1.1 ------------------------------------------------------------------------------------

/// Writes `request` on a fresh connection and reads until the server closes it or `within` passes.
/// Returns what was read and whether the server closed the connection.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8], within: Duration) -> (Vec<u8>, bool) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    // The server may answer and close before it has read everything: a failed write is not the test's point.
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let closed = tokio::time::timeout(within, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    (out, closed)
}

/// One HTTP/1.1 response parsed from raw bytes.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Every complete response in `bytes`, in order (Content-Length and chunked bodies).
pub fn parse_responses(mut bytes: &[u8]) -> Vec<RawResponse> {
    let mut out = Vec::new();
    while let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&bytes[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut rest = &bytes[end + 4..];
        let find = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let body = if find("transfer-encoding").is_some_and(|te| te.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else { return out };
                let size_text = String::from_utf8_lossy(&rest[..line_end]).into_owned();
                let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else {
                    return out;
                };
                let start = line_end + 2;
                if rest.len() < start + size + 2 {
                    return out;
                }
                body.extend_from_slice(&rest[start..start + size]);
                rest = &rest[start + size + 2..];
                if size == 0 {
                    break;
                }
            }
            body
        } else {
            let len = find("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            if rest.len() < len {
                return out;
            }
            let body = rest[..len].to_vec();
            rest = &rest[len..];
            body
        };
        out.push(RawResponse { status, headers, body });
        bytes = rest;
    }
    out
}

// --- captured logs ----------------------------------------------------------------------------------

/// hfgate's log output while a test runs. Tests run on a current-thread runtime, so a thread-local
/// subscriber sees every task the server spawns.
#[derive(Debug, Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Logs {
    /// Captures this thread's logs until the guard is dropped.
    pub fn capture() -> (Logs, tracing::subscriber::DefaultGuard) {
        let logs = Logs::default();
        let buffer = logs.0.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || LogWriter(buffer.clone()))
            .finish();
        (logs, tracing::subscriber::set_default(subscriber))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }

    /// Where the log ends now, for [`Logs::line_after`].
    pub fn mark(&self) -> usize {
        self.0.lock().expect("lock").len()
    }

    /// Waits until a log line satisfies `matches`, and returns it.
    pub async fn line(&self, within: Duration, matches: impl Fn(&str) -> bool) -> Option<String> {
        self.line_after(0, within, matches).await
    }

    /// Waits until a line written after `mark` satisfies `matches`, and returns it.
    pub async fn line_after(&self, mark: usize, within: Duration, matches: impl Fn(&str) -> bool) -> Option<String> {
        let deadline = Instant::now() + within;
        loop {
            let text = self.text();
            if let Some(line) = text.get(mark..).unwrap_or_default().lines().find(|l| matches(l)) {
                return Some(line.to_string());
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Writes `request` on a fresh connection and returns the first complete response, or `None` when the
/// server closed the connection or `within` passed without one.
pub async fn raw_first_response(addr: SocketAddr, request: &[u8], within: Duration) -> Option<RawResponse> {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    read_first_response(&mut stream, within).await
}

async fn read_first_response<R: tokio::io::AsyncRead + Unpin>(reader: &mut R, within: Duration) -> Option<RawResponse> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(first) = parse_responses(&out).into_iter().next() {
                return Some(first);
            }
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .flatten()
}

/// Sends `head` (ending in a blank line, announcing `Transfer-Encoding: chunked`) and then `chunks`
/// chunks of `chunk_size` bytes, `pause` apart, while reading the answer; returns the first response.
/// The upload stops quietly when the server stops reading.
pub async fn raw_chunked_upload(
    addr: SocketAddr,
    head: &str,
    chunks: usize,
    chunk_size: usize,
    pause: Duration,
    within: Duration,
) -> Option<RawResponse> {
    use tokio::io::AsyncWriteExt;
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    let head = head.to_string();
    let upload = tokio::spawn(async move {
        if writer.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let chunk = vec![b'x'; chunk_size];
        for _ in 0..chunks {
            let mut frame = format!("{chunk_size:x}\r\n").into_bytes();
            frame.extend_from_slice(&chunk);
            frame.extend_from_slice(b"\r\n");
            if writer.write_all(&frame).await.is_err() {
                return;
            }
            tokio::time::sleep(pause).await;
        }
        let _ = writer.write_all(b"0\r\n\r\n").await;
        // Keep the write half open until the test is done reading.
        std::future::pending::<()>().await;
    });
    let response = read_first_response(&mut reader, within).await;
    upload.abort();
    response
}

/// Listens on `addr` again after a server there stopped, waiting (at most 5 s) for the port to be free.
pub async fn rebind(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(err) => {
                assert!(Instant::now() < deadline, "cannot listen on {addr} again: {err}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
