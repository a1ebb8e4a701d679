//! Browser sessions: what a signed-in person carries, sealed into a cookie with AES-256-GCM.
//!
//! A cookie holds only what the next request needs: who (subject, email, groups), since when, when last
//! seen, until when its claims hold, and the refresh token when the IdP gave one. It is opened with every
//! configured key (rotation: the first key seals, the others still open) and bound to its purpose by the
//! AEAD's associated data, so a login-state cookie cannot stand in for a session.

use std::time::Duration;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::config::{CookieKey, format_duration};

/// The largest cookie value hfgate writes or reads; browsers keep at most ~4 KiB per cookie.
pub const MAX_COOKIE_BYTES: usize = 3800;
const VERSION: u8 = 1;

/// What a sealed value is for; part of the AEAD's associated data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Session,
    Login,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Purpose::Session => b"hfgate session v1",
            Purpose::Login => b"hfgate login v1",
        }
    }
}

/// Why a session cookie was not accepted. The text is shown to the person (it names no secret).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session cookie is malformed")]
    Malformed,
    #[error("session cookie does not open with any configured key: altered, or sealed with a retired key")]
    Unopenable,
    #[error("session expired: it began {age} ago and session_lifetime is {max}")]
    Expired { age: String, max: String },
    #[error("session expired after {idle} without a request (session_idle_timeout {max})")]
    Idle { idle: String, max: String },
    #[error("session was signed out")]
    SignedOut,
    #[error("session claims expired and could not be refreshed: {0}")]
    RefreshFailed(String),
    /// The provider could not be asked (down, timing out, answering garbage): not the person's doing, so a
    /// session whose claims still hold carries on and tries again on a later request.
    #[error("session claims expired and the identity provider could not be reached to refresh them: {0}")]
    RefreshUnavailable(String),
    #[error("session claims expired and the identity provider gave no refresh token")]
    ClaimsExpired,
}

impl SessionError {
    pub fn code(&self) -> &'static str {
        match self {
            SessionError::Malformed => "session_malformed",
            SessionError::Unopenable => "session_unopenable",
            SessionError::Expired { .. } => "session_expired",
            SessionError::Idle { .. } => "session_idle",
            SessionError::SignedOut => "session_signed_out",
            SessionError::RefreshFailed(_) => "session_refresh_failed",
            SessionError::RefreshUnavailable(_) => "session_refresh_unavailable",
            SessionError::ClaimsExpired => "session_claims_expired",
        }
    }
}

/// Seals and opens cookie values with the configured keys.
pub struct CookieSealer {
    keys: Vec<LessSafeKey>,
}

impl std::fmt::Debug for CookieSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSealer").field("keys", &self.keys.len()).finish()
    }
}

impl CookieSealer {
    /// The first key seals; all of them open. Config validation guarantees at least one 32-byte key.
    pub fn new(keys: &[CookieKey]) -> CookieSealer {
        let keys = keys.iter().filter_map(|k| UnboundKey::new(&AES_256_GCM, &k.0).ok()).map(LessSafeKey::new).collect();
        CookieSealer { keys }
    }

    /// `base64url(version ‖ nonce ‖ ciphertext ‖ tag)`; `None` if it would not fit in a cookie.
    pub fn seal(&self, purpose: Purpose, plaintext: &[u8]) -> Option<String> {
        let key = self.keys.first()?;
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut sealed = Vec::with_capacity(1 + NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        sealed.push(VERSION);
        sealed.extend_from_slice(&nonce);
        let mut body = plaintext.to_vec();
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.aad()), &mut body).ok()?;
        sealed.extend_from_slice(&body);
        let value = URL_SAFE_NO_PAD.encode(sealed);
        (value.len() <= MAX_COOKIE_BYTES).then_some(value)
    }

    /// The plaintext of a value this sealer (or one sharing a key) sealed for `purpose`.
    pub fn open(&self, purpose: Purpose, value: &str) -> Result<Vec<u8>, SessionError> {
        if value.len() > MAX_COOKIE_BYTES {
            return Err(SessionError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD.decode(value).map_err(|_| SessionError::Malformed)?;
        if raw.len() < 1 + NONCE_LEN + AES_256_GCM.tag_len() || raw[0] != VERSION {
            return Err(SessionError::Malformed);
        }
        let nonce: [u8; NONCE_LEN] = raw[1..1 + NONCE_LEN].try_into().map_err(|_| SessionError::Malformed)?;
        for key in &self.keys {
            let mut body = raw[1 + NONCE_LEN..].to_vec();
            if let Ok(plain) =
                key.open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(purpose.aad()), &mut body)
            {
                return Ok(plain.to_vec());
            }
        }
        Err(SessionError::Unopenable)
    }

    pub fn seal_json<T: Serialize>(&self, purpose: Purpose, value: &T) -> Option<String> {
        self.seal(purpose, &serde_json::to_vec(value).ok()?)
    }

    pub fn open_json<T: for<'de> Deserialize<'de>>(&self, purpose: Purpose, value: &str) -> Result<T, SessionError> {
        let plain = self.open(purpose, value)?;
        serde_json::from_slice(&plain).map_err(|_| SessionError::Malformed)
    }
}

