//! Per-user upstream credentials: a route with `credential = "exchange:NAME"` forwards each request with a
//! token issued to the caller, obtained by an OAuth 2.0 token exchange (RFC 8693) at the `[[exchange]]`'s
//! token endpoint.
//!
//! - `kind = "huggingface"`: Hugging Face Enterprise token exchange. hfgate's organisation-bound OAuth app
//!   (client id and secret, Basic auth) asks `https://huggingface.co/oauth/token` for an `hf_oauth_…` token
//!   in the name of the caller's verified email address; Hugging Face answers `invalid_grant` when that
//!   address is not a member of the organisation.
//! - `kind = "rfc8693"`: the caller's own bearer token is exchanged for one with the upstream's audience.
//!
//! Issued tokens are cached per subject (the email, or the caller's token) until shortly before they expire,
//! and fetched once however many requests need one at the same moment. They are never logged, printed by
//! `Debug`, or written to the audit.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use http::{HeaderValue, StatusCode};
use moka::sync::Cache;

use crate::authn::{Identity, printable, token_digest};
use crate::client::{FetchError, HttpClient};
use crate::config::{ExchangeKind, ExchangeSettings};
use crate::error::HttpError;
use crate::oauth::{self, ClientAuth, OAuthError, TokenResponse};

/// RFC 8693 §2.1 `grant_type`.
pub const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// Hugging Face's `subject_token_type` for "the user with this email address".
pub const USER_EMAIL_TOKEN_TYPE: &str = "urn:huggingface:token-type:user-email";
/// RFC 8693 §3 token type of an OAuth access token.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// An issued token is used until this much before it expires: at most a minute, at most a tenth of its life.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// How long a token whose answer names no `expires_in` is used.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// However long a token claims to live, it is exchanged again after this.
const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How long a refusal of the subject itself (`invalid_grant`) is remembered before asking again.
const REFUSAL_MEMORY: Duration = Duration::from_secs(10);
/// A token the upstream answers 401 for is dropped, once it has been in use at least this long (so an
/// upstream that refuses every token does not turn each request into an exchange).
pub const MIN_AGE_BEFORE_FORGET: Duration = Duration::from_secs(5);
/// How long a subject's entry lives without a token in it (a failed or abandoned exchange).
const EMPTY_ENTRY_LIFETIME: Duration = Duration::from_secs(300);

/// Why no upstream credential could be had. The `Display` text is the detailed one, for the audit and the
/// logs; [`ExchangeError::to_http`] is what the caller is told. Neither ever contains a token or a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error(
        "credential exchange {exchange} asks Hugging Face for a token in the name of your verified email address, and your identity carries none: the identity provider must include a verified email claim"
    )]
    NoEmail { exchange: String },
    #[error(
        "credential exchange {exchange} exchanges your bearer token, and a browser session has none: call with Authorization: Bearer <token from your identity provider>"
    )]
    NoToken { exchange: String },
    #[error("credential exchange {exchange} serves callers of issuer {allowed} only, and you signed in with {issuer}")]
    ForeignIssuer { exchange: String, issuer: String, allowed: String },
    #[error("credential exchange {exchange} exchanges tokens of your identity provider, not one hfgate issued")]
    NotTheIdpsToken { exchange: String },
    #[error(
        "Hugging Face refused to issue a token for {email}: not a member of the organisation of credential exchange {exchange} (invalid_grant{detail})"
    )]
    NotMember { exchange: String, email: String, detail: String },
    #[error("the token endpoint of credential exchange {exchange} refused to exchange your token ({code}{detail})")]
    SubjectRefused { exchange: String, code: String, detail: String },
    #[error("credential exchange {exchange}: token endpoint {url} refused hfgate's request ({code}{detail})")]
    Misconfigured { exchange: String, url: String, code: String, detail: String },
    #[error("credential exchange {exchange}: token endpoint {url} is unavailable: {detail}")]
    Unavailable { exchange: String, url: String, detail: String },
    #[error("credential exchange {exchange}: token endpoint {url} did not answer within {seconds}s")]
    Timeout { exchange: String, url: String, seconds: u64 },
    #[error("credential exchange {exchange}: token endpoint {url} gave an unusable answer: {detail}")]
    Unexpected { exchange: String, url: String, detail: String },
}

