//! Routing: one canonical path, then the longest configured prefix wins.
//!
//! hfgate does not rewrite ambiguous paths into a "canonical" guess; it refuses them, so the path the
//! policy saw is the path the upstream gets.

use std::sync::Arc;

use crate::config::RouteSettings;

/// Why a request path was refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path must start with '/'")]
    NotAbsolute,
    #[error("path contains a '.' or '..' segment")]
    DotSegment,
    #[error("path contains an empty segment ('//')")]
    EmptySegment,
    #[error("path contains an encoded slash or backslash (%2F, %5C)")]
    EncodedSlash,
    #[error("path contains a backslash")]
    Backslash,
    #[error("path contains an invalid percent-encoding")]
    BadPercentEncoding,
    #[error("path contains a control character or an encoded NUL")]
    ControlCharacter,
}

/// Checks a request path (without its query). Refused: relative paths, `.`/`..` segments in any
/// spelling (`%2e`, `.%2E`), empty segments, encoded `/` or `\`, raw `\`, bad or NUL escapes, control bytes.
pub fn normalize_path(path: &str) -> Result<&str, PathError> {
    check_path(path, false)
}

/// [`normalize_path`] that lets `%2F` through, for hub routes whose revisions may carry one; every
/// other rule still applies.
pub fn normalize_path_allowing_encoded_slash(path: &str) -> Result<&str, PathError> {
    check_path(path, true)
}

fn check_path(path: &str, allow_encoded_slash: bool) -> Result<&str, PathError> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' => return Err(PathError::Backslash),
            b if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
            b'%' => {
                let (Some(hi), Some(lo)) = (bytes.get(i + 1).and_then(hex), bytes.get(i + 2).and_then(hex)) else {
                    return Err(PathError::BadPercentEncoding);
                };
                match hi << 4 | lo {
                    b'/' if allow_encoded_slash => {}
                    b'/' | b'\\' => return Err(PathError::EncodedSlash),
                    b if b < 0x20 || b == 0x7f => return Err(PathError::ControlCharacter),
                    _ => {}
                }
                i += 3;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    // Segments after the leading '/': a trailing empty segment ("/a/") is fine, an inner one is not.
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    for (index, segment) in segments.iter().enumerate() {
        if segment.is_empty() && index != last {
            return Err(PathError::EmptySegment);
        }
        if is_dot_segment(segment) {
            return Err(PathError::DotSegment);
        }
    }
    Ok(path)
}

fn hex(b: &u8) -> Option<u8> {
    (*b as char).to_digit(16).map(|d| d as u8)
}

/// `.` or `..`, with any of the dots percent-encoded.
fn is_dot_segment(segment: &str) -> bool {
    let mut dots = 0;
    let mut rest = segment;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            rest = r;
        } else if rest.as_bytes().get(..3).is_some_and(|head| head.eq_ignore_ascii_case(b"%2e")) {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// A configured route, shared by every request it serves.
#[derive(Debug)]
pub struct Route {
    pub index: usize,
    pub settings: RouteSettings,
    /// `scheme://authority` of the upstream, as recorded in the audit.
    pub origin: Arc<str>,
    /// The route name, shared with metrics labels and audit lines.
    pub name: Arc<str>,
}

/// The routes, longest prefix first.
#[derive(Debug, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn new(routes: &[RouteSettings]) -> RouteTable {
        let mut routes: Vec<Arc<Route>> = routes
            .iter()
            .enumerate()
            .map(|(index, settings)| {
                let origin = format!("{}://{}", settings.upstream.scheme, settings.upstream.authority).into();
                let name = settings.name.as_str().into();
                Arc::new(Route { index, settings: settings.clone(), origin, name })
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.settings.prefix.len()));
        RouteTable { routes }
    }

    /// The route whose prefix is `path` itself or a whole-segment prefix of it.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|route| {
            let prefix = route.settings.prefix.as_str();
            path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
        })
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

impl Route {
    /// The upstream path and query for a request path that this route matched.
    pub fn upstream_path_and_query(&self, path: &str, query: Option<&str>) -> String {
        let settings = &self.settings;
        let rest = if settings.strip_prefix { &path[settings.prefix.len()..] } else { path };
        let mut out =
            String::with_capacity(settings.upstream.base_path.len() + rest.len() + 1 + query.map_or(0, str::len));
        out.push_str(&settings.upstream.base_path);
        if !rest.starts_with('/') {
            out.push('/');
        }
        out.push_str(rest);
        if let Some(query) = query {
            out.push('?');
            out.push_str(query);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_paths() {
        for p in [
            "/",
            "/a",
            "/a/",
            "/v1/chat/completions",
            "/models/meta-llama/Llama-3.1-8B",
            "/a%20b",
            "/.well-known/x",
            "/a..b",
            "/...",
            "/%41",
            // Non-ASCII text right after a dot (config paths may hold it): a plain segment, never a panic.
            "/.é",
            "/a/%2eé",
        ] {
            assert_eq!(normalize_path(p), Ok(p), "{p}");
        }
    }

    #[test]
    fn refuses_ambiguous_paths() {
        let cases = [
            ("a/b", PathError::NotAbsolute),
            ("", PathError::NotAbsolute),
            ("/a/../b", PathError::DotSegment),
            ("/a/..", PathError::DotSegment),
            ("/./a", PathError::DotSegment),
            ("/a/%2e%2e/b", PathError::DotSegment),
            ("/a/.%2E/b", PathError::DotSegment),
            ("/a/%2e/b", PathError::DotSegment),
            ("/a//b", PathError::EmptySegment),
            ("//a", PathError::EmptySegment),
            ("/a%2Fb", PathError::EncodedSlash),
            ("/a%2fb", PathError::EncodedSlash),
            ("/a%5cb", PathError::EncodedSlash),
            ("/a\\b", PathError::Backslash),
            ("/a%zz", PathError::BadPercentEncoding),
            ("/a%4", PathError::BadPercentEncoding),
            ("/a%00", PathError::ControlCharacter),
            ("/a\tb", PathError::ControlCharacter),
        ];
        for (path, expected) in cases {
            assert_eq!(normalize_path(path), Err(expected), "{path:?}");
        }
    }
}
