//! Failing dependencies: an issuer that is down at start, black-holes connections while hfgate serves,
//! or answers garbage; upstreams that refuse, reset, hang or stall; clients that leave. Nothing may
//! crash, no request may outlive its timeouts, an abandoned upstream request is cancelled, and every
//! request that reached hfgate leaves exactly one audit line.

mod common;

use std::time::{Duration, Instant};

use axum::body::Body;
use common::{Gate, IdpReply, Logs, Options, Probe, ScriptedIdp, Stack, raw_first_response, route_table};
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

/// hfgate in front of a scripted issuer, with fast refreshes; `issuer_extra` is added to its table.
async fn gate_for(idp: &ScriptedIdp, issuer_extra: &str) -> (Gate, hfgate::demo::MockUpstream) {
    let upstream = hfgate::demo::MockUpstream::start("127.0.0.1:0".parse().expect("addr"), Duration::ZERO, None)
        .await
        .expect("upstream");
    let dir = common::temp_dir("resilience");
    let issuer_extra = format!("jwks_refresh_interval = \"1s\"\njwks_refetch_min_interval = \"100ms\"\n{issuer_extra}");
    let options = Options { issuer_extra, ..Options::default() };
    let text = common::config_text_for(idp.issuer(), upstream.addr(), &dir, &options);
    (Gate::start(dir, &text).await, upstream)
}

const SHORT_TIMEOUTS: &str = "timeout = \"500ms\"\nidle_timeout = \"500ms\"";
/// Timeouts that cannot fire during a test: whatever ends the request, it is not a timeout.
const LONG_TIMEOUTS: &str = "timeout = \"60s\"\nidle_timeout = \"60s\"";

/// A stack whose `/probe/` route forwards to a recording upstream; `probe_extra` goes into that route.
async fn with_probe(probe_extra: &str, mut options: Options) -> (Stack, Probe) {
    let probe = Probe::start().await;
    options.tail = route_table("probe", "/probe/", probe.addr(), probe_extra) + &options.tail;
    (Stack::start_with(options).await, probe)
}

fn get(stack: &Stack, path: &str, token: &str) -> Request<Body> {
    Request::get(stack.url(path)).header("authorization", format!("Bearer {token}")).body(Body::empty()).expect("req")
}

// --- the issuer -----------------------------------------------------------------------------------------

