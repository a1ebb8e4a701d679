//! Authorization: one Cedar policy set decides who may do which action on which model. Shorthand
//! `[[allow]]`/`[[deny]]` rules compile to Cedar `permit`/`forbid`, so there is one semantics; a
//! `[authz] policy_file` adds policies in the full language. Each route evaluates only the policies that
//! can apply to it, and decisions are cached per (token, route, action, model).

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cedar_policy::{
    Authorizer as CedarAuthorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use moka::sync::Cache;

use crate::authn::{Identity, IdentityKind};
use crate::classify::{Action, Classified};
use crate::config::{ConfigIssue, RuleEffect, RuleSettings, Settings};
use crate::route::Route;

/// The schema user policies are validated against (shipped with hfgate).
pub const SCHEMA: &str = include_str!("authz/schema.cedarschema");

/// The outcome of one authorization question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub allow: bool,
    /// Ids of the determining policies (`allow[0]`, `deny[1]`, or the file's `@id`s). Shared with the
    /// audit record of every request the verdict decides, hence reference-counted.
    pub policies: Arc<[String]>,
    /// For the caller and the audit: names the action and the model, never policy text.
    pub reason: Arc<str>,
    /// The organisation to bill when allowed: the first permitting rule's `bill_to`, else the route's.
    pub bill_to: Option<String>,
}

/// What is being asked.
#[derive(Debug)]
pub struct Question<'a> {
    pub identity: &'a Identity,
    pub route: &'a Route,
    pub method: &'a str,
    pub path: &'a str,
    pub classified: &'a Classified,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    token: [u8; 32],
    route: usize,
    action: &'static str,
    model: Option<crate::classify::ModelRef>,
    org: Option<String>,
}

pub struct Authorizer {
    /// False when no rule and no policy file exist: authentication alone decides.
    enabled: bool,
    per_route: Vec<PolicySet>,
    /// Rule id → bill_to, in config order.
    bill_to_rules: Vec<(String, String)>,
    route_bill_to: Vec<Option<String>>,
    /// Per route, the answer when no policy is configured (built once, shared by every request).
    unconfigured: Vec<Arc<Verdict>>,
    policy_hash: Arc<str>,
    cache: Option<Cache<CacheKey, Arc<Verdict>>>,
    engine: CedarAuthorizer,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").field("enabled", &self.enabled).field("policy_hash", &self.policy_hash).finish()
    }
}

fn schema() -> Result<Schema, String> {
    Schema::from_cedarschema_str(SCHEMA).map(|(schema, _)| schema).map_err(|e| e.to_string())
}

/// A Cedar string literal; config validation already refused quotes, backslashes and control characters.
fn lit(text: &str) -> String {
    format!("\"{text}\"")
}

fn any_of<'a>(items: impl IntoIterator<Item = &'a String>, one: impl Fn(&str) -> String) -> Option<String> {
    let parts: Vec<String> = items.into_iter().map(|s| one(s)).collect();
    (!parts.is_empty()).then(|| format!("({})", parts.join(" || ")))
}

