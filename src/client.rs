//! The one outbound HTTP client: pooled, HTTP/1.1 and h2 (ALPN), rustls on aws-lc-rs with the system's
//! roots. The proxy forwards through it and the JWKS fetcher reads keys with it.

use std::time::Duration;

use axum::body::Body;
use http_body_util::{BodyExt, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

pub type HttpClient = Client<HttpsConnector<HttpConnector>, Body>;

/// TCP connections as every upstream gets them: no Nagle delay, TCP keep-alive, `connect_timeout` bounding
/// the connect.
pub fn tcp_connector(connect_timeout: Duration) -> HttpConnector {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_keepalive(Some(Duration::from_secs(60)));
    http
}

/// Builds the pooled client. `connect_timeout` bounds the TCP connect only.
pub fn build(connect_timeout: Duration) -> HttpClient {
    let http = tcp_connector(connect_timeout);
    let builder = HttpsConnectorBuilder::new();
    let builder = match builder.with_native_roots() {
        Ok(b) => b,
        Err(err) => {
            tracing::warn!(%err, "no system CA roots found; https upstreams will fail to verify");
            HttpsConnectorBuilder::new().with_tls_config(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        }
    };
    let connector = builder.https_or_http().enable_http1().enable_http2().wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector)
}

/// Why a small document (discovery, JWKS) could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("invalid JSON: {0}")]
    Json(String),
}

/// GETs a JSON document of at most `limit` bytes within `timeout`.
pub async fn get_json(
    client: &HttpClient,
    url: &str,
    timeout: Duration,
    limit: usize,
) -> Result<serde_json::Value, FetchError> {
    let request = http::Request::get(url)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::USER_AGENT, concat!("hfgate/", env!("CARGO_PKG_VERSION")))
        .body(Body::empty())
        .map_err(|e| FetchError::Request(e.to_string()))?;
    let work = async {
        let response = client.request(request).await.map_err(|e| FetchError::Request(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|_| FetchError::TooLarge(limit))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| FetchError::Json(e.to_string()))
    };
    tokio::time::timeout(timeout, work).await.map_err(|_| FetchError::Timeout(timeout))?
}

/// An error and its sources on one line (hyper's top-level messages alone say little).
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}