impl ExchangeError {
    /// A short stable code, for the audit's `decision.reason` and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ExchangeError::NoEmail { .. } => "exchange_no_email",
            ExchangeError::NoToken { .. } => "exchange_no_token",
            ExchangeError::ForeignIssuer { .. } => "exchange_foreign_issuer",
            ExchangeError::NotTheIdpsToken { .. } => "exchange_not_idp_token",
            ExchangeError::NotMember { .. } => "exchange_not_member",
            ExchangeError::SubjectRefused { .. } => "exchange_refused",
            ExchangeError::Misconfigured { .. } => "exchange_misconfigured",
            ExchangeError::Unavailable { .. } => "exchange_unavailable",
            ExchangeError::Timeout { .. } => "exchange_timeout",
            ExchangeError::Unexpected { .. } => "exchange_unexpected",
        }
    }

    /// 403 when the caller cannot have a token (no email, no token, refused by the token endpoint); 502 when
    /// hfgate could not get one (misconfigured, unavailable, garbage); 504 when the endpoint timed out.
    pub fn status(&self) -> StatusCode {
        match self {
            ExchangeError::NoEmail { .. }
            | ExchangeError::NoToken { .. }
            | ExchangeError::ForeignIssuer { .. }
            | ExchangeError::NotTheIdpsToken { .. }
            | ExchangeError::NotMember { .. }
            | ExchangeError::SubjectRefused { .. } => StatusCode::FORBIDDEN,
            ExchangeError::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            ExchangeError::Misconfigured { .. }
            | ExchangeError::Unavailable { .. }
            | ExchangeError::Unexpected { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The response the caller gets: the whole story when it is about them, less when it is the operator's.
    pub fn to_http(&self) -> HttpError {
        let (status, code) = (self.status(), self.code());
        match self {
            ExchangeError::NoEmail { .. }
            | ExchangeError::NoToken { .. }
            | ExchangeError::ForeignIssuer { .. }
            | ExchangeError::NotTheIdpsToken { .. }
            | ExchangeError::NotMember { .. }
            | ExchangeError::SubjectRefused { .. } => {
                HttpError::new(status, "insufficient_scope", code, self.to_string())
            }
            ExchangeError::Misconfigured { exchange, code: refusal, .. } => HttpError::new(
                status,
                "bad_gateway",
                code,
                format!(
                    "hfgate could not obtain an upstream credential for you: the token endpoint of credential exchange {exchange} refused hfgate's own request ({refusal}); the operator must fix the exchange's configuration"
                ),
            ),
            ExchangeError::Timeout { exchange, .. } => HttpError::new(
                status,
                "gateway_timeout",
                code,
                format!("the token endpoint of credential exchange {exchange} did not answer in time"),
            ),
            ExchangeError::Unavailable { exchange, .. } | ExchangeError::Unexpected { exchange, .. } => HttpError::new(
                status,
                "bad_gateway",
                code,
                format!("the token endpoint of credential exchange {exchange} is unavailable"),
            ),
        }
    }
}

/// Who is asking, as far as an exchange cares.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    pub identity: &'a Identity,
    /// The bearer token the request carried; `None` for a browser session.
    pub token: Option<&'a str>,
    /// For the operator's log line when the exchange fails.
    pub request_id: &'a str,
}

/// An upstream credential for one request.
#[derive(Clone)]
pub struct Grant {
    /// `Bearer <issued token>`, marked sensitive.
    pub authorization: HeaderValue,
    exchange: usize,
    key: [u8; 32],
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant").field("exchange", &self.exchange).finish_non_exhaustive()
    }
}

/// Every `[[exchange]]`, by its index in `Settings::exchanges`.
pub struct Exchanger {
    exchanges: Vec<TokenExchange>,
}

