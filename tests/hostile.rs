//! Hostile input: request body limits, request smuggling shapes, identity values that try to forge
//! headers, ambiguous and look-alike model ids, oversized tokens, hostile key documents and discovery
//! documents that point elsewhere. Every case is driven over real sockets on 127.0.0.1, raw TCP where
//! the bytes on the wire are the point.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use common::{
    Gate, IdpReply, Logs, Options, Probe, ScriptedIdp, Stack, parse_responses, raw_chunked_upload, raw_exchange,
    raw_first_response, route_table,
};
use hfgate::jose::{Algorithm, SigningKey};
use http::{Request, StatusCode};
use serde_json::json;

/// A stack whose `/probe/` route (api `tgi`) forwards to a recording upstream.
async fn with_probe(probe_extra: &str, mut options: Options) -> (Stack, Probe) {
    let probe = Probe::start().await;
    options.tail = route_table("probe", "/probe/", probe.addr(), probe_extra) + &options.tail;
    (Stack::start_with(options).await, probe)
}

/// The `/chat/` route: an OpenAI-compatible upstream where only `allowed/x` (and `kelvin/x`) may be called.
async fn with_chat_policy() -> (Stack, Probe) {
    let probe = Probe::start().await;
    let tail = route_table("chat", "/chat/", probe.addr(), "api = \"openai\"")
        + &route_table("router", "/router/", probe.addr(), "api = \"router\"")
        + "\n[[allow]]\ngroups = [\"ml-research\"]\nmodels = [\"allowed/x\", \"kelvin/x\"]\n";
    (Stack::start_with(Options { tail, ..Options::default() }).await, probe)
}

fn post_json(stack: &Stack, path: &str, token: &str, body: &str) -> Request<Body> {
    Request::post(stack.url(path))
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request")
}

/// Reverses hfgate's percent-encoding of identity header values.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).expect("ascii");
            out.push(u8::from_str_radix(hex, 16).expect("hex escape"));
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).expect("utf8")
}

// --- request body limits ------------------------------------------------------------------------------

/// `[server] max_request_body` defaults to 16 MiB; a larger Content-Length is refused 413
/// `request_too_large` before anything is sent upstream.
#[tokio::test]
async fn a_content_length_over_the_default_body_limit_is_refused_413_before_the_upstream() {
    let (stack, probe) = with_probe("", Options::default()).await;
    let token = stack.token("alice");
    // Only the head is sent: the refusal must not wait for 16 MiB that never come.
    let head = format!(
        "POST /probe/echo/over-default HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        16 * 1024 * 1024 + 1
    );
    let response = raw_first_response(stack.server.proxy_addr, head.as_bytes(), Duration::from_secs(5))
        .await
        .expect("an answer without the body being sent");
    assert_eq!(response.status, 413, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.json()["error"], "request_too_large");
    assert!(probe.log().requests.is_empty(), "nothing may reach the upstream: {:?}", probe.log().requests);
    let line = stack.one_audit_line("/probe/echo/over-default").await;
    assert_eq!(line["status"], 413);
}

