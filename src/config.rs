//! Configuration: one TOML file, read into raw serde structs (unknown keys refused), then validated into
//! [`Settings`]. Every problem names the file, the line and the key, and all of them are reported at once.

mod duration;
mod login;
mod machines;
mod settings;
mod size;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

pub use duration::{format_duration, parse_duration};
pub use login::{CliToken, CookieKey, LoginSettings, RESERVED_CLI_PARAMETERS};
pub use machines::{
    ClaimCondition, ClientAuthMethod, ExchangeKind, ExchangeSettings, OpaqueCheck, OpaqueSettings, Pattern, glob_match,
};
pub use settings::{
    ApiKind, AuditTarget, AuthzSettings, ClaimPath, Credential, IssuerSettings, JwksSource, KindRule, LoginMode,
    RouteSettings, RuleEffect, RuleSettings, ServerSettings, Settings, UpstreamUrl, is_loopback_host,
};
pub use size::{format_size, parse_size};

/// A string value with its place in the file.
pub(crate) type Text = Spanned<String>;

/// A byte size as written: a bare integer or a string with a unit (see [`parse_size`]).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum RawSize {
    Bytes(i64),
    Text(String),
    /// Anything else (a float, a table): refused with a message that says what is expected.
    Other(toml::Value),
}

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: String,
    pub line: usize,
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}: {}", self.file, self.line, self.key, self.message)
    }
}

/// Why a configuration could not be loaded: every issue found, in file order.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{}", render_issues(.0))]
    Invalid(Vec<ConfigIssue>),
}

