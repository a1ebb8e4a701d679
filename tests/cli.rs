//! The binary: `hfgate check` reports config problems as file:line: key: message; `hfgate serve`
//! never logs secrets and drains in-flight streams on SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use hfgate::demo::{DevIssuer, MockUpstream};
use hfgate::jose::Algorithm;
use http::{Request, StatusCode};

const BIN: &str = env!("CARGO_BIN_EXE_hfgate");

fn check(text: &str) -> (bool, String, String) {
    let dir = common::temp_dir("check");
    let path = dir.join("hfgate.toml");
    std::fs::write(&path, text).expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&path)
        .env_remove("HFGATE_UNSET_FOR_TEST")
        .output()
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&path.display().to_string(), "hfgate.toml");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}

const BASE: &str = r#"[server]
listen = "127.0.0.1:8080"
admin_listen = "127.0.0.1:9090"

[[issuer]]
name = "corp"
issuer = "https://idp.example.com"
audiences = ["hfgate"]

[[route]]
name = "llama"
path = "/llama/"
upstream = "http://127.0.0.1:3000"
api = "tgi"
credential = "none"
"#;

#[test]
fn check_accepts_a_valid_config_without_opening_a_port() {
    let (ok, stdout, stderr) = check(BASE);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ok (1 issuer(s), 1 route(s))"), "{stdout}");
    // Port 8080 is not bound by check: binding it here succeeds or fails for unrelated reasons only.
}

#[test]
fn check_names_file_line_and_key_for_every_problem() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "credential = \"none\"",
            "credential = \"none\"\nstrip_prefx = true",
            "hfgate.toml:16: route[0].strip_prefx: unknown field `strip_prefx`",
        ),
        ("audiences = [\"hfgate\"]\n", "", "hfgate.toml:5: issuer[0].audiences: required"),
        ("audiences = [\"hfgate\"]", "audiences = []", "hfgate.toml:8: issuer[0].audiences: must not be empty"),
        (
            "upstream = \"http://127.0.0.1:3000\"",
            "upstream = \"ftp://127.0.0.1:3000\"",
            "hfgate.toml:13: route[0].upstream: \"ftp://127.0.0.1:3000\" is not an http:// or https:// URL",
        ),
        (
            "issuer = \"https://idp.example.com\"",
            "issuer = \"http://idp.example.com\"",
            "hfgate.toml:7: issuer[0].issuer: \"http://idp.example.com\" uses plain http",
        ),
        (
            "audiences = [\"hfgate\"]",
            "audiences = [\"hfgate\"]\nleeway = \"60\"",
            "hfgate.toml:9: issuer[0].leeway: invalid duration \"60\": missing unit",
        ),
        (
            "audiences = [\"hfgate\"]",
            "audiences = [\"hfgate\"]\nalgorithms = [\"RS256\", \"HS256\"]",
            "hfgate.toml:9: issuer[0].algorithms: HS256 is never accepted",
        ),
        (
            "credential = \"none\"",
            "credential = \"env:HFGATE_UNSET_FOR_TEST\"",
            "hfgate.toml:15: route[0].credential: environment variable HFGATE_UNSET_FOR_TEST is not set",
        ),
        (
            "credential = \"none\"",
            "credential = \"hf_literal\"",
            "hfgate.toml:15: route[0].credential: must be env:NAME, file:PATH, exchange:NAME, none or passthrough",
        ),
        (
            "upstream = \"http://127.0.0.1:3000\"",
            "upstream = \"${HFGATE_UNSET_FOR_TEST}\"",
            "hfgate.toml:13: route[0].upstream: environment variable HFGATE_UNSET_FOR_TEST is not set",
        ),
        (
            "listen = \"127.0.0.1:8080\"",
            "listen = \"localhost\"",
            "hfgate.toml:2: server.listen: \"localhost\" is not an IP:port address",
        ),
        ("api = \"tgi\"", "api = \"tgl\"", "hfgate.toml:14: route[0].api: unknown api \"tgl\""),
        ("api = \"tgi\"", "api = 5", "hfgate.toml:14: route[0].api: invalid type: integer `5`, expected a string"),
    ];
    for (from, to, expected) in cases {
        assert!(BASE.contains(from), "{from}");
        let (ok, _, stderr) = check(&BASE.replacen(from, to, 1));
        assert!(!ok, "{to} should fail");
        assert!(stderr.contains(expected), "for {to:?}\nexpected: {expected}\ngot: {stderr}");
    }
}

