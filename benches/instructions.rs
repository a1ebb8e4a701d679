//! Instruction-count benchmark: the per-request operations on hfgate's hot path, each run N times
//! inside one `#[inline(never)]` function named `measure_<operation>`, so that a profiler told to
//! collect only inside those functions counts exactly the operation (plus a loop increment).
//! `bench/instructions.sh` runs this binary under valgrind's callgrind and prints instructions per
//! operation against `bench/instructions.baseline`; see bench/README.md, "Instruction counts".
//!
//! Run directly (`cargo bench --bench instructions`), it prints wall-clock nanoseconds per operation
//! instead, which only says that everything works.
//!
//! Set-up is the product's own: the configuration is parsed from TOML (`hfgate::config::parse`), the
//! issuer's keys are fetched over HTTP from a JWKS served on 127.0.0.1 by this process, tokens are
//! signed with `hfgate::jose::SigningKey`, and the rule sets are those of `bench/run.sh`
//! (`bench/lib/rules.py`).

use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::pin::pin;
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use hfgate::assertion::AssertionSigner;
use hfgate::authn::{Authenticator, Identity};
use hfgate::authz::{Authorizer, Question};
use hfgate::classify::{self, Action, Classified};
use hfgate::config::{ApiKind, Settings};
use hfgate::jose::{Algorithm, SigningKey, unix_now};
use hfgate::metrics::Metrics;
use hfgate::route::{Route, RouteTable};
use http::Method;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const ISSUER: &str = "https://bench.example";
const AUDIENCE: &str = "hfgate-bench";

/// One measured operation: its name (the function is `measure_<name>`) and how often it runs.
struct Operation {
    name: &'static str,
    iterations: usize,
    run: fn(&Fixture, usize),
    what: &'static str,
}

const OPERATIONS: &[Operation] = &[
    Operation {
        name: "verify_rs256",
        iterations: 100,
        run: measure_verify_rs256,
        what: "full RS256 verification, no cache: parse, issuer, key, signature, claims, identity",
    },
    Operation { name: "verify_es256", iterations: 100, run: measure_verify_es256, what: "the same with ES256 tokens" },
    Operation {
        name: "authenticate_first_seen_rs256",
        iterations: 100,
        run: measure_authenticate_first_seen_rs256,
        what: "authenticate a token never seen before: digest, cache miss, verification, cache insert",
    },
    Operation {
        name: "cache_hit",
        iterations: 5000,
        run: measure_cache_hit,
        what: "authenticate a token seen before: digest, cache hit, exp check",
    },
    Operation {
        name: "classify_openai_body",
        iterations: 5000,
        run: measure_classify_openai_body,
        what: "POST /v1/chat/completions on an openai route: the model from the JSON body",
    },
    Operation {
        name: "classify_hub_path",
        iterations: 5000,
        run: measure_classify_hub_path,
        what: "GET /{org}/{name}/resolve/main/config.json on a hub route",
    },
    Operation {
        name: "classify_tgi_path",
        iterations: 5000,
        run: measure_classify_tgi_path,
        what: "POST /generate on a tgi route with a configured model",
    },
    Operation {
        name: "decide_cached",
        iterations: 5000,
        run: measure_decide_cached,
        what: "decision-cache hit (5 rules): same caller, route, action and model",
    },
    Operation {
        name: "decide_uncached_5_rules",
        iterations: 500,
        run: measure_decide_uncached_5_rules,
        what: "decision for a caller the cache has not seen (another group set): Cedar evaluation, insert (5 rules)",
    },
    Operation {
        name: "decide_uncached_500_rules",
        iterations: 200,
        run: measure_decide_uncached_500_rules,
        what: "the same with bench/run.sh's 500 rules",
    },
    Operation {
        name: "assertion_first_seen",
        iterations: 200,
        run: measure_assertion_first_seen,
        what: "X-Hfgate-Assertion for a new token digest: claims, ES256 signature, cache insert",
    },
];

/// Everything the operations need, built before any measurement.
struct Fixture {
    authn: Authenticator,
    /// The token of the cache-hit and decision measurements (authenticated during set-up).
    rs256: String,
    /// Distinct valid tokens, one per iteration (ECDSA verification time depends on the signature, so
    /// verifying many different ones gives a steady average), plus spares for the checks.
    fresh_rs256: Vec<String>,
    fresh_es256: Vec<String>,
    identity: Arc<Identity>,
    /// Digests no assertion was cached for, one per iteration.
    new_digests: Vec<[u8; 32]>,
    /// The benchmark caller, each with one more group the policies never name: decisions are cached per
    /// caller as the policies see it (kind, issuer, groups), so each of these is a decision-cache miss.
    new_callers: Vec<Identity>,
    authz5: Authorizer,
    authz500: Authorizer,
    route: Arc<Route>,
    classified: Classified,
    openai_body: Vec<u8>,
    hub_path: &'static str,
    signer: AssertionSigner,
}

