//! Validated settings: what the rest of hfgate runs on. Built from the raw structs by [`validate`],
//! which records every problem in the [`Source`] and returns `None` if there was any.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use http::HeaderValue;
use http::uri::{Authority, Scheme, Uri};
use toml::Spanned;

use super::login::{LoginSettings, validate_login};
use super::machines::{
    ClaimCondition, ExchangeSettings, OpaqueSettings, WORKLOAD_MAX_TOKEN_LIFETIME, validate_exchange, validate_opaque,
    validate_require,
};
use super::{RawConfig, RawIssuer, RawRoute, RawSize, Source, Text, format_size, parse_duration, parse_size};
use crate::jose::Algorithm;

#[derive(Debug, Clone)]
pub struct Settings {
    /// The file these settings came from.
    pub source: PathBuf,
    pub server: ServerSettings,
    pub audit: AuditTarget,
    pub issuers: Vec<IssuerSettings>,
    pub routes: Vec<RouteSettings>,
    pub authz: AuthzSettings,
    /// `[login]`: sign-in for people (browser sessions and `hfgate login`), when configured.
    pub login: Option<LoginSettings>,
    /// `[[exchange]]`: per-user upstream credentials, named by routes' `credential = "exchange:NAME"`.
    pub exchanges: Vec<ExchangeSettings>,
}

/// Authorization: shorthand rules and an optional Cedar policy file. With neither, every verified
/// identity may use every route (authentication only); once any policy exists, what none permits is refused.
#[derive(Debug, Clone, Default)]
pub struct AuthzSettings {
    pub policy_file: Option<PolicyFile>,
    pub decision_cache: bool,
    pub rules: Vec<RuleSettings>,
}

#[derive(Debug, Clone)]
pub struct PolicyFile {
    pub path: PathBuf,
    pub text: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleEffect {
    Allow,
    Deny,
}

/// One `[[allow]]` or `[[deny]]` table. An empty list means "any".
#[derive(Debug, Clone)]
pub struct RuleSettings {
    /// `allow[0]`, `deny[2]`: the policy id in decisions and the audit.
    pub id: String,
    pub effect: RuleEffect,
    /// Where the rule's table starts in the config file.
    pub line: usize,
    pub groups: Vec<String>,
    pub users: Vec<String>,
    pub issuers: Vec<String>,
    pub routes: Vec<String>,
    pub models: Vec<String>,
    pub datasets: Vec<String>,
    pub spaces: Vec<String>,
    pub actions: Vec<String>,
    pub bill_to: Option<String>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Without a trailing slash.
    pub public_url: String,
    pub upstream_connect_timeout: Duration,
    pub shutdown_grace: Duration,
    pub assertion_lifetime: Duration,
    /// PKCS#8 PEM or DER file with an ES256 key; generated at start when absent.
    pub assertion_key: Option<PathBuf>,
    /// Append to client-sent `X-Forwarded-*` (behind a trusted load balancer) instead of replacing them.
    pub trust_forwarded_headers: bool,
    /// Runtime worker threads; `None` = the CPUs this process may run on.
    pub workers: Option<usize>,
    /// How long a client may take to send a request's headers (slow clients hold connections otherwise).
    pub header_read_timeout: Duration,
    /// The most header bytes a request may carry; larger ones get 431.
    pub max_header_bytes: usize,
    /// The largest request body a route accepts unless it sets its own; larger ones get 413.
    pub max_request_body: u64,
    /// Lifetime of the tokens hfgate mints at a hub route's `/oauth/token` for CI jobs.
    pub exchanged_token_lifetime: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct IssuerSettings {
    pub name: String,
    /// Compared exactly with the token's `iss`.
    pub issuer: String,
    pub audiences: Vec<String>,
    pub audience_claims: Vec<String>,
    pub jwks: JwksSource,
    pub algorithms: Vec<Algorithm>,
    pub groups_claim: ClaimPath,
    pub email_claim: ClaimPath,
    pub leeway: Duration,
    pub max_token_lifetime: Option<Duration>,
    pub require_typ: Option<String>,
    pub kind: KindRule,
    pub insecure: bool,
    pub jwks_refresh_interval: Duration,
    pub jwks_refetch_min_interval: Duration,
    pub jwks_max_stale: Duration,
    /// Claim conditions checked at authentication (`require = { repository = "acme/*" }`).
    pub require: Vec<ClaimCondition>,
    /// How this issuer's opaque (non-JWT) access tokens are checked, if it issues any.
    pub opaque: Option<OpaqueSettings>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwksSource {
    /// `{issuer}/.well-known/openid-configuration`, whose `jwks_uri` is then fetched.
    Discovery(String),
    Uri(String),
}

/// How the caller's kind (user or workload) is decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindRule {
    /// Workload when `sub` equals the client id (client-credentials tokens, RFC 9068 §2.2) or is a
    /// Kubernetes service account; user otherwise.
    Auto,
    User,
    Workload,
}

/// A claim location: a top-level key (which may hold `:` or be a URL) or a dotted path into objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimPath(pub String);

impl ClaimPath {
    /// Finds the claim. The whole path as one key wins; otherwise each `.` may separate a key from the
    /// rest, tried left to right, so `https://example.com/groups` and `realm_access.roles` both work.
    pub fn lookup<'a>(&self, claims: &'a serde_json::Map<String, serde_json::Value>) -> Option<&'a serde_json::Value> {
        lookup_in(claims, &self.0)
    }
}