#[test]
fn check_reports_all_problems_at_once_including_duplicate_routes() {
    let text = format!(
        "{BASE}\n[[route]]\nname = \"llama\"\npath = \"/llama/\"\nupstream = \"http://127.0.0.1:3001\"\ntimeout = \"soon\"\n"
    );
    let (ok, _, stderr) = check(&text);
    assert!(!ok);
    assert!(stderr.contains("hfgate.toml:18: route[1].name: duplicate route name \"llama\""), "{stderr}");
    assert!(stderr.contains("hfgate.toml:19: route[1].path: another route already has path \"/llama/\""), "{stderr}");
    assert!(stderr.contains("hfgate.toml:21: route[1].timeout: invalid duration \"soon\""), "{stderr}");
}

/// A running `hfgate serve` child and the reader of its stderr.
struct Served {
    child: Child,
    proxy: String,
    admin: String,
    /// Receives the whole stderr once the process has exited.
    logs: std::sync::mpsc::Receiver<String>,
}

fn spawn_serve(config: &Path, extra_env: &[(&str, &str)]) -> Served {
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--log-format", "json", "--config"])
        .arg(config)
        .env("RUST_LOG", "hfgate=trace,info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in extra_env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn hfgate");
    let stderr = child.stderr.take().expect("stderr");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (logs_tx, logs) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("hfgate listening") {
                let v: serde_json::Value = serde_json::from_str(&line).expect("json log");
                let field = |k: &str| v["fields"][k].as_str().unwrap_or("").to_string();
                let _ = started_tx.send((field("proxy"), field("admin")));
            }
            all.push_str(&line);
            all.push('\n');
        }
        let _ = logs_tx.send(all);
    });
    match started_rx.recv_timeout(Duration::from_secs(15)) {
        Ok((proxy, admin)) => Served { child, proxy, admin, logs },
        Err(_) => panic!("hfgate did not start:\n{}", logs.recv_timeout(Duration::from_secs(5)).unwrap_or_default()),
    }
}

/// Sends SIGTERM, waits for the exit, and returns (exited cleanly, stderr).
fn stop_and_collect_logs(mut served: Served) -> (bool, String) {
    Command::new("kill").args(["-TERM", &served.child.id().to_string()]).status().expect("kill");
    let clean = wait_with_timeout(&mut served.child, Duration::from_secs(15));
    (clean, served.logs.recv_timeout(Duration::from_secs(5)).unwrap_or_default())
}