/// An issuer refusing connections at start: not ready, a log line saying why, requests refused 503
/// quickly (and recorded); once it listens again hfgate becomes ready without a restart.
#[tokio::test]
async fn an_issuer_down_at_start_is_not_ready_and_recovers_when_it_returns() {
    let (logs, _guard) = Logs::capture();
    let idp = ScriptedIdp::start("127.0.0.1").await;
    idp.stop();
    let (gate, _upstream) = gate_for(&idp, "").await;

    let reason = logs.line(Duration::from_secs(5), |l| l.contains("JWKS") && l.contains("issuer=dev")).await;
    let reason = reason.unwrap_or_else(|| panic!("no log line about the issuer:\n{}", logs.text()));
    assert!(reason.contains(idp.issuer()), "the log names the issuer's URL: {reason}");
    assert!(reason.to_lowercase().contains("connection refused"), "the log says what failed: {reason}");
    let readyz = gate.readyz().await;
    assert_eq!(readyz.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(readyz.json()["issuers_loaded"]["dev"], false);

    let started = Instant::now();
    let early = gate.get("/tgi/echo/early", Some(&idp.token("alice"))).await;
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    assert_eq!(early.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(early.json()["error"], "temporarily_unavailable");
    assert_eq!(early.header("retry-after"), "5");

    idp.restart().await;
    assert!(gate.becomes_ready(Duration::from_secs(5)).await, "did not recover:\n{}", logs.text());
    assert_eq!(gate.get("/tgi/echo/late", Some(&idp.token("alice"))).await.status, StatusCode::OK);
    let audit = gate.audit();
    assert_eq!(audit.iter().filter(|l| l["path"] == "/tgi/echo/early").count(), 1);
    assert_eq!(audit.iter().filter(|l| l["path"] == "/tgi/echo/late").count(), 1);
}

/// An issuer that accepts connections and never answers, while hfgate serves: tokens signed by the
/// keys already loaded keep working, without waiting on the issuer.
#[tokio::test]
async fn loaded_keys_keep_serving_while_the_issuer_black_holes() {
    let idp = ScriptedIdp::start("127.0.0.1").await;
    let (gate, _upstream) = gate_for(&idp, "").await;
    assert!(gate.becomes_ready(Duration::from_secs(5)).await);
    assert_eq!(gate.get("/tgi/echo", Some(&idp.token("before"))).await.status, StatusCode::OK);

    idp.set_discovery(IdpReply::Hang);
    idp.set_jwks(IdpReply::Hang);
    // A refresh is now stuck on the issuer; fresh tokens (not in the verified-token cache) still pass.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for i in 0..3 {
        let started = Instant::now();
        let reply = gate.get(&format!("/tgi/echo/during-{i}"), Some(&idp.token(&format!("during-{i}")))).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
    }

    // A request with an unknown kid makes hfgate ask the stuck issuer again; a token of a known key sent
    // meanwhile is not held behind that refetch.
    let unknown = tokio::spawn({
        let client = gate.client.clone();
        let url = gate.url("/tgi/echo/unknown-kid");
        let token = idp.token_with_unknown_kid("mallory", "rotated");
        async move {
            let request =
                Request::get(url).header("authorization", format!("Bearer {token}")).body(Body::empty()).expect("req");
            common::send(&client, request).await
        }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let meanwhile = gate.get("/tgi/echo/meanwhile", Some(&idp.token("meanwhile"))).await;
    assert_eq!(meanwhile.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2), "held behind a refetch: {:?}", started.elapsed());
    // How fast the unknown kid itself is answered is the next test's subject.
    unknown.abort();
}

/// With the issuer black-holing connections, a token with an unknown kid is refused 401 with
/// a clear reason quickly, not after the issuer's fetch timeout; one audit line.
#[tokio::test]
async fn an_unknown_kid_is_refused_quickly_while_the_issuer_black_holes() {
    let idp = ScriptedIdp::start("127.0.0.1").await;
    let (gate, _upstream) = gate_for(&idp, "").await;
    assert!(gate.becomes_ready(Duration::from_secs(5)).await);
    idp.set_discovery(IdpReply::Hang);
    idp.set_jwks(IdpReply::Hang);
    tokio::time::sleep(Duration::from_millis(150)).await;

    let started = Instant::now();
    let reply = gate.get("/tgi/echo/unknown-kid", Some(&idp.token_with_unknown_kid("mallory", "rotated"))).await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    assert!(reply.description().contains("unknown kid 'rotated'"), "{}", reply.text());
    assert!(took < Duration::from_secs(5), "an unknown kid waited {took:?} on a black-holed issuer");
    let audit = gate.audit();
    assert_eq!(audit.iter().filter(|l| l["path"] == "/tgi/echo/unknown-kid").count(), 1);
}

/// Garbage from the JWKS endpoint, at start and later: a log line naming what was wrong each time, not
/// ready while there are no keys, and the last good keys kept afterwards.
#[tokio::test]
async fn jwks_garbage_is_named_in_the_log_and_the_last_good_keys_are_kept() {
    let (logs, _guard) = Logs::capture();
    let idp = ScriptedIdp::start("127.0.0.1").await;
    let html = IdpReply::Raw { status: 200, content_type: "text/html", body: "<html>maintenance</html>".into() };
    idp.set_jwks(html.clone());
    let (gate, _upstream) = gate_for(&idp, "").await;
    let first = logs.line(Duration::from_secs(5), |l| l.contains("JWKS") && l.contains("invalid JSON")).await;
    assert!(first.is_some(), "{}", logs.text());
    assert_eq!(gate.readyz().await.status, StatusCode::SERVICE_UNAVAILABLE);

    idp.set_jwks(IdpReply::Normal);
    assert!(gate.becomes_ready(Duration::from_secs(5)).await);
    let kid = idp.key().kid().to_string();

    for (i, (garbage, reason)) in [
        (html, "invalid JSON"),
        (IdpReply::Raw { status: 200, content_type: "application/json", body: "{\"keys\": [".into() }, "invalid JSON"),
        (IdpReply::Json(json!({"issuer": "no keys here"})), "not a JWKS"),
        (IdpReply::Json(json!({"keys": "not-an-array"})), "not a JWKS"),
        (
            IdpReply::Json(json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "bad", "x": "!!!", "y": "???"}]})),
            "no usable signing keys",
        ),
        (IdpReply::Json(json!({"keys": [{"kty": "RSA", "kid": "bad-rsa", "n": "%%%", "e": "AQAB"}]})), "no usable"),
        (IdpReply::Raw { status: 500, content_type: "text/plain", body: "oops".into() }, "HTTP status 500"),
    ]
    .into_iter()
    .enumerate()
    {
        idp.set_jwks(garbage);
        let mark = logs.mark();
        tokio::time::sleep(Duration::from_millis(150)).await;
        let started = Instant::now();
        let unknown = gate.get("/tgi/echo", Some(&idp.token_with_unknown_kid("mallory", &format!("new-{i}")))).await;
        assert_eq!(unknown.status, StatusCode::UNAUTHORIZED, "{reason}: {}", unknown.text());
        assert!(unknown.description().starts_with("unknown kid"), "{}", unknown.text());
        assert!(started.elapsed() < Duration::from_secs(5));
        let logged = logs.line_after(mark, Duration::from_secs(2), |l| l.contains(reason)).await;
        assert!(logged.is_some(), "no log line saying {reason:?}:\n{}", &logs.text()[mark..]);
        let good = gate.get("/tgi/echo", Some(&idp.token(&format!("good-{i}")))).await;
        assert_eq!(good.status, StatusCode::OK, "{reason}: the last good keys must be kept");
    }
    let kids: Vec<String> =
        gate.server.gateway.authn.issuers()[0].snapshot().expect("keys").kids().map(String::from).collect();
    assert_eq!(kids, [kid]);
}