/// A signed-in person, as sealed in the session cookie. Field names are short: this travels on every
/// request the browser makes.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Random; names the session in the sign-out list.
    #[serde(rename = "i")]
    pub id: String,
    #[serde(rename = "s")]
    pub subject: String,
    #[serde(rename = "e", default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    #[serde(rename = "g", default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// When the person signed in (Unix seconds): `session_lifetime` counts from here.
    #[serde(rename = "a")]
    pub started: u64,
    /// The last request seen (Unix seconds), for `session_idle_timeout`; updated coarsely.
    #[serde(rename = "l")]
    pub seen: u64,
    /// Until when the claims hold (the ID token's `exp`); past it they are refreshed or the session ends.
    #[serde(rename = "x")]
    pub claims_expire: u64,
    #[serde(rename = "r", default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("subject", &self.subject)
            .field("groups", &self.groups)
            .field("started", &self.started)
            .field("seen", &self.seen)
            .field("claims_expire", &self.claims_expire)
            .field("refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

/// Lifetime limits of a session.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    pub lifetime: Duration,
    pub idle_timeout: Duration,
}

impl SessionLimits {
    /// How often `seen` is rewritten: coarse, so most requests carry the cookie unchanged.
    pub fn touch_interval(&self) -> u64 {
        (self.idle_timeout.as_secs() / 12).clamp(5, 300)
    }
}

impl Session {
    /// Lifetime and idle checks (claims expiry is the refresher's business).
    pub fn check(&self, limits: SessionLimits, now: u64) -> Result<(), SessionError> {
        let age = now.saturating_sub(self.started);
        if age > limits.lifetime.as_secs() {
            return Err(SessionError::Expired {
                age: format_duration(Duration::from_secs(age)),
                max: format_duration(limits.lifetime),
            });
        }
        let idle = now.saturating_sub(self.seen);
        if idle > limits.idle_timeout.as_secs() {
            return Err(SessionError::Idle {
                idle: format_duration(Duration::from_secs(idle)),
                max: format_duration(limits.idle_timeout),
            });
        }
        Ok(())
    }

    /// When the session ends at the latest (for the cookie's Max-Age).
    pub fn ends_at(&self, limits: SessionLimits) -> u64 {
        self.started.saturating_add(limits.lifetime.as_secs())
    }
}

/// What the browser carries between `/.hfgate/login` and `/.hfgate/callback`.
#[derive(Clone, Serialize, Deserialize)]
pub struct LoginState {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
    /// Where to go after signing in: a path on hfgate's own origin.
    pub return_to: String,
    pub created: u64,
}

impl std::fmt::Debug for LoginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginState").field("return_to", &self.return_to).finish_non_exhaustive()
    }
}

/// The names and attributes of hfgate's cookies. Over https they carry the `__Host-` prefix and
/// `Secure`; over plain http (loopback development) neither, because browsers refuse `__Host-` cookies
/// without `Secure`.
#[derive(Debug, Clone)]
pub struct CookieNames {
    pub session: &'static str,
    pub login: &'static str,
    secure: bool,
}

impl CookieNames {
    pub fn for_public_url(public_url: &str) -> CookieNames {
        if public_url.starts_with("https://") {
            CookieNames { session: "__Host-hfgate", login: "__Host-hfgate-login", secure: true }
        } else {
            CookieNames { session: "hfgate", login: "hfgate-login", secure: false }
        }
    }

    /// Every cookie name hfgate owns (stripped from upstream requests).
    pub fn all(&self) -> [&'static str; 2] {
        [self.session, self.login]
    }

    /// A `Set-Cookie` value for `name`, living `max_age` seconds.
    pub fn set(&self, name: &str, value: &str, max_age: u64) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax{secure}; Max-Age={max_age}")
    }

    /// A `Set-Cookie` value that removes `name`.
    pub fn clear(&self, name: &str) -> String {
        self.set(name, "", 0)
    }
}