fn lookup_in<'a>(object: &'a serde_json::Map<String, serde_json::Value>, path: &str) -> Option<&'a serde_json::Value> {
    if let Some(value) = object.get(path) {
        return Some(value);
    }
    for (at, _) in path.match_indices('.') {
        if let Some(serde_json::Value::Object(inner)) = object.get(&path[..at])
            && let Some(found) = lookup_in(inner, &path[at + 1..])
        {
            return Some(found);
        }
    }
    None
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    OpenAi,
    Tgi,
    Tei,
    HfInference,
    Router,
    Hub,
    Generic,
}

impl ApiKind {
    const NAMES: [(&'static str, ApiKind); 7] = [
        ("openai", ApiKind::OpenAi),
        ("tgi", ApiKind::Tgi),
        ("tei", ApiKind::Tei),
        ("hf-inference", ApiKind::HfInference),
        ("router", ApiKind::Router),
        ("hub", ApiKind::Hub),
        ("generic", ApiKind::Generic),
    ];

    /// Every kind, in config-reference order.
    pub const ALL: [ApiKind; 7] = [
        ApiKind::OpenAi,
        ApiKind::Tgi,
        ApiKind::Tei,
        ApiKind::HfInference,
        ApiKind::Router,
        ApiKind::Hub,
        ApiKind::Generic,
    ];

    pub fn name(self) -> &'static str {
        ApiKind::NAMES.iter().find(|(_, k)| *k == self).map(|(n, _)| *n).unwrap_or("generic")
    }
}

/// What replaces the caller's `Authorization` on the upstream request.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    None,
    /// The caller's own token, already validated.
    Passthrough,
    /// `Bearer <secret>` from `env:NAME` or `file:PATH`; marked sensitive so it is never printed.
    Static {
        header: HeaderValue,
        origin: String,
    },
    /// A per-user credential from the `[[exchange]]` at this index in `Settings::exchanges`.
    Exchange {
        name: String,
        index: usize,
    },
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::None => f.write_str("none"),
            Credential::Passthrough => f.write_str("passthrough"),
            Credential::Static { origin, .. } => write!(f, "{origin} (redacted)"),
            Credential::Exchange { name, .. } => write!(f, "exchange:{name}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct UpstreamUrl {
    pub scheme: Scheme,
    pub authority: Authority,
    /// Without a trailing slash; empty for the root.
    pub base_path: String,
}

impl fmt::Display for UpstreamUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}{}", self.scheme, self.authority, self.base_path)
    }
}

#[derive(Debug, Clone)]
pub struct RouteSettings {
    pub name: String,
    /// Without a trailing slash; empty for `/`.
    pub prefix: String,
    pub upstream: UpstreamUrl,
    pub api: ApiKind,
    pub model: Option<String>,
    pub credential: Credential,
    pub strip_prefix: bool,
    /// Until the upstream's response headers arrive.
    pub timeout: Duration,
    /// Between two chunks of a response body; streams have no total timeout.
    pub idle_timeout: Duration,
    /// The organisation billed (`X-HF-Bill-To`) when no rule names one.
    pub bill_to: Option<String>,
    /// How much of a request body hfgate reads when the model lives in the body (openai, router).
    pub max_body_peek: usize,
    /// The largest request body this route accepts; `None` = the server's `max_request_body`.
    pub max_request_body: Option<u64>,
    /// What an unauthenticated browser gets: a 401, or a redirect to sign in.
    pub login: LoginMode,
}

/// A route's answer to a browser without a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LoginMode {
    /// 401, like any API client.
    #[default]
    None,
    /// `GET`/`HEAD` asking for HTML: 302 to `/.hfgate/login`, then back.
    Redirect,
}

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9090";

