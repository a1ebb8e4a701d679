//! Authorization: one Cedar policy set decides who may do which action on which model. Shorthand
//! `[[allow]]`/`[[deny]]` rules compile to Cedar `permit`/`forbid`, so there is one semantics; a
//! `[authz] policy_file` adds policies in the full language. Each route evaluates only the policies that
//! can apply to it.
//!
//! Decisions are cached, keyed by exactly what the policies can read (see `PolicyReads`): the route,
//! action, resource (model or billed organisation) and, for the caller, its kind, issuer and groups, plus
//! the subject, email, client id, claim tags, method and path only when some policy reads them. So
//! callers the policies cannot tell apart share one decision (thousands of users in the same groups pay
//! one Cedar evaluation), and two requests whose answers could differ never do. The analysis is static
//! and conservative: any construct it does not recognise puts every input in the key, and a policy that
//! may read `context.time` (or the whole context) disables the cache.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cedar_policy::{
    Authorizer as CedarAuthorizer, Context, Decision as CedarDecision, Entities, Entity, EntityId, EntityTypeName,
    EntityUid, PolicyId, PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};
use miette::Diagnostic;
use serde_json::Value;

use crate::authn::{Identity, IdentityKind};
use crate::cache::ExpiringCache;
use crate::classify::{Action, Classified, ModelRef};
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

impl crate::cache::ShardKey for CacheKey {
    fn shard_byte(&self) -> u8 {
        self.caller[0] ^ self.route as u8
    }
}

/// Everything a decision depends on, as far as the configured policies can tell (see [`PolicyReads`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    /// The caller's digest ([`caller_digest`]).
    caller: [u8; 32],
    route: usize,
    action: &'static str,
    model: Option<ModelRef>,
    org: Option<String>,
    /// Present only when a policy reads it.
    method: Option<Box<str>>,
    path: Option<Box<str>>,
}

/// The inputs of a Cedar request that some configured policy may read, beyond those always in the cache
/// key: the caller's kind, issuer and groups, the route, the action and the resource. Found once, by a
/// conservative walk of every policy's JSON form (EST): what it does not recognise sets every flag.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct PolicyReads {
    subject: bool,
    email: bool,
    client_id: bool,
    tags: bool,
    method: bool,
    path: bool,
    /// `context.time`, or the whole context: no decision may be cached.
    uncacheable: bool,
}

/// Entity types a literal may name anywhere: their data is a function of the key (groups have no
/// attributes or parents and exist exactly for the caller's groups; actions, models, routes and
/// organisations are the request's own). A user or workload literal may be the principal itself.
const KEYED_ENTITY_TYPES: [&str; 5] =
    ["Hfgate::Group", "Hfgate::Action", "Hfgate::Model", "Hfgate::Route", "Hfgate::Org"];

/// EST operators whose operands are expressions (in `left`, `right`, `arg`, `if`, `then`, `else`, `in`).
#[rustfmt::skip]
const OPERATORS: [&str; 25] = [
    "!", "neg", "==", "!=", "in", "<", "<=", ">", ">=", "&&", "||", "+", "-", "*", "contains", "containsAll",
    "containsAny", "isEmpty", "getTag", "hasTag", ".", "has", "like", "is", "if-then-else",
];

impl PolicyReads {
    fn of(policy: &cedar_policy::Policy) -> PolicyReads {
        let mut reads = PolicyReads::default();
        match policy.to_json() {
            Ok(json) => reads.policy(&json),
            Err(_) => reads.unknown(),
        }
        reads
    }

    fn union(self, other: PolicyReads) -> PolicyReads {
        PolicyReads {
            subject: self.subject || other.subject,
            email: self.email || other.email,
            client_id: self.client_id || other.client_id,
            tags: self.tags || other.tags,
            method: self.method || other.method,
            path: self.path || other.path,
            uncacheable: self.uncacheable || other.uncacheable,
        }
    }

    /// Stored with an identity's digest, which is only valid for the flags it was computed with.
    fn bits(self) -> u8 {
        [self.subject, self.email, self.client_id, self.tags, self.method, self.path, self.uncacheable]
            .iter()
            .enumerate()
            .fold(0, |bits, (n, &on)| bits | (u8::from(on) << n))
    }

