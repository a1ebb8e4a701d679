//! Listeners and lifecycle: the proxy listener (HTTP/1.1 and h2c), the admin listener (`/healthz`,
//! `/readyz`, `/metrics`, never on the proxy port), key refresh tasks, and graceful shutdown.

mod timer;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{StatusCode, header};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::assertion::{AssertionKeyError, AssertionSigner};
use crate::audit::AuditSink;
use crate::config::{AuditTarget, Settings};
use crate::metrics::Metrics;
use crate::proxy::{self, Gateway};

/// Why the server could not start. Nothing is listening when this is returned.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot open the audit log {target}: {source}")]
    Audit { target: String, source: std::io::Error },
    #[error("assertion key: {0}")]
    AssertionKey(#[from] AssertionKeyError),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Policy(Vec<crate::config::ConfigIssue>),
}

/// A started server; dropping it does not stop it, [`RunningServer::shutdown`] does.
#[derive(Debug)]
pub struct RunningServer {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gateway: Arc<Gateway>,
    stop: watch::Sender<bool>,
    serving: Vec<JoinHandle<()>>,
    refreshers: Vec<JoinHandle<()>>,
}

/// Builds the gateway and binds both listeners; serving starts immediately, keys load in the background
/// (`/readyz` answers 503 until they have).
pub async fn start(settings: Settings) -> Result<RunningServer, ServerError> {
    let authz = crate::authz::Authorizer::new(&settings).map_err(ServerError::Policy)?;
    let settings = Arc::new(settings);
    let audit = AuditSink::open(&settings.audit).map_err(|source| ServerError::Audit {
        target: match &settings.audit {
            AuditTarget::Stdout => "-".into(),
            AuditTarget::File(p) => p.display().to_string(),
        },
        source,
    })?;
    let signer = AssertionSigner::new(
        settings.server.assertion_key.as_deref(),
        &settings.server.public_url,
        settings.server.assertion_lifetime,
    )?;
    let metrics = Arc::new(Metrics::new());
    let client = crate::client::build(settings.server.upstream_connect_timeout);
    let gateway = Arc::new(Gateway::new(settings.clone(), authz, signer, audit, metrics, client));

    let proxy_listener = bind(settings.server.listen).await?;
    let admin_listener = bind(settings.server.admin_listen).await?;
    let proxy_addr =
        proxy_listener.local_addr().map_err(|source| ServerError::Bind { addr: settings.server.listen, source })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr: settings.server.admin_listen, source })?;

    let refreshers = gateway.authn.spawn_key_refresh();
    let limits = Limits {
        header_read_timeout: settings.server.header_read_timeout,
        max_header_bytes: settings.server.max_header_bytes,
    };
    let (stop, stopped) = watch::channel(false);
    let serving = vec![
        serve(
            proxy_listener,
            Listener::Proxy(gateway.clone(), hfgate_router(gateway.clone())),
            stopped.clone(),
            limits,
        ),
        serve(admin_listener, Listener::Admin(admin_router(gateway.clone())), stopped, limits),
    ];
    tracing::info!(proxy = %proxy_addr, admin = %admin_addr, routes = gateway.routes.len(), issuers = gateway.authn.issuers().len(), "hfgate listening");
    Ok(RunningServer { proxy_addr, admin_addr, gateway, stop, serving, refreshers })
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServerError> {
    TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { addr, source })
}

/// Connection limits applied to every listener.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read_timeout: std::time::Duration,
    max_header_bytes: usize,
}

/// What a listener serves.
#[derive(Clone)]
enum Listener {
    /// Proxied requests go straight to the pipeline; hfgate's own `/.hfgate/` endpoints to the router.
    Proxy(Arc<Gateway>, Router),
    Admin(Router),
}

/// hfgate's own endpoints on the proxy listener live under this prefix; every other path is proxied.
const OWN_PREFIX: &str = "/.hfgate/";