pub(super) fn validate(src: &mut Source<'_>, raw: RawConfig, base_dir: &Path) -> Option<Settings> {
    let server = validate_server(src, &raw);
    let audit = match raw.audit.as_ref().and_then(|a| a.get_ref().path.as_ref()) {
        Some(path) => match src.text(path, "audit.path") {
            Some(p) if p == "-" => Some(AuditTarget::Stdout),
            Some(p) if p.trim().is_empty() => {
                src.issue(path.span().start, "audit.path", "must be a file path or \"-\" for stdout");
                None
            }
            Some(p) => Some(AuditTarget::File(resolve(base_dir, &p))),
            None => None,
        },
        None => Some(AuditTarget::Stdout),
    };

    // Duplicates are judged on the raw values, so they are reported even when other fields are bad.
    let mut issuer_names = HashSet::new();
    let mut issuer_urls = HashSet::new();
    let mut issuers = Vec::new();
    for (index, issuer) in raw.issuer.iter().enumerate() {
        let key = format!("issuer[{index}]");
        let raw_issuer = issuer.get_ref();
        if !issuer_names.insert(raw_issuer.name.get_ref().clone()) {
            let message = format!("duplicate issuer name {:?}", raw_issuer.name.get_ref());
            src.issue(raw_issuer.name.span().start, format!("{key}.name"), message);
        }
        if !issuer_urls.insert(raw_issuer.issuer.get_ref().clone()) {
            let message = format!("issuer {:?} is configured twice", raw_issuer.issuer.get_ref());
            src.issue(raw_issuer.issuer.span().start, format!("{key}.issuer"), message);
        }
        if let Some(settings) = validate_issuer(src, issuer, &key) {
            issuers.push(settings);
        }
    }
    if raw.issuer.is_empty() && !raw.route.is_empty() {
        src.issue(0, "issuer", "no [[issuer]] configured: every route requires a verified identity");
    }

    let mut exchange_names = HashSet::new();
    let mut exchanges = Vec::new();
    for (index, exchange) in raw.exchange.iter().enumerate() {
        let key = format!("exchange[{index}]");
        if !exchange_names.insert(exchange.get_ref().name.get_ref().clone()) {
            let message = format!("duplicate exchange name {:?}", exchange.get_ref().name.get_ref());
            src.issue(exchange.get_ref().name.span().start, format!("{key}.name"), message);
        }
        let issuer_names: Vec<&str> = issuers.iter().map(|i: &IssuerSettings| i.name.as_str()).collect();
        if let Some(settings) = validate_exchange(src, exchange, &key, &issuer_names) {
            exchanges.push(settings);
        }
    }

    let mut route_names = HashSet::new();
    let mut prefixes = HashSet::new();
    let mut routes = Vec::new();
    for (index, route) in raw.route.iter().enumerate() {
        let key = format!("route[{index}]");
        let raw_route = route.get_ref();
        if raw_route.name.get_ref() == crate::assertion::MINTED_AUDIENCE {
            // Assertions carry the route name as their audience; hfgate's own tokens carry this one.
            let message = format!("{:?} is reserved (the audience of hfgate's own tokens)", raw_route.name.get_ref());
            src.issue(raw_route.name.span().start, format!("{key}.name"), message);
        }
        if !route_names.insert(raw_route.name.get_ref().clone()) {
            let message = format!("duplicate route name {:?}", raw_route.name.get_ref());
            src.issue(raw_route.name.span().start, format!("{key}.name"), message);
        }
        if !prefixes.insert(raw_route.path.get_ref().trim_end_matches('/').to_string()) {
            let message = format!("another route already has path {:?}", raw_route.path.get_ref());
            src.issue(raw_route.path.span().start, format!("{key}.path"), message);
        }
        if let Some(settings) = validate_route(src, route, &key, base_dir, &exchanges) {
            routes.push(settings);
        }
    }

    let authz = validate_authz(src, &raw, base_dir, &issuers, &routes);
    let login = match &raw.login {
        Some(login) => validate_login(src, login, &issuers).map(Some),
        None => {
            for (index, raw_route) in raw.route.iter().enumerate() {
                if let Some(value) = &raw_route.get_ref().login
                    && value.get_ref() == "redirect"
                {
                    let message = "login = \"redirect\" needs a [login] section (where to sign in)";
                    src.issue(value.span().start, format!("route[{index}].login"), message);
                }
            }
            Some(None)
        }
    };
    Some(Settings {
        source: src.file.clone().into(),
        server: server?,
        audit: audit?,
        issuers,
        routes,
        authz: authz?,
        login: login?,
        exchanges,
    })
}

fn validate_server(src: &mut Source<'_>, raw: &RawConfig) -> Option<ServerSettings> {
    let default = super::RawServer::default();
    let server = raw.server.as_ref().map(Spanned::get_ref).unwrap_or(&default);
    let listen = socket_addr(src, server.listen.as_ref(), "server.listen", DEFAULT_LISTEN);
    let admin_listen = socket_addr(src, server.admin_listen.as_ref(), "server.admin_listen", DEFAULT_ADMIN_LISTEN);
    if let (Some(a), Some(b), Some(field)) = (listen, admin_listen, server.admin_listen.as_ref())
        && a == b
        && a.port() != 0
    {
        src.issue(
            field.span().start,
            "server.admin_listen",
            "must differ from server.listen: admin endpoints never share the proxy port",
        );
    }
    let public_url = match &server.public_url {
        Some(value) => src.text(value, "server.public_url").and_then(|url| match url.parse::<Uri>() {
            Ok(uri) if uri.scheme().is_some() && uri.authority().is_some() => {
                Some(url.trim_end_matches('/').to_string())
            }
            _ => {
                src.issue(value.span().start, "server.public_url", format!("{url:?} is not an absolute http(s) URL"));
                None
            }
        }),
        None => listen.map(|addr| format!("http://{addr}")),
    };
    let duration = |src: &mut Source<'_>, v: &Option<Text>, key: &str, default: u64| {
        duration_or(src, v.as_ref(), key, Duration::from_secs(default))
    };
    let upstream_connect_timeout =
        duration(src, &server.upstream_connect_timeout, "server.upstream_connect_timeout", 5);
    let shutdown_grace = duration(src, &server.shutdown_grace, "server.shutdown_grace", 30);
    let assertion_lifetime = duration(src, &server.assertion_lifetime, "server.assertion_lifetime", 300);
    if let (Some(lifetime), Some(field)) = (assertion_lifetime, &server.assertion_lifetime)
        && (lifetime < Duration::from_secs(10) || lifetime > Duration::from_secs(3600))
    {
        src.issue(
            field.span().start,
            "server.assertion_lifetime",
            "must be between 10s and 1h (assertions are short-lived)",
        );
    }
    let assertion_key = match &server.assertion_key {
        Some(value) => src.text(value, "server.assertion_key").map(|p| Some(PathBuf::from(p))),
        None => Some(None),
    };
    let header_read_timeout = duration(src, &server.header_read_timeout, "server.header_read_timeout", 10);
    if let (Some(d), Some(field)) = (header_read_timeout, &server.header_read_timeout)
        && d.is_zero()
    {
        src.issue(field.span().start, "server.header_read_timeout", "must be positive");
    }
    let max_header_bytes =
        size_or(src, server.max_header_bytes.as_ref(), "server.max_header_bytes", 64 << 10, 8 << 10..=1 << 20);
    let max_request_body =
        size_or(src, server.max_request_body.as_ref(), "server.max_request_body", 16 << 20, 1..=1 << 40);
    let exchanged_token_lifetime =
        duration(src, &server.exchanged_token_lifetime, "server.exchanged_token_lifetime", 3600);
    if let (Some(d), Some(field)) = (exchanged_token_lifetime, &server.exchanged_token_lifetime)
        && (d < Duration::from_secs(60) || d > Duration::from_secs(24 * 3600))
    {
        src.issue(field.span().start, "server.exchanged_token_lifetime", "must be between 1m and 24h");
    }
    let workers = match &server.workers {
        Some(w) if (1..=1024).contains(w.get_ref()) => Some(Some(*w.get_ref() as usize)),
        Some(w) => {
            src.issue(w.span().start, "server.workers", "must be between 1 and 1024");
            None
        }
        None => Some(None),
    };
    Some(ServerSettings {
        listen: listen?,
        admin_listen: admin_listen?,
        public_url: public_url?,
        upstream_connect_timeout: upstream_connect_timeout?,
        shutdown_grace: shutdown_grace?,
        assertion_lifetime: assertion_lifetime?,
        assertion_key: assertion_key?,
        trust_forwarded_headers: server.trust_forwarded_headers.as_ref().map(|b| *b.get_ref()).unwrap_or(false),
        workers: workers?,
        header_read_timeout: header_read_timeout?,
        max_header_bytes: max_header_bytes? as usize,
        max_request_body: max_request_body?,
        exchanged_token_lifetime: exchanged_token_lifetime?,
    })
}

