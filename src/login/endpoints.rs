//! The sign-in endpoints on the proxy listener, as axum handlers over the [`Gateway`].

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::response::IntoResponse;
use axum::routing::get;
use http::{HeaderMap, Method, Response, StatusCode, header};

use super::pages::{self, WhoAmI};
use super::{CallbackQuery, LoginError, SessionAuth, SignIn, wants_html};
use crate::authn::{self, AuthError};
use crate::error::HttpError;
use crate::proxy::Gateway;

/// `/.hfgate/login`, `/callback`, `/logout`, `/signed-out`, `/whoami`, `/cli-config`.
pub fn routes() -> Router<Arc<Gateway>> {
    Router::new()
        .route("/.hfgate/login", get(login))
        .route("/.hfgate/callback", get(callback))
        .route("/.hfgate/logout", get(logout).post(logout))
        .route("/.hfgate/signed-out", get(signed_out))
        .route("/.hfgate/whoami", get(whoami))
        .route("/.hfgate/cli-config", get(cli_config))
}

#[derive(Debug, serde::Deserialize)]
struct LoginQuery {
    rd: Option<String>,
}

fn configured(gateway: &Gateway) -> Result<&SignIn, LoginError> {
    gateway.signin.as_ref().ok_or(LoginError::NotConfigured)
}

/// A failed sign-in step as a page; the half-done sign-in is forgotten.
fn failed(gateway: &Gateway, err: &LoginError) -> Response<Body> {
    tracing::info!(error = %err, "sign-in step failed");
    let cookies: Vec<String> =
        gateway.signin.as_ref().map(|s| vec![s.cookies.clear(s.cookies.login)]).unwrap_or_default();
    pages::html_response(err.status(), pages::sign_in_failed(&err.to_string()), &cookies)
}

async fn login(State(gateway): State<Arc<Gateway>>, Query(query): Query<LoginQuery>) -> Response<Body> {
    let result = match configured(&gateway) {
        Ok(signin) => signin.begin(query.rd.as_deref()).await,
        Err(err) => Err(err),
    };
    result.unwrap_or_else(|err| failed(&gateway, &err))
}

async fn callback(
    State(gateway): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response<Body> {
    let result = match configured(&gateway) {
        Ok(signin) => signin.complete(&gateway.authn, &headers, &query).await,
        Err(err) => Err(err),
    };
    result.unwrap_or_else(|err| failed(&gateway, &err))
}

async fn logout(State(gateway): State<Arc<Gateway>>, headers: HeaderMap) -> Response<Body> {
    match configured(&gateway) {
        Ok(signin) => signin.logout(&headers).await,
        Err(err) => failed(&gateway, &err),
    }
}

async fn signed_out() -> Response<Body> {
    pages::html_response(StatusCode::OK, pages::signed_out(), &[])
}

async fn cli_config(State(gateway): State<Arc<Gateway>>) -> Response<Body> {
    match configured(&gateway) {
        Ok(signin) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(signin.cli_config())).into_response(),
        Err(err) => HttpError::new(StatusCode::NOT_FOUND, "not_found", "login_not_configured", err.to_string())
            .into_response("-"),
    }
}

/// Who am I: a bearer token or a session. HTML unless the caller asks for JSON.
async fn whoami(State(gateway): State<Arc<Gateway>>, method: Method, headers: HeaderMap) -> Response<Body> {
    let browser = wants_html(&method, &headers);
    let mut cookies = Vec::new();
    let outcome = match authn::bearer_token(&headers) {
        Ok(token) => {
            gateway.authn.authenticate(token).await.map(|identity| (identity, None)).map_err(|e| HttpError::from(&e))
        }
        Err(AuthError::MissingToken) => match &gateway.signin {
            Some(signin) => match signin.authenticate(&gateway.authn, &headers).await {
                SessionAuth::Valid { identity, set_cookie, ends_at, .. } => {
                    cookies.extend(set_cookie);
                    Ok((identity, Some(ends_at)))
                }
                SessionAuth::Absent => Err(HttpError::from(&AuthError::MissingToken)),
                SessionAuth::Invalid { error, clear } => {
                    cookies.push(clear);
                    Err(HttpError::session(&error, &signin.login_location("/.hfgate/whoami")))
                }
                SessionAuth::Unavailable { error } => return HttpError::session_unavailable(&error).into_response("-"),
            },
            None => Err(HttpError::from(&AuthError::MissingToken)),
        },
        Err(err) => Err(HttpError::from(&err)),
    };
    let (identity, session_ends) = match outcome {
        Ok(found) => found,
        Err(err) => {
            let mut response = match &gateway.signin {
                Some(signin) if browser => super::redirect(&signin.login_location("/.hfgate/whoami"), &[]),
                _ => err.into_response("-"),
            };
            for cookie in cookies.iter().filter_map(|c| http::HeaderValue::from_str(c).ok()) {
                response.headers_mut().append(header::SET_COOKIE, cookie);
            }
            return response;
        }
    };
    let who = WhoAmI::new(&gateway.settings, &identity, session_ends);
    let wants_json = !browser
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.contains("application/json"));
    if wants_json {
        let mut response = ([(header::CACHE_CONTROL, "no-store")], axum::Json(&who)).into_response();
        for cookie in cookies.iter().filter_map(|c| http::HeaderValue::from_str(c).ok()) {
            response.headers_mut().append(header::SET_COOKIE, cookie);
        }
        response
    } else {
        pages::html_response(StatusCode::OK, who.html(), &cookies)
    }
}
