//! Compact JWS parsing and the claim checks of RFC 7519 / RFC 8725 / RFC 9068.
//!
//! Parsing reads only what is needed to pick a key (header `alg`/`kid`, claim `iss`); nothing in the
//! payload is trusted before the signature has been verified by [`ParsedJwt::verify`].

use serde::Deserialize;
use serde_json::{Map, Value};

use super::AuthError;
use super::jwks::VerifyingKey;
use crate::config::IssuerSettings;
use crate::config::format_duration;
use crate::jose::{Algorithm, b64url_decode};

/// Tokens larger than this are refused before any decoding (Entra tokens with many groups reach ~8 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

#[derive(Debug, Deserialize)]
struct RawHeader {
    alg: Option<String>,
    kid: Option<String>,
    typ: Option<String>,
    crit: Option<Value>,
}

/// The JOSE header fields hfgate acts on. Key-carrying headers (`jwk`, `jku`, `x5u`, `x5c`) are
/// ignored on purpose: keys come only from the issuer's configured JWKS.
#[derive(Debug, Clone)]
pub struct JwtHeader {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub typ: Option<String>,
}

/// A structurally valid token whose signature has not been checked yet.
#[derive(Debug)]
pub struct ParsedJwt<'t> {
    pub header: JwtHeader,
    pub claims: Map<String, Value>,
    signing_input: &'t str,
    signature: Vec<u8>,
}

/// Splits and decodes a compact JWS, refusing `alg: none`, HMAC and anything unknown up front.
pub fn parse(token: &str) -> Result<ParsedJwt<'_>, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not a JWT (expected three base64url segments separated by '.')"));
    };
    let header_json = b64url_decode(header_b64).ok_or(AuthError::Malformed("header is not base64url"))?;
    let raw: RawHeader =
        serde_json::from_slice(&header_json).map_err(|_| AuthError::Malformed("header is not a JSON object"))?;
    let alg_name = raw.alg.ok_or(AuthError::Malformed("header has no alg"))?;
    let alg = match Algorithm::from_name(&alg_name) {
        Some(alg) => alg,
        None if alg_name.eq_ignore_ascii_case("none") => return Err(AuthError::AlgNone),
        None if alg_name.to_ascii_uppercase().starts_with("HS") => {
            return Err(AuthError::AlgSymmetric(super::printable(&alg_name)));
        }
        None => return Err(AuthError::AlgUnsupported(super::printable(&alg_name))),
    };
    if raw.crit.is_some() {
        // RFC 7515 §4.1.11: a recipient that does not understand a critical extension must refuse.
        return Err(AuthError::Crit);
    }
    if signature_b64.is_empty() {
        return Err(AuthError::Malformed("empty signature"));
    }
    let payload = b64url_decode(payload_b64).ok_or(AuthError::Malformed("payload is not base64url"))?;
    let claims = match serde_json::from_slice::<Value>(&payload) {
        Ok(Value::Object(map)) => map,
        _ => return Err(AuthError::Malformed("payload is not a JSON object")),
    };
    let signature = b64url_decode(signature_b64).ok_or(AuthError::Malformed("signature is not base64url"))?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    Ok(ParsedJwt { header: JwtHeader { alg, kid: raw.kid, typ: raw.typ }, claims, signing_input, signature })
}

impl ParsedJwt<'_> {
    /// The `iss` claim (untrusted until verified: used only to choose the issuer's keys).
    pub fn issuer(&self) -> Result<&str, AuthError> {
        match self.claims.get("iss") {
            Some(Value::String(iss)) => Ok(iss),
            Some(_) => Err(AuthError::BadClaimType { claim: "iss", expected: "string" }),
            None => Err(AuthError::MissingIssuer),
        }
    }

    /// Verifies the signature with `key`, whose family and `alg` must fit the header's `alg`.
    pub fn verify(&self, key: &VerifyingKey) -> Result<(), AuthError> {
        let parsed = key.for_alg(self.header.alg)?;
        parsed.verify_sig(self.signing_input.as_bytes(), &self.signature).map_err(|_| AuthError::BadSignature)
    }
}