// --- the upstream ---------------------------------------------------------------------------------------

/// Upstreams that accept and then reset, or answer something that is not HTTP: 502, one audit line.
#[tokio::test]
async fn an_upstream_resetting_or_speaking_garbage_before_its_headers_is_502() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reset_addr = common::raw_upstream(|mut socket| async move {
        let _ = socket.read(&mut [0u8; 4096]).await;
        // Linger 0: close with RST rather than FIN.
        let _ = socket.set_zero_linger();
    })
    .await;
    let garbage_addr = common::raw_upstream(|mut socket| async move {
        let _ = socket.read(&mut [0u8; 4096]).await;
        let _ = socket.write_all(b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await;
    })
    .await;
    let stack = Stack::start_with(Options {
        tail: route_table("reset", "/reset/", reset_addr, "") + &route_table("garbage", "/garbage/", garbage_addr, ""),
        ..Options::default()
    })
    .await;
    let token = stack.token("alice");
    for path in ["/reset/x", "/garbage/x"] {
        let started = Instant::now();
        let reply = stack.send(get(&stack, path, &token)).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{path}: {}", reply.text());
        assert_eq!(reply.json()["error"], "bad_gateway");
        assert!(started.elapsed() < Duration::from_secs(5));
        let line = stack.one_audit_line(path).await;
        assert!(line["error"].as_str().expect("error").starts_with("upstream unavailable"), "{line}");
    }
}

/// An upstream that never answers gets 504 at the route timeout, and its request is cancelled: the
/// upstream sees its connection closed instead of a request left dangling.
#[tokio::test]
async fn an_upstream_that_never_answers_is_cut_at_the_timeout_and_cancelled() {
    let (stack, probe) = with_probe(SHORT_TIMEOUTS, Options::default()).await;
    let started = Instant::now();
    let reply = stack.send(get(&stack, "/probe/hang/timeout", &stack.token("alice"))).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
    let cancelled =
        probe.wait_for(Duration::from_secs(3), |log| log.cancelled.iter().any(|t| t == "/hang/timeout")).await;
    assert!(cancelled, "the upstream request was left open: {:?}", probe.log());
    assert_eq!(stack.one_audit_line("/probe/hang/timeout").await["status"], 504);
}

/// An upstream that goes quiet mid-body is cut by the idle timeout and its stream is cancelled.
#[tokio::test]
async fn an_upstream_stalling_mid_body_is_cut_and_cancelled() {
    let (stack, probe) = with_probe(SHORT_TIMEOUTS, Options::default()).await;
    let response =
        stack.client.request(get(&stack, "/probe/stall/idle", &stack.token("alice"))).await.expect("headers");
    assert_eq!(response.status(), StatusCode::OK);
    let started = Instant::now();
    let body = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect()).await.expect("no hang");
    assert!(body.is_err(), "a cut body must not look complete");
    assert!(started.elapsed() < Duration::from_secs(3));
    let cancelled =
        probe.wait_for(Duration::from_secs(3), |log| log.cancelled.iter().any(|t| t == "/stall/idle")).await;
    assert!(cancelled, "the upstream stream was left open: {:?}", probe.log());
    let line = stack.one_audit_line("/probe/stall/idle").await;
    assert!(line["error"].as_str().expect("error").contains("idle"), "{line}");
}