fn render_issues(issues: &[ConfigIssue]) -> String {
    issues.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

impl ConfigError {
    pub fn issues(&self) -> &[ConfigIssue] {
        match self {
            ConfigError::Invalid(issues) => issues,
            ConfigError::Read { .. } => &[],
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub server: Option<Spanned<RawServer>>,
    pub audit: Option<Spanned<RawAudit>>,
    #[serde(default)]
    pub issuer: Vec<Spanned<RawIssuer>>,
    #[serde(default)]
    pub route: Vec<Spanned<RawRoute>>,
    pub authz: Option<Spanned<RawAuthz>>,
    #[serde(default)]
    pub allow: Vec<Spanned<RawRule>>,
    #[serde(default)]
    pub deny: Vec<Spanned<RawRule>>,
    pub login: Option<Spanned<login::RawLogin>>,
    #[serde(default)]
    pub exchange: Vec<Spanned<machines::RawExchange>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAuthz {
    pub policy_file: Option<Text>,
    pub decision_cache: Option<Spanned<bool>>,
}

/// `[[allow]]` / `[[deny]]`: shorthand compiled to Cedar `permit` / `forbid`.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub groups: Option<Vec<Text>>,
    pub users: Option<Vec<Text>>,
    pub issuers: Option<Vec<Text>>,
    pub routes: Option<Vec<Text>>,
    pub models: Option<Vec<Text>>,
    pub datasets: Option<Vec<Text>>,
    pub spaces: Option<Vec<Text>>,
    pub actions: Option<Vec<Text>>,
    pub bill_to: Option<Text>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub listen: Option<Text>,
    pub admin_listen: Option<Text>,
    pub public_url: Option<Text>,
    pub upstream_connect_timeout: Option<Text>,
    pub shutdown_grace: Option<Text>,
    pub assertion_lifetime: Option<Text>,
    pub assertion_key: Option<Text>,
    pub trust_forwarded_headers: Option<Spanned<bool>>,
    pub workers: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Text>,
    pub max_header_bytes: Option<Spanned<RawSize>>,
    pub max_request_body: Option<Spanned<RawSize>>,
    pub exchanged_token_lifetime: Option<Text>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub path: Option<Text>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIssuer {
    pub name: Text,
    pub issuer: Text,
    pub audiences: Option<Vec<Text>>,
    pub audience_claims: Option<Vec<Text>>,
    pub jwks_uri: Option<Text>,
    pub algorithms: Option<Vec<Text>>,
    pub groups_claim: Option<Text>,
    pub email_claim: Option<Text>,
    pub leeway: Option<Text>,
    pub max_token_lifetime: Option<Text>,
    pub require_typ: Option<Text>,
    pub kind: Option<Text>,
    pub insecure: Option<Spanned<bool>>,
    pub jwks_refresh_interval: Option<Text>,
    pub jwks_refetch_min_interval: Option<Text>,
    pub jwks_max_stale: Option<Text>,
    pub require: Option<Spanned<std::collections::BTreeMap<String, Spanned<machines::RawCondition>>>>,
    pub introspection: Option<Spanned<machines::RawIntrospection>>,
    pub userinfo: Option<Spanned<machines::RawUserinfo>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: Text,
    pub path: Text,
    pub upstream: Text,
    pub api: Option<Text>,
    pub model: Option<Text>,
    pub credential: Option<Text>,
    pub strip_prefix: Option<Spanned<bool>>,
    pub timeout: Option<Text>,
    pub idle_timeout: Option<Text>,
    pub bill_to: Option<Text>,
    pub max_body_peek: Option<Spanned<RawSize>>,
    pub max_request_body: Option<Spanned<RawSize>>,
    pub login: Option<Text>,
}

/// Maps byte offsets of one file to line numbers and collects issues against it.
pub(crate) struct Source<'a> {
    pub file: String,
    pub text: &'a str,
    pub issues: Vec<ConfigIssue>,
}

impl<'a> Source<'a> {
    pub fn new(file: &Path, text: &'a str) -> Source<'a> {
        Source { file: file.display().to_string(), text, issues: Vec::new() }
    }

    pub fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    pub fn issue(&mut self, offset: usize, key: impl Into<String>, message: impl Into<String>) {
        let line = self.line_of(offset);
        self.issues.push(ConfigIssue { file: self.file.clone(), line, key: key.into(), message: message.into() });
    }

    /// The value of a string field with `${NAME}` replaced from the environment; an unset variable is an issue.
    pub fn text(&mut self, value: &Text, key: &str) -> Option<String> {
        match interpolate(value.get_ref()) {
            Ok(text) => Some(text),
            Err(message) => {
                self.issue(value.span().start, key, message);
                None
            }
        }
    }

    /// Where `key = ...` is written in the table starting at `table_at` (the table itself if absent).
    pub fn key_offset(&self, table_at: usize, key: &str) -> usize {
        let mut pos = table_at.min(self.text.len());
        for line in self.text[pos..].split_inclusive('\n') {
            let trimmed = line.trim_start();
            if pos > table_at && trimmed.starts_with('[') {
                break;
            }
            if let Some(rest) = trimmed.strip_prefix(key)
                && rest.trim_start().starts_with('=')
            {
                return pos;
            }
            pos += line.len();
        }
        table_at
    }

    /// Dotted key path (`route[1].api`) of the table that holds `offset`, plus `leaf`.
    fn key_path_at(&self, offset: usize, leaf: &str) -> String {
        let mut table = String::new();
        let mut counts: Vec<(String, usize)> = Vec::new();
        let mut pos = 0;
        for line in self.text.split_inclusive('\n') {
            if pos > offset {
                break;
            }
            let trimmed = line.trim();
            if let Some(name) = trimmed.strip_prefix("[[").and_then(|t| t.split("]]").next()) {
                let name = name.trim().to_string();
                let index = match counts.iter_mut().find(|(n, _)| *n == name) {
                    Some((_, count)) => {
                        *count += 1;
                        *count - 1
                    }
                    None => {
                        counts.push((name.clone(), 1));
                        0
                    }
                };
                table = format!("{name}[{index}]");
            } else if let Some(name) = trimmed.strip_prefix('[').and_then(|t| t.split(']').next()) {
                table = name.trim().to_string();
            }
            pos += line.len();
        }
        match (table.is_empty(), leaf.is_empty()) {
            (true, _) => leaf.to_string(),
            (false, true) => table,
            (false, false) => format!("{table}.{leaf}"),
        }
    }
}

/// Replaces every `${NAME}` with the environment variable NAME. `$$` stands for one `$`.
pub fn interpolate(value: &str) -> Result<String, String> {
    if !value.contains('$') {
        return Ok(value.to_string());
    }
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(after) = rest.strip_prefix("${") {
            let end = after.find('}').ok_or("unterminated ${...} reference")?;
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("invalid environment variable name {name:?} in ${{...}}"));
            }
            match std::env::var(name) {
                Ok(v) => out.push_str(&v),
                Err(_) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &after[end + 1..];
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Reads and validates the configuration at `path`.
pub fn load(path: &Path) -> Result<Settings, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
    parse(path, &text)
}

/// Validates configuration text; `path` is only used to name the file in messages and to resolve
/// relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Settings, ConfigError> {
    let mut source = Source::new(path, text);
    let raw: RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(err) => {
            let offset = err.span().map(|s| s.start).unwrap_or(0);
            let message = err.message().trim().to_string();
            let leaf = backticked(&message).or_else(|| key_at(text, offset)).unwrap_or_default();
            let key = source.key_path_at(offset, &leaf);
            source.issue(offset, if key.is_empty() { "(file)".to_string() } else { key }, message);
            return Err(ConfigError::Invalid(source.issues));
        }
    };
    let base_dir = path.parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."));
    let settings = settings::validate(&mut source, raw, &base_dir);
    if source.issues.is_empty() {
        settings.ok_or(ConfigError::Invalid(Vec::new()))
    } else {
        source.issues.sort_by_key(|issue| issue.line);
        Err(ConfigError::Invalid(source.issues))
    }
}

/// The first `name` in a serde message like "unknown field `name`, expected ...".
fn backticked(message: &str) -> Option<String> {
    if !(message.starts_with("unknown field") || message.starts_with("missing field")) {
        return None;
    }
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

/// The key of a `key = value` line containing `offset`.
fn key_at(text: &str, offset: usize) -> Option<String> {
    let start = text[..offset.min(text.len())].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let line = text[start..].lines().next()?;
    let (key, _) = line.split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('[')).then(|| key.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_replaces_and_names_unset_variables() {
        // Setting variables is `unsafe` in edition 2024 (and unsafe code is forbidden): use one every
        // environment has.
        let home = std::env::var("PATH").expect("PATH");
        assert_eq!(interpolate("a${PATH}b").as_deref(), Ok(format!("a{home}b").as_str()));
        assert_eq!(interpolate("cost $$5").as_deref(), Ok("cost $5"));
        let err = interpolate("${HFGATE_SURELY_UNSET_VAR}").expect_err("unset");
        assert!(err.contains("HFGATE_SURELY_UNSET_VAR"), "{err}");
        assert!(interpolate("${oops").is_err());
    }

    #[test]
    fn sizes_take_a_count_or_a_unit_and_name_the_line_when_wrong() {
        let base = "[[issuer]]\nname = \"c\"\nissuer = \"https://idp.example\"\naudiences = [\"a\"]\n\
                    [[route]]\nname = \"r\"\npath = \"/\"\nupstream = \"http://127.0.0.1:9\"\n";
        let parsed =
            |server: &str, route: &str| parse(Path::new("f.toml"), &format!("[server]\n{server}\n{base}{route}\n"));
        let ok =
            parsed("max_request_body = \"1GiB\"\nmax_header_bytes = 16384", "max_request_body = 1024").expect("sizes");
        assert_eq!((ok.server.max_request_body, ok.server.max_header_bytes), (1 << 30, 16384));
        assert_eq!(ok.routes[0].max_request_body, Some(1024));
        assert_eq!(parsed("", "").expect("defaults").server.max_request_body, 16 << 20);
        for (server, route, want) in [
            ("max_request_body = 1.5", "", "f.toml:2: server.max_request_body: expected a byte count or a size"),
            ("max_header_bytes = \"1KiB\"", "", "f.toml:2: server.max_header_bytes: must be between 8KiB and 1MiB"),
            ("", "max_request_body = \"16 mb\"", "route[0].max_request_body: invalid size"),
        ] {
            let err = parsed(server, route).expect_err("refused").to_string();
            assert!(err.contains(want), "{err}");
        }
    }

    #[test]
    fn key_paths_count_array_tables() {
        let text = "[server]\nlisten = \"x\"\n[[route]]\nname = \"a\"\n[[route]]\nname = \"b\"\n";
        let source = Source::new(Path::new("f.toml"), text);
        let offset = text.rfind("name").expect("name");
        assert_eq!(source.key_path_at(offset, "name"), "route[1].name");
        assert_eq!(source.key_path_at(10, "listen"), "server.listen");
    }
}
