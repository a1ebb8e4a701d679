//! `hfgate login`, `hfgate token` and `hfgate logout`: sign-in on the command line with the OAuth 2.0
//! device authorization grant (RFC 8628) at the issuer a hfgate server names in `/.hfgate/cli-config`,
//! and the tokens kept in `credentials.json`, one entry per server URL.
//!
//! The command line does not verify tokens (hfgate does, at the door): it reads a JWT's `exp` only to
//! know when to refresh. No token is ever printed or logged, except by `hfgate token` on stdout.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{DirBuilder, File, OpenOptions};
use std::future::Future;
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::client::{self, FetchError, HttpClient, get_json};
use crate::jose::{b64url_decode, unix_now};
use crate::oauth::{
    self, ClientAuth, DeviceAuthorization, OAuthError, ProviderMetadata, TokenResponse, is_secure_url, post_form,
};

const DEVICE_CODE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const CLI_CONFIG_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CLI_CONFIG_BYTES: usize = 64 * 1024;
/// `hfgate token` refreshes a token that expires within this long.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// RFC 8628 §3.2: the polling interval when the provider names none.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
/// RFC 8628 §3.5: `slow_down` adds 5 seconds to this and every later interval.
const SLOW_DOWN_STEP: Duration = Duration::from_secs(5);
/// Transport failures in a row tolerated while polling (with the interval doubled after each).
const MAX_POLL_FAILURES: u32 = 3;
const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// How long revoking the refresh token at logout may take (best effort).
const REVOKE_TIMEOUT: Duration = Duration::from_secs(10);
const CREDENTIALS_FILE: &str = "credentials.json";
/// A lock older than this is taken to be left over by a process that died while holding it.
const LOCK_STALE: Duration = Duration::from_secs(60);
const LOCK_WAIT: Duration = Duration::from_secs(70);

/// Why `hfgate login`, `token` or `logout` failed. Every message is one line and names no token.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("--server {url:?}: {reason}")]
    BadServer { url: String, reason: &'static str },
    #[error("{url}: {source}")]
    CliConfig { url: String, source: FetchError },
    #[error("{url}: {detail}")]
    CliConfigInvalid { url: String, detail: String },
    #[error("{0}")]
    OAuth(#[from] OAuthError),
    #[error("sign-in was denied ({0})")]
    Denied(String),
    #[error("the sign-in code expired ({0}); run `hfgate login` again")]
    Expired(String),
    #[error("the identity provider returned no {0}")]
    MissingToken(&'static str),
    #[error("no configuration directory: set HFGATE_CONFIG_DIR, XDG_CONFIG_HOME or HOME")]
    NoConfigDir,
    #[error("{}: {source}", .path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{}: not a credentials file ({detail}); remove it and run `hfgate login` again", .path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("{} is held by another hfgate; remove it if none is running", .path.display())]
    Locked { path: PathBuf },
    #[error("not signed in; run `hfgate login --server URL`")]
    NoServers,
    #[error("not signed in to {server}; run `hfgate login --server {server}`")]
    NotSignedIn { server: String },
    #[error("signed in to several servers ({servers}); choose one with --server")]
    SeveralServers { servers: String },
    #[error("the token for {server} has expired; run `hfgate login --server {server}` again")]
    TokenExpired { server: String },
    #[error("cannot refresh the token for {server} ({reason}); run `hfgate login --server {server}` again")]
    RefreshFailed { server: String, reason: String },
}

/// Which token `hfgate token` prints (the server's `cli_token`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TokenKind {
    #[default]
    AccessToken,
    IdToken,
}

/// `GET {server}/.hfgate/cli-config`: what `hfgate login` needs (no secret in it).
#[derive(Debug, Clone, Deserialize)]
struct CliConfig {
    // `server` (the server's public URL) is not read: the entry is keyed by the URL the user gave.
    issuer: String,
    client_id: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    parameters: BTreeMap<String, String>,
    #[serde(default)]
    token: TokenKind,
}

/// `credentials.json`.
#[derive(Debug, Default, Serialize, Deserialize)]
struct CredentialsFile {
    /// Keyed by the server URL as `hfgate login --server` was given it (normalized).
    #[serde(default)]
    servers: BTreeMap<String, Credential>,
}

/// One server's tokens.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Credential {
    issuer: String,
    client_id: String,
    token: TokenKind,
    access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
    /// When the token `hfgate token` prints expires (Unix seconds); absent when nothing said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
    /// The email or subject of whoever signed in, for messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens never reach a message, not even through a debug print.
        f.debug_struct("Credential")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("token", &self.token)
            .field("id_token", &self.id_token.is_some())
            .field("refresh_token", &self.refresh_token.is_some())
            .field("expires_at", &self.expires_at)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Credential {
    /// The entry for a token endpoint answer; `previous` is the entry a refresh replaces (its refresh
    /// token stays when the provider does not rotate it).
    fn from_response(
        issuer: &str,
        client_id: &str,
        kind: TokenKind,
        response: TokenResponse,
        previous: Option<&Credential>,
        now: u64,
    ) -> Result<Credential, DeviceError> {
        if kind == TokenKind::IdToken && response.id_token.is_none() {
            return Err(DeviceError::MissingToken(
                "id_token (the server's cli_token asks for one: is openid a scope?)",
            ));
        }
        let expires_at = token_expiry(kind, &response, now);
        let subject = identity(&response).or_else(|| previous.and_then(|p| p.subject.clone()));
        Ok(Credential {
            issuer: issuer.to_string(),
            client_id: client_id.to_string(),
            token: kind,
            id_token: response.id_token.or_else(|| previous.and_then(|p| p.id_token.clone())),
            refresh_token: response.refresh_token.or_else(|| previous.and_then(|p| p.refresh_token.clone())),
            access_token: response.access_token,
            expires_at,
            subject,
        })
    }

    /// The token `hfgate token` prints.
    fn printed(&self) -> Result<&str, DeviceError> {
        match self.token {
            TokenKind::AccessToken => Ok(&self.access_token),
            TokenKind::IdToken => self.id_token.as_deref().ok_or(DeviceError::MissingToken("id_token")),
        }
    }

    fn expires_within(&self, now: u64, margin: Duration) -> bool {
        self.expires_at.is_some_and(|at| at <= now.saturating_add(margin.as_secs()))
    }
}

/// When the printed token expires: `expires_in` for an access token (its JWT `exp` when absent), the
/// ID token's `exp` for an ID token.
fn token_expiry(kind: TokenKind, response: &TokenResponse, now: u64) -> Option<u64> {
    match kind {
        TokenKind::AccessToken => {
            response.expires_in.map(|s| now.saturating_add(s)).or_else(|| jwt_exp(&response.access_token))
        }
        TokenKind::IdToken => response.id_token.as_deref().and_then(jwt_exp),
    }
}

/// The claims of a compact JWS, read without verifying it.
fn jwt_claims(token: &str) -> Option<serde_json::Map<String, Value>> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    serde_json::from_slice(&b64url_decode(payload)?).ok()
}

