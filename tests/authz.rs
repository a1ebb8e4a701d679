//! Model-aware authorization: shorthand rules and Cedar files decide the same way, default deny,
//! forbid beats permit, globs, providers, revisions, bill-to, and what the audit records.

mod common;

use std::time::Duration;

use axum::body::Body;
use common::{Options, Stack};
use http::{Request, StatusCode};
use serde_json::{Value, json};

/// Routes of several API kinds in front of the mock upstream.
fn routes(upstream: &str) -> String {
    format!(
        r#"
[[route]]
name = "router"
path = "/router/"
upstream = "http://{upstream}"
api = "router"
strip_prefix = true

[[route]]
name = "hub"
path = "/hub/"
upstream = "http://{upstream}"
api = "hub"
strip_prefix = true

[[route]]
name = "admin"
path = "/admin/"
upstream = "http://{upstream}"
api = "generic"
strip_prefix = true
"#
    )
}

async fn stack_with(policies: &str, policy_file: Option<&str>) -> Stack {
    // The mock upstream's address is only known once it runs: start a throwaway to learn nothing, then
    // let the harness place routes after its own upstream via a placeholder it substitutes.
    let dir = common::temp_dir("authz-policy");
    let mut tail = String::from(policies);
    if let Some(text) = policy_file {
        let path = dir.join("policies.cedar");
        std::fs::write(&path, text).expect("policy file");
        tail.push_str(&format!("\n[authz]\npolicy_file = \"{}\"\n", path.display()));
    }
    Stack::start_with(Options { tail, extra_routes: Some(routes), ..Options::default() }).await
}

fn token(stack: &Stack, sub: &str, groups: &[&str]) -> String {
    let mut claims = stack.issuer.claims(sub, groups, Duration::from_secs(600));
    claims["email"] = json!(format!("{sub}@acme.example"));
    stack.issuer.mint(&claims)
}

async fn chat(stack: &Stack, token: &str, route: &str, model: &str) -> common::Reply {
    let body = json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    stack
        .send(
            Request::post(stack.url(&format!("/{route}/v1/chat/completions")))
                .header("authorization", format!("Bearer {token}"))
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .expect("request"),
        )
        .await
}

const SHORTHAND: &str = r#"
[[allow]]
groups = ["ml-research"]
models = ["meta-llama/*", "acme/*"]

[[allow]]
groups = ["support"]
models = ["*-Instruct", "acme/tiny-chat"]
actions = ["infer"]

[[allow]]
groups = ["ci"]
actions = ["download", "metadata"]
routes = ["hub"]

[[deny]]
users = ["mallory@acme.example"]

[[allow]]
groups = ["platform"]
routes = ["admin"]
"#;

const CEDAR: &str = r#"
@id("research")
permit (principal in Hfgate::Group::"ml-research", action, resource)
when { resource is Hfgate::Model && resource.repo_type == "model" && (resource.id like "meta-llama/*" || resource.id like "acme/*") };

@id("support")
permit (principal in Hfgate::Group::"support", action == Hfgate::Action::"infer", resource)
when { resource is Hfgate::Model && resource.repo_type == "model" && (resource.id like "*-instruct" || resource.id like "acme/tiny-chat") };

@id("ci")
permit (principal in Hfgate::Group::"ci", action in [Hfgate::Action::"download", Hfgate::Action::"metadata"], resource)
when { context.route == "hub" };

@id("no-mallory")
forbid (principal, action, resource) when { principal.email == "mallory@acme.example" };

@id("platform")
permit (principal in Hfgate::Group::"platform", action, resource) when { context.route == "admin" };
"#;

/// (who, groups, request) → expected status class.
async fn decision_matrix(stack: &Stack) -> Vec<(String, StatusCode)> {
    let research = token(stack, "rita", &["ml-research"]);
    let support = token(stack, "sam", &["support"]);
    let ci = token(stack, "ci-bot", &["ci"]);
    let mallory = token(stack, "mallory", &["ml-research"]);
    let platform = token(stack, "pat", &["platform"]);
    let mut out = Vec::new();
    for (name, tok) in
        [("research", &research), ("support", &support), ("ci", &ci), ("mallory", &mallory), ("platform", &platform)]
    {
        for model in [
            "meta-llama/Llama-3.1-8B-Instruct",
            "META-LLAMA/Llama-3.1-8B-Instruct",
            "mistralai/Mistral-7B-Instruct",
            "mistralai/Mistral-7B",
            "acme/tiny-chat:fastest",
        ] {
            let status = chat(stack, tok, "router", model).await.status;
            out.push((format!("{name} infer {model}"), status));
        }
        for path in [
            "/hub/meta-llama/Llama-3.1-8B/resolve/main/config.json",
            "/hub/api/models/acme/tiny/revision/main",
            "/admin/echo",
            "/tgi/echo",
        ] {
            let status = stack.get(path, Some(tok)).await.status;
            out.push((format!("{name} GET {path}"), status));
        }
    }
    out
}

