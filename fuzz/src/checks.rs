//! What each fuzz target checks, one plain function per target. The fuzz targets call these with
//! libFuzzer's input, and `tests/fuzz_corpus.rs` replays the kept corpora and crash reproducers through
//! them in an ordinary `cargo test`, so this file depends on hfgate and the crates hfgate itself uses only.
//!
//! Every function accepts any bytes: an input that does not fit a target's layout is simply ignored, and
//! a panic (from hfgate or from a failed assertion here) is a finding.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use hfgate::authn::claims::{IdentityKind, identity_from_claims};
use hfgate::authn::jwks::{KeySet, Lookup, VerifyingKey};
use hfgate::authn::jwt::{self, MAX_TOKEN_BYTES, ParsedJwt};
use hfgate::authn::session::{
    CookieSealer, MAX_COOKIE_BYTES, Purpose, Session, SessionLimits, cookie_values, strip_cookies,
};
use hfgate::authn::{AuthError, bearer_token};
use hfgate::authz::{Authorizer, compile_rule};
use hfgate::classify::{self, Action, Classified, ClassifyError, ModelRef, RepoType, Request};
use hfgate::config::{
    self, ApiKind, ClaimPath, ConfigError, CookieKey, IssuerSettings, JwksSource, KindRule, RuleEffect, RuleSettings,
    Settings, format_duration, format_size, parse_duration, parse_size,
};
use hfgate::jose::{Algorithm, SigningKey};
use hfgate::login::SignIn;
use hfgate::proxy::headers::OWN_COOKIES;
use hfgate::route::{PathError, RouteTable, normalize_path, normalize_path_allowing_encoded_slash};
use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{Map, Value};

/// Separates the parts of a structured input: 0xFF never occurs in UTF-8 text, so JSON and paths cannot
/// contain it.
const SEPARATOR: u8 = 0xFF;

/// The configuration file name the config checks parse under. Nothing exists there, so relative
/// `file:` credentials and policy files never resolve.
const CONFIG_PATH: &str = "/nonexistent-hfgate-fuzz/hfgate.toml";

fn split_once(data: &[u8]) -> (&[u8], Option<&[u8]>) {
    match data.iter().position(|&b| b == SEPARATOR) {
        Some(at) => (&data[..at], Some(&data[at + 1..])),
        None => (data, None),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    for (i, b) in bytes.iter_mut().enumerate() {
        *b = data.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(bytes)
}

/// Strict percent-decoding (every `%` starts a two-digit escape), the inverse of hfgate's header encoding.
fn percent_decode_strict(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// Text shown to a caller (an `error_description`, a 400 body): printable ASCII without `"` or `\`, as
/// RFC 6750 requires of `error_description` and as hfgate's JSON and challenge headers rely on.
fn assert_safe_message(message: &str, max_len: usize) {
    assert!(!message.is_empty(), "empty message");
    assert!(message.len() <= max_len, "message longer than {max_len}: {message:?}");
    assert!(
        message.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\'),
        "message not safe to show: {message:?}"
    );
}

// ---------------------------------------------------------------------------------------------------
// token: bearer header extraction, JWS parsing, signature verification, claim checks, identity, JWKS.
// ---------------------------------------------------------------------------------------------------

/// Keys made once per process. The fuzzer never learns them, so no input it makes can carry a valid
/// signature; tokens this file signs itself must verify.
struct TestKeys {
    signing: Vec<SigningKey>,
    verifying: Vec<VerifyingKey>,
    /// One token signed by each key.
    tokens: Vec<String>,
}

fn test_keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let signing: Vec<SigningKey> = [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA, Algorithm::RS256]
            .into_iter()
            .map(|alg| SigningKey::generate(alg).expect("generate a test key"))
            .collect();
        let verifying = signing
            .iter()
            .map(|key| VerifyingKey::from_jwk(&key.public_jwk(), &Algorithm::ALL).expect("own public key"))
            .collect();
        let tokens = signing
            .iter()
            .map(|key| key.sign_jwt(&serde_json::json!({}), &serde_json::json!({"sub": "a"})).expect("sign"))
            .collect();
        TestKeys { signing, verifying, tokens }
    })
}

/// Issuer settings that vary in everything `check_claims` and `identity_from_claims` read.
fn issuer_settings(variant: u8) -> IssuerSettings {
    let groups_claim = ["groups", "realm_access.roles", "https://example.com/groups", "cognito:groups"];
    IssuerSettings {
        name: "corp".into(),
        issuer: "https://idp.example".into(),
        audiences: vec!["hfgate".into(), "api://hfgate".into()],
        audience_claims: if variant & 1 == 0 { vec!["aud".into()] } else { vec!["aud".into(), "client_id".into()] },
        jwks: JwksSource::Uri("https://idp.example/jwks".into()),
        algorithms: Algorithm::ALL.to_vec(),
        groups_claim: ClaimPath(groups_claim[usize::from(variant >> 1) % 4].into()),
        email_claim: ClaimPath(if variant & 0x08 == 0 { "email" } else { "upn" }.into()),
        leeway: Duration::from_secs([0, 60, 600][usize::from(variant >> 4) % 3]),
        max_token_lifetime: [None, Some(Duration::from_secs(86_400)), Some(Duration::from_secs(1))]
            [usize::from(variant >> 5) % 3],
        require_typ: [None, Some("at+jwt".to_string()), Some("application/at+jwt".to_string())]
            [usize::from(variant >> 6) % 3]
            .clone(),
        kind: [KindRule::Auto, KindRule::User, KindRule::Workload][usize::from(variant) % 3],
        insecure: false,
        jwks_refresh_interval: Duration::from_secs(300),
        jwks_refetch_min_interval: Duration::from_secs(30),
        jwks_max_stale: Duration::from_secs(3600),
        require: Vec::new(),
        opaque: None,
    }
}

