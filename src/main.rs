#![forbid(unsafe_code)]

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser as _;
use hfgate::cli::{Cli, Command, LogFormat};
use hfgate::{config, demo, server};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("hfgate: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("hfgate=info,warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// A failed `login`, `token` or `logout`: one line on stderr, exit 1.
fn device_failure(err: hfgate::device::DeviceError) -> ExitCode {
    eprintln!("hfgate: {}", err.to_string().replace(char::is_control, " "));
    ExitCode::FAILURE
}

fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    // available_parallelism honours the CPU affinity mask, so `taskset -c 0 hfgate` runs one worker.
    let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    // One worker: a current-thread runtime. A work-stealing runtime with a single worker only adds cross-thread
    // hand-offs: measured on a core shared with the upstream, twice the preemptions per request (bench/README.md).
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(workers);
        builder
    };
    builder.enable_all().build().context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(settings) => {
                if let Err(issues) = hfgate::authz::Authorizer::new(&settings) {
                    for issue in issues {
                        eprintln!("{issue}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
                hfgate::assertion::AssertionSigner::new(
                    settings.server.assertion_key.as_deref(),
                    &settings.server.public_url,
                    settings.server.assertion_lifetime,
                )
                .with_context(|| format!("{}: server.assertion_key", config.display()))?;
                println!(
                    "{}: ok ({} issuer(s), {} route(s))",
                    config.display(),
                    settings.issuers.len(),
                    settings.routes.len()
                );
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => {
                eprintln!("{err}");
                Ok(ExitCode::FAILURE)
            }
        },
        Command::Serve { config } => {
            let settings = match config::load(&config) {
                Ok(settings) => settings,
                Err(err) => {
                    eprintln!("{err}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let runtime = runtime(settings.server.workers)?;
            let audit = runtime.block_on(async {
                let running = server::start(settings).await?;
                let audit = running.gateway.audit.clone();
                server::shutdown_signal().await;
                running.shutdown().await;
                anyhow::Ok(audit)
            })?;
            // Requests still running when the grace ran out are dropped with the runtime, and each writes
            // its audit line then: flush once more after that.
            drop(runtime);
            audit.flush();
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain { config, token, claims, method, url, body, bill_to } => {
            let settings = match config::load(&config) {
                Ok(settings) => settings,
                Err(err) => {
                    eprintln!("{err}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            let authz = match hfgate::authz::Authorizer::new(&settings) {
                Ok(authz) => authz,
                Err(issues) => {
                    for issue in issues {
                        eprintln!("{issue}");
                    }
                    return Ok(ExitCode::FAILURE);
                }
            };
            let caller = match (token, claims) {
                (Some(token), _) => hfgate::explain::Caller::Token(token),
                (None, Some(path)) => {
                    let text =
                        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
                    hfgate::explain::Caller::Claims(
                        serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?,
                    )
                }
                (None, None) => anyhow::bail!("give --token or --claims"),
            };
            let path = match url.parse::<http::Uri>() {
                Ok(uri) => uri.path().to_string(),
                Err(_) => anyhow::bail!("--url {url:?} is not a URL or path"),
            };
            let body = match body {
                Some(p) => Some(std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?),
                None => None,
            };
            let method =
                http::Method::from_bytes(method.to_ascii_uppercase().as_bytes()).context("invalid --method")?;
            let request = hfgate::explain::ExplainRequest { caller, method, path, body, bill_to };
            let explanation = runtime(Some(1))?.block_on(hfgate::explain::explain(&settings, &authz, request));
            print!("{}", explanation.text);
            Ok(if explanation.allowed { ExitCode::SUCCESS } else { ExitCode::from(2) })
        }
        Command::Demo { listen, admin_listen, chunk_delay } => {
            runtime(None)?.block_on(demo::run(demo::DemoOptions { listen, admin_listen, chunk_delay }))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Login { server, no_browser } => {
            let signed_in = runtime(Some(1))?.block_on(hfgate::device::login(&server, !no_browser));
            Ok(signed_in.map_or_else(device_failure, |()| ExitCode::SUCCESS))
        }
        Command::Token { server } => match runtime(Some(1))?.block_on(hfgate::device::token(server.as_deref())) {
            Ok(token) => {
                let mut stdout = std::io::stdout().lock();
                writeln!(stdout, "{token}").and_then(|()| stdout.flush()).context("cannot write to stdout")?;
                Ok(ExitCode::SUCCESS)
            }
            Err(err) => Ok(device_failure(err)),
        },
        Command::Logout { server } => {
            let signed_out = runtime(Some(1))?.block_on(hfgate::device::logout(server.as_deref()));
            Ok(signed_out.map_or_else(device_failure, |()| ExitCode::SUCCESS))
        }
        Command::MockUpstream { listen, chunk_delay, expect_credential_env } => {
            let expect = match expect_credential_env {
                Some(name) => Some(format!(
                    "Bearer {}",
                    std::env::var(&name).with_context(|| format!("environment variable {name} is not set"))?
                )),
                None => None,
            };
            runtime(None)?.block_on(async {
                let upstream = demo::MockUpstream::start(listen, chunk_delay, expect)
                    .await
                    .with_context(|| format!("cannot listen on {listen}"))?;
                eprintln!("mock upstream listening on http://{}", upstream.addr());
                server::shutdown_signal().await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
