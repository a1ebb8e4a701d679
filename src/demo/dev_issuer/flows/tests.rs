//! The development issuer's sign-in flows, over HTTP on loopback as hfgate and `hfgate login` use them.

use std::time::Duration;

use axum::body::Body;
use http::Request;
use http_body_util::BodyExt as _;
use serde_json::Value;

use super::super::DevIssuer;
use super::*;
use crate::authn::jwks::VerifyingKey;
use crate::client::HttpClient;
use crate::jose::Algorithm;
use crate::oauth::{ClientAuth, DeviceAuthorization, OAuthError, Pkce, ProviderMetadata, TokenResponse, post_form};

const WEB: &str = "web-client";
const CLI: &str = "cli-client";
const PUBLIC_URL: &str = "http://127.0.0.1:8080";
const CALLBACK: &str = "http://127.0.0.1:8080/.hfgate/callback";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    /// The query parameters of the `Location` a redirect points at.
    fn location_params(&self) -> (String, HashMap<String, String>) {
        let location = self.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let (base, query) = location.split_once('?').unwrap_or((location, ""));
        let params: Vec<(String, String)> = serde_urlencoded::from_str(query).expect("query");
        (base.to_string(), params.into_iter().collect())
    }
}

async fn send(client: &HttpClient, request: Request<Body>) -> Reply {
    let response = client.request(request).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    Reply { status, headers, text: String::from_utf8_lossy(&body).into_owned() }
}

async fn get(client: &HttpClient, url: &str) -> Reply {
    send(client, Request::get(url).body(Body::empty()).expect("request")).await
}

async fn post(client: &HttpClient, url: &str, form: &[(&str, &str)]) -> Reply {
    let body = serde_urlencoded::to_string(form).expect("form");
    let request = Request::post(url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(body))
        .expect("request");
    send(client, request).await
}

async fn issuer() -> (DevIssuer, HttpClient) {
    let issuer = DevIssuer::start(([127, 0, 0, 1], 0).into(), "hfgate", Algorithm::ES256).await.expect("issuer");
    issuer.register_client(DevClient::web(WEB, PUBLIC_URL));
    issuer.register_client(DevClient::cli(CLI));
    (issuer, crate::client::build(Duration::from_secs(5)))
}

fn authorize_params<'a>(pkce: &'a Pkce, redirect_uri: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("response_type", "code"),
        ("client_id", WEB),
        ("redirect_uri", redirect_uri),
        ("scope", "openid email groups offline_access"),
        ("state", "the-state"),
        ("nonce", "the-nonce"),
        ("code_challenge", &pkce.challenge),
        ("code_challenge_method", "S256"),
    ]
}

/// Signs in as `user` on the authorization page; returns the code.
async fn code_for(issuer: &DevIssuer, client: &HttpClient, pkce: &Pkce, user: &str) -> String {
    let mut form = authorize_params(pkce, CALLBACK);
    form.push(("user", user));
    let reply = post(client, &format!("{}{AUTHORIZE_PATH}", issuer.issuer()), &form).await;
    assert_eq!(reply.status, StatusCode::FOUND, "{}", reply.text);
    let (base, params) = reply.location_params();
    assert_eq!(base, CALLBACK);
    assert_eq!(params.get("state").map(String::as_str), Some("the-state"));
    assert_eq!(params.get("iss").map(String::as_str), Some(issuer.issuer()));
    params.get("code").cloned().expect("code")
}

async fn redeem(
    issuer: &DevIssuer,
    client: &HttpClient,
    code: &str,
    redirect_uri: &str,
    verifier: &str,
) -> Result<TokenResponse, OAuthError> {
    let form = [
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", verifier),
    ];
    post_form(client, &format!("{}/token", issuer.issuer()), ClientAuth::Public { client_id: WEB }, &form).await
}

/// The claims of a token signed by the issuer's current key.
fn verified(issuer: &DevIssuer, token: &str) -> serde_json::Map<String, Value> {
    let key = VerifyingKey::from_jwk(&issuer.current_key().public_jwk(), &[Algorithm::ES256]).expect("jwk");
    let jwt = crate::authn::jwt::parse(token).expect("jwt");
    jwt.verify(&key).expect("signed by the issuer");
    jwt.claims
}

fn refused_with(result: Result<TokenResponse, OAuthError>, code: &str) {
    match result {
        Err(err) => assert_eq!(err.code(), Some(code), "{err}"),
        Ok(_) => panic!("expected {code}, got tokens"),
    }
}