// --- the client -----------------------------------------------------------------------------------------

/// A client leaving mid-stream: the upstream's stream is cancelled (it cannot send its next event), and
/// the audit line records the disconnect.
#[tokio::test]
async fn a_client_leaving_mid_stream_cancels_the_upstream_stream() {
    let (stack, probe) = with_probe(LONG_TIMEOUTS, Options::default()).await;
    let response = stack
        .client
        .request(get(&stack, "/probe/stream/left?chunks=100&ms=50", &stack.token("alice")))
        .await
        .expect("headers");
    let mut body = response.into_body();
    let first = body.frame().await.expect("a first frame").expect("ok");
    assert!(first.is_data());
    drop(body);

    let target = "/stream/left?chunks=100&ms=50";
    let cancelled = probe.wait_for(Duration::from_secs(3), |log| log.cancelled.iter().any(|t| t == target)).await;
    assert!(cancelled, "the upstream kept streaming to nobody: {:?}", probe.log());
    assert!(!probe.log().finished.iter().any(|t| t == target));
    let line = stack.one_audit_line("/probe/stream/left").await;
    assert_eq!(line["error"], "client closed the connection before the response ended");
}

/// A client leaving before the upstream's response headers: the upstream request is cancelled (no
/// timeout can fire meanwhile, so only the departure can have ended it), and the request still leaves
/// exactly one audit line, status 499, naming the disconnect.
#[tokio::test]
async fn a_client_leaving_before_the_response_cancels_the_upstream_request_and_is_audited_once() {
    let (stack, probe) = with_probe(LONG_TIMEOUTS, Options::default()).await;
    let request = format!(
        "GET /probe/hang/left-early HTTP/1.1\r\nHost: gate\r\nAuthorization: Bearer {}\r\n\r\n",
        stack.token("alice")
    );
    let stream = client_that_leaves(stack.server.proxy_addr, &request, &probe, "/hang/left-early").await;
    drop(stream);
    let cancelled =
        probe.wait_for(Duration::from_secs(3), |log| log.cancelled.iter().any(|t| t == "/hang/left-early")).await;
    assert!(cancelled, "the upstream request outlived its client: {:?}", probe.log());
    let line = stack.one_audit_line("/probe/hang/left-early").await;
    assert_eq!(line["status"], 499, "{line}");
    assert!(line["error"].as_str().is_some_and(|e| e.contains("client")), "{line}");
}

/// Sends `request` on a raw connection and returns it once the upstream has received the request.
async fn client_that_leaves(
    addr: std::net::SocketAddr,
    request: &str,
    probe: &Probe,
    target: &str,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    assert!(probe.wait_for(Duration::from_secs(3), |log| log.request(target).is_some()).await, "never forwarded");
    stream
}

// --- upstream connections -------------------------------------------------------------------------------

/// Requests one after another share one upstream connection, sent in origin form with the upstream's Host.
#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let (stack, probe) = with_probe("", Options::default()).await;
    let token = stack.token("alice");
    for i in 0..5 {
        let reply = stack.send(get(&stack, &format!("/probe/echo/{i}"), &token)).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    let log = probe.log();
    assert_eq!(log.connections, 1, "one connection for five requests: {log:?}");
    assert!(log.requests.iter().all(|r| r.connection == 0));
    let raw = String::from_utf8_lossy(&log.raw[0]);
    assert!(raw.starts_with("GET /echo/0 HTTP/1.1\r\n"), "origin form: {raw}");
    assert_eq!(log.requests[0].header_values("host"), [probe.addr().to_string()]);
}