    /// The key then determines the whole Cedar request except `context.time`.
    fn everything(&mut self) {
        let uncacheable = self.uncacheable;
        *self = PolicyReads {
            subject: true,
            email: true,
            client_id: true,
            tags: true,
            method: true,
            path: true,
            uncacheable,
        };
    }

    /// A shape this analysis does not know: it could read anything, the time included.
    fn unknown(&mut self) {
        self.everything();
        self.uncacheable = true;
    }

    fn policy(&mut self, json: &Value) {
        // The action and the resource are determined by the key; only a template slot is not.
        for scope in ["action", "resource"] {
            if json.get(scope).is_none_or(|s| has_key(s, "slot")) {
                self.unknown();
            }
        }
        match json.get("principal") {
            Some(scope) => self.principal_scope(scope),
            None => self.unknown(),
        }
        match json.get("conditions").and_then(Value::as_array) {
            Some(conditions) => {
                for condition in conditions {
                    match condition.get("body") {
                        Some(body) => self.expr(body),
                        None => self.unknown(),
                    }
                }
            }
            None => self.unknown(),
        }
    }

    fn principal_scope(&mut self, scope: &Value) {
        let group = |v: Option<&Value>| v.and_then(|v| v.get("entity")).is_some_and(is_group_uid);
        match scope.get("op").and_then(Value::as_str) {
            Some("All") => {}
            Some("==") if scope.get("entity").is_some() => self.subject = true,
            Some("in") if group(Some(scope)) => {}
            Some("is") if scope.get("in").is_none() || group(scope.get("in")) => {}
            _ => self.everything(),
        }
    }

    fn expr(&mut self, expr: &Value) {
        let Some((op, arg)) = expr.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) else {
            return self.unknown();
        };
        let left = arg.get("left");
        let principal = var(left) == Some("principal");
        match (op.as_str(), arg) {
            ("Var", Value::String(name)) => match name.as_str() {
                "principal" => self.everything(),
                "context" => self.unknown(), // the whole context holds the time
                _ => {}                      // action and resource are keyed
            },
            ("Var", _) => self.unknown(),
            ("Value", value) => self.literal(value),
            ("Set", Value::Array(items)) => items.iter().for_each(|item| self.expr(item)),
            ("Record", Value::Object(fields)) => fields.values().for_each(|field| self.expr(field)),
            ("." | "has", _) if matches!(var(left), Some("principal" | "context")) => {
                // `has` may name a path (`principal has a.b`): its first step is what is read.
                let attr = match arg.get("attr") {
                    Some(Value::Array(path)) => path.first().and_then(Value::as_str),
                    other => other.and_then(Value::as_str),
                };
                match (principal, attr) {
                    (true, Some("subject")) => self.subject = true,
                    (true, Some("email")) => self.email = true,
                    (true, Some("client_id")) => self.client_id = true,
                    (true, Some("issuer")) | (false, Some("route" | "issuer")) => {}
                    (false, Some("method")) => self.method = true,
                    (false, Some("path")) => self.path = true,
                    (false, Some("time")) => self.uncacheable = true,
                    (false, None) => self.unknown(),
                    _ => self.everything(),
                }
            }
            ("getTag" | "hasTag", _) if principal => {
                self.tags = true;
                self.operand(arg.get("right"));
            }
            ("in", _) if principal => {
                if !arg.get("right").is_some_and(is_groups) {
                    self.everything();
                }
            }
            ("is", _) if principal => {
                if arg.get("in").is_some_and(|set| !is_groups(set)) {
                    self.everything();
                }
            }
            ("==" | "!=", _)
                if [(left, arg.get("right")), (arg.get("right"), left)].iter().any(|(a, b)| {
                    var(*a) == Some("principal")
                        && b.and_then(|b| b.get("Value")).and_then(|v| v.get("__entity")).is_some()
                }) =>
            {
                self.subject = true;
            }
            (op, Value::Object(operands)) if OPERATORS.contains(&op) => {
                for (name, operand) in operands {
                    if !matches!(name.as_str(), "attr" | "pattern" | "entity_type") {
                        self.expr(operand);
                    }
                }
            }
            // An extension function or method call (`ip(..)`, `.isLoopback()`): its arguments.
            (_, Value::Array(args)) => args.iter().for_each(|a| self.expr(a)),
            _ => self.unknown(),
        }
    }

    fn operand(&mut self, operand: Option<&Value>) {
        match operand {
            Some(operand) => self.expr(operand),
            None => self.unknown(),
        }
    }

    /// A literal value: an entity in it that could be the principal reads the principal.
    fn literal(&mut self, value: &Value) {
        match value {
            Value::Object(fields) => match fields.get("__entity") {
                Some(uid) => {
                    if !uid.get("type").and_then(Value::as_str).is_some_and(|t| KEYED_ENTITY_TYPES.contains(&t)) {
                        self.everything();
                    }
                }
                None => fields.values().for_each(|v| self.literal(v)),
            },
            Value::Array(items) => items.iter().for_each(|v| self.literal(v)),
            _ => {}
        }
    }
}

