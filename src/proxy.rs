//! The request pipeline: normalize → route → authenticate → rewrite → forward → observe → record.
//! A request carries one [`Exchange`] through the stages; the audit line is written from it when the
//! response ends.

pub mod body;
pub mod forward;
pub mod headers;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use http::{HeaderValue, Request, Response, Uri};

use crate::assertion::AssertionSigner;
use crate::audit::event::{IdentityRecord, Timestamp};
use crate::audit::{AuditEvent, AuditSink, Decision, ModelRef, Usage};
use crate::authn::{self, Authenticator, Identity};
use crate::client::HttpClient;
use crate::config::{Credential, Settings};
use crate::error::HttpError;
use crate::metrics::Metrics;
use crate::route::{Route, RouteTable, normalize_path};
use body::{BodyOutcome, CountingBody, ObservedBody, UsageTap};

/// Everything the pipeline needs, built once from validated settings.
#[derive(Debug)]
pub struct Gateway {
    pub settings: Arc<Settings>,
    pub routes: RouteTable,
    pub authn: Authenticator,
    pub signer: AssertionSigner,
    pub audit: AuditSink,
    pub metrics: Arc<Metrics>,
    pub client: HttpClient,
    proto: &'static str,
}

impl Gateway {
    pub fn new(
        settings: Arc<Settings>,
        signer: AssertionSigner,
        audit: AuditSink,
        metrics: Arc<Metrics>,
        client: HttpClient,
    ) -> Gateway {
        let authn = Authenticator::new(&settings.issuers, client.clone(), metrics.clone());
        let routes = RouteTable::new(&settings.routes);
        let proto = if settings.server.public_url.starts_with("https://") { "https" } else { "http" };
        Gateway { settings, routes, authn, signer, audit, metrics, client, proto }
    }
}

/// The record of one request as it moves through the stages.
#[derive(Debug)]
pub struct Exchange {
    pub request_id: String,
    started: Instant,
    started_unix_ms: u128,
    method: http::Method,
    /// The request target as received (a cheap reference-counted clone); only its path is recorded.
    uri: Uri,
    route: Option<Arc<Route>>,
    identity: Option<Arc<Identity>>,
    model: Option<ModelRef>,
    decision: Decision,
    upstream: Option<Arc<str>>,
    /// What went wrong, in more detail than the caller is told (audit only).
    error: Option<String>,
    bytes_in: Arc<AtomicU64>,
}

