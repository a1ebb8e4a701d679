//! Bodies pass through frame by frame, never buffered. [`CountingBody`] counts request bytes and ends a
//! body that outgrows its limit;
//! [`ObservedBody`] counts response bytes, enforces the idle timeout, taps token usage, and calls its
//! end-of-stream hook exactly once: when the body ends, fails, or is dropped because the client left.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use serde_json::Value;
use tokio::time::{Instant, Sleep};

use crate::audit::Usage;
use crate::config::ApiKind;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Counts the bytes of a request body into a shared counter and ends the body with an error once it
/// grows past `limit`, so the upstream request is aborted. The counter then reads more than `limit`,
/// which is how the proxy tells a size refusal (413) from an upstream failure.
#[derive(Debug)]
pub struct CountingBody<B> {
    inner: B,
    count: Arc<AtomicU64>,
    limit: u64,
}

impl<B> CountingBody<B> {
    pub fn new(inner: B, count: Arc<AtomicU64>, limit: u64) -> Self {
        CountingBody { inner, count, limit }
    }
}

/// A request body that grew past the route's `max_request_body` while streaming.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds {0} bytes")]
pub struct BodyTooLarge(pub u64);

impl<B> Body for CountingBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |data| data.len() as u64);
                let total = self.count.fetch_add(len, Ordering::Relaxed) + len;
                if total > self.limit {
                    return Poll::Ready(Some(Err(Box::new(BodyTooLarge(self.limit)))));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => Poll::Ready(Some(Err(err.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a response body ended.
#[derive(Debug, Default)]
pub struct BodyOutcome {
    pub bytes: u64,
    pub usage: Usage,
    pub error: Option<String>,
}

type EndHook = Box<dyn FnOnce(BodyOutcome) + Send>;

/// A response body on its way to the client.
pub struct ObservedBody<B> {
    inner: B,
    bytes: u64,
    tap: UsageTap,
    idle: Duration,
    /// Armed the first time the upstream has nothing ready: a response that arrives in one piece (most
    /// non-streamed answers) never touches the timer wheel.
    deadline: Option<Pin<Box<Sleep>>>,
    on_end: Option<EndHook>,
    /// The body had nothing to send (HEAD, 204, 304): the server may drop it unpolled, which is not the
    /// client leaving.
    empty: bool,
}

impl<B> std::fmt::Debug for ObservedBody<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObservedBody").field("bytes", &self.bytes).finish()
    }
}

impl<B: Body> ObservedBody<B> {
    pub fn new(inner: B, tap: UsageTap, idle: Duration, on_end: EndHook) -> Self {
        let empty = inner.is_end_stream();
        ObservedBody { inner, bytes: 0, tap, idle, deadline: None, on_end: Some(on_end), empty }
    }
}

impl<B> ObservedBody<B> {
    fn end(&mut self, error: Option<String>) {
        if let Some(hook) = self.on_end.take() {
            let usage = std::mem::take(&mut self.tap).finish();
            hook(BodyOutcome { bytes: self.bytes, usage, error });
        }
    }
}

/// The upstream went quiet for longer than the route's `idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("upstream idle for more than {0:?}")]
pub struct IdleTimeout(Duration);

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                    this.tap.feed(data);
                }
                if let Some(deadline) = &mut this.deadline {
                    deadline.as_mut().reset(Instant::now() + this.idle);
                }
                // With a known length the server may stop polling after the last byte: end here.
                if this.inner.is_end_stream() {
                    this.end(None);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                let err: BoxError = err.into();
                this.end(Some(format!("upstream body error: {}", crate::client::error_chain(err.as_ref()))));
                Poll::Ready(Some(Err(err)))
            }
            Poll::Ready(None) => {
                this.end(None);
                Poll::Ready(None)
            }
            Poll::Pending => {
                match this.deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(this.idle))).as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        let err = IdleTimeout(this.idle);
                        this.end(Some(err.to_string()));
                        Poll::Ready(Some(Err(Box::new(err))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        if self.on_end.is_some() {
            let error = (!self.empty).then(|| "client closed the connection before the response ended".to_string());
            self.end(error);
        }
    }
}

