//! hfgate's HTTP path with none of its work: the same runtime (one current-thread worker), the same server
//! builder (HTTP/1.1 and h2c, graceful connections) and the same per-route upstream connections
//! (`hfgate::proxy::pool`), but no token, decision, audit line, metrics or header rewriting. `bench/run.sh`
//! measures it as `bare`: whatever hfgate does per request comes on top of this, so its ratio to nginx is
//! the most any change inside hfgate's own code could reach on this stack.
//!
//! Usage: `bare_proxy LISTEN UPSTREAM`, for example `bare_proxy 127.0.0.1:18410 127.0.0.1:18400`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use hfgate::proxy::pool::UpstreamPool;
use http::uri::Authority;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream), None) = (args.next(), args.next(), args.next()) else {
        anyhow::bail!("usage: bare_proxy LISTEN UPSTREAM (host:port each)");
    };
    let upstream: Authority = upstream.parse().context("UPSTREAM must be host:port")?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(serve(&listen, upstream))
}

async fn serve(listen: &str, upstream: Authority) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let pool = Arc::new(UpstreamPool::new([Some(&upstream)], Duration::from_secs(5)));
    let builder = auto::Builder::new(TokioExecutor::new());
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let pool = pool.clone();
        let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let pool = pool.clone();
            async move {
                let response = match pool.send(0, request.map(Body::new)).await {
                    Ok(response) => response.map(Body::new),
                    Err(_) => http::Response::builder().status(502).body(Body::empty()).unwrap_or_default(),
                };
                Ok::<_, Infallible>(response)
            }
        });
        let connection =
            graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned());
        tokio::spawn(connection);
    }
}
