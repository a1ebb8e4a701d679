//! `POST {hub route}/oauth/token`: CI jobs without secrets. `huggingface_hub` with `HF_ENDPOINT` pointing
//! at a hub route and `HF_OIDC_RESOURCE` set posts its CI identity token here as an RFC 8693 exchange (the
//! Hugging Face "Trusted Publishers" call). hfgate verifies it against its workload issuers and answers
//! with a short-lived token of its own (hfgate's key, `aud` = `hfgate`), which it then accepts like any
//! bearer token: the job holds no long-lived secret, and the organisation's `hf_` token never leaves hfgate.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::event::Timestamp;
use crate::audit::{AuditEvent, Decision};
use crate::authn::{AuthError, IdentityKind, jwt};
use crate::config::ApiKind;
use crate::proxy::Gateway;
use crate::route::Route;

const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
/// The claim of a minted token holding the `resource` the job asked for (`HF_OIDC_RESOURCE`).
pub const REQUESTED_RESOURCE: &str = "requested_resource";
/// An exchange request is a few kilobytes at most (a JWT and a repo name).
const MAX_BODY: usize = 64 * 1024;

/// The route whose `/oauth/token` this request is, when it is one: a `POST` to a hub route's token path.
pub fn route_for(gateway: &Gateway, method: &Method, path: &str) -> Option<Arc<Route>> {
    if method != Method::POST || !path.ends_with("/oauth/token") {
        return None;
    }
    let route = gateway.routes.find(path)?;
    (route.settings.api == ApiKind::Hub && path[route.settings.prefix.len()..] == *"/oauth/token")
        .then(|| route.clone())
}

/// The fields of an RFC 8693 request, as JSON (huggingface_hub) or a form (RFC 8693 §2.1).
#[derive(Debug, Default, Deserialize)]
struct ExchangeRequest {
    grant_type: Option<String>,
    subject_token: Option<String>,
    subject_token_type: Option<String>,
    resource: Option<String>,
}

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl Refusal {
    fn bad(error: &'static str, description: impl Into<String>) -> Refusal {
        Refusal { status: StatusCode::BAD_REQUEST, error, description: description.into() }
    }
}

/// Answers one exchange and writes its audit line.
pub async fn handle(gateway: Arc<Gateway>, route: Arc<Route>, request: Request<Body>) -> Response<Body> {
    let started = Instant::now();
    let started_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let request_id = crate::proxy::request_id();
    let path = request.uri().path().to_string();
    let bytes_in =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).unwrap_or(0);
    let outcome = exchange(&gateway, request).await;
    let (response, identity, decision, error) = match outcome {
        Ok((body, identity)) => {
            let mut response = Response::new(Body::from(body.to_string()));
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            (response, Some(identity), Decision::allow("workload token exchanged for an hfgate token"), None)
        }
        Err((refusal, identity)) => {
            let body =
                json!({"error": refusal.error, "error_description": refusal.description, "request_id": request_id});
            let mut response = Response::new(Body::from(body.to_string()));
            *response.status_mut() = refusal.status;
            response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            if refusal.status == StatusCode::SERVICE_UNAVAILABLE {
                response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            let decision = Decision::deny(refusal.description.clone());
            (response, identity, decision, Some(refusal.description))
        }
    };
    let mut response = response;
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-request-id", id);
    }
    let status = response.status().as_u16();
    gateway.metrics.request(&route.name, status);
    let bytes_out = http_body::Body::size_hint(response.body()).exact().unwrap_or(0);
    gateway.audit.record(&AuditEvent {
        ts: Timestamp::from_unix_millis(started_ms),
        request_id: &request_id,
        route: Some(&route.name),
        method: "POST",
        path: &path,
        status,
        duration_ms: (started.elapsed().as_secs_f64() * 1e6).round() / 1000.0,
        bytes_in,
        bytes_out,
        identity: identity.as_ref().and_then(|i| i.audit_record.as_deref()),
        model: None,
        action: None,
        decision: &decision,
        usage: None,
        upstream: None,
        error: error.as_deref(),
    });
    response
}

