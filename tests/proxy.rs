//! Forwarding: streaming, routing and path hygiene, header hygiene, credentials, the signed identity
//! assertion, upstream failures, and what the audit line records.

mod common;

use std::time::Duration;

use axum::body::Body;
use common::{ORG_SECRET, Options, Stack};
use hfgate::authn::jwks::VerifyingKey;
use hfgate::jose::Algorithm;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};

fn post_json(stack: &Stack, path: &str, token: &str, body: &Value) -> Request<Body> {
    Request::post(stack.url(path))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

#[tokio::test]
async fn streamed_chunks_arrive_as_the_upstream_sends_them() {
    let stack = Stack::start_with(Options { chunk_delay: Duration::from_millis(100), ..Options::default() }).await;
    let token = stack.token("alice");
    let body = json!({"model": "tgi", "stream": true, "messages": [{"role": "user", "content": "Hello"}]});
    let (status, chunks) =
        common::timed_chunks(&stack.client, post_json(&stack, "/tgi/v1/chat/completions", &token, &body)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(chunks.len() >= 10, "expected one chunk per event, got {}", chunks.len());
    let first = chunks.first().expect("first").0;
    let last = chunks.last().expect("last").0;
    // The upstream pauses 100 ms between ~20 events: a buffering proxy would deliver all at the end.
    assert!(first.as_secs_f64() < 0.25 * last.as_secs_f64(), "first chunk at {first:?}, last at {last:?}");
    let text: String = chunks.iter().map(|(_, c)| String::from_utf8_lossy(c).into_owned()).collect();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    let audit = stack.audit_at_least(1).await;
    let line = audit.last().expect("audit line");
    assert_eq!(line["status"], 200);
    assert_eq!(line["usage"]["completion_tokens"], 20);
    assert!(line["usage"]["prompt_tokens"].as_u64().expect("prompt") > 0);
    assert_eq!(line["bytes_in"], body.to_string().len());
    assert_eq!(line["bytes_out"].as_u64(), Some(text.len() as u64));
    assert!(line["error"].is_null(), "{line}");
}

#[tokio::test]
async fn usage_is_read_from_json_bodies_tgi_headers_and_tgi_streams() {
    let stack = Stack::start().await;
    let token = stack.token("alice");
    let chat = json!({"model": "tgi", "messages": [{"role": "user", "content": "one two three"}]});
    assert_eq!(stack.send(post_json(&stack, "/tgi/v1/chat/completions", &token, &chat)).await.status, StatusCode::OK);
    let generate = json!({"inputs": "one two", "parameters": {}});
    let reply = stack.send(post_json(&stack, "/tgi/generate", &token, &generate)).await;
    assert_eq!(reply.header("x-generated-tokens"), "20");
    assert_eq!(stack.send(post_json(&stack, "/tgi/generate_stream", &token, &generate)).await.status, StatusCode::OK);
    let embed = stack.send(post_json(&stack, "/tgi/embed", &token, &json!({"inputs": "x"}))).await;
    assert_eq!(embed.json().as_array().expect("vectors").len(), 1);

    let audit = stack.audit_at_least(4).await;
    let usage = |path: &str| audit.iter().find(|l| l["path"] == path).map(|l| l["usage"].clone()).expect(path);
    assert_eq!(usage("/tgi/v1/chat/completions")["completion_tokens"], 20);
    assert_eq!(usage("/tgi/generate"), json!({"prompt_tokens": 2, "completion_tokens": 20}));
    assert_eq!(usage("/tgi/generate_stream")["completion_tokens"], 20);
    assert_eq!(usage("/tgi/embed"), Value::Null);
    let line = &audit[0];
    for field in [
        "ts",
        "request_id",
        "route",
        "method",
        "path",
        "status",
        "duration_ms",
        "bytes_in",
        "bytes_out",
        "identity",
        "model",
        "action",
        "decision",
        "usage",
        "upstream",
        "error",
    ] {
        assert!(line.get(field).is_some(), "audit line lacks {field}: {line}");
    }
    assert_eq!(line["model"]["id"], "acme/tiny-chat");
    assert_eq!(line["identity"]["issuer"], stack.issuer.issuer());
}

#[tokio::test]
async fn upstream_sees_the_org_credential_and_a_verified_identity_only() {
    let stack = Stack::start().await;
    let token = stack.token("alice");
    let request = Request::get(stack.url("/tgi/echo?x=1"))
        .header("authorization", format!("Bearer {token}"))
        .header("x-forwarded-user", "admin")
        .header("x-forwarded-email", "admin@corp")
        .header("x-forwarded-groups", "admins")
        .header("x-hfgate-assertion", "forged")
        .header("x-hfgate-whatever", "forged")
        .header("x-request-id", "client-chosen")
        .header("x-forwarded-for", "6.6.6.6")
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("host", "gateway.example")
        .body(Body::empty())
        .expect("request");
    let reply = stack.send(request).await;
    assert_eq!(reply.status, StatusCode::OK);
    let echoed = reply.json();
    let headers = &echoed["headers"];
    assert_eq!(echoed["path"], "/echo", "strip_prefix removes /tgi");
    assert_eq!(echoed["query"], "x=1");
    assert_eq!(headers["authorization"], format!("Bearer {ORG_SECRET}"));
    assert_eq!(headers["x-forwarded-user"], "alice");
    assert!(headers.get("x-forwarded-email").is_none(), "the token has no email: the spoofed one must not pass");
    assert_eq!(headers["x-forwarded-groups"], "ml-research");
    assert_eq!(headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "gateway.example");
    assert_eq!(headers["host"], stack.upstream.addr().to_string());
    assert_eq!(headers["x-request-id"], reply.header("x-request-id"));
    assert_ne!(headers["x-request-id"], "client-chosen");
    assert!(
        headers.get("x-hfgate-whatever").is_none()
            && headers.get("x-hop").is_none()
            && headers.get("connection").is_none()
    );
    assert!(!echoed.to_string().contains(&token), "the caller's token must not reach the upstream");

    // The assertion verifies against /.hfgate/jwks.json and names the caller and the route.
    let assertion = headers["x-hfgate-assertion"].as_str().expect("assertion");
    assert_ne!(assertion, "forged");
    let jwks = stack.get("/.hfgate/jwks.json", None).await;
    assert_eq!(jwks.status, StatusCode::OK);
    let jwk = &jwks.json()["keys"][0];
    assert_eq!(jwk["alg"], "ES256");
    let key = VerifyingKey::from_jwk(jwk, &[Algorithm::ES256]).expect("jwk");
    let parsed = hfgate::authn::jwt::parse(assertion).expect("parse");
    parsed.verify(&key).expect("assertion signature verifies");
    assert_eq!(parsed.claims["sub"], "alice");
    assert_eq!(parsed.claims["aud"], "tgi");
    assert_eq!(parsed.claims["iss"], "http://hfgate.test");
    assert_eq!(parsed.claims["idp"], stack.issuer.issuer());
    let lifetime = parsed.claims["exp"].as_u64().expect("exp") - parsed.claims["iat"].as_u64().expect("iat");
    assert!(lifetime > 0 && lifetime <= 300, "assertions are minutes long, got {lifetime}s");
}

#[tokio::test]
async fn passthrough_forwards_the_callers_validated_token() {
    let stack = Stack::start_with(Options { credential: Some("passthrough".into()), ..Options::default() }).await;
    let token = stack.token("alice");
    let through = stack.get("/tgi/echo", Some(&token)).await.json();
    assert_eq!(through["headers"]["authorization"], format!("Bearer {token}"));
}

#[tokio::test]
async fn routing_prefixes_and_path_hygiene() {
    let loopback = "127.0.0.1:0".parse().expect("addr");
    let upstream = hfgate::demo::MockUpstream::start(loopback, Duration::ZERO, None).await.expect("upstream");
    let stack = Stack::start_with(Options {
        tail: format!(
            "[[route]]\nname = \"raw\"\npath = \"/raw\"\nupstream = \"http://{0}/echo\"\ncredential = \"none\"\n\n[[route]]\nname = \"tgi-admin\"\npath = \"/tgi/admin/\"\nupstream = \"http://{0}\"\nstrip_prefix = true\n",
            upstream.addr()
        ),
        ..Options::default()
    })
    .await;
    let token = stack.token("alice");

    // No strip_prefix, upstream base path joined; credential none sends no Authorization.
    let raw = stack.get("/raw/models/x", Some(&token)).await.json();
    assert_eq!(raw["path"], "/echo/raw/models/x");
    assert!(raw["headers"].get("authorization").is_none());
    // Longest prefix wins.
    let admin = stack.get("/tgi/admin/echo", Some(&token)).await.json();
    assert_eq!(admin["path"], "/echo");
    // A prefix matches whole segments only.
    assert_eq!(stack.get("/rawdata", Some(&token)).await.status, StatusCode::NOT_FOUND);
    let missing = stack.get("/nowhere", Some(&token)).await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"], "not_found");

    for (path, why) in [
        ("/tgi/../raw/x", "path contains a '.' or '..' segment"),
        ("/tgi/%2e%2e/raw/x", "path contains a '.' or '..' segment"),
        ("/tgi/.%2E/raw", "path contains a '.' or '..' segment"),
        ("/tgi/a%2Fb", "path contains an encoded slash or backslash (%2F, %5C)"),
        ("/tgi//echo", "path contains an empty segment ('//')"),
        ("/tgi/%00", "path contains a control character or an encoded NUL"),
    ] {
        let reply = stack.get(path, Some(&token)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{path}");
        assert_eq!(reply.json()["error"], "invalid_request");
        assert_eq!(reply.json()["error_description"], why, "{path}");
    }
}

#[tokio::test]
async fn upstream_down_is_502_and_slow_is_504() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed.local_addr().expect("addr");
    drop(closed);
    let stack = Stack::start_with(Options {
        route_extra: "timeout = \"400ms\"\nidle_timeout = \"400ms\"".into(),
        tail: format!("[[route]]\nname = \"dead\"\npath = \"/dead\"\nupstream = \"http://{dead}\"\n"),
        ..Options::default()
    })
    .await;
    let token = stack.token("alice");

    let down = stack.get("/dead/x", Some(&token)).await;
    assert_eq!(down.status, StatusCode::BAD_GATEWAY);
    assert_eq!(down.json()["error"], "bad_gateway");
    assert_eq!(down.json()["error_description"], "the upstream of route dead is unavailable");

    let slow = stack.get("/tgi/mock/slow-headers?ms=3000", Some(&token)).await;
    assert_eq!(slow.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(slow.json()["error"], "gateway_timeout");

    // A stream that goes quiet is cut after idle_timeout, and the audit says why.
    let request = Request::get(stack.url("/tgi/mock/stall-body?ms=5000"))
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .expect("req");
    let response = stack.client.request(request).await.expect("headers arrive");
    assert_eq!(response.status(), StatusCode::OK);
    let started = std::time::Instant::now();
    let body = response.into_body().collect().await;
    assert!(body.is_err(), "the body must end in an error, not look complete");
    assert!(started.elapsed() < Duration::from_secs(4), "cut by the idle timeout, not by the upstream");

    let audit = stack.audit_at_least(4).await;
    let by_path = |p: &str| audit.iter().find(|l| l["path"] == p).cloned().expect(p);
    assert_eq!(by_path("/dead/x")["status"], 502);
    assert!(by_path("/dead/x")["error"].as_str().expect("error").starts_with("upstream unavailable"));
    assert_eq!(by_path("/tgi/mock/slow-headers")["status"], 504);
    let stalled = by_path("/tgi/mock/stall-body");
    assert!(stalled["error"].as_str().expect("error").contains("idle"), "{stalled}");
}

#[tokio::test]
async fn bodiless_responses_are_recorded_as_complete() {
    let stack = Stack::start().await;
    let request = Request::head(stack.url("/tgi/echo"))
        .header("authorization", format!("Bearer {}", stack.token("alice")))
        .body(Body::empty())
        .expect("req");
    assert_eq!(stack.send(request).await.status, StatusCode::OK);
    let audit = stack.audit_at_least(1).await;
    assert_eq!(audit[0]["method"], "HEAD");
    assert!(audit[0]["error"].is_null(), "a HEAD response is complete, not abandoned: {}", audit[0]);
}

#[tokio::test]
async fn slow_header_senders_are_cut_and_oversized_headers_get_431() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start_with(Options {
        server_extra: "header_read_timeout = \"1s\"\nmax_header_bytes = 16384".into(),
        ..Options::default()
    })
    .await;
    // A client that starts its headers and never finishes them.
    let mut slow = tokio::net::TcpStream::connect(stack.server.proxy_addr).await.expect("connect");
    slow.write_all(b"GET /tgi/echo HTTP/1.1\r\nHost: gate\r\nX-Partial: ").await.expect("write");
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(8), slow.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "the connection must be closed, not held open");
    assert!(started.elapsed() >= Duration::from_millis(900) && started.elapsed() < Duration::from_secs(5));

    // Headers larger than max_header_bytes.
    let request = Request::get(stack.url("/tgi/echo"))
        .header("authorization", format!("Bearer {}", stack.token("alice")))
        .header("x-big", "a".repeat(40_000))
        .body(Body::empty())
        .expect("req");
    assert_eq!(stack.send(request).await.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    // Ordinary requests still pass.
    assert_eq!(stack.get("/tgi/echo", Some(&stack.token("alice"))).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_client_leaving_mid_stream_and_an_upstream_resetting_are_both_recorded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that sends part of a chunked body and then drops the connection.
    let broken_addr = common::raw_upstream(|mut socket| async move {
        let mut buf = [0u8; 4096];
        let _ = socket.read(&mut buf).await;
        let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n").await;
    })
    .await;
    let stack = Stack::start_with(Options {
        chunk_delay: Duration::from_millis(200),
        tail: format!("[[route]]\nname = \"broken\"\npath = \"/broken\"\nupstream = \"http://{broken_addr}\"\n"),
        ..Options::default()
    })
    .await;
    let token = stack.token("alice");

    let reset = Request::get(stack.url("/broken/x"))
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .expect("req");
    let response = stack.client.request(reset).await.expect("headers arrive");
    assert!(response.into_body().collect().await.is_err(), "a cut upstream body must not look complete to the client");

    // A client that reads the first event of a slow stream and goes away.
    let body = json!({"model": "tgi", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
    let response =
        stack.client.request(post_json(&stack, "/tgi/v1/chat/completions", &token, &body)).await.expect("response");
    let mut stream = response.into_body();
    let first = stream.frame().await.expect("a first frame").expect("ok");
    assert!(first.is_data());
    drop(stream);

    let audit = stack.audit_at_least(2).await;
    let by_path = |p: &str| audit.iter().find(|l| l["path"] == p).cloned().expect(p);
    let reset_line = by_path("/broken/x");
    assert!(reset_line["error"].as_str().expect("error").starts_with("upstream body error"), "{reset_line}");
    let left = by_path("/tgi/v1/chat/completions");
    assert_eq!(left["error"], "client closed the connection before the response ended");
    assert!(left["bytes_out"].as_u64().expect("bytes") > 0);
}

#[tokio::test]
async fn h2c_clients_are_served() {
    let stack = Stack::start().await;
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Body>();
    let request = Request::get(stack.url("/tgi/echo"))
        .header("authorization", format!("Bearer {}", stack.token("alice")))
        .body(Body::empty())
        .expect("req");
    let response = h2.request(request).await.expect("h2 response");
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), StatusCode::OK);
    let body: Value =
        serde_json::from_slice(&response.into_body().collect().await.expect("body").to_bytes()).expect("json");
    assert_eq!(body["headers"]["x-forwarded-user"], "alice");
}