/// A refusal names the failed check and is safe to show. Attacker-chosen text in it (an `alg`, a `kid`)
/// is quoted only after `printable`: visible ASCII without quotes, at most 64 characters and "...".
fn check_auth_error(error: &AuthError) {
    assert_safe_message(&error.to_string(), 400);
    match error {
        AuthError::AlgSymmetric(echo)
        | AuthError::AlgUnsupported(echo)
        | AuthError::UnknownKid { kid: echo, .. }
        | AuthError::KeyMismatch { kid: echo, .. } => {
            let ok = echo.chars().count() <= 67
                && echo.chars().all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\\' | '\''));
            assert!(ok, "attacker text quoted as is: {echo:?}");
        }
        _ => {}
    }
    assert!(!error.code().is_empty());
    assert_eq!(error.status(), http::StatusCode::UNAUTHORIZED, "{error:?}");
}

/// A NumericDate as RFC 7519 defines it; `None` when absent, `Some(None)` when not a valid one.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Option<Option<u64>> {
    let value = claims.get(name)?;
    Some(match value {
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(v), _) => Some(v),
            (None, Some(f)) if f >= 0.0 && f < u64::MAX as f64 => Some(f as u64),
            _ => None,
        },
        _ => None,
    })
}

/// Parses a token and runs everything hfgate does with it except fetching keys: the issuer lookup, the
/// signature check against keys the token cannot know, the claim checks at `now`, the identity.
fn token_front_end(token: &str, now: u64, variant: u8) {
    let jwt = match jwt::parse(token) {
        Ok(jwt) => jwt,
        Err(error) => {
            check_auth_error(&error);
            return;
        }
    };
    assert!(token.len() <= MAX_TOKEN_BYTES, "a token over the size limit was parsed");
    assert_eq!(Algorithm::from_name(jwt.header.alg.name()), Some(jwt.header.alg));
    match jwt.issuer() {
        Ok(iss) => assert_eq!(jwt.claims.get("iss").and_then(Value::as_str), Some(iss)),
        Err(error) => check_auth_error(&error),
    }
    for key in &test_keys().verifying {
        match jwt.verify(key) {
            Ok(()) => panic!("a token verified against a key generated after it was written"),
            Err(error) => check_auth_error(&error),
        }
    }
    claims_and_identity(&jwt, now, variant);
}

fn claims_and_identity(jwt: &ParsedJwt<'_>, now: u64, variant: u8) {
    let issuer = issuer_settings(variant);
    let validity = match jwt::check_claims(jwt, &issuer, now) {
        Ok(validity) => validity,
        Err(error) => {
            check_auth_error(&error);
            return;
        }
    };
    let claims = &jwt.claims;
    let leeway = issuer.leeway.as_secs();
    // What an accepted token must satisfy, computed independently of hfgate.
    let exp = numeric_date(claims, "exp").flatten().expect("accepted without a valid exp");
    assert_eq!(validity.expires_at, exp);
    assert!(now <= exp.saturating_add(leeway), "expired token accepted: exp {exp}, now {now}");
    let nbf = numeric_date(claims, "nbf");
    assert!(nbf.is_none_or(|nbf| nbf.is_some_and(|nbf| nbf <= now.saturating_add(leeway))), "nbf {nbf:?}");
    let iat = numeric_date(claims, "iat");
    assert!(iat.is_none_or(|iat| iat.is_some_and(|iat| iat <= now.saturating_add(leeway))), "iat {iat:?}");
    if let Some(max) = issuer.max_token_lifetime {
        let issued = iat.flatten().unwrap_or(now);
        assert!(exp.saturating_sub(issued) <= max.as_secs(), "lifetime over {max:?} accepted");
    }
    let audience_ok = issuer.audience_claims.iter().any(|claim| match claims.get(claim) {
        Some(Value::String(aud)) => issuer.audiences.contains(aud),
        Some(Value::Array(list)) => {
            list.iter().filter_map(Value::as_str).any(|a| issuer.audiences.iter().any(|w| w == a))
        }
        _ => false,
    });
    assert!(audience_ok, "no configured audience in {:?}", issuer.audience_claims);
    if let Some(required) = &issuer.require_typ {
        let typ = jwt.header.typ.as_deref().unwrap_or("");
        let bare = |t: &str| t.strip_prefix("application/").unwrap_or(t).to_ascii_lowercase();
        assert_eq!(bare(typ), bare(required), "typ {typ:?} accepted");
    }
    let subject = match claims.get("sub") {
        Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
        other => panic!("accepted with sub {other:?}"),
    };

    let identity = identity_from_claims(&issuer, claims, validity.expires_at);
    assert_eq!(identity.subject, subject);
    assert_eq!(identity.valid_until, exp.saturating_add(leeway));
    if claims.get("email_verified") == Some(&Value::Bool(false)) {
        assert_eq!(identity.email, None, "an unverified email was kept");
    }
    let client_id = ["client_id", "azp", "appid", "cid"].iter().find_map(|c| claims.get(*c).and_then(Value::as_str));
    let expected_kind = match issuer.kind {
        KindRule::User => IdentityKind::User,
        KindRule::Workload => IdentityKind::Workload,
        KindRule::Auto if client_id == Some(subject.as_str()) || subject.starts_with("system:serviceaccount:") => {
            IdentityKind::Workload
        }
        KindRule::Auto => IdentityKind::User,
    };
    assert_eq!(identity.kind, expected_kind);
    // Identity headers: visible ASCII only, and decoding gives back exactly the claim.
    let header_text = |value: &HeaderValue| -> String {
        let text = value.to_str().expect("identity header is ASCII").to_string();
        assert!(text.bytes().all(|b| (b' '..=b'~').contains(&b)), "identity header {text:?}");
        text
    };
    let user = header_text(&identity.headers.user);
    assert_eq!(percent_decode_strict(&user).as_deref(), Some(subject.as_bytes()), "X-Forwarded-User {user:?}");
    match (&identity.email, &identity.headers.email) {
        (Some(email), Some(value)) => {
            assert_eq!(percent_decode_strict(&header_text(value)).as_deref(), Some(email.as_bytes()));
        }
        (None, None) => {}
        other => panic!("email and its header disagree: {other:?}"),
    }
    match &identity.headers.groups {
        Some(value) => {
            let joined = header_text(value);
            let items: Vec<&str> = joined.split(',').collect();
            assert_eq!(items.len(), identity.groups.len(), "groups header {joined:?}");
            for (item, group) in items.iter().zip(&identity.groups) {
                assert_eq!(percent_decode_strict(item).as_deref(), Some(group.as_bytes()), "group {group:?}");
            }
        }
        None => assert!(identity.groups.is_empty()),
    }
}

