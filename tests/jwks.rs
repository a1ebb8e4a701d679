//! Key lifecycle: rotation without restart, the unknown-kid flood bound, outages, readiness.

mod common;

use std::time::{Duration, Instant};

use common::{Options, Stack};
use hfgate::jose::{Algorithm, b64url};
use http::StatusCode;
use serde_json::json;

#[tokio::test]
async fn issuer_key_rotation_is_picked_up_without_restart() {
    let stack = Stack::start().await;
    let old_token = stack.token("alice");
    assert_eq!(stack.get("/tgi/echo", Some(&old_token)).await.status, StatusCode::OK);
    let fetches_before = stack.issuer.jwks_fetches();

    let new_key = stack.issuer.rotate(Algorithm::ES256).expect("rotate");
    let new_token = stack.token("bob");
    assert!(new_token.contains('.'));
    let reply = stack.get("/tgi/echo", Some(&new_token)).await;
    assert_eq!(reply.status, StatusCode::OK, "a token from the rotated key: {}", reply.text());
    assert_eq!(stack.issuer.jwks_fetches(), fetches_before + 1, "one refetch for the new kid");
    let kids: Vec<String> =
        stack.server.gateway.authn.issuers()[0].snapshot().expect("keys").kids().map(String::from).collect();
    assert!(kids.contains(&new_key.kid().to_string()));

    // Tokens signed by the previous key remain valid while it is published.
    assert_eq!(stack.get("/tgi/echo", Some(&old_token)).await.status, StatusCode::OK);

    let metrics = stack
        .client
        .request(http::Request::get(stack.admin_url("/metrics")).body(axum::body::Body::empty()).expect("req"))
        .await
        .expect("metrics");
    let text = String::from_utf8(
        http_body_util::BodyExt::collect(metrics.into_body()).await.expect("body").to_bytes().to_vec(),
    )
    .expect("utf8");
    assert!(text.contains("hfgate_jwks_fetches_total{issuer=\"dev\",result=\"ok\"} 2"), "{text}");
}

