//! Machines without secrets: workload issuers with claim conditions, every claim visible to policies, and
//! the `/oauth/token` exchange on hub routes that turns a CI job's token into one of hfgate's.
//! Tokens carry the claim shapes GitHub Actions, GitLab CI, Kubernetes and client-credentials IdPs send.

mod common;

use std::time::Duration;

use axum::body::Body;
use common::{Gate, Probe, ScriptedIdp, route_table, temp_dir};
use hfgate::jose::unix_now;
use http::{Request, StatusCode};
use serde_json::{Value, json};

/// GitHub Actions' claims for a job of `repository` deploying to `environment` (as GitHub documents them).
fn github(repository: &str, environment: &str, aud: &str) -> Value {
    let now = unix_now();
    json!({
        "jti": format!("{now}-{repository}"), "sub": format!("repo:{repository}:environment:{environment}"),
        "environment": environment, "aud": aud, "ref": "refs/heads/main", "sha": "d6a3f1e2",
        "repository": repository, "repository_owner": repository.split('/').next().unwrap_or_default(),
        "repository_owner_id": "1", "repository_id": "2", "repository_visibility": "private", "run_id": "3",
        "run_number": "4", "run_attempt": "1", "actor": "octocat", "actor_id": "5", "workflow": "release",
        "head_ref": "", "base_ref": "", "event_name": "push", "ref_type": "branch",
        "job_workflow_ref": format!("{repository}/.github/workflows/release.yml@refs/heads/main"),
        "runner_environment": "github-hosted", "iat": now, "nbf": now, "exp": now + 300,
    })
}

/// GitLab CI's ID token claims.
fn gitlab(project: &str) -> Value {
    let now = unix_now();
    json!({
        "namespace_id": "1", "namespace_path": project.split('/').next().unwrap_or_default(),
        "project_id": "22", "project_path": project, "user_id": "42", "user_login": "ci-user",
        "user_email": "ci@example.com", "pipeline_id": "1212", "pipeline_source": "push", "job_id": "1212",
        "ref": "main", "ref_type": "branch", "ref_path": "refs/heads/main", "ref_protected": "true",
        "environment": "production", "environment_protected": "true", "deployment_tier": "production",
        "runner_id": 1, "runner_environment": "gitlab-hosted", "sha": "abc",
        "project_visibility": "private", "ci_config_ref_uri": format!("gitlab.com/{project}//.gitlab-ci.yml@refs/heads/main"),
        "jti": format!("{now}-gl"), "aud": "hfgate", "sub": format!("project_path:{project}:ref_type:branch:ref:main"),
        "iat": now, "nbf": now, "exp": now + 300,
    })
}

/// A projected Kubernetes service-account token.
fn kubernetes(namespace: &str, account: &str) -> Value {
    let now = unix_now();
    json!({
        "aud": ["hfgate"], "exp": now + 600, "iat": now, "nbf": now,
        "sub": format!("system:serviceaccount:{namespace}:{account}"),
        "kubernetes.io": {
            "namespace": namespace,
            "pod": {"name": "runner-7d9f", "uid": "p-1"},
            "serviceaccount": {"name": account, "uid": "sa-1"},
        },
    })
}

/// An Okta client-credentials token (custom authorization server).
fn okta_service(scopes: &[&str]) -> Value {
    let now = unix_now();
    json!({
        "ver": 1, "jti": format!("AT.{now}"), "aud": "hfgate", "iat": now, "exp": now + 600,
        "cid": "0oa1svc", "scp": scopes, "sub": "0oa1svc",
    })
}

/// An Auth0 client-credentials token (`sub` is the client id with `@clients`).
fn auth0_m2m(permissions: &[&str]) -> Value {
    let now = unix_now();
    json!({
        "aud": "hfgate", "iat": now, "exp": now + 600, "azp": "Xy12Ab", "sub": "Xy12Ab@clients",
        "gty": "client-credentials", "permissions": permissions, "scope": permissions.join(" "),
    })
}