// ---------------------------------------------------------------- the measured functions
// Each takes the iteration count from the caller, so the loop cannot be unrolled away, and passes
// results through black_box, so no call is optimized out.

#[inline(never)]
fn measure_verify_rs256(f: &Fixture, n: usize) {
    for token in &f.fresh_rs256[..n] {
        black_box(ready(f.authn.verify(black_box(token))).ok());
    }
}

#[inline(never)]
fn measure_verify_es256(f: &Fixture, n: usize) {
    for token in &f.fresh_es256[..n] {
        black_box(ready(f.authn.verify(black_box(token))).ok());
    }
}

#[inline(never)]
fn measure_authenticate_first_seen_rs256(f: &Fixture, n: usize) {
    // verify_rs256 caches nothing, so these tokens are still unseen here.
    for token in &f.fresh_rs256[..n] {
        black_box(ready(f.authn.authenticate(black_box(token))).ok());
    }
}

#[inline(never)]
fn measure_cache_hit(f: &Fixture, n: usize) {
    for _ in 0..n {
        black_box(ready(f.authn.authenticate(black_box(&f.rs256))).ok());
    }
}

#[inline(never)]
fn measure_classify_openai_body(f: &Fixture, n: usize) {
    let request = classify::Request { method: &Method::POST, path: "/v1/chat/completions", route_model: None };
    for _ in 0..n {
        black_box(classify::classify(ApiKind::OpenAi, black_box(&request), Some(black_box(&f.openai_body))).ok());
    }
}

#[inline(never)]
fn measure_classify_hub_path(f: &Fixture, n: usize) {
    let request = classify::Request { method: &Method::GET, path: f.hub_path, route_model: None };
    for _ in 0..n {
        black_box(classify::classify(ApiKind::Hub, black_box(&request), None).ok());
    }
}

#[inline(never)]
fn measure_classify_tgi_path(_: &Fixture, n: usize) {
    let request = classify::Request {
        method: &Method::POST,
        path: "/generate",
        route_model: Some("meta-llama/Llama-3.1-8B-Instruct"),
    };
    for _ in 0..n {
        black_box(classify::classify(ApiKind::Tgi, black_box(&request), None).ok());
    }
}

#[inline(never)]
fn measure_decide_cached(f: &Fixture, n: usize) {
    let question = f.question();
    for _ in 0..n {
        black_box(f.authz5.decide(black_box(&question)));
    }
}

#[inline(never)]
fn measure_decide_uncached_5_rules(f: &Fixture, n: usize) {
    for caller in &f.new_callers[..n] {
        black_box(f.authz5.decide(black_box(&f.question_of(caller))));
    }
}

#[inline(never)]
fn measure_decide_uncached_500_rules(f: &Fixture, n: usize) {
    for caller in &f.new_callers[..n] {
        black_box(f.authz500.decide(black_box(&f.question_of(caller))));
    }
}

#[inline(never)]
fn measure_assertion_first_seen(f: &Fixture, n: usize) {
    for digest in &f.new_digests[..n] {
        black_box(f.signer.assertion(black_box(*digest), f.route.index, &f.route.settings.name, &f.identity));
    }
}

// ---------------------------------------------------------------- set-up

impl Fixture {
    /// The benchmark's request: GET / on the generic route `bench`, which group `bench` may read.
    fn question(&self) -> Question<'_> {
        self.question_of(&self.identity)
    }

    /// The same request from another caller.
    fn question_of<'f>(&'f self, identity: &'f Identity) -> Question<'f> {
        Question { identity, route: &self.route, method: "GET", path: "/", classified: &self.classified }
    }
}

/// Polls a future that completes without waiting (the issuer's keys are loaded, so verification
/// never fetches): no runtime is involved in what is measured.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a measured operation waited for I/O: the fixture is incomplete"),
    }
}

/// Serves `body` as `application/json` to every connection (the issuer's JWKS).
async fn serve_json(body: String) -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the JWKS listener")?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        }
    });
    Ok(port)
}

/// The routes and rules `bench/run.sh` appends for its rule targets.
fn rules_fragment(rules: usize) -> anyhow::Result<String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/lib/rules.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(["--rules", &rules.to_string(), "--upstream", "http://127.0.0.1:9"])
        .output()
        .with_context(|| format!("running python3 {}", script.display()))?;
    ensure!(output.status.success(), "{} failed: {}", script.display(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).context("rules.py printed non-UTF-8")
}