/// A header and claims signed with a test key: what `parse` returns must verify with that key, carry
/// the key's `alg` and `kid`, and go on through the claim checks.
fn signed_token(key_index: u8, variant: u8, now: u64, header: &[u8], claims: &[u8]) {
    let keys = test_keys();
    let index = usize::from(key_index) % keys.signing.len();
    let (signing, verifying) = (&keys.signing[index], &keys.verifying[index]);
    let header = match serde_json::from_slice::<Value>(header) {
        Ok(header @ Value::Object(_)) => header,
        _ => Value::Object(Map::new()),
    };
    let Ok(claims) = serde_json::from_slice::<Value>(claims) else {
        return;
    };
    let token = signing.sign_jwt(&header, &claims).expect("sign");
    let well_formed = token.len() <= MAX_TOKEN_BYTES
        && claims.is_object()
        && header.get("crit").is_none_or(Value::is_null)
        && header.get("typ").is_none_or(|typ| typ.is_string() || typ.is_null());
    let jwt = match jwt::parse(&token) {
        Ok(jwt) => jwt,
        Err(error) => {
            assert!(!well_formed, "a well-formed signed token was refused: {error}");
            check_auth_error(&error);
            return;
        }
    };
    assert!(well_formed, "parsed a token it should refuse: header {header}");
    assert_eq!(jwt.header.alg, signing.algorithm());
    assert_eq!(jwt.header.kid.as_deref(), Some(signing.kid()));
    let keys_in: Vec<&String> = claims.as_object().map(|m| m.keys().collect()).unwrap_or_default();
    assert_eq!(jwt.claims.keys().collect::<Vec<_>>(), keys_in);
    if let Err(error) = jwt.verify(verifying) {
        panic!("a token signed with the key failed to verify: {error}");
    }
    claims_and_identity(&jwt, now, variant);
}

/// Up to four `Authorization` header values: at most one counts, and what it yields goes on to `parse`.
fn bearer_header(values: &[u8], variant: u8) {
    let mut headers = HeaderMap::new();
    let mut rest = Some(values);
    while let Some(part) = rest {
        let (value, next) = split_once(part);
        rest = next;
        if headers.len() >= 4 {
            break;
        }
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(AUTHORIZATION, value);
        }
    }
    let count = headers.get_all(AUTHORIZATION).iter().count();
    match bearer_token(&headers) {
        Ok(token) => {
            assert_eq!(count, 1, "a token was taken from {count} Authorization headers");
            let value = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).expect("visible ASCII header");
            let (scheme, _) = value.split_once(' ').expect("a scheme and a token");
            assert!(scheme.eq_ignore_ascii_case("bearer"), "scheme {scheme:?}");
            assert!(!token.is_empty() && !token.starts_with(' ') && !token.ends_with(' '), "token {token:?}");
            assert!(value.ends_with(token) || value.trim_end_matches(' ').ends_with(token), "{value:?} -> {token:?}");
            token_front_end(token, 1_700_000_000, variant);
        }
        Err(error) => {
            match count {
                0 => assert_eq!(error, AuthError::MissingToken),
                1 => assert!(error != AuthError::DuplicateAuthorization),
                _ => assert_eq!(error, AuthError::DuplicateAuthorization),
            }
            check_auth_error(&error);
        }
    }
}