/// An Entra ID client-credentials (app) token.
fn entra_app(roles: &[&str]) -> Value {
    let now = unix_now();
    json!({
        "aud": "hfgate", "iat": now, "nbf": now, "exp": now + 600, "azp": "app-1", "azpacr": "1",
        "appid": "app-1", "oid": "o-1", "sub": "app-1", "tid": "t-1", "roles": roles, "ver": "2.0",
    })
}

/// The header and claims of a JWT, unverified.
fn jwt_parts(token: &str) -> (Value, Value) {
    use base64::Engine as _;
    let part = |i: usize| -> Value {
        let segment = token.split('.').nth(i).expect("segment");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(segment).expect("base64url");
        serde_json::from_slice(&bytes).expect("json")
    };
    (part(0), part(1))
}

fn sign(idp: &ScriptedIdp, claims: &Value) -> String {
    let mut claims = claims.clone();
    claims["iss"] = json!(idp.issuer());
    idp.key().sign_jwt(&json!({"typ": "JWT"}), &claims).expect("sign")
}

fn issuer_block(idp: &ScriptedIdp, name: &str, extra: &str) -> String {
    format!(
        "[[issuer]]\nname = \"{name}\"\nissuer = \"{}\"\naudiences = [\"hfgate\", \"https://gate.example/hub\"]\n\
         algorithms = [\"ES256\"]\n{extra}\n",
        idp.issuer()
    )
}

async fn gate(text: String) -> Gate {
    let dir = temp_dir("workload");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\npublic_url = \"https://gate.example\"\n[audit]\npath = \"{}\"\n{text}",
        dir.join("audit.jsonl").display()
    );
    let gate = Gate::start(dir, &text).await;
    assert!(gate.becomes_ready(Duration::from_secs(10)).await, "keys did not load");
    gate
}

#[tokio::test]
async fn claim_conditions_admit_only_the_named_workloads() {
    let idp = ScriptedIdp::start("127.0.0.1").await;
    let probe = Probe::start().await;
    let text = issuer_block(
        &idp,
        "github",
        "kind = \"workload\"\nrequire = { repository = \"acme/*\", ref = \"refs/heads/main\", environment = [\"prod\", \"staging\"] }",
    ) + &route_table("api", "/api/", probe.addr(), "");
    let gate = gate(text).await;

    for environment in ["prod", "staging"] {
        let token = sign(&idp, &github("acme/models", environment, "hfgate"));
        let reply = gate.get("/api/echo", Some(&token)).await;
        assert_eq!(reply.status, StatusCode::OK, "{environment}: {}", reply.text());
    }
    let seen = probe.log().requests.last().cloned().expect("forwarded");
    assert_eq!(seen.header_values("x-forwarded-user"), ["repo:acme/models:environment:staging"]);

    for (claims, want) in [
        (
            github("evil/models", "prod", "hfgate"),
            "claim repository is 'evil/models' and does not satisfy issuer github's require: expected one of [acme/*]",
        ),
        (github("acme/models", "dev", "hfgate"), "claim environment is 'dev' and does not satisfy"),
        (
            {
                let mut c = github("acme/models", "prod", "hfgate");
                c["ref"] = json!("refs/heads/feature");
                c
            },
            "claim ref is 'refs/heads/feature'",
        ),
        (
            {
                let mut c = github("acme/models", "prod", "hfgate");
                c.as_object_mut().expect("object").remove("environment");
                c
            },
            "claim environment is missing",
        ),
    ] {
        let before = probe.log().requests.len();
        let reply = gate.get("/api/echo", Some(&sign(&idp, &claims))).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
        assert!(reply.description().contains(want), "{} lacks {want}", reply.description());
        assert!(reply.header("www-authenticate").contains("error=\"invalid_token\""));
        assert_eq!(probe.log().requests.len(), before, "a refused workload reached the upstream");
    }
    let audit = gate.audit();
    assert!(audit.iter().any(|l| l["decision"]["reason"] == "requirement_failed"), "{audit:?}");
}