fn settings(jwks_port: u16, rules: usize) -> anyhow::Result<Settings> {
    let text = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
public_url = "http://127.0.0.1"

[[issuer]]
name = "bench"
issuer = "{ISSUER}"
jwks_uri = "http://127.0.0.1:{jwks_port}/jwks.json"
audiences = ["{AUDIENCE}"]
algorithms = ["RS256", "ES256"]

[[route]]
name = "bench"
path = "/"
upstream = "http://127.0.0.1:9"
api = "generic"
credential = "none"

{}"#,
        rules_fragment(rules)?
    );
    hfgate::config::parse(Path::new("instructions.toml"), &text).map_err(|e| {
        let issues: Vec<String> = e.issues().iter().map(ToString::to_string).collect();
        anyhow::anyhow!("the benchmark configuration is invalid: {e} {}", issues.join("; "))
    })
}

fn token(key: &SigningKey, subject: &str) -> anyhow::Result<String> {
    let now = unix_now();
    let claims = json!({
        "iss": ISSUER, "sub": subject, "aud": AUDIENCE, "iat": now, "exp": now + 3600, "groups": ["bench"],
        "jti": subject,
    });
    key.sign_jwt(&json!({"typ": "JWT"}), &claims).context("signing a token")
}

fn authorizer(settings: &Settings) -> anyhow::Result<Authorizer> {
    Authorizer::new(settings).map_err(|issues| {
        let text: Vec<String> = issues.iter().map(|i| format!("{}: {}", i.key, i.message)).collect();
        anyhow::anyhow!("the rules do not compile: {}", text.join("; "))
    })
}

fn fixture(runtime: &tokio::runtime::Runtime) -> anyhow::Result<Fixture> {
    let max = |name: &str| OPERATIONS.iter().find(|o| o.name == name).map_or(0, |o| o.iterations);
    let rs = SigningKey::generate(Algorithm::RS256).context("generating an RSA key")?;
    let es = SigningKey::generate(Algorithm::ES256).context("generating a P-256 key")?;
    let jwks = json!({ "keys": [rs.public_jwk(), es.public_jwk()] }).to_string();
    let port = runtime.block_on(serve_json(jwks))?;

    let settings5 = settings(port, 5)?;
    let settings500 = settings(port, 500)?;
    let authn =
        Authenticator::new(&settings5.issuers, hfgate::client::build(Duration::from_secs(5)), Arc::new(Metrics::new()));
    for issuer in authn.issuers() {
        runtime.block_on(issuer.refresh()).with_context(|| format!("fetching the JWKS from 127.0.0.1:{port}"))?;
    }

    let rs256 = token(&rs, "bench-user")?;
    // Every fresh token differs (sub and jti); three spares at the end serve the checks.
    let fresh = |key: &SigningKey, count: usize| {
        (0..count + 3).map(|n| token(key, &format!("bench-user-{n}"))).collect::<anyhow::Result<Vec<_>>>()
    };
    let fresh_rs256 = fresh(&rs, max("verify_rs256").max(max("authenticate_first_seen_rs256")))?;
    let fresh_es256 = fresh(&es, max("verify_es256"))?;
    let identity = ready(authn.authenticate(&rs256)).context("the benchmark token is refused")?;

    let routes = RouteTable::new(&settings5.routes);
    let route = routes.find("/").context("no route for /")?.clone();
    ensure!(&*route.name == "bench", "GET / is routed to {}, not bench", route.name);
    let classified = classify::classify(
        ApiKind::Generic,
        &classify::Request { method: &Method::GET, path: "/", route_model: None },
        None,
    )
    .context("GET / on a generic route does not classify")?;
    ensure!(classified.action == Action::Read && classified.model.is_none(), "GET / is {classified:?}, not a read");

    let new_digests = (0..OPERATIONS.iter().map(|o| o.iterations).max().unwrap_or(0) + 3)
        .map(|n: usize| {
            let mut digest = [0xA5u8; 32];
            digest[..8].copy_from_slice(&(n as u64).to_be_bytes());
            digest
        })
        .collect();
    let new_callers = (0..OPERATIONS.iter().map(|o| o.iterations).max().unwrap_or(0) + 3)
        .map(|n| {
            let claims = json!({"sub": "bench-user", "groups": ["bench", format!("bench-extra-{n}")]});
            let claims = claims.as_object().cloned().unwrap_or_default();
            hfgate::authn::claims::identity_from_claims(&settings5.issuers[0], &claims, identity.expires_at)
        })
        .collect();
    let openai_body = serde_json::to_vec(&json!({
        "model": "meta-llama/Llama-3.1-8B-Instruct",
        "messages": [
            {"role": "system", "content": "Reply in one short sentence."},
            {"role": "user", "content": "Summarize the following paragraph in one sentence: the quick brown fox jumps over the lazy dog, again and again, until the dog gets up and leaves."}
        ],
        "max_tokens": 256,
        "temperature": 0.2,
        "stream": true
    }))?;
    let signer = AssertionSigner::new(None, "http://127.0.0.1", Duration::from_secs(300)).context("assertion key")?;
    Ok(Fixture {
        authn,
        rs256,
        fresh_rs256,
        fresh_es256,
        identity,
        new_digests,
        new_callers,
        authz5: authorizer(&settings5)?,
        authz500: authorizer(&settings500)?,
        route,
        classified,
        openai_body,
        hub_path: "/meta-llama/Llama-3.1-8B-Instruct/resolve/main/config.json",
        signer,
    })
}