fn jwt_exp(token: &str) -> Option<u64> {
    let exp = jwt_claims(token)?.remove("exp")?;
    exp.as_u64().or_else(|| exp.as_f64().filter(|e| e.is_finite() && *e >= 0.0).map(|e| e as u64))
}

/// The email, else the subject, from the ID token (else from a JWT access token).
fn identity(response: &TokenResponse) -> Option<String> {
    [response.id_token.as_deref(), Some(response.access_token.as_str())].into_iter().flatten().find_map(|token| {
        let claims = jwt_claims(token)?;
        ["email", "sub"]
            .iter()
            .find_map(|name| claims.get(*name).and_then(Value::as_str).filter(|v| !v.is_empty()))
            .map(printable)
    })
}

/// Text from the network, safe to print: control characters (terminal escapes, newlines) dropped.
fn printable(text: &str) -> String {
    text.chars().filter(|c| !c.is_control()).collect()
}

/// The server URL as entries are keyed: lower-case scheme and host, no trailing slash; https, or http on
/// loopback only (the server names the issuer the user signs in at).
fn normalize_server(url: &str) -> Result<String, DeviceError> {
    let bad = |reason| DeviceError::BadServer { url: url.to_string(), reason };
    let uri: http::Uri = url.trim().parse().map_err(|_| bad("not a URL"))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(bad("not an absolute http(s) URL"));
    };
    if authority.as_str().contains('@') {
        return Err(bad("must not carry a user name or password"));
    }
    if uri.query().is_some() {
        return Err(bad("must not have a query"));
    }
    let normalized = format!(
        "{}://{}{}",
        scheme.to_ascii_lowercase(),
        authority.as_str().to_ascii_lowercase(),
        uri.path().trim_end_matches('/')
    );
    if !is_secure_url(&normalized, false) {
        return Err(bad("must be https (http on loopback only)"));
    }
    Ok(normalized)
}

/// Where `credentials.json` lives: `$HFGATE_CONFIG_DIR`, else `$XDG_CONFIG_HOME/hfgate`, else
/// `~/.config/hfgate`.
pub fn config_dir() -> Result<PathBuf, DeviceError> {
    config_dir_from(|name| std::env::var_os(name))
}

fn config_dir_from(var: impl Fn(&str) -> Option<OsString>) -> Result<PathBuf, DeviceError> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set("HFGATE_CONFIG_DIR") {
        return Ok(dir);
    }
    // The XDG base directory specification: a relative path is invalid and ignored.
    if let Some(dir) = set("XDG_CONFIG_HOME").filter(|d| d.is_absolute()) {
        return Ok(dir.join("hfgate"));
    }
    set("HOME").map(|home| home.join(".config").join("hfgate")).ok_or(DeviceError::NoConfigDir)
}

