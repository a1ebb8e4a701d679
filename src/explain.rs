//! `hfgate explain`: the decision trace for one token and one request — what an operator runs when
//! someone says "unauthorized, but everything looks fine". It drives the serving code (authenticator,
//! router, classifier, authorizer); nothing here re-implements a check.

use std::fmt::Write as _;
use std::sync::Arc;

use serde_json::Value;

use crate::authn::{AuthError, Authenticator, Identity, claims};
use crate::authz::{Authorizer, Question};
use crate::classify;
use crate::config::Settings;
use crate::metrics::Metrics;
use crate::route::{RouteTable, normalize_path, normalize_path_allowing_encoded_slash};

/// Who is asking: a real token (fully verified, keys fetched from the issuer) or a claims file
/// (signature skipped, every other check applied).
#[derive(Debug)]
pub enum Caller {
    Token(String),
    Claims(Value),
}

#[derive(Debug)]
pub struct ExplainRequest {
    pub caller: Caller,
    pub method: http::Method,
    pub path: String,
    pub body: Option<Vec<u8>>,
    pub bill_to: Option<String>,
}

/// The order in which the door checks a token; a refusal's code says which step failed.
const STEPS: [(&str, &[&str]); 6] = [
    ("bearer token", &["missing_token", "duplicate_authorization", "not_bearer", "hf_token"]),
    ("JWT structure and algorithm", &["malformed", "alg_none", "alg_symmetric", "alg_unsupported", "crit"]),
    ("issuer (iss)", &["missing_iss", "unknown_issuer", "alg_not_allowed"]),
    ("signing key (kid)", &["kid_required", "unknown_kid", "key_mismatch", "keys_unavailable"]),
    ("signature", &["bad_signature"]),
    ("claims (exp, nbf, iat, lifetime, aud, typ, sub)", &[]),
];

/// Whether the request would be allowed, and the trace that says why.
#[derive(Debug)]
pub struct Explanation {
    pub allowed: bool,
    pub text: String,
}

