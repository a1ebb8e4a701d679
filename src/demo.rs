//! `hfgate demo`: a development issuer, a mock model endpoint and the proxy in front of them, all on
//! loopback, with ready-to-paste commands. The only mode of hfgate that issues tokens.
//!
//! People sign in too: the demo route has `login = "redirect"`, so a browser is sent to the issuer's page
//! to pick a demo user, and `hfgate login` runs the device flow against the same issuer.

pub mod dev_issuer;
pub mod mock_hub;
pub mod mock_upstream;

use std::net::SocketAddr;
use std::time::Duration;

pub use dev_issuer::{DevClient, DevIssuer};
pub use mock_upstream::MockUpstream;

use crate::config;
use crate::jose::Algorithm;
use crate::oauth::random_urlsafe;
use crate::server;

/// The demo's audience and route.
pub const DEMO_AUDIENCE: &str = "hfgate";
pub const DEMO_ROUTE: &str = "demo";
pub const DEMO_MODEL: &str = "hfgate-demo/tiny-chat";
/// The organisation credential the mock upstream insists on, standing in for a real `hf_` token.
pub const DEMO_ORG_CREDENTIAL: &str = "hf_demo_organisation_credential";
/// The clients registered at the dev issuer: the proxy's browser sign-in, and `hfgate login`.
pub const DEMO_WEB_CLIENT: &str = "hfgate-demo-web";
pub const DEMO_CLI_CLIENT: &str = "hfgate-demo-cli";

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("{0}")]
    Issuer(#[from] dev_issuer::DevIssuerError),
    #[error("mock upstream: {0}")]
    Upstream(std::io::Error),
    #[error("cannot write the demo's files: {0}")]
    Files(std::io::Error),
    #[error("{0}")]
    Config(#[from] config::ConfigError),
    #[error("{0}")]
    Server(#[from] server::ServerError),
}

/// Options of `hfgate demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub chunk_delay: Duration,
}

/// The proxy's public URL: where browsers and `hfgate login` reach it.
fn public_url(options: &DemoOptions) -> String {
    format!("http://{}", options.listen)
}

/// Writes the demo's config (the same TOML a user would write) and returns its path. It holds the cookie
/// key, so the directory and the file are the user's only.
fn write_config(
    dir: &std::path::Path,
    options: &DemoOptions,
    issuer: &DevIssuer,
    upstream: SocketAddr,
    cookie_key: &str,
) -> std::io::Result<std::path::PathBuf> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};

    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let credential = dir.join("hf_token");
    std::fs::write(&credential, DEMO_ORG_CREDENTIAL)?;
    let text = format!(
        r#"# Written by `hfgate demo` (development only).
[server]
listen = "{listen}"
admin_listen = "{admin}"
public_url = "{public_url}"

[audit]
path = "-"

[[issuer]]
name = "demo"
issuer = "{issuer}"
audiences = ["{audience}"]

# People sign in at the demo issuer: browsers with the code flow, `hfgate login` with the device flow.
[login]
issuer = "demo"
client_id = "{web_client}"
scopes = ["openid", "email", "profile", "groups", "offline_access"]
cookie_keys = ["{cookie_key}"]   # generated for this run
cli_client_id = "{cli_client}"

[[route]]
name = "{route}"
path = "/{route}/"
upstream = "http://{upstream}"
api = "tgi"
model = "{model}"
credential = "file:{credential}"
strip_prefix = true
login = "redirect"   # browsers without a session sign in; API clients still send bearer tokens

# Research and CI may use the demo model; support may only read its metadata.
[[allow]]
groups = ["ml-research", "ci"]
models = ["hfgate-demo/*"]

[[allow]]
groups = ["support"]
actions = ["metadata"]
"#,
        listen = options.listen,
        admin = options.admin_listen,
        public_url = public_url(options),
        issuer = issuer.issuer(),
        audience = DEMO_AUDIENCE,
        web_client = DEMO_WEB_CLIENT,
        cli_client = DEMO_CLI_CLIENT,
        route = DEMO_ROUTE,
        model = DEMO_MODEL,
        credential = credential.display(),
    );
    let path = dir.join("hfgate-demo.toml");
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&path)?;
    // A file left by an earlier run keeps its mode on open: set it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    Ok(path)
}