/// The server-wide limit and a per-route override, by Content-Length and for a chunked body
/// that grows past the limit while it streams (the upstream request is aborted, the caller gets 413).
#[tokio::test]
async fn body_limits_apply_per_route_by_length_and_while_streaming() {
    let probe_limit = 64 * 1024;
    let (stack, probe) = with_probe(
        "max_request_body = \"64KiB\"",
        Options { server_extra: "max_request_body = \"1MiB\"".into(), ..Options::default() },
    )
    .await;
    let token = stack.token("alice");
    let addr = stack.server.proxy_addr;
    let head = |path: &str, length: usize| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\
             Content-Length: {length}\r\n\r\n"
        )
    };

    // Over the route's limit by length: refused without a byte upstream.
    let over = raw_first_response(addr, head("/probe/echo/route-over", 100_000).as_bytes(), Duration::from_secs(5))
        .await
        .expect("an answer to an over-long Content-Length");
    assert_eq!(over.status, 413);
    assert_eq!(over.json()["error"], "request_too_large");
    assert!(over.json()["request_id"].is_string());
    // Over the server's limit on the main route (which has no override).
    let server_over =
        raw_first_response(addr, head("/tgi/echo/server-over", 2 * 1024 * 1024).as_bytes(), Duration::from_secs(5))
            .await
            .expect("an answer to an over-long Content-Length");
    assert_eq!(server_over.status, 413);
    // Under both limits: forwarded whole.
    let small = stack
        .send(
            Request::post(stack.url("/probe/echo/under"))
                .header("authorization", format!("Bearer {token}"))
                .body(Body::from(vec![b'x'; 1000]))
                .expect("request"),
        )
        .await;
    assert_eq!(small.status, StatusCode::OK, "{}", small.text());
    assert_eq!(small.json()["body_bytes"], 1000);
    // 100 KB passes the server-wide limit on the main route, which has no override.
    let wide_ok = stack
        .send(
            Request::post(stack.url("/tgi/echo"))
                .header("authorization", format!("Bearer {token}"))
                .body(Body::from(vec![b'x'; 100_000]))
                .expect("request"),
        )
        .await;
    assert_eq!(wide_ok.status, StatusCode::OK, "{}", wide_ok.text());

    // A chunked body with no announced length, growing past 64 KiB in 8 KiB chunks.
    let chunked = format!(
        "POST /probe/echo/chunked-over HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {token}\r\n\
         Connection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let cut = raw_chunked_upload(addr, &chunked, 32, 8 * 1024, Duration::from_millis(5), Duration::from_secs(5))
        .await
        .expect("an answer to a body growing past the limit");
    assert_eq!(cut.status, 413, "{}", String::from_utf8_lossy(&cut.body));
    assert_eq!(cut.json()["error"], "request_too_large");
    // The upstream may have seen the start of the body, never more than the limit, and never its end.
    let aborted = probe
        .wait_for(Duration::from_secs(5), |log| {
            log.request("/echo/chunked-over").is_none_or(|r| r.body != common::BodyEnd::Reading)
        })
        .await;
    assert!(aborted, "the upstream request must be aborted: {:?}", probe.log().requests);
    if let Some(seen) = probe.log().request("/echo/chunked-over") {
        assert_ne!(seen.body, common::BodyEnd::Complete, "the upstream must not see a complete body");
        assert!(seen.body_bytes <= probe_limit, "{} bytes went upstream", seen.body_bytes);
    }

    assert!(probe.log().request("/echo/route-over").is_none());
    let declared = stack.one_audit_line("/probe/echo/route-over").await;
    assert_eq!((&declared["status"], &declared["decision"]["allow"]), (&json!(413), &json!(false)), "{declared}");
    assert_eq!(stack.one_audit_line("/tgi/echo/server-over").await["status"], 413);
    // Refused on the way, after it was authorized and forwarded: the decision stands, the error says why.
    let streamed = stack.one_audit_line("/probe/echo/chunked-over").await;
    assert_eq!(streamed["status"], 413);
    assert_eq!(streamed["decision"]["allow"], true, "{streamed}");
    assert!(streamed["error"].is_string(), "the audit line says why: {streamed}");
}

// --- request smuggling ----------------------------------------------------------------------------------

