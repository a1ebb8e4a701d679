//! Shared path reading: segments, keywords, percent-decoding, and the Hub's rules for repo ids and
//! revisions.

use super::ClassifyError;

/// Longest piece of a request quoted back in an error.
const SHOWN_CHARS: usize = 64;

/// The path's segments without the leading '/' and without one trailing '/'.
pub(super) fn segments(path: &str) -> Vec<&str> {
    let path = path.strip_prefix('/').unwrap_or(path);
    let path = path.strip_suffix('/').unwrap_or(path);
    if path.is_empty() { Vec::new() } else { path.split('/').collect() }
}

fn hex(byte: u8) -> Option<u8> {
    (byte as char).to_digit(16).and_then(|digit| u8::try_from(digit).ok())
}

/// The first byte of `bytes` decoded, and the rest; a '%' not followed by two hex digits stays a '%'.
fn next_decoded(bytes: &[u8]) -> Option<(u8, &[u8])> {
    match bytes {
        [] => None,
        [b'%', hi, lo, rest @ ..] => match (hex(*hi), hex(*lo)) {
            (Some(hi), Some(lo)) => Some((hi << 4 | lo, rest)),
            _ => Some((b'%', &bytes[1..])),
        },
        [byte, rest @ ..] => Some((*byte, rest)),
    }
}

/// Whether a raw segment spells `keyword` (lowercase ASCII) once percent-decoded, ignoring ASCII case.
pub(super) fn is_keyword(raw: &str, keyword: &str) -> bool {
    let mut bytes = raw.as_bytes();
    let mut expected = keyword.bytes();
    while let Some((byte, rest)) = next_decoded(bytes) {
        match expected.next() {
            Some(want) if want == byte.to_ascii_lowercase() => bytes = rest,
            _ => return false,
        }
    }
    expected.next().is_none()
}

/// Whether `segments` spells `keywords`, one keyword per segment.
pub(super) fn is_keywords(segments: &[&str], keywords: &[&str]) -> bool {
    segments.len() == keywords.len() && segments.iter().zip(keywords).all(|(raw, keyword)| is_keyword(raw, keyword))
}

pub(super) fn has_encoded_slash(raw: &str) -> bool {
    raw.as_bytes().windows(3).any(|w| w[0] == b'%' && w[1] == b'2' && (w[2] == b'F' || w[2] == b'f'))
}

/// A segment of a file path that holds `%2F`: once decoded, its components must be real names, so that
/// whoever splits it later cannot climb out of the repo or merge two names.
pub(super) fn check_encoded_file_segment(raw: &str) -> Result<(), ClassifyError> {
    let decoded = percent_decode(raw);
    if decoded.split(|&b| b == b'/').any(|component| matches!(component, b"" | b"." | b"..")) {
        return Err(ClassifyError::BadRepoPath("a file path has an empty, '.' or '..' component once decoded"));
    }
    Ok(())
}

/// Standard percent-decoding; an invalid escape is kept as it is (normalization refuses those anyway).
pub(super) fn percent_decode(raw: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.as_bytes();
    while let Some((byte, rest)) = next_decoded(bytes) {
        out.push(byte);
        bytes = rest;
    }
    out
}