impl Exchange {
    fn start(method: &http::Method, uri: &Uri) -> Exchange {
        Exchange {
            request_id: request_id(),
            started: Instant::now(),
            started_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0),
            method: method.clone(),
            uri: uri.clone(),
            route: None,
            identity: None,
            model: None,
            decision: Decision::deny("not authenticated"),
            upstream: None,
            error: None,
            bytes_in: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Writes the audit line and the request metric.
    fn finish(&self, gateway: &Gateway, status: u16, bytes_out: u64, usage: &Usage, error: Option<&str>) {
        static NO_ROUTE: std::sync::LazyLock<Arc<str>> = std::sync::LazyLock::new(|| "-".into());
        gateway.metrics.request(self.route.as_ref().map_or(&*NO_ROUTE, |r| &r.name), status);
        let route = self.route.as_ref().map(|r| &*r.name);
        let event = AuditEvent {
            ts: Timestamp::from_unix_millis(self.started_unix_ms),
            request_id: &self.request_id,
            route,
            method: self.method.as_str(),
            path: truncate(self.uri.path(), 2048),
            status,
            duration_ms: (self.started.elapsed().as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
            bytes_in: self.bytes_in.load(Ordering::Relaxed),
            bytes_out,
            identity: self.identity.as_deref().map(IdentityRecord::from),
            model: self.model.as_ref(),
            action: None,
            decision: &self.decision,
            usage: (!usage.is_empty()).then_some(usage),
            upstream: self.upstream.as_deref(),
            error,
        };
        gateway.audit.record(&event);
    }

    /// Answers with hfgate's own error, recorded at once.
    fn refuse(mut self, gateway: &Gateway, err: HttpError) -> Response<Body> {
        if err.error == "invalid_token" || err.reason == "keys_unavailable" {
            gateway.metrics.auth_failure(err.reason);
        }
        if !self.decision.allow {
            self.decision.reason = err.reason.to_string();
        }
        let error = self.error.take().unwrap_or_else(|| err.description.clone());
        let response = err.into_response(&self.request_id);
        let bytes = http_body::Body::size_hint(response.body()).exact().unwrap_or(0);
        self.finish(gateway, response.status().as_u16(), bytes, &Usage::default(), Some(&error));
        response
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A request id: 32 random bits chosen at start, then a per-process counter run through a bijective
/// mix, so ids are unique without a random draw per request, and do not look sequential.
fn request_id() -> String {
    static SALT: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let salt = *SALT.get_or_init(|| {
        let mut bytes = [0u8; 4];
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        u32::from_be_bytes(bytes)
    });
    let mut x = COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 32;
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = String::with_capacity(24);
    for b in salt.to_be_bytes().into_iter().chain(x.to_be_bytes()) {
        id.push(HEX[usize::from(b >> 4)] as char);
        id.push(HEX[usize::from(b & 0x0f)] as char);
    }
    id
}

/// Serves one proxied request.
pub async fn handle(gateway: Arc<Gateway>, peer: SocketAddr, request: Request<Body>) -> Response<Body> {
    let mut exchange = Exchange::start(request.method(), request.uri());
    match pipeline(&gateway, &mut exchange, peer, request).await {
        Ok(response) => respond(gateway, exchange, response),
        Err(err) => exchange.refuse(&gateway, err),
    }
}

async fn pipeline(
    gateway: &Gateway,
    exchange: &mut Exchange,
    peer: SocketAddr,
    request: Request<Body>,
) -> Result<Response<hyper::body::Incoming>, HttpError> {
    let path = normalize_path(request.uri().path()).map_err(HttpError::bad_path)?;
    let route = gateway.routes.find(path).ok_or_else(|| HttpError::no_route(path))?.clone();
    exchange.route = Some(route.clone());
    let settings = &route.settings;
    if let Some(model) = &settings.model {
        exchange.model = Some(ModelRef { id: Some(model.clone()), ..ModelRef::default() });
    }

    let token = authn::bearer_token(request.headers()).map_err(|e| HttpError::from(&e))?;
    let digest = authn::token_digest(token);
    let identity = gateway.authn.authenticate_digested(token, digest).await.map_err(|e| HttpError::from(&e))?;
    exchange.identity = Some(identity.clone());
    exchange.decision = Decision::allow("authenticated");

    let authorization = match &settings.credential {
        Credential::None => None,
        Credential::Static { header, .. } => Some(header.clone()),
        Credential::Passthrough => request.headers().get(http::header::AUTHORIZATION).cloned(),
    };
    let assertion = gateway.signer.assertion(digest, route.index, &settings.name, &identity);
    let path_and_query = route.upstream_path_and_query(path, request.uri().query());
    let uri = Uri::builder()
        .scheme(settings.upstream.scheme.clone())
        .authority(settings.upstream.authority.clone())
        .path_and_query(path_and_query)
        .build()
        .map_err(|_| {
            HttpError::new(
                http::StatusCode::BAD_REQUEST,
                "invalid_request",
                "bad_path",
                "request target cannot be forwarded",
            )
        })?;
    exchange.upstream = Some(route.origin.clone());

    let (parts, body) = request.into_parts();
    let upstream_headers = headers::upstream_headers(
        &parts.headers,
        headers::UpstreamIdentity {
            identity: &identity,
            authorization,
            assertion,
            request_id: &exchange.request_id,
            peer,
            proto: gateway.proto,
            trust_forwarded: gateway.settings.server.trust_forwarded_headers,
        },
    );
    let mut upstream = Request::new(Body::new(CountingBody::new(body, exchange.bytes_in.clone())));
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = upstream_headers;

    let sent = Instant::now();
    match forward::send(&gateway.client, upstream, settings.timeout).await {
        Ok(response) => {
            gateway.metrics.upstream_latency(&route.name, sent.elapsed());
            Ok(response)
        }
        Err(err) => {
            tracing::warn!(request_id = %exchange.request_id, route = %settings.name, error = %err, "upstream request failed");
            exchange.error = Some(err.to_string());
            Err(err.to_http(&settings.name))
        }
    }
}

/// Streams the upstream response back; the audit line is written when its body ends.
fn respond(gateway: Arc<Gateway>, exchange: Exchange, response: Response<hyper::body::Incoming>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    headers::clean_response_headers(&mut parts.headers);
    if let Ok(id) = HeaderValue::from_str(&exchange.request_id) {
        parts.headers.insert(headers::X_REQUEST_ID, id);
    }
    let status = parts.status.as_u16();
    let tap = UsageTap::for_response(&parts.headers);
    let idle = exchange.route.as_ref().map(|r| r.settings.idle_timeout).unwrap_or(std::time::Duration::from_secs(120));
    let on_end = Box::new(move |outcome: BodyOutcome| {
        exchange.finish(&gateway, status, outcome.bytes, &outcome.usage, outcome.error.as_deref());
    });
    Response::from_parts(parts, Body::new(ObservedBody::new(body, tap, idle, on_end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_unique_hex() {
        let ids: std::collections::HashSet<String> = (0..10_000).map(|_| request_id()).collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|id| id.len() == 24 && id.bytes().all(|b| b.is_ascii_hexdigit())));
    }
}