/// `credentials.json` in its directory: read whole, written whole (atomically, mode 0600), updated under
/// a lock file so that two processes never use one rotating refresh token twice.
#[derive(Debug, Clone)]
struct Store {
    dir: PathBuf,
}

/// Held while reading, changing and writing `credentials.json`; removing the lock file releases it.
#[derive(Debug)]
struct StoreLock {
    path: PathBuf,
}

impl Drop for StoreLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Store {
    fn from_env() -> Result<Store, DeviceError> {
        Ok(Store { dir: config_dir()? })
    }

    fn path(&self) -> PathBuf {
        self.dir.join(CREDENTIALS_FILE)
    }

    fn load(&self) -> Result<CredentialsFile, DeviceError> {
        let path = self.path();
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| DeviceError::Corrupt { path, detail: e.to_string() })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(CredentialsFile::default()),
            Err(source) => Err(DeviceError::Io { path, source }),
        }
    }

    /// The directory, created 0700 when missing (an existing one is left as it is).
    fn ensure_dir(&self) -> Result<(), DeviceError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(|source| DeviceError::Io { path: self.dir.clone(), source })
    }

    /// Writes a temporary file created 0600 beside `credentials.json` and renames it over it: a reader
    /// sees the old file or the new one, never a part, and the tokens are never readable by others.
    fn save(&self, file: &CredentialsFile) -> Result<(), DeviceError> {
        self.ensure_dir()?;
        let path = self.path();
        let mut json = serde_json::to_vec_pretty(file)
            .map_err(|e| DeviceError::Io { path: path.clone(), source: std::io::Error::other(e) })?;
        json.push(b'\n');
        let temp = self.dir.join(format!(".{CREDENTIALS_FILE}.{}.{}", std::process::id(), oauth::random_urlsafe(6)));
        let written = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&temp).and_then(|mut f| {
            f.write_all(&json)?;
            f.sync_all()?;
            std::fs::rename(&temp, &path)
        });
        if let Err(source) = written {
            let _ = std::fs::remove_file(&temp);
            return Err(DeviceError::Io { path, source });
        }
        // The rename itself survives a crash once the directory is synced; best effort.
        if let Ok(dir) = File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }

    /// Takes `credentials.json.lock`, waiting while another process holds it.
    async fn lock(&self) -> Result<StoreLock, DeviceError> {
        self.ensure_dir()?;
        let path = self.dir.join(format!("{CREDENTIALS_FILE}.lock"));
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
                Ok(mut file) => {
                    let _ = writeln!(file, "{}", std::process::id());
                    return Ok(StoreLock { path });
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    if lock_is_stale(&path) {
                        match std::fs::remove_file(&path) {
                            Ok(()) => continue,
                            Err(e) if e.kind() == ErrorKind::NotFound => continue,
                            Err(source) => return Err(DeviceError::Io { path, source }),
                        }
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(DeviceError::Locked { path });
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(source) => return Err(DeviceError::Io { path, source }),
            }
        }
    }
}

/// A lock left by a process that is gone (interrupted while refreshing) or held far longer than any
/// refresh takes.
fn lock_is_stale(path: &Path) -> bool {
    let Ok(meta) = std::fs::metadata(path) else { return false };
    if meta.modified().ok().and_then(|t| t.elapsed().ok()).is_some_and(|age| age > LOCK_STALE) {
        return true;
    }
    // Where /proc shows processes, a holder that has ended is noticed at once.
    let holder = std::fs::read_to_string(path).ok().and_then(|text| text.trim().parse::<u32>().ok());
    match holder {
        Some(pid) => Path::new("/proc/self").exists() && !Path::new("/proc").join(pid.to_string()).exists(),
        None => false,
    }
}

/// The server's entry to use: `--server` when given, else the only one stored.
fn pick_server(file: &CredentialsFile, server: Option<&str>) -> Result<String, DeviceError> {
    if let Some(url) = server {
        return normalize_server(url);
    }
    let mut servers = file.servers.keys();
    match (servers.next(), servers.next()) {
        (None, _) => Err(DeviceError::NoServers),
        (Some(only), None) => Ok(only.clone()),
        _ => Err(DeviceError::SeveralServers {
            servers: file.servers.keys().map(String::as_str).collect::<Vec<_>>().join(", "),
        }),
    }
}

