//! A mock model endpoint speaking the shapes of text-generation-inference and the OpenAI API:
//! chat completions (streamed or not, with `usage`), `/generate`, `/generate_stream`, `/embed`,
//! `/v1/models`, `/echo` (what the upstream received, for header checks), and `GET /`, a page saying who
//! the request came from (for a browser signed in through hfgate). Streams pause between chunks so that
//! streaming can be seen, and proven, end to end.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use http::{HeaderValue, StatusCode, header};
use http_body::Frame;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

const REPLY: &str = "Hello from the hfgate demo model. Your request was checked at the door, signed for upstream, and streamed back untouched.";

struct MockState {
    chunk_delay: Duration,
    /// When set, requests must carry exactly this `Authorization` (the organisation's credential).
    expect_authorization: Option<String>,
}

/// A running mock upstream.
pub struct MockUpstream {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for MockUpstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockUpstream").field("addr", &self.addr).finish()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl MockUpstream {
    pub async fn start(
        addr: SocketAddr,
        chunk_delay: Duration,
        expect_authorization: Option<String>,
    ) -> std::io::Result<MockUpstream> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let router = router(chunk_delay, expect_authorization);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Ok(MockUpstream { addr, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The mock's routes, for serving on a listener of the caller's choice.
pub fn router(chunk_delay: Duration, expect_authorization: Option<String>) -> Router {
    let state = Arc::new(MockState { chunk_delay, expect_authorization });
    Router::new()
        .route("/", get(root))
        .route("/health", get(|| async { "ok" }))
        .route("/info", get(|| async { Json(json!({"model_id": "hfgate-demo/tiny-chat", "router": "hfgate-mock"})) }))
        .route(
            "/v1/models",
            get(|| async {
                Json(json!({"object": "list", "data": [{"id": "hfgate-demo/tiny-chat", "object": "model"}]}))
            }),
        )
        .route("/v1/chat/completions", post(chat_completions))
        .route("/generate", post(generate))
        .route("/generate_stream", post(generate_stream))
        .route("/embed", post(embed))
        .route("/echo", any(echo))
        .route("/echo/{*rest}", any(echo))
        .route("/mock/slow-headers", get(slow_headers))
        .route("/mock/stall-body", get(stall_body))
        .merge(super::mock_hub::router())
        .layer(axum::middleware::from_fn_with_state(state.clone(), require_credential))
        .with_state(state)
}

async fn require_credential(
    State(state): State<Arc<MockState>>,
    request: Request,
    next: axum::middleware::Next,
) -> Response {
    if let Some(expected) = &state.expect_authorization
        && request.uri().path() != "/health"
    {
        let got = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if got != Some(expected.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(json!({"error": "the mock upstream expects the organisation's credential"})),
            )
                .into_response();
        }
    }
    next.run(request).await
}

/// `GET /`: who hfgate says the caller is (`X-Forwarded-*`), as a page for browsers, else as JSON.
async fn root(headers: http::HeaderMap) -> Response {
    let forwarded = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let (user, email, groups) =
        (forwarded("x-forwarded-user"), forwarded("x-forwarded-email"), forwarded("x-forwarded-groups"));
    if !crate::login::wants_html(&http::Method::GET, &headers) {
        return Json(json!({
            "model_id": "hfgate-demo/tiny-chat",
            "x_forwarded_user": user,
            "x_forwarded_email": email,
            "x_forwarded_groups": groups,
        }))
        .into_response();
    }
    let escape = crate::login::pages::escape;
    let who = match &user {
        Some(user) => format!(
            "<p id=\"who\">You reached the model endpoint as <strong id=\"user\">{}</strong> \
             (X-Forwarded-User){}{}.</p>\n<p>hfgate checked who you are at the door and called the model with \
             the organisation's credential: your session cookie never reached it.</p>\n",
            escape(user),
            email.as_deref().map(|e| format!(", email {}", escape(e))).unwrap_or_default(),
            groups.as_deref().map(|g| format!(", groups {}", escape(g))).unwrap_or_default(),
        ),
        None => "<p id=\"who\">No X-Forwarded-User: this request did not come through hfgate.</p>\n".to_string(),
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>hfgate demo model</title>\
         </head>\n<body>\n<h1>hfgate demo model</h1>\n{who}<ul>\n<li><a href=\"/.hfgate/whoami\">/.hfgate/whoami</a>: \
         who hfgate says you are, what you may use, and how to get a token for the command line</li>\n\
         <li><a href=\"/.hfgate/logout\">/.hfgate/logout</a>: sign out</li>\n</ul>\n\
         <p>The model speaks the text-generation-inference and OpenAI APIs: <code>POST v1/chat/completions</code>, \
         <code>POST generate</code>, <code>GET info</code>.</p>\n</body></html>\n"
    );
    let mut response = Response::new(Body::from(html));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static("default-src 'none'"));
    response
}

/// A body fed from a channel, so a handler can pace its chunks.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
    }
}