fn var(expr: Option<&Value>) -> Option<&str> {
    expr?.get("Var")?.as_str()
}

fn has_key(json: &Value, key: &str) -> bool {
    match json {
        Value::Object(fields) => fields.iter().any(|(k, v)| k == key || has_key(v, key)),
        Value::Array(items) => items.iter().any(|v| has_key(v, key)),
        _ => false,
    }
}

fn is_group_uid(uid: &Value) -> bool {
    uid.get("type").and_then(Value::as_str) == Some("Hfgate::Group")
}

/// A group literal or a set of them: `principal in` it asks only about the caller's groups.
fn is_groups(expr: &Value) -> bool {
    let literal = |v: &Value| v.get("__entity").is_some_and(is_group_uid);
    match (expr.get("Value"), expr.get("Set")) {
        (Some(Value::Array(items)), None) => items.iter().all(literal),
        (Some(value), None) => literal(value),
        (None, Some(Value::Array(items))) => items.iter().all(|item| item.get("Value").is_some_and(literal)),
        _ => false,
    }
}

/// The caller as the policies see it: kind, issuer and groups always, the rest only when read. Fields are
/// length-prefixed, so different callers cannot encode alike.
fn caller_digest(reads: PolicyReads, identity: &Identity) -> [u8; 32] {
    let mut context = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    let mut field = |bytes: &[u8]| {
        context.update(&(bytes.len() as u64).to_le_bytes());
        context.update(bytes);
    };
    field(&[reads.bits()]);
    field(match identity.kind {
        IdentityKind::User => b"user",
        IdentityKind::Workload => b"workload",
    });
    field(identity.issuer.as_bytes());
    // Cedar sees the groups as a set of parents.
    let groups: BTreeSet<&str> = identity.groups.iter().map(String::as_str).collect();
    field(&(groups.len() as u64).to_le_bytes());
    groups.iter().for_each(|g| field(g.as_bytes()));
    // Absent claims are empty strings to the policies.
    for (read, value) in [
        (reads.subject, Some(identity.subject.as_str())),
        (reads.email, identity.email.as_deref()),
        (reads.client_id, identity.client_id.as_deref()),
    ] {
        if read {
            field(value.unwrap_or_default().as_bytes());
        }
    }
    if reads.tags {
        // As Cedar builds them: a repeated name keeps its last value.
        let mut tags = BTreeMap::new();
        for (name, value) in &identity.tags {
            tags.insert(name.as_str(), value.as_str());
        }
        field(&(tags.len() as u64).to_le_bytes());
        for (name, value) in tags {
            field(name.as_bytes());
            field(value.as_bytes());
        }
    }
    let mut digest = [0; 32];
    digest.copy_from_slice(context.finish().as_ref());
    digest
}