/// Every value of the cookie `name` in the request's `Cookie` headers (a browser may send two cookies of
/// one name, from different paths or domains; each is tried).
pub fn cookie_values<'h>(headers: &'h HeaderMap, name: &'h str) -> impl Iterator<Item = &'h str> + 'h {
    headers.get_all(http::header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).filter_map(
        move |pair| {
            let (n, value) = pair.trim().split_once('=')?;
            (n == name).then_some(value.trim_matches('"'))
        },
    )
}

/// A `Cookie` header value without hfgate's own cookies, or `None` when nothing else is left.
pub fn strip_cookies(value: &str, names: &[&str]) -> Option<String> {
    let kept: Vec<&str> = value
        .split(';')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
        .filter(|pair| !names.iter().any(|n| pair.split_once('=').map_or(*pair, |(k, _)| k) == *n))
        .collect();
    (!kept.is_empty()).then(|| kept.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(byte: u8) -> CookieSealer {
        CookieSealer::new(&[CookieKey([byte; 32])])
    }

    #[test]
    fn sealed_values_open_only_with_a_key_and_purpose_that_sealed_them() {
        let a = sealer(1);
        let value = a.seal(Purpose::Session, b"hello").expect("sealed");
        assert_eq!(a.open(Purpose::Session, &value).as_deref(), Ok(&b"hello"[..]));
        assert_eq!(a.open(Purpose::Login, &value), Err(SessionError::Unopenable));
        assert_eq!(sealer(2).open(Purpose::Session, &value), Err(SessionError::Unopenable));
        // Rotation: the new key first seals, the old one still opens.
        let rotated = CookieSealer::new(&[CookieKey([2; 32]), CookieKey([1; 32])]);
        assert_eq!(rotated.open(Purpose::Session, &value).as_deref(), Ok(&b"hello"[..]));
        assert_eq!(
            a.open(Purpose::Session, &rotated.seal(Purpose::Session, b"x").expect("sealed")),
            Err(SessionError::Unopenable)
        );
    }

    #[test]
    fn any_changed_byte_is_refused() {
        let a = sealer(1);
        let value = a.seal(Purpose::Session, b"{\"s\":\"alice\"}").expect("sealed");
        let raw = URL_SAFE_NO_PAD.decode(&value).expect("b64");
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let err = a.open(Purpose::Session, &URL_SAFE_NO_PAD.encode(&bad)).expect_err("tampered");
            assert!(matches!(err, SessionError::Unopenable | SessionError::Malformed), "byte {i}: {err:?}");
        }
        for junk in ["", "!!", "AAAA", &"A".repeat(5000)] {
            assert_eq!(a.open(Purpose::Session, junk), Err(SessionError::Malformed));
        }
    }

    #[test]
    fn oversized_payloads_are_not_sealed() {
        assert!(sealer(1).seal(Purpose::Session, &vec![b'x'; 4000]).is_none());
    }

    #[test]
    fn lifetime_and_idle_limits() {
        let limits = SessionLimits { lifetime: Duration::from_secs(3600), idle_timeout: Duration::from_secs(600) };
        let session = Session {
            id: "i".into(),
            subject: "alice".into(),
            email: None,
            groups: vec![],
            started: 1000,
            seen: 2000,
            claims_expire: 5000,
            refresh_token: None,
        };
        assert_eq!(session.check(limits, 2500), Ok(()));
        assert!(matches!(session.check(limits, 2601), Err(SessionError::Idle { .. })));
        assert!(matches!(session.check(limits, 4601), Err(SessionError::Expired { .. })));
        assert_eq!(session.ends_at(limits), 4600);
    }

    #[test]
    fn cookies_are_found_and_stripped_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(http::header::COOKIE, "a=1; hfgate=s1; hfgate-login=l".parse().expect("value"));
        headers.append(http::header::COOKIE, "hfgatex=2; hfgate=\"s2\"".parse().expect("value"));
        assert_eq!(cookie_values(&headers, "hfgate").collect::<Vec<_>>(), ["s1", "s2"]);
        assert_eq!(
            strip_cookies("a=1; hfgate=s1; hfgate-login=l; hfgatex=2", &["hfgate", "hfgate-login"]).as_deref(),
            Some("a=1; hfgatex=2")
        );
        assert_eq!(strip_cookies("hfgate=s1", &["hfgate"]), None);
    }

    #[test]
    fn cookie_attributes_follow_the_scheme() {
        let https = CookieNames::for_public_url("https://gate.example");
        assert_eq!(
            https.set(https.session, "v", 60),
            "__Host-hfgate=v; Path=/; HttpOnly; SameSite=Lax; Secure; Max-Age=60"
        );
        let http = CookieNames::for_public_url("http://127.0.0.1:8080");
        assert_eq!(http.clear(http.session), "hfgate=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0");
    }
}
