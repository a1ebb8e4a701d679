//! Sign-in for people: the browser's authorization code flow with PKCE (`/.hfgate/login`, `/callback`,
//! `/logout`), sessions in sealed cookies (refreshed before their claims expire), `/.hfgate/whoami`, and
//! `/.hfgate/cli-config`, which tells `hfgate login` where to sign in.
//!
//! The ID token is verified by the same code as bearer tokens, with the sign-in client as the audience.
//! A session becomes the same [`Identity`] a bearer token does; the rest of the pipeline cannot tell them apart.

pub mod endpoints;
pub mod pages;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use moka::sync::Cache;
use serde_json::Value;

use crate::authn::session::{
    CookieNames, CookieSealer, LoginState, Purpose, Session, SessionError, SessionLimits, cookie_values,
};
use crate::authn::{AuthError, Authenticator, Identity, IdentityKind, claims};
use crate::client::HttpClient;
use crate::config::{IssuerSettings, LoginSettings, Settings};
use crate::jose::unix_now;
use crate::oauth::{self, ClientAuth, OAuthError, Pkce, ProviderMetadata, TokenResponse};

/// How long a sign-in may take between `/.hfgate/login` and `/.hfgate/callback`.
const LOGIN_STATE_LIFETIME: u64 = 600;
/// Claims are refreshed this long before they expire.
const REFRESH_MARGIN: u64 = 60;
/// A failed discovery is retried after this long, not on every request.
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

/// Why a sign-in step failed; rendered as a small page (browsers) with the status it carries.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("sign-in is not configured on this server (no [login] section)")]
    NotConfigured,
    #[error("the return URL must be a path on {0}")]
    ForeignReturn(String),
    #[error("no sign-in in progress: the login cookie is missing, expired or unreadable; start again")]
    NoLoginState,
    #[error("state mismatch: this answer belongs to another sign-in; start again")]
    StateMismatch,
    #[error("this sign-in was already completed; start again")]
    Replayed,
    #[error("the callback has no authorization code")]
    MissingCode,
    #[error("the identity provider answered for another issuer ({0})")]
    IssuerMismatch(String),
    #[error("the identity provider refused the sign-in: {0}")]
    ProviderRefused(String),
    #[error("the identity provider is unreachable: {0}")]
    ProviderUnavailable(String),
    #[error("the ID token was refused: {0}")]
    BadIdToken(String),
    #[error("the ID token's nonce does not match this sign-in")]
    NonceMismatch,
    #[error("the session does not fit in a cookie ({0} groups); ask the identity provider to send fewer")]
    SessionTooLarge(usize),
}

impl LoginError {
    pub fn status(&self) -> StatusCode {
        match self {
            LoginError::NotConfigured => StatusCode::NOT_FOUND,
            LoginError::ProviderUnavailable(_) => StatusCode::BAD_GATEWAY,
            LoginError::ProviderRefused(_) | LoginError::BadIdToken(_) | LoginError::NonceMismatch => {
                StatusCode::UNAUTHORIZED
            }
            LoginError::SessionTooLarge(_) => StatusCode::INTERNAL_SERVER_ERROR,
            _ => StatusCode::BAD_REQUEST,
        }
    }
}

/// The outcome of looking for a session on a request.
#[derive(Debug)]
pub enum SessionAuth {
    /// No session cookie at all.
    Absent,
    /// A live session; `set_cookie` carries a resealed cookie when it was touched or refreshed, and
    /// `ends_at` is when it ends at the latest (Unix seconds).
    Valid { identity: Arc<Identity>, digest: [u8; 32], set_cookie: Option<String>, ends_at: u64 },
    /// A cookie that no longer (or never did) hold a session; `clear` removes it.
    Invalid { error: SessionError, clear: String },
    /// A session whose claims expired while the provider could not be asked to refresh them: not the
    /// person's doing, so the cookie stays and a later request tries again.
    Unavailable { error: SessionError },
}

