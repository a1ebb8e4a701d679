//! The command line: `serve`, `check`, `explain`, `demo`, sign-in (`login`, `token`, `logout`), and the mock
//! upstream the tests and benchmarks use.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "hfgate", version, about = "Identity-aware reverse proxy for Hugging Face model endpoints")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "HFGATE_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve {
        /// The configuration file.
        #[arg(long, short, default_value = "hfgate.toml", env = "HFGATE_CONFIG")]
        config: PathBuf,
    },
    /// Validate a configuration without opening a port; exits non-zero on any problem.
    Check {
        #[arg(long, short, default_value = "hfgate.toml", env = "HFGATE_CONFIG")]
        config: PathBuf,
    },
    /// Trace one request through authentication, classification and the policy decision.
    Explain {
        #[arg(long, short, default_value = "hfgate.toml", env = "HFGATE_CONFIG")]
        config: PathBuf,
        /// The bearer token (verified for real: the issuer's keys are fetched).
        #[arg(long, conflicts_with = "claims", required_unless_present = "claims")]
        token: Option<String>,
        /// A JSON file of claims instead of a token (the signature check is skipped).
        #[arg(long)]
        claims: Option<PathBuf>,
        #[arg(long, short = 'X', default_value = "GET")]
        method: String,
        /// The request URL or path, e.g. http://gate/llama/v1/chat/completions.
        #[arg(long)]
        url: String,
        /// A file holding the request body (for APIs that name the model in it).
        #[arg(long)]
        body: Option<PathBuf>,
        /// A client-sent X-HF-Bill-To to check.
        #[arg(long)]
        bill_to: Option<String>,
    },
    /// Run a development issuer, a mock model endpoint and the proxy on loopback, and print commands to try.
    Demo {
        /// Proxy listener.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin listener (/healthz, /readyz, /metrics).
        #[arg(long, default_value = "127.0.0.1:9090")]
        admin_listen: SocketAddr,
        /// Pause between streamed chunks of the mock model.
        #[arg(long, default_value = "150ms", value_parser = parse_duration_arg)]
        chunk_delay: std::time::Duration,
    },
    /// Sign in to a hfgate server (OAuth device flow at the server's identity provider); the tokens go to
    /// credentials.json in $HFGATE_CONFIG_DIR, else $XDG_CONFIG_HOME/hfgate, else ~/.config/hfgate.
    Login {
        /// The hfgate server, e.g. https://gate.example.com.
        #[arg(long, env = "HFGATE_SERVER")]
        server: String,
        /// Only print where to sign in; do not open a browser.
        #[arg(long)]
        no_browser: bool,
    },
    /// Print the token for a server on stdout, refreshed first when it expires within 60 s
    /// (`export HF_TOKEN=$(hfgate token)`).
    Token {
        /// The hfgate server; optional when signed in to exactly one.
        #[arg(long, env = "HFGATE_SERVER")]
        server: Option<String>,
    },
    /// Forget the tokens for a server (and revoke the refresh token where the identity provider can).
    Logout {
        /// The hfgate server; optional when signed in to exactly one.
        #[arg(long, env = "HFGATE_SERVER")]
        server: Option<String>,
    },
    /// Run only the demo's mock model endpoint (for tests and benchmarks).
    #[command(hide = true)]
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: SocketAddr,
        #[arg(long, default_value = "150ms", value_parser = parse_duration_arg)]
        chunk_delay: std::time::Duration,
        /// Refuse requests whose Authorization is not `Bearer <value of this variable>`.
        #[arg(long)]
        expect_credential_env: Option<String>,
    },
}

fn parse_duration_arg(text: &str) -> Result<std::time::Duration, String> {
    crate::config::parse_duration(text)
}