/// What a token endpoint call counts as in `hfgate_credential_exchanges`.
fn outcome(issued: &Result<Issued, ExchangeError>) -> &'static str {
    match issued {
        Ok(_) => "issued",
        Err(ExchangeError::NotMember { .. } | ExchangeError::SubjectRefused { .. }) => "refused",
        Err(_) => "failed",
    }
}

impl std::fmt::Debug for Exchanger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.exchanges.iter().map(|e| &e.settings.name)).finish()
    }
}

impl Exchanger {
    pub fn new(settings: &[ExchangeSettings], client: HttpClient, metrics: Arc<crate::metrics::Metrics>) -> Exchanger {
        let exchanges = settings
            .iter()
            .map(|s| TokenExchange {
                settings: s.clone(),
                client: client.clone(),
                metrics: metrics.clone(),
                slots: Cache::builder().max_capacity(100_000).expire_after(SlotExpiry).build(),
            })
            .collect();
        Exchanger { exchanges }
    }

    /// The upstream `Authorization` for `caller` through the exchange at `index`: cached, or exchanged now.
    pub async fn authorization(&self, index: usize, caller: Caller<'_>) -> Result<Grant, ExchangeError> {
        let Some(exchange) = self.exchanges.get(index) else {
            // Config validation resolves every `exchange:NAME` to an index: not reachable.
            return Err(ExchangeError::Unexpected {
                exchange: format!("#{index}"),
                url: String::new(),
                detail: "no such exchange".into(),
            });
        };
        let (authorization, key) = exchange.authorization(caller).await?;
        Ok(Grant { authorization, exchange: index, key })
    }

    /// The upstream refused `grant` (401): drop it, so that the next request exchanges again, unless it is
    /// younger than [`MIN_AGE_BEFORE_FORGET`] or was already replaced.
    pub fn forget(&self, grant: &Grant) {
        let Some(exchange) = self.exchanges.get(grant.exchange) else { return };
        let Some(slot) = exchange.slots.get(&grant.key) else { return };
        let mut state = slot.state();
        if state
            .token
            .as_ref()
            .is_some_and(|t| t.authorization == grant.authorization && t.received.elapsed() >= MIN_AGE_BEFORE_FORGET)
        {
            state.token = None;
        }
    }
}

/// One `[[exchange]]` and the tokens it issued.
struct TokenExchange {
    settings: ExchangeSettings,
    client: HttpClient,
    metrics: Arc<crate::metrics::Metrics>,
    slots: Cache<[u8; 32], Arc<Slot>>,
}

/// One subject's token, and the turn to fetch it.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    /// Held while an exchange runs: the requests that arrive meanwhile wait for it and share its outcome.
    fetching: tokio::sync::Mutex<()>,
}

impl Slot {
    fn state(&self) -> MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct SlotState {
    token: Option<Issued>,
    /// The last exchange's failure, and until when later requests are answered with it.
    failure: Option<(ExchangeError, Instant)>,
    /// Counts finished exchanges: a request that waited through one shares its outcome.
    round: u64,
}

impl SlotState {
    fn fresh(&self, now: Instant) -> Option<HeaderValue> {
        self.token.as_ref().filter(|t| now < t.refresh_at).map(|t| t.authorization.clone())
    }

    /// How long the slot is worth keeping.
    fn lifetime(&self, now: Instant) -> Duration {
        let token = self.token.as_ref().map(|t| t.expires_at.saturating_duration_since(now));
        let failure = self.failure.as_ref().map(|(_, until)| until.saturating_duration_since(now));
        token.into_iter().chain(failure).max().unwrap_or(EMPTY_ENTRY_LIFETIME).max(Duration::from_secs(1))
    }
}

/// An issued token, as cached.
struct Issued {
    authorization: HeaderValue,
    /// When the request that got it was sent: its lifetime counts from there.
    received: Instant,
    refresh_at: Instant,
    expires_at: Instant,
}

/// A slot lives until its token expires (or its refusal is forgotten); an empty one, a few minutes.
struct SlotExpiry;

impl moka::Expiry<[u8; 32], Arc<Slot>> for SlotExpiry {
    fn expire_after_create(&self, _: &[u8; 32], _: &Arc<Slot>, _: Instant) -> Option<Duration> {
        Some(EMPTY_ENTRY_LIFETIME)
    }