#[tokio::test]
async fn discovery_names_every_endpoint_on_the_issuer() {
    let (issuer, client) = issuer().await;
    let meta = ProviderMetadata::discover(&client, issuer.issuer(), false).await.expect("discovery");
    let at = |path: &str| Some(format!("{}{path}", issuer.issuer()));
    assert_eq!(meta.authorization_endpoint, at(AUTHORIZE_PATH));
    assert_eq!(meta.token_endpoint, at("/token"));
    assert_eq!(meta.device_authorization_endpoint, at(DEVICE_AUTHORIZATION_PATH));
    assert_eq!(meta.end_session_endpoint, at(END_SESSION_PATH));
    assert_eq!(meta.revocation_endpoint, at(REVOKE_PATH));
    // The original grant is still there: `user=` and nothing else.
    let reply = post(&client, &format!("{}/token", issuer.issuer()), &[("user", "bob")]).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text);
    let answer: Value = serde_json::from_str(&reply.text).expect("json");
    let claims = verified(&issuer, answer["access_token"].as_str().expect("token"));
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["aud"], "hfgate");
}

#[tokio::test]
async fn the_sign_in_page_offers_the_people_and_returns_a_one_time_code() {
    let (issuer, client) = issuer().await;
    let pkce = Pkce::new();
    let url = with_query(&format!("{}{AUTHORIZE_PATH}", issuer.issuer()), &authorize_params(&pkce, CALLBACK));
    let page = get(&client, &url).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.text.contains("Sign in to the hfgate demo as:"), "{}", page.text);
    assert!(page.text.contains("value=\"alice\"") && page.text.contains("value=\"bob\""), "{}", page.text);
    assert!(!page.text.contains("ci-bot"), "the workload is not a person");
    assert!(!page.text.contains("<script"), "no script");

    // A wrong verifier is refused, and the code is spent by the attempt.
    let code = code_for(&issuer, &client, &pkce, "alice").await;
    refused_with(redeem(&issuer, &client, &code, CALLBACK, &Pkce::new().verifier).await, "invalid_grant");
    refused_with(redeem(&issuer, &client, &code, CALLBACK, &pkce.verifier).await, "invalid_grant");
    // Another redirect_uri than the request's is refused.
    let code = code_for(&issuer, &client, &pkce, "alice").await;
    let other = "http://127.0.0.1:8080/.hfgate/other";
    refused_with(redeem(&issuer, &client, &code, other, &pkce.verifier).await, "invalid_grant");

    let code = code_for(&issuer, &client, &pkce, "alice").await;
    let tokens = redeem(&issuer, &client, &code, CALLBACK, &pkce.verifier).await.expect("tokens");
    let id = verified(&issuer, tokens.id_token.as_deref().expect("id_token"));
    assert_eq!(id["iss"], issuer.issuer());
    assert_eq!(id["aud"], WEB);
    assert_eq!(id["sub"], "alice");
    assert_eq!(id["nonce"], "the-nonce");
    assert_eq!(id["email"], "alice@demo.hfgate.dev");
    assert_eq!(id["groups"], json!(["ml-research"]));
    let access = verified(&issuer, &tokens.access_token);
    assert_eq!(access["aud"], "hfgate");
    assert_eq!(access["client_id"], WEB);
    // Once only.
    refused_with(redeem(&issuer, &client, &code, CALLBACK, &pkce.verifier).await, "invalid_grant");

    // Refresh tokens rotate: the new one works, the old one no longer does.
    let first = tokens.refresh_token.expect("refresh token");
    let refresh = |token: String| {
        let client = client.clone();
        let url = format!("{}/token", issuer.issuer());
        async move {
            let form = [("grant_type", "refresh_token"), ("refresh_token", token.as_str())];
            post_form::<TokenResponse>(&client, &url, ClientAuth::Public { client_id: WEB }, &form).await
        }
    };
    let renewed = refresh(first.clone()).await.expect("refreshed");
    let second = renewed.refresh_token.clone().expect("a new refresh token");
    assert_ne!(first, second);
    let id = verified(&issuer, renewed.id_token.as_deref().expect("id_token"));
    assert_eq!((id["sub"].clone(), id["aud"].clone()), (json!("alice"), json!(WEB)));
    assert!(id.get("nonce").is_none(), "a refreshed ID token has no nonce");
    refused_with(refresh(first).await, "invalid_grant");
    assert!(refresh(second).await.is_ok());
}