fn allowed(status: StatusCode) -> bool {
    status != StatusCode::FORBIDDEN
}

#[tokio::test]
async fn shorthand_and_cedar_decide_the_same_way() {
    let shorthand = stack_with(SHORTHAND, None).await;
    let cedar = stack_with("", Some(CEDAR)).await;
    let a = decision_matrix(&shorthand).await;
    let b = decision_matrix(&cedar).await;
    assert_eq!(a.len(), b.len());
    for ((case, sa), (_, sb)) in a.iter().zip(&b) {
        assert_eq!(allowed(*sa), allowed(*sb), "{case}: shorthand {sa}, cedar {sb}");
    }
    let expect = |case: &str| a.iter().find(|(c, _)| c == case).map(|(_, s)| allowed(*s)).expect(case);
    // Globs and groups.
    assert!(expect("research infer meta-llama/Llama-3.1-8B-Instruct"));
    assert!(!expect("research infer mistralai/Mistral-7B"));
    assert!(expect("support infer mistralai/Mistral-7B-Instruct"));
    assert!(!expect("support infer mistralai/Mistral-7B"));
    // Repo ids are case-insensitive on the Hub: a case variant cannot slip past a rule.
    assert!(!expect("mallory infer META-LLAMA/Llama-3.1-8B-Instruct"));
    // The router's provider suffix is not part of the model id.
    assert!(expect("research infer acme/tiny-chat:fastest"));
    // CI may download and read metadata on the hub route, nothing else.
    assert!(expect("ci GET /hub/meta-llama/Llama-3.1-8B/resolve/main/config.json"));
    assert!(expect("ci GET /hub/api/models/acme/tiny/revision/main"));
    assert!(!expect("ci infer meta-llama/Llama-3.1-8B-Instruct"));
    // forbid beats permit.
    assert!(!expect("mallory infer meta-llama/Llama-3.1-8B-Instruct"));
    // Only the platform team reaches /admin.
    assert!(expect("platform GET /admin/echo"));
    assert!(!expect("research GET /admin/echo"));
    // Default deny: a route no rule covers for this caller.
    assert!(!expect("support GET /tgi/echo"));
}

#[tokio::test]
async fn refusals_are_403_insufficient_scope_naming_action_and_model() {
    let stack = stack_with(SHORTHAND, None).await;
    let reply = chat(&stack, &token(&stack, "rita", &["ml-research"]), "router", "mistralai/Mistral-7B").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let body = reply.json();
    assert_eq!(body["error"], "insufficient_scope");
    assert_eq!(body["error_description"], "no policy permits infer on mistralai/Mistral-7B");
    assert_eq!(
        reply.header("www-authenticate"),
        "Bearer realm=\"hfgate\", error=\"insufficient_scope\", error_description=\"no policy permits infer on mistralai/Mistral-7B\""
    );
    let forbidden =
        chat(&stack, &token(&stack, "mallory", &["ml-research"]), "router", "meta-llama/Llama-3.1-8B").await;
    assert_eq!(forbidden.json()["error_description"], "deny[0] forbids infer on meta-llama/Llama-3.1-8B");

    // The audit records the decision, the determining policies and the policy set's digest.
    let ok = chat(&stack, &token(&stack, "rita", &["ml-research"]), "router", "meta-llama/Llama-3.1-8B").await;
    assert_ne!(ok.status, StatusCode::FORBIDDEN);
    let audit = stack.audit_at_least(3).await;
    let allowed = audit.iter().find(|l| l["decision"]["allow"] == true).expect("an allowed line");
    assert_eq!(allowed["decision"]["policies"], json!(["allow[0]"]));
    assert_eq!(allowed["action"], "infer");
    assert_eq!(allowed["model"]["id"], "meta-llama/Llama-3.1-8B");
    let hash = allowed["decision"]["policy_set"].as_str().expect("policy_set");
    assert!(hash.starts_with("sha256:") && hash.len() == 39, "{hash}");
    let denied: Vec<&Value> = audit.iter().filter(|l| l["status"] == 403).collect();
    assert_eq!(denied.len(), 2);
    assert!(denied.iter().any(|l| l["decision"]["policies"] == json!(["deny[0]"])
        && l["decision"]["reason"] == "deny[0] forbids infer on meta-llama/Llama-3.1-8B"));
    assert!(denied.iter().any(|l| l["decision"]["reason"] == "no policy permits infer on mistralai/Mistral-7B"));
}