/// A JWKS document as an issuer might publish it: keys are decoded or skipped, never trusted blindly.
fn jwks_document(document: &[u8], variant: u8) {
    let Ok(doc) = serde_json::from_slice::<Value>(document) else {
        return;
    };
    let allowed: Vec<Algorithm> = Algorithm::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| variant == 0 || variant & (1 << (i % 8)) != 0)
        .map(|(_, a)| a)
        .collect();
    if let Some(keys) = doc.get("keys").and_then(Value::as_array) {
        for jwk in keys.iter().take(8) {
            if let Ok(key) = VerifyingKey::from_jwk(jwk, &allowed) {
                for alg in Algorithm::ALL {
                    if let Err(error) = key.for_alg(alg) {
                        check_auth_error(&error);
                    }
                }
            }
        }
    }
    let set = match KeySet::from_jwks(&doc, &allowed) {
        Ok(set) => set,
        Err(error) => {
            let _ = error.to_string();
            return;
        }
    };
    assert!(!set.is_empty() && set.len() <= hfgate::authn::jwks::MAX_KEYS, "{} keys", set.len());
    // Tokens signed with keys the document cannot hold never verify with a key from it.
    let test = test_keys();
    for (signing, token) in test.signing.iter().zip(&test.tokens) {
        let jwt = jwt::parse(token).expect("own token parses");
        let kids: Vec<&str> = set.kids().collect();
        for kid in kids.into_iter().map(Some).chain([None]) {
            match set.find(kid, signing.algorithm()) {
                Lookup::Found(key) => {
                    assert!(jwt.verify(key).is_err(), "a foreign key verified a test token");
                    if kid.is_none() {
                        assert!(key.for_alg(signing.algorithm()).is_ok(), "kid-less lookup found an unfit key");
                    }
                }
                Lookup::Unknown | Lookup::Ambiguous => assert!(kid.is_none(), "a listed kid was not found"),
            }
        }
    }
}

/// `token` input: the first byte picks what is fuzzed, the rest is its input.
///
/// - `0`, `4`...: a raw token. Bytes 1..9 are `now` (little-endian seconds), byte 9 the issuer variant.
/// - `1`: a token signed by a test key. Byte 1 picks the key, byte 2 the issuer variant, bytes 3..11 `now`,
///   then the header JSON, 0xFF, the claims JSON.
/// - `2`: `Authorization` header values separated by 0xFF; byte 1 the issuer variant.
/// - `3`: a JWKS document; byte 1 restricts the allowed algorithms.
pub fn token(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        1 => {
            let (header, claims) = split_once(rest.get(10..).unwrap_or_default());
            let key = rest.first().copied().unwrap_or(0);
            let variant = rest.get(1).copied().unwrap_or(0);
            signed_token(key, variant, u64_at(rest, 2), header, claims.unwrap_or(b"{}"));
        }
        2 => bearer_header(rest.get(1..).unwrap_or_default(), rest.first().copied().unwrap_or(0)),
        3 => jwks_document(rest.get(1..).unwrap_or_default(), rest.first().copied().unwrap_or(0)),
        _ => {
            let variant = rest.get(8).copied().unwrap_or(0);
            token_front_end(&text(rest.get(9..).unwrap_or_default()), u64_at(rest, 0), variant);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// path: request path normalization and routing.
// ---------------------------------------------------------------------------------------------------

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// What an accepted path satisfies, checked by a reading independent of hfgate's.
fn assert_canonical(path: &str, allow_encoded_slash: bool) {
    let bytes = path.as_bytes();
    assert_eq!(bytes.first(), Some(&b'/'), "accepted a relative path {path:?}");
    // Decode once; every escape must be complete, and nothing may decode to a separator or control byte.
    let mut decoded_segments: Vec<Vec<u8>> = vec![Vec::new()];
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        assert!(b >= 0x20 && b != 0x7f && b != b'\\', "accepted raw byte {b:#04x} in {path:?}");
        if b == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_digit);
            let lo = bytes.get(i + 2).copied().and_then(hex_digit);
            let (Some(hi), Some(lo)) = (hi, lo) else { panic!("accepted a bad escape in {path:?}") };
            let c = hi << 4 | lo;
            assert!(c >= 0x20 && c != 0x7f && c != b'\\', "accepted %{c:02X} in {path:?}");
            assert!(c != b'/' || allow_encoded_slash, "accepted %2F in {path:?}");
            decoded_segments.last_mut().expect("a segment").push(c);
            i += 3;
            continue;
        }
        if b == b'/' {
            decoded_segments.push(Vec::new());
        } else {
            decoded_segments.last_mut().expect("a segment").push(b);
        }
        i += 1;
    }
    let last = decoded_segments.len() - 1;
    for (index, segment) in decoded_segments.iter().enumerate() {
        assert!(!segment.is_empty() || index == last, "accepted an empty segment in {path:?}");
        if !allow_encoded_slash {
            assert!(segment != b"." && segment != b"..", "accepted a dot segment in {path:?}");
        }
    }
    if allow_encoded_slash {
        // Raw segments still never spell a dot segment, in any mix of '.' and %2e.
        for segment in path[1..].split('/') {
            let lower = segment.to_ascii_lowercase().replace("%2e", ".");
            assert!(lower != "." && lower != "..", "accepted a dot segment in {path:?}");
        }
    }
}

/// Routes with and without a stripped prefix and an upstream base path.
fn route_table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let text = r#"
[[issuer]]
name = "corp"
issuer = "https://idp.example"
audiences = ["hfgate"]

[[route]]
name = "root"
path = "/"
upstream = "https://root.example"

[[route]]
name = "llama"
path = "/llama/"
upstream = "https://llama.example/base"
api = "tgi"
strip_prefix = true