/// Framing that hyper refuses outright: 400, the connection closed, nothing upstream, nothing smuggled.
#[tokio::test]
async fn malformed_framing_is_refused_400_and_never_reaches_the_upstream() {
    let (stack, probe) = with_probe("", Options::default()).await;
    let token = stack.token("alice");
    let smuggled = format!("GET /probe/echo/smuggled HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {token}\r\n\r\n");
    for (name, framing, body) in [
        ("two-lengths", "Content-Length: 4\r\nContent-Length: 10\r\n", "ABCD"),
        ("signed-length", "Content-Length: +4\r\n", "ABCD"),
        ("te-not-chunked", "Transfer-Encoding: gzip\r\n", "ABCD"),
        ("te-chunked-not-last", "Transfer-Encoding: chunked, identity\r\n", "0\r\n\r\n"),
        ("te-xchunked", "Transfer-Encoding: xchunked\r\n", "0\r\n\r\n"),
        ("space-before-colon", "Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
    ] {
        let request = format!(
            "POST /probe/echo/{name} HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {token}\r\n{framing}\r\n{body}{smuggled}"
        );
        let (bytes, closed) = raw_exchange(stack.server.proxy_addr, request.as_bytes(), Duration::from_secs(5)).await;
        let responses = parse_responses(&bytes);
        assert_eq!(responses.len(), 1, "{name}: {}", String::from_utf8_lossy(&bytes));
        assert_eq!(responses[0].status, 400, "{name}");
        assert!(closed, "{name}: the connection must be closed after a framing error");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(probe.log().requests.is_empty(), "{:?}", probe.log().requests);
    assert!(stack.audit_for_path("/probe/echo/smuggled").is_empty());
}

/// Content-Length together with Transfer-Encoding (CL.TE and TE.CL shapes): whatever the answer, the
/// bytes after the chunked body are never parsed as a second request, and the connection is closed.
#[tokio::test]
async fn content_length_with_transfer_encoding_never_smuggles_a_second_request() {
    let (stack, probe) = with_probe("", Options::default()).await;
    let token = stack.token("alice");
    let smuggled = format!("GET /probe/echo/smuggled HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {token}\r\n\r\n");
    // CL.TE: Content-Length covers the smuggled request, the chunked body ends before it.
    let body = format!("0\r\n\r\n{smuggled}");
    for (name, framing) in [
        ("cl-te", format!("Content-Length: {}\r\nTransfer-Encoding: chunked\r\n", body.len())),
        ("te-cl", format!("Transfer-Encoding: chunked\r\nContent-Length: {}\r\n", body.len())),
        ("te-cl-short", "Transfer-Encoding: chunked\r\nContent-Length: 3\r\n".to_string()),
    ] {
        let request = format!(
            "POST /probe/echo/{name} HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {token}\r\n{framing}\r\n{body}"
        );
        let (bytes, closed) = raw_exchange(stack.server.proxy_addr, request.as_bytes(), Duration::from_secs(5)).await;
        let responses = parse_responses(&bytes);
        assert_eq!(responses.len(), 1, "{name}: exactly one answer: {}", String::from_utf8_lossy(&bytes));
        assert!(closed, "{name}: the connection must be closed after an ambiguous framing");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = probe.log();
    assert!(log.request("/echo/smuggled").is_none(), "a request was smuggled: {:?}", log.requests);
    // Whatever was forwarded carried the (empty) chunked body only, never the bytes after it.
    for seen in &log.requests {
        assert_eq!(seen.body_bytes, 0, "{seen:?}");
    }
    for raw in &log.raw {
        assert!(!String::from_utf8_lossy(raw).contains("smuggled"), "{}", String::from_utf8_lossy(raw));
    }
    assert!(stack.audit_for_path("/probe/echo/smuggled").is_empty());
}

/// Two identical Content-Length headers may be accepted, but the connection must stay in sync: the
/// pipelined request after the body is parsed as its own request (or the connection is closed).
#[tokio::test]
async fn identical_duplicate_content_lengths_do_not_desync_the_connection() {
    let (stack, probe) = with_probe("", Options::default()).await;
    let token = stack.token("alice");
    let request = format!(
        "POST /probe/echo/dup-length HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 4\r\nContent-Length: 4\r\n\r\nABCD\
         GET /probe/echo/after-dup HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    let (bytes, closed) = raw_exchange(stack.server.proxy_addr, request.as_bytes(), Duration::from_secs(5)).await;
    assert!(closed, "the second request asked to close");
    let responses = parse_responses(&bytes);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let log = probe.log();
    match responses.as_slice() {
        [refused] => {
            assert_eq!(refused.status, 400);
            assert!(log.requests.is_empty(), "{:?}", log.requests);
        }
        [first, second] => {
            assert_eq!((first.status, second.status), (200, 200), "{}", String::from_utf8_lossy(&bytes));
            assert_eq!(first.json()["target"], "/echo/dup-length");
            assert_eq!(first.json()["body_bytes"], 4);
            assert_eq!(second.json()["target"], "/echo/after-dup");
            assert_eq!(second.json()["method"], "GET");
            let targets: Vec<&str> = log.requests.iter().map(|r| r.target.as_str()).collect();
            assert_eq!(targets, ["/echo/dup-length", "/echo/after-dup"]);
            let post = log.request("/echo/dup-length").expect("post");
            assert_eq!(post.header_values("content-length"), ["4"], "one length goes upstream");
            assert_eq!(post.body, common::BodyEnd::Complete);
        }
        other => panic!("unexpected answers: {other:?}"),
    }
}

// --- identity header injection --------------------------------------------------------------------------

/// Claims holding CR/LF, commas and percent signs reach the upstream as exactly one header each, with
/// list items that split back into the original groups.
#[tokio::test]
async fn identity_values_cannot_forge_headers_or_split_groups() {
    let (stack, probe) = with_probe("", Options::default()).await;
    let groups = ["a\r\nX-Evil: 1", "a,b", "a%2Cb", "ops", "é\u{0}"];
    let mut claims = stack.issuer.claims("bob\r\nX-Evil-User: 1", &groups, Duration::from_secs(600));
    claims["email"] = json!("bob@corp.example\r\nX-Evil-Mail: 1");
    let token = stack.issuer.mint(&claims);

    let reply = stack.get("/probe/echo/identity", Some(&token)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let log = probe.log();
    let seen = log.request("/echo/identity").expect("the request reached the upstream");

    // On the wire: no forged header line, one line per identity header.
    let raw = String::from_utf8_lossy(&log.raw[seen.connection]).to_ascii_lowercase();
    let head = raw.split("\r\n\r\n").next().expect("head");
    for line in head.split("\r\n").skip(1) {
        assert!(!line.starts_with("x-evil"), "a forged header reached the upstream: {line:?}");
        assert!(!line.contains('\n') && !line.contains('\r'), "{line:?}");
    }
    assert!(!seen.headers.iter().any(|(n, _)| n.starts_with("x-evil")), "{:?}", seen.headers);
    for name in ["x-forwarded-user", "x-forwarded-email", "x-forwarded-groups"] {
        assert_eq!(seen.header_values(name).len(), 1, "{name}: {:?}", seen.headers);
    }

    // The values decode back to the claims, and the groups list splits into exactly the original groups.
    assert_eq!(percent_decode(seen.header_values("x-forwarded-user")[0]), "bob\r\nX-Evil-User: 1");
    assert_eq!(percent_decode(seen.header_values("x-forwarded-email")[0]), "bob@corp.example\r\nX-Evil-Mail: 1");
    let listed: Vec<String> = seen.header_values("x-forwarded-groups")[0].split(',').map(percent_decode).collect();
    assert_eq!(listed, groups);

    // The signed assertion carries the same groups, as JSON.
    let assertion = seen.header_values("x-hfgate-assertion")[0];
    let parsed = hfgate::authn::jwt::parse(assertion).expect("assertion");
    assert_eq!(parsed.claims["groups"], json!(groups));

    // The audit line stays one line and records the groups as they are.
    let line = stack.one_audit_line("/probe/echo/identity").await;
    assert_eq!(line["identity"]["groups"], json!(groups));
    assert_eq!(line["identity"]["subject"], "bob\r\nX-Evil-User: 1");
}

// --- duplicate and look-alike model ids ------------------------------------------------------------------

/// A body naming `model` twice at its top level is ambiguous (hfgate and the upstream could
/// read different models) and is refused 400 before the upstream; duplicates below the top level do not
/// name the model and pass.
#[tokio::test]
async fn duplicate_top_level_model_keys_are_refused_as_ambiguous() {
    let (stack, probe) = with_chat_policy().await;
    let token = stack.token("alice");
    let path = "/chat/v1/chat/completions";
    let mut ids = Vec::new();
    for body in [
        r#"{"model":"allowed/x","model":"denied/y","messages":[]}"#,
        r#"{"model":"denied/y","messages":[],"model":"allowed/x"}"#,
        r#"{"model":"allowed/x","mod\u0065l":"denied/y"}"#,
    ] {
        let reply = stack.send(post_json(&stack, path, &token, body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}: {}", reply.text());
        assert_eq!(reply.json()["error"], "invalid_request", "{body}");
        let description = reply.json()["error_description"].as_str().expect("description").to_string();
        assert!(description.contains("model"), "{body}: {description}");
        ids.push(reply.header("x-request-id").to_string());
    }
    assert!(probe.log().requests.is_empty(), "an ambiguous body reached the upstream");

    for body in [
        r#"{"model":"allowed/x","metadata":{"model":"denied/y","model":"other/z"}}"#,
        r#"{"model":"allowed/x","messages":[{"role":"user","content":"hi","model":"denied/y"}]}"#,
    ] {
        let reply = stack.send(post_json(&stack, path, &token, body)).await;
        assert_eq!(reply.status, StatusCode::OK, "{body}: {}", reply.text());
        assert_eq!(reply.json()["body_bytes"], body.len(), "the body is forwarded unchanged");
        ids.push(reply.header("x-request-id").to_string());
    }
    for id in ids {
        assert_eq!(stack.audit_for_id(&id).len(), 1, "one audit line for {id}");
    }
}

/// Model ids that look like an allowed one but are spelled with other code points never match the
/// ASCII rule, and never crash anything.
#[tokio::test]
async fn unicode_look_alike_model_ids_do_not_match_ascii_rules() {
    let (stack, probe) = with_chat_policy().await;
    let token = stack.token("alice");
    let path = "/chat/v1/chat/completions";
    let send = |model: &str| {
        let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}).to_string();
        stack.send(post_json(&stack, path, &token, &body))
    };
    for model in [
        "\u{430}llowed/x",         // Cyrillic 'а'
        "\u{ff41}\u{ff4c}lowed/x", // fullwidth 'ａｌ'
        "\u{ff21}LLOWED/X",        // fullwidth capital, which Unicode lowercasing would map to 'ａ'
        "allowed\u{2215}x",        // division slash
        "allowed/x\u{200b}",       // zero-width space
        "allowed/x\u{301}",        // combining accent
        "\u{202e}x/dewolla",       // right-to-left override
        "\u{212a}elvin/x",         // Kelvin sign, which Unicode lowercases to ASCII 'k'
        "allowed\u{ff0f}x",        // fullwidth solidus
    ] {
        let reply = send(model).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{model:?}: {}", reply.text());
        assert_eq!(reply.json()["error"], "insufficient_scope");
    }
    assert!(probe.log().requests.is_empty(), "a look-alike reached the upstream");
    let audit = stack.audit();
    assert!(
        audit.iter().any(|l| l["model"]["id"] == "\u{430}llowed/x" && l["status"] == 403),
        "the audit records the id as sent"
    );

    // Router ids are Hub repo ids: non-ASCII is refused as an invalid id.
    let router =
        stack.send(post_json(&stack, "/router/v1/chat/completions", &token, r#"{"model":"\u0430llowed/x"}"#)).await;
    assert_eq!(router.status, StatusCode::BAD_REQUEST, "{}", router.text());

    // The ASCII id (in any ASCII case, as Hub ids are case-insensitive) still passes: nothing broke.
    assert_eq!(send("allowed/x").await.status, StatusCode::OK);
    assert_eq!(send("Allowed/X").await.status, StatusCode::OK);
    assert_eq!(send("kelvin/x").await.status, StatusCode::OK);
}

// --- oversized tokens -----------------------------------------------------------------------------------

/// A validly signed token of about 100 KB: the claims are padded, the signature is genuine.
fn token_of_100_kb(stack: &Stack) -> String {
    let mut claims = stack.issuer.claims("alice", &["ml-research"], Duration::from_secs(600));
    claims["pad"] = json!("p".repeat(75_000));
    let token = stack.issuer.mint(&claims);
    assert!(token.len() > 100_000, "{}", token.len());
    token
}

/// With the default 64 KiB header limit a 100 KB token is cut by the HTTP layer: 431, quickly.
#[tokio::test]
async fn a_100_kb_token_gets_431_under_the_default_header_limit() {
    let stack = Stack::start().await;
    let token = token_of_100_kb(&stack);
    let started = Instant::now();
    let reply = stack.get("/tgi/echo/huge-token", Some(&token)).await;
    assert_eq!(reply.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    // Refused while parsing the head, before a request exists; never recorded twice.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(stack.audit_for_path("/tgi/echo/huge-token").len() <= 1);
    assert_eq!(stack.get("/tgi/echo", Some(&stack.token("alice"))).await.status, StatusCode::OK);
}

/// With a raised header limit the token reaches hfgate, which refuses anything over 16 KiB as
/// `invalid_token` "token too large" without parsing it; one audit line each.
#[tokio::test]
async fn tokens_over_16_kib_are_refused_401_without_parsing() {
    let stack =
        Stack::start_with(Options { server_extra: "max_header_bytes = 262144".into(), ..Options::default() }).await;
    let huge = token_of_100_kb(&stack);
    // Not a JWT at all: only a size check can answer "too large" for it.
    let junk = "A".repeat(16 * 1024 + 1);
    for (path, token) in [("/tgi/echo/huge-token", huge.as_str()), ("/tgi/echo/junk-token", junk.as_str())] {
        let started = Instant::now();
        let reply = stack.get(path, Some(token)).await;
        assert!(started.elapsed() < Duration::from_secs(5), "{path}: took {:?}", started.elapsed());
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{path}: {}", reply.text());
        let description = reply.description();
        assert!(description.contains("too large"), "{path}: {description}");
        let line = stack.one_audit_line(path).await;
        assert_eq!(line["status"], 401);
        assert_eq!(line["request_id"], reply.header("x-request-id"));
    }
}

// --- hostile key documents ------------------------------------------------------------------------------

/// hfgate in front of a scripted issuer; `issuer_extra` goes into its `[[issuer]]` table.
async fn gate_for(idp: &ScriptedIdp, issuer_extra: &str) -> Gate {
    let upstream = hfgate::demo::MockUpstream::start("127.0.0.1:0".parse().expect("addr"), Duration::ZERO, None)
        .await
        .expect("upstream");
    let dir = common::temp_dir("hostile");
    let options = Options { issuer_extra: issuer_extra.to_string(), ..Options::default() };
    let text = common::config_text_for(idp.issuer(), upstream.addr(), &dir, &options);
    let gate = Gate::start(dir, &text).await;
    // The upstream lives as long as the test's runtime; keep it out of the way.
    std::mem::forget(upstream);
    gate
}

const FAST_REFRESH: &str = "jwks_refresh_interval = \"1s\"\njwks_refetch_min_interval = \"100ms\"";

/// A 10 MB JWKS (which would hold a valid key if read whole) is cut at the document limit: the issuer
/// is not ready while it is all there is, and later it leaves the last good keys in place.
#[tokio::test]
async fn a_10_mb_jwks_is_refused_at_the_document_limit_and_good_keys_are_kept() {
    let (logs, _guard) = Logs::capture();
    let idp = ScriptedIdp::start("127.0.0.1").await;
    let mut doc = idp.jwks();
    doc["padding"] = json!("p".repeat(10 * 1024 * 1024));
    let huge = IdpReply::Raw { status: 200, content_type: "application/json", body: doc.to_string().into() };
    idp.set_jwks(huge.clone());

    let gate = gate_for(&idp, FAST_REFRESH).await;
    let reason = logs.line(Duration::from_secs(5), |l| l.contains("JWKS") && l.contains("larger than")).await;
    assert!(reason.is_some(), "the log says why no keys loaded:\n{}", logs.text());
    let not_ready = gate.readyz().await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.json()["issuers_loaded"]["dev"], false);

    idp.set_jwks(IdpReply::Normal);
    assert!(gate.becomes_ready(Duration::from_secs(5)).await, "the issuer comes back");
    assert_eq!(gate.get("/tgi/echo", Some(&idp.token("before"))).await.status, StatusCode::OK);

    idp.set_jwks(huge);
    let fetches = idp.jwks_fetches();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    let unknown = gate.get("/tgi/echo", Some(&idp.token_with_unknown_kid("mallory", "rotated"))).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED, "{}", unknown.text());
    assert!(unknown.description().starts_with("unknown kid 'rotated'"), "{}", unknown.text());
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert!(idp.jwks_fetches() > fetches, "the unknown kid caused a refetch");
    // The refetch failed: the good keys are still there.
    assert_eq!(gate.get("/tgi/echo", Some(&idp.token("after"))).await.status, StatusCode::OK);
    assert!(gate.metrics().await.contains("hfgate_jwks_fetches_total{issuer=\"dev\",result=\"error\"}"));
}

/// A JWKS of 10,000 entries: at most the first 64 are considered, so a key published further down is
/// never used and the document costs no more than 64 key parses. 10,000 real keys exceed the 1 MiB
/// document limit and are refused whole, keeping the last good keys.
#[tokio::test]
async fn a_jwks_of_10000_keys_is_cut_at_the_key_limit() {
    let (logs, _guard) = Logs::capture();
    let idp = ScriptedIdp::start("127.0.0.1").await;
    let late = SigningKey::generate(Algorithm::ES256).expect("key").with_kid("late-key");
    let mut keys = vec![idp.key().public_jwk()];
    keys.extend((1..9_999).map(|i| json!({"kty": "EC", "crv": "P-256", "kid": format!("junk-{i}")})));
    keys.push(late.public_jwk());
    assert_eq!(keys.len(), 10_000);
    idp.set_jwks(IdpReply::Json(json!({ "keys": keys })));

    let started = Instant::now();
    let gate = gate_for(&idp, FAST_REFRESH).await;
    assert!(gate.becomes_ready(Duration::from_secs(5)).await, "the first key is usable:\n{}", logs.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(gate.get("/tgi/echo", Some(&idp.token("alice"))).await.status, StatusCode::OK);
    let warned = logs.line(Duration::from_secs(2), |l| l.contains("more than 64 keys")).await;
    assert!(warned.is_some(), "the log says the JWKS was cut:\n{}", logs.text());

    let late_token = late.sign_jwt(&json!({"typ": "at+jwt"}), &idp.claims("late", &[])).expect("sign");
    let reply = gate.get("/tgi/echo", Some(&late_token)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert_eq!(reply.description(), "unknown kid 'late-key': not in the JWKS of issuer dev");
    let kids: Vec<String> =
        gate.server.gateway.authn.issuers()[0].snapshot().expect("keys").kids().map(String::from).collect();
    assert_eq!(kids, [idp.key().kid().to_string()], "junk entries are skipped, nothing past the limit is read");

    // 10,000 genuine-looking keys: over the document limit, refused as a whole; the last good keys stay.
    let mut real = Vec::new();
    for i in 0..10_000 {
        let mut jwk = idp.key().public_jwk();
        jwk["kid"] = json!(format!("k{i}"));
        real.push(jwk);
    }
    idp.set_jwks(IdpReply::Json(json!({ "keys": real })));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let unknown = gate.get("/tgi/echo", Some(&idp.token_with_unknown_kid("mallory", "k77"))).await;
    assert_eq!(unknown.status, StatusCode::UNAUTHORIZED);
    let refused = logs.line(Duration::from_secs(2), |l| l.contains("larger than")).await;
    assert!(refused.is_some(), "{}", logs.text());
    assert_eq!(gate.get("/tgi/echo", Some(&idp.token("still"))).await.status, StatusCode::OK);
}

// --- discovery documents pointing elsewhere --------------------------------------------------------------

/// The discovery document's `issuer` must be the configured issuer exactly (OpenID Connect Discovery
/// §4.3): another value leaves the issuer not ready, and the log says why.
#[tokio::test]
async fn a_discovery_document_naming_another_issuer_is_not_trusted() {
    let (logs, _guard) = Logs::capture();
    let idp = ScriptedIdp::start("127.0.0.1").await;
    let mut doc = idp.discovery();
    doc["issuer"] = json!("http://idp.attacker.example");
    idp.set_discovery(IdpReply::Json(doc));
    let gate = gate_for(&idp, FAST_REFRESH).await;
    let reason = logs.line(Duration::from_secs(5), |l| l.contains("differs from the configured issuer")).await;
    assert!(reason.expect("a log line").contains("idp.attacker.example"));
    assert_eq!(idp.jwks_fetches(), 0, "keys named by an untrusted document are never fetched");
    let readyz = gate.readyz().await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz.json()["issuers_loaded"]["dev"], false);
}

/// A discovered `jwks_uri` must share the issuer's origin; keys on another host (or port)
/// are not fetched, the issuer is not ready, and the log names the refused `jwks_uri`.
#[tokio::test]
async fn a_discovered_jwks_uri_on_another_origin_is_not_followed() {
    let (logs, _guard) = Logs::capture();
    let idp = ScriptedIdp::start("127.0.0.1").await;
    // The foreign hosts publish the issuer's genuine key: only the origin rule can refuse them.
    let other_host = ScriptedIdp::start("127.0.0.2").await;
    let other_port = ScriptedIdp::start("127.0.0.1").await;
    for foreign in [&other_host, &other_port] {
        foreign.set_jwks(IdpReply::Json(idp.jwks()));
        let jwks_uri = format!("{}/jwks.json", foreign.issuer());
        let mut doc = idp.discovery();
        doc["jwks_uri"] = json!(jwks_uri);
        idp.set_discovery(IdpReply::Json(doc));
        let gate = gate_for(&idp, FAST_REFRESH).await;
        let reason = logs.line(Duration::from_secs(5), |l| l.contains(&jwks_uri) && l.contains("WARN")).await;
        let ready = gate.readyz().await;
        assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{jwks_uri} was followed: {}", ready.text());
        assert_eq!(foreign.jwks_fetches(), 0, "{jwks_uri} was fetched");
        let reason = reason.unwrap_or_else(|| panic!("no log names {jwks_uri}:\n{}", logs.text()));
        assert!(reason.contains("origin") || reason.contains("host"), "{reason}");
        gate.server.shutdown().await;
    }
}

/// A `jwks_uri` configured explicitly may live on another host: that is the operator's choice, and
/// discovery is not consulted at all.
#[tokio::test]
async fn a_configured_jwks_uri_may_live_on_another_host() {
    let idp = ScriptedIdp::start("127.0.0.1").await;
    let keys_host = ScriptedIdp::start("127.0.0.2").await;
    keys_host.set_jwks(IdpReply::Json(idp.jwks()));
    idp.set_discovery(IdpReply::Hang);
    let gate = gate_for(&idp, &format!("jwks_uri = \"{}/jwks.json\"", keys_host.issuer())).await;
    assert!(gate.becomes_ready(Duration::from_secs(5)).await);
    assert_eq!(gate.get("/tgi/echo", Some(&idp.token("alice"))).await.status, StatusCode::OK);
    assert_eq!(idp.discovery_fetches(), 0);
    assert!(keys_host.jwks_fetches() >= 1);
}
