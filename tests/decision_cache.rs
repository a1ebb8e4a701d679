//! The decision cache is keyed by what the policies can read: callers they cannot tell apart share one
//! Cedar evaluation, and requests they could answer differently (another path, method, subject or claim
//! tag) never share one.

mod common;

use std::path::Path;

use hfgate::authn::Identity;
use hfgate::authn::claims::identity_from_claims;
use hfgate::authz::{Authorizer, Question};
use hfgate::classify::{Action, Classified};
use hfgate::config::Settings;
use hfgate::route::RouteTable;
use serde_json::{Value, json};

struct Gate {
    settings: Settings,
    authz: Authorizer,
    routes: RouteTable,
}

/// One generic route, `/gen/`, with these `[[allow]]`/`[[deny]]` rules and this policy file.
fn gate(rules: &str, policy_file: Option<&str>) -> Gate {
    let mut text = format!(
        r#"
[[issuer]]
name = "corp"
issuer = "https://idp.example"
audiences = ["hfgate"]

[[route]]
name = "gen"
path = "/gen/"
upstream = "http://127.0.0.1:9"
api = "generic"
{rules}"#
    );
    let dir = common::temp_dir("decision-cache");
    let file = dir.join("policies.cedar");
    if let Some(policies) = policy_file {
        std::fs::write(&file, policies).expect("policy file");
        text.push_str(&format!("\n[authz]\npolicy_file = \"{}\"\n", file.display()));
    }
    let settings = hfgate::config::parse(Path::new("hfgate.toml"), &text);
    let _ = std::fs::remove_dir_all(&dir);
    let settings = settings.expect("config");
    let authz = Authorizer::new(&settings).expect("policies");
    let routes = RouteTable::new(&settings.routes);
    Gate { settings, authz, routes }
}

impl Gate {
    fn identity(&self, claims: Value) -> Identity {
        identity_from_claims(&self.settings.issuers[0], claims.as_object().expect("claims object"), 0)
    }

    fn allows(&self, identity: &Identity, method: &str, path: &str) -> bool {
        let route = self.routes.find(path).expect("route");
        let classified = Classified { action: Action::Read, model: None };
        self.authz.decide(&Question { identity, route, method, path, classified: &classified }).allow
    }
}

/// A policy reading `context.path` or `context.method` gets a decision for this path and method, never
/// one cached for another request of the same caller.
#[test]
fn path_and_method_are_in_the_key_when_a_policy_reads_them() {
    let cases = [
        (r#"forbid(principal, action, resource) when { context.path like "*/admin*" };"#, ("GET", "/gen/admin/y")),
        (r#"forbid(principal, action, resource) when { context.method == "DELETE" };"#, ("DELETE", "/gen/x")),
    ];
    for (forbid, (method, path)) in cases {
        let gate = gate("", Some(&format!("permit(principal in Hfgate::Group::\"ml\", action, resource);\n{forbid}")));
        let alice = gate.identity(json!({"sub": "alice", "groups": ["ml"]}));
        assert!(gate.allows(&alice, "GET", "/gen/x"), "{forbid}");
        assert!(!gate.allows(&alice, method, path), "{forbid}: {method} {path} must be refused");
        assert!(gate.allows(&alice, "GET", "/gen/x"), "{forbid}");
        // The cache is on: the repeated request was answered from it.
        assert_eq!(gate.authz.evaluations(), 2, "{forbid}");
    }
}

/// Thousands of users share a few groups: a policy on groups alone evaluates once per group set.
#[test]
fn callers_the_policies_cannot_tell_apart_share_one_decision() {
    let gate = gate("[[allow]]\ngroups = [\"ml\"]\n", None);
    let alice = gate.identity(json!({"sub": "alice", "email": "alice@x", "groups": ["ml", "ops"]}));
    let bob = gate.identity(json!({"sub": "bob", "email": "bob@x", "groups": ["ops", "ml", "ml"], "team": "blue"}));
    let carol = gate.identity(json!({"sub": "carol", "groups": ["ops"]}));
    assert!(gate.allows(&alice, "GET", "/gen/x"));
    assert_eq!(gate.authz.evaluations(), 1);
    // Another subject, email, claims, path and method; the same issuer, kind and groups: the cached answer.
    assert!(gate.allows(&bob, "POST", "/gen/other"));
    assert_eq!(gate.authz.evaluations(), 1);
    // Other groups: asked anew.
    assert!(!gate.allows(&carol, "GET", "/gen/x"));
    assert_eq!(gate.authz.evaluations(), 2);
    // What the metrics report: two decisions held, one per group set.
    assert_eq!(gate.authz.cached_decisions(), 2);
}

/// Groups repeated in a token are one group to Cedar too (they share a key with the set).
#[test]
fn repeated_groups_are_one_group_to_the_policies() {
    let gate = gate("[[allow]]\ngroups = [\"ml\"]\n\n[authz]\ndecision_cache = false\n", None);
    let bob = gate.identity(json!({"sub": "bob", "groups": ["ml", "ml"]}));
    assert!(gate.allows(&bob, "GET", "/gen/x"));
    assert!(gate.allows(&bob, "GET", "/gen/x"));
    assert_eq!(gate.authz.evaluations(), 2, "decision_cache = false evaluates every time");
    assert_eq!(gate.authz.cached_decisions(), 0);
}

/// A `users = [...]` rule reads the subject and email: callers in the same groups are then told apart.
#[test]
fn a_users_rule_keeps_callers_apart() {
    let gate = gate("[[allow]]\ngroups = [\"ml\"]\n\n[[deny]]\nusers = [\"alice\"]\n", None);
    let alice = gate.identity(json!({"sub": "alice", "groups": ["ml"]}));
    let bob = gate.identity(json!({"sub": "bob", "groups": ["ml"]}));
    assert!(!gate.allows(&alice, "GET", "/gen/x"));
    assert!(gate.allows(&bob, "GET", "/gen/x"));
    assert!(!gate.allows(&alice, "GET", "/gen/x"));
    assert!(gate.allows(&bob, "GET", "/gen/y"));
    assert_eq!(gate.authz.evaluations(), 2, "each caller evaluated once, path not read");
}

/// A policy on a claim tag tells apart tokens that differ only in that claim.
#[test]
fn claim_tags_keep_callers_apart() {
    let policy = r#"permit(principal in Hfgate::Group::"ml", action, resource)
        when { principal.hasTag("team") && principal.getTag("team") == "red" };"#;
    let gate = gate("", Some(policy));
    let red = gate.identity(json!({"sub": "alice", "groups": ["ml"], "team": "red"}));
    let blue = gate.identity(json!({"sub": "alice", "groups": ["ml"], "team": "blue"}));
    let none = gate.identity(json!({"sub": "alice", "groups": ["ml"]}));
    assert!(gate.allows(&red, "GET", "/gen/x"));
    assert!(!gate.allows(&blue, "GET", "/gen/x"));
    assert!(!gate.allows(&none, "GET", "/gen/x"));
    assert_eq!(gate.authz.evaluations(), 3);
    // Another token with the same claims (every claim is a tag) shares the first answer.
    let red_again = gate.identity(json!({"sub": "alice", "groups": ["ml"], "team": "red"}));
    assert!(gate.allows(&red_again, "GET", "/gen/x"));
    assert_eq!(gate.authz.evaluations(), 3);
}