#[tokio::test]
async fn bad_authorization_requests_are_shown_or_sent_back() {
    let (issuer, client) = issuer().await;
    let pkce = Pkce::new();
    let authorize = format!("{}{AUTHORIZE_PATH}", issuer.issuer());
    // Never redirected to an unregistered URI: the person is told.
    let evil = get(&client, &with_query(&authorize, &authorize_params(&pkce, "http://evil.example/cb"))).await;
    assert_eq!(evil.status, StatusCode::BAD_REQUEST);
    assert!(evil.headers.get(header::LOCATION).is_none());
    let mut unknown = authorize_params(&pkce, CALLBACK);
    unknown[1] = ("client_id", "stranger");
    assert_eq!(get(&client, &with_query(&authorize, &unknown)).await.status, StatusCode::BAD_REQUEST);
    // Without PKCE S256 the client hears why.
    let mut plain = authorize_params(&pkce, CALLBACK);
    plain[7] = ("code_challenge_method", "plain");
    let reply = get(&client, &with_query(&authorize, &plain)).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let (base, params) = reply.location_params();
    assert_eq!(base, CALLBACK);
    assert_eq!(params.get("error").map(String::as_str), Some("invalid_request"));
    assert_eq!(params.get("state").map(String::as_str), Some("the-state"));
    // Cancel: access_denied.
    let mut cancel = authorize_params(&pkce, CALLBACK);
    cancel.push(("deny", "1"));
    let (_, params) = post(&client, &authorize, &cancel).await.location_params();
    assert_eq!(params.get("error").map(String::as_str), Some("access_denied"));
    // The workload cannot be picked.
    let mut bot = authorize_params(&pkce, CALLBACK);
    bot.push(("user", "ci-bot"));
    assert_eq!(post(&client, &authorize, &bot).await.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn the_device_grant_waits_for_the_person() {
    let (issuer, client) = issuer().await;
    let device_url = format!("{}{DEVICE_AUTHORIZATION_PATH}", issuer.issuer());
    let token_url = format!("{}/token", issuer.issuer());
    let scope = [("scope", "openid email groups offline_access")];
    let stranger = post_form::<Value>(&client, &device_url, ClientAuth::Public { client_id: "stranger" }, &scope).await;
    assert_eq!(stranger.expect_err("unknown client").code(), Some("invalid_client"));
    let web = post_form::<Value>(&client, &device_url, ClientAuth::Public { client_id: WEB }, &scope).await;
    assert_eq!(web.expect_err("not a device client").code(), Some("invalid_client"));

    let cli = ClientAuth::Public { client_id: CLI };
    let started: DeviceAuthorization =
        post_form(&client, &device_url, cli, &scope).await.expect("device authorization");
    assert_eq!(started.verification_uri, format!("{}{DEVICE_PAGE_PATH}", issuer.issuer()));
    let complete = started.verification_uri_complete.clone().expect("complete URI");
    assert!(complete.ends_with(&format!("user_code={}", started.user_code)), "{complete}");
    assert_eq!(started.interval, Some(DEVICE_POLL_INTERVAL));
    let grant = [("grant_type", DEVICE_CODE_GRANT), ("device_code", started.device_code.as_str())];
    refused_with(post_form(&client, &token_url, cli, &grant).await, "authorization_pending");

    // The page finds the code however it is typed, and approves it as the chosen person.
    let typed = started.user_code.to_ascii_lowercase().replace('-', " ");
    let page =
        get(&client, &with_query(&format!("{}{DEVICE_PAGE_PATH}", issuer.issuer()), &[("user_code", &typed)])).await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text);
    assert!(page.text.contains(&started.user_code), "{}", page.text);
    let approve = [("user_code", started.user_code.as_str()), ("user", "alice")];
    let approved = post(&client, &format!("{}{DEVICE_PAGE_PATH}", issuer.issuer()), &approve).await;
    assert_eq!(approved.status, StatusCode::OK, "{}", approved.text);
    assert!(approved.text.contains("Signed in as alice"), "{}", approved.text);
    // A code is approved once.
    let again = post(&client, &format!("{}{DEVICE_PAGE_PATH}", issuer.issuer()), &approve).await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);

    let tokens: TokenResponse = post_form(&client, &token_url, cli, &grant).await.expect("tokens");
    let access = verified(&issuer, &tokens.access_token);
    assert_eq!(access["aud"], "hfgate");
    assert_eq!(access["sub"], "alice");
    assert_eq!(access["email"], "alice@demo.hfgate.dev");
    assert_eq!(access["groups"], json!(["ml-research"]));
    assert_eq!(access["client_id"], CLI);
    assert_eq!(verified(&issuer, tokens.id_token.as_deref().expect("id_token"))["aud"], CLI);
    let refresh_token = tokens.refresh_token.expect("refresh token");
    // The device code is spent.
    refused_with(post_form(&client, &token_url, cli, &grant).await, "invalid_grant");
    // A refresh token works for its own client only, and revocation forgets it.
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh_token.as_str())];
    let other = ClientAuth::Public { client_id: WEB };
    refused_with(post_form(&client, &token_url, other, &form).await, "invalid_grant");
    let next: TokenResponse = post_form(&client, &token_url, cli, &form).await.expect("rotated");
    let next_token = next.refresh_token.expect("refresh token");
    let revoke = [("token", next_token.as_str()), ("client_id", CLI)];
    assert_eq!(post(&client, &format!("{}{REVOKE_PATH}", issuer.issuer()), &revoke).await.status, StatusCode::OK);
    let form = [("grant_type", "refresh_token"), ("refresh_token", next_token.as_str())];
    refused_with(post_form(&client, &token_url, cli, &form).await, "invalid_grant");

    // Denied: the poll says so.
    let denied: DeviceAuthorization = post_form(&client, &device_url, cli, &scope).await.expect("device authorization");
    let deny = [("user_code", denied.user_code.as_str()), ("deny", "1")];
    assert_eq!(post(&client, &format!("{}{DEVICE_PAGE_PATH}", issuer.issuer()), &deny).await.status, StatusCode::OK);
    let grant = [("grant_type", DEVICE_CODE_GRANT), ("device_code", denied.device_code.as_str())];
    refused_with(post_form(&client, &token_url, cli, &grant).await, "access_denied");
    // An unknown code on the page: said so, with the form to type another.
    let unknown = get(&client, &format!("{}{DEVICE_PAGE_PATH}?user_code=BBBB-BBBB", issuer.issuer())).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert!(unknown.text.contains("name=\"user_code\""), "{}", unknown.text);
}