use std::future::Future as _;

const JSON_TAP_LIMIT: usize = 1024 * 1024;
const SSE_LINE_LIMIT: usize = 256 * 1024;

/// Finds token usage in a response without holding it back: TGI's `x-prompt-tokens` /
/// `x-generated-tokens` headers, a JSON body's `usage`, or the last SSE event carrying `usage`/`details`.
#[derive(Debug, Default)]
pub struct UsageTap {
    from_headers: Usage,
    mode: TapMode,
}

#[derive(Debug, Default)]
enum TapMode {
    #[default]
    Off,
    Json(Vec<u8>),
    Sse {
        line: Vec<u8>,
        last: Option<Vec<u8>>,
    },
}

impl UsageTap {
    /// A tap for a route's responses. Usage headers (TGI's) are read on every route; bodies are read only
    /// on model-server routes, so Hub and generic bodies are never buffered or parsed.
    pub fn for_api(api: ApiKind, headers: &HeaderMap) -> UsageTap {
        let mut tap = UsageTap::for_response(headers);
        if matches!(api, ApiKind::Hub | ApiKind::Generic) {
            tap.mode = TapMode::Off;
        }
        tap
    }

    pub fn for_response(headers: &HeaderMap) -> UsageTap {
        // Named as constants, so a lookup does not parse the name first.
        const PROMPT_TOKENS: http::HeaderName = http::HeaderName::from_static("x-prompt-tokens");
        const GENERATED_TOKENS: http::HeaderName = http::HeaderName::from_static("x-generated-tokens");
        let number = |name| headers.get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
        let from_headers =
            Usage { prompt_tokens: number(&PROMPT_TOKENS), completion_tokens: number(&GENERATED_TOKENS) };
        let content_type = headers.get(http::header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
        let mode = if content_type.starts_with("text/event-stream") {
            TapMode::Sse { line: Vec::new(), last: None }
        } else if content_type.starts_with("application/json") && from_headers.is_empty() {
            TapMode::Json(Vec::new())
        } else {
            TapMode::Off
        };
        UsageTap { from_headers, mode }
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        match &mut self.mode {
            TapMode::Off => {}
            TapMode::Json(buf) => {
                if buf.len() + chunk.len() > JSON_TAP_LIMIT {
                    self.mode = TapMode::Off;
                } else {
                    buf.extend_from_slice(chunk);
                }
            }
            TapMode::Sse { line, last } => {
                for piece in chunk.split_inclusive(|&b| b == b'\n') {
                    if line.len() + piece.len() <= SSE_LINE_LIMIT {
                        line.extend_from_slice(piece);
                    } else {
                        line.clear();
                        continue;
                    }
                    if line.ends_with(b"\n") {
                        let text = trim_line(line);
                        if let Some(data) = text.strip_prefix(b"data:")
                            && (contains(data, b"\"usage\"") || contains(data, b"\"details\""))
                        {
                            *last = Some(data.to_vec());
                        }
                        line.clear();
                    }
                }
            }
        }
    }

    pub fn finish(self) -> Usage {
        if !self.from_headers.is_empty() {
            return self.from_headers;
        }
        let doc = match self.mode {
            TapMode::Off => return Usage::default(),
            // Most JSON answers (model lists, metadata) carry no usage: skip building a document for them.
            TapMode::Json(buf) if !contains(&buf, b"\"usage\"") && !contains(&buf, b"\"details\"") => None,
            TapMode::Json(buf) => serde_json::from_slice::<Value>(&buf).ok(),
            TapMode::Sse { last, .. } => last.and_then(|data| serde_json::from_slice::<Value>(&data).ok()),
        };
        doc.map(|d| usage_from_json(&d)).unwrap_or_default()
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && (line[end - 1] == b'\n' || line[end - 1] == b'\r') {
        end -= 1;
    }
    &line[..end]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// OpenAI `usage {prompt_tokens, completion_tokens}`, or TGI `details {generated_tokens}`.
pub fn usage_from_json(doc: &Value) -> Usage {
    let first = |v: &Value| {
        if let Value::Array(items) = v { items.first().cloned() } else { None }
    };
    let doc = first(doc).unwrap_or_else(|| doc.clone());
    if let Some(usage) = doc.get("usage").filter(|u| u.is_object()) {
        return Usage {
            prompt_tokens: usage.get("prompt_tokens").and_then(Value::as_u64),
            completion_tokens: usage.get("completion_tokens").and_then(Value::as_u64),
        };
    }
    if let Some(details) = doc.get("details").filter(|d| d.is_object()) {
        return Usage {
            prompt_tokens: None,
            completion_tokens: details.get("generated_tokens").and_then(Value::as_u64),
        };
    }
    Usage::default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(content_type: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        h
    }

    #[test]
    fn json_usage() {
        let mut tap = UsageTap::for_response(&headers("application/json"));
        tap.feed(br#"{"choices":[],"usage":{"prompt_tokens":"#);
        tap.feed(br#"12,"completion_tokens":34}}"#);
        assert_eq!(tap.finish(), Usage { prompt_tokens: Some(12), completion_tokens: Some(34) });
    }

    #[test]
    fn last_sse_event_with_usage_wins_across_chunk_boundaries() {
        let mut tap = UsageTap::for_response(&headers("text/event-stream"));
        tap.feed(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
        tap.feed(b"data: {\"choices\":[],\"usa");
        tap.feed(b"ge\":{\"prompt_tokens\":5,\"completion_tokens\":7}}\r\n\r\ndata: [DONE]\n\n");
        assert_eq!(tap.finish(), Usage { prompt_tokens: Some(5), completion_tokens: Some(7) });
    }

    #[test]
    fn hub_and_generic_routes_read_usage_headers_but_never_bodies() {
        let mut h = headers("application/json");
        h.insert("x-generated-tokens", HeaderValue::from_static("9"));
        let tap = UsageTap::for_api(ApiKind::Generic, &h);
        assert_eq!(tap.finish(), Usage { prompt_tokens: None, completion_tokens: Some(9) });
        for api in [ApiKind::Hub, ApiKind::Generic] {
            let mut tap = UsageTap::for_api(api, &headers("application/json"));
            tap.feed(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#);
            assert!(matches!(tap.mode, TapMode::Off));
            assert_eq!(tap.finish(), Usage::default());
        }
        let mut tap = UsageTap::for_api(ApiKind::OpenAi, &headers("application/json"));
        tap.feed(br#"{"usage":{"prompt_tokens":1,"completion_tokens":2}}"#);
        assert_eq!(tap.finish(), Usage { prompt_tokens: Some(1), completion_tokens: Some(2) });
    }

    #[test]
    fn tgi_stream_details_and_headers() {
        let mut tap = UsageTap::for_response(&headers("text/event-stream"));
        tap.feed(b"data:{\"token\":{\"text\":\"a\"},\"details\":{\"generated_tokens\":9}}\n\n");
        assert_eq!(tap.finish(), Usage { prompt_tokens: None, completion_tokens: Some(9) });

        let mut h = headers("application/json");
        h.insert("x-prompt-tokens", HeaderValue::from_static("3"));
        h.insert("x-generated-tokens", HeaderValue::from_static("4"));
        let tap = UsageTap::for_response(&h);
        assert_eq!(tap.finish(), Usage { prompt_tokens: Some(3), completion_tokens: Some(4) });
    }

    #[test]
    fn oversized_json_is_not_buffered() {
        let mut tap = UsageTap::for_response(&headers("application/json"));
        tap.feed(&vec![b' '; JSON_TAP_LIMIT + 1]);
        assert_eq!(tap.finish(), Usage::default());
    }
}