/// How long a decision is kept. A decision is a function of its key while hfgate runs (the policies are
/// fixed), so this only keeps the cache to the callers seen lately.
const DECISION_TTL: Duration = Duration::from_secs(60);

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
    /// What the policies read: which parts of a question go into the cache key.
    reads: PolicyReads,
    cache: Option<ExpiringCache<CacheKey, Arc<Verdict>, std::hash::RandomState>>,
    engine: CedarAuthorizer,
    /// Cedar evaluations so far (tests observe cache sharing with it).
    evaluations: AtomicU64,
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
                        // Reserved: a policy-file policy of the same id is refused below as a duplicate,
                        // rather than silently standing in for this one.
                        seen_ids.insert(policy.id().to_string());
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
        // Exactly the policies that are evaluated.
        let reads = per_route
            .iter()
            .flat_map(PolicySet::policies)
            .map(PolicyReads::of)
            .fold(PolicyReads::default(), PolicyReads::union);
        let cache = (authz.decision_cache && !reads.uncacheable)
            .then(|| ExpiringCache::new(100_000, std::hash::RandomState::new()));
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
            reads,
            cache,
            engine: CedarAuthorizer::new(),
            evaluations: AtomicU64::new(0),
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

    /// Decisions held by the cache (none when it is off).
    pub fn cached_decisions(&self) -> usize {
        self.cache.as_ref().map_or(0, ExpiringCache::len)
    }

    /// How many times Cedar evaluated a question (decisions not answered by the cache).
    #[doc(hidden)]
    pub fn evaluations(&self) -> u64 {
        self.evaluations.load(Ordering::Relaxed)
    }

    /// May this caller do the classified action on this route?
    pub fn decide(&self, question: &Question<'_>) -> Arc<Verdict> {
        if !self.enabled
            && let Some(verdict) = self.unconfigured.get(question.route.index)
        {
            return verdict.clone();
        }
        self.cached(question, question.classified.action.name(), None)
    }

    /// May this caller bill `org` (a client-sent `X-HF-Bill-To`)?
    pub fn may_bill(&self, question: &Question<'_>, org: &str) -> Arc<Verdict> {
        if !self.enabled {
            return Arc::new(Verdict {
                allow: false,
                policies: Arc::new([]),
                reason: format!("no policy permits billing {}", crate::authn::printable(org)).into(),
                bill_to: None,
            });
        }
        self.cached(question, "bill", Some(org))
    }

    fn cached(&self, question: &Question<'_>, action: &'static str, org: Option<&str>) -> Arc<Verdict> {
        let Some(cache) = &self.cache else {
            return Arc::new(self.evaluate(question, action, org));
        };
        let key = CacheKey {
            caller: self.caller(question.identity),
            route: question.route.index,
            action,
            // Billing asks about the organisation, whatever the model.
            model: if org.is_none() { question.classified.model.clone() } else { None },
            org: org.map(str::to_string),
            method: self.reads.method.then(|| question.method.into()),
            path: self.reads.path.then(|| question.path.into()),
        };
        if let Some(hit) = cache.get(&key) {
            return hit;
        }
        let verdict = Arc::new(self.evaluate(question, action, org));
        cache.insert(key, verdict.clone(), DECISION_TTL);
        verdict
    }

    /// The caller's digest under this policy set, computed once per identity. An identity shared with
    /// another policy set (across a reload) that reads other fields gets its own, not stored.
    fn caller(&self, identity: &Identity) -> [u8; 32] {
        let bits = self.reads.bits();
        match identity.policy_key.get_or_init(|| (bits, caller_digest(self.reads, identity))) {
            (stored, digest) if *stored == bits => *digest,
            _ => caller_digest(self.reads, identity),
        }
    }

    fn evaluate(&self, question: &Question<'_>, action: &str, org: Option<&str>) -> Verdict {
        self.evaluations.fetch_add(1, Ordering::Relaxed);
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
        let settings = settings_with(std::path::Path::new("t.toml"), "[[allow]]\ngroups = [\"ml\"]\n");
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

    fn reads_of(text: &str) -> PolicyReads {
        let policies = parse_policies(text, "t").expect("policies parse");
        assert!(!policies.is_empty());
        policies.iter().map(PolicyReads::of).fold(PolicyReads::default(), PolicyReads::union)
    }

    /// One issuer and one `router` route billed to `acme`, plus `extra` (rules, an `[authz]` table).
    fn settings_with(source: &std::path::Path, extra: &str) -> Settings {
        let text = format!(
            r#"
[[issuer]]
name = "corp"
issuer = "https://idp.example"
audiences = ["hfgate"]

[[route]]
name = "llm"
path = "/llm/"
upstream = "http://127.0.0.1:9"
api = "router"
bill_to = "acme"
{extra}"#
        );
        crate::config::parse(source, &text).expect("config")
    }

    fn reads_of_rules(rules: &str) -> PolicyReads {
        let settings = settings_with(std::path::Path::new("t.toml"), rules);
        Authorizer::new(&settings).expect("policies").reads
    }

    const NOTHING: PolicyReads = PolicyReads {
        subject: false,
        email: false,
        client_id: false,
        tags: false,
        method: false,
        path: false,
        uncacheable: false,
    };
    const EVERYTHING: PolicyReads = PolicyReads {
        subject: true,
        email: true,
        client_id: true,
        tags: true,
        method: true,
        path: true,
        uncacheable: false,
    };

    #[test]
    fn shorthand_rules_on_groups_routes_models_and_actions_read_no_caller_field() {
        let rules = r#"
[[allow]]
groups = ["ml", "ops"]
routes = ["llm"]
models = ["meta-llama/*"]
actions = ["infer", "list"]
issuers = ["corp"]
bill_to = "ml-org"

[[deny]]
groups = ["interns"]
datasets = ["private/*"]
"#;
        assert_eq!(reads_of_rules(rules), NOTHING);
        let users = reads_of_rules("[[deny]]\nusers = [\"alice\"]\n");
        assert_eq!(users, PolicyReads { subject: true, email: true, ..NOTHING });
    }

    #[test]
    fn policy_file_reads_are_found() {
        let cases = [
            (
                r#"forbid(principal, action, resource) when { context.path like "*/admin*" };"#,
                PolicyReads { path: true, ..NOTHING },
            ),
            (
                r#"permit(principal, action, resource) when { context.method == "POST" };"#,
                PolicyReads { method: true, ..NOTHING },
            ),
            (
                r#"permit(principal, action, resource) when { context has method };"#,
                PolicyReads { method: true, ..NOTHING },
            ),
            (
                r#"permit(principal, action, resource) when { principal.hasTag("x") && principal.getTag("x") like "acme/*" };"#,
                PolicyReads { tags: true, ..NOTHING },
            ),
            (
                r#"permit(principal == Hfgate::User::"alice", action, resource);"#,
                PolicyReads { subject: true, ..NOTHING },
            ),
            (
                r#"permit(principal, action, resource) when { principal == Hfgate::User::"alice" };"#,
                PolicyReads { subject: true, ..NOTHING },
            ),
            (
                r#"permit(principal, action, resource) when { Hfgate::Workload::"bot" != principal };"#,
                PolicyReads { subject: true, ..NOTHING },
            ),
            (
                r#"permit(principal, action, resource) when { principal.client_id == "bot" };"#,
                PolicyReads { client_id: true, ..NOTHING },
            ),
            (
                r#"permit(principal is Hfgate::User in Hfgate::Group::"ml", action == Hfgate::Action::"infer", resource is Hfgate::Model)
                   when { principal in [Hfgate::Group::"a", Hfgate::Group::"b"] && principal is Hfgate::Workload in Hfgate::Group::"c"
                          && principal.issuer == "corp" && context.issuer == "corp" && context.route == "llm"
                          && resource.id like "acme/*" && ip("10.0.0.1").isLoopback() && Hfgate::Group::"a" != Hfgate::Group::"b" };"#,
                NOTHING,
            ),
            // A user literal may be the principal: reading it reads the principal.
            (r#"permit(principal, action, resource) when { Hfgate::User::"alice".email == "a@x" };"#, EVERYTHING),
            (
                r#"permit(principal, action, resource) when { [Hfgate::User::"alice"].contains(Hfgate::User::"bob") };"#,
                EVERYTHING,
            ),
            (r#"permit(principal in Hfgate::User::"alice", action, resource);"#, EVERYTHING),
            (r#"permit(principal, action, resource) when { principal in Hfgate::User::"alice" };"#, EVERYTHING),
            (
                r#"permit(principal, action, resource) when { [principal].contains(Hfgate::User::"alice") };"#,
                EVERYTHING,
            ),
            (r#"permit(principal, action, resource) when { {"Var": principal}.Var == resource };"#, EVERYTHING),
            (r#"permit(principal, action, resource) when { principal has nickname };"#, EVERYTHING),
            (
                r#"permit(principal, action, resource) when { principal.email like "*@acme.example" };"#,
                PolicyReads { email: true, ..NOTHING },
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(reads_of(text), expected, "{text}");
        }
    }

    #[test]
    fn anything_that_may_read_the_time_disables_the_cache() {
        for text in [
            r#"permit(principal, action, resource) when { context.time < 1 };"#,
            r#"permit(principal, action, resource) when { context["time"] < 1 };"#,
            r#"permit(principal, action, resource) when { context has time };"#,
            r#"permit(principal, action, resource) when { context == context };"#,
            r#"permit(principal, action, resource) when { [context].isEmpty() };"#,
        ] {
            assert!(reads_of(text).uncacheable, "{text}");
        }
        assert!(!reads_of(r#"permit(principal, action, resource) when { context.path == "/time" };"#).uncacheable);
        let everything = reads_of(r#"permit(principal, action, resource) when { context == context };"#);
        assert_eq!(everything, PolicyReads { uncacheable: true, ..EVERYTHING });
    }

    /// Cedar keeps the last of repeated tag names; the caller digest must see the tags the same way.
    #[test]
    fn the_caller_digest_sees_tags_as_cedar_does() {
        let tagged = |tags: &[(&str, &str)]| {
            let claims = serde_json::json!({"sub": "alice", "groups": ["ml", "ml"]});
            let mut identity =
                identity_from_claims(&crate::authn::claims::tests::issuer(), claims.as_object().expect("object"), 0);
            identity.tags = tags.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            identity
        };
        let reads = PolicyReads { tags: true, ..NOTHING };
        let digest = |tags: &[(&str, &str)]| caller_digest(reads, &tagged(tags));
        assert_eq!(digest(&[("a", "1"), ("b", "2")]), digest(&[("b", "2"), ("a", "1")]));
        assert_eq!(digest(&[("a", "x"), ("a", "2")]), digest(&[("a", "2")]));
        assert_ne!(digest(&[("a", "1"), ("a", "2")]), digest(&[("a", "2"), ("a", "1")]));
        assert_ne!(digest(&[("ab", "c")]), digest(&[("a", "bc")]));
        let entity = Entity::new_with_tags(
            EntityUid::from_type_name_and_id(
                EntityTypeName::from_str("Hfgate::User").expect("type"),
                EntityId::new("a"),
            ),
            HashMap::new(),
            HashSet::new(),
            [("a", "1"), ("a", "2")].map(|(n, v)| (n.to_string(), RestrictedExpression::new_string(v.to_string()))),
        )
        .expect("entity");
        assert_eq!(entity.tag("a").and_then(Result::ok), Some(cedar_policy::EvalResult::String("2".into())));
        // Groups are a set to Cedar: repeats and order do not matter.
        let mut other = tagged(&[]);
        other.groups = vec!["ml".into()];
        assert_eq!(caller_digest(NOTHING, &tagged(&[])), caller_digest(NOTHING, &other));
        other.subject = "bob".into();
        assert_eq!(caller_digest(NOTHING, &tagged(&[])), caller_digest(NOTHING, &other));
        assert_ne!(
            caller_digest(PolicyReads { subject: true, ..NOTHING }, &tagged(&[])),
            caller_digest(PolicyReads { subject: true, ..NOTHING }, &other)
        );
    }

    #[test]
    fn a_policy_file_cannot_take_the_id_of_a_route_bill_policy() {
        let dir = std::env::temp_dir().join(format!("hfgate-authz-reserved-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("p.cedar");
        std::fs::write(&file, "@id(\"route[0].bill_to\")\npermit (principal, action, resource);\n").expect("write");
        let settings = settings_with(&dir.join("t.toml"), &format!("[authz]\npolicy_file = \"{}\"\n", file.display()));
        let issues = Authorizer::new(&settings).expect_err("a reserved id is refused");
        assert!(issues.iter().any(|i| i.message.contains("duplicate policy id route[0].bill_to")), "{issues:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