    fn expire_after_update(
        &self,
        _: &[u8; 32],
        slot: &Arc<Slot>,
        now: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(slot.state().lifetime(now))
    }
}

impl TokenExchange {
    async fn authorization(&self, caller: Caller<'_>) -> Result<(HeaderValue, [u8; 32]), ExchangeError> {
        let name = &self.settings.name;
        let allowed = &self.settings.issuers;
        if !allowed.is_empty() && !allowed.iter().any(|i| **i == *caller.identity.issuer) {
            return Err(ExchangeError::ForeignIssuer {
                exchange: name.clone(),
                issuer: caller.identity.issuer.to_string(),
                allowed: allowed.join(", "),
            });
        }
        let subject = match self.settings.kind {
            ExchangeKind::HuggingFace => {
                caller.identity.email.as_deref().ok_or_else(|| ExchangeError::NoEmail { exchange: name.clone() })?
            }
            ExchangeKind::Rfc8693 => {
                let token = caller.token.ok_or_else(|| ExchangeError::NoToken { exchange: name.clone() })?;
                // Only the IdP's own token goes to its token endpoint: never one hfgate minted (its `iss` is
                // hfgate) and never a Hugging Face token.
                let foreign = token.starts_with("hf_")
                    || crate::authn::jwt::parse(token)
                        .ok()
                        .and_then(|jwt| jwt.issuer().ok().map(str::to_string))
                        .is_some_and(|iss| iss != *caller.identity.issuer_url);
                if foreign {
                    return Err(ExchangeError::NotTheIdpsToken { exchange: name.clone() });
                }
                token
            }
        };
        let key = token_digest(subject);
        let slot = self.slots.get_with(key, || Arc::new(Slot::default()));
        let round = {
            let state = slot.state();
            let now = Instant::now();
            if let Some(authorization) = state.fresh(now) {
                return Ok((authorization, key));
            }
            if let Some((error, until)) = &state.failure
                && now < *until
            {
                return Err(error.clone());
            }
            state.round
        };
        let _turn = slot.fetching.lock().await;
        {
            let state = slot.state();
            if let Some(authorization) = state.fresh(Instant::now()) {
                return Ok((authorization, key));
            }
            if state.round != round
                && let Some((error, _)) = &state.failure
            {
                // The exchange this request waited for failed: its outcome is shared, including a token
                // kept because the endpoint was down.
                let now = Instant::now();
                return match state.token.as_ref().filter(|t| now < t.expires_at) {
                    Some(kept) => Ok((kept.authorization.clone(), key)),
                    None => Err(error.clone()),
                };
            }
        }
        let outcome = self.exchange(subject, caller.request_id).await;
        let now = Instant::now();
        let answer = {
            let mut state = slot.state();
            state.round += 1;
            match outcome {
                Ok(issued) => {
                    let authorization = issued.authorization.clone();
                    state.token = Some(issued);
                    state.failure = None;
                    Ok(authorization)
                }
                Err(error) => {
                    let remembered = match error.status() {
                        StatusCode::FORBIDDEN => now + REFUSAL_MEMORY,
                        _ => now,
                    };
                    // An endpoint that is down does not end a token that still holds: it is used to its end.
                    let stale = state.token.as_ref().filter(|t| now < t.expires_at);
                    let fallback = match &error {
                        ExchangeError::Unavailable { .. } | ExchangeError::Timeout { .. } => {
                            stale.map(|t| t.authorization.clone())
                        }
                        _ => None,
                    };
                    if fallback.is_none() {
                        state.token = None;
                    }
                    state.failure = Some((error.clone(), remembered));
                    fallback.ok_or(error)
                }
            }
        };
        // Re-inserting the slot sets its expiry from what it now holds.
        self.slots.insert(key, slot.clone());
        answer.map(|authorization| (authorization, key))
    }