fn paced(events: Vec<String>, delay: Duration, content_type: &'static str) -> Response {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Bytes::from(event)).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(Body::new(ChannelBody(rx)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn words() -> Vec<String> {
    REPLY.split(' ').map(|w| format!("{w} ")).collect()
}

fn prompt_tokens(body: &Value) -> u64 {
    let text = body
        .get("messages")
        .map(|m| m.to_string())
        .or_else(|| body.get("inputs").map(|i| i.to_string()))
        .unwrap_or_default();
    text.split_whitespace().count().max(1) as u64
}

async fn chat_completions(State(state): State<Arc<MockState>>, Json(body): Json<Value>) -> Response {
    let model = body.get("model").and_then(Value::as_str).unwrap_or("hfgate-demo/tiny-chat").to_string();
    let created = crate::jose::unix_now();
    let words = words();
    let limit =
        body.get("max_tokens").and_then(Value::as_u64).map(|m| m as usize).unwrap_or(words.len()).clamp(1, words.len());
    let words = &words[..limit];
    let usage = json!({"prompt_tokens": prompt_tokens(&body), "completion_tokens": words.len(), "total_tokens": prompt_tokens(&body) + words.len() as u64});
    if body.get("stream").and_then(Value::as_bool) != Some(true) {
        return Json(json!({
            "id": "chatcmpl-hfgate-demo",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "system_fingerprint": "hfgate-mock",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat().trim_end()}, "finish_reason": "stop", "logprobs": null}],
            "usage": usage,
        }))
        .into_response();
    }
    let mut events: Vec<String> = words
        .iter()
        .enumerate()
        .map(|(i, word)| {
            let last = i + 1 == words.len();
            let mut chunk = json!({
                "id": "chatcmpl-hfgate-demo",
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "system_fingerprint": "hfgate-mock",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": word}, "finish_reason": if last { json!("stop") } else { Value::Null }, "logprobs": null}],
            });
            if last {
                chunk["usage"] = usage.clone();
            }
            format!("data: {chunk}\n\n")
        })
        .collect();
    events.push("data: [DONE]\n\n".to_string());
    paced(events, state.chunk_delay, "text/event-stream")
}

async fn generate(Json(body): Json<Value>) -> Response {
    let words = words();
    let mut response = Json(json!({"generated_text": words.concat().trim_end()})).into_response();
    let headers = response.headers_mut();
    headers.insert("x-prompt-tokens", HeaderValue::from(prompt_tokens(&body)));
    headers.insert("x-generated-tokens", HeaderValue::from(words.len() as u64));
    response
}

async fn generate_stream(State(state): State<Arc<MockState>>, Json(_body): Json<Value>) -> Response {
    let words = words();
    let count = words.len();
    let events = words
        .iter()
        .enumerate()
        .map(|(i, word)| {
            let last = i + 1 == count;
            let event = json!({
                "index": i,
                "token": {"id": i, "text": word, "logprob": 0.0, "special": false},
                "generated_text": if last { json!(words.concat().trim_end()) } else { Value::Null },
                "details": if last { json!({"finish_reason": "eos_token", "generated_tokens": count, "seed": null}) } else { Value::Null },
            });
            format!("data:{event}\n\n")
        })
        .collect();
    paced(events, state.chunk_delay, "text/event-stream")
}

async fn embed(Json(body): Json<Value>) -> Json<Value> {
    let inputs = match body.get("inputs") {
        Some(Value::Array(items)) => items.len().max(1),
        _ => 1,
    };
    let vector: Vec<f64> = (0..8).map(|i| f64::from(i) / 8.0).collect();
    Json(json!(vec![vector; inputs]))
}

async fn echo(request: Request) -> Json<Value> {
    let headers: serde_json::Map<String, Value> = request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), json!(v.to_str().unwrap_or("(binary)"))))
        .collect();
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let query = request.uri().query().map(str::to_string);
    let body = axum::body::to_bytes(request.into_body(), 1024 * 1024).await.unwrap_or_default();
    Json(json!({"method": method, "path": path, "query": query, "headers": headers, "body_bytes": body.len()}))
}

#[derive(Debug, Deserialize)]
struct Millis {
    ms: Option<u64>,
}

async fn slow_headers(Query(q): Query<Millis>) -> &'static str {
    tokio::time::sleep(Duration::from_millis(q.ms.unwrap_or(5_000))).await;
    "finally"
}

async fn stall_body(Query(q): Query<Millis>) -> Response {
    let (tx, rx) = mpsc::channel(1);
    let stall = Duration::from_millis(q.ms.unwrap_or(60_000));
    tokio::spawn(async move {
        let _ = tx.send(Bytes::from_static(b"first chunk\n")).await;
        tokio::time::sleep(stall).await;
        let _ = tx.send(Bytes::from_static(b"too late\n")).await;
    });
    let mut response = Response::new(Body::new(ChannelBody(rx)));
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}
