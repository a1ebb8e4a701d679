//! The few pages people see: who am I (`/.hfgate/whoami`), signed out, and sign-in errors. Plain HTML,
//! no script, every value escaped.

use axum::body::Body;
use http::{HeaderValue, Response, StatusCode, header};
use serde::Serialize;

use crate::authn::Identity;
use crate::config::{RuleEffect, RuleSettings, Settings};

/// What one route lets this person do, as the shorthand rules say.
#[derive(Debug, Serialize)]
pub struct RouteAccess {
    pub route: String,
    pub path: String,
    /// `"all"` (no policy configured), `"rules"` (the lists below), or `"none"`.
    pub access: &'static str,
    /// Model patterns (`*` = any) a rule grants here.
    pub models: Vec<String>,
    /// Actions granted (`*` = any).
    pub actions: Vec<String>,
    /// Ids of deny rules that may still refuse some of it.
    pub denied_by: Vec<String>,
}

/// A browser session as whoami shows it.
#[derive(Debug, Serialize)]
pub struct SessionInfo {
    /// When the session ends at the latest (Unix seconds).
    pub expires_at: u64,
}

/// Who is signed in and what they may use.
#[derive(Debug, Serialize)]
pub struct WhoAmI {
    pub subject: String,
    pub email: Option<String>,
    pub issuer: String,
    pub groups: Vec<String>,
    pub kind: crate::authn::IdentityKind,
    /// The browser session, `null` for a bearer token.
    pub session: Option<SessionInfo>,
    pub routes: Vec<RouteAccess>,
    /// Set when a Cedar policy file also decides (the lists above then show the shorthand rules only).
    pub policy_file: Option<String>,
    pub server: String,
}

impl WhoAmI {
    pub fn new(settings: &Settings, identity: &Identity, session_expires_at: Option<u64>) -> WhoAmI {
        let authz = &settings.authz;
        let unconfigured = authz.rules.is_empty() && authz.policy_file.is_none();
        let routes = settings
            .routes
            .iter()
            .map(|route| {
                if unconfigured {
                    return RouteAccess {
                        route: route.name.clone(),
                        path: format!("{}/", route.prefix),
                        access: "all",
                        models: vec!["*".into()],
                        actions: vec!["*".into()],
                        denied_by: Vec::new(),
                    };
                }
                let applies = |rule: &&RuleSettings| rule_applies(rule, identity, &route.name);
                let mut models = Vec::new();
                let mut actions = Vec::new();
                let mut denied_by = Vec::new();
                for rule in authz.rules.iter().filter(applies) {
                    match rule.effect {
                        RuleEffect::Allow => {
                            let granted = rule.models.iter().chain(&rule.datasets).chain(&rule.spaces);
                            extend_or_any(
                                &mut models,
                                granted,
                                rule.models.is_empty() && rule.datasets.is_empty() && rule.spaces.is_empty(),
                            );
                            extend_or_any(&mut actions, rule.actions.iter(), rule.actions.is_empty());
                        }
                        RuleEffect::Deny => denied_by.push(rule.id.clone()),
                    }
                }
                let access = if models.is_empty() { "none" } else { "rules" };
                RouteAccess {
                    route: route.name.clone(),
                    path: format!("{}/", route.prefix),
                    access,
                    models,
                    actions,
                    denied_by,
                }
            })
            .collect();
        WhoAmI {
            subject: identity.subject.clone(),
            email: identity.email.clone(),
            issuer: identity.issuer_url.to_string(),
            groups: identity.groups.clone(),
            kind: identity.kind,
            session: session_expires_at.map(|expires_at| SessionInfo { expires_at }),
            routes,
            policy_file: authz.policy_file.as_ref().map(|p| p.path.display().to_string()),
            server: settings.server.public_url.clone(),
        }
    }