[[route]]
name = "hub"
path = "/hub/v1"
upstream = "https://hub.example/"
api = "hub"
strip_prefix = true

[[route]]
name = "deep"
path = "/llama/deep"
upstream = "https://deep.example/x/y"
"#;
        let settings = config::parse(Path::new(CONFIG_PATH), text).expect("the routing fixture is valid");
        RouteTable::new(&settings.routes)
    })
}

/// `path` input: the request path (lossy UTF-8), then optionally 0xFF and a query.
pub fn path(data: &[u8]) {
    let (raw, query) = split_once(data);
    let raw = text(raw);
    let query = query.map(text);
    let strict = normalize_path(&raw);
    let lenient = normalize_path_allowing_encoded_slash(&raw);
    for error in [strict.err(), lenient.err()].into_iter().flatten() {
        assert_safe_message(&error.to_string(), 100);
    }
    match (strict, lenient) {
        (Ok(a), Ok(b)) => {
            assert!(a == raw && b == raw, "normalization changed the path");
            assert_canonical(a, false);
            assert_canonical(b, true);
        }
        (Ok(_), Err(error)) => panic!("the lenient check refused what the strict one accepted: {error:?}"),
        (Err(error), Ok(b)) => {
            assert_eq!(error, PathError::EncodedSlash, "only %2F may separate the two checks");
            assert!(b == raw);
            assert_canonical(b, true);
        }
        (Err(_), Err(_)) => return,
    }
    // Idempotent: an accepted path is accepted again as it is.
    assert_eq!(normalize_path_allowing_encoded_slash(&raw), Ok(raw.as_str()));
    let Some(route) = route_table().find(&raw) else {
        return;
    };
    let prefix = route.settings.prefix.as_str();
    assert!(raw.starts_with(prefix) && matches!(raw.as_bytes().get(prefix.len()), None | Some(b'/')));
    let upstream = route.upstream_path_and_query(&raw, query.as_deref());
    let (upstream_path, upstream_query) = match &query {
        Some(q) => {
            let cut = upstream.len() - q.len() - 1;
            assert_eq!(&upstream[cut..cut + 1], "?");
            (&upstream[..cut], Some(&upstream[cut + 1..]))
        }
        None => (upstream.as_str(), None),
    };
    assert_eq!(upstream_query, query.as_deref(), "the query was altered");
    assert!(upstream_path.starts_with(&route.settings.upstream.base_path));
    // What the upstream gets is as canonical as what the policy saw.
    assert_eq!(normalize_path_allowing_encoded_slash(upstream_path), Ok(upstream_path), "upstream path");
    if normalize_path(&raw).is_ok() {
        assert_eq!(normalize_path(upstream_path), Ok(upstream_path), "upstream path");
    }
}

// ---------------------------------------------------------------------------------------------------
// classify: every API kind on any method, path and body.
// ---------------------------------------------------------------------------------------------------

const KINDS: [ApiKind; 7] = ApiKind::ALL;

const METHODS: [&str; 14] = [
    "GET", "POST", "HEAD", "OPTIONS", "PUT", "PATCH", "DELETE", "TRACE", "CONNECT", "get", "post", "PROPFIND",
    "M-SEARCH", "QUERY",
];

const ROUTE_MODEL: &str = "org/name";

/// A Hub repo id: `org/name` or `name`, each part 1-96 of `[A-Za-z0-9._-]`, no leading or trailing
/// `-`/`.`, no `--`/`..`, not ending in `.git`.
fn is_repo_id(id: &str) -> bool {
    let parts: Vec<&str> = id.split('/').collect();
    parts.len() <= 2
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.len() <= 96
                && part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
                && !part.starts_with(['-', '.'])
                && !part.ends_with(['-', '.'])
                && !part.contains("--")
                && !part.contains("..")
        })
        && !id.to_ascii_lowercase().ends_with(".git")
}

fn assert_model(api: ApiKind, path: &str, model: &ModelRef) {
    assert!(!model.id.is_empty(), "empty model id");
    assert!(!model.id.chars().any(char::is_control), "control character in model id {:?}", model.id);
    match api {
        ApiKind::OpenAi => {
            assert!(model.id.chars().count() <= 256, "model id over 256 characters");
            assert!(!model.id.starts_with(char::is_whitespace) && !model.id.ends_with(char::is_whitespace));
            assert_eq!((&model.revision, &model.provider, model.repo_type), (&None, &None, RepoType::Model));
        }
        ApiKind::Router => {
            assert!(is_repo_id(&model.id), "router model {:?} is not a repo id", model.id);
            if let Some(provider) = &model.provider {
                let ok = !provider.is_empty()
                    && provider.len() <= 64
                    && provider.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
                assert!(ok, "provider {provider:?}");
            }
            assert_eq!((&model.revision, model.repo_type), (&None, RepoType::Model));
        }
        ApiKind::HfInference | ApiKind::Hub => {
            assert!(is_repo_id(&model.id), "repo id {:?}", model.id);
            // Repo ids are spelled literally in paths: the policy reads the id the upstream routes on.
            assert!(path.contains(&model.id), "{:?} is not spelled in {path:?}", model.id);
            assert_eq!(model.provider, None);
            if let Some(revision) = &model.revision {
                assert!(api == ApiKind::Hub, "revision outside hub");
                let ok = !revision.is_empty()
                    && revision.len() <= 255
                    && revision.bytes().all(|b| b.is_ascii_graphic())
                    && !revision.contains("..")
                    && !revision.contains('%');
                assert!(ok, "revision {revision:?}");
            }
            if api == ApiKind::HfInference {
                assert_eq!(model.repo_type, RepoType::Model);
            }
        }
        ApiKind::Tgi | ApiKind::Tei => {
            assert_eq!(
                model,
                &ModelRef { id: ROUTE_MODEL.into(), revision: None, provider: None, repo_type: RepoType::Model }
            );
        }
        ApiKind::Generic => panic!("a generic route named a model"),
    }
}