fn validate_issuer(src: &mut Source<'_>, issuer: &Spanned<RawIssuer>, key: &str) -> Option<IssuerSettings> {
    let table_at = issuer.span().start;
    let raw = issuer.get_ref();
    let name = identifier(src, &raw.name, &format!("{key}.name"));
    let insecure = raw.insecure.as_ref().map(|b| *b.get_ref()).unwrap_or(false);
    let issuer_url = src
        .text(&raw.issuer, &format!("{key}.issuer"))
        .and_then(|url| check_fetch_url(src, &raw.issuer, &format!("{key}.issuer"), &url, insecure).then_some(url));

    let audiences = match &raw.audiences {
        Some(list) if !list.is_empty() => texts(src, list, &format!("{key}.audiences")),
        Some(_) => {
            let at = src.key_offset(table_at, "audiences");
            src.issue(at, format!("{key}.audiences"), "must not be empty: a token must be meant for hfgate");
            None
        }
        None => {
            src.issue(
                table_at,
                format!("{key}.audiences"),
                "required: list the audiences hfgate accepts, e.g. audiences = [\"hfgate\"]",
            );
            None
        }
    };
    let audience_claims = match &raw.audience_claims {
        Some(list) if !list.is_empty() => texts(src, list, &format!("{key}.audience_claims")),
        Some(_) => {
            src.issue(
                src.key_offset(table_at, "audience_claims"),
                format!("{key}.audience_claims"),
                "must not be empty",
            );
            None
        }
        None => Some(vec!["aud".to_string()]),
    };

    let jwks = match &raw.jwks_uri {
        Some(value) => src.text(value, &format!("{key}.jwks_uri")).and_then(|url| {
            check_fetch_url(src, value, &format!("{key}.jwks_uri"), &url, insecure).then_some(JwksSource::Uri(url))
        }),
        None => issuer_url.as_ref().map(|url| {
            JwksSource::Discovery(format!("{}/.well-known/openid-configuration", url.trim_end_matches('/')))
        }),
    };

    let algorithms = match &raw.algorithms {
        Some(list) if list.is_empty() => {
            src.issue(src.key_offset(table_at, "algorithms"), format!("{key}.algorithms"), "must not be empty");
            None
        }
        Some(list) => {
            let mut algs = Vec::new();
            let mut ok = true;
            for item in list {
                let name = item.get_ref();
                match Algorithm::from_name(name) {
                    Some(alg) => algs.push(alg),
                    None => {
                        ok = false;
                        let why = if name.eq_ignore_ascii_case("none") || name.to_ascii_uppercase().starts_with("HS") {
                            format!("{name} is never accepted: hfgate only verifies asymmetric signatures")
                        } else {
                            format!(
                                "unknown algorithm {name:?}; supported: RS256 RS384 RS512 PS256 PS384 PS512 ES256 ES384 EdDSA"
                            )
                        };
                        src.issue(item.span().start, format!("{key}.algorithms"), why);
                    }
                }
            }
            ok.then_some(algs)
        }
        None => Some(Algorithm::ALL.to_vec()),
    };

    let claim = |src: &mut Source<'_>, v: &Option<Text>, field: &str, default: &str| -> Option<ClaimPath> {
        match v {
            Some(value) => src.text(value, &format!("{key}.{field}")).and_then(|p| {
                if p.is_empty() {
                    src.issue(value.span().start, format!("{key}.{field}"), "must not be empty");
                    None
                } else {
                    Some(ClaimPath(p))
                }
            }),
            None => Some(ClaimPath(default.to_string())),
        }
    };
    let groups_claim = claim(src, &raw.groups_claim, "groups_claim", "groups");
    let email_claim = claim(src, &raw.email_claim, "email_claim", "email");
    let leeway = duration_or(src, raw.leeway.as_ref(), &format!("{key}.leeway"), Duration::from_secs(60));
    if let (Some(l), Some(field)) = (leeway, &raw.leeway)
        && l > Duration::from_secs(600)
    {
        src.issue(
            field.span().start,
            format!("{key}.leeway"),
            "must be at most 10m: clock skew larger than that is a broken clock",
        );
    }
    let max_token_lifetime = match &raw.max_token_lifetime {
        Some(value) => src.text(value, &format!("{key}.max_token_lifetime")).and_then(|t| {
            if t == "none" {
                return Some(None);
            }
            match parse_duration(&t) {
                Ok(d) if d.is_zero() => {
                    src.issue(
                        value.span().start,
                        format!("{key}.max_token_lifetime"),
                        "must be positive (or \"none\" to disable)",
                    );
                    None
                }
                Ok(d) => Some(Some(d)),
                Err(e) => {
                    src.issue(value.span().start, format!("{key}.max_token_lifetime"), e);
                    None
                }
            }
        }),
        // Workload tokens (CI, service accounts) live minutes to an hour; people's tokens up to a day.
        None if raw.kind.as_ref().is_some_and(|k| k.get_ref() == "workload") => Some(Some(WORKLOAD_MAX_TOKEN_LIFETIME)),
        None => Some(Some(Duration::from_secs(24 * 3600))),
    };
    let require_typ = match &raw.require_typ {
        Some(value) => src.text(value, &format!("{key}.require_typ")).map(Some),
        None => Some(None),
    };
    let kind = match &raw.kind {
        Some(value) => match value.get_ref().as_str() {
            "auto" => Some(KindRule::Auto),
            "user" => Some(KindRule::User),
            "workload" => Some(KindRule::Workload),
            other => {
                src.issue(
                    value.span().start,
                    format!("{key}.kind"),
                    format!("unknown kind {other:?}: use auto, user or workload"),
                );
                None
            }
        },
        None => Some(KindRule::Auto),
    };
    let jwks_refresh_interval = duration_or(
        src,
        raw.jwks_refresh_interval.as_ref(),
        &format!("{key}.jwks_refresh_interval"),
        Duration::from_secs(300),
    );
    let jwks_refetch_min_interval = duration_or(
        src,
        raw.jwks_refetch_min_interval.as_ref(),
        &format!("{key}.jwks_refetch_min_interval"),
        Duration::from_secs(30),
    );
    let jwks_max_stale =
        duration_or(src, raw.jwks_max_stale.as_ref(), &format!("{key}.jwks_max_stale"), Duration::from_secs(24 * 3600));
    if let (Some(d), Some(field)) = (jwks_refresh_interval, &raw.jwks_refresh_interval)
        && d < Duration::from_secs(1)
    {
        src.issue(field.span().start, format!("{key}.jwks_refresh_interval"), "must be at least 1s");
    }

    let require = match &raw.require {
        Some(conditions) => validate_require(src, conditions, key),
        None => Some(Vec::new()),
    };
    let opaque = validate_opaque(src, raw.introspection.as_ref(), raw.userinfo.as_ref(), key, insecure);
    Some(IssuerSettings {
        name: name?,
        issuer: issuer_url?,
        audiences: audiences?,
        audience_claims: audience_claims?,
        jwks: jwks?,
        algorithms: algorithms?,
        groups_claim: groups_claim?,
        email_claim: email_claim?,
        leeway: leeway?,
        max_token_lifetime: max_token_lifetime?,
        require_typ: require_typ?,
        kind: kind?,
        insecure,
        jwks_refresh_interval: jwks_refresh_interval?,
        jwks_refetch_min_interval: jwks_refetch_min_interval?,
        jwks_max_stale: jwks_max_stale?,
        require: require?,
        opaque: opaque?,
    })
}