/// Each operation once, outside the measured functions: the results must be what the benchmark
/// claims to measure, and one-time work (lazy statics, first allocations) is paid here.
fn check(f: &Fixture) -> anyhow::Result<()> {
    // The spare tokens past the measured ones: verified, and authenticated first-seen.
    for token in &f.fresh_es256[f.fresh_es256.len() - 3..] {
        ready(f.authn.verify(token)).context("ES256 verification failed")?;
    }
    for token in &f.fresh_rs256[f.fresh_rs256.len() - 3..] {
        ready(f.authn.verify(token)).context("RS256 verification failed")?;
        ready(f.authn.authenticate(token)).context("a first-seen token is refused")?;
    }
    ready(f.authn.authenticate(&f.rs256)).context("the cached token is refused")?;

    let body = classify::Request { method: &Method::POST, path: "/v1/chat/completions", route_model: None };
    let got = classify::classify(ApiKind::OpenAi, &body, Some(&f.openai_body))?;
    ensure!(got.action == Action::Infer && got.model.is_some(), "openai body classified as {got:?}");
    let hub = classify::Request { method: &Method::GET, path: f.hub_path, route_model: None };
    let got = classify::classify(ApiKind::Hub, &hub, None)?;
    ensure!(got.action == Action::Download && got.model.is_some(), "hub path classified as {got:?}");
    let tgi = classify::Request {
        method: &Method::POST,
        path: "/generate",
        route_model: Some("meta-llama/Llama-3.1-8B-Instruct"),
    };
    let got = classify::classify(ApiKind::Tgi, &tgi, None)?;
    ensure!(got.action == Action::Infer && got.model.is_some(), "tgi path classified as {got:?}");

    let question = f.question();
    for (authz, rules) in [(&f.authz5, 5), (&f.authz500, 500)] {
        ensure!(authz.enabled(), "{rules} rules: no policy is configured");
        let verdict = authz.decide(&question);
        ensure!(verdict.allow, "{rules} rules refuse the benchmark request: {}", verdict.reason);
        // A spare caller past the measured ones: the uncached path decides the same.
        let spare = &f.new_callers[f.new_callers.len() - 1];
        let verdict = authz.decide(&f.question_of(spare));
        ensure!(verdict.allow, "{rules} rules refuse the benchmark request uncached: {}", verdict.reason);
    }
    let spare = f.new_digests[f.new_digests.len() - 2];
    ensure!(
        f.signer.assertion(spare, f.route.index, &f.route.settings.name, &f.identity).is_some(),
        "no assertion was minted"
    );
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("instructions: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    // `cargo bench` passes --bench; names select operations (all by default); --list prints them.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if args.iter().any(|a| a == "--list") {
        for op in OPERATIONS {
            println!("{} {} {}", op.name, op.iterations, op.what);
        }
        return Ok(());
    }
    if let Some(unknown) = args.iter().find(|a| !OPERATIONS.iter().any(|o| o.name == a.as_str())) {
        let known: Vec<&str> = OPERATIONS.iter().map(|o| o.name).collect();
        bail!("unknown operation {unknown:?}; known: {}", known.join(", "));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("tokio runtime")?;
    let fixture = fixture(&runtime)?;
    check(&fixture)?;
    for op in OPERATIONS.iter().filter(|o| args.is_empty() || args.iter().any(|a| a == o.name)) {
        let started = Instant::now();
        (op.run)(&fixture, op.iterations);
        let per_op = started.elapsed().as_nanos() / op.iterations as u128;
        // "measured NAME ITERATIONS NS_PER_OP": bench/instructions.sh reads the iteration count here.
        println!("measured {} {} {per_op}", op.name, op.iterations);
    }
    Ok(())
}