/// `hfgate login --server URL [--no-browser]`.
pub async fn login(server: &str, open: bool) -> Result<(), DeviceError> {
    let server = normalize_server(server)?;
    let store = Store::from_env()?;
    // A credentials file that cannot be updated fails now, not after the user has signed in.
    store.load()?;
    let client = client::build(CONNECT_TIMEOUT);
    let config = fetch_cli_config(&client, &server).await?;
    let metadata = ProviderMetadata::discover(&client, &config.issuer, false).await?;
    let device_endpoint = metadata.require("device_authorization_endpoint", &metadata.device_authorization_endpoint)?;
    let token_endpoint = metadata.token_endpoint()?;
    let auth = ClientAuth::Public { client_id: &config.client_id };

    let scope = config.scopes.join(" ");
    let mut form: Vec<(&str, &str)> = Vec::new();
    if !scope.is_empty() {
        form.push(("scope", &scope));
    }
    for (name, value) in &config.parameters {
        if !crate::config::RESERVED_CLI_PARAMETERS.contains(&name.as_str()) {
            form.push((name, value));
        }
    }
    let device: DeviceAuthorization = post_form(&client, device_endpoint, auth, &form).await?;
    let address = printable(device.verification_uri_complete.as_deref().unwrap_or(&device.verification_uri));
    eprintln!("Sign in at: {address}");
    eprintln!("Code: {}", printable(&device.user_code));
    if open {
        open_browser(&address);
    }

    let grant = [("grant_type", DEVICE_CODE_GRANT), ("device_code", device.device_code.as_str())];
    let interval = device.interval.map_or(DEFAULT_INTERVAL, Duration::from_secs);
    let lifetime = Duration::from_secs(device.expires_in);
    let response =
        poll(interval, lifetime, || post_form::<TokenResponse>(&client, token_endpoint, auth, &grant)).await?;
    let credential =
        Credential::from_response(&config.issuer, &config.client_id, config.token, response, None, unix_now())?;
    let who = credential.subject.clone();

    let _lock = store.lock().await?;
    let mut file = store.load()?;
    file.servers.insert(server.clone(), credential);
    store.save(&file)?;
    match who {
        Some(who) => eprintln!("Signed in to {server} as {who}"),
        None => eprintln!("Signed in to {server}"),
    }
    Ok(())
}

async fn fetch_cli_config(client: &HttpClient, server: &str) -> Result<CliConfig, DeviceError> {
    let url = format!("{server}/.hfgate/cli-config");
    let doc = get_json(client, &url, CLI_CONFIG_TIMEOUT, MAX_CLI_CONFIG_BYTES)
        .await
        .map_err(|source| DeviceError::CliConfig { url: url.clone(), source })?;
    let config: CliConfig = serde_json::from_value(doc)
        .map_err(|e| DeviceError::CliConfigInvalid { url: url.clone(), detail: e.to_string() })?;
    // Discovery would fetch an http issuer before looking at its endpoints: refuse it first.
    if !is_secure_url(&config.issuer, false) {
        return Err(DeviceError::CliConfigInvalid {
            url,
            detail: format!("issuer {:?} must be https (http on loopback only)", config.issuer),
        });
    }
    Ok(config)
}

/// Polls the token endpoint (RFC 8628 §3.4–3.5) every `interval` until the user approves or denies, the
/// code expires, or `lifetime` has passed.
async fn poll<F, Fut>(interval: Duration, lifetime: Duration, mut attempt: F) -> Result<TokenResponse, DeviceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<TokenResponse, OAuthError>>,
{
    let deadline = tokio::time::Instant::now() + lifetime;
    // An interval of 0 would poll as fast as the network allows.
    let mut interval = interval.max(Duration::from_secs(1));
    let mut failures = 0;
    loop {
        if tokio::time::Instant::now() + interval > deadline {
            return Err(DeviceError::Expired(format!("not approved within {} s", lifetime.as_secs())));
        }
        tokio::time::sleep(interval).await;
        let err = match attempt().await {
            Ok(response) => return Ok(response),
            Err(err) => err,
        };
        match err.code() {
            Some("authorization_pending") => failures = 0,
            Some("slow_down") => {
                failures = 0;
                interval += SLOW_DOWN_STEP;
            }
            Some("access_denied") => return Err(DeviceError::Denied(printable(&err.to_string()))),
            Some("expired_token") => return Err(DeviceError::Expired(printable(&err.to_string()))),
            Some(_) => return Err(err.into()),
            // §3.5: a connection that failed or timed out is retried, backing off.
            None if matches!(err, OAuthError::Request { .. }) && failures < MAX_POLL_FAILURES => {
                failures += 1;
                interval = (interval * 2).min(MAX_INTERVAL);
            }
            None => return Err(err.into()),
        }
    }
}

/// Opens `url` in a browser: `$BROWSER` (a `:`-separated list of commands, `%s` standing for the URL),
/// else `xdg-open` when there is a display. Failures are ignored: the address is printed anyway.
fn open_browser(url: &str) {
    if !url.starts_with("https://") && !url.starts_with("http://") {
        return;
    }
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let commands: Vec<Vec<String>> = match var("BROWSER") {
        Some(list) => list.split(':').filter_map(|spec| browser_command(spec, url)).collect(),
        None if var("DISPLAY").is_some() || var("WAYLAND_DISPLAY").is_some() => {
            vec![vec!["xdg-open".to_string(), url.to_string()]]
        }
        None => Vec::new(),
    };
    for argv in commands {
        let Some((program, args)) = argv.split_first() else { continue };
        // No shell: the URL is one argument whatever it holds. The browser's output would mix with ours.
        let spawned =
            Command::new(program).args(args).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        if let Ok(mut child) = spawned {
            std::thread::spawn(move || child.wait());
            return;
        }
    }
}