type Exchanged = (Value, Arc<crate::authn::Identity>);

async fn exchange(
    gateway: &Gateway,
    request: Request<Body>,
) -> Result<Exchanged, (Refusal, Option<Arc<crate::authn::Identity>>)> {
    let json_body = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/json"));
    let body = Limited::new(request.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|_| (Refusal::bad("invalid_request", "the request body is too large or unreadable"), None))?
        .to_bytes();
    let fields: ExchangeRequest = if json_body {
        serde_json::from_slice(&body)
            .map_err(|_| (Refusal::bad("invalid_request", "the body is not a JSON object of strings"), None))?
    } else {
        serde_urlencoded::from_bytes(&body)
            .map_err(|_| (Refusal::bad("invalid_request", "the body is not a valid form"), None))?
    };
    if fields.grant_type.as_deref() != Some(TOKEN_EXCHANGE) {
        return Err((Refusal::bad("unsupported_grant_type", format!("grant_type must be {TOKEN_EXCHANGE}")), None));
    }
    match fields.subject_token_type.as_deref() {
        Some(ID_TOKEN | JWT) => {}
        _ => {
            let message = format!("subject_token_type must be {ID_TOKEN} or {JWT}");
            return Err((Refusal::bad("invalid_request", message), None));
        }
    }
    let token = fields
        .subject_token
        .as_deref()
        .filter(|t| !t.is_empty())
        .ok_or_else(|| (Refusal::bad("invalid_request", "subject_token is missing"), None))?;
    // Only a JWT is exchanged: an opaque token is never shown to an introspection endpoint from here.
    let claims = jwt::parse(token)
        .map_err(|e| (Refusal::bad("invalid_grant", format!("subject_token refused: {e}")), None))?
        .claims;
    // Verified exactly as a bearer token would be: signature, issuer, audience, lifetime, `require`.
    let identity = gateway.authn.authenticate(token).await.map_err(|err| {
        let refusal = match err {
            AuthError::KeysUnavailable(_) => Refusal {
                status: StatusCode::SERVICE_UNAVAILABLE,
                error: "temporarily_unavailable",
                description: err.to_string(),
            },
            _ => Refusal::bad("invalid_grant", format!("subject_token refused: {err}")),
        };
        (refusal, None)
    })?;
    let workload_issuer = gateway
        .settings
        .issuers
        .iter()
        .any(|i| *i.name == *identity.issuer && i.kind == crate::config::KindRule::Workload);
    if !workload_issuer || identity.kind != IdentityKind::Workload {
        let refusal = Refusal::bad(
            "invalid_grant",
            "only workload identities (CI jobs, service accounts: issuers with kind = \"workload\") exchange tokens here",
        );
        return Err((refusal, Some(identity)));
    }
    // A token hfgate minted is not exchanged again: its lifetime is hfgate's to give once.
    if claims.get("iss").and_then(Value::as_str) == Some(gateway.signer.issuer()) {
        let refusal = Refusal::bad("invalid_grant", "subject_token was issued by hfgate itself");
        return Err((refusal, Some(identity)));
    }
    let mut claims = claims;
    // What the job asked for is the job's word, not its IdP's: kept under a name that says so, never
    // overwriting a verified claim, and left out of the issuer's `require` checks.
    claims.remove(REQUESTED_RESOURCE);
    if let Some(resource) = fields.resource.filter(|r| !r.is_empty()) {
        claims.insert(REQUESTED_RESOURCE.into(), Value::String(resource));
    }
    let lifetime = gateway.settings.server.exchanged_token_lifetime;
    let Some((minted, _exp)) = gateway.signer.mint(&claims, &identity.issuer_url, lifetime) else {
        let refusal = Refusal {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error: "server_error",
            description: "could not sign the token".into(),
        };
        return Err((refusal, Some(identity)));
    };
    tracing::info!(subject = %identity.subject, issuer = %identity.issuer, "workload token exchanged");
    let body = json!({
        "access_token": minted,
        "token_type": "bearer",
        "expires_in": lifetime.as_secs(),
        "issued_token_type": ACCESS_TOKEN,
    });
    Ok((body, identity))
}
