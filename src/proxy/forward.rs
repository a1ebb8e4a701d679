//! Sending the rewritten request upstream and naming what went wrong when it fails.

use std::time::Duration;

use axum::body::Body;
use http::{Request, Response, StatusCode};

use crate::client::{HttpClient, error_chain};
use crate::error::HttpError;
use crate::proxy::pool::{UpstreamBody, UpstreamPool};

/// Why the upstream gave no response headers.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No response headers within the route's `timeout`, or the connect timed out.
    #[error("upstream timed out: {0}")]
    Timeout(String),
    /// Connection refused, reset, DNS or TLS failure.
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
}

impl ForwardError {
    /// 504 or 502. The body names the route, not the upstream's internals; details go to the audit.
    pub fn to_http(&self, route: &str) -> HttpError {
        match self {
            ForwardError::Timeout(_) => HttpError::new(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                "upstream_timeout",
                format!("the upstream of route {route} did not answer in time"),
            ),
            ForwardError::Unavailable(_) => HttpError::new(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                "upstream_unavailable",
                format!("the upstream of route {route} is unavailable"),
            ),
        }
    }
}

/// Sends `request` for `route` (through the pool when its upstream is plain `http`, else the general
/// client) and waits at most `timeout` for the response headers; the body is not timed here.
pub async fn send(
    pool: &UpstreamPool,
    client: &HttpClient,
    route: usize,
    request: Request<Body>,
    timeout: Duration,
) -> Result<Response<UpstreamBody>, ForwardError> {
    let sent = async {
        if pool.serves(route) {
            pool.send(route, request).await.map_err(failed)
        } else {
            client.request(request).await.map(UpstreamBody::unpooled).map_err(failed)
        }
    };
    match tokio::time::timeout(timeout, sent).await {
        Err(_) => Err(ForwardError::Timeout(format!("no response headers within {timeout:?}"))),
        Ok(result) => result,
    }
}

fn failed(err: impl std::error::Error + 'static) -> ForwardError {
    let detail = error_chain(&err);
    if is_timeout(&err) { ForwardError::Timeout(detail) } else { ForwardError::Unavailable(detail) }
}

fn is_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.kind() == std::io::ErrorKind::TimedOut
        {
            return true;
        }
        current = e.source();
    }
    false
}
