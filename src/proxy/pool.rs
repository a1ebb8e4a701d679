//! HTTP/1.1 connections to plain-`http` upstreams, kept per route.
//!
//! A connection serves one request at a time: the request's own task takes it from its route's idle stack,
//! and the response body puts it back when it ends. Nothing else runs per request (no pool key to hash, no
//! task spawned to watch for the connection becoming free, as a general pooled client does). `https`
//! upstreams go through the general client instead (TLS, ALPN h2).

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::uri::{Authority, Parts, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::client::legacy::connect::HttpConnector;
use tower_service::Service as _;

/// Idle connections kept per route; more are closed when their responses end.
const MAX_IDLE_PER_ROUTE: usize = 1024;
/// An idle connection unused this long is closed when its route is next used.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Why a request could not be sent on a pooled or new connection.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The TCP connect failed or timed out.
    #[error("connect")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The HTTP/1.1 exchange failed: reset, closed early, a malformed response.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

/// One route's upstream and its idle connections; the most recently used is reused first, so idle ones
/// age out.
struct Slot {
    /// `http://host:port/`, to connect to.
    origin: Uri,
    /// The `Host` header (without the default port, as general clients send it).
    host: HeaderValue,
    idle: Mutex<Vec<Idle>>,
}

impl Slot {
    fn new(authority: &Authority) -> Option<Slot> {
        let origin =
            Uri::builder().scheme(Scheme::HTTP).authority(authority.clone()).path_and_query("/").build().ok()?;
        let host = if authority.port_u16() == Some(80) { authority.host() } else { authority.as_str() };
        let host = HeaderValue::from_str(host).ok()?;
        Some(Slot { origin, host, idle: Mutex::default() })
    }
}

impl Slot {
    fn checkout(&self) -> Option<http1::SendRequest<Body>> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(entry) = idle.pop() {
            if !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    fn checkin(self: &Arc<Self>, mut sender: http1::SendRequest<Body>) {
        if sender.is_closed() {
            return;
        }
        if !sender.is_ready() {
            // Still sending the request body (the upstream answered early): kept once that is done, so the
            // next request is not left waiting behind an upload.
            let slot = self.clone();
            tokio::spawn(async move {
                if std::future::poll_fn(|cx| sender.poll_ready(cx)).await.is_ok() {
                    slot.keep(sender);
                }
            });
            return;
        }
        self.keep(sender);
    }

    fn keep(&self, sender: http1::SendRequest<Body>) {
        let now = Instant::now();
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // The oldest are at the bottom: close those unused for longer than the idle timeout.
        let stale = idle.iter().take_while(|entry| now.duration_since(entry.since) > IDLE_TIMEOUT).count();
        if stale > 0 {
            idle.drain(..stale);
        }
        if idle.len() < MAX_IDLE_PER_ROUTE {
            idle.push(Idle { sender, since: now });
        }
    }
}

/// The connections of every route with a plain-`http` upstream, by route index.
pub struct UpstreamPool {
    connector: HttpConnector,
    slots: Box<[Option<Arc<Slot>>]>,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool").field("routes", &self.slots.iter().filter(|s| s.is_some()).count()).finish()
    }
}

impl UpstreamPool {
    /// A slot for each route whose upstream is plain `http` (the authority of route `i`'s upstream, if so);
    /// the others use the general client.
    pub fn new<'a>(plain: impl IntoIterator<Item = Option<&'a Authority>>, connect_timeout: Duration) -> UpstreamPool {
        let connector = crate::client::tcp_connector(connect_timeout);
        let slots = plain.into_iter().map(|authority| authority.and_then(Slot::new).map(Arc::new)).collect();
        UpstreamPool { connector, slots }
    }

    /// Whether `route`'s requests go through this pool.
    pub fn serves(&self, route: usize) -> bool {
        matches!(self.slots.get(route), Some(Some(_)))
    }

    /// Sends `request` (its URI's path and query; `Host` is the upstream's unless set) on an idle connection
    /// of `route`, or a new one. A pooled connection the upstream closed before the request went out is
    /// skipped and the request sent on another.
    pub async fn send(&self, route: usize, mut request: Request<Body>) -> Result<Response<UpstreamBody>, PoolError> {
        let Some(Some(slot)) = self.slots.get(route) else {
            return Err(PoolError::Connect("the route has no plain-http upstream".into()));
        };
        // Origin form, as an HTTP/1.1 origin server expects it.
        let mut origin_form = Parts::default();
        origin_form.path_and_query = std::mem::take(request.uri_mut()).into_parts().path_and_query;
        *request.uri_mut() = Uri::from_parts(origin_form).unwrap_or_default();
        if !request.headers().contains_key(header::HOST) {
            request.headers_mut().insert(header::HOST, slot.host.clone());
        }
        while let Some(mut sender) = slot.checkout() {
            if std::future::poll_fn(|cx| sender.poll_ready(cx)).await.is_err() {
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(UpstreamBody::pooled(response, slot, sender)),
                Err(mut failed) => match failed.take_message() {
                    // Never written: the connection had closed under us; try the next one.
                    Some(unsent) => request = unsent,
                    None => return Err(PoolError::Http(failed.into_error())),
                },
            }
        }
        let io =
            self.connector.clone().call(slot.origin.clone()).await.map_err(|err| PoolError::Connect(Box::new(err)))?;
        let (mut sender, connection) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, "upstream connection ended");
            }
        });
        let response = sender.send_request(request).await?;
        Ok(UpstreamBody::pooled(response, slot, sender))
    }
}

/// An upstream response body. Read from a pooled connection, it puts the connection back when it ends;
/// dropped before its end, the connection is dropped too (hyper closes it: the rest of the body is unread).
pub struct UpstreamBody {
    inner: Incoming,
    checkin: Option<(Arc<Slot>, http1::SendRequest<Body>)>,
}

impl std::fmt::Debug for UpstreamBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamBody").field("pooled", &self.checkin.is_some()).finish()
    }
}

impl UpstreamBody {
    /// A body from the general client, which pools its connections itself.
    pub fn unpooled(response: Response<Incoming>) -> Response<UpstreamBody> {
        response.map(|inner| UpstreamBody { inner, checkin: None })
    }

    fn pooled(
        response: Response<Incoming>,
        slot: &Arc<Slot>,
        sender: http1::SendRequest<Body>,
    ) -> Response<UpstreamBody> {
        response.map(|inner| {
            let mut body = UpstreamBody { inner, checkin: Some((slot.clone(), sender)) };
            if body.inner.is_end_stream() {
                body.release();
            }
            body
        })
    }

    fn release(&mut self) {
        if let Some((slot, sender)) = self.checkin.take() {
            slot.checkin(sender);
        }
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(Some(Err(_))) => this.checkin = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