/// A short, printable rendering of request input for an error message: at most 64 characters, anything
/// but printable ASCII (and the quote characters) replaced by '?'.
pub(super) fn shown(input: &str) -> String {
    let mut out: String = input
        .chars()
        .take(SHOWN_CHARS)
        .map(|c| if (c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\')) || c == ' ' { c } else { '?' })
        .collect();
    if input.chars().nth(SHOWN_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

fn bad_id(id: &str, reason: &'static str) -> ClassifyError {
    ClassifyError::BadModelId { id: shown(id), reason }
}

/// Checks one part (org or name) of a Hub repo id, as the Hub does.
fn check_repo_part(part: &str) -> Result<(), &'static str> {
    if part.is_empty() {
        return Err("empty org or name");
    }
    if part.len() > 96 {
        return Err("org and name are at most 96 characters each");
    }
    if !part.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return Err("only ASCII letters, digits, '-', '_' and '.' are allowed");
    }
    if part.starts_with(['-', '.']) || part.ends_with(['-', '.']) {
        return Err("org and name cannot start or end with '-' or '.'");
    }
    if part.contains("--") || part.contains("..") {
        return Err("'--' and '..' are not allowed");
    }
    Ok(())
}

/// Checks a Hub repo id, `org/name` or a legacy `name`.
pub(super) fn check_repo_id(id: &str) -> Result<(), ClassifyError> {
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 {
        return Err(bad_id(id, "a repo id is 'org/name'"));
    }
    for part in &parts {
        check_repo_part(part).map_err(|reason| bad_id(id, reason))?;
    }
    // `{repo}.git/...` is the Hub's git endpoint, so a name ending in '.git' would read two ways.
    if id.len() >= 4 && id[id.len() - 4..].eq_ignore_ascii_case(".git") {
        return Err(bad_id(id, "a repo name cannot end with '.git'"));
    }
    Ok(())
}

/// The repo id spelled by raw path segments (one or two). Each must be literal: since every character a
/// repo id may hold is unreserved, an escape there means the id decodes differently from how it reads,
/// which is refused rather than guessed.
pub(super) fn repo_id_from_segments(raw: &[&str]) -> Result<String, ClassifyError> {
    let id = raw.join("/");
    if raw.iter().any(|part| percent_decode(part) != part.as_bytes()) {
        return Err(bad_id(&id, "percent-encoded characters are not allowed in a repo id"));
    }
    check_repo_id(&id)?;
    Ok(id)
}

fn bad_revision(revision: &str, reason: &'static str) -> ClassifyError {
    ClassifyError::BadRevision { revision: shown(revision), reason }
}

/// A revision from a raw path segment, percent-decoded (`refs%2Fpr%2F1` is `refs/pr/1`) and checked
/// against git's ref-name rules, restricted to printable ASCII.
pub(super) fn revision_from_segment(raw: &str) -> Result<String, ClassifyError> {
    let Ok(revision) = String::from_utf8(percent_decode(raw)) else {
        return Err(bad_revision(raw, "not UTF-8 once decoded"));
    };
    check_revision(&revision).map_err(|reason| bad_revision(&revision, reason))?;
    Ok(revision)
}

fn check_revision(revision: &str) -> Result<(), &'static str> {
    if revision.is_empty() {
        return Err("empty");
    }
    if revision.len() > 255 {
        return Err("longer than 255 characters");
    }
    if !revision.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("only printable ASCII without spaces is allowed");
    }
    // '%' after decoding means double encoding: whoever decodes once more would read another revision.
    if revision.contains(['~', '^', ':', '?', '*', '[', '\\', '%']) {
        return Err("contains a backslash or one of ~ ^ : ? * [ %");
    }
    if revision.contains("..") || revision.contains("@{") || revision == "@" {
        return Err("contains '..' or '@{' or is '@'");
    }
    if revision.starts_with('/') || revision.ends_with('/') || revision.contains("//") {
        return Err("empty path component");
    }
    if revision.ends_with('.') || revision.split('/').any(|c| c.starts_with('.') || c.ends_with(".lock")) {
        return Err("a component starts with '.' or ends with '.lock', or the name ends with '.'");
    }
    Ok(())
}

