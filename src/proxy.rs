//! The request pipeline: normalize → route → authenticate → rewrite → forward → observe → record.
//! A request carries one [`Exchange`] through the stages; the audit line is written from it when the
//! response ends.

pub mod body;
pub mod forward;
pub mod headers;
pub mod pool;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use http::{HeaderValue, Request, Response, Uri};

use crate::assertion::AssertionSigner;
use crate::audit::event::Timestamp;
use crate::audit::{AuditEvent, AuditSink, Decision, ModelRef, Usage};
use crate::authn::{self, Authenticator, Identity};
use crate::authz::{self, Authorizer};
use crate::classify::{self, Action};
use crate::client::HttpClient;
use crate::config::ApiKind;
use crate::config::LoginMode;
use crate::config::{Credential, Settings};
use crate::error::HttpError;
use crate::exchange::{Caller, Exchanger, Grant};
use crate::login::{SessionAuth, SignIn};
use crate::metrics::Metrics;
use crate::route::{PathError, Route, RouteTable, normalize_path};
use body::{BodyOutcome, CountingBody, ObservedBody, UsageTap};
use pool::UpstreamPool;

/// Everything the pipeline needs, built once from validated settings.
#[derive(Debug)]
pub struct Gateway {
    pub settings: Arc<Settings>,
    pub routes: RouteTable,
    pub authn: Authenticator,
    pub authz: Authorizer,
    pub signer: AssertionSigner,
    pub audit: AuditSink,
    pub metrics: Arc<Metrics>,
    pub client: HttpClient,
    /// Connections to plain-`http` upstreams, per route.
    pub pool: UpstreamPool,
    /// Sign-in for people (`[login]`): sessions on every route, the sign-in endpoints.
    pub signin: Option<SignIn>,
    /// Per-user upstream credentials (`credential = "exchange:NAME"`).
    pub exchanger: Exchanger,
    proto: &'static str,
}

impl Gateway {
    pub fn new(
        settings: Arc<Settings>,
        authz: Authorizer,
        signer: AssertionSigner,
        audit: AuditSink,
        metrics: Arc<Metrics>,
        client: HttpClient,
    ) -> Gateway {
        let mut authn = Authenticator::new(&settings.issuers, client.clone(), metrics.clone());
        authn.trust_minted(&signer);
        let routes = RouteTable::new(&settings.routes);
        let proto = if settings.server.public_url.starts_with("https://") { "https" } else { "http" };
        let signin = SignIn::new(&settings, client.clone()).map(|s| s.with_metrics(metrics.clone()));
        let exchanger = Exchanger::new(&settings.exchanges, client.clone(), metrics.clone());
        let plain = settings
            .routes
            .iter()
            .map(|r| (r.upstream.scheme == http::uri::Scheme::HTTP).then_some(&r.upstream.authority));
        let pool = UpstreamPool::new(plain, settings.server.upstream_connect_timeout);
        Gateway { settings, routes, authn, authz, signer, audit, metrics, client, pool, signin, exchanger, proto }
    }
}

/// The record of one request as it moves through the stages.
///
/// Exactly one audit line per request: [`Exchange::finish`] writes it once, and an exchange dropped
/// unfinished writes it on drop: status 499 when the client left (or shutdown cut the request) before the
/// response began, 500 if handling it panicked.
#[derive(Debug)]
pub struct Exchange {
    gateway: Arc<Gateway>,
    finished: bool,
    pub request_id: String,
    started: Instant,
    started_unix_ms: u128,
    method: http::Method,
    /// The request target as received (a cheap reference-counted clone); only its path is recorded.
    uri: Uri,
    route: Option<Arc<Route>>,
    identity: Option<Arc<Identity>>,
    model: Option<ModelRef>,
    action: Option<Action>,
    decision: Decision,
    upstream: Option<Arc<str>>,
    /// What went wrong, in more detail than the caller is told (audit only).
    error: Option<String>,
    /// A session cookie to set (resealed) or clear on whatever response this request gets.
    set_cookie: Option<String>,
    bytes_in: Arc<AtomicU64>,
}

impl Exchange {
    fn start(gateway: Arc<Gateway>, method: &http::Method, uri: &Uri) -> Exchange {
        Exchange {
            gateway,
            finished: false,
            request_id: request_id(),
            started: Instant::now(),
            started_unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0),
            method: method.clone(),
            uri: uri.clone(),
            route: None,
            identity: None,
            model: None,
            action: None,
            decision: NOT_AUTHENTICATED.clone(),
            upstream: None,
            error: None,
            set_cookie: None,
            bytes_in: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Writes the audit line and the request metric (once).
    fn finish(&mut self, status: u16, bytes_out: u64, usage: &Usage, error: Option<&str>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let gateway = &*self.gateway;
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
            identity: self.identity.as_deref().and_then(|identity| identity.audit_record.as_deref()),
            model: self.model.as_ref(),
            action: self.action,
            decision: &self.decision,
            usage: (!usage.is_empty()).then_some(usage),
            upstream: self.upstream.as_deref(),
            error,
        };
        gateway.audit.record(&event);
    }