    /// One call to the token endpoint.
    async fn exchange(&self, subject: &str, request_id: &str) -> Result<Issued, ExchangeError> {
        let settings = &self.settings;
        let sent = Instant::now();
        let mut form: Vec<(&str, &str)> = vec![("grant_type", GRANT_TYPE), ("subject_token", subject)];
        let auth = match (settings.kind, settings.client_secret.as_deref()) {
            (ExchangeKind::HuggingFace, secret) => {
                form.push(("subject_token_type", USER_EMAIL_TOKEN_TYPE));
                match secret {
                    // As Hugging Face documents it: base64 of `client_id:client_secret`, as they are.
                    Some(client_secret) => ClientAuth::BasicUnencoded { client_id: &settings.client_id, client_secret },
                    None => ClientAuth::Public { client_id: &settings.client_id },
                }
            }
            (ExchangeKind::Rfc8693, secret) => {
                form.push(("subject_token_type", ACCESS_TOKEN_TYPE));
                if let Some(audience) = settings.audience.as_deref() {
                    form.push(("audience", audience));
                }
                if let Some(resource) = settings.resource.as_deref() {
                    form.push(("resource", resource));
                }
                match secret {
                    Some(client_secret) => ClientAuth::Basic { client_id: &settings.client_id, client_secret },
                    None => ClientAuth::Public { client_id: &settings.client_id },
                }
            }
        };
        if let Some(scope) = settings.scope.as_deref() {
            form.push(("scope", scope));
        }
        let answer = oauth::post_form::<TokenResponse>(&self.client, &settings.token_endpoint, auth, &form).await;
        let issued = match answer {
            Ok(answer) => self.issued(answer, sent),
            Err(err) => Err(self.failure(err, subject)),
        };
        self.metrics.credential_exchange(&settings.name, outcome(&issued));
        if let Err(error) = &issued {
            match error {
                ExchangeError::Misconfigured { code, detail, .. } => tracing::warn!(
                    request_id,
                    exchange = %settings.name,
                    token_endpoint = %settings.token_endpoint,
                    client_id = %settings.client_id,
                    error_code = %code,
                    detail = %detail.trim_start_matches(": "),
                    "token exchange refused hfgate's request: check the exchange's client_id, client_secret, scope and audience, and that the OAuth app may exchange tokens"
                ),
                ExchangeError::Unavailable { .. }
                | ExchangeError::Timeout { .. }
                | ExchangeError::Unexpected { .. } => {
                    tracing::warn!(request_id, exchange = %settings.name, error = %error, "token exchange failed")
                }
                _ => {}
            }
        }
        issued
    }

