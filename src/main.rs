#![forbid(unsafe_code)]

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

fn runtime(workers: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    // available_parallelism honours the CPU affinity mask, so `taskset -c 0 hfgate` runs one worker.
    let workers = workers.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(settings) => {
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
            runtime(settings.server.workers)?.block_on(async {
                let running = server::start(settings).await?;
                server::shutdown_signal().await;
                running.shutdown().await;
                anyhow::Ok(())
            })?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { listen, admin_listen, chunk_delay } => {
            runtime(None)?.block_on(demo::run(demo::DemoOptions { listen, admin_listen, chunk_delay }))?;
            Ok(ExitCode::SUCCESS)
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