    /// Answers with hfgate's own error, recorded at once.
    fn refuse(mut self, err: HttpError) -> Response<Body> {
        if err.error == "invalid_token" || err.reason == "keys_unavailable" {
            self.gateway.metrics.auth_failure(err.reason);
        }
        match err.status {
            // The policy's own reason is already recorded; a request already forwarded (an upstream failure,
            // a body that outgrew its limit on the way) leaves the decision standing.
            http::StatusCode::FORBIDDEN => {}
            _ if self.upstream.is_some() => {}
            _ => {
                self.decision.allow = false;
                self.decision.policies = Arc::new([]);
                self.decision.reason = err.reason.into();
            }
        }
        let error = self.error.take().unwrap_or_else(|| err.description.clone());
        let mut response = err.into_response(&self.request_id);
        if let Some(cookie) = self.set_cookie.take().and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().append(http::header::SET_COOKIE, cookie);
        }
        let bytes = http_body::Body::size_hint(response.body()).exact().unwrap_or(0);
        self.finish(response.status().as_u16(), bytes, &Usage::default(), Some(&error));
        response
    }
}

// The decisions every request starts with, built once (the clone is a reference count).
static NOT_AUTHENTICATED: std::sync::LazyLock<Decision> =
    std::sync::LazyLock::new(|| Decision::deny("not authenticated"));
static AUTHENTICATED: std::sync::LazyLock<Decision> = std::sync::LazyLock::new(|| Decision::allow("authenticated"));

/// nginx's "client closed request": no response was sent because the client left first.
const CLIENT_CLOSED_REQUEST: u16 = 499;

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.finished {
            return;
        }
        // Whatever stage was running (a body read, the upstream request) was cancelled with it; the
        // decision stays as it was made.
        let (status, error) = if std::thread::panicking() {
            (500, "internal error while handling the request")
        } else {
            (CLIENT_CLOSED_REQUEST, "request abandoned before the response began: the client left, or shutdown cut it")
        };
        self.finish(status, 0, &Usage::default(), Some(error));
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
pub(crate) fn request_id() -> String {
    static SALT: std::sync::OnceLock<(u32, u64)> = std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let (salt, offset) = *SALT.get_or_init(|| {
        let mut bytes = [0u8; 12];
        let _ = aws_lc_rs::rand::fill(&mut bytes);
        let (a, b) = bytes.split_at(4);
        (u32::from_be_bytes(a.try_into().unwrap_or_default()), u64::from_be_bytes(b.try_into().unwrap_or_default()))
    });
    // Adding a constant, multiplying by an odd one and xor-shifting are all bijections on u64: unique ids.
    let mut x = COUNTER.fetch_add(1, Ordering::Relaxed).wrapping_add(offset).wrapping_mul(0x9E37_79B9_7F4A_7C15);
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
    let mut exchange = Exchange::start(gateway.clone(), request.method(), request.uri());
    match pipeline(&gateway, &mut exchange, peer, request).await {
        Ok(response) => respond(exchange, response),
        Err(err) => exchange.refuse(err),
    }
}