fn validate_route(
    src: &mut Source<'_>,
    route: &Spanned<RawRoute>,
    key: &str,
    base_dir: &Path,
    exchanges: &[ExchangeSettings],
) -> Option<RouteSettings> {
    let raw = route.get_ref();
    let name = identifier(src, &raw.name, &format!("{key}.name"));
    let prefix = src.text(&raw.path, &format!("{key}.path")).and_then(|path| {
        let problem = if !path.starts_with('/') {
            Some("must start with '/'")
        } else if path.starts_with("/.hfgate") {
            Some("/.hfgate/ is reserved for hfgate's own endpoints")
        } else if crate::route::normalize_path(&path).is_err() || path.contains('?') || path.contains('#') {
            Some("must be a plain path prefix (no '..', '//', '%2F', '?' or '#')")
        } else {
            None
        };
        match problem {
            Some(why) => {
                src.issue(raw.path.span().start, format!("{key}.path"), format!("{path:?} {why}"));
                None
            }
            None => Some(path.trim_end_matches('/').to_string()),
        }
    });
    let upstream = src.text(&raw.upstream, &format!("{key}.upstream")).and_then(|url| match url.parse::<Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https"))
                && uri.authority().is_some()
                && uri.query().is_none() =>
        {
            let authority = uri.authority().cloned()?;
            Some(UpstreamUrl {
                scheme: uri.scheme().cloned()?,
                authority,
                base_path: uri.path().trim_end_matches('/').to_string(),
            })
        }
        _ => {
            src.issue(
                raw.upstream.span().start,
                format!("{key}.upstream"),
                format!("{url:?} is not an http:// or https:// URL without a query"),
            );
            None
        }
    });
    let api = match &raw.api {
        Some(value) => match ApiKind::NAMES.iter().find(|(n, _)| n == value.get_ref()) {
            Some((_, kind)) => Some(*kind),
            None => {
                src.issue(
                    value.span().start,
                    format!("{key}.api"),
                    format!(
                        "unknown api {:?}: use openai, tgi, tei, hf-inference, router, hub or generic",
                        value.get_ref()
                    ),
                );
                None
            }
        },
        None => Some(ApiKind::Generic),
    };
    let model = match &raw.model {
        Some(value) => src.text(value, &format!("{key}.model")).map(Some),
        None => Some(None),
    };
    let credential = match &raw.credential {
        Some(value) => src
            .text(value, &format!("{key}.credential"))
            .and_then(|spec| credential(src, value, &format!("{key}.credential"), &spec, base_dir, exchanges)),
        None => Some(Credential::None),
    };
    let timeout = duration_or(src, raw.timeout.as_ref(), &format!("{key}.timeout"), Duration::from_secs(300));
    let idle_timeout =
        duration_or(src, raw.idle_timeout.as_ref(), &format!("{key}.idle_timeout"), Duration::from_secs(120));
    for (value, field, name) in [(timeout, &raw.timeout, "timeout"), (idle_timeout, &raw.idle_timeout, "idle_timeout")]
    {
        if let (Some(d), Some(f)) = (value, field)
            && d.is_zero()
        {
            src.issue(f.span().start, format!("{key}.{name}"), "must be positive");
        }
    }
    let bill_to = match &raw.bill_to {
        Some(value) => src
            .text(value, &format!("{key}.bill_to"))
            .and_then(|v| policy_text(src, value, &format!("{key}.bill_to"), v))
            .map(Some),
        None => Some(None),
    };
    let max_body_peek =
        size_or(src, raw.max_body_peek.as_ref(), &format!("{key}.max_body_peek"), 4 << 20, 1..=64 << 20);
    // Absent: the server's limit applies (resolved per request, so the route keeps None).
    let max_request_body = match &raw.max_request_body {
        Some(value) => size(src, value, &format!("{key}.max_request_body"), 1..=1 << 40).map(Some),
        None => Some(None),
    };
    let login = match &raw.login {
        Some(value) => match value.get_ref().as_str() {
            "none" => Some(LoginMode::None),
            "redirect" => Some(LoginMode::Redirect),
            other => {
                src.issue(
                    value.span().start,
                    format!("{key}.login"),
                    format!("unknown login mode {other:?}: use \"redirect\" or \"none\""),
                );
                None
            }
        },
        None => Some(LoginMode::None),
    };
    Some(RouteSettings {
        login: login?,
        bill_to: bill_to?,
        max_body_peek: max_body_peek? as usize,
        max_request_body: max_request_body?,
        name: name?,
        prefix: prefix?,
        upstream: upstream?,
        api: api?,
        model: model?,
        credential: credential?,
        strip_prefix: raw.strip_prefix.as_ref().map(|b| *b.get_ref()).unwrap_or(false),
        timeout: timeout?,
        idle_timeout: idle_timeout?,
    })
}

