//! Prometheus metrics, served on the admin listener at `/metrics`. Label values are bounded: route and
//! issuer names come from the config, failure reasons from [`crate::authn::AuthError::code`].

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label value shared with the config (route and issuer names), so counting allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Name(Arc<str>);

impl EncodeLabelValue for Name {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct Status(u16);

impl EncodeLabelValue for Status {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        write!(encoder, "{}", self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteStatus {
    route: Name,
    status: Status,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Name,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerResult {
    issuer: String,
    result: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExchangeResult {
    exchange: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLabel {
    cache: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SessionEvent {
    event: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RouteStatus, Counter>,
    auth_failures: Family<Reason, Counter>,
    upstream_latency: Family<RouteLabel, Histogram, fn() -> Histogram>,
    jwks_fetches: Family<IssuerResult, Counter>,
    opaque_checks: Family<IssuerResult, Counter>,
    credential_exchanges: Family<ExchangeResult, Counter>,
    sessions: Family<SessionEvent, Counter>,
    cache_entries: Family<CacheLabel, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("hfgate");
        let requests = Family::<RouteStatus, Counter>::default();
        let auth_failures = Family::<Reason, Counter>::default();
        let upstream_latency =
            Family::<RouteLabel, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        let jwks_fetches = Family::<IssuerResult, Counter>::default();
        registry.register("requests", "Requests by route and response status", requests.clone());
        registry.register("auth_failures", "Refused authentications by reason", auth_failures.clone());
        registry.register(
            "upstream_latency_seconds",
            "Time until the upstream's response headers",
            upstream_latency.clone(),
        );
        registry.register("jwks_fetches", "JWKS fetches by issuer and result", jwks_fetches.clone());
        let opaque_checks = Family::<IssuerResult, Counter>::default();
        registry.register(
            "opaque_checks",
            "Opaque-token checks at an issuer's introspection or userinfo endpoint, by result (active, inactive, unavailable)",
            opaque_checks.clone(),
        );
        let credential_exchanges = Family::<ExchangeResult, Counter>::default();
        registry.register(
            "credential_exchanges",
            "Calls to an [[exchange]] token endpoint, by result (issued, refused, failed)",
            credential_exchanges.clone(),
        );
        let sessions = Family::<SessionEvent, Counter>::default();
        registry.register(
            "sessions",
            "Browser sessions: signed_in, sign_in_failed, refreshed, refresh_failed, refresh_unavailable, signed_out",
            sessions.clone(),
        );
        let cache_entries = Family::<CacheLabel, Gauge>::default();
        registry.register(
            "cache_entries",
            "Entries held by the request path's caches (tokens, assertions, decisions), expired ones not yet swept included",
            cache_entries.clone(),
        );
        Metrics {
            registry,
            requests,
            auth_failures,
            upstream_latency,
            jwks_fetches,
            opaque_checks,
            credential_exchanges,
            sessions,
            cache_entries,
        }
    }

    pub fn request(&self, route: &Arc<str>, status: u16) {
        self.requests.get_or_create(&RouteStatus { route: Name(route.clone()), status: Status(status) }).inc();
    }

    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures.get_or_create(&Reason { reason: reason.to_string() }).inc();
    }

    pub fn upstream_latency(&self, route: &Arc<str>, elapsed: Duration) {
        self.upstream_latency.get_or_create(&RouteLabel { route: Name(route.clone()) }).observe(elapsed.as_secs_f64());
    }

    pub fn jwks_fetch(&self, issuer: &str, result: &'static str) {
        self.jwks_fetches.get_or_create(&IssuerResult { issuer: issuer.to_string(), result: result.to_string() }).inc();
    }

    pub fn opaque_check(&self, issuer: &str, result: &'static str) {
        self.opaque_checks
            .get_or_create(&IssuerResult { issuer: issuer.to_string(), result: result.to_string() })
            .inc();
    }

    pub fn credential_exchange(&self, exchange: &str, result: &'static str) {
        self.credential_exchanges.get_or_create(&ExchangeResult { exchange: exchange.to_string(), result }).inc();
    }

    pub fn session(&self, event: &'static str) {
        self.sessions.get_or_create(&SessionEvent { event }).inc();
    }

    /// Sets a cache's entry count; read from the caches when the metrics are scraped, not per request.
    pub fn cache_entries(&self, cache: &'static str, entries: usize) {
        self.cache_entries.get_or_create(&CacheLabel { cache }).set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}