async fn pipeline(
    gateway: &Gateway,
    exchange: &mut Exchange,
    peer: SocketAddr,
    request: Request<Body>,
) -> Result<Response<pool::UpstreamBody>, HttpError> {
    // A cheap reference-counted copy, so the path outlives taking the request apart.
    let target = request.uri().clone();
    let path = normalized_path(gateway, target.path())?;
    let route = gateway.routes.find(path).ok_or_else(|| HttpError::no_route(path))?.clone();
    exchange.route = Some(route.clone());
    let settings = &route.settings;

    let (identity, digest) = match authn::bearer_token(request.headers()) {
        Ok(token) => {
            let digest = authn::token_digest(token);
            (gateway.authn.authenticate_digested(token, digest).await.map_err(|e| HttpError::from(&e))?, digest)
        }
        Err(authn::AuthError::MissingToken) => {
            session_identity(gateway, exchange, &route, request.method(), &target, request.headers()).await?
        }
        Err(err) => return Err(HttpError::from(&err)),
    };
    exchange.identity = Some(identity.clone());
    exchange.decision = AUTHENTICATED.clone();

    // Size: a declared length over the limit is refused before a byte of the body is read.
    let body_limit = settings.max_request_body.unwrap_or(gateway.settings.server.max_request_body);
    if let Some(length) = request.headers().get(http::header::CONTENT_LENGTH)
        && length.to_str().ok().and_then(|v| v.parse::<u64>().ok()).is_some_and(|n| n > body_limit)
    {
        return Err(body_too_large(body_limit));
    }

    // Classify: the action and the model, reading a bounded prefix of the body only where the model lives there.
    let (parts, body) = request.into_parts();
    let route_path = match &path[settings.prefix.len()..] {
        "" => "/",
        rest => rest,
    };
    let shape = classify::Request { method: &parts.method, path: route_path, route_model: settings.model.as_deref() };
    let (body, peeked) = if classify::needs_body(settings.api, &shape) {
        let bytes = read_bounded(body, settings.max_body_peek, body_limit).await?;
        exchange.bytes_in.store(bytes.len() as u64, Ordering::Relaxed);
        (Body::from(bytes.clone()), Some(bytes))
    } else {
        (body, None)
    };
    let classified = classify::classify(settings.api, &shape, peeked.as_deref()).map_err(HttpError::bad_request)?;
    exchange.action = Some(classified.action);
    exchange.model = classified.model.clone();

    // Authorize, then check any client-chosen billing organisation against the same policies.
    let question = authz::Question {
        identity: &identity,
        route: &route,
        method: parts.method.as_str(),
        path,
        classified: &classified,
    };
    let verdict = gateway.authz.decide(&question);
    exchange.decision = Decision {
        allow: verdict.allow,
        policies: verdict.policies.clone(),
        reason: verdict.reason.clone(),
        policy_set: gateway.authz.enabled().then(|| gateway.authz.policy_hash().clone()),
    };
    if !verdict.allow {
        return Err(HttpError::forbidden(verdict.reason.to_string()));
    }
    let bill_to = match parts.headers.get(headers::X_HF_BILL_TO) {
        Some(value) => {
            let Ok(org) = value.to_str() else {
                let reason = "X-HF-Bill-To is not a valid organisation name";
                exchange.decision = Decision::deny(reason);
                return Err(HttpError::forbidden(reason.to_string()));
            };
            let billing = gateway.authz.may_bill(&question, org);
            if !billing.allow {
                exchange.decision.allow = false;
                exchange.decision.reason = billing.reason.clone();
                exchange.decision.policies = billing.policies.clone();
                return Err(HttpError::forbidden(billing.reason.to_string()));
            }
            Some(value.clone())
        }
        None => verdict.bill_to.as_deref().and_then(|org| HeaderValue::from_str(org).ok()),
    };

    let mut grant: Option<Grant> = None;
    let authorization = match &settings.credential {
        Credential::None => None,
        Credential::Static { header, .. } => Some(header.clone()),
        Credential::Passthrough => parts.headers.get(http::header::AUTHORIZATION).cloned(),
        Credential::Exchange { index, .. } => {
            // The caller's own bearer token; a browser session has none.
            let caller = Caller {
                identity: &identity,
                token: authn::bearer_token(&parts.headers).ok(),
                request_id: &exchange.request_id,
            };
            match gateway.exchanger.authorization(*index, caller).await {
                Ok(issued) => Some(grant.insert(issued).authorization.clone()),
                Err(err) => {
                    exchange.error = Some(err.to_string());
                    let refusal = err.to_http();
                    if refusal.status == http::StatusCode::FORBIDDEN {
                        exchange.decision.allow = false;
                        exchange.decision.policies = Arc::new([]);
                        exchange.decision.reason = refusal.reason.into();
                    }
                    return Err(refusal);
                }
            }
        }
    };
    let assertion = gateway.signer.assertion(digest, route.index, &settings.name, &identity);
    let path_and_query = route.upstream_path_and_query(path, parts.uri.query());
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
            bill_to,
        },
    );
    let body = match peeked {
        Some(_) => body,
        None => Body::new(CountingBody::new(body, exchange.bytes_in.clone(), body_limit)),
    };
    let mut upstream = Request::new(body);
    *upstream.method_mut() = parts.method;
    *upstream.uri_mut() = uri;
    *upstream.headers_mut() = upstream_headers;

    let sent = Instant::now();
    match forward::send(&gateway.pool, &gateway.client, route.index, upstream, settings.timeout).await {
        Ok(response) => {
            gateway.metrics.upstream_latency(&route.name, sent.elapsed());
            if response.status() == http::StatusCode::UNAUTHORIZED
                && let Some(grant) = &grant
            {
                // The upstream no longer takes the exchanged token (revoked, say): the next request gets another.
                gateway.exchanger.forget(grant);
            }
            Ok(response)
        }
        // The body grew past the limit while streaming: the upstream request was aborted for that.
        Err(_) if exchange.bytes_in.load(Ordering::Relaxed) > body_limit => Err(body_too_large(body_limit)),
        Err(err) => {
            tracing::warn!(request_id = %exchange.request_id, route = %settings.name, error = %err, "upstream request failed");
            exchange.error = Some(err.to_string());
            Err(err.to_http(&settings.name))
        }
    }
}