/// Conditions on who and where (shared by a rule's main policy and its bill policy).
fn principal_conditions(rule: &RuleSettings) -> Vec<String> {
    [
        any_of(&rule.groups, |g| format!("principal in Hfgate::Group::{}", lit(g))),
        any_of(&rule.users, |u| format!("principal.subject == {0} || principal.email == {0}", lit(u))),
        any_of(&rule.issuers, |i| format!("context.issuer == {}", lit(i))),
        any_of(&rule.routes, |r| format!("context.route == {}", lit(r))),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// The Cedar text of one shorthand rule: `permit`/`forbid` with exactly the conditions it names.
pub fn compile_rule(rule: &RuleSettings) -> String {
    let effect = match rule.effect {
        RuleEffect::Allow => "permit",
        RuleEffect::Deny => "forbid",
    };
    let actions: Vec<&str> = if rule.actions.is_empty() {
        Action::ALL.iter().map(|a| a.name()).collect()
    } else {
        rule.actions.iter().map(String::as_str).collect()
    };
    let action = format!(
        "action in [{}]",
        actions.iter().map(|a| format!("Hfgate::Action::{}", lit(a))).collect::<Vec<_>>().join(", ")
    );
    let mut conditions = principal_conditions(rule);
    let resources: Vec<String> = [(&rule.models, "model"), (&rule.datasets, "dataset"), (&rule.spaces, "space")]
        .into_iter()
        .filter(|(globs, _)| !globs.is_empty())
        .map(|(globs, repo_type)| {
            // Hub repo ids are case-insensitive: policies see them lowercased, so `Meta-Llama/x` cannot
            // slip past a rule on `meta-llama/*`.
            let ids = globs
                .iter()
                .map(|g| format!("resource.id like {}", lit(&g.to_ascii_lowercase())))
                .collect::<Vec<_>>()
                .join(" || ");
            format!("(resource is Hfgate::Model && resource.repo_type == {} && ({ids}))", lit(repo_type))
        })
        .collect();
    if !resources.is_empty() {
        conditions.push(format!("({})", resources.join(" || ")));
    }
    let mut text = format!("@id({})\n{effect} (principal, {action}, resource)", lit(&rule.id));
    if !conditions.is_empty() {
        text.push_str(&format!("\nwhen {{ {} }}", conditions.join(" && ")));
    }
    text.push_str(";\n");
    if let (RuleEffect::Allow, Some(org)) = (rule.effect, &rule.bill_to) {
        // The same principals may name this organisation in X-HF-Bill-To.
        text.push_str(&format!(
            "@id({})\npermit (principal, action == Hfgate::Action::\"bill\", resource == Hfgate::Org::{})",
            lit(&format!("{}.bill_to", rule.id)),
            lit(org)
        ));
        let who = principal_conditions(rule);
        if !who.is_empty() {
            text.push_str(&format!("\nwhen {{ {} }}", who.join(" && ")));
        }
        text.push_str(";\n");
    }
    text
}

fn route_bill_policy(route_index: usize, route: &str, org: &str) -> String {
    format!(
        "@id({})\npermit (principal, action == Hfgate::Action::\"bill\", resource == Hfgate::Org::{})\nwhen {{ context.route == {} }};\n",
        lit(&format!("route[{route_index}].bill_to")),
        lit(org),
        lit(route)
    )
}

/// Parses Cedar text, renaming each policy to its `@id` (or `prefix#N`). Errors carry their byte offset.
fn parse_policies(text: &str, prefix: &str) -> Result<Vec<cedar_policy::Policy>, Vec<(usize, String)>> {
    let set = PolicySet::from_str(text).map_err(|errors| {
        errors
            .iter()
            .map(|e| {
                let offset = e.labels().and_then(|mut l| l.next()).map(|l| l.offset()).unwrap_or(0);
                (offset, e.to_string())
            })
            .collect::<Vec<_>>()
    })?;
    if set.templates().next().is_some() {
        return Err(vec![(0, "policy templates are not supported".to_string())]);
    }
    let mut policies: Vec<_> = set.policies().cloned().collect();
    // Parsed policies are named policy0, policy1... in source order.
    policies.sort_by_key(|p| p.id().to_string().trim_start_matches("policy").parse::<usize>().unwrap_or(usize::MAX));
    Ok(policies
        .into_iter()
        .enumerate()
        .map(|(n, p)| {
            let id = p.annotation("id").map(str::to_string).unwrap_or_else(|| format!("{prefix}#{n}"));
            p.new_id(PolicyId::new(id))
        })
        .collect())
}

fn line_in(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1
}

impl Authorizer {
    /// Compiles and validates every policy. Problems come back as config issues with file and line:
    /// a shorthand rule's `[[allow]]`/`[[deny]]` line, or the policy file's own line.
    pub fn new(settings: &Settings) -> Result<Authorizer, Vec<ConfigIssue>> {
        let authz = &settings.authz;
        let config_file = settings.source.display().to_string();
        let issue = |file: &str, line: usize, key: &str, message: String| ConfigIssue {
            file: file.to_string(),
            line,
            key: key.to_string(),
            message,
        };
        let schema = schema().map_err(|e| vec![issue(&config_file, 1, "authz", format!("built-in schema: {e}"))])?;
        let mut issues = Vec::new();
        let mut hash_input = String::new();

        // Shorthand rules, each parsed on its own so an error points at its table.
        let mut rule_policies: Vec<(&RuleSettings, Vec<cedar_policy::Policy>)> = Vec::new();
        for rule in &authz.rules {
            let text = compile_rule(rule);
            hash_input.push_str(&text);
            match parse_policies(&text, &rule.id) {
                Ok(policies) => rule_policies.push((rule, policies)),
                Err(errors) => {
                    for (_, message) in errors {
                        issues.push(issue(&config_file, rule.line, &rule.id, message));
                    }
                }
            }
        }
        let (file_name, file_text) = match &authz.policy_file {
            Some(file) => (file.path.display().to_string(), file.text.as_str()),
            None => (String::new(), ""),
        };
        hash_input.push_str(file_text);
        let file_policies = if authz.policy_file.is_some() {
            let short = std::path::Path::new(&file_name)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            match parse_policies(file_text, &short) {
                Ok(policies) => policies,
                Err(errors) => {
                    for (offset, message) in errors {
                        issues.push(issue(&file_name, line_in(file_text, offset), "policy", message));
                    }
                    Vec::new()
                }
            }
        } else {
            Vec::new()
        };

        let route_bill: Vec<Option<String>> = settings.routes.iter().map(|r| r.bill_to.clone()).collect();
        let mut all = PolicySet::new();
        let mut per_route = Vec::with_capacity(settings.routes.len());
        let mut seen_ids = HashSet::new();
        for (index, route) in settings.routes.iter().enumerate() {
            let mut set = PolicySet::new();
            for policy in &file_policies {
                let _ = set.add(policy.clone());
            }
            for (rule, policies) in &rule_policies {
                if rule.routes.is_empty() || rule.routes.contains(&route.name) {
                    for policy in policies {
                        let _ = set.add(policy.clone());
                    }
                }
            }
            if let Some(org) = &route.bill_to {
                let text = route_bill_policy(index, &route.name, org);
                hash_input.push_str(&text);
                if let Ok(policies) = parse_policies(&text, "route") {
                    for policy in policies {
                        let _ = set.add(policy.clone());
                        let _ = all.add(policy);
                    }
                }
            }
            per_route.push(set);
        }
        for policy in file_policies.iter().chain(rule_policies.iter().flat_map(|(_, p)| p.iter())) {
            if !seen_ids.insert(policy.id().to_string()) {
                issues.push(issue(&file_name, 1, "policy", format!("duplicate policy id {}", policy.id())));
                continue;
            }
            let _ = all.add(policy.clone());
        }

        // Validate everything against the schema, in strict mode.
        let rule_lines: HashMap<String, usize> =
            authz.rules.iter().flat_map(|r| [(r.id.clone(), r.line), (format!("{}.bill_to", r.id), r.line)]).collect();
        let result = Validator::new(schema.clone()).validate(&all, ValidationMode::Strict);
        for error in result.validation_errors() {
            let id = error.policy_id().to_string();
            match rule_lines.get(&id) {
                Some(line) => issues.push(issue(&config_file, *line, &id, error.to_string())),
                None => {
                    let offset = error.labels().and_then(|mut l| l.next()).map(|l| l.offset()).unwrap_or(0);
                    issues.push(issue(
                        &file_name,
                        line_in(file_text, offset),
                        &format!("policy {id}"),
                        error.to_string(),
                    ));
                }
            }
        }
        if !issues.is_empty() {
            return Err(issues);
        }

        let enabled = !authz.rules.is_empty() || authz.policy_file.is_some();
        let time_dependent = hash_input.contains("context.time");
        let cache = (authz.decision_cache && !time_dependent)
            .then(|| Cache::builder().max_capacity(100_000).time_to_live(Duration::from_secs(60)).build());
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, hash_input.as_bytes());
        let policy_hash: String = digest.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
        let bill_to_rules =
            authz.rules.iter().filter_map(|r| r.bill_to.as_ref().map(|org| (r.id.clone(), org.clone()))).collect();
        let unconfigured = route_bill
            .iter()
            .map(|bill_to| {
                Arc::new(Verdict {
                    allow: true,
                    policies: Arc::new([]),
                    reason: "no policies configured".into(),
                    bill_to: bill_to.clone(),
                })
            })
            .collect();
        Ok(Authorizer {
            enabled,
            unconfigured,
            per_route,
            bill_to_rules,
            route_bill_to: route_bill,
            policy_hash: format!("sha256:{policy_hash}").into(),
            cache,
            engine: CedarAuthorizer::new(),
        })
    }

    /// Whether any policy is configured.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// A short digest of the compiled policy set, recorded with every decision.
    pub fn policy_hash(&self) -> &Arc<str> {
        &self.policy_hash
    }

    /// May this caller do the classified action on this route?
    pub fn decide(&self, token: [u8; 32], question: &Question<'_>) -> Arc<Verdict> {
        let action = question.classified.action;
        if !self.enabled
            && let Some(verdict) = self.unconfigured.get(question.route.index)
        {
            return verdict.clone();
        }
        let key = CacheKey {
            token,
            route: question.route.index,
            action: action.name(),
            model: question.classified.model.clone(),
            org: None,
        };
        self.cached(key, || self.evaluate(question, action.name(), None))
    }

    /// May this caller bill `org` (a client-sent `X-HF-Bill-To`)?
    pub fn may_bill(&self, token: [u8; 32], question: &Question<'_>, org: &str) -> Arc<Verdict> {
        if !self.enabled {
            return Arc::new(Verdict {
                allow: false,
                policies: Arc::new([]),
                reason: format!("no policy permits billing {}", crate::authn::printable(org)).into(),
                bill_to: None,
            });
        }
        let key =
            CacheKey { token, route: question.route.index, action: "bill", model: None, org: Some(org.to_string()) };
        self.cached(key, || self.evaluate(question, "bill", Some(org)))
    }

    fn cached(&self, key: CacheKey, evaluate: impl FnOnce() -> Verdict) -> Arc<Verdict> {
        match &self.cache {
            Some(cache) => {
                if let Some(hit) = cache.get(&key) {
                    return hit;
                }
                let verdict = Arc::new(evaluate());
                cache.insert(key, verdict.clone());
                verdict
            }
            None => Arc::new(evaluate()),
        }
    }

    fn evaluate(&self, question: &Question<'_>, action: &str, org: Option<&str>) -> Verdict {
        let target = match (org, &question.classified.model) {
            (Some(org), _) => format!("billing {}", crate::authn::printable(org)),
            (None, Some(model)) => format!("{action} on {}", model.id),
            (None, None) => format!("{action} on route {}", question.route.name),
        };
        let deny =
            |reason: String| Verdict { allow: false, policies: Arc::new([]), reason: reason.into(), bill_to: None };
        let Some(set) = self.per_route.get(question.route.index) else {
            return deny(format!("no policy permits {target}"));
        };
        let request = match self.request(question, action, org, None) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "could not build the authorization request; refusing");
                return deny(format!("no policy permits {target}"));
            }
        };
        let response = self.engine.is_authorized(&request.0, set, &request.1);
        for error in response.diagnostics().errors() {
            tracing::warn!(%error, "a policy failed to evaluate and was skipped");
        }
        let policies: Vec<String> = response.diagnostics().reason().map(PolicyId::to_string).collect();
        if response.decision() == CedarDecision::Allow {
            let bill_to = self
                .bill_to_rules
                .iter()
                .find(|(id, _)| policies.iter().any(|p| p == id))
                .map(|(_, org)| org.clone())
                .or_else(|| self.route_bill_to.get(question.route.index).cloned().flatten());
            Verdict {
                allow: true,
                reason: format!("permitted by {}", policies.join(", ")).into(),
                policies: policies.into(),
                bill_to,
            }
        } else if policies.is_empty() {
            deny(format!("no policy permits {target}"))
        } else {
            Verdict {
                allow: false,
                reason: format!("{} forbids {target}", policies.join(", ")).into(),
                policies: policies.into(),
                bill_to: None,
            }
        }
    }

    /// The Cedar request and entities for a question. Serving passes no schema: the shapes built here are
    /// fixed, and checking them against the schema on every evaluation cost a third of a decision; the
    /// tests build every shape with the schema to prove they conform.
    fn request(
        &self,
        q: &Question<'_>,
        action: &str,
        org: Option<&str>,
        schema: Option<&Schema>,
    ) -> Result<(Request, Entities), String> {
        let uid = |kind: &str, id: &str| -> Result<EntityUid, String> {
            let kind = EntityTypeName::from_str(kind).map_err(|e| e.to_string())?;
            Ok(EntityUid::from_type_name_and_id(kind, EntityId::new(id)))
        };
        let identity = q.identity;
        let principal_type = match identity.kind {
            IdentityKind::User => "Hfgate::User",
            IdentityKind::Workload => "Hfgate::Workload",
        };
        let principal = uid(principal_type, &identity.subject)?;
        let mut groups = HashSet::new();
        let mut entities = Vec::new();
        for group in &identity.groups {
            let g = uid("Hfgate::Group", group)?;
            entities.push(Entity::new_no_attrs(g.clone(), HashSet::new()));
            groups.insert(g);
        }
        let s = |v: &str| RestrictedExpression::new_string(v.to_string());
        let attrs = HashMap::from([
            ("subject".to_string(), s(&identity.subject)),
            ("email".to_string(), s(identity.email.as_deref().unwrap_or(""))),
            ("issuer".to_string(), s(&identity.issuer)),
            ("client_id".to_string(), s(identity.client_id.as_deref().unwrap_or(""))),
        ]);
        let tags = identity.tags.iter().map(|(name, value)| (name.clone(), s(value)));
        entities.push(Entity::new_with_tags(principal.clone(), attrs, groups, tags).map_err(|e| e.to_string())?);
        let resource = match (org, &q.classified.model) {
            (Some(org), _) => {
                let r = uid("Hfgate::Org", org)?;
                entities.push(Entity::new_no_attrs(r.clone(), HashSet::new()));
                r
            }
            (None, Some(model)) => {
                let id = model.id.to_ascii_lowercase();
                let r = uid("Hfgate::Model", &id)?;
                let attrs = HashMap::from([
                    ("id".to_string(), s(&id)),
                    ("repo_type".to_string(), s(model.repo_type.name())),
                    ("revision".to_string(), s(model.revision.as_deref().unwrap_or(""))),
                    ("provider".to_string(), s(model.provider.as_deref().unwrap_or(""))),
                ]);
                entities.push(Entity::new(r.clone(), attrs, HashSet::new()).map_err(|e| e.to_string())?);
                r
            }
            (None, None) => {
                let r = uid("Hfgate::Route", &q.route.name)?;
                entities.push(Entity::new_no_attrs(r.clone(), HashSet::new()));
                r
            }
        };
        let context = Context::from_pairs([
            ("route".to_string(), s(&q.route.name)),
            ("method".to_string(), s(q.method)),
            ("path".to_string(), s(q.path)),
            ("issuer".to_string(), s(&identity.issuer)),
            ("time".to_string(), RestrictedExpression::new_long(crate::jose::unix_now() as i64)),
        ])
        .map_err(|e| e.to_string())?;
        let action = uid("Hfgate::Action", action)?;
        let request = Request::new(principal, action, resource, context, schema).map_err(|e| e.to_string())?;
        let entities = Entities::from_entities(entities, schema).map_err(|e| e.to_string())?;
        Ok((request, entities))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authn::claims::identity_from_claims;
    use crate::classify::{Classified, ModelRef};
    use crate::route::RouteTable;

    /// Serving builds entities without the schema, so action groups (which only the schema holds) would
    /// silently stop matching: the schema declares none.
    #[test]
    fn the_schema_declares_no_action_groups() {
        let declarations: String =
            SCHEMA.lines().filter(|line| !line.trim_start().starts_with("//")).collect::<Vec<_>>().join("\n");
        assert!(!declarations.contains("memberOf"), "action groups need entities built with the schema");
    }

    /// Every request shape hfgate builds (user and workload; model, route and org resources; with and
    /// without optional claims) conforms to the shipped schema, so serving may skip the check.
    #[test]
    fn every_request_shape_conforms_to_the_schema() {
        let text = r#"
[[issuer]]
name = "corp"
issuer = "https://idp.example"
audiences = ["hfgate"]

[[route]]
name = "llm"
path = "/llm/"
upstream = "http://127.0.0.1:9"
api = "router"

[[allow]]
groups = ["ml"]
"#;
        let settings = crate::config::parse(std::path::Path::new("t.toml"), text).expect("config");
        let authz = Authorizer::new(&settings).expect("policies");
        let routes = RouteTable::new(&settings.routes);
        let route = routes.find("/llm/x").expect("route");
        let schema = schema().expect("the shipped schema parses");
        let issuer = crate::authn::claims::tests::issuer();
        let claims = [
            serde_json::json!({"sub": "alice", "email": "a@x", "groups": ["ml", "ops"]}),
            serde_json::json!({"sub": "bot", "client_id": "bot"}),
        ];
        let model = ModelRef {
            id: "Org/Model".into(),
            revision: Some("refs/pr/1".into()),
            provider: Some("together".into()),
            repo_type: crate::classify::RepoType::Dataset,
        };
        let shapes = [
            Classified { action: Action::Infer, model: Some(model) },
            Classified { action: Action::List, model: None },
        ];
        for claims in &claims {
            let identity = identity_from_claims(&issuer, claims.as_object().expect("object"), 0);
            for classified in &shapes {
                let question = Question { identity: &identity, route, method: "POST", path: "/llm/x", classified };
                for (action, org) in [(classified.action.name(), None), ("bill", Some("acme"))] {
                    let built = authz.request(&question, action, org, Some(&schema));
                    assert!(built.is_ok(), "{claims} {action} {org:?}: {:?}", built.err());
                }
            }
        }
    }
}