/// A key the issuer withdraws stops vouching for tokens it signed, even those already verified and cached.
#[tokio::test]
async fn a_withdrawn_key_revokes_cached_tokens() {
    let stack = Stack::start().await;
    let old_token = stack.token("alice");
    assert_eq!(stack.get("/tgi/echo", Some(&old_token)).await.status, StatusCode::OK, "verified and cached");

    stack.issuer.rotate(Algorithm::ES256).expect("rotate");
    stack.issuer.retire_old_keys();
    // A token of the new key makes hfgate refetch the JWKS, which no longer holds the old key.
    assert_eq!(stack.get("/tgi/echo", Some(&stack.token("bob"))).await.status, StatusCode::OK);

    let reply = stack.get("/tgi/echo", Some(&old_token)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    assert!(reply.description().starts_with("unknown kid"), "{}", reply.description());
}

#[tokio::test]
async fn a_flood_of_unknown_kids_costs_the_issuer_at_most_one_fetch_per_interval() {
    let stack =
        Stack::start_with(Options { issuer_extra: "jwks_refetch_min_interval = \"30s\"".into(), ..Options::default() })
            .await;
    let claims = stack.issuer.claims("mallory", &[], Duration::from_secs(600));
    let before = stack.issuer.jwks_fetches();
    let mut tasks = Vec::new();
    for i in 0..300 {
        // Random kids with junk signatures: refused at the key lookup, which is what a flood targets.
        let header = json!({"alg": "ES256", "kid": format!("random-{i}")});
        let token = format!("{}.{}.{}", b64url(header.to_string()), b64url(claims.to_string()), b64url([1u8; 64]));
        let client = stack.client.clone();
        let url = stack.url("/tgi/echo");
        tasks.push(tokio::spawn(async move {
            let request = http::Request::get(url)
                .header("authorization", format!("Bearer {token}"))
                .body(axum::body::Body::empty())
                .expect("req");
            common::send(&client, request).await.status
        }));
    }
    for task in tasks {
        assert_eq!(task.await.expect("task"), StatusCode::UNAUTHORIZED);
    }
    let fetched = stack.issuer.jwks_fetches() - before;
    assert!(fetched <= 1, "300 random kids caused {fetched} JWKS fetches");
}

#[tokio::test]
async fn an_outage_keeps_the_last_good_keys_for_a_bounded_time() {
    let stack = Stack::start_with(Options {
        issuer_extra: "jwks_refresh_interval = \"1s\"\njwks_max_stale = \"3s\"\njwks_refetch_min_interval = \"1s\""
            .into(),
        ..Options::default()
    })
    .await;
    stack.issuer.set_outage(true);
    let outage_started = Instant::now();
    // Fresh tokens (not in the verified-token cache) keep working on the last good keys...
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = stack.get("/tgi/echo", Some(&stack.token("during-outage"))).await;
    assert_eq!(during.status, StatusCode::OK, "{}", during.text());
    // ...until they are older than jwks_max_stale: then hfgate fails closed with 503.
    let mut failed_closed = None;
    while outage_started.elapsed() < Duration::from_secs(8) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let reply =
            stack.get("/tgi/echo", Some(&stack.token(&format!("late-{}", outage_started.elapsed().as_millis())))).await;
        if reply.status == StatusCode::SERVICE_UNAVAILABLE {
            failed_closed = Some(reply);
            break;
        }
    }
    let reply = failed_closed.expect("stale keys must stop being used");
    assert_eq!(reply.json()["error"], "temporarily_unavailable");
    assert_eq!(reply.json()["error_description"], "signing keys of issuer dev are unavailable; try again later");
    assert!(outage_started.elapsed() >= Duration::from_secs(3), "keys were kept for at least jwks_max_stale");

    // Recovery: the next successful refresh restores service.
    stack.issuer.set_outage(false);
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let reply =
            stack.get("/tgi/echo", Some(&stack.token(&format!("after-{}", deadline.elapsed().as_nanos())))).await;
        if reply.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "did not recover: {}", reply.text());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn readiness_waits_for_every_issuers_keys() {
    let loopback = "127.0.0.1:0".parse().expect("addr");
    let issuer = hfgate::demo::DevIssuer::start(loopback, common::AUDIENCE, Algorithm::ES256).await.expect("issuer");
    let upstream = hfgate::demo::MockUpstream::start(loopback, Duration::ZERO, None).await.expect("upstream");
    issuer.set_outage(true);
    let dir = common::temp_dir("ready");
    let text = common::config_text(&issuer, upstream.addr(), &dir, &Options::default());
    std::fs::write(dir.join("hfgate.toml"), &text).expect("write");
    let server =
        hfgate::server::start(hfgate::config::load(&dir.join("hfgate.toml")).expect("config")).await.expect("start");
    let client = hfgate::client::build(Duration::from_secs(2));
    let readyz = |client: hfgate::client::HttpClient, addr| async move {
        let request = http::Request::get(format!("http://{addr}/readyz")).body(axum::body::Body::empty()).expect("req");
        common::send(&client, request).await
    };
    let not_ready = readyz(client.clone(), server.admin_addr).await;
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(not_ready.json()["issuers_loaded"]["dev"], false);
    let health = common::send(
        &client,
        http::Request::get(format!("http://{}/healthz", server.admin_addr))
            .body(axum::body::Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(health.status, StatusCode::OK);
    // Requests are refused with 503 while no keys are loaded; the proxy port never serves admin paths.
    let token = issuer.mint(&issuer.claims("alice", &[], Duration::from_secs(60)));
    let early = common::send(
        &client,
        http::Request::get(format!("http://{}/tgi/echo", server.proxy_addr))
            .header("authorization", format!("Bearer {token}"))
            .body(axum::body::Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(early.status, StatusCode::SERVICE_UNAVAILABLE);
    let admin_on_proxy = common::send(
        &client,
        http::Request::get(format!("http://{}/metrics", server.proxy_addr))
            .body(axum::body::Body::empty())
            .expect("req"),
    )
    .await;
    assert_eq!(admin_on_proxy.status, StatusCode::NOT_FOUND);

    issuer.set_outage(false);
    let deadline = Instant::now() + Duration::from_secs(8);
    while readyz(client.clone(), server.admin_addr).await.status != StatusCode::OK {
        assert!(Instant::now() < deadline, "never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.shutdown().await;
}