/// An upstream that answers one request per connection, then closes it: with `Connection: close`, or
/// silently a moment later. The closed connection is never used again; every request gets its answer.
#[tokio::test]
async fn a_connection_the_upstream_closed_is_not_reused() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::AsyncWriteExt;
    for announced in [true, false] {
        let accepted = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let addr = common::raw_upstream(move |mut socket| {
            counter.fetch_add(1, Ordering::SeqCst);
            async move {
                if common::read_request_head(&mut socket).await.is_none() {
                    return;
                }
                let close = if announced { "Connection: close\r\n" } else { "" };
                let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n{close}\r\nok");
                let _ = socket.write_all(answer.as_bytes()).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let stack =
            Stack::start_with(Options { tail: route_table("once", "/once/", addr, ""), ..Options::default() }).await;
        let token = stack.token("alice");
        for i in 0..3 {
            let reply = stack.send(get(&stack, &format!("/once/{i}"), &token)).await;
            assert_eq!((reply.status, reply.text()), (StatusCode::OK, "ok".to_string()), "announced={announced}, {i}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3, "announced={announced}: one connection per request");
    }
}

/// An upstream that answers before reading the request body: while the upload goes on, its connection
/// stays busy, and the next request is answered on another connection instead of waiting behind it.
#[tokio::test]
async fn a_connection_still_uploading_does_not_hold_up_the_next_request() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Answers every request head at once and keeps reading (and ignoring) whatever follows.
    let addr = common::raw_upstream(|mut socket| async move {
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
            while let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                seen.drain(..end + 4);
                let _ = socket.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
            }
            if seen.len() > 64 * 1024 {
                seen.clear();
            }
        }
    })
    .await;
    let stack =
        Stack::start_with(Options { tail: route_table("early", "/early/", addr, ""), ..Options::default() }).await;
    let token = stack.token("alice");
    let (upload, body) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
    let body = Body::new(common::ChannelBody(body));
    let post = Request::post(stack.url("/early/upload"))
        .header("authorization", format!("Bearer {token}"))
        .body(body)
        .expect("req");
    upload.send(bytes::Bytes::from_static(b"first part")).await.expect("send");
    let answered = tokio::time::timeout(Duration::from_secs(5), stack.client.request(post)).await;
    let response = answered.expect("answered before the upload ends").expect("response");
    assert_eq!(response.status(), StatusCode::OK);
    let _ = response.into_body().collect().await;
    let next = tokio::time::timeout(Duration::from_secs(5), stack.send(get(&stack, "/early/next", &token))).await;
    assert_eq!(next.expect("the next request is not held up by the upload").status, StatusCode::OK);
    drop(upload);
}

// --- one audit line per request -------------------------------------------------------------------------

/// Every kind of answer hfgate gives itself, and every upstream outcome, leaves exactly one audit line
/// with the request's id; no line is written twice or for a request that did not happen.
#[tokio::test]
async fn every_request_leaves_exactly_one_audit_line() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed.local_addr().expect("addr");
    drop(closed);
    let (stack, probe) = with_probe(
        SHORT_TIMEOUTS,
        Options {
            tail: route_table("dead", "/dead/", dead, "")
                + &route_table(
                    "chat",
                    "/chat/",
                    "127.0.0.1:9".parse().expect("addr"),
                    "api = \"openai\"\nmax_body_peek = 1024",
                )
                + "\n[[allow]]\nroutes = [\"probe\", \"dead\", \"tgi\"]\n\n[[allow]]\nmodels = [\"allowed/x\"]\n",
            ..Options::default()
        },
    )
    .await;
    let token = stack.token("alice");
    let chat = |body: String| {
        Request::post(stack.url("/chat/v1/chat/completions"))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("req")
    };
    let bare = |path: &str| Request::get(stack.url(path)).body(Body::empty()).expect("req");
    let with_auth = |path: &str, value: String| {
        Request::get(stack.url(path)).header("authorization", value).body(Body::empty()).expect("req")
    };

    let mut ids: Vec<(String, u16)> = Vec::new();
    // The statuses each case may get (a body over max_body_peek is 400 or 413, by the body limit rules).
    let cases: Vec<(&str, Request<Body>, &[u16])> = vec![
        ("no route", bare("/nowhere/x"), &[404]),
        ("dot segment", bare("/probe/a/%2e%2e/b"), &[400]),
        ("missing token", bare("/probe/echo/none"), &[401]),
        ("garbage token", with_auth("/probe/echo/garbage", "Bearer not.a.jwt".into()), &[401]),
        ("oversized token", with_auth("/probe/echo/big", format!("Bearer {}", "A".repeat(20_000))), &[401]),
        ("hf token", with_auth("/probe/echo/hf", "Bearer hf_abcdefghijklmnop".into()), &[401]),
        ("basic auth", with_auth("/probe/echo/basic", "Basic YTpi".into()), &[401]),
        ("policy", chat(json!({"model": "denied/y"}).to_string()), &[403]),
        ("not json", chat("model=allowed/x".into()), &[400]),
        ("over the peek", chat(format!("{{\"model\":\"allowed/x\",\"pad\":\"{}\"}}", "p".repeat(2000))), &[400, 413]),
        ("refused upstream", get(&stack, "/dead/x", &token), &[502]),
        ("hanging upstream", get(&stack, "/probe/hang/all", &token), &[504]),
        ("ok", get(&stack, "/probe/echo/ok", &token), &[200]),
        ("streamed", get(&stack, "/probe/stream/all?chunks=3&ms=10", &token), &[200]),
    ];
    for (what, request, statuses) in cases {
        let reply = stack.send(request).await;
        assert!(statuses.contains(&reply.status.as_u16()), "{what}: {} {}", reply.status, reply.text());
        ids.push((reply.header("x-request-id").to_string(), reply.status.as_u16()));
    }
    // Responses whose bodies fail or are abandoned.
    let stalled = stack.client.request(get(&stack, "/probe/stall/all", &token)).await.expect("headers");
    ids.push((stalled.headers()["x-request-id"].to_str().expect("id").to_string(), 200));
    assert!(stalled.into_body().collect().await.is_err());
    let left = stack.client.request(get(&stack, "/probe/stream/gone?chunks=50&ms=50", &token)).await.expect("headers");
    ids.push((left.headers()["x-request-id"].to_str().expect("id").to_string(), 200));
    let mut body = left.into_body();
    let _ = body.frame().await;
    drop(body);
    let head = Request::head(stack.url("/probe/echo/head"))
        .header("authorization", format!("Bearer {token}"))
        .body(Body::empty())
        .expect("req");
    let head = stack.send(head).await;
    ids.push((head.header("x-request-id").to_string(), 200));

    // Lines are written when bodies end; give late duplicates time to show up too.
    stack.audit_at_least(ids.len()).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let audit = stack.audit();
    for (id, status) in &ids {
        assert!(!id.is_empty(), "every answer carries X-Request-Id");
        let lines: Vec<_> = audit.iter().filter(|l| l["request_id"] == *id).collect();
        assert_eq!(lines.len(), 1, "request {id} (status {status}) has {} audit lines: {lines:#?}", lines.len());
        assert_eq!(lines[0]["status"], *status, "{id}");
    }
    assert_eq!(audit.len(), ids.len(), "no line without a request: {audit:#?}");
    // The upstream saw only the requests that were forwarded.
    let forwarded: Vec<String> = probe.log().requests.iter().map(|r| r.target.clone()).collect();
    assert_eq!(forwarded.len(), 6, "{forwarded:?}");
}