    pub fn html(&self) -> String {
        let mut body = String::new();
        body.push_str("<h1>Signed in</h1>\n<dl>\n");
        let row = |body: &mut String, name: &str, value: &str| {
            body.push_str(&format!("<dt>{}</dt><dd>{}</dd>\n", escape(name), escape(value)));
        };
        row(&mut body, "Subject", &self.subject);
        row(&mut body, "Email", self.email.as_deref().unwrap_or("-"));
        row(&mut body, "Issuer", &self.issuer);
        body.push_str("<dt>Groups</dt><dd><ul>");
        for group in &self.groups {
            body.push_str(&format!("<li class=\"group\">{}</li>", escape(group)));
        }
        body.push_str("</ul></dd>\n</dl>\n<h2>What you may use</h2>\n<table>\n");
        body.push_str("<tr><th>Route</th><th>Path</th><th>Models</th><th>Actions</th></tr>\n");
        for route in &self.routes {
            let models = match route.access {
                "none" => "nothing".to_string(),
                _ => route.models.join(", "),
            };
            let mut actions = route.actions.join(", ");
            if !route.denied_by.is_empty() {
                actions.push_str(&format!(" (except as {} refuse)", route.denied_by.join(", ")));
            }
            body.push_str(&format!(
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td><td>{}</td></tr>\n",
                escape(&route.route),
                escape(&route.path),
                escape(&models),
                escape(&actions)
            ));
        }
        body.push_str("</table>\n");
        if let Some(file) = &self.policy_file {
            body.push_str(&format!(
                "<p>The policies in <code>{}</code> also decide; <code>hfgate explain</code> traces one request.</p>\n",
                escape(file)
            ));
        }
        body.push_str("<h2>From a terminal</h2>\n<pre>");
        body.push_str(&escape(&format!(
            "hfgate login --server {}\nexport HF_TOKEN=$(hfgate token)\nexport OPENAI_API_KEY=$(hfgate token)",
            self.server
        )));
        // A link, not a form: logout redirects to the IdP, which `form-action 'self'` would block.
        body.push_str("</pre>\n<p><a href=\"/.hfgate/logout\">Sign out</a></p>\n");
        document("Signed in - hfgate", &body)
    }
}

fn extend_or_any<'a>(into: &mut Vec<String>, items: impl Iterator<Item = &'a String>, any: bool) {
    let items: Vec<String> = if any { vec!["*".to_string()] } else { items.cloned().collect() };
    for item in items {
        if !into.contains(&item) {
            into.push(item);
        }
    }
}

/// Whether a rule's who-and-where conditions hold for this identity on this route.
fn rule_applies(rule: &RuleSettings, identity: &Identity, route: &str) -> bool {
    (rule.groups.is_empty() || rule.groups.iter().any(|g| identity.groups.contains(g)))
        && (rule.users.is_empty()
            || rule.users.iter().any(|u| *u == identity.subject || Some(u.as_str()) == identity.email.as_deref()))
        && (rule.issuers.is_empty() || rule.issuers.iter().any(|i| *i == *identity.issuer))
        && (rule.routes.is_empty() || rule.routes.iter().any(|r| r == route))
}

/// After sign-out.
pub fn signed_out() -> String {
    document(
        "Signed out - hfgate",
        "<h1>You are signed out</h1>\n<p><a href=\"/.hfgate/login\">Sign in again</a></p>\n",
    )
}

/// A sign-in step that failed: what went wrong and how to start over.
pub fn sign_in_failed(reason: &str) -> String {
    document(
        "Sign-in failed - hfgate",
        &format!(
            "<h1>Sign-in failed</h1>\n<p class=\"reason\">{}</p>\n<p><a href=\"/.hfgate/login\">Start again</a></p>\n",
            escape(reason)
        ),
    )
}

fn document(title: &str, body: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\n<body>\n{body}</body></html>\n",
        escape(title)
    )
}

/// An HTML response that no cache keeps and no frame embeds.
pub fn html_response(status: StatusCode, html: String, cookies: &[String]) -> Response<Body> {
    let mut response = Response::new(Body::from(html));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'; form-action 'self'; frame-ancestors 'none'"),
    );
    for cookie in cookies {
        if let Ok(value) = HeaderValue::from_str(cookie) {
            headers.append(header::SET_COOKIE, value);
        }
    }
    response
}

pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert!(sign_in_failed("<script>").contains("&lt;script&gt;"));
    }
}