fn has_encoded_slash(path: &str) -> bool {
    path.to_ascii_lowercase().contains("%2f")
}

/// `classify` input: byte 0 the API kind, byte 1 the method, byte 2 flags (bit 0: the route names a
/// model, bit 1: no body), then the path (lossy UTF-8), 0xFF, the body.
pub fn classify(data: &[u8]) {
    let [kind, method, flags, rest @ ..] = data else {
        return;
    };
    let api = KINDS[usize::from(*kind) % KINDS.len()];
    let method = Method::from_bytes(METHODS[usize::from(*method) % METHODS.len()].as_bytes()).expect("a method");
    let (path, body) = split_once(rest);
    let path = text(path);
    let body = if flags & 2 == 0 { Some(body.unwrap_or_default()) } else { None };
    let route_model = (flags & 1 == 1).then_some(ROUTE_MODEL);
    let request = Request { method: &method, path: &path, route_model };
    let result = classify::classify(api, &request, body);
    if !classify::needs_body(api, &request) {
        assert_eq!(result, classify::classify(api, &request, None), "a body not needed changed the answer");
    }
    if api != ApiKind::Hub && has_encoded_slash(&path) {
        assert_eq!(result, Err(ClassifyError::EncodedSlash));
    }
    match result {
        Ok(Classified { action, model }) => {
            assert!(Action::from_name(action.name()) == Some(action));
            if let Some(model) = &model {
                assert_model(api, &path, model);
            } else {
                assert!(!matches!(api, ApiKind::Tgi | ApiKind::Tei) || route_model.is_none());
            }
        }
        Err(error) => assert_safe_message(&error.to_string(), 220),
    }
}

// ---------------------------------------------------------------------------------------------------
// config: the whole configuration file.
// ---------------------------------------------------------------------------------------------------

/// Reading special files (`/dev/zero`, a FIFO) through a `file:` credential or `policy_file` would hang
/// the target, not find a bug: inputs that name such a place, or may spell one through escapes or
/// `${...}`, are skipped.
fn may_read_special_files(text: &str) -> bool {
    let named = ["/dev", "/proc", "/sys", "/run"].iter().any(|p| text.contains(p));
    let spelled = (text.contains('\\') || text.contains("${")) && text.contains("fil");
    named || spelled
}

fn check_settings(settings: &Settings) {
    for route in &settings.routes {
        let prefix = route.prefix.as_str();
        assert!(!prefix.ends_with('/'), "prefix {prefix:?} keeps its trailing slash");
        if !prefix.is_empty() {
            assert_eq!(normalize_path(prefix), Ok(prefix), "route prefix");
        }
    }
    let table = RouteTable::new(&settings.routes);
    assert_eq!(table.len(), settings.routes.len());
    if settings.authz.policy_file.is_none() {
        // Shorthand rules and route bill_to values are validated so that they always compile.
        if let Err(issues) = Authorizer::new(settings) {
            panic!("accepted configuration fails to compile its policies: {issues:?}");
        }
    }
}

/// `config` input: a configuration file (lossy UTF-8). Each short line is also read as a duration and a size.
pub fn config(data: &[u8]) {
    let text = text(data);
    for line in text.lines().filter(|l| l.len() <= 40) {
        if let Ok(duration) = parse_duration(line) {
            assert_eq!(parse_duration(&format_duration(duration)), Ok(duration), "duration {line:?}");
        }
        if let Ok(size) = parse_size(line) {
            assert_eq!(parse_size(&format_size(size)), Ok(size), "size {line:?}");
        }
    }
    if may_read_special_files(&text) {
        return;
    }
    let lines = text.split('\n').count();
    match config::parse(Path::new(CONFIG_PATH), &text) {
        Ok(settings) => check_settings(&settings),
        Err(ConfigError::Invalid(issues)) => {
            assert!(!issues.is_empty(), "refused without saying why");
            for issue in &issues {
                assert_eq!(issue.file, CONFIG_PATH);
                assert!((1..=lines).contains(&issue.line), "line {} of {lines}", issue.line);
                assert!(!issue.message.is_empty() && !issue.key.is_empty(), "{issue:?}");
            }
            assert!(issues.windows(2).all(|w| w[0].line <= w[1].line), "issues not in file order");
        }
        Err(error @ ConfigError::Read { .. }) => panic!("parse read a file: {error}"),
    }
}

// ---------------------------------------------------------------------------------------------------
// shorthand: [[allow]]/[[deny]] rules from any strings, through the config file into Cedar.
// ---------------------------------------------------------------------------------------------------

const RULE_FIELDS: [&str; 9] =
    ["groups", "users", "issuers", "routes", "models", "datasets", "spaces", "actions", "bill_to"];