/// One `$BROWSER` entry as a command line: words split on whitespace, `%s` replaced by the URL (which is
/// appended when no word has it).
fn browser_command(spec: &str, url: &str) -> Option<Vec<String>> {
    let mut argv: Vec<String> = spec.split_whitespace().map(str::to_string).collect();
    if argv.is_empty() {
        return None;
    }
    if argv.iter().any(|word| word.contains("%s")) {
        for word in &mut argv {
            *word = word.replace("%s", url);
        }
    } else {
        argv.push(url.to_string());
    }
    Some(argv)
}

/// `hfgate token [--server URL]`: the token to print, refreshed first when it expires within 60 s.
pub async fn token(server: Option<&str>) -> Result<String, DeviceError> {
    let store = Store::from_env()?;
    let file = store.load()?;
    let server = pick_server(&file, server)?;
    let credential = file.servers.get(&server).ok_or_else(|| DeviceError::NotSignedIn { server: server.clone() })?;
    if !credential.expires_within(unix_now(), REFRESH_MARGIN) {
        return credential.printed().map(str::to_string);
    }

    // Under the lock, and reading again: another `hfgate token` may have refreshed meanwhile, and a
    // rotated refresh token works once only.
    let _lock = store.lock().await?;
    let mut file = store.load()?;
    let now = unix_now();
    let credential = file.servers.get(&server).ok_or_else(|| DeviceError::NotSignedIn { server: server.clone() })?;
    if !credential.expires_within(now, REFRESH_MARGIN) {
        return credential.printed().map(str::to_string);
    }
    let Some(refresh_token) = credential.refresh_token.clone() else {
        // Nothing to refresh with: still good for a few seconds, or over.
        return if credential.expires_within(now, Duration::ZERO) {
            Err(DeviceError::TokenExpired { server })
        } else {
            credential.printed().map(str::to_string)
        };
    };
    let client = client::build(CONNECT_TIMEOUT);
    let refreshed = refresh(&client, credential, &refresh_token, now)
        .await
        .map_err(|err| DeviceError::RefreshFailed { server: server.clone(), reason: printable(&err.to_string()) })?;
    let token = refreshed.printed()?.to_string();
    file.servers.insert(server, refreshed);
    store.save(&file)?;
    Ok(token)
}

/// The refresh token grant (RFC 6749 §6); the provider may rotate the refresh token.
async fn refresh(
    client: &HttpClient,
    old: &Credential,
    refresh_token: &str,
    now: u64,
) -> Result<Credential, DeviceError> {
    let metadata = ProviderMetadata::discover(client, &old.issuer, false).await?;
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh_token)];
    let auth = ClientAuth::Public { client_id: &old.client_id };
    let response: TokenResponse = post_form(client, metadata.token_endpoint()?, auth, &form).await?;
    Credential::from_response(&old.issuer, &old.client_id, old.token, response, Some(old), now)
}