/// Runs the demo until SIGTERM or Ctrl-C.
pub async fn run(options: DemoOptions) -> Result<(), DemoError> {
    let loopback: SocketAddr = ([127, 0, 0, 1], 0).into();
    let issuer = DevIssuer::start(loopback, DEMO_AUDIENCE, Algorithm::ES256).await?;
    let upstream = MockUpstream::start(loopback, options.chunk_delay, Some(format!("Bearer {DEMO_ORG_CREDENTIAL}")))
        .await
        .map_err(DemoError::Upstream)?;
    let public_url = public_url(&options);
    issuer.register_client(DevClient::web(DEMO_WEB_CLIENT, &public_url));
    issuer.register_client(DevClient::cli(DEMO_CLI_CLIENT));
    let dir = std::env::temp_dir().join(format!("hfgate-demo-{}", std::process::id()));
    let cookie_key = random_urlsafe(32);
    let config_path = write_config(&dir, &options, &issuer, upstream.addr(), &cookie_key).map_err(DemoError::Files)?;
    let settings = config::load(&config_path)?;
    let running = server::start(settings).await?;
    let ready = tokio::time::timeout(Duration::from_secs(10), async {
        while !running.gateway.authn.ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    if ready.is_err() {
        tracing::warn!("the demo issuer's keys did not load within 10s");
    }
    print_banner(&issuer, &public_url, running.proxy_addr, running.admin_addr, &config_path);
    server::shutdown_signal().await;
    running.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn print_banner(
    issuer: &DevIssuer,
    public_url: &str,
    proxy: SocketAddr,
    admin: SocketAddr,
    config_path: &std::path::Path,
) {
    let alice = issuer.token_for_user("alice").unwrap_or_default();
    let bob = issuer.token_for_user("bob").unwrap_or_default();
    let bot = issuer.token_for_user("ci-bot").unwrap_or_default();
    let base = format!("http://{proxy}/{DEMO_ROUTE}");
    println!(
        r#"
hfgate demo: DEVELOPMENT ONLY. The embedded issuer mints tokens for demo users; never expose it.

  proxy          http://{proxy}   (route /{DEMO_ROUTE}/ -> mock model {DEMO_MODEL})
  admin          http://{admin}/readyz  /metrics
  dev issuer     {iss}   (POST {iss}/token  user=alice|bob|ci-bot)
  config         {config}

Demo users: alice (ml-research), bob (support), ci-bot (workload). Tokens are valid for 1 hour.

Sign in as a person (alice or bob, picked on the dev issuer's page; no password):
  browser        open {public_url}/{DEMO_ROUTE}/ in a browser to sign in
                 {public_url}/.hfgate/whoami shows who you are, /.hfgate/logout signs out
  command line   hfgate login --server {public_url}     (approve the code it prints at the dev issuer)
                 export HF_TOKEN=$(hfgate token)    (then use $HF_TOKEN like $HFGATE_TOKEN below)

Or take a token straight from the dev issuer:

export HFGATE_TOKEN={alice}
export HFGATE_TOKEN_BOB={bob}
export HFGATE_TOKEN_CI={bot}

# A streamed chat completion, checked at the door:
curl -N {base}/v1/chat/completions -H "Authorization: Bearer $HFGATE_TOKEN" \
  -H 'Content-Type: application/json' \
  -d '{{"model":"tgi","stream":true,"messages":[{{"role":"user","content":"Hello"}}]}}'

# The same without a token is refused with the reason:
curl -i {base}/v1/chat/completions -d '{{}}'

# bob (support) may read the model's metadata but not run it: 403 naming the action and the model:
curl -i {base}/v1/chat/completions -H "Authorization: Bearer $HFGATE_TOKEN_BOB" -d '{{}}'
curl -s {base}/info -H "Authorization: Bearer $HFGATE_TOKEN_BOB"

# Why? Ask hfgate:
hfgate explain --config {config} --token "$HFGATE_TOKEN_BOB" --method POST --url {base}/v1/chat/completions

# huggingface_hub (pip install huggingface_hub):
python3 -c 'import os; from huggingface_hub import InferenceClient
c = InferenceClient(base_url="{base}", api_key=os.environ["HFGATE_TOKEN"])
for chunk in c.chat_completion(messages=[{{"role":"user","content":"Hello"}}], stream=True, max_tokens=64):
    print(chunk.choices[0].delta.content or "", end="", flush=True)
print()'

# openai (pip install openai):
python3 -c 'import os; from openai import OpenAI
c = OpenAI(base_url="{base}/v1", api_key=os.environ["HFGATE_TOKEN"])
print(c.chat.completions.create(model="tgi", messages=[{{"role":"user","content":"Hello"}}]).choices[0].message.content)'

Audit lines follow on stdout, one per request. Ctrl-C stops the demo.
"#,
        iss = issuer.issuer(),
        config = config_path.display(),
    );
}