pub async fn explain(settings: &Settings, authz: &Authorizer, request: ExplainRequest) -> Explanation {
    let mut out = String::new();
    let client = crate::client::build(settings.server.upstream_connect_timeout);
    let authn = Authenticator::new(&settings.issuers, client, Arc::new(Metrics::new()));

    let _ = writeln!(out, "authentication");
    let identity = match &request.caller {
        // An opaque token (or a Hugging Face OAuth token) is checked by its issuer, not by a signature.
        Caller::Token(token)
            if !crate::authn::introspect::looks_like_jwt(token)
                || token.starts_with(crate::authn::introspect::HUGGING_FACE_OAUTH_PREFIX) =>
        {
            match authn.authenticate(token).await {
                Ok(identity) => {
                    let _ = writeln!(
                        out,
                        "  ok    opaque token: active at issuer {} (introspection or userinfo)",
                        identity.issuer
                    );
                    identity
                }
                Err(err) => {
                    let _ = writeln!(out, "  FAIL  opaque token: {err}\n\nresult: {} ({err})", err.status().as_u16());
                    return Explanation { allowed: false, text: out };
                }
            }
        }
        Caller::Token(token) => {
            let result =
                if token.starts_with("hf_") { Err(AuthError::HuggingFaceToken) } else { authn.verify(token).await };
            match result {
                Ok(identity) => {
                    for (step, _) in STEPS {
                        let _ = writeln!(out, "  ok    {step}");
                    }
                    Arc::new(identity)
                }
                Err(err) => {
                    let failed =
                        STEPS.iter().position(|(_, codes)| codes.contains(&err.code())).unwrap_or(STEPS.len() - 1);
                    for (i, (step, _)) in STEPS.iter().enumerate() {
                        let mark = match i.cmp(&failed) {
                            std::cmp::Ordering::Less => "ok   ".to_string(),
                            std::cmp::Ordering::Equal => format!("FAIL  {step}: {err}"),
                            std::cmp::Ordering::Greater => "-    ".to_string(),
                        };
                        if i == failed {
                            let _ = writeln!(out, "  {mark}");
                        } else {
                            let _ = writeln!(out, "  {mark} {step}");
                        }
                    }
                    let _ = writeln!(out, "\nresult: 401 invalid_token ({err})");
                    return Explanation { allowed: false, text: out };
                }
            }
        }
        Caller::Claims(value) => match identity_from_claims_file(settings, value) {
            Ok(identity) => {
                let _ = writeln!(out, "  skip  signature (claims file: no token to verify)");
                let _ = writeln!(out, "  ok    issuer, exp, sub and the issuer's require");
                Arc::new(identity)
            }
            Err(why) => {
                let _ = writeln!(out, "  FAIL  {why}\n\nresult: 401 invalid_token ({why})");
                return Explanation { allowed: false, text: out };
            }
        },
    };
    let _ = writeln!(
        out,
        "  identity: {} ({}) issuer={} email={} groups=[{}] client_id={}",
        identity.subject,
        match identity.kind {
            crate::authn::IdentityKind::User => "user",
            crate::authn::IdentityKind::Workload => "workload",
        },
        identity.issuer,
        identity.email.as_deref().unwrap_or("-"),
        identity.groups.join(", "),
        identity.client_id.as_deref().unwrap_or("-"),
    );

    let routes = RouteTable::new(&settings.routes);
    let path = match normalize_path(&request.path).or_else(|_| normalize_path_allowing_encoded_slash(&request.path)) {
        Ok(p) => p,
        Err(e) => {
            let _ = writeln!(out, "\nresult: 400 invalid_request ({e})");
            return Explanation { allowed: false, text: out };
        }
    };
    let Some(route) = routes.find(path) else {
        let _ = writeln!(out, "\nresult: 404 no route for {path}");
        return Explanation { allowed: false, text: out };
    };
    let settings_route = &route.settings;
    let route_path = match &path[settings_route.prefix.len()..] {
        "" => "/",
        rest => rest,
    };
    let shape =
        classify::Request { method: &request.method, path: route_path, route_model: settings_route.model.as_deref() };
    let _ = writeln!(out, "\nclassification (route {}, api {})", settings_route.name, settings_route.api.name());
    let body = if classify::needs_body(settings_route.api, &shape) {
        Some(request.body.as_deref().unwrap_or(b""))
    } else {
        None
    };
    let classified = match classify::classify(settings_route.api, &shape, body) {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(out, "  FAIL  {e}\n\nresult: 400 invalid_request ({e})");
            return Explanation { allowed: false, text: out };
        }
    };
    let model = classified.model.as_ref();
    let _ = writeln!(
        out,
        "  action: {}  model: {}  repo_type: {}  revision: {}  provider: {}",
        classified.action,
        model.map_or("-", |m| m.id.as_str()),
        model.map_or("-", |m| m.repo_type.name()),
        model.and_then(|m| m.revision.as_deref()).unwrap_or("-"),
        model.and_then(|m| m.provider.as_deref()).unwrap_or("-"),
    );

    let _ = writeln!(out, "\nauthorization (policy set {})", authz.policy_hash());
    let question =
        Question { identity: &identity, route, method: request.method.as_str(), path, classified: &classified };
    let mut verdict = authz.decide(&question);
    if verdict.allow
        && let Some(org) = &request.bill_to
    {
        let billing = authz.may_bill(&question, org);
        if !billing.allow {
            verdict = billing;
        }
    }
    let _ = writeln!(out, "  decision: {}", if verdict.allow { "ALLOW" } else { "DENY" });
    let _ = writeln!(out, "  reason: {}", verdict.reason);
    let _ = writeln!(
        out,
        "  determining policies: {}",
        if verdict.policies.is_empty() { "-".to_string() } else { verdict.policies.join(", ") }
    );
    if let Some(org) = &verdict.bill_to {
        let _ = writeln!(out, "  X-HF-Bill-To: {org}");
    }
    let _ = writeln!(
        out,
        "\nresult: {}",
        if verdict.allow {
            "forwarded to the upstream".to_string()
        } else {
            format!("403 insufficient_scope ({})", verdict.reason)
        }
    );
    Explanation { allowed: verdict.allow, text: out }
}

/// An identity from a claims file, with the issuer chosen by `iss` and exp/sub checked as for a token.
fn identity_from_claims_file(settings: &Settings, value: &Value) -> Result<Identity, String> {
    let claims = value.as_object().ok_or("the claims file is not a JSON object")?;
    let iss = claims.get("iss").and_then(Value::as_str).ok_or("missing iss claim")?;
    let issuer = settings
        .issuers
        .iter()
        .find(|i| i.issuer == iss)
        .ok_or_else(|| format!("iss {iss} is not a configured issuer"))?;
    let exp = claims.get("exp").and_then(Value::as_u64).ok_or("missing exp claim")?;
    if claims.get("sub").and_then(Value::as_str).is_none_or(str::is_empty) {
        return Err("missing sub claim".into());
    }
    claims::check_requirements(issuer, claims).map_err(|e| e.to_string())?;
    Ok(claims::identity_from_claims(issuer, claims, exp))
}