fn wait_with_timeout(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("hfgate did not exit within {timeout:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_secrets_out_of_logs_and_audit_and_drains_on_sigterm() {
    let loopback = "127.0.0.1:0".parse().expect("addr");
    let issuer = DevIssuer::start(loopback, common::AUDIENCE, Algorithm::ES256).await.expect("issuer");
    let upstream =
        MockUpstream::start(loopback, Duration::from_millis(150), Some(format!("Bearer {}", common::ORG_SECRET)))
            .await
            .expect("upstream");
    let dir = common::temp_dir("serve");
    let config = dir.join("hfgate.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n[audit]\npath = \"{}\"\n[[issuer]]\nname = \"dev\"\nissuer = \"{}\"\naudiences = [\"{}\"]\n[[route]]\nname = \"tgi\"\npath = \"/tgi/\"\nupstream = \"http://{}\"\ncredential = \"env:HFGATE_TEST_ORG_TOKEN\"\nstrip_prefix = true\n",
        dir.join("audit.jsonl").display(),
        issuer.issuer(),
        common::AUDIENCE,
        upstream.addr()
    );
    std::fs::write(&config, text).expect("config");
    let served = spawn_serve(&config, &[("HFGATE_TEST_ORG_TOKEN", common::ORG_SECRET)]);
    let (proxy, admin) = (served.proxy.clone(), served.admin.clone());
    let client = hfgate::client::build(Duration::from_secs(2));

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ready =
            common::send(&client, Request::get(format!("http://{admin}/readyz")).body(Body::empty()).expect("req"))
                .await;
        if ready.status == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let good = issuer.mint(&issuer.claims("alice", &["ml-research"], Duration::from_secs(600)));
    let mut bad_claims = issuer.claims("alice", &[], Duration::from_secs(600));
    bad_claims["aud"] = serde_json::json!("someone-else");
    let bad = issuer.mint(&bad_claims);
    let hf = "hf_ThisIsAUserTokenThatMustNeverBeLogged";
    let get = |token: &str| {
        Request::get(format!("http://{proxy}/tgi/echo"))
            .header("authorization", format!("Bearer {token}"))
            .body(Body::empty())
            .expect("req")
    };
    assert_eq!(
        common::send(&client, get(&good)).await.status,
        StatusCode::OK,
        "the org credential from env: reached the upstream"
    );
    assert_eq!(common::send(&client, get(&bad)).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(common::send(&client, get(hf)).await.status, StatusCode::UNAUTHORIZED);

    // A stream in flight when SIGTERM arrives still completes.
    let stream_request = Request::post(format!("http://{proxy}/tgi/v1/chat/completions"))
        .header("authorization", format!("Bearer {good}"))
        .header("content-type", "application/json")
        .body(Body::from(r#"{"model":"tgi","stream":true,"messages":[{"role":"user","content":"hi"}]}"#))
        .expect("req");
    let stream_client = client.clone();
    let in_flight = tokio::spawn(async move { common::timed_chunks(&stream_client, stream_request).await });
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (clean_exit, logs) = tokio::task::spawn_blocking(move || stop_and_collect_logs(served)).await.expect("join");
    let (status, chunks) = in_flight.await.expect("stream task");
    assert_eq!(status, StatusCode::OK);
    let text: String = chunks.iter().map(|(_, c)| String::from_utf8_lossy(c).into_owned()).collect();
    assert!(text.contains("data: [DONE]"), "the in-flight stream was cut: {text}");
    assert!(clean_exit, "hfgate exits 0 after SIGTERM");

    let audit = std::fs::read_to_string(dir.join("audit.jsonl")).expect("audit");
    assert_eq!(audit.lines().count(), 4, "{audit}");
    for secret in [good.as_str(), bad.as_str(), hf, common::ORG_SECRET] {
        assert!(!logs.contains(secret), "a secret leaked into the logs");
        assert!(!audit.contains(secret), "a secret leaked into the audit");
    }
    assert!(logs.contains("hfgate stopped"), "{logs}");
}

fn check_with_policy(config: &str, policy: &str) -> (bool, String) {
    let dir = common::temp_dir("check-policy");
    std::fs::write(dir.join("policies.cedar"), policy).expect("policy");
    let path = dir.join("hfgate.toml");
    std::fs::write(&path, config).expect("config");
    let out = Command::new(BIN).args(["check", "--config"]).arg(&path).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&dir.display().to_string(), "DIR");
    (out.status.success(), stderr)
}

#[test]
fn check_validates_policies_against_the_schema_with_line_numbers() {
    let config = format!("{BASE}\n[authz]\npolicy_file = \"policies.cedar\"\n");
    let good =
        "@id(\"ok\")\npermit (principal in Hfgate::Group::\"g\", action == Hfgate::Action::\"infer\", resource);\n";
    let (ok, stderr) = check_with_policy(&config, good);
    assert!(ok, "{stderr}");

    let syntax = "@id(\"ok\")\npermit (principal, action, resource);\n\npermit (principal action, resource);\n";
    let (ok, stderr) = check_with_policy(&config, syntax);
    assert!(!ok);
    assert!(stderr.contains("DIR/policies.cedar:4: policy:"), "{stderr}");

    let unknown_attr = "permit (principal, action, resource);\n\n@id(\"bad\")\npermit (principal, action, resource)\nwhen { principal.department == \"ml\" };\n";
    let (ok, stderr) = check_with_policy(&config, unknown_attr);
    assert!(!ok);
    assert!(stderr.contains("DIR/policies.cedar:5: policy bad:"), "{stderr}");

    let bad_rule = format!("{BASE}\n[[allow]]\ngroups = [\"g\"]\nroutes = [\"nope\"]\nactions = [\"fly\"]\n");
    let (ok, _, stderr) = check(&bad_rule);
    assert!(!ok);
    assert!(stderr.contains("hfgate.toml:19: allow[0].routes: unknown route \"nope\""), "{stderr}");
    assert!(stderr.contains("hfgate.toml:20: allow[0].actions: unknown action \"fly\""), "{stderr}");
    let quoted = format!("{BASE}\n[[allow]]\nmodels = [\"a\\\" || true || \\\"\"]\n");
    let (ok, _, stderr) = check(&quoted);
    assert!(!ok, "a value that could change a compiled rule's meaning is refused");
    assert!(stderr.contains("allow[0].models"), "{stderr}");
}

#[test]
fn explain_traces_an_allowed_and_a_refused_request() {
    let dir = common::temp_dir("explain");
    let config = format!(
        "{}\n[[allow]]\ngroups = [\"ml-research\"]\nmodels = [\"meta-llama/*\"]\n",
        BASE.replace("api = \"tgi\"", "api = \"tgi\"\nmodel = \"meta-llama/Llama-3.1-8B-Instruct\"")
    );
    std::fs::write(dir.join("hfgate.toml"), &config).expect("config");
    let now = hfgate::jose::unix_now();
    let claims = |groups: &str| {
        format!(
            r#"{{"iss":"https://idp.example.com","sub":"alice","aud":"hfgate","exp":{},"groups":{groups}}}"#,
            now + 600
        )
    };
    let run = |claims: String| explain_claims(&dir, &claims, "http://gate/llama/v1/chat/completions");
    let (code, allowed) = run(claims(r#"["ml-research"]"#));
    assert_eq!(code, Some(0), "{allowed}");
    assert!(allowed.contains("action: infer  model: meta-llama/Llama-3.1-8B-Instruct"), "{allowed}");
    assert!(allowed.contains("decision: ALLOW") && allowed.contains("determining policies: allow[0]"), "{allowed}");
    let (code, refused) = run(claims(r#"["support"]"#));
    assert_eq!(code, Some(2), "{refused}");
    assert!(refused.contains("decision: DENY"), "{refused}");
    assert!(refused.contains("reason: no policy permits infer on meta-llama/Llama-3.1-8B-Instruct"), "{refused}");
}

#[test]
fn explain_applies_the_issuers_claim_conditions_and_policies_see_claims() {
    let dir = common::temp_dir("explain-require");
    let config = BASE.replace(
        "audiences = [\"hfgate\"]",
        "audiences = [\"hfgate\"]\nkind = \"workload\"\nrequire = { repository = \"acme/*\" }",
    ) + "\n[authz]\npolicy_file = \"policies.cedar\"\n";
    std::fs::write(dir.join("hfgate.toml"), &config).expect("config");
    let policy = "@id(\"release\")\npermit (principal, action, resource) when {\n  principal.hasTag(\"workflow\") && principal.getTag(\"workflow\") == \"release\"\n};\n";
    std::fs::write(dir.join("policies.cedar"), policy).expect("policy");
    let now = hfgate::jose::unix_now();
    let run = |repository: &str, workflow: &str| {
        let claims = format!(
            r#"{{"iss":"https://idp.example.com","sub":"repo:{repository}","aud":"hfgate","exp":{},"repository":"{repository}","workflow":"{workflow}"}}"#,
            now + 300
        );
        explain_claims(&dir, &claims, "http://gate/llama/generate")
    };
    let (code, allowed) = run("acme/models", "release");
    assert_eq!(code, Some(0), "{allowed}");
    assert!(allowed.contains("determining policies: release"), "{allowed}");
    let (code, other_workflow) = run("acme/models", "nightly");
    assert_eq!(code, Some(2), "{other_workflow}");
    let (code, foreign) = run("evil/models", "release");
    assert_eq!(code, Some(2), "{foreign}");
    assert!(
        foreign.contains("claim repository is 'evil/models' and does not satisfy issuer corp's require"),
        "{foreign}"
    );

    // A policy reading a claim it did not test for is refused before serving, with its line.
    let config = format!("{BASE}\n[authz]\npolicy_file = \"policies.cedar\"\n");
    let unguarded = "permit (principal, action, resource);\n\n@id(\"tags\")\npermit (principal, action, resource)\nwhen { principal.getTag(\"repository\") == \"acme/x\" };\n";
    let (ok, stderr) = check_with_policy(&config, unguarded);
    assert!(!ok);
    assert!(stderr.contains("DIR/policies.cedar:5: policy tags:") && stderr.contains("access to tag"), "{stderr}");
}

/// `hfgate explain` of a POST to `url` for these claims, with the config in `dir`: exit code and stdout.
fn explain_claims(dir: &Path, claims: &str, url: &str) -> (Option<i32>, String) {
    std::fs::write(dir.join("claims.json"), claims).expect("claims");
    let out = Command::new(BIN)
        .args(["explain", "--config"])
        .arg(dir.join("hfgate.toml"))
        .arg("--claims")
        .arg(dir.join("claims.json"))
        .args(["--method", "POST", "--url", url])
        .output()
        .expect("run");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
}
