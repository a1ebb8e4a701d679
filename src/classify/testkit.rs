//! Deterministic random inputs for the classifier's property tests (xorshift64*, fixed seeds).

use http::Method;

use super::path::check_repo_id;

pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `0..n` for tests; `n` must be positive.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const METHODS: [&str; 12] =
    ["GET", "GET", "HEAD", "POST", "POST", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE", "PROPFIND"];

pub(crate) fn random_method(rng: &mut Rng) -> Method {
    Method::from_bytes(rng.pick(&METHODS).as_bytes()).unwrap_or(Method::GET)
}

/// Segments that mean something to some classifier beyond [`KEYWORDS`], and spellings that should confuse one.
const VOCABULARY: [&str; 41] = [
    "lfs",
    "name.git",
    "chat",
    "completions",
    "embeddings",
    "messages",
    "feature-extraction",
    "generate",
    "embed",
    "health",
    "main",
    "org",
    "name",
    "gpt2",
    "refs%2Fpr%2F1",
    "6cee5e81ee83917806bbde320786a8fb61efebee",
    "config.json",
    "%2F",
    "%2E%2E",
    "%2e",
    "%25",
    "%252F",
    "%",
    "%zz",
    "%FF",
    "%C3%A9",
    "\u{e9}",
    "\u{65e5}\u{672c}",
    "\u{17f}",
    "",
    "..",
    ".",
    "-a",
    "a--b",
    "RESOLVE",
    "%72esolve",
    "%00",
    "a:b",
    "a b",
    "\t",
    "\u{1f600}",
];

fn random_text(rng: &mut Rng, max_len: usize) -> String {
    let bytes: Vec<u8> = (0..rng.below(max_len + 1)).map(|_| (rng.next_u64() & 0xff) as u8).collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// Real request shapes, which random edits then bend.
const TEMPLATES: [&str; 16] = [
    "/v1/chat/completions",
    "/v1/embeddings",
    "/chat/completions",
    "/v1/models/org/name",
    "/generate_stream",
    "/models/org/name/pipeline/feature-extraction",
    "/models/gpt2/v1/chat/completions",
    "/org/name/resolve/refs%2Fpr%2F1/model.safetensors",
    "/gpt2/resolve/main/config.json",
    "/datasets/org/name/resolve/main/data/train.parquet",
    "/api/models/org/name/revision/main",
    "/api/models/org/name/tree/main/sub/dir",
    "/api/resolve-cache/models/org/name/6cee5e81ee83917806bbde320786a8fb61efebee/config.json",
    "/api/models/org/name/xet-read-token/6cee5e81ee83917806bbde320786a8fb61efebee",
    "/org/name.git/info/refs",
    "/api/models",
];

fn random_segment(rng: &mut Rng) -> String {
    match rng.below(10) {
        0 => random_text(rng, 12),
        1 => "x".repeat(rng.below(300)),
        2..=4 => rng.pick(&KEYWORDS).to_string(),
        _ => rng.pick(&VOCABULARY).to_string(),
    }
}

/// A path from random segments, or a real shape with a few random edits.
pub(crate) fn random_path(rng: &mut Rng) -> String {
    let mut segments: Vec<String> = if rng.below(2) == 0 {
        (0..rng.below(9)).map(|_| random_segment(rng)).collect()
    } else {
        rng.pick(&TEMPLATES).split('/').skip(1).map(str::to_owned).collect()
    };
    for _ in 0..rng.below(4) {
        if segments.is_empty() {
            break;
        }
        let at = rng.below(segments.len());
        match rng.below(5) {
            0 => segments[at] = random_segment(rng),
            1 => segments[at] = segments[at].to_ascii_uppercase(),
            2 => segments.insert(at, random_segment(rng)),
            3 => {
                segments.remove(at);
            }
            _ => {
                let segment = &segments[at];
                let cut = rng.below(segment.len() + 1);
                if segment.is_char_boundary(cut) {
                    let escape = *rng.pick(&["%2F", "%25", "%2E", "%41", "%", "%C3%A9", ":"]);
                    segments[at] = format!("{}{escape}{}", &segment[..cut], &segment[cut..]);
                }
            }
        }
    }
    let mut path = segments.join("/");
    if rng.below(20) != 0 {
        path.insert(0, '/');
    }
    if rng.below(5) == 0 {
        path.push('/');
    }
    path
}

const MODEL_VALUES: [&str; 14] = [
    r#""org/name""#,
    r#""org/name:fastest""#,
    r#""org/name:""#,
    r#""gpt2""#,
    r#""""#,
    r#""a/b/c""#,
    r#"" \u0000 ""#,
    r#""\ud800""#,
    r#""\u00e9""#,
    "1",
    "null",
    "[]",
    r#"{"model":"x"}"#,
    r#""org/na..me""#,
];

pub(crate) fn random_body(rng: &mut Rng) -> Vec<u8> {
    match rng.below(6) {
        0 => (0..rng.below(64)).map(|_| (rng.next_u64() & 0xff) as u8).collect(),
        1 => {
            let depth = rng.below(300);
            format!(r#"{{"model":"a/b","x":{}{}}}"#, "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }
        2 => {
            let json = format!(r#"{{"messages":[],"model":{}}}"#, rng.pick(&MODEL_VALUES));
            let cut = rng.below(json.len() + 1);
            json.as_bytes()[..cut].to_vec()
        }
        _ => {
            let mut json = String::from("{");
            for index in 0..rng.below(4) {
                if index > 0 {
                    json.push(',');
                }
                let key = if rng.below(2) == 0 { "model" } else { "stream" };
                json.push_str(&format!(r#""{key}":{}"#, rng.pick(&MODEL_VALUES)));
            }
            json.push('}');
            json.into_bytes()
        }
    }
}

const ID_CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.";

/// Words that are path keywords on some classifier; a repo named like one makes a path ambiguous (and
/// such paths are refused), so the round-trip properties leave them out.
const KEYWORDS: [&str; 24] = [
    "api",
    "models",
    "datasets",
    "spaces",
    "resolve",
    "raw",
    "blob",
    "revision",
    "tree",
    "refs",
    "commits",
    "commit",
    "paths-info",
    "preupload",
    "xet-read-token",
    "xet-write-token",
    "branch",
    "tag",
    "info",
    "git-upload-pack",
    "git-receive-pack",
    "resolve-cache",
    "pipeline",
    "v1",
];

fn random_repo_part(rng: &mut Rng) -> String {
    let max = if rng.below(10) == 0 { 96 } else { 16 };
    let len = 1 + rng.below(max);
    (0..len).map(|_| *rng.pick(ID_CHARS) as char).collect()
}

/// A valid Hub repo id: `org/name` mostly, a legacy single `name` sometimes.
pub(crate) fn random_repo_id(rng: &mut Rng) -> String {
    loop {
        let id = if rng.below(5) == 0 {
            random_repo_part(rng)
        } else {
            format!("{}/{}", random_repo_part(rng), random_repo_part(rng))
        };
        let keyword = id.split('/').any(|part| KEYWORDS.iter().any(|k| k.eq_ignore_ascii_case(part)));
        if !keyword && check_repo_id(&id).is_ok() {
            return id;
        }
    }
}

/// A valid revision: branch and tag names (with slashes), pull-request refs, commit ids.
pub(crate) fn random_revision(rng: &mut Rng) -> String {
    match rng.below(5) {
        0 => format!("refs/pr/{}", rng.below(1000)),
        1 => (0..40).map(|_| *rng.pick(b"0123456789abcdef") as char).collect(),
        2 => "main".to_string(),
        _ => {
            let components = 1 + rng.below(3);
            let chars = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_+=,;!$&'()";
            (0..components)
                .map(|_| (0..1 + rng.below(12)).map(|_| *rng.pick(chars) as char).collect::<String>())
                .collect::<Vec<_>>()
                .join("/")
        }
    }
}

/// Python's `urllib.parse.quote(text, safe=...)`: unreserved characters and `safe` stay, the rest of the
/// UTF-8 bytes become `%XX` (uppercase), as huggingface_hub spells revisions and file names.
pub(crate) fn quote(text: &str, safe: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) || safe.as_bytes().contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// An id spelled with one escape in it: an encoded character of the id, or an escape that would change
/// its meaning (`%2F`, `%2E%2E`, `%25`, double encoding).
pub(crate) fn smuggle(rng: &mut Rng, id: &str) -> String {
    let at = rng.below(id.len() + 1);
    let (head, tail) = id.split_at(at);
    match rng.below(6) {
        0 if at < id.len() => {
            let byte = id.as_bytes()[at];
            let escape = if rng.below(2) == 0 { format!("%{byte:02X}") } else { format!("%{byte:02x}") };
            format!("{head}{escape}{}", &id[at + 1..])
        }
        _ => {
            let escape = *rng.pick(&["%2F", "%2f", "%2E%2E", "%2e", "%25", "%252F", "%41", "%C3%A9", "%00", "%20"]);
            format!("{head}{escape}{tail}")
        }
    }
}