/// The outcome of the last discovery and when it was made (a failure is retried after a pause).
type Discovered = (Result<Arc<ProviderMetadata>, String>, std::time::Instant);

/// Everything sign-in needs, built once from `[login]`.
pub struct SignIn {
    pub settings: LoginSettings,
    pub cookies: CookieNames,
    public_url: String,
    origin: String,
    redirect_uri: String,
    /// The sign-in issuer's settings with the web client as the audience: how ID tokens are checked.
    id_token_settings: IssuerSettings,
    /// The sign-in issuer's own settings: how sessions become identities.
    issuer_settings: IssuerSettings,
    sealer: CookieSealer,
    limits: SessionLimits,
    client: HttpClient,
    provider: tokio::sync::Mutex<Option<Discovered>>,
    /// Sessions signed out here, until they would have expired anyway.
    signed_out: Cache<String, ()>,
    /// `state`s already used at the callback: a replayed callback is refused before the IdP sees it.
    used_states: Cache<String, ()>,
    identities: Cache<[u8; 32], Arc<Identity>>,
    metrics: Arc<crate::metrics::Metrics>,
    /// One refresh per refresh token, shared by the requests that arrive while it runs.
    refreshes: Cache<[u8; 32], Arc<tokio::sync::OnceCell<Result<Session, SessionError>>>>,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn").field("client_id", &self.settings.client_id).finish_non_exhaustive()
    }
}