#[tokio::test]
async fn classification_errors_are_400_and_bodies_are_forwarded_unchanged() {
    let stack = stack_with("[[allow]]\ngroups = [\"ml-research\"]\n", None).await;
    let tok = token(&stack, "rita", &["ml-research"]);
    let send = |body: &'static str| {
        Request::post(stack.url("/router/v1/chat/completions"))
            .header("authorization", format!("Bearer {tok}"))
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request")
    };
    let no_model = stack.send(send(r#"{"messages":[]}"#)).await;
    assert_eq!(no_model.status, StatusCode::BAD_REQUEST);
    assert_eq!(no_model.json()["error_description"], "request body has no 'model' field");
    let not_json = stack.send(send("model=x")).await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert_eq!(not_json.json()["error_description"], "request body is not a JSON object");
    // A body hfgate read to find the model still reaches the upstream whole.
    let body = r#"{"model":"acme/tiny-chat","messages":[{"role":"user","content":"hello there"}]}"#;
    let ok = stack.send(send(body)).await;
    assert_eq!(ok.status, StatusCode::OK, "{}", ok.text());
    assert_eq!(ok.json()["model"], "acme/tiny-chat", "the upstream parsed the forwarded body");
    let audit = stack.audit_at_least(3).await;
    let line = audit.iter().find(|l| l["status"] == 200).expect("line");
    assert_eq!(line["bytes_in"], body.len());
    assert_eq!(line["model"]["id"], "acme/tiny-chat");
}

#[tokio::test]
async fn bill_to_comes_from_policy_and_client_values_must_be_allowed() {
    let rules = r#"
[[allow]]
groups = ["ml-research"]
bill_to = "acme-research"

[[allow]]
groups = ["support"]
"#;
    let stack = Stack::start_with(Options {
        tail: rules.into(),
        route_extra: "bill_to = \"acme-default\"".into(),
        ..Options::default()
    })
    .await;
    let research = token(&stack, "rita", &["ml-research"]);
    let support = token(&stack, "sam", &["support"]);
    let echo = |tok: &str, bill: Option<&str>| {
        let mut r = Request::get(stack.url("/tgi/echo")).header("authorization", format!("Bearer {tok}"));
        if let Some(b) = bill {
            r = r.header("x-hf-bill-to", b);
        }
        r.body(Body::empty()).expect("request")
    };
    let r = stack.send(echo(&research, None)).await;
    assert_eq!(r.json()["headers"]["x-hf-bill-to"], "acme-research", "the permitting rule names the org");
    let r = stack.send(echo(&support, None)).await;
    assert_eq!(r.json()["headers"]["x-hf-bill-to"], "acme-default", "else the route's");
    let r = stack.send(echo(&research, Some("acme-research"))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["headers"]["x-hf-bill-to"], "acme-research");
    let r = stack.send(echo(&support, Some("acme-default"))).await;
    assert_eq!(r.status, StatusCode::OK, "the route's org may be named by anyone on the route");
    let r = stack.send(echo(&support, Some("acme-research"))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    assert_eq!(r.json()["error_description"], "no policy permits billing acme-research");
}

#[tokio::test]
async fn revisions_and_providers_can_be_policy_conditions() {
    let cedar = r#"
@id("main-only")
permit (principal in Hfgate::Group::"ci", action == Hfgate::Action::"download", resource)
when { resource is Hfgate::Model && resource.revision == "main" };

@id("fast-providers")
permit (principal in Hfgate::Group::"ml-research", action == Hfgate::Action::"infer", resource)
when { resource is Hfgate::Model && resource.provider == "fastest" };
"#;
    let stack = stack_with("", Some(cedar)).await;
    let ci = token(&stack, "ci-bot", &["ci"]);
    assert_ne!(stack.get("/hub/acme/tiny/resolve/main/config.json", Some(&ci)).await.status, StatusCode::FORBIDDEN);
    let pr = stack.get("/hub/acme/tiny/resolve/refs%2Fpr%2F1/config.json", Some(&ci)).await;
    assert_eq!(pr.status, StatusCode::FORBIDDEN);
    assert_eq!(pr.json()["error_description"], "no policy permits download on acme/tiny");
    // An encoded slash outside the revision is refused, on hub routes too.
    assert_eq!(stack.get("/hub/acme%2Ftiny/resolve/main/config.json", Some(&ci)).await.status, StatusCode::BAD_REQUEST);
    let research = token(&stack, "rita", &["ml-research"]);
    assert_ne!(chat(&stack, &research, "router", "acme/tiny:fastest").await.status, StatusCode::FORBIDDEN);
    assert_eq!(chat(&stack, &research, "router", "acme/tiny:cheapest").await.status, StatusCode::FORBIDDEN);
    let audit = stack.audit_at_least(5).await;
    let pr_line = audit.iter().find(|l| l["path"] == "/hub/acme/tiny/resolve/refs%2Fpr%2F1/config.json").expect("line");
    assert_eq!(pr_line["model"]["revision"], "refs/pr/1");
}
