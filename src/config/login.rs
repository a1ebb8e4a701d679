//! `[login]`: sign-in for people. The browser's authorization code flow and the command line's device
//! flow both use one of the configured issuers; sessions live in AEAD-sealed cookies whose keys come
//! from here.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use toml::Spanned;

use super::settings::{duration_or, texts};
use super::{Source, Text};
use crate::config::IssuerSettings;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLogin {
    pub issuer: Text,
    pub client_id: Text,
    pub client_secret: Option<Text>,
    pub scopes: Option<Vec<Text>>,
    pub cookie_keys: Vec<Text>,
    pub session_lifetime: Option<Text>,
    pub session_idle_timeout: Option<Text>,
    pub cli_client_id: Option<Text>,
    pub cli_scopes: Option<Vec<Text>>,
    pub cli_parameters: Option<BTreeMap<String, Text>>,
    pub cli_token: Option<Text>,
}

/// A 256-bit key that seals session cookies. Its value never appears in a message or a debug print.
#[derive(Clone, PartialEq, Eq)]
pub struct CookieKey(pub [u8; 32]);

impl fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

/// Which token `hfgate token` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CliToken {
    AccessToken,
    IdToken,
}

impl CliToken {
    pub fn name(self) -> &'static str {
        match self {
            CliToken::AccessToken => "access_token",
            CliToken::IdToken => "id_token",
        }
    }
}

/// Validated `[login]`.
#[derive(Clone)]
pub struct LoginSettings {
    /// Index of the sign-in issuer in `Settings::issuers`.
    pub issuer: usize,
    pub client_id: String,
    pub client_secret: Option<String>,
    pub scopes: Vec<String>,
    /// The first seals new cookies; every one opens (rotation: add the new key first, drop the old later).
    pub cookie_keys: Vec<CookieKey>,
    pub session_lifetime: Duration,
    pub session_idle_timeout: Duration,
    pub cli_client_id: String,
    pub cli_scopes: Vec<String>,
    pub cli_parameters: Vec<(String, String)>,
    pub cli_token: CliToken,
}

impl fmt::Debug for LoginSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoginSettings")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| ".."))
            .field("scopes", &self.scopes)
            .field("cookie_keys", &self.cookie_keys.len())
            .field("session_lifetime", &self.session_lifetime)
            .field("session_idle_timeout", &self.session_idle_timeout)
            .field("cli_client_id", &self.cli_client_id)
            .finish_non_exhaustive()
    }
}

const DEFAULT_SCOPES: [&str; 3] = ["openid", "email", "profile"];

/// Parameters of the device flow that hfgate sets itself; `cli_parameters` may not name them.
pub const RESERVED_CLI_PARAMETERS: [&str; 5] = ["client_id", "client_secret", "scope", "grant_type", "device_code"];

pub(super) fn validate_login(
    src: &mut Source<'_>,
    raw: &Spanned<RawLogin>,
    issuers: &[IssuerSettings],
) -> Option<LoginSettings> {
    let table_at = raw.span().start;
    let raw = raw.get_ref();
    let issuer = src.text(&raw.issuer, "login.issuer").and_then(|name| {
        let found = issuers.iter().position(|i| i.name == name);
        if found.is_none() {
            let names: Vec<&str> = issuers.iter().map(|i| i.name.as_str()).collect();
            src.issue(
                raw.issuer.span().start,
                "login.issuer",
                format!("no [[issuer]] named {name:?}: expected one of [{}]", names.join(", ")),
            );
        }
        found
    });
    let client_id = nonempty(src, &raw.client_id, "login.client_id");
    let client_secret = match &raw.client_secret {
        Some(value) => nonempty(src, value, "login.client_secret").map(Some),
        None => Some(None),
    };
    let scopes = scope_list(src, raw.scopes.as_deref(), "login.scopes", table_at);
    let cli_scopes = match &raw.cli_scopes {
        Some(_) => scope_list(src, raw.cli_scopes.as_deref(), "login.cli_scopes", table_at),
        None => scopes.clone(),
    };
    let cookie_keys = cookie_keys(src, &raw.cookie_keys, table_at);
    let session_lifetime =
        duration_or(src, raw.session_lifetime.as_ref(), "login.session_lifetime", Duration::from_secs(12 * 3600));
    let session_idle_timeout =
        duration_or(src, raw.session_idle_timeout.as_ref(), "login.session_idle_timeout", Duration::from_secs(3600));
    for (value, field, key) in [
        (session_lifetime, &raw.session_lifetime, "login.session_lifetime"),
        (session_idle_timeout, &raw.session_idle_timeout, "login.session_idle_timeout"),
    ] {
        if let (Some(d), Some(f)) = (value, field)
            && d < Duration::from_secs(60)
        {
            src.issue(f.span().start, key, "must be at least 1m");
        }
    }
    let cli_client_id = match &raw.cli_client_id {
        Some(value) => nonempty(src, value, "login.cli_client_id"),
        None => client_id.clone(),
    };
    let mut cli_parameters = Vec::new();
    for (name, value) in raw.cli_parameters.iter().flatten() {
        let key = format!("login.cli_parameters.{name}");
        // The flow's own parameters are hfgate's to set.
        if RESERVED_CLI_PARAMETERS.contains(&name.as_str()) {
            src.issue(value.span().start, &key, format!("{name:?} is set by hfgate itself"));
            continue;
        }
        if let Some(text) = src.text(value, &key) {
            cli_parameters.push((name.clone(), text));
        }
    }
    let cli_token = match &raw.cli_token {
        Some(value) => match value.get_ref().as_str() {
            "access_token" => Some(CliToken::AccessToken),
            "id_token" => Some(CliToken::IdToken),
            other => {
                src.issue(
                    value.span().start,
                    "login.cli_token",
                    format!("unknown token {other:?}: use access_token or id_token"),
                );
                None
            }
        },
        None => Some(CliToken::AccessToken),
    };
    Some(LoginSettings {
        issuer: issuer?,
        client_id: client_id?,
        client_secret: client_secret?,
        scopes: scopes?,
        cookie_keys: cookie_keys?,
        session_lifetime: session_lifetime?,
        session_idle_timeout: session_idle_timeout?,
        cli_client_id: cli_client_id?,
        cli_scopes: cli_scopes?,
        cli_parameters,
        cli_token: cli_token?,
    })
}