#[tokio::test]
async fn sign_out_returns_only_to_registered_addresses() {
    let (issuer, client) = issuer().await;
    let end = format!("{}{END_SESSION_PATH}", issuer.issuer());
    let signed_out = format!("{PUBLIC_URL}/.hfgate/signed-out");
    let reply = get(&client, &with_query(&end, &[("client_id", WEB), ("post_logout_redirect_uri", &signed_out)])).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    assert_eq!(reply.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()), Some(signed_out.as_str()));
    let evil = get(&client, &with_query(&end, &[("post_logout_redirect_uri", "http://evil.example/")])).await;
    assert_eq!(evil.status, StatusCode::BAD_REQUEST);
    assert!(evil.headers.get(header::LOCATION).is_none());
    assert_eq!(get(&client, &end).await.status, StatusCode::OK);
}

#[test]
fn user_codes_are_two_groups_of_four_consonants_and_typed_loosely() {
    let code = new_user_code();
    assert_eq!(code.len(), 9);
    assert_eq!(&code[4..5], "-");
    assert!(code.bytes().filter(|b| *b != b'-').all(|b| USER_CODE_ALPHABET.contains(&b)), "{code}");
    assert_eq!(normalize_user_code(" wdjb-mjht "), "WDJBMJHT");
    assert_eq!(normalize_user_code("WDJB MJHT"), "WDJBMJHT");
}

#[test]
fn the_client_comes_from_the_form_else_basic() {
    let mut headers = HeaderMap::new();
    assert_eq!(client_of(&headers, Some("web")).as_deref(), Some("web"));
    assert_eq!(client_of(&headers, None), None);
    let basic = base64::engine::general_purpose::STANDARD.encode("my%20app:secret");
    headers.insert(header::AUTHORIZATION, HeaderValue::from_str(&format!("Basic {basic}")).expect("header"));
    assert_eq!(client_of(&headers, None).as_deref(), Some("my app"));
    assert_eq!(client_of(&headers, Some("")).as_deref(), Some("my app"));
}