    /// A success answer as a usable bearer credential.
    fn issued(&self, answer: TokenResponse, sent: Instant) -> Result<Issued, ExchangeError> {
        let unexpected = |detail: String| ExchangeError::Unexpected {
            exchange: self.settings.name.clone(),
            url: self.settings.token_endpoint.clone(),
            detail,
        };
        if let Some(kind) = answer.token_type.as_deref()
            && !kind.eq_ignore_ascii_case("bearer")
        {
            return Err(unexpected(format!("token_type {} cannot be sent as a bearer token", printable(kind))));
        }
        if let Some(kind) = answer.issued_token_type.as_deref()
            && kind != ACCESS_TOKEN_TYPE
            && self.settings.kind == ExchangeKind::HuggingFace
        {
            return Err(unexpected(format!("issued_token_type {} is not an access token", printable(kind))));
        }
        let token = answer.access_token.as_str();
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(unexpected("access_token is empty or not a visible-ASCII token".into()));
        }
        let mut authorization = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| unexpected("access_token cannot be a header value".into()))?;
        authorization.set_sensitive(true);
        let lifetime = answer.expires_in.map_or(DEFAULT_LIFETIME, Duration::from_secs).min(MAX_LIFETIME);
        let margin = REFRESH_MARGIN.min(lifetime / 10);
        Ok(Issued {
            authorization,
            received: sent,
            refresh_at: sent + (lifetime - margin),
            expires_at: sent + lifetime,
        })
    }

    /// A failed call, classified: the subject refused (403), hfgate refused or the endpoint down (502), slow (504).
    fn failure(&self, err: OAuthError, subject: &str) -> ExchangeError {
        let exchange = self.settings.name.clone();
        let url = self.settings.token_endpoint.clone();
        match err {
            OAuthError::Refused { error, description } => {
                let code = printable(&error);
                let detail = description.map(|d| format!(": {}", printable_long(&d))).unwrap_or_default();
                match (self.settings.kind, error.as_str()) {
                    (ExchangeKind::HuggingFace, "invalid_grant") => {
                        ExchangeError::NotMember { exchange, email: printable(subject), detail }
                    }
                    (ExchangeKind::Rfc8693, "invalid_grant") => {
                        ExchangeError::SubjectRefused { exchange, code, detail }
                    }
                    (_, "temporarily_unavailable" | "server_error") => {
                        ExchangeError::Unavailable { exchange, url, detail: format!("{code}{detail}") }
                    }
                    _ => ExchangeError::Misconfigured { exchange, url, code, detail },
                }
            }
            OAuthError::Request { source: FetchError::Timeout(after), .. } => {
                ExchangeError::Timeout { exchange, url, seconds: after.as_secs() }
            }
            OAuthError::Request { source, .. } => {
                ExchangeError::Unavailable { exchange, url, detail: source.to_string() }
            }
            OAuthError::Unexpected { detail, .. } => ExchangeError::Unexpected { exchange, url, detail },
            other => ExchangeError::Unexpected { exchange, url, detail: other.to_string() },
        }
    }
}