fn validate_authz(
    src: &mut Source<'_>,
    raw: &RawConfig,
    base_dir: &Path,
    issuers: &[IssuerSettings],
    routes: &[RouteSettings],
) -> Option<AuthzSettings> {
    let mut ok = true;
    let authz = raw.authz.as_ref().map(Spanned::get_ref);
    let policy_file = match authz.and_then(|a| a.policy_file.as_ref()) {
        Some(value) => match src.text(value, "authz.policy_file") {
            Some(p) => {
                let path = resolve(base_dir, &p);
                match std::fs::read_to_string(&path) {
                    Ok(text) => Some(PolicyFile { path, text }),
                    Err(e) => {
                        src.issue(
                            value.span().start,
                            "authz.policy_file",
                            format!("cannot read {}: {e}", path.display()),
                        );
                        ok = false;
                        None
                    }
                }
            }
            None => {
                ok = false;
                None
            }
        },
        None => None,
    };
    let decision_cache = authz.and_then(|a| a.decision_cache.as_ref()).map(|b| *b.get_ref()).unwrap_or(true);
    let mut rules = Vec::new();
    for (effect, list, table) in [(RuleEffect::Allow, &raw.allow, "allow"), (RuleEffect::Deny, &raw.deny, "deny")] {
        for (index, rule) in list.iter().enumerate() {
            let key = format!("{table}[{index}]");
            match validate_rule(src, rule, &key, effect, issuers, routes) {
                Some(rule) => rules.push(rule),
                None => ok = false,
            }
        }
    }
    rules.sort_by_key(|r| r.line);
    ok.then_some(AuthzSettings { policy_file, decision_cache, rules })
}