fn nonempty(src: &mut Source<'_>, value: &Text, key: &str) -> Option<String> {
    let text = src.text(value, key)?;
    if text.trim().is_empty() {
        src.issue(value.span().start, key, "must not be empty");
        return None;
    }
    Some(text)
}

/// Scopes: OpenID Connect needs `openid`; a scope is visible ASCII without spaces (RFC 6749 §3.3).
fn scope_list(src: &mut Source<'_>, list: Option<&[Text]>, key: &str, table_at: usize) -> Option<Vec<String>> {
    let Some(list) = list else {
        return Some(DEFAULT_SCOPES.iter().map(|s| s.to_string()).collect());
    };
    let scopes = texts(src, list, key)?;
    let at = list.first().map_or(table_at, |t| t.span().start);
    if let Some(bad) = scopes.iter().find(|s| !s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')) {
        src.issue(at, key, format!("{bad:?} is not a valid scope"));
        return None;
    }
    if !scopes.iter().any(|s| s == "openid") {
        src.issue(at, key, "must include \"openid\"");
        return None;
    }
    Some(scopes)
}

/// Each key is base64 (standard or URL-safe, padding optional) of exactly 32 random bytes.
fn cookie_keys(src: &mut Source<'_>, list: &[Text], table_at: usize) -> Option<Vec<CookieKey>> {
    if list.is_empty() {
        src.issue(table_at, "login.cookie_keys", "at least one key is required (openssl rand -base64 32)");
        return None;
    }
    let mut keys = Vec::with_capacity(list.len());
    let mut ok = true;
    for (index, value) in list.iter().enumerate() {
        let key = format!("login.cookie_keys[{index}]");
        let Some(text) = src.text(value, &key) else {
            ok = false;
            continue;
        };
        match decode_key(&text) {
            Some(bytes) => keys.push(CookieKey(bytes)),
            None => {
                // The value itself is never repeated: it is a secret, even when malformed.
                src.issue(value.span().start, &key, "must be base64 of exactly 32 bytes (openssl rand -base64 32)");
                ok = false;
            }
        }
    }
    ok.then_some(keys)
}

fn decode_key(text: &str) -> Option<[u8; 32]> {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
    let trimmed = text.trim().trim_end_matches('=');
    let bytes = STANDARD_NO_PAD.decode(trimmed).or_else(|_| URL_SAFE_NO_PAD.decode(trimmed)).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_32_bytes_of_either_base64() {
        let key = [7u8; 32];
        let std = base64::engine::general_purpose::STANDARD.encode(key);
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([0xfbu8; 32]);
        assert_eq!(decode_key(&std), Some(key));
        assert_eq!(decode_key(&url), Some([0xfb; 32]));
        assert_eq!(decode_key(&base64::engine::general_purpose::STANDARD.encode([1u8; 16])), None);
        assert_eq!(decode_key("not base64!"), None);
    }
}