impl SignIn {
    pub fn new(settings: &Settings, client: HttpClient) -> Option<SignIn> {
        let login = settings.login.clone()?;
        let issuer_settings = settings.issuers.get(login.issuer)?.clone();
        let mut id_token_settings = issuer_settings.clone();
        id_token_settings.audiences = vec![login.client_id.clone()];
        id_token_settings.audience_claims = vec!["aud".into()];
        id_token_settings.require_typ = None;
        let public_url = settings.server.public_url.clone();
        let origin = origin_of(&public_url).unwrap_or_else(|| public_url.clone());
        let limits = SessionLimits { lifetime: login.session_lifetime, idle_timeout: login.session_idle_timeout };
        Some(SignIn {
            cookies: CookieNames::for_public_url(&public_url),
            redirect_uri: format!("{public_url}/.hfgate/callback"),
            sealer: CookieSealer::new(&login.cookie_keys),
            signed_out: Cache::builder().max_capacity(1_000_000).time_to_live(login.session_lifetime).build(),
            used_states: Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(LOGIN_STATE_LIFETIME))
                .build(),
            identities: Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(300)).build(),
            refreshes: Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(30)).build(),
            provider: tokio::sync::Mutex::new(None),
            metrics: Arc::new(crate::metrics::Metrics::new()),
            settings: login,
            public_url,
            origin,
            id_token_settings,
            issuer_settings,
            limits,
            client,
        })
    }

    /// Counts sign-ins, refreshes and sign-outs in these metrics (a server's own, not a private set).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> SignIn {
        self.metrics = metrics;
        self
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    /// The provider's endpoints, discovered once; a failure is remembered briefly, then retried.
    pub async fn provider(&self) -> Result<Arc<ProviderMetadata>, String> {
        let mut cached = self.provider.lock().await;
        if let Some((result, at)) = cached.as_ref()
            && (result.is_ok() || at.elapsed() < DISCOVERY_RETRY)
        {
            return result.clone();
        }
        let result =
            ProviderMetadata::discover(&self.client, &self.issuer_settings.issuer, self.issuer_settings.insecure)
                .await
                .map(Arc::new)
                .map_err(|e| e.to_string());
        if let Err(err) = &result {
            tracing::warn!(issuer = %self.issuer_settings.name, %err, "sign-in: provider discovery failed");
        }
        *cached = Some((result.clone(), std::time::Instant::now()));
        result
    }

    fn client_auth(&self) -> ClientAuth<'_> {
        match &self.settings.client_secret {
            Some(secret) => ClientAuth::Basic { client_id: &self.settings.client_id, client_secret: secret },
            None => ClientAuth::Public { client_id: &self.settings.client_id },
        }
    }

    /// Where a browser goes to sign in and come back to `return_to` (already checked to be local).
    pub fn login_location(&self, return_to: &str) -> String {
        oauth::with_query(&format!("{}/.hfgate/login", self.public_url), &[("rd", return_to)])
    }

    /// The path to return to after signing in: a local path, or an absolute URL on hfgate's own origin.
    /// Anything else is refused (no open redirect).
    pub fn return_path(&self, rd: Option<&str>) -> Result<String, LoginError> {
        let Some(rd) = rd.filter(|r| !r.is_empty()) else {
            return Ok("/".into());
        };
        let foreign = || LoginError::ForeignReturn(self.origin.clone());
        let local = if rd.starts_with('/') {
            rd.to_string()
        } else {
            let uri: http::Uri = rd.parse().map_err(|_| foreign())?;
            if origin_of_uri(&uri).as_deref() != Some(self.origin.as_str()) {
                return Err(foreign());
            }
            // `https://gate.example?x` has an empty path: the local form is `/?x`, never `?x`.
            let path = match uri.path() {
                "" => "/",
                path => path,
            };
            match uri.query() {
                Some(query) => format!("{path}?{query}"),
                None => path.to_string(),
            }
        };
        // `//host` and `/\host` are read by browsers as another origin.
        let bytes = local.as_bytes();
        if bytes.first() != Some(&b'/')
            || bytes.get(1).is_some_and(|b| *b == b'/' || *b == b'\\')
            || local.contains('\\')
            || local.bytes().any(|b| b.is_ascii_control())
            || local.parse::<http::uri::PathAndQuery>().is_err()
        {
            return Err(foreign());
        }
        Ok(local)
    }

    /// `/.hfgate/login`: a fresh state, nonce and PKCE pair in a sealed cookie, then off to the IdP.
    pub async fn begin(&self, rd: Option<&str>) -> Result<Response<Body>, LoginError> {
        let return_to = self.return_path(rd)?;
        let provider = self.provider().await.map_err(LoginError::ProviderUnavailable)?;
        let authorize = provider
            .require("authorization_endpoint", &provider.authorization_endpoint)
            .map_err(|e| LoginError::ProviderUnavailable(e.to_string()))?;
        let pkce = Pkce::new();
        let state = LoginState {
            state: oauth::random_urlsafe(16),
            nonce: oauth::random_urlsafe(16),
            verifier: pkce.verifier.clone(),
            return_to,
            created: unix_now(),
        };
        let sealed = self.sealer.seal_json(Purpose::Login, &state).ok_or(LoginError::SessionTooLarge(0))?;
        let scope = self.settings.scopes.join(" ");
        let location = oauth::with_query(
            authorize,
            &[
                ("response_type", "code"),
                ("client_id", &self.settings.client_id),
                ("redirect_uri", &self.redirect_uri),
                ("scope", &scope),
                ("state", &state.state),
                ("nonce", &state.nonce),
                ("code_challenge", &pkce.challenge),
                ("code_challenge_method", "S256"),
            ],
        );
        let cookie = self.cookies.set(self.cookies.login, &sealed, LOGIN_STATE_LIFETIME);
        Ok(redirect(&location, &[cookie]))
    }

    /// `/.hfgate/callback`: checks the answer belongs to this browser's sign-in, redeems the code, verifies
    /// the ID token and starts the session.
    pub async fn complete(
        &self,
        authn: &Authenticator,
        headers: &HeaderMap,
        query: &CallbackQuery,
    ) -> Result<Response<Body>, LoginError> {
        let done = self.complete_sign_in(authn, headers, query).await;
        self.metrics.session(if done.is_ok() { "signed_in" } else { "sign_in_failed" });
        done
    }

    async fn complete_sign_in(
        &self,
        authn: &Authenticator,
        headers: &HeaderMap,
        query: &CallbackQuery,
    ) -> Result<Response<Body>, LoginError> {
        let state = cookie_values(headers, self.cookies.login)
            .find_map(|value| self.sealer.open_json::<LoginState>(Purpose::Login, value).ok())
            .filter(|s| unix_now().saturating_sub(s.created) <= LOGIN_STATE_LIFETIME)
            .ok_or(LoginError::NoLoginState)?;
        let given = query.state.as_deref().unwrap_or_default();
        if !constant_time_eq(given.as_bytes(), state.state.as_bytes()) {
            return Err(LoginError::StateMismatch);
        }
        // RFC 9207: when the provider names itself, it must be the sign-in issuer (mix-up defence).
        if let Some(iss) = &query.iss
            && *iss != self.issuer_settings.issuer
        {
            return Err(LoginError::IssuerMismatch(crate::authn::printable(iss)));
        }
        if self.used_states.contains_key(&state.state) {
            return Err(LoginError::Replayed);
        }
        self.used_states.insert(state.state.clone(), ());
        if let Some(error) = &query.error {
            let text = match &query.error_description {
                Some(d) => format!("{}: {}", crate::authn::printable(error), printable_text(d)),
                None => crate::authn::printable(error),
            };
            return Err(LoginError::ProviderRefused(text));
        }
        let code = query.code.as_deref().filter(|c| !c.is_empty()).ok_or(LoginError::MissingCode)?;
        let provider = self.provider().await.map_err(LoginError::ProviderUnavailable)?;
        let token_endpoint = provider.token_endpoint().map_err(|e| LoginError::ProviderUnavailable(e.to_string()))?;
        let tokens: TokenResponse = oauth::post_form(
            &self.client,
            token_endpoint,
            self.client_auth(),
            &[
                ("grant_type", "authorization_code"),
                ("code", code),
                ("redirect_uri", &self.redirect_uri),
                ("code_verifier", &state.verifier),
            ],
        )
        .await
        .map_err(provider_error)?;
        let id_token =
            tokens.id_token.as_deref().ok_or_else(|| LoginError::BadIdToken("the answer has no id_token".into()))?;
        let (claims, expires) = authn
            .verify_id_token(id_token, self.settings.issuer, &self.id_token_settings)
            .await
            .map_err(|e| LoginError::BadIdToken(e.to_string()))?;
        if claims.get("nonce").and_then(Value::as_str) != Some(state.nonce.as_str()) {
            return Err(LoginError::NonceMismatch);
        }
        let now = unix_now();
        let who = claims::identity_from_claims(&self.issuer_settings, &claims, expires);
        let session = Session {
            id: oauth::random_urlsafe(16),
            subject: who.subject,
            email: who.email,
            groups: who.groups,
            started: now,
            seen: now,
            claims_expire: expires,
            refresh_token: tokens.refresh_token,
        };
        let sealed = self
            .sealer
            .seal_json(Purpose::Session, &session)
            .ok_or(LoginError::SessionTooLarge(session.groups.len()))?;
        tracing::info!(subject = %session.subject, "signed in");
        let cookies = [
            self.cookies.set(self.cookies.session, &sealed, self.limits.lifetime.as_secs()),
            self.cookies.clear(self.cookies.login),
        ];
        Ok(redirect(&format!("{}{}", self.public_url, state.return_to), &cookies))
    }

    /// `/.hfgate/logout`: forgets the session here and, where the IdP offers it, there too.
    pub async fn logout(&self, headers: &HeaderMap) -> Response<Body> {
        for value in cookie_values(headers, self.cookies.session) {
            if let Ok(session) = self.sealer.open_json::<Session>(Purpose::Session, value) {
                self.signed_out.insert(session.id, ());
                self.metrics.session("signed_out");
            }
        }
        let signed_out = format!("{}/.hfgate/signed-out", self.public_url);
        let location = match self.provider().await {
            Ok(provider) => match &provider.end_session_endpoint {
                Some(end) => oauth::with_query(
                    end,
                    &[("client_id", &self.settings.client_id), ("post_logout_redirect_uri", &signed_out)],
                ),
                None => signed_out,
            },
            Err(_) => signed_out,
        };
        redirect(&location, &[self.cookies.clear(self.cookies.session), self.cookies.clear(self.cookies.login)])
    }

    /// The session on a request, if any: opened, checked against the sign-out list, the lifetime and
    /// idle limits, refreshed when its claims are about to expire, and touched now and then.
    pub async fn authenticate(&self, authn: &Authenticator, headers: &HeaderMap) -> SessionAuth {
        let mut first_error = None;
        let mut opened = None;
        for value in cookie_values(headers, self.cookies.session) {
            match self.sealer.open_json::<Session>(Purpose::Session, value) {
                Ok(session) => {
                    opened = Some(session);
                    break;
                }
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        let invalid =
            |error: SessionError| SessionAuth::Invalid { error, clear: self.cookies.clear(self.cookies.session) };
        let Some(mut session) = opened else {
            return match first_error {
                Some(error) => invalid(error),
                None => SessionAuth::Absent,
            };
        };
        let now = unix_now();
        if self.signed_out.contains_key(&session.id) {
            return invalid(SessionError::SignedOut);
        }
        if let Err(error) = session.check(self.limits, now) {
            return invalid(error);
        }
        let mut changed = false;
        if now.saturating_add(REFRESH_MARGIN) >= session.claims_expire {
            match session.refresh_token.clone() {
                Some(token) => match self.refresh_once(authn, &session, &token).await {
                    Ok(fresh) => {
                        session = fresh;
                        changed = true;
                    }
                    Err(SessionError::RefreshUnavailable(why)) if now <= session.claims_expire => {
                        tracing::warn!(subject = %session.subject, %why, "session refresh postponed: provider unavailable");
                    }
                    Err(error @ SessionError::RefreshUnavailable(_)) => {
                        tracing::warn!(subject = %session.subject, %error, "session refresh failed: provider unavailable");
                        return SessionAuth::Unavailable { error };
                    }
                    Err(error) => {
                        tracing::info!(subject = %session.subject, %error, "session ended: refresh failed");
                        return invalid(error);
                    }
                },
                None if now > session.claims_expire => return invalid(SessionError::ClaimsExpired),
                None => {}
            }
        }
        if now.saturating_sub(session.seen) >= self.limits.touch_interval() {
            session.seen = now;
            changed = true;
        }
        let set_cookie = if changed {
            match self.sealer.seal_json(Purpose::Session, &session) {
                Some(sealed) => {
                    let max_age = session.ends_at(self.limits).saturating_sub(now);
                    Some(self.cookies.set(self.cookies.session, &sealed, max_age))
                }
                None => return invalid(SessionError::Malformed),
            }
        } else {
            None
        };
        let digest = session_digest(&session);
        let identity = self.identities.get_with(digest, || Arc::new(self.identity_of(&session)));
        SessionAuth::Valid { identity, digest, set_cookie, ends_at: session.ends_at(self.limits) }
    }

    fn identity_of(&self, session: &Session) -> Identity {
        let parts = claims::IdentityParts {
            subject: session.subject.clone(),
            email: session.email.clone(),
            groups: session.groups.clone(),
            kind: IdentityKind::User,
            client_id: Some(self.settings.client_id.clone()),
            tags: Vec::new(),
        };
        claims::identity_from_parts(&self.issuer_settings, parts, session.claims_expire)
    }

    /// Refreshes a session's claims once per refresh token: requests that arrive meanwhile share the answer
    /// (a rotated refresh token may be used only once).
    async fn refresh_once(
        &self,
        authn: &Authenticator,
        session: &Session,
        token: &str,
    ) -> Result<Session, SessionError> {
        let key = crate::authn::token_digest(token);
        let cell = self.refreshes.get_with(key, || Arc::new(tokio::sync::OnceCell::new()));
        cell.get_or_init(|| async {
            let refreshed = self.refresh(authn, session, token).await;
            self.metrics.session(match &refreshed {
                Ok(_) => "refreshed",
                Err(SessionError::RefreshUnavailable(_)) => "refresh_unavailable",
                Err(_) => "refresh_failed",
            });
            refreshed
        })
        .await
        .clone()
    }

    async fn refresh(&self, authn: &Authenticator, session: &Session, token: &str) -> Result<Session, SessionError> {
        let failed = |why: String| SessionError::RefreshFailed(why);
        let unavailable = |why: String| SessionError::RefreshUnavailable(why);
        let provider = self.provider().await.map_err(unavailable)?;
        let endpoint = provider.token_endpoint().map_err(|e| unavailable(e.to_string()))?;
        let tokens: TokenResponse = oauth::post_form(
            &self.client,
            endpoint,
            self.client_auth(),
            &[("grant_type", "refresh_token"), ("refresh_token", token)],
        )
        .await
        .map_err(|e| match e {
            OAuthError::Refused { .. } => failed(e.to_string()),
            other => unavailable(other.to_string()),
        })?;
        let id_token = tokens.id_token.as_deref().ok_or_else(|| failed("the answer has no id_token".into()))?;
        let (claims, expires) = authn
            .verify_id_token(id_token, self.settings.issuer, &self.id_token_settings)
            .await
            .map_err(|e: AuthError| match e {
                AuthError::KeysUnavailable(_) => unavailable(e.to_string()),
                e => failed(format!("the new ID token was refused: {e}")),
            })?;
        let who = claims::identity_from_claims(&self.issuer_settings, &claims, expires);
        // OpenID Connect Core §12.2: the refreshed ID token names the same subject.
        if who.subject != session.subject {
            return Err(failed("the new ID token names another subject".into()));
        }
        Ok(Session {
            id: session.id.clone(),
            subject: who.subject,
            email: who.email,
            groups: who.groups,
            started: session.started,
            seen: unix_now(),
            claims_expire: expires,
            // Rotation: a new refresh token replaces the old; an IdP that does not rotate keeps the old valid.
            refresh_token: tokens.refresh_token.or_else(|| session.refresh_token.clone()),
        })
    }

    /// A session cookie rides along on any request the browser makes to hfgate, whoever's page made it;
    /// SameSite=Lax stops other sites' POSTs, not those of sibling subdomains. So a request that is not
    /// a safe method and is authenticated by the session must come from hfgate's own origin.
    pub fn check_same_origin(&self, method: &http::Method, headers: &HeaderMap) -> Result<(), String> {
        if matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS) {
            return Ok(());
        }
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        match (header("origin"), header("sec-fetch-site")) {
            (Some(origin), _) if origin.eq_ignore_ascii_case(&self.origin) => Ok(()),
            (Some(origin), _) => Err(format!(
                "a {method} authenticated by a session cookie must come from {}, not {}",
                self.origin,
                crate::authn::printable(origin)
            )),
            (None, Some("same-origin")) => Ok(()),
            _ => Err(format!(
                "a {method} authenticated by a session cookie must come from {} (no Origin header); API clients send a bearer token",
                self.origin
            )),
        }
    }

    /// What `hfgate login` needs to sign in: public values only.
    pub fn cli_config(&self) -> Value {
        let parameters: serde_json::Map<String, Value> =
            self.settings.cli_parameters.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
        serde_json::json!({
            "server": self.public_url,
            "issuer": self.issuer_settings.issuer,
            "client_id": self.settings.cli_client_id,
            "scopes": self.settings.cli_scopes,
            "parameters": parameters,
            "token": self.settings.cli_token.name(),
        })
    }

    /// Seals a session as a cookie value (tests and tools that need a session without a browser).
    pub fn seal_session(&self, session: &Session) -> Option<String> {
        self.sealer.seal_json(Purpose::Session, session)
    }
}