/// Requests keep being answered after all of the above: a slow header sender, a request cut by the
/// header limit and a smuggling attempt do not take the listener down, nor leave audit lines behind.
#[tokio::test]
async fn the_listener_survives_hostile_connections() {
    use tokio::io::AsyncWriteExt;
    let stack = Stack::start_with(Options {
        server_extra: "header_read_timeout = \"500ms\"\nmax_header_bytes = 16384".into(),
        ..Options::default()
    })
    .await;
    let addr = stack.server.proxy_addr;
    let token = stack.token("alice");
    // Connections that never finish their headers, opened at once.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        stream.write_all(b"GET /tgi/echo HTTP/1.1\r\nHost: gate\r\nX-Slow: ").await.expect("write");
        slow.push(stream);
    }
    let oversized = format!("GET /tgi/echo HTTP/1.1\r\nHost: gate\r\nX-Big: {}\r\n\r\n", "b".repeat(40_000));
    let cut = raw_first_response(addr, oversized.as_bytes(), Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(cut.status, 431);
    let smuggle = "POST /tgi/echo HTTP/1.1\r\nHost: gate\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nAB";
    let refused = raw_first_response(addr, smuggle.as_bytes(), Duration::from_secs(5)).await.expect("an answer");
    assert_eq!(refused.status, 400);
    let started = Instant::now();
    assert_eq!(stack.get("/tgi/echo", Some(&token)).await.status, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_secs(2), "held up by slow connections: {:?}", started.elapsed());
    drop(slow);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Only the one real request reached the pipeline.
    assert_eq!(stack.audit().len(), 1, "{:#?}", stack.audit());
}