/// `hfgate logout [--server URL]`: forgets the server's tokens, then revokes the refresh token when the
/// provider has a revocation endpoint (best effort).
pub async fn logout(server: Option<&str>) -> Result<(), DeviceError> {
    let store = Store::from_env()?;
    let server = match pick_server(&store.load()?, server) {
        Ok(server) => server,
        Err(DeviceError::NoServers) => {
            eprintln!("Not signed in");
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    let removed = {
        let _lock = store.lock().await?;
        let mut file = store.load()?;
        let removed = file.servers.remove(&server);
        if removed.is_some() {
            store.save(&file)?;
        }
        removed
    };
    let Some(credential) = removed else {
        eprintln!("Not signed in to {server}");
        return Ok(());
    };
    if let Some(refresh_token) = &credential.refresh_token {
        let client = client::build(CONNECT_TIMEOUT);
        let _ = tokio::time::timeout(REVOKE_TIMEOUT, revoke(&client, &credential, refresh_token)).await;
    }
    eprintln!("Signed out of {server}");
    Ok(())
}

/// RFC 7009 token revocation of the refresh token.
async fn revoke(client: &HttpClient, credential: &Credential, refresh_token: &str) {
    let Ok(metadata) = ProviderMetadata::discover(client, &credential.issuer, false).await else { return };
    let Some(endpoint) = metadata.revocation_endpoint.as_deref() else { return };
    let form = [("token", refresh_token), ("token_type_hint", "refresh_token")];
    // The answer is an empty 200 (which post_form does not read as JSON) or an error: neither changes
    // anything, the tokens are forgotten already.
    let _ = post_form::<Value>(client, endpoint, ClientAuth::Public { client_id: &credential.client_id }, &form).await;
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::jose::b64url;

    fn temp_dir(tag: &str) -> PathBuf {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "hfgate-device-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn jwt(claims: Value) -> String {
        format!("{}.{}.c2ln", b64url(br#"{"alg":"ES256"}"#), b64url(claims.to_string()))
    }

    fn response(value: Value) -> TokenResponse {
        serde_json::from_value(value).expect("token response")
    }

    fn refused(code: &str) -> OAuthError {
        OAuthError::Refused { error: code.to_string(), description: None }
    }

    fn credential(expires_at: Option<u64>, refresh_token: Option<&str>) -> Credential {
        Credential {
            issuer: "https://idp.example".to_string(),
            client_id: "hfgate-cli".to_string(),
            token: TokenKind::AccessToken,
            access_token: "at-secret".to_string(),
            id_token: None,
            refresh_token: refresh_token.map(str::to_string),
            expires_at,
            subject: Some("alice@example.com".to_string()),
        }
    }

    #[test]
    fn server_urls_are_normalized_and_must_be_https_off_loopback() {
        assert_eq!(normalize_server("https://Gate.Example.com/").expect("ok"), "https://gate.example.com");
        assert_eq!(normalize_server(" http://127.0.0.1:8080 ").expect("ok"), "http://127.0.0.1:8080");
        assert_eq!(normalize_server("http://localhost:8080/gate/").expect("ok"), "http://localhost:8080/gate");
        assert_eq!(normalize_server("http://[::1]:8080").expect("ok"), "http://[::1]:8080");
        for bad in [
            "http://gate.example.com",
            "gate.example.com",
            "/relative",
            "ftp://gate.example.com",
            "https://user:pw@gate.example.com",
            "https://gate.example.com/?x=1",
            "",
        ] {
            assert!(matches!(normalize_server(bad), Err(DeviceError::BadServer { .. })), "{bad:?}");
        }
    }

    #[test]
    fn config_dir_prefers_hfgate_then_xdg_then_home() {
        fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
            let pairs: Vec<(String, String)> = pairs.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
            move |name| pairs.iter().find(|(n, _)| n == name).map(|(_, v)| OsString::from(v))
        }
        let all = [("HFGATE_CONFIG_DIR", "/h"), ("XDG_CONFIG_HOME", "/x"), ("HOME", "/home/a")];
        assert_eq!(config_dir_from(env(&all)).expect("dir"), PathBuf::from("/h"));
        assert_eq!(config_dir_from(env(&all[1..])).expect("dir"), PathBuf::from("/x/hfgate"));
        assert_eq!(config_dir_from(env(&all[2..])).expect("dir"), PathBuf::from("/home/a/.config/hfgate"));
        // Empty values are unset, and a relative XDG_CONFIG_HOME is ignored as the XDG spec says.
        let odd = [("HFGATE_CONFIG_DIR", ""), ("XDG_CONFIG_HOME", "rel"), ("HOME", "/home/a")];
        assert_eq!(config_dir_from(env(&odd)).expect("dir"), PathBuf::from("/home/a/.config/hfgate"));
        assert!(matches!(config_dir_from(env(&[])), Err(DeviceError::NoConfigDir)));
    }

    #[test]
    fn expiry_comes_from_expires_in_else_the_jwt_exp() {
        let now = 1_000_000;
        let access = jwt(serde_json::json!({"sub": "u1", "exp": now + 300}));
        let id = jwt(serde_json::json!({"sub": "u1", "email": "a@example.com", "exp": now + 900}));
        let with_expires_in = response(serde_json::json!({"access_token": access, "expires_in": 120, "id_token": id}));
        assert_eq!(token_expiry(TokenKind::AccessToken, &with_expires_in, now), Some(now + 120));
        assert_eq!(token_expiry(TokenKind::IdToken, &with_expires_in, now), Some(now + 900));
        let without = response(serde_json::json!({"access_token": access}));
        assert_eq!(token_expiry(TokenKind::AccessToken, &without, now), Some(now + 300));
        let opaque = response(serde_json::json!({"access_token": "opaque-token"}));
        assert_eq!(token_expiry(TokenKind::AccessToken, &opaque, now), None);
        assert_eq!(jwt_exp(&jwt(serde_json::json!({"exp": 12.5}))), Some(12));
        assert_eq!(jwt_exp("a.b"), None);
        assert_eq!(jwt_exp("a.!!.c"), None);
        assert_eq!(identity(&with_expires_in).as_deref(), Some("a@example.com"));
        assert_eq!(identity(&without).as_deref(), Some("u1"));
        assert_eq!(identity(&opaque), None);
    }

    #[test]
    fn a_refresh_keeps_what_the_provider_did_not_replace() {
        let old = credential(Some(10), Some("rt-old"));
        let rotated = Credential::from_response(
            "i",
            "c",
            TokenKind::AccessToken,
            response(serde_json::json!({"access_token": "at-2", "refresh_token": "rt-new", "expires_in": 60})),
            Some(&old),
            100,
        )
        .expect("credential");
        assert_eq!(rotated.refresh_token.as_deref(), Some("rt-new"));
        assert_eq!(rotated.expires_at, Some(160));
        assert_eq!(rotated.subject.as_deref(), Some("alice@example.com"));
        let kept = Credential::from_response(
            "i",
            "c",
            TokenKind::AccessToken,
            response(serde_json::json!({"access_token": "at-3"})),
            Some(&old),
            100,
        )
        .expect("credential");
        assert_eq!(kept.refresh_token.as_deref(), Some("rt-old"));
        assert_eq!(kept.printed().expect("token"), "at-3");
        // An ID token is asked for and none came: an error, not an entry that cannot print.
        let missing = Credential::from_response(
            "i",
            "c",
            TokenKind::IdToken,
            response(serde_json::json!({"access_token": "at-4"})),
            None,
            100,
        );
        assert!(matches!(missing, Err(DeviceError::MissingToken(_))));
    }

    #[test]
    fn near_expiry_is_within_the_margin() {
        let now = 1_000;
        assert!(credential(Some(now + 59), None).expires_within(now, REFRESH_MARGIN));
        assert!(credential(Some(now + 60), None).expires_within(now, REFRESH_MARGIN));
        assert!(!credential(Some(now + 61), None).expires_within(now, REFRESH_MARGIN));
        assert!(!credential(None, None).expires_within(now, REFRESH_MARGIN));
        assert!(credential(Some(now), None).expires_within(now, Duration::ZERO));
    }

    #[test]
    fn debug_prints_no_token() {
        let mut c = credential(Some(1), Some("rt-secret"));
        c.id_token = Some("id-secret".to_string());
        let file = CredentialsFile { servers: [("https://g".to_string(), c)].into_iter().collect() };
        let text = format!("{file:?}");
        assert!(text.contains("alice@example.com"), "{text}");
        for secret in ["at-secret", "rt-secret", "id-secret"] {
            assert!(!text.contains(secret), "{text}");
        }
    }

    #[test]
    fn printable_drops_control_characters() {
        assert_eq!(printable("WDJB-MJHT\u{1b}[2J\r\nx"), "WDJB-MJHT[2Jx");
    }

    #[test]
    fn browser_commands_take_the_url_as_one_argument() {
        let url = "https://idp/device?user_code=A B;rm";
        assert_eq!(browser_command("firefox", url), Some(vec!["firefox".to_string(), url.to_string()]));
        assert_eq!(
            browser_command("chromium --new-window %s", url),
            Some(vec!["chromium".to_string(), "--new-window".to_string(), url.to_string()])
        );
        assert_eq!(browser_command("  ", url), None);
    }

    #[test]
    fn the_server_is_optional_with_exactly_one_entry() {
        let mut file = CredentialsFile::default();
        assert!(matches!(pick_server(&file, None), Err(DeviceError::NoServers)));
        assert_eq!(pick_server(&file, Some("http://127.0.0.1:1/")).expect("server"), "http://127.0.0.1:1");
        file.servers.insert("https://a.example".to_string(), credential(None, None));
        assert_eq!(pick_server(&file, None).expect("server"), "https://a.example");
        file.servers.insert("https://b.example".to_string(), credential(None, None));
        let err = pick_server(&file, None).expect_err("ambiguous").to_string();
        assert!(err.contains("https://a.example, https://b.example") && err.contains("--server"), "{err}");
    }

    #[test]
    fn credentials_are_written_atomically_owner_only_and_keyed_by_server() {
        let root = temp_dir("store");
        let store = Store { dir: root.join("a/b") };
        assert!(store.load().expect("missing file is empty").servers.is_empty());
        let mut file = CredentialsFile::default();
        file.servers.insert("https://gate.example".to_string(), credential(Some(5), Some("rt")));
        store.save(&file).expect("save");
        let mode = |p: &Path| std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777;
        assert_eq!(mode(&store.path()), 0o600);
        assert_eq!(mode(&store.dir), 0o700);
        let json: Value = serde_json::from_slice(&std::fs::read(store.path()).expect("read")).expect("json");
        assert_eq!(json["servers"]["https://gate.example"]["access_token"], "at-secret");
        assert_eq!(json["servers"]["https://gate.example"]["token"], "access_token");
        // A second save replaces the file and leaves no temporary file behind.
        file.servers.insert("http://127.0.0.1:9".to_string(), credential(None, None));
        store.save(&file).expect("save");
        assert_eq!(store.load().expect("load").servers.len(), 2);
        let names: Vec<_> =
            std::fs::read_dir(&store.dir).expect("dir").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec![OsString::from(CREDENTIALS_FILE)]);
        // A file that is not ours is reported, not overwritten.
        std::fs::write(store.path(), "not json").expect("write");
        let err = store.load().expect_err("corrupt").to_string();
        assert!(err.contains("hfgate login"), "{err}");
        let _ = std::fs::remove_dir_all(root);
    }

    #[tokio::test]
    async fn the_lock_is_exclusive_and_stale_locks_are_taken_over() {
        let root = temp_dir("lock");
        let store = Store { dir: root.clone() };
        let held = store.lock().await.expect("lock");
        let lock_path = held.path.clone();
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move { store.lock().await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiter.is_finished(), "a held lock is waited for");
        drop(held);
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("taken").expect("join").expect("lock");
        assert!(!lock_path.exists(), "released");
        // Left by a process that no longer runs: taken over at once.
        std::fs::write(&lock_path, format!("{}\n", u32::MAX - 1)).expect("write");
        if Path::new("/proc/self").exists() {
            let started = std::time::Instant::now();
            drop(store.lock().await.expect("stale lock taken over"));
            assert!(started.elapsed() < Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(root);
    }

    /// Runs [`poll`] on paused time against scripted answers; returns its result and when each poll came.
    async fn scripted_poll(
        interval: u64,
        lifetime: u64,
        answers: Vec<Result<TokenResponse, OAuthError>>,
    ) -> (Result<TokenResponse, DeviceError>, Vec<u64>) {
        let start = tokio::time::Instant::now();
        let answers = Arc::new(std::sync::Mutex::new(answers.into_iter()));
        let times = Arc::new(std::sync::Mutex::new(Vec::new()));
        let result = poll(Duration::from_secs(interval), Duration::from_secs(lifetime), || {
            let answers = answers.clone();
            let times = times.clone();
            async move {
                times.lock().expect("lock").push(start.elapsed().as_secs());
                answers.lock().expect("lock").next().unwrap_or_else(|| Err(refused("authorization_pending")))
            }
        })
        .await;
        let times = times.lock().expect("lock").clone();
        (result, times)
    }

    fn success() -> Result<TokenResponse, OAuthError> {
        Ok(response(serde_json::json!({"access_token": "at"})))
    }

    #[tokio::test(start_paused = true)]
    async fn polling_waits_the_interval_while_pending() {
        let answers = vec![Err(refused("authorization_pending")), Err(refused("authorization_pending")), success()];
        let (result, times) = scripted_poll(5, 600, answers).await;
        assert_eq!(result.expect("token").access_token, "at");
        assert_eq!(times, vec![5, 10, 15]);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_down_adds_five_seconds_to_every_later_interval() {
        let answers = vec![Err(refused("slow_down")), Err(refused("authorization_pending")), success()];
        let (result, times) = scripted_poll(2, 600, answers).await;
        assert!(result.is_ok());
        assert_eq!(times, vec![2, 9, 16]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_missing_or_zero_interval_still_waits() {
        let (_, times) = scripted_poll(0, 600, vec![Err(refused("authorization_pending")), success()]).await;
        assert_eq!(times, vec![1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn denial_and_expiry_end_the_flow_with_the_reason() {
        let denied = OAuthError::Refused { error: "access_denied".into(), description: Some("user said no".into()) };
        let (result, _) = scripted_poll(1, 600, vec![Err(denied)]).await;
        let err = result.expect_err("denied").to_string();
        assert!(err.contains("denied") && err.contains("user said no"), "{err}");
        let (result, _) = scripted_poll(1, 600, vec![Err(refused("expired_token"))]).await;
        assert!(matches!(result, Err(DeviceError::Expired(_))));
        let (result, _) = scripted_poll(1, 600, vec![Err(refused("invalid_client"))]).await;
        assert!(matches!(result, Err(DeviceError::OAuth(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn polling_stops_when_the_code_expires() {
        let (result, times) = scripted_poll(5, 17, Vec::new()).await;
        assert!(matches!(result, Err(DeviceError::Expired(_))), "{result:?}");
        assert_eq!(times, vec![5, 10, 15]);
    }

    #[tokio::test(start_paused = true)]
    async fn transport_failures_back_off_then_give_up() {
        let down = || {
            Err(OAuthError::Request { url: "https://idp/token".into(), source: FetchError::Request("refused".into()) })
        };
        let (result, times) = scripted_poll(1, 600, vec![down(), down(), success()]).await;
        assert!(result.is_ok());
        assert_eq!(times, vec![1, 3, 7]);
        let (result, times) = scripted_poll(1, 600, vec![down(), down(), down(), down()]).await;
        assert!(matches!(result, Err(DeviceError::OAuth(OAuthError::Request { .. }))));
        assert_eq!(times.len(), 4);
    }
}