/// The query of `/.hfgate/callback`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct CallbackQuery {
    pub code: Option<String>,
    pub state: Option<String>,
    pub iss: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// A token endpoint failure: the provider's refusal is the sign-in's problem (401), anything else the
/// provider's (502).
fn provider_error(err: OAuthError) -> LoginError {
    match err {
        OAuthError::Refused { .. } => LoginError::ProviderRefused(err.to_string()),
        other => LoginError::ProviderUnavailable(other.to_string()),
    }
}

/// The identity cache key of a session: its id and every claim it holds, so a refresh that changes the
/// groups (even with the same `exp`) gets a fresh identity, decision and assertion.
fn session_digest(session: &Session) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    context.update(b"hfgate session\0");
    for part in [Some(&session.id), Some(&session.subject), session.email.as_ref()]
        .into_iter()
        .chain(session.groups.iter().map(Some))
    {
        // Length-prefixed, so no two different sessions hash the same parts.
        let bytes = part.map_or(&b""[..], |p| p.as_bytes());
        context.update(&(bytes.len() as u64).to_be_bytes());
        context.update(bytes);
    }
    context.update(&session.claims_expire.to_be_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(context.finish().as_ref());
    out
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Provider-sent text shown to a person: printable ASCII, bounded.
fn printable_text(text: &str) -> String {
    text.chars().take(200).map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect()
}

/// A 302 with cookies; never cached.
pub fn redirect(location: &str, cookies: &[String]) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::FOUND;
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(location) {
        headers.insert(header::LOCATION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

/// Whether a request comes from a browser that can follow a sign-in redirect: a `GET`/`HEAD` asking
/// for HTML. API clients (JSON, SSE, `*/*`) get a 401 they can act on.
pub fn wants_html(method: &http::Method, headers: &HeaderMap) -> bool {
    (method == http::Method::GET || method == http::Method::HEAD)
        && headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().split(';').next().is_some_and(|m| m.trim() == "text/html")))
}

fn origin_of(url: &str) -> Option<String> {
    origin_of_uri(&url.parse::<http::Uri>().ok()?)
}

fn origin_of_uri(uri: &http::Uri) -> Option<String> {
    crate::authn::jwks::origin_of_uri(uri)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        let text = r#"
[server]
public_url = "https://gate.example"
[[issuer]]
name = "corp"
issuer = "https://idp.example"
audiences = ["hfgate"]
[login]
issuer = "corp"
client_id = "web"
cookie_keys = ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
"#;
        crate::config::parse(std::path::Path::new("t.toml"), text).expect("valid")
    }

    fn sign_in() -> SignIn {
        SignIn::new(&settings(), crate::client::build(Duration::from_secs(1))).expect("configured")
    }

    #[tokio::test]
    async fn return_urls_stay_on_the_public_origin() {
        let s = sign_in();
        assert_eq!(s.return_path(None).expect("default"), "/");
        assert_eq!(s.return_path(Some("/llama/chat?x=1")).expect("path"), "/llama/chat?x=1");
        assert_eq!(s.return_path(Some("https://gate.example/a?b")).expect("own origin"), "/a?b");
        assert_eq!(s.return_path(Some("https://gate.example:443/a")).expect("default port"), "/a");
        assert_eq!(s.return_path(Some("https://gate.example?ok")).expect("empty path"), "/?ok");
        for forged in [
            "https://evil.example/",
            "//evil.example/",
            "/\\evil.example",
            "http://gate.example/a",
            "https://gate.example.evil/a",
            "https://gate.example@evil.example/",
            "javascript:alert(1)",
            "/a\r\nSet-Cookie: x",
            "evil.example",
        ] {
            assert!(matches!(s.return_path(Some(forged)), Err(LoginError::ForeignReturn(_))), "{forged}");
        }
    }

    #[test]
    fn browsers_are_told_apart_from_api_clients() {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/html,application/xhtml+xml;q=0.9,*/*;q=0.8"));
        assert!(wants_html(&http::Method::GET, &headers));
        assert!(!wants_html(&http::Method::POST, &headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        assert!(!wants_html(&http::Method::GET, &headers));
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/event-stream"));
        assert!(!wants_html(&http::Method::GET, &headers));
    }

    #[test]
    fn constant_time_comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