/// A full commit id, as the Hub puts in its `resolve-cache` redirects.
pub(super) fn is_commit_sha(raw: &str) -> bool {
    raw.len() == 40 && raw.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_drop_the_leading_and_one_trailing_slash() {
        assert_eq!(segments("/"), Vec::<&str>::new());
        assert_eq!(segments(""), Vec::<&str>::new());
        assert_eq!(segments("/a/b"), ["a", "b"]);
        assert_eq!(segments("/a/b/"), ["a", "b"]);
        assert_eq!(segments("a"), ["a"]);
    }

    #[test]
    fn keywords_match_decoded_and_ignoring_ascii_case() {
        assert!(is_keyword("resolve", "resolve"));
        assert!(is_keyword("ReSoLvE", "resolve"));
        assert!(is_keyword("%72esolve", "resolve"));
        assert!(is_keyword("%52ESOLVE", "resolve"));
        assert!(!is_keyword("resolv", "resolve"));
        assert!(!is_keyword("resolvee", "resolve"));
        assert!(!is_keyword("re%2Fsolve", "resolve"));
        // Non-ASCII never folds onto ASCII (U+017F LATIN SMALL LETTER LONG S).
        assert!(!is_keyword("re\u{17f}olve", "resolve"));
        assert!(is_keywords(&["V1", "chat", "completions"], &["v1", "chat", "completions"]));
        assert!(!is_keywords(&["v1", "chat"], &["v1", "chat", "completions"]));
    }

    #[test]
    fn percent_decoding_is_standard_and_total() {
        assert_eq!(percent_decode("refs%2Fpr%2F1"), b"refs/pr/1");
        assert_eq!(percent_decode("a%zz%4"), b"a%zz%4");
        assert_eq!(percent_decode("%e6%97%a5"), "\u{65e5}".as_bytes());
        assert!(has_encoded_slash("a%2fb") && has_encoded_slash("%2F") && !has_encoded_slash("%25F"));
    }

    #[test]
    fn shown_input_is_short_and_printable() {
        assert_eq!(shown("org/name"), "org/name");
        assert_eq!(shown("a\"b'c\\d\u{e9}\n"), "a?b?c?d??");
        let long = "x".repeat(100);
        assert_eq!(shown(&long), format!("{}...", "x".repeat(64)));
    }

    #[test]
    fn repo_ids_follow_the_hub_rules() {
        for id in ["gpt2", "org/name", "Org_1/Name-2.v3", "a/b", &format!("{}/{}", "o".repeat(96), "n".repeat(96))] {
            assert_eq!(check_repo_id(id), Ok(()), "{id}");
        }
        for (id, reason) in [
            ("", "empty org or name"),
            ("org/", "empty org or name"),
            ("/name", "empty org or name"),
            ("a/b/c", "a repo id is 'org/name'"),
            (&"x".repeat(97), "org and name are at most 96 characters each"),
            ("org/na me", "only ASCII letters, digits, '-', '_' and '.' are allowed"),
            ("org/n\u{e4}me", "only ASCII letters, digits, '-', '_' and '.' are allowed"),
            ("org/na%41me", "only ASCII letters, digits, '-', '_' and '.' are allowed"),
            ("-org/name", "org and name cannot start or end with '-' or '.'"),
            ("org/name.", "org and name cannot start or end with '-' or '.'"),
            ("org/.name", "org and name cannot start or end with '-' or '.'"),
            ("org/na--me", "'--' and '..' are not allowed"),
            ("org/na..me", "'--' and '..' are not allowed"),
            ("org/name.git", "a repo name cannot end with '.git'"),
            ("org/name.GIT", "a repo name cannot end with '.git'"),
        ] {
            assert_eq!(check_repo_id(id), Err(bad_id(id, reason)), "{id}");
        }
    }

    #[test]
    fn repo_ids_in_paths_are_literal() {
        assert_eq!(repo_id_from_segments(&["org", "name"]), Ok("org/name".to_string()));
        assert_eq!(repo_id_from_segments(&["gpt2"]), Ok("gpt2".to_string()));
        for raw in [["org", "n%61me"], ["%6Frg", "name"], ["org", "a%2E%2Eb"], ["org", "a%25b"]] {
            assert!(
                matches!(repo_id_from_segments(&raw), Err(ClassifyError::BadModelId { reason, .. })
                    if reason == "percent-encoded characters are not allowed in a repo id"),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn revisions_are_decoded_and_follow_git_rules() {
        for (raw, revision) in [
            ("main", "main"),
            ("refs%2Fpr%2F1", "refs/pr/1"),
            ("refs%2fconvert%2fparquet", "refs/convert/parquet"),
            ("v1.0", "v1.0"),
            ("a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2", "a1b2c3d4e5f6a1b2c3d4e5f6a1b2c3d4e5f6a1b2"),
            ("feature%2Bx", "feature+x"),
        ] {
            assert_eq!(revision_from_segment(raw), Ok(revision.to_string()), "{raw}");
        }
        for raw in [
            "",
            "a%20b",
            "a..b",
            "%2E%2E",
            "a%2F..%2Fb",
            "refs%252Fpr",
            "a~1",
            "a%5E",
            "a:b",
            "%2Fa",
            "a%2F",
            "a%2F%2Fb",
            "a.lock",
            "a%2F.b",
            "a.",
            "@",
            "a@{1}",
            "%FF",
            "%C3%A9",
            &"a".repeat(256),
        ] {
            assert!(matches!(revision_from_segment(raw), Err(ClassifyError::BadRevision { .. })), "{raw}");
        }
        assert_eq!(
            revision_from_segment("a..b").map_err(|e| e.to_string()),
            Err("invalid revision 'a..b': contains '..' or '@{' or is '@'".to_string())
        );
        assert_eq!(
            revision_from_segment("%FF").map_err(|e| e.to_string()),
            Err("invalid revision '%FF': not UTF-8 once decoded".to_string())
        );
    }

    #[test]
    fn commit_shas_are_forty_lowercase_hex_digits() {
        assert!(is_commit_sha("6cee5e81ee83917806bbde320786a8fb61efebee"));
        assert!(!is_commit_sha("6CEE5E81EE83917806BBDE320786A8FB61EFEBEE"));
        assert!(!is_commit_sha("main"));
        assert!(!is_commit_sha("6cee5e81ee83917806bbde320786a8fb61efebe"));
    }
}
