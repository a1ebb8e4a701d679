//! Every way a bearer token can be refused, each naming the exact check, plus what a good token
//! becomes upstream. Real sockets on 127.0.0.1, keys generated per test.

mod common;

use std::time::Duration;

use axum::body::Body;
use common::{AUDIENCE, Options, Stack};
use hfgate::jose::{Algorithm, SigningKey, b64url, unix_now};
use http::{Request, StatusCode};
use serde_json::{Value, json};

async fn refused(stack: &Stack, token: &str) -> String {
    let reply = stack.get("/tgi/echo", Some(token)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
    reply.description()
}

/// A valid token for alice with some claims replaced (`null` removes a claim).
fn patched_token(stack: &Stack, patch: Value) -> String {
    let mut claims = stack.issuer.claims("alice", &[], Duration::from_secs(600));
    for (k, v) in patch.as_object().expect("object") {
        if v.is_null() {
            claims.as_object_mut().expect("object").remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    stack.issuer.mint(&claims)
}

fn unsigned(header: Value, claims: Value, signature: &str) -> String {
    format!("{}.{}.{}", b64url(header.to_string()), b64url(claims.to_string()), signature)
}

#[tokio::test]
async fn a_valid_token_reaches_the_upstream_as_the_caller() {
    let stack = Stack::start().await;
    let reply = stack.get("/tgi/echo", Some(&stack.token("alice"))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let echoed = reply.json();
    assert_eq!(echoed["headers"]["x-forwarded-user"], "alice");
    assert_eq!(echoed["headers"]["x-forwarded-groups"], "ml-research");
    assert_eq!(echoed["headers"]["authorization"], format!("Bearer {}", common::ORG_SECRET));
}

#[tokio::test]
async fn alg_none_and_hmac_are_never_accepted() {
    let stack = Stack::start().await;
    let claims = stack.issuer.claims("alice", &[], Duration::from_secs(600));
    let none = unsigned(json!({"alg": "none", "typ": "JWT"}), claims.clone(), "");
    assert_eq!(refused(&stack, &none).await, "alg none is never accepted");
    let none_upper = unsigned(json!({"alg": "NONE"}), claims.clone(), "");
    assert_eq!(refused(&stack, &none_upper).await, "alg none is never accepted");

    // The classic confusion attack: HS256 keyed with the issuer's public key.
    let public = stack.issuer.current_key().public_jwk().to_string();
    let header = json!({"alg": "HS256", "kid": stack.issuer.current_key().kid()});
    let input = format!("{}.{}", b64url(header.to_string()), b64url(claims.to_string()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, public.as_bytes());
    let forged = format!("{input}.{}", b64url(aws_lc_rs::hmac::sign(&key, input.as_bytes())));
    assert_eq!(
        refused(&stack, &forged).await,
        "alg HS256 is never accepted: hfgate only verifies asymmetric signatures"
    );
}

#[tokio::test]
async fn signatures_must_come_from_the_issuers_key() {
    let stack = Stack::start().await;
    let claims = stack.issuer.claims("alice", &[], Duration::from_secs(600));

    // Another key claiming the issuer's kid.
    let impostor = SigningKey::generate(Algorithm::ES256).expect("key").with_kid(stack.issuer.current_key().kid());
    let wrong_key = impostor.sign_jwt(&json!({"typ": "at+jwt"}), &claims).expect("sign");
    assert_eq!(refused(&stack, &wrong_key).await, "signature verification failed");

    // A genuine token whose payload was edited.
    let genuine = stack.issuer.mint(&claims);
    let mut parts: Vec<String> = genuine.split('.').map(str::to_string).collect();
    let mut edited = claims.clone();
    edited["sub"] = json!("admin");
    parts[1] = b64url(edited.to_string());
    assert_eq!(refused(&stack, &parts.join(".")).await, "signature verification failed");

    // A kid the issuer never published.
    let stranger = SigningKey::generate(Algorithm::ES256).expect("key").with_kid("not-a-published-kid");
    let unknown = stranger.sign_jwt(&json!({}), &claims).expect("sign");
    assert_eq!(refused(&stack, &unknown).await, "unknown kid 'not-a-published-kid': not in the JWKS of issuer dev");

    // The header says RS256 but the kid names an EC key.
    let header = json!({"alg": "RS256", "kid": stack.issuer.current_key().kid()});
    let confused = unsigned(header, claims, &b64url([7u8; 256]));
    let description = refused(&stack, &confused).await;
    assert!(description.contains("is EC P-256 and does not fit alg RS256"), "{description}");
}

#[tokio::test]
async fn time_claims_are_enforced_with_leeway() {
    let stack = Stack::start().await;
    let now = unix_now();
    let mint = |patch: Value| patched_token(&stack, patch);
    // Seconds may tick between minting and checking: compare the shape, not the exact count.
    let shaped = |text: String, head: &str, tail: &str| {
        assert!(text.starts_with(head) && text.ends_with(tail), "{text:?} is not {head}N{tail}");
        let n: u64 = text[head.len()..text.len() - tail.len()].parse().expect("seconds");
        assert!((118..=302).contains(&n), "{text}");
    };
    shaped(
        refused(&stack, &mint(json!({"exp": now - 120, "iat": now - 700}))).await,
        "token expired ",
        "s ago (leeway 60s)",
    );
    // Inside the leeway an expired token still passes.
    let within = stack.get("/tgi/echo", Some(&mint(json!({"exp": now - 30, "iat": now - 600})))).await;
    assert_eq!(within.status, StatusCode::OK);
    shaped(
        refused(&stack, &mint(json!({"nbf": now + 300}))).await,
        "token not valid yet: nbf is ",
        "s in the future (leeway 60s)",
    );
    shaped(refused(&stack, &mint(json!({"iat": now + 300}))).await, "iat is ", "s in the future");
    assert_eq!(refused(&stack, &mint(json!({"exp": null}))).await, "missing exp claim");
    assert_eq!(
        refused(&stack, &mint(json!({"iat": now, "exp": now + 48 * 3600}))).await,
        "token lifetime 2d exceeds max_token_lifetime 1d"
    );
    assert_eq!(refused(&stack, &mint(json!({"exp": "tomorrow"}))).await, "claim exp is not a NumericDate");
}

#[tokio::test]
async fn issuer_audience_and_subject_are_enforced() {
    let stack = Stack::start().await;
    let with = |patch: Value| patched_token(&stack, patch);
    let iss_error = refused(&stack, &with(json!({"iss": "https://evil.example"}))).await;
    assert_eq!(iss_error, format!("iss is not a configured issuer: expected one of [{}]", stack.issuer.issuer()));
    assert_eq!(refused(&stack, &with(json!({"iss": null}))).await, "missing iss claim");
    assert_eq!(refused(&stack, &with(json!({"aud": "other-api"}))).await, "aud mismatch: expected one of [hfgate]");
    assert_eq!(
        refused(&stack, &with(json!({"aud": ["other-api", "another"]}))).await,
        "aud mismatch: expected one of [hfgate]"
    );
    assert_eq!(refused(&stack, &with(json!({"aud": null}))).await, "missing aud claim: expected one of [hfgate]");
    let as_array = stack.get("/tgi/echo", Some(&with(json!({"aud": ["other-api", AUDIENCE]})))).await;
    assert_eq!(as_array.status, StatusCode::OK, "aud as an array containing hfgate is accepted");
    assert_eq!(refused(&stack, &with(json!({"sub": null}))).await, "missing sub claim");
    assert_eq!(refused(&stack, &with(json!({"sub": ""}))).await, "missing sub claim");
}

#[tokio::test]
async fn garbage_and_foreign_credentials_are_refused_without_echo() {
    let stack = Stack::start().await;
    assert_eq!(
        refused(&stack, "not-a-jwt").await,
        "malformed token: not a JWT (expected three base64url segments separated by '.')"
    );
    assert_eq!(refused(&stack, "WzFd.b.c").await, "malformed token: header is not a JSON object");
    assert_eq!(refused(&stack, "a.b.c").await, "malformed token: header is not base64url");
    assert_eq!(refused(&stack, "!!!.b.c").await, "malformed token: header is not base64url");
    let huge = format!("{}.{}.{}", "a".repeat(9000), "b".repeat(9000), "c");
    assert_eq!(refused(&stack, &huge).await, "token too large: more than 16384 bytes");

    let hf_token = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";
    let reply = stack.get("/tgi/echo", Some(hf_token)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let description = reply.description();
    assert!(description.starts_with("this is a Hugging Face token (hf_...)"), "{description}");
    assert!(!reply.text().contains(hf_token) && !format!("{:?}", reply.headers).contains(hf_token));

    // Other schemes and missing tokens.
    let basic = Request::get(stack.url("/tgi/echo"))
        .header("authorization", "Basic YWxpY2U6cHc=")
        .body(Body::empty())
        .expect("req");
    assert_eq!(stack.send(basic).await.description(), "Authorization scheme must be Bearer");
    let missing = stack.get("/tgi/echo", None).await;
    assert_eq!(missing.status, StatusCode::UNAUTHORIZED);
    assert!(missing.description().starts_with("missing bearer token"));

    // Tokens are never taken from the query string.
    let token = stack.token("alice");
    let in_query = stack.get(&format!("/tgi/echo?access_token={token}"), None).await;
    assert_eq!(in_query.status, StatusCode::UNAUTHORIZED);

    // The scheme is case-insensitive.
    let lower = Request::get(stack.url("/tgi/echo"))
        .header("authorization", format!("bearer {token}"))
        .body(Body::empty())
        .expect("req");
    assert_eq!(stack.send(lower).await.status, StatusCode::OK);

    // Two Authorization headers are ambiguous.
    let two = Request::get(stack.url("/tgi/echo"))
        .header("authorization", format!("Bearer {token}"))
        .header("authorization", "Bearer other")
        .body(Body::empty())
        .expect("req");
    assert_eq!(stack.send(two).await.description(), "more than one Authorization header");

    // Refusals are counted by reason.
    let metrics = stack.send(Request::get(stack.admin_url("/metrics")).body(Body::empty()).expect("req")).await.text();
    for line in [
        "hfgate_auth_failures_total{reason=\"hf_token\"} 1",
        "hfgate_auth_failures_total{reason=\"not_bearer\"} 1",
        "hfgate_auth_failures_total{reason=\"duplicate_authorization\"} 1",
        "hfgate_requests_total{route=\"tgi\",status=\"401\"}",
        "hfgate_requests_total{route=\"tgi\",status=\"200\"} 1",
        "hfgate_upstream_latency_seconds_count{route=\"tgi\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    // Refusals are audited, without the token.
    let audit = stack.audit_at_least(9).await;
    let text = std::fs::read_to_string(stack.dir.join("audit.jsonl")).expect("audit");
    assert!(!text.contains(hf_token) && !text.contains(&token));
    let reasons: Vec<&str> = audit.iter().filter_map(|l| l["decision"]["reason"].as_str()).collect();
    for reason in ["malformed", "hf_token", "not_bearer", "missing_token", "duplicate_authorization"] {
        assert!(reasons.contains(&reason), "{reason} missing from {reasons:?}");
    }
}

#[tokio::test]
async fn algorithm_allowlist_and_typ_are_per_issuer() {
    let stack = Stack::start_with(Options {
        issuer_extra: "algorithms = [\"RS256\", \"PS256\"]\nrequire_typ = \"at+jwt\"".into(),
        alg: Algorithm::RS256,
        ..Options::default()
    })
    .await;
    let claims = stack.issuer.claims("alice", &[], Duration::from_secs(600));
    let ok = stack.issuer.mint(&claims);
    assert_eq!(stack.get("/tgi/echo", Some(&ok)).await.status, StatusCode::OK);
    let plain_jwt = stack.issuer.current_key().sign_jwt(&json!({"typ": "JWT"}), &claims).expect("sign");
    assert_eq!(refused(&stack, &plain_jwt).await, "typ mismatch: expected at+jwt");
    let media_type = stack.issuer.current_key().sign_jwt(&json!({"typ": "application/at+jwt"}), &claims).expect("sign");
    assert_eq!(stack.get("/tgi/echo", Some(&media_type)).await.status, StatusCode::OK);

    let es = SigningKey::generate(Algorithm::ES256).expect("key");
    let not_allowed = es.sign_jwt(&json!({"typ": "at+jwt"}), &claims).expect("sign");
    assert_eq!(refused(&stack, &not_allowed).await, "alg ES256 is not allowed for issuer dev: allowed [RS256, PS256]");
}

#[tokio::test]
async fn several_issuers_are_told_apart_by_iss_and_claims_are_mapped() {
    let loopback = "127.0.0.1:0".parse().expect("addr");
    let keycloak = hfgate::demo::DevIssuer::start(loopback, "hfgate-kc", Algorithm::PS256).await.expect("issuer");
    let stack = Stack::start_with(Options {
        tail: format!(
            "[[issuer]]\nname = \"keycloak\"\nissuer = \"{}\"\naudiences = [\"hfgate-kc\"]\ngroups_claim = \"realm_access.roles\"\nemail_claim = \"https://acme.example/email\"\n",
            keycloak.issuer()
        ),
        issuer_extra: "groups_claim = \"cognito:groups\"".into(),
        ..Options::default()
    })
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !stack.server.gateway.authn.ready() {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut kc_claims = keycloak.claims("kc-user", &[], Duration::from_secs(600));
    kc_claims["realm_access"] = json!({"roles": ["ml-research", "a,b"]});
    kc_claims["https://acme.example/email"] = json!("kc@acme.example");
    let reply = stack.get("/tgi/echo", Some(&keycloak.mint(&kc_claims))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let headers = &reply.json()["headers"];
    assert_eq!(headers["x-forwarded-user"], "kc-user");
    assert_eq!(headers["x-forwarded-groups"], "ml-research,a%2Cb");
    assert_eq!(headers["x-forwarded-email"], "kc@acme.example");

    let mut cognito = stack.issuer.claims("cog-user", &[], Duration::from_secs(600));
    cognito["cognito:groups"] = json!(["support"]);
    let reply = stack.get("/tgi/echo", Some(&stack.issuer.mint(&cognito))).await;
    assert_eq!(reply.json()["headers"]["x-forwarded-groups"], "support");

    // A token naming one issuer but signed by the other's key.
    let mut crossed = stack.issuer.claims("mallory", &[], Duration::from_secs(600));
    crossed["iss"] = json!(keycloak.issuer());
    crossed["aud"] = json!("hfgate-kc");
    let forged = stack.issuer.mint(&crossed);
    let description = refused(&stack, &forged).await;
    assert!(description.starts_with("unknown kid") || description.starts_with("alg ES256"), "{description}");
}

#[tokio::test]
async fn verified_tokens_are_cached_only_until_they_expire() {
    let stack = Stack::start_with(Options { issuer_extra: "leeway = \"0s\"".into(), ..Options::default() }).await;
    let now = unix_now();
    let mut claims = stack.issuer.claims("short-lived", &[], Duration::from_secs(2));
    claims["exp"] = json!(now + 2);
    let token = stack.issuer.mint(&claims);
    assert_eq!(stack.get("/tgi/echo", Some(&token)).await.status, StatusCode::OK);
    assert_eq!(stack.get("/tgi/echo", Some(&token)).await.status, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let description = refused(&stack, &token).await;
    assert!(description.starts_with("token expired"), "{description}");
}

#[tokio::test]
async fn workloads_and_users_are_told_apart() {
    let stack = Stack::start().await;
    let mut bot = stack.issuer.claims("ci-bot", &["ci"], Duration::from_secs(600));
    bot["client_id"] = json!("ci-bot");
    assert_eq!(stack.get("/tgi/echo", Some(&stack.issuer.mint(&bot))).await.status, StatusCode::OK);
    assert_eq!(stack.get("/tgi/echo", Some(&stack.token("alice"))).await.status, StatusCode::OK);
    let audit = stack.audit_at_least(2).await;
    let kinds: Vec<(&str, &str)> = audit
        .iter()
        .map(|l| (l["identity"]["subject"].as_str().unwrap_or(""), l["identity"]["kind"].as_str().unwrap_or("")))
        .collect();
    assert!(kinds.contains(&("ci-bot", "workload")), "{kinds:?}");
    assert!(kinds.contains(&("alice", "user")), "{kinds:?}");
}

#[tokio::test]
async fn cache_sizes_are_in_the_metrics() {
    let stack = Stack::start().await;
    let (alice, bob) = (stack.token("alice"), stack.token("bob"));
    for token in [&alice, &alice, &bob] {
        assert_eq!(stack.get("/tgi/echo", Some(token)).await.status, StatusCode::OK);
    }
    // A refused token is not kept.
    assert_eq!(stack.get("/tgi/echo", Some(&format!("{bob}x"))).await.status, StatusCode::UNAUTHORIZED);
    let metrics = stack.send(Request::get(stack.admin_url("/metrics")).body(Body::empty()).expect("req")).await.text();
    for line in [
        "hfgate_cache_entries{cache=\"tokens\"} 2\n",
        "hfgate_cache_entries{cache=\"assertions\"} 2\n",
        // No rules here, so no decision is cached.
        "hfgate_cache_entries{cache=\"decisions\"} 0\n",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }
}