impl Listener {
    /// Serves one request. The proxy path skips the router: it is the hot path and needs no routing.
    async fn call(self, peer: SocketAddr, mut request: http::Request<hyper::body::Incoming>) -> Response<Body> {
        let mut router = match self {
            Listener::Proxy(gateway, router) => {
                if !request.uri().path().starts_with(OWN_PREFIX) {
                    if let Some(route) = crate::ci_token::route_for(&gateway, request.method(), request.uri().path()) {
                        return crate::ci_token::handle(gateway, route, request.map(Body::new)).await;
                    }
                    return proxy::handle(gateway, peer, request.map(Body::new)).await;
                }
                router
            }
            Listener::Admin(router) => router,
        };
        request.extensions_mut().insert(ConnectInfo(peer));
        match tower_service::Service::call(&mut router, request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }
}

/// Accepts connections (HTTP/1.1 and h2c) until told to stop, then waits for open connections to finish.
/// Slow header senders are cut after `header_read_timeout`; oversized headers get 431.
fn serve(
    listener: TcpListener,
    target: Listener,
    mut stopped: watch::Receiver<bool>,
    limits: Limits,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let deadlines = timer::CoarseTimer::default();
        let ticker = deadlines.spawn_ticker();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(deadlines)
            .header_read_timeout(limits.header_read_timeout)
            .max_buf_size(limits.max_header_bytes);
        builder.http2().timer(TokioTimer::new()).max_header_list_size(limits.max_header_bytes as u32);
        let graceful = GracefulShutdown::new();
        let stop = async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        tokio::pin!(stop);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(pair) => pair,
                        Err(err) => {
                            // Out of file descriptors and the like: back off instead of spinning.
                            tracing::warn!(%err, "accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            continue;
                        }
                    };
                    let _ = stream.set_nodelay(true);
                    let target = target.clone();
                    let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                        let target = target.clone();
                        async move { Ok::<_, std::convert::Infallible>(target.call(peer, request).await) }
                    });
                    let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    let connection = graceful.watch(connection);
                    tokio::spawn(async move {
                        if let Err(err) = connection.await {
                            tracing::debug!(%err, %peer, "connection ended with an error");
                        }
                    });
                }
                () = &mut stop => break,
            }
        }
        drop(listener);
        graceful.shutdown().await;
        ticker.abort();
    })
}

impl RunningServer {
    /// Stops accepting, lets in-flight requests finish for up to `shutdown_grace`, then flushes the audit log.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let grace = self.gateway.settings.server.shutdown_grace;
        let drained = tokio::time::timeout(grace, async {
            for task in self.serving {
                let _ = task.await;
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(grace = ?grace, "shutdown grace elapsed with requests still in flight");
        }
        for task in self.refreshers {
            task.abort();
        }
        self.gateway.audit.flush();
        tracing::info!("hfgate stopped");
    }
}

/// hfgate's own endpoints on the proxy listener; a `/.hfgate/` path no endpoint serves is still proxied.
fn hfgate_router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/.hfgate/jwks.json", get(hfgate_jwks))
        .merge(crate::login::endpoints::routes())
        .fallback(proxy_request)
        .with_state(gateway)
}

async fn proxy_request(
    State(gateway): State<Arc<Gateway>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response<Body> {
    proxy::handle(gateway, peer, request).await
}

async fn hfgate_jwks(State(gateway): State<Arc<Gateway>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/jwk-set+json"), (header::CACHE_CONTROL, "public, max-age=300")],
        gateway.signer.jwks().to_string(),
    )
        .into_response()
}

fn admin_router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(gateway)
}

async fn readyz(State(gateway): State<Arc<Gateway>>) -> Response {
    let issuers: serde_json::Map<String, serde_json::Value> = gateway
        .authn
        .issuers()
        .iter()
        .map(|k| (k.settings.name.clone(), serde_json::Value::Bool(k.is_loaded())))
        .collect();
    let ready = gateway.authn.ready();
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, axum::Json(serde_json::json!({ "ready": ready, "issuers_loaded": issuers }))).into_response()
}

async fn metrics(State(gateway): State<Arc<Gateway>>) -> Response {
    gateway.metrics.cache_entries("tokens", gateway.authn.cached_tokens());
    gateway.metrics.cache_entries("assertions", gateway.signer.cached_assertions());
    gateway.metrics.cache_entries("decisions", gateway.authz.cached_decisions());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], gateway.metrics.render()).into_response()
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}