#[tokio::test]
async fn workload_tokens_live_an_hour_at_most_by_default() {
    let idp = ScriptedIdp::start("127.0.0.1").await;
    let probe = Probe::start().await;
    let people = ScriptedIdp::start("127.0.0.2").await;
    let text = issuer_block(&idp, "ci", "kind = \"workload\"")
        + &issuer_block(&people, "corp", "")
        + &route_table("api", "/api/", probe.addr(), "");
    let gate = gate(text).await;
    let now = unix_now();
    let mut long = github("acme/models", "prod", "hfgate");
    long["iat"] = json!(now);
    long["exp"] = json!(now + 2 * 3600);
    let reply = gate.get("/api/echo", Some(&sign(&idp, &long))).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.description().contains("exceeds max_token_lifetime 1h"), "{}", reply.description());
    // The same lifetime from a people issuer is within its 24h default.
    let reply = gate.get("/api/echo", Some(&sign(&people, &long))).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test]
async fn policies_see_every_claim_of_each_platform() {
    let github_idp = ScriptedIdp::start("127.0.0.1").await;
    let gitlab_idp = ScriptedIdp::start("127.0.0.2").await;
    let k8s_idp = ScriptedIdp::start("127.0.0.3").await;
    let entra_idp = ScriptedIdp::start("127.0.0.4").await;
    let okta_idp = ScriptedIdp::start("127.0.0.5").await;
    let auth0_idp = ScriptedIdp::start("127.0.0.6").await;
    let probe = Probe::start().await;
    let dir = temp_dir("workload-policy");
    let policies = r#"
@id("github-release")
permit (principal, action, resource) when {
  principal.hasTag("job_workflow_ref") && principal.getTag("job_workflow_ref") like "acme/*/.github/workflows/release.yml@refs/heads/main"
};
@id("gitlab-protected")
permit (principal, action, resource) when {
  principal.hasTag("ref_protected") && principal.getTag("ref_protected") == "true" &&
  principal.hasTag("namespace_path") && principal.getTag("namespace_path") == "acme"
};
@id("k8s-ml")
permit (principal, action, resource) when {
  principal.hasTag("kubernetes.io.namespace") && principal.getTag("kubernetes.io.namespace") like "ml-*"
};
@id("okta-service")
permit (principal, action, resource) when {
  principal.hasTag("scp") && principal.getTag("scp") like "*models.read*" && principal.client_id == "0oa1svc"
};
@id("auth0-m2m")
permit (principal, action, resource) when {
  principal.hasTag("gty") && principal.getTag("gty") == "client-credentials" &&
  principal.hasTag("permissions") && principal.getTag("permissions") like "*infer:models*"
};
@id("entra-deployer")
permit (principal, action, resource) when {
  principal.hasTag("roles") && principal.getTag("roles") like "*Model.Deploy*"
};
"#;
    std::fs::write(dir.join("policies.cedar"), policies).expect("policies");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[audit]\npath = \"{audit}\"\n[authz]\npolicy_file = \"{file}\"\n{}{}{}{}{}",
        issuer_block(&github_idp, "github", "kind = \"workload\""),
        issuer_block(&gitlab_idp, "gitlab", "kind = \"workload\""),
        issuer_block(&k8s_idp, "k8s", ""),
        issuer_block(&entra_idp, "entra", "")
            + &issuer_block(&okta_idp, "okta", "")
            + &issuer_block(&auth0_idp, "auth0", ""),
        route_table("api", "/api/", probe.addr(), ""),
        audit = dir.join("audit.jsonl").display(),
        file = dir.join("policies.cedar").display(),
    );
    let gate = Gate::start(dir, &text).await;
    assert!(gate.becomes_ready(Duration::from_secs(10)).await, "keys did not load");

    let cases = [
        (sign(&github_idp, &github("acme/models", "prod", "hfgate")), StatusCode::OK, "github-release"),
        (sign(&github_idp, &github("other/models", "prod", "hfgate")), StatusCode::FORBIDDEN, ""),
        (sign(&gitlab_idp, &gitlab("acme/models")), StatusCode::OK, "gitlab-protected"),
        (sign(&gitlab_idp, &gitlab("other/models")), StatusCode::FORBIDDEN, ""),
        (sign(&k8s_idp, &kubernetes("ml-prod", "runner")), StatusCode::OK, "k8s-ml"),
        (sign(&k8s_idp, &kubernetes("default", "runner")), StatusCode::FORBIDDEN, ""),
        (sign(&entra_idp, &entra_app(&["Model.Read", "Model.Deploy"])), StatusCode::OK, "entra-deployer"),
        (sign(&entra_idp, &entra_app(&["Model.Read"])), StatusCode::FORBIDDEN, ""),
        (sign(&okta_idp, &okta_service(&["models.read"])), StatusCode::OK, "okta-service"),
        (sign(&okta_idp, &okta_service(&["other"])), StatusCode::FORBIDDEN, ""),
        (sign(&auth0_idp, &auth0_m2m(&["infer:models"])), StatusCode::OK, "auth0-m2m"),
        (sign(&auth0_idp, &auth0_m2m(&["read:other"])), StatusCode::FORBIDDEN, ""),
    ];
    for (token, want, policy) in cases {
        let reply = gate.get("/api/echo", Some(&token)).await;
        assert_eq!(reply.status, want, "{}", reply.text());
        if want == StatusCode::OK {
            let line = gate.audit().into_iter().rev().find(|l| l["status"] == 200).expect("audit line");
            assert_eq!(line["decision"]["policies"], json!([policy]), "{line}");
            assert_eq!(line["identity"]["kind"], "workload", "{line}");
        }
    }
}