/// Text from the token endpoint, safe to quote: visible ASCII and spaces, at most 200 characters.
fn printable_long(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(200)
        .map(|c| if c == ' ' || (c.is_ascii_graphic() && c != '"' && c != '\\') { c } else { '?' })
        .collect();
    if text.chars().count() > 200 {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange(kind: ExchangeKind) -> TokenExchange {
        TokenExchange {
            settings: ExchangeSettings {
                name: "hf".into(),
                kind,
                token_endpoint: "http://127.0.0.1:9/oauth/token".into(),
                client_id: "id".into(),
                client_secret: Some("secret".into()),
                scope: None,
                audience: None,
                resource: None,
                issuers: Vec::new(),
            },
            client: crate::client::build(Duration::from_secs(1)),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            slots: Cache::builder().max_capacity(10).expire_after(SlotExpiry).build(),
        }
    }

    fn answer(value: serde_json::Value) -> TokenResponse {
        serde_json::from_value(value).expect("token response")
    }

    #[test]
    fn tokens_are_refreshed_shortly_before_they_expire() {
        let hf = exchange(ExchangeKind::HuggingFace);
        let sent = Instant::now();
        let long = hf
            .issued(
                answer(serde_json::json!({
                    "access_token": "hf_oauth_abc", "token_type": "bearer", "expires_in": 28800,
                    "issued_token_type": ACCESS_TOKEN_TYPE,
                })),
                sent,
            )
            .expect("issued");
        assert_eq!(long.expires_at - sent, Duration::from_secs(28800));
        assert_eq!(long.refresh_at - sent, Duration::from_secs(28800 - 60));
        assert!(long.authorization.is_sensitive());
        assert_eq!(long.authorization, "Bearer hf_oauth_abc");
        let short =
            hf.issued(answer(serde_json::json!({"access_token": "t", "expires_in": 10})), sent).expect("issued");
        assert_eq!(short.refresh_at - sent, Duration::from_secs(9));
        let forever = hf.issued(answer(serde_json::json!({"access_token": "t", "expires_in": u64::MAX})), sent);
        assert_eq!(forever.expect("issued").expires_at - sent, MAX_LIFETIME);
        let unknown = hf.issued(answer(serde_json::json!({"access_token": "t"})), sent).expect("issued");
        assert_eq!(unknown.expires_at - sent, DEFAULT_LIFETIME);
    }

    #[test]
    fn unusable_answers_are_refused() {
        let hf = exchange(ExchangeKind::HuggingFace);
        let now = Instant::now();
        for bad in [
            serde_json::json!({"access_token": "t", "token_type": "N_A"}),
            serde_json::json!({"access_token": "t", "issued_token_type": "urn:ietf:params:oauth:token-type:id_token"}),
            serde_json::json!({"access_token": ""}),
            serde_json::json!({"access_token": "a b"}),
            serde_json::json!({"access_token": "a\u{e9}"}),
        ] {
            let err = hf.issued(answer(bad.clone()), now).err().unwrap_or_else(|| panic!("accepted {bad}"));
            assert_eq!(err.code(), "exchange_unexpected", "{bad}");
            assert_eq!(err.status(), StatusCode::BAD_GATEWAY);
        }
    }

    #[test]
    fn refusals_are_classified_by_kind_and_code() {
        let refused = |error: &str| OAuthError::Refused { error: error.into(), description: Some("why \"so\"".into()) };
        let hf = exchange(ExchangeKind::HuggingFace);
        let not_member = hf.failure(refused("invalid_grant"), "alice@acme.test");
        assert_eq!(not_member.status(), StatusCode::FORBIDDEN);
        assert!(not_member.to_string().contains("not a member of the organisation"), "{not_member}");
        assert!(not_member.to_string().contains("alice@acme.test"), "{not_member}");
        assert_eq!(not_member.to_http().error, "insufficient_scope");
        let client = hf.failure(refused("invalid_client"), "alice@acme.test");
        assert_eq!(client.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(client.code(), "exchange_misconfigured");
        let told = client.to_http().description;
        assert!(told.contains("invalid_client") && !told.contains("why"), "{told}");
        assert_eq!(hf.failure(refused("invalid_scope"), "a").code(), "exchange_misconfigured");
        assert_eq!(hf.failure(refused("server_error"), "a").status(), StatusCode::BAD_GATEWAY);
        let timeout = OAuthError::Request { url: String::new(), source: FetchError::Timeout(Duration::from_secs(10)) };
        assert_eq!(hf.failure(timeout, "a").status(), StatusCode::GATEWAY_TIMEOUT);
        let down = OAuthError::Request { url: String::new(), source: FetchError::Status(503) };
        assert_eq!(hf.failure(down, "a").code(), "exchange_unavailable");

        let generic = exchange(ExchangeKind::Rfc8693);
        assert_eq!(generic.failure(refused("invalid_grant"), "token").code(), "exchange_refused");
        assert_eq!(generic.failure(refused("invalid_target"), "token").code(), "exchange_misconfigured");
        // The caller's token is never quoted.
        assert!(!generic.failure(refused("invalid_grant"), "secret-token").to_string().contains("secret-token"));
    }

    #[test]
    fn slots_live_as_long_as_what_they_hold() {
        let now = Instant::now();
        let mut state = SlotState::default();
        assert_eq!(state.lifetime(now), EMPTY_ENTRY_LIFETIME);
        state.token = Some(Issued {
            authorization: HeaderValue::from_static("Bearer t"),
            received: now,
            refresh_at: now + Duration::from_secs(3000),
            expires_at: now + Duration::from_secs(3600),
        });
        assert_eq!(state.lifetime(now), Duration::from_secs(3600));
        assert_eq!(
            state.fresh(now + Duration::from_secs(2999)).as_ref().map(HeaderValue::as_bytes),
            Some(&b"Bearer t"[..])
        );
        assert_eq!(state.fresh(now + Duration::from_secs(3000)), None);
    }
}