fn validate_rule(
    src: &mut Source<'_>,
    rule: &Spanned<super::RawRule>,
    key: &str,
    effect: RuleEffect,
    issuers: &[IssuerSettings],
    routes: &[RouteSettings],
) -> Option<RuleSettings> {
    let raw = rule.get_ref();
    let mut ok = true;
    let mut list =
        |src: &mut Source<'_>, values: &Option<Vec<Text>>, field: &str, allowed: Option<&[&str]>| -> Vec<String> {
            let mut out = Vec::new();
            for value in values.iter().flatten() {
                let field_key = format!("{key}.{field}");
                let Some(text) = src.text(value, &field_key).and_then(|t| policy_text(src, value, &field_key, t))
                else {
                    ok = false;
                    continue;
                };
                if let Some(allowed) = allowed
                    && !allowed.contains(&text.as_str())
                {
                    src.issue(
                        value.span().start,
                        field_key,
                        format!("unknown {} {text:?}: expected one of {allowed:?}", field.trim_end_matches('s')),
                    );
                    ok = false;
                    continue;
                }
                out.push(text);
            }
            out
        };
    let issuer_names: Vec<&str> = issuers.iter().map(|i| i.name.as_str()).collect();
    let route_names: Vec<&str> = routes.iter().map(|r| r.name.as_str()).collect();
    let groups = list(src, &raw.groups, "groups", None);
    let users = list(src, &raw.users, "users", None);
    let issuers = list(src, &raw.issuers, "issuers", Some(&issuer_names));
    let routes = list(src, &raw.routes, "routes", Some(&route_names));
    let models = list(src, &raw.models, "models", None);
    let datasets = list(src, &raw.datasets, "datasets", None);
    let spaces = list(src, &raw.spaces, "spaces", None);
    let action_names: Vec<&str> = crate::classify::Action::ALL.iter().map(|a| a.name()).collect();
    let actions = list(src, &raw.actions, "actions", Some(&action_names));
    let bill_to = match &raw.bill_to {
        Some(value) if effect == RuleEffect::Deny => {
            src.issue(value.span().start, format!("{key}.bill_to"), "bill_to belongs on [[allow]] rules");
            ok = false;
            None
        }
        Some(value) => {
            let field_key = format!("{key}.bill_to");
            let text = src.text(value, &field_key).and_then(|t| policy_text(src, value, &field_key, t));
            ok &= text.is_some();
            text
        }
        None => None,
    };
    let line = src.line_of(rule.span().start);
    ok.then(|| RuleSettings {
        id: key.to_string(),
        effect,
        line,
        groups,
        users,
        issuers,
        routes,
        models,
        datasets,
        spaces,
        actions,
        bill_to,
    })
}

/// Values that end up inside Cedar string literals: no quotes, backslashes or control characters, so
/// compiling a rule can never change its meaning.
fn policy_text(src: &mut Source<'_>, value: &Text, key: &str, text: String) -> Option<String> {
    if text.is_empty() || text.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        src.issue(
            value.span().start,
            key,
            format!("{text:?} must be non-empty, without quotes, backslashes or control characters"),
        );
        return None;
    }
    Some(text)
}

fn credential(
    src: &mut Source<'_>,
    value: &Text,
    key: &str,
    spec: &str,
    base_dir: &Path,
    exchanges: &[ExchangeSettings],
) -> Option<Credential> {
    let at = value.span().start;
    let secret = if spec == "none" {
        return Some(Credential::None);
    } else if spec == "passthrough" {
        return Some(Credential::Passthrough);
    } else if let Some(name) = spec.strip_prefix("exchange:") {
        return match exchanges.iter().position(|e| e.name == name) {
            Some(index) => Some(Credential::Exchange { name: name.to_string(), index }),
            None => {
                let known: Vec<&str> = exchanges.iter().map(|e| e.name.as_str()).collect();
                src.issue(at, key, format!("no [[exchange]] named {name:?}: expected one of [{}]", known.join(", ")));
                None
            }
        };
    } else if let Some(name) = spec.strip_prefix("env:") {
        match std::env::var(name) {
            Ok(v) => v.trim().to_string(),
            Err(_) => {
                src.issue(at, key, format!("environment variable {name} is not set"));
                return None;
            }
        }
    } else if let Some(path) = spec.strip_prefix("file:") {
        let path = resolve(base_dir, path);
        match std::fs::read_to_string(&path) {
            Ok(v) => v.trim().to_string(),
            Err(e) => {
                src.issue(at, key, format!("cannot read {}: {e}", path.display()));
                return None;
            }
        }
    } else {
        src.issue(
            at,
            key,
            "must be env:NAME, file:PATH, exchange:NAME, none or passthrough (a literal secret does not belong in the config file)",
        );
        return None;
    };
    if secret.is_empty() {
        src.issue(at, key, format!("{spec} is empty"));
        return None;
    }
    match HeaderValue::from_str(&format!("Bearer {secret}")) {
        Ok(mut header) => {
            header.set_sensitive(true);
            Some(Credential::Static { header, origin: spec.to_string() })
        }
        Err(_) => {
            src.issue(at, key, format!("{spec} holds characters that cannot go in an HTTP header"));
            None
        }
    }
}