/// The fixture's one issuer and one route, which `issuers` and `routes` may name.
const SHORTHAND_BASE: &str = r#"[[issuer]]
name = "corp"
issuer = "https://idp.example"
audiences = ["hfgate"]

[[route]]
name = "llama"
path = "/llama"
upstream = "https://llama.example"
api = "tgi"
model = "org/name"
"#;

/// A TOML basic string holding exactly `value` after hfgate's `${...}` interpolation.
fn toml_string(value: &str) -> String {
    let mut out = String::from("\"");
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '$' => out.push_str("$$"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Whether the config must accept `value` in `field`: non-empty, no quote, backslash or control
/// character, and for the fields that name something, a name that exists.
fn acceptable(field: &str, value: &str) -> bool {
    let plain = !value.is_empty() && !value.chars().any(|c| c == '"' || c == '\\' || c.is_control());
    plain
        && match field {
            "issuers" => value == "corp",
            "routes" => value == "llama",
            "actions" => Action::from_name(value).is_some(),
            _ => true,
        }
}

/// The Cedar text with every string literal's content blanked. Values cannot contain `"` or `\`, so a
/// literal ends at the next `"`.
fn skeleton(cedar: &str) -> String {
    let mut out = String::with_capacity(cedar.len());
    let mut inside = false;
    for c in cedar.chars() {
        if c == '"' {
            inside = !inside;
            out.push(c);
        } else if !inside {
            out.push(c);
        }
    }
    assert!(!inside, "unterminated string literal in {cedar}");
    out
}

/// The same rule with every value replaced by a harmless one.
fn placeholder(rule: &RuleSettings) -> RuleSettings {
    let blank = |values: &[String]| vec!["x".to_string(); values.len()];
    RuleSettings {
        id: rule.id.clone(),
        effect: rule.effect,
        line: rule.line,
        groups: blank(&rule.groups),
        users: blank(&rule.users),
        issuers: blank(&rule.issuers),
        routes: blank(&rule.routes),
        models: blank(&rule.models),
        datasets: blank(&rule.datasets),
        spaces: blank(&rule.spaces),
        actions: blank(&rule.actions),
        bill_to: rule.bill_to.as_ref().map(|_| "x".to_string()),
    }
}

/// `shorthand` input: byte 0 flags (bit 0: `[[deny]]` instead of `[[allow]]`), then fields as
/// `[field index, length, bytes...]` (index modulo 9 into groups, users, issuers, routes, models,
/// datasets, spaces, actions, bill_to; values lossy UTF-8, at most 8 per field).
pub fn shorthand(data: &[u8]) {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let effect = if flags & 1 == 1 { RuleEffect::Deny } else { RuleEffect::Allow };
    let mut fields: Vec<Vec<String>> = vec![Vec::new(); RULE_FIELDS.len()];
    while let [field, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        let values = &mut fields[usize::from(*field) % RULE_FIELDS.len()];
        if values.len() < 8 {
            values.push(text(&tail[..len]));
        }
        rest = &tail[len..];
    }
    fields[8].truncate(1);

    let mut toml = String::from(SHORTHAND_BASE);
    toml.push_str(if effect == RuleEffect::Deny { "\n[[deny]]\n" } else { "\n[[allow]]\n" });
    for (name, values) in RULE_FIELDS.iter().zip(&fields) {
        if name == &"bill_to" {
            if let Some(value) = values.first() {
                toml.push_str(&format!("bill_to = {}\n", toml_string(value)));
            }
        } else if !values.is_empty() {
            let items: Vec<String> = values.iter().map(|v| toml_string(v)).collect();
            toml.push_str(&format!("{name} = [{}]\n", items.join(", ")));
        }
    }
    let expected = RULE_FIELDS.iter().zip(&fields).all(|(name, values)| values.iter().all(|v| acceptable(name, v)))
        && (effect == RuleEffect::Allow || fields[8].is_empty());

    let settings = match config::parse(Path::new(CONFIG_PATH), &toml) {
        Ok(settings) => settings,
        Err(error) => {
            assert!(!expected, "a valid rule was refused:\n{toml}\n{error}");
            return;
        }
    };
    assert!(expected, "a rule with a forbidden value was accepted:\n{toml}");
    let [rule] = settings.authz.rules.as_slice() else {
        panic!("expected one rule, got {}", settings.authz.rules.len());
    };
    assert_eq!(rule.effect, effect);
    let kept = [
        &rule.groups,
        &rule.users,
        &rule.issuers,
        &rule.routes,
        &rule.models,
        &rule.datasets,
        &rule.spaces,
        &rule.actions,
    ];
    for (kept, given) in kept.iter().zip(&fields) {
        assert_eq!(*kept, given, "values changed on the way through the config");
    }
    assert_eq!(rule.bill_to.as_ref(), fields[8].first());

    // No value can change the policy's structure: outside string literals, the Cedar text is the one a
    // rule with harmless values compiles to.
    let cedar = compile_rule(rule);
    assert_eq!(
        skeleton(&cedar),
        skeleton(&compile_rule(&placeholder(rule))),
        "policy structure depends on values:\n{cedar}"
    );
    if let Err(issues) = Authorizer::new(&settings) {
        panic!("an accepted rule does not compile:\n{cedar}\n{issues:?}");
    }
}

/// The session cookie sealer every `cookie` input is checked against (a fixed key: seeds may hold values
/// it sealed).
fn cookie_sealer() -> &'static CookieSealer {
    static SEALER: OnceLock<CookieSealer> = OnceLock::new();
    SEALER.get_or_init(|| CookieSealer::new(&[CookieKey([0x42; 32]), CookieKey([0x17; 32])]))
}

/// A sign-in configured for `https://gate.example`, for return URL checks.
fn sign_in() -> &'static SignIn {
    static SIGN_IN: OnceLock<SignIn> = OnceLock::new();
    SIGN_IN.get_or_init(|| {
        let text = "[server]\npublic_url = \"https://gate.example\"\n[[issuer]]\nname = \"corp\"\n\
                    issuer = \"https://idp.example\"\naudiences = [\"hfgate\"]\n[login]\nissuer = \"corp\"\n\
                    client_id = \"web\"\ncookie_keys = [\"QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=\"]\n";
        let settings = config::parse(Path::new(CONFIG_PATH), text).expect("the fuzz sign-in config is valid");
        SignIn::new(&settings, hfgate::client::build(Duration::from_secs(1))).expect("sign-in is configured")
    })
}

