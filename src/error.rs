//! Errors that render themselves as responses: JSON `{"error", "error_description", "request_id"}`,
//! plus an RFC 6750 `WWW-Authenticate` challenge on 401.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};

use crate::authn::AuthError;
use crate::route::PathError;

/// A response hfgate gives instead of the upstream's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub status: StatusCode,
    /// Machine-readable code (`invalid_token`, `invalid_request`, `bad_gateway`...).
    pub error: &'static str,
    /// Human-readable and precise; never contains a token or a credential.
    pub description: String,
    /// A short reason for metrics and the audit (`aud_mismatch`, `upstream_timeout`...).
    pub reason: &'static str,
    /// Where a browser is sent instead (a 302 to sign in).
    pub location: Option<String>,
}

impl HttpError {
    pub fn new(
        status: StatusCode,
        error: &'static str,
        reason: &'static str,
        description: impl Into<String>,
    ) -> HttpError {
        HttpError { status, error, description: description.into(), reason, location: None }
    }

    pub fn bad_path(err: PathError) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, "invalid_request", "bad_path", err.to_string())
    }

    /// A request that could not be classified (no model in the body, a malformed repo path...).
    pub fn bad_request(err: crate::classify::ClassifyError) -> HttpError {
        HttpError::new(StatusCode::BAD_REQUEST, "invalid_request", "unclassifiable", err.to_string())
    }

    /// A verified identity that the policy refuses: RFC 6750 `insufficient_scope`.
    pub fn forbidden(reason: String) -> HttpError {
        HttpError::new(StatusCode::FORBIDDEN, "insufficient_scope", "policy_denied", reason)
    }

    /// A request body over the route's `max_request_body` (or over what hfgate reads to find the model).
    pub fn too_large(description: String) -> HttpError {
        HttpError::new(StatusCode::PAYLOAD_TOO_LARGE, "request_too_large", "body_too_large", description)
    }

    /// A browser without a session on a `login = "redirect"` route: sent to sign in, then back.
    pub fn login_redirect(location: String) -> HttpError {
        HttpError {
            status: StatusCode::FOUND,
            error: "login_required",
            description: "sign in first: redirecting to /.hfgate/login".into(),
            reason: "login_required",
            location: Some(location),
        }
    }

    /// A session cookie that no longer holds a session (expired, signed out, unreadable).
    pub fn session(err: &crate::authn::session::SessionError, login_url: &str) -> HttpError {
        HttpError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_token",
            err.code(),
            format!("{err}; sign in again at {login_url}"),
        )
    }

    /// A session that could not be refreshed because the identity provider did not answer: try again.
    pub fn session_unavailable(err: &crate::authn::session::SessionError) -> HttpError {
        HttpError::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", err.code(), err.to_string())
    }

    pub fn no_route(path: &str) -> HttpError {
        let shown: String = path.chars().take(128).collect();
        HttpError::new(StatusCode::NOT_FOUND, "not_found", "no_route", format!("no route for path {shown}"))
    }

    /// The JSON body and headers; `request_id` ties the answer to the audit line and the logs.
    pub fn into_response(self, request_id: &str) -> Response<Body> {
        let body = serde_json::json!({
            "error": self.error,
            "error_description": self.description,
            "request_id": request_id,
        });
        let mut response = Response::new(Body::from(body.to_string()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert("x-request-id", id);
        }
        if self.status == StatusCode::UNAUTHORIZED || self.status == StatusCode::FORBIDDEN {
            let challenge = format!(
                "Bearer realm=\"hfgate\", error=\"{}\", error_description=\"{}\"",
                self.error,
                rfc6750_text(&self.description)
            );
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
        }
        if let Some(location) = self.location.as_deref().and_then(|l| HeaderValue::from_str(l).ok()) {
            headers.insert(header::LOCATION, location);
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

impl From<&AuthError> for HttpError {
    fn from(err: &AuthError) -> HttpError {
        let error = if err.status() == StatusCode::UNAUTHORIZED { "invalid_token" } else { "temporarily_unavailable" };
        HttpError::new(err.status(), error, err.code(), err.to_string())
    }
}

/// RFC 6750 §3: `error_description` is limited to %x20-21 / %x23-5B / %x5D-7E.
fn rfc6750_text(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if (' '..='~').contains(&c) => c,
            _ => '?',
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_carries_the_exact_check() {
        let err = AuthError::AudMismatch("hfgate".into());
        let response = HttpError::from(&err).into_response("rid");
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        let challenge = response.headers()[header::WWW_AUTHENTICATE].to_str().expect("ascii");
        assert_eq!(
            challenge,
            "Bearer realm=\"hfgate\", error=\"invalid_token\", error_description=\"aud mismatch: expected one of [hfgate]\""
        );
    }

    #[test]
    fn descriptions_are_made_rfc6750_safe() {
        assert_eq!(rfc6750_text("a\"b\\c\u{e9}"), "a'b/c?");
    }
}