fn identifier(src: &mut Source<'_>, value: &Text, key: &str) -> Option<String> {
    let name = src.text(value, key)?;
    if name.is_empty()
        || name.len() > 64
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        src.issue(
            value.span().start,
            key,
            format!("{name:?} must be 1-64 characters of letters, digits, '-', '_' or '.'"),
        );
        return None;
    }
    Some(name)
}

pub(super) fn texts(src: &mut Source<'_>, list: &[Text], key: &str) -> Option<Vec<String>> {
    let mut out = Vec::with_capacity(list.len());
    let mut ok = true;
    for item in list {
        match src.text(item, key) {
            Some(v) if !v.is_empty() => out.push(v),
            Some(_) => {
                src.issue(item.span().start, key, "must not contain an empty string");
                ok = false;
            }
            None => ok = false,
        }
    }
    ok.then_some(out)
}

fn socket_addr(src: &mut Source<'_>, value: Option<&Text>, key: &str, default: &str) -> Option<SocketAddr> {
    let Some(value) = value else {
        return default.parse().ok();
    };
    let text = src.text(value, key)?;
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            src.issue(value.span().start, key, format!("{text:?} is not an IP:port address, e.g. \"127.0.0.1:8080\""));
            None
        }
    }
}

/// A byte size within `range`, or `default` when the key is absent.
fn size_or(
    src: &mut Source<'_>,
    value: Option<&Spanned<RawSize>>,
    key: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Option<u64> {
    match value {
        Some(value) => size(src, value, key, range),
        None => Some(default),
    }
}

/// A byte size within `range`.
fn size(
    src: &mut Source<'_>,
    value: &Spanned<RawSize>,
    key: &str,
    range: std::ops::RangeInclusive<u64>,
) -> Option<u64> {
    let parsed = match value.get_ref() {
        RawSize::Bytes(n) => u64::try_from(*n).map_err(|_| format!("invalid size {n}: must not be negative")),
        RawSize::Text(text) => parse_size(text),
        RawSize::Other(other) => {
            Err(format!("expected a byte count or a size with a unit, such as \"16MiB\", not a {}", other.type_str()))
        }
    };
    match parsed {
        Ok(bytes) if range.contains(&bytes) => Some(bytes),
        Ok(_) => {
            let (lo, hi) = (format_size(*range.start()), format_size(*range.end()));
            src.issue(value.span().start, key, format!("must be between {lo} and {hi}"));
            None
        }
        Err(e) => {
            src.issue(value.span().start, key, e);
            None
        }
    }
}

pub(super) fn duration_or(
    src: &mut Source<'_>,
    value: Option<&Text>,
    key: &str,
    default: Duration,
) -> Option<Duration> {
    let Some(value) = value else {
        return Some(default);
    };
    let text = src.text(value, key)?;
    match parse_duration(&text) {
        Ok(d) => Some(d),
        Err(e) => {
            src.issue(value.span().start, key, e);
            None
        }
    }
}

/// https is required for anything hfgate fetches keys from, except on loopback or with `insecure = true`.
fn check_fetch_url(src: &mut Source<'_>, value: &Text, key: &str, url: &str, insecure: bool) -> bool {
    let Ok(uri) = url.parse::<Uri>() else {
        src.issue(value.span().start, key, format!("{url:?} is not a URL"));
        return false;
    };
    let (Some(scheme), Some(host)) = (uri.scheme_str(), uri.host()) else {
        src.issue(value.span().start, key, format!("{url:?} is not an absolute URL"));
        return false;
    };
    match scheme {
        "https" => true,
        "http" if insecure || is_loopback_host(host) => true,
        "http" => {
            src.issue(
                value.span().start,
                key,
                format!(
                    "{url:?} uses plain http: https is required except on loopback (set insecure = true to override)"
                ),
            );
            false
        }
        _ => {
            src.issue(value.span().start, key, format!("{url:?} must be an https:// URL"));
            false
        }
    }
}

/// `localhost`, `127.0.0.0/8` or `[::1]`.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().map(|ip| ip.is_loopback()).unwrap_or(false)
}

fn resolve(base_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() { path.to_path_buf() } else { base_dir.join(path) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
        v.as_object().cloned().expect("object")
    }

    #[test]
    fn claim_paths_handle_colons_urls_and_nesting() {
        let c = claims(json!({
            "cognito:groups": ["a"],
            "https://example.com/groups": ["b"],
            "realm_access": {"roles": ["c"]},
            "https://example.com/claims": {"team.name": "d"}
        }));
        assert_eq!(ClaimPath("cognito:groups".into()).lookup(&c), Some(&json!(["a"])));
        assert_eq!(ClaimPath("https://example.com/groups".into()).lookup(&c), Some(&json!(["b"])));
        assert_eq!(ClaimPath("realm_access.roles".into()).lookup(&c), Some(&json!(["c"])));
        assert_eq!(ClaimPath("https://example.com/claims.team.name".into()).lookup(&c), Some(&json!("d")));
        assert_eq!(ClaimPath("realm_access.missing".into()).lookup(&c), None);
    }

    #[test]
    fn loopback_hosts() {
        assert!(is_loopback_host("127.0.0.1"));
        assert!(is_loopback_host("127.8.9.10"));
        assert!(is_loopback_host("[::1]"));
        assert!(is_loopback_host("LOCALHOST"));
        assert!(!is_loopback_host("10.0.0.1"));
        assert!(!is_loopback_host("idp.example.com"));
    }
}