/// `cookie` input: the first byte picks what is fuzzed, the rest is its input.
///
/// - `0`: a session cookie value as a browser would send it: opening never panics; what opens re-seals
///   and opens to the same bytes, and never for the login purpose.
/// - `1`: a plaintext: sealed, it opens to itself under either key order, and only for its purpose.
/// - `2`: a `Cookie` header: each value found belongs to a pair of that name; stripping hfgate's cookies
///   leaves none of them and keeps every other pair.
/// - `3`: a sealed JSON payload read as a session: never panics; an accepted session's limits hold.
/// - `4`: a return URL (`rd`): an accepted one is a local path no browser reads as another origin.
pub fn cookie(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let sealer = cookie_sealer();
    match mode % 5 {
        0 => {
            let value = text(rest);
            if let Ok(plain) = sealer.open(Purpose::Session, &value) {
                assert!(sealer.open(Purpose::Login, &value).is_err(), "a session value opened as login state");
                let again = sealer.seal(Purpose::Session, &plain).expect("what opened fits again");
                assert_eq!(sealer.open(Purpose::Session, &again).expect("resealed"), plain);
            }
        }
        1 => {
            let Some(sealed) = sealer.seal(Purpose::Login, rest) else {
                assert!(rest.len() > MAX_COOKIE_BYTES / 2, "a small plaintext was not sealed");
                return;
            };
            assert!(sealed.len() <= MAX_COOKIE_BYTES);
            assert!(sealed.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "not a cookie value");
            assert_eq!(sealer.open(Purpose::Login, &sealed).expect("opens"), rest);
            let rotated = CookieSealer::new(&[CookieKey([0x17; 32]), CookieKey([0x42; 32])]);
            assert_eq!(rotated.open(Purpose::Login, &sealed).expect("old key opens"), rest);
            assert!(sealer.open(Purpose::Session, &sealed).is_err(), "login state opened as a session");
            assert!(CookieSealer::new(&[CookieKey([0; 32])]).open(Purpose::Login, &sealed).is_err());
        }
        2 => {
            let header = text(rest);
            let Ok(value) = HeaderValue::from_str(&header) else {
                return;
            };
            let mut headers = HeaderMap::new();
            headers.insert(http::header::COOKIE, value);
            for name in OWN_COOKIES {
                for found in cookie_values(&headers, name) {
                    assert!(!found.contains(';'), "a cookie value spans pairs");
                    assert!(header.contains(found), "a cookie value not in the header");
                }
            }
            let pairs = |text: &str| -> Vec<String> {
                text.split(';').map(|p| p.trim().to_string()).filter(|p| !p.is_empty()).collect()
            };
            let kept = strip_cookies(&header, &OWN_COOKIES).unwrap_or_default();
            let own = |pair: &str| OWN_COOKIES.contains(&pair.split_once('=').map_or(pair, |(k, _)| k));
            assert!(pairs(&kept).iter().all(|p| !own(p)), "an own cookie survived stripping");
            let others: Vec<String> = pairs(&header).into_iter().filter(|p| !own(p)).collect();
            assert_eq!(pairs(&kept), others, "stripping changed another cookie");
        }
        3 => {
            let Some(sealed) = sealer.seal(Purpose::Session, rest.get(8..).unwrap_or_default()) else {
                return;
            };
            if let Ok(session) = sealer.open_json::<Session>(Purpose::Session, &sealed) {
                let limits =
                    SessionLimits { lifetime: Duration::from_secs(3600), idle_timeout: Duration::from_secs(600) };
                let now = u64_at(rest, 0);
                if session.check(limits, now).is_ok() {
                    assert!(now.saturating_sub(session.started) <= 3600 && now.saturating_sub(session.seen) <= 600);
                }
                assert!(session.ends_at(limits) >= session.started);
            }
        }
        _ => {
            let rd = text(rest);
            if let Ok(local) = sign_in().return_path(Some(&rd)) {
                let bytes = local.as_bytes();
                assert_eq!(bytes.first(), Some(&b'/'), "return path {local:?} is not local");
                assert!(!matches!(bytes.get(1), Some(b'/' | b'\\')), "return path {local:?} names another host");
                assert!(!local.contains('\\') && !local.bytes().any(|b| b.is_ascii_control()), "{local:?}");
                assert!(local.parse::<http::uri::PathAndQuery>().is_ok(), "{local:?}");
            }
        }
    }
}