/// The validity window of a verified token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    pub expires_at: u64,
}

/// Checks the registered claims of a signature-verified token against its issuer's settings, in the
/// order an operator debugs them: time, lifetime, audience, type, subject.
pub fn check_claims(jwt: &ParsedJwt<'_>, issuer: &IssuerSettings, now: u64) -> Result<Validity, AuthError> {
    let leeway = issuer.leeway.as_secs();
    let claims = &jwt.claims;
    let exp = numeric_date(claims, "exp")?.ok_or(AuthError::MissingExp)?;
    if now > exp.saturating_add(leeway) {
        return Err(AuthError::Expired { ago: now - exp, leeway });
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf > now.saturating_add(leeway)
    {
        return Err(AuthError::NotYetValid { wait: nbf - now, leeway });
    }
    let iat = numeric_date(claims, "iat")?;
    if let Some(iat) = iat
        && iat > now.saturating_add(leeway)
    {
        return Err(AuthError::IssuedInFuture(iat - now));
    }
    if let Some(max) = issuer.max_token_lifetime {
        let lifetime = exp.saturating_sub(iat.unwrap_or(now));
        if lifetime > max.as_secs() {
            return Err(AuthError::LifetimeTooLong {
                lifetime: format_duration(std::time::Duration::from_secs(lifetime)),
                max: format_duration(max),
            });
        }
    }
    check_audience(claims, issuer, true)?;
    if let Some(required) = &issuer.require_typ {
        let typ = jwt.header.typ.as_deref().unwrap_or("");
        let typ = typ.strip_prefix("application/").unwrap_or(typ);
        let want = required.strip_prefix("application/").unwrap_or(required);
        if !typ.eq_ignore_ascii_case(want) {
            return Err(AuthError::TypMismatch(required.clone()));
        }
    }
    match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => {}
        Some(Value::String(_)) | None => return Err(AuthError::MissingSubject),
        Some(_) => {
            return Err(AuthError::BadClaimType { claim: "sub", expected: "string" });
        }
    }
    Ok(Validity { expires_at: exp })
}

/// One of the issuer's audiences must be in one of its audience claims. Without any audience claim at all the
/// check fails when `required` (JWTs), and passes otherwise (RFC 7662 §2.2: an introspection answer may omit it).
pub(crate) fn check_audience(
    claims: &Map<String, Value>,
    issuer: &IssuerSettings,
    required: bool,
) -> Result<(), AuthError> {
    let mut seen = false;
    for claim in &issuer.audience_claims {
        let matches = |aud: &str| issuer.audiences.iter().any(|want| want == aud);
        match claims.get(claim) {
            Some(Value::String(aud)) => {
                seen = true;
                if matches(aud) {
                    return Ok(());
                }
            }
            Some(Value::Array(list)) => {
                seen = true;
                if list.iter().filter_map(Value::as_str).any(matches) {
                    return Ok(());
                }
            }
            _ => {}
        }
    }
    let expected = issuer.audiences.join(", ");
    match (seen, required) {
        (true, _) => Err(AuthError::AudMismatch(expected)),
        (false, true) => Err(AuthError::MissingAudience(expected)),
        (false, false) => Ok(()),
    }
}

/// A NumericDate claim (RFC 7519 §2): seconds, possibly fractional; negative or non-numeric is refused.
pub(crate) fn numeric_date(claims: &Map<String, Value>, name: &'static str) -> Result<Option<u64>, AuthError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Ok(Some(v)),
            (None, Some(f)) if f >= 0.0 && f < u64::MAX as f64 => Ok(Some(f as u64)),
            _ => Err(AuthError::BadClaimType { claim: name, expected: "non-negative NumericDate" }),
        },
        Some(_) => Err(AuthError::BadClaimType { claim: name, expected: "NumericDate" }),
    }
}
