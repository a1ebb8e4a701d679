//! Test harness: a development issuer with generated keys, the mock model upstream and hfgate, all on
//! 127.0.0.1 with ephemeral ports, configured through the same TOML a user writes.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use hfgate::client::HttpClient;
use hfgate::demo::{DevIssuer, MockUpstream};
use hfgate::jose::Algorithm;
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
        iss = issuer.issuer(),
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