/// A request without a bearer token: its session cookie, if it carries one. A browser on a
/// `login = "redirect"` route without a live session is sent to sign in; anything else gets the 401.
async fn session_identity(
    gateway: &Gateway,
    exchange: &mut Exchange,
    route: &Route,
    method: &http::Method,
    target: &Uri,
    headers: &http::HeaderMap,
) -> Result<(Arc<Identity>, [u8; 32]), HttpError> {
    let refusal = match &gateway.signin {
        None => HttpError::from(&authn::AuthError::MissingToken),
        Some(signin) => match signin.authenticate(&gateway.authn, headers).await {
            SessionAuth::Valid { identity, digest, set_cookie, .. } => {
                exchange.set_cookie = set_cookie;
                signin.check_same_origin(method, headers).map_err(|why| {
                    HttpError::new(http::StatusCode::FORBIDDEN, "invalid_request", "cross_site_request", why)
                })?;
                return Ok((identity, digest));
            }
            SessionAuth::Absent => HttpError::from(&authn::AuthError::MissingToken),
            SessionAuth::Invalid { error, clear } => {
                exchange.set_cookie = Some(clear);
                HttpError::session(&error, &signin.login_location("/"))
            }
            SessionAuth::Unavailable { error } => return Err(HttpError::session_unavailable(&error)),
        },
    };
    match &gateway.signin {
        Some(signin) if route.settings.login == LoginMode::Redirect && crate::login::wants_html(method, headers) => {
            let back = target.path_and_query().map_or("/", |pq| pq.as_str());
            Err(HttpError::login_redirect(signin.login_location(back)))
        }
        _ => Err(refusal),
    }
}

/// The request path after normalization. An encoded slash is accepted only on hub routes, where a
/// revision may carry one (`refs%2Fpr%2F1`); the hub classifier then refuses it anywhere else.
fn normalized_path<'p>(gateway: &Gateway, raw: &'p str) -> Result<&'p str, HttpError> {
    match normalize_path(raw) {
        Ok(path) => Ok(path),
        Err(PathError::EncodedSlash) => {
            let path = crate::route::normalize_path_allowing_encoded_slash(raw).map_err(HttpError::bad_path)?;
            match gateway.routes.find(path) {
                Some(route) if route.settings.api == ApiKind::Hub => Ok(path),
                _ => Err(HttpError::bad_path(PathError::EncodedSlash)),
            }
        }
        Err(err) => Err(HttpError::bad_path(err)),
    }
}

fn body_too_large(limit: u64) -> HttpError {
    HttpError::too_large(format!("request body exceeds max_request_body ({})", crate::config::format_size(limit)))
}

/// Reads a request body of at most `peek` bytes (the model lives in it) and at most `limit` in all.
async fn read_bounded(body: Body, peek: usize, limit: u64) -> Result<bytes::Bytes, HttpError> {
    let bound = usize::try_from(limit).map_or(peek, |limit| peek.min(limit));
    match http_body_util::BodyExt::collect(http_body_util::Limited::new(body, bound)).await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(if bound == peek && (peek as u64) < limit {
            HttpError::too_large(format!(
                "request body is larger than {}, the most hfgate reads to find the model (max_body_peek)",
                crate::config::format_size(peek as u64)
            ))
        } else {
            body_too_large(limit)
        }),
        Err(_) => Err(HttpError::new(
            http::StatusCode::BAD_REQUEST,
            "invalid_request",
            "bad_body",
            "the request body could not be read",
        )),
    }
}

/// Streams the upstream response back; the audit line is written when its body ends.
fn respond(mut exchange: Exchange, response: Response<pool::UpstreamBody>) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    headers::clean_response_headers(&mut parts.headers);
    if let Ok(id) = HeaderValue::from_str(&exchange.request_id) {
        parts.headers.insert(headers::X_REQUEST_ID, id);
    }
    if let Some(cookie) = exchange.set_cookie.take().and_then(|c| HeaderValue::from_str(&c).ok()) {
        parts.headers.append(http::header::SET_COOKIE, cookie);
    }
    let status = parts.status.as_u16();
    let (api, idle) = exchange
        .route
        .as_ref()
        .map_or((ApiKind::Generic, std::time::Duration::from_secs(120)), |r| (r.settings.api, r.settings.idle_timeout));
    let tap = UsageTap::for_api(api, &parts.headers);
    let on_end = Box::new(move |outcome: BodyOutcome| {
        exchange.finish(status, outcome.bytes, &outcome.usage, outcome.error.as_deref());
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