/// A hub route whose upstream records what reaches it.
async fn hub_gate(idp: &ScriptedIdp, probe: &Probe, extra: &str) -> Gate {
    let text =
        issuer_block(idp, "github", &format!("kind = \"workload\"\nrequire = {{ repository = \"acme/*\" }}\n{extra}"))
            + &route_table("hub", "/hub/", probe.addr(), "api = \"hub\"\ncredential = \"env:PATH\"");
    gate(text).await
}

async fn exchange(gate: &Gate, body: Value) -> (StatusCode, Value) {
    let request = Request::post(gate.url("/hub/oauth/token"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let reply = common::send(&gate.client, request).await;
    (reply.status, reply.json())
}

fn exchange_body(token: &str) -> Value {
    json!({
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token_type": "urn:ietf:params:oauth:token-type:id_token",
        "subject_token": token,
        "resource": "acme/models",
    })
}

#[tokio::test]
async fn a_ci_token_is_exchanged_for_an_hfgate_token_that_hub_routes_accept() {
    let idp = ScriptedIdp::start("127.0.0.1").await;
    let probe = Probe::start().await;
    let gate = hub_gate(&idp, &probe, "").await;
    let ci_token = sign(&idp, &github("acme/models", "prod", "https://gate.example/hub"));

    let (status, answer) = exchange(&gate, exchange_body(&ci_token)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["token_type"], "bearer");
    assert_eq!(answer["expires_in"], 3600);
    assert_eq!(answer["issued_token_type"], "urn:ietf:params:oauth:token-type:access_token");
    let minted = answer["access_token"].as_str().expect("token").to_string();
    let (header, claims) = jwt_parts(&minted);
    assert_eq!(header["typ"], "hfgate-at+jwt");
    assert_eq!(claims["iss"], "https://gate.example");
    assert_eq!(claims["aud"], "hfgate");
    assert_eq!(claims["idp"], idp.issuer());
    assert_eq!(claims["repository"], "acme/models");
    assert_eq!(claims["requested_resource"], "acme/models");
    assert!(claims["exp"].as_u64().expect("exp") >= unix_now() + 3500);
    // Nothing was forwarded for the exchange itself.
    assert!(probe.log().requests.is_empty());

    // The minted token is a bearer token for the same workload, long after the CI token would expire.
    let reply = gate.get("/hub/api/models/acme/models", Some(&minted)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = probe.log().requests.last().cloned().expect("forwarded");
    assert_eq!(seen.header_values("x-forwarded-user"), ["repo:acme/models:environment:prod"]);
    let authorization = seen.header_values("authorization");
    assert_eq!(authorization.len(), 1);
    assert!(
        !authorization[0].contains(&minted) && !authorization[0].contains(&ci_token),
        "a caller token went upstream"
    );

    let audit = gate.audit();
    let exchanged = audit.iter().find(|l| l["path"] == "/hub/oauth/token").expect("exchange audited");
    assert_eq!(exchanged["status"], 200);
    assert_eq!(exchanged["identity"]["issuer"], idp.issuer());
    assert_eq!(exchanged["identity"]["kind"], "workload");
    let used = audit.iter().find(|l| l["path"] == "/hub/api/models/acme/models").expect("request audited");
    assert_eq!(used["identity"]["issuer"], idp.issuer(), "the minted token keeps the original issuer");
    let text = std::fs::read_to_string(gate.dir.join("audit.jsonl")).expect("audit");
    assert!(!text.contains(&minted) && !text.contains(&ci_token), "a token reached the audit log");
}

#[tokio::test]
async fn exchanges_refuse_what_they_cannot_vouch_for() {
    let idp = ScriptedIdp::start("127.0.0.1").await;
    let people = ScriptedIdp::start("127.0.0.2").await;
    let probe = Probe::start().await;
    let text = issuer_block(&idp, "github", "kind = \"workload\"\nrequire = { repository = \"acme/*\" }")
        + &issuer_block(&people, "corp", "kind = \"user\"")
        + &route_table("hub", "/hub/", probe.addr(), "api = \"hub\"")
        + &route_table("api", "/api/", probe.addr(), "");
    let gate = gate(text).await;
    let good = sign(&idp, &github("acme/models", "prod", "hfgate"));

    let mut expired = github("acme/models", "prod", "hfgate");
    expired["exp"] = json!(unix_now() - 3600);
    expired["iat"] = json!(unix_now() - 3700);
    expired["nbf"] = json!(unix_now() - 3700);
    let cases = [
        (exchange_body(&sign(&idp, &github("evil/models", "prod", "hfgate"))), "invalid_grant", "require"),
        (exchange_body(&sign(&idp, &expired)), "invalid_grant", "token expired"),
        (
            exchange_body(&sign(&people, &github("acme/models", "prod", "hfgate"))),
            "invalid_grant",
            "only workload identities",
        ),
        (exchange_body("not-a-jwt"), "invalid_grant", "malformed token"),
        (json!({"grant_type": "client_credentials", "subject_token": good}), "unsupported_grant_type", "grant_type"),
        (
            json!({"grant_type": "urn:ietf:params:oauth:grant-type:token-exchange", "subject_token": good,
                   "subject_token_type": "urn:ietf:params:oauth:token-type:saml2"}),
            "invalid_request",
            "subject_token_type",
        ),
    ];
    for (body, error, mentions) in cases {
        let (status, answer) = exchange(&gate, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["error"], error, "{answer}");
        assert!(answer["error_description"].as_str().unwrap_or_default().contains(mentions), "{answer}");
    }
    // A minted token is not exchanged again.
    let (_, answer) = exchange(&gate, exchange_body(&good)).await;
    let minted = answer["access_token"].as_str().expect("minted").to_string();
    let (status, answer) = exchange(&gate, exchange_body(&minted)).await;
    assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "{answer}");

    // The form encoding RFC 8693 describes works too.
    let form = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&subject_token={good}"
    );
    let request = Request::post(gate.url("/hub/oauth/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from(form))
        .expect("request");
    let reply = common::send(&gate.client, request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());

    // Only hub routes answer /oauth/token; elsewhere it is an ordinary (authenticated) request.
    let request = Request::post(gate.url("/api/oauth/token")).body(Body::from("x")).expect("request");
    assert_eq!(common::send(&gate.client, request).await.status, StatusCode::UNAUTHORIZED);

    // What hfgate signs for upstreams (X-Hfgate-Assertion) is never accepted as a bearer token.
    let reply = gate.get("/api/echo", Some(&minted)).await;
    assert_eq!(reply.status, StatusCode::OK);
    let assertion = probe.log().requests.last().expect("forwarded").header_values("x-hfgate-assertion")[0].to_string();
    let reply = gate.get("/api/echo", Some(&assertion)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    assert!(reply.description().contains("typ mismatch"), "{}", reply.description());

    // Another hfgate (another key) does not accept this one's tokens.
    let other = hub_gate(&idp, &probe, "").await;
    let reply = other.get("/hub/api/models/acme/models", Some(&minted)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{}", reply.text());
}

/// What a job gets from `/oauth/token` is hfgate's token: an rfc8693 exchange never forwards it to another
/// token endpoint; a subject token that is not a JWT is never shown to an introspection endpoint; and a
/// client-credentials token of a people issuer (`kind = "auto"`) does not count as a CI job.
#[tokio::test]
async fn minted_tokens_stay_with_hfgate() {
    let idp = ScriptedIdp::start("127.0.0.1").await;
    let corp = ScriptedIdp::start("127.0.0.2").await;
    let probe = Probe::start().await;
    let text = issuer_block(&idp, "github", "kind = \"workload\"")
        + &issuer_block(&corp, "corp", "")
        + "\n[[exchange]]\nname = \"models\"\nkind = \"rfc8693\"\ntoken_endpoint = \"http://127.0.0.1:9/token\"\nclient_id = \"gate\"\n"
        + &route_table("hub", "/hub/", probe.addr(), "api = \"hub\"")
        + &route_table("models", "/models/", probe.addr(), "credential = \"exchange:models\"");
    let gate = gate(text).await;
    let (_, answer) = exchange(&gate, exchange_body(&sign(&idp, &github("acme/models", "prod", "hfgate")))).await;
    let minted = answer["access_token"].as_str().expect("minted").to_string();

    let reply = gate.get("/models/echo", Some(&minted)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert!(reply.description().contains("not one hfgate issued"), "{}", reply.text());
    assert!(probe.log().requests.is_empty());

    let (status, answer) = exchange(&gate, exchange_body("2YotnFZFEjr1zCsicMWpAA")).await;
    assert_eq!((status, answer["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "{answer}");
    assert!(answer["error_description"].as_str().unwrap_or_default().contains("malformed token"), "{answer}");

    let now = unix_now();
    let app = json!({"aud": "hfgate", "sub": "app-1", "azp": "app-1", "iat": now, "exp": now + 600});
    let (status, answer) = exchange(&gate, exchange_body(&sign(&corp, &app))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error_description"].as_str().unwrap_or_default().contains("only workload identities"), "{answer}");
}

#[test]
fn no_route_may_be_named_like_the_audience_of_hfgates_own_tokens() {
    let text = "[[issuer]]\nname = \"corp\"\nissuer = \"https://idp.example\"\naudiences = [\"a\"]\n\
                [[route]]\nname = \"hfgate\"\npath = \"/x/\"\nupstream = \"http://127.0.0.1:9\"\n";
    let err = hfgate::config::parse(std::path::Path::new("x.toml"), text).expect_err("reserved");
    assert!(err.to_string().contains("x.toml:6: route[0].name: \"hfgate\" is reserved"), "{err}");
}
