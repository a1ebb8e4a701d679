//! `hub` routes: the Hugging Face Hub's file, API and git paths, as huggingface_hub, transformers and git
//! use them.
//!
//! - Files: `/{repo}/{resolve|raw|blob}/{rev}/{file...}` (`/datasets/...`, `/spaces/...` for the other
//!   repo types) and the Hub's own redirect target `/api/resolve-cache/{type}s/{repo}/{commit}/{file...}`
//!   are `download`.
//! - API: `/api/{type}s/{repo}` and its `revision/{rev}`, `tree/{rev}/...`, `commits/{rev}`, `refs`,
//!   `paths-info/{rev}` (a POST that only reads) are `metadata`; `xet-read-token/{rev}` (what a xet client
//!   downloads with) and `resolve/{rev}/...` are `download`; `commit`, `preupload`, `xet-write-token`,
//!   `branch`, `tag` are `write`. Each carries the repo; a read path asked with another method is `write`,
//!   still with the repo. `GET /api/{type}s` is `list`.
//! - Git over HTTP (`/{repo}[.git]/info/refs`, `git-upload-pack`) is `download`; `git-receive-pack` and
//!   LFS batch POSTs (uploads and downloads look alike without the body) are `write`.
//! - Anything else (web pages, discussions, settings, `/api/whoami-v2`...) is `read` or `write` by method,
//!   with no repo.
//!
//! A repo id is `org/name` or a legacy single `name` (`gpt2`): whichever reading makes the rest of the
//! path fit. A path that fits both readings (a repo named like a keyword) is refused, since the Hub could
//! route it either way.
//!
//! Revisions are percent-decoded (`refs%2Fpr%2F1` is `refs/pr/1`). `%2F` is accepted there and in the file
//! path after a revision (huggingface_hub's `list_repo_tree` sends `tree/main/sub%2Fdir`), where it cannot
//! change the repo or the revision; a file path that decodes to an empty, `.` or `..` component is refused.
//! `%2F` anywhere else is refused.

use http::Method;

use super::path::{
    check_encoded_file_segment, has_encoded_slash, is_commit_sha, is_keyword, is_keywords, repo_id_from_segments,
    revision_from_segment, segments,
};
use super::{Action, Classified, ClassifyError, ModelRef, RepoType, Request, is_read_method, read_or_write};

/// What a recognised repo path does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// `metadata` for reads, `write` otherwise.
    Metadata,
    /// `metadata` whatever the method: `paths-info` is a POST that only reads.
    QueryMetadata,
    /// `download` for reads, `write` otherwise.
    Download,
    /// `download` whatever the method: `git-upload-pack` is a POST that only reads.
    Fetch,
    /// `write` whatever the method (`xet-write-token` is a GET that grants uploads).
    Write,
}

impl Access {
    fn action(self, method: &Method) -> Action {
        match self {
            Access::Metadata if is_read_method(method) => Action::Metadata,
            Access::Download if is_read_method(method) => Action::Download,
            Access::QueryMetadata => Action::Metadata,
            Access::Fetch => Action::Download,
            Access::Metadata | Access::Download | Access::Write => Action::Write,
        }
    }
}

/// What follows a verb.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// Nothing.
    Bare,
    /// A revision only.
    Rev,
    /// A revision, then an optional path.
    RevPath,
}

struct Verb {
    keyword: &'static str,
    shape: Shape,
    access: Access,
}

const fn verb(keyword: &'static str, shape: Shape, access: Access) -> Verb {
    Verb { keyword, shape, access }
}

/// After `/api/{type}s/{repo}/`.
const API_VERBS: [Verb; 12] = [
    verb("revision", Shape::Rev, Access::Metadata),
    verb("tree", Shape::RevPath, Access::Metadata),
    verb("commits", Shape::Rev, Access::Metadata),
    verb("refs", Shape::Bare, Access::Metadata),
    verb("paths-info", Shape::Rev, Access::QueryMetadata),
    // Not a route huggingface_hub uses; classified anyway, since serving it would serve file bytes.
    verb("resolve", Shape::RevPath, Access::Download),
    verb("xet-read-token", Shape::RevPath, Access::Download),
    verb("commit", Shape::Rev, Access::Write),
    verb("preupload", Shape::Rev, Access::Write),
    verb("xet-write-token", Shape::RevPath, Access::Write),
    verb("branch", Shape::Rev, Access::Write),
    verb("tag", Shape::Rev, Access::Write),
];

/// After `/{repo}/` (or `/datasets/{repo}/`, `/spaces/{repo}/`): every one serves file bytes.
const FILE_VERBS: [Verb; 3] = [
    verb("resolve", Shape::RevPath, Access::Download),
    verb("raw", Shape::RevPath, Access::Download),
    verb("blob", Shape::RevPath, Access::Download),
];

/// A recognised rest of the path after the repo id.
#[derive(Debug, Clone, Copy)]
struct Tail {
    access: Access,
    /// Index of the revision segment within the tail.
    revision: Option<usize>,
    /// Index within the tail where the file path (after the revision) starts.
    file: Option<usize>,
    /// A git protocol path: the repo may be spelled `{name}.git`.
    git: bool,
}

fn verb_tail(verbs: &[Verb], tail: &[&str]) -> Option<Tail> {
    let (first, rest) = tail.split_first()?;
    let verb = verbs.iter().find(|verb| is_keyword(first, verb.keyword))?;
    let fits = match verb.shape {
        Shape::Bare => rest.is_empty(),
        Shape::Rev => rest.len() == 1,
        Shape::RevPath => !rest.is_empty(),
    };
    let revision = (verb.shape != Shape::Bare).then_some(1);
    let file = (verb.shape == Shape::RevPath).then_some(2);
    fits.then_some(Tail { access: verb.access, revision, file, git: false })
}

fn api_tail(tail: &[&str]) -> Option<Tail> {
    if tail.is_empty() {
        return Some(Tail { access: Access::Metadata, revision: None, file: None, git: false });
    }
    verb_tail(&API_VERBS, tail)
}

fn web_tail(tail: &[&str]) -> Option<Tail> {
    verb_tail(&FILE_VERBS, tail).or_else(|| git_tail(tail))
}

/// Git's smart HTTP protocol, which the Hub serves for clones of `/{repo}` and `/{repo}.git`.
fn git_tail(tail: &[&str]) -> Option<Tail> {
    let access = if is_keywords(tail, &["info", "refs"]) {
        Access::Download
    } else if is_keywords(tail, &["git-upload-pack"]) {
        Access::Fetch
    } else if is_keywords(tail, &["git-receive-pack"]) {
        Access::Write
    } else if tail.len() >= 2 && is_keyword(tail[0], "info") && is_keyword(tail[1], "lfs") {
        Access::Download
    } else {
        return None;
    };
    Some(Tail { access, revision: None, file: None, git: true })
}

fn collection(raw: &str) -> Option<RepoType> {
    if is_keyword(raw, "models") {
        Some(RepoType::Model)
    } else if is_keyword(raw, "datasets") {
        Some(RepoType::Dataset)
    } else if is_keyword(raw, "spaces") {
        Some(RepoType::Space)
    } else {
        None
    }
}

/// What the path is about.
enum Found<'s> {
    Unrecognized,
    /// `/api/{type}s`: a listing or search.
    List,
    Repo {
        repo_type: RepoType,
        /// The id's raw segments (one or two), a `.git` suffix already removed.
        id: Vec<&'s str>,
        access: Access,
        /// Index of the revision segment within the whole path.
        revision: Option<usize>,
        /// Index where the file path after the revision starts, within the whole path.
        file: Option<usize>,
    },
}

const AMBIGUOUS: &str = "the repo id could be one segment or two";
const RESOLVE_CACHE: &str = "expected /api/resolve-cache/{type}s/{repo}/{commit sha}/{file}";

fn locate<'s>(segments: &[&'s str]) -> Result<Found<'s>, ClassifyError> {
    let Some((first, rest)) = segments.split_first() else {
        return Ok(Found::Unrecognized);
    };
    if is_keyword(first, "api") {
        let Some((second, rest)) = rest.split_first() else {
            return Ok(Found::Unrecognized);
        };
        if is_keyword(second, "resolve-cache") {
            return resolve_cache(rest, 3);
        }
        return match collection(second) {
            Some(_) if rest.is_empty() => Ok(Found::List),
            Some(repo_type) => split(repo_type, rest, 2, api_tail),
            None => Ok(Found::Unrecognized),
        };
    }
    match collection(first) {
        // Models have no prefix: `/models/...` is a web page, not a model repo.
        Some(repo_type @ (RepoType::Dataset | RepoType::Space)) => split(repo_type, rest, 1, web_tail),
        _ => split(RepoType::Model, segments, 0, web_tail),
    }
}

/// Reads `{repo}/{tail...}` both ways, with a one-segment and a two-segment id; `offset` is where `rest`
/// starts in the whole path.
fn split<'s>(
    repo_type: RepoType,
    rest: &[&'s str],
    offset: usize,
    grammar: fn(&[&str]) -> Option<Tail>,
) -> Result<Found<'s>, ClassifyError> {
    let one = rest.get(1..).and_then(grammar).map(|tail| (1, tail));
    let two = rest.get(2..).and_then(grammar).map(|tail| (2, tail));
    let (parts, tail) = match (one, two) {
        (Some(_), Some(_)) => return Err(ClassifyError::BadRepoPath(AMBIGUOUS)),
        (Some(found), None) | (None, Some(found)) => found,
        (None, None) => return Ok(Found::Unrecognized),
    };
    let mut id = rest[..parts].to_vec();
    if tail.git
        && let Some(last) = id.last_mut()
        && let Some(name) = strip_git_suffix(last)
    {
        *last = name;
    }
    let at = |index: usize| offset + parts + index;
    Ok(Found::Repo { repo_type, id, access: tail.access, revision: tail.revision.map(at), file: tail.file.map(at) })
}

fn strip_git_suffix(raw: &str) -> Option<&str> {
    let cut = raw.len().checked_sub(4)?;
    let (name, suffix) = (raw.get(..cut)?, raw.get(cut..)?);
    suffix.eq_ignore_ascii_case(".git").then_some(name)
}

/// `/api/resolve-cache/{type}s/{repo}/{commit}/{file...}`, where the Hub redirects `resolve` requests.
/// The Hub always puts a full commit id there, which is what tells a legacy id from `org/name`.
fn resolve_cache<'s>(rest: &[&'s str], offset: usize) -> Result<Found<'s>, ClassifyError> {
    let Some((repo_type, rest)) = rest.split_first().and_then(|(kind, rest)| Some((collection(kind)?, rest))) else {
        return Err(ClassifyError::BadRepoPath(RESOLVE_CACHE));
    };
    let one = rest.len() >= 3 && is_commit_sha(rest[1]);
    let two = rest.len() >= 4 && is_commit_sha(rest[2]);
    let parts = match (one, two) {
        (true, true) => return Err(ClassifyError::BadRepoPath(AMBIGUOUS)),
        (true, false) => 1,
        (false, true) => 2,
        (false, false) => return Err(ClassifyError::BadRepoPath(RESOLVE_CACHE)),
    };
    let id = rest[..parts].to_vec();
    let revision = Some(offset + parts);
    Ok(Found::Repo { repo_type, id, access: Access::Download, revision, file: Some(offset + parts + 1) })
}

pub(super) fn classify(request: &Request<'_>) -> Result<Classified, ClassifyError> {
    let segments = segments(request.path);
    let found = locate(&segments)?;
    let (revision_at, file_from) = match &found {
        Found::Repo { revision, file, .. } => (*revision, *file),
        Found::Unrecognized | Found::List => (None, None),
    };
    // The Hub reads a decoded `%2F` as part of the revision, or of the file path after it; anywhere else
    // something on the way could split the segment in two and read another repo.
    for (at, segment) in segments.iter().enumerate() {
        if Some(at) == revision_at || !has_encoded_slash(segment) {
            continue;
        }
        match file_from {
            Some(from) if at >= from => check_encoded_file_segment(segment)?,
            _ => return Err(ClassifyError::EncodedSlash),
        }
    }
    match found {
        Found::Unrecognized => Ok(Classified::bare(read_or_write(request.method))),
        Found::List => {
            let action = if is_read_method(request.method) { Action::List } else { Action::Write };
            Ok(Classified::bare(action))
        }
        Found::Repo { repo_type, id, access, revision, .. } => {
            let id = repo_id_from_segments(&id)?;
            let revision =
                revision.and_then(|at| segments.get(at)).map(|raw| revision_from_segment(raw)).transpose()?;
            let model = ModelRef { id, revision, provider: None, repo_type };
            Ok(Classified::with(access.action(request.method), model))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::path::percent_decode;
    use crate::classify::testkit::{Rng, quote, random_repo_id, random_revision, smuggle};
    use crate::classify::{classify as classify_request, needs_body};
    use crate::config::ApiKind;

    const SHA: &str = "6cee5e81ee83917806bbde320786a8fb61efebee";

    fn run(method: Method, path: &str) -> Result<Classified, ClassifyError> {
        let request = Request { method: &method, path, route_model: Some("configured/model") };
        assert!(!needs_body(ApiKind::Hub, &request));
        classify_request(ApiKind::Hub, &request, Some(b"{\"model\":\"other/model\"}"))
    }

    fn repo(
        action: Action,
        repo_type: RepoType,
        id: &str,
        revision: Option<&str>,
    ) -> Result<Classified, ClassifyError> {
        let model = ModelRef { id: id.into(), revision: revision.map(str::to_owned), provider: None, repo_type };
        Ok(Classified::with(action, model))
    }

    fn model(action: Action, id: &str, revision: Option<&str>) -> Result<Classified, ClassifyError> {
        repo(action, RepoType::Model, id, revision)
    }

    #[test]
    fn hf_hub_download_shapes() {
        // hf_hub_download sends HEAD for the metadata, then GET; HEAD counts like GET.
        for method in [Method::HEAD, Method::GET] {
            let run = |path: &str| run(method.clone(), path);
            assert_eq!(
                run("/meta-llama/Llama-3.1-8B/resolve/main/config.json"),
                model(Action::Download, "meta-llama/Llama-3.1-8B", Some("main"))
            );
            assert_eq!(
                run("/org/name/resolve/refs%2Fpr%2F1/model.safetensors"),
                model(Action::Download, "org/name", Some("refs/pr/1"))
            );
            assert_eq!(
                run("/org/name/resolve/main/sub%20dir/tokenizer%20config.json"),
                model(Action::Download, "org/name", Some("main"))
            );
            assert_eq!(run("/gpt2/resolve/main/config.json"), model(Action::Download, "gpt2", Some("main")));
            assert_eq!(
                run("/datasets/org/name/resolve/main/data/train-00000-of-00001.parquet"),
                repo(Action::Download, RepoType::Dataset, "org/name", Some("main"))
            );
            assert_eq!(
                run("/datasets/squad/resolve/refs%2Fconvert%2Fparquet/plain_text/train/0000.parquet"),
                repo(Action::Download, RepoType::Dataset, "squad", Some("refs/convert/parquet"))
            );
            assert_eq!(
                run("/spaces/org/name/resolve/main/app.py"),
                repo(Action::Download, RepoType::Space, "org/name", Some("main"))
            );
            // The Hub answers small files with a relative redirect the client follows through hfgate.
            assert_eq!(
                run(&format!("/api/resolve-cache/models/org/name/{SHA}/config.json")),
                model(Action::Download, "org/name", Some(SHA))
            );
            assert_eq!(
                run(&format!("/api/resolve-cache/models/gpt2/{SHA}/onnx/model.onnx")),
                model(Action::Download, "gpt2", Some(SHA))
            );
            assert_eq!(
                run(&format!("/api/resolve-cache/datasets/org/name/{SHA}/data/a.parquet")),
                repo(Action::Download, RepoType::Dataset, "org/name", Some(SHA))
            );
            // With hf_xet, the download token comes from the Hub's refresh route.
            assert_eq!(
                run(&format!("/api/models/org/name/xet-read-token/{SHA}")),
                model(Action::Download, "org/name", Some(SHA))
            );
            for verb in ["raw", "blob", "RESOLVE", "%72esolve"] {
                assert_eq!(
                    run(&format!("/org/name/{verb}/main/README.md")),
                    model(Action::Download, "org/name", Some("main")),
                    "{verb}"
                );
            }
        }
    }

    #[test]
    fn api_metadata_shapes() {
        for method in [Method::GET, Method::HEAD] {
            let run = |path: &str| run(method.clone(), path);
            // model_info / repo_info, with and without a revision; snapshot_download starts here.
            assert_eq!(run("/api/models/org/name"), model(Action::Metadata, "org/name", None));
            assert_eq!(run("/api/models/org/name/revision/main"), model(Action::Metadata, "org/name", Some("main")));
            assert_eq!(
                run("/api/models/org/name/revision/refs%2Fpr%2F1"),
                model(Action::Metadata, "org/name", Some("refs/pr/1"))
            );
            assert_eq!(run("/api/models/gpt2/revision/main"), model(Action::Metadata, "gpt2", Some("main")));
            assert_eq!(run("/api/models/gpt2"), model(Action::Metadata, "gpt2", None));
            assert_eq!(
                run("/api/datasets/org/name/revision/main"),
                repo(Action::Metadata, RepoType::Dataset, "org/name", Some("main"))
            );
            assert_eq!(run("/api/spaces/org/name"), repo(Action::Metadata, RepoType::Space, "org/name", None));
            // list_repo_tree / list_repo_files, list_repo_commits, list_repo_refs.
            assert_eq!(run("/api/models/org/name/tree/main"), model(Action::Metadata, "org/name", Some("main")));
            assert_eq!(
                run("/api/models/org/name/tree/refs%2Fpr%2F2/sub/dir"),
                model(Action::Metadata, "org/name", Some("refs/pr/2"))
            );
            assert_eq!(run("/api/models/org/name/commits/main"), model(Action::Metadata, "org/name", Some("main")));
            assert_eq!(run("/api/models/org/name/refs"), model(Action::Metadata, "org/name", None));
            // list_models / list_datasets / list_spaces.
            assert_eq!(run("/api/models"), Ok(Classified::bare(Action::List)));
            assert_eq!(run("/api/datasets/"), Ok(Classified::bare(Action::List)));
            assert_eq!(run("/API/Spaces"), Ok(Classified::bare(Action::List)));
        }
        // get_paths_info is a POST that only reads.
        assert_eq!(
            run(Method::POST, "/api/models/org/name/paths-info/main"),
            model(Action::Metadata, "org/name", Some("main"))
        );
    }

    #[test]
    fn writes_carry_the_repo() {
        // create_commit / preupload_lfs_files / create_branch / create_tag / xet uploads.
        for (method, path, revision) in [
            (Method::POST, "/api/models/org/name/commit/main", Some("main")),
            (Method::POST, "/api/models/org/name/commit/refs%2Fpr%2F3", Some("refs/pr/3")),
            (Method::POST, "/api/models/org/name/preupload/main", Some("main")),
            (Method::POST, "/api/models/org/name/branch/dev", Some("dev")),
            (Method::DELETE, "/api/models/org/name/branch/dev", Some("dev")),
            (Method::POST, "/api/models/org/name/tag/main", Some("main")),
            (Method::GET, "/api/models/org/name/xet-write-token/main", Some("main")),
            (Method::PUT, "/api/models/org/name/revision/main", Some("main")),
            (Method::DELETE, "/api/models/org/name", None),
            (Method::POST, "/org/name/resolve/main/config.json", Some("main")),
            (Method::POST, "/api/models/org/name/xet-read-token/main", Some("main")),
        ] {
            assert_eq!(run(method.clone(), path), model(Action::Write, "org/name", revision), "{method} {path}");
        }
        assert_eq!(run(Method::POST, "/api/models"), Ok(Classified::bare(Action::Write)));
    }

    #[test]
    fn git_over_http() {
        for (method, path, action) in [
            (Method::GET, "/org/name.git/info/refs", Action::Download),
            (Method::GET, "/org/name/info/refs", Action::Download),
            (Method::POST, "/org/name.git/git-upload-pack", Action::Download),
            (Method::POST, "/org/name/git-upload-pack", Action::Download),
            (Method::POST, "/org/name.git/git-receive-pack", Action::Write),
            (Method::POST, "/org/name.git/info/lfs/objects/batch", Action::Write),
            (Method::GET, "/org/name.GIT/info/lfs/objects/abc", Action::Download),
            (Method::GET, "/gpt2.git/info/refs", Action::Download),
        ] {
            let id = if path.starts_with("/gpt2") { "gpt2" } else { "org/name" };
            assert_eq!(run(method.clone(), path), model(action, id, None), "{method} {path}");
        }
        assert_eq!(
            run(Method::GET, "/datasets/org/name.git/info/refs"),
            repo(Action::Download, RepoType::Dataset, "org/name", None)
        );
    }

    #[test]
    fn other_paths_go_by_method_without_a_repo() {
        for (method, path, action) in [
            (Method::GET, "/", Action::Read),
            (Method::GET, "/org/name", Action::Read),
            (Method::GET, "/org/name/discussions/1", Action::Read),
            (Method::GET, "/api/whoami-v2", Action::Read),
            (Method::GET, "/api/models/org/name/discussions", Action::Read),
            (Method::POST, "/api/repos/create", Action::Write),
            (Method::PUT, "/api/models/org/name/settings", Action::Write),
            (Method::GET, "/models/org/name/resolve/main/x", Action::Read),
            (Method::GET, "/org/name/resolve", Action::Read),
            (Method::GET, "/datasets", Action::Read),
            (Method::GET, "/api", Action::Read),
            (Method::OPTIONS, "/api/unknown/org/name", Action::Read),
        ] {
            assert_eq!(run(method.clone(), path), Ok(Classified::bare(action)), "{method} {path}");
        }
    }

    #[test]
    fn encoded_slashes_only_in_revisions_and_file_paths() {
        for path in [
            "/org%2Fname/resolve/main/config.json",
            "/org/name%2Fx/resolve/main/config.json",
            "/org/name/resolve%2Fmain/config.json",
            "/api/models/org%2Fname",
            "/api/models/org/name/discussions%2F1",
            "/api/models/org/name/tree%2Fmain",
            "/some%2Fpage",
            "/api%2Fmodels",
        ] {
            assert_eq!(run(Method::GET, path), Err(ClassifyError::EncodedSlash), "{path}");
        }
        // list_repo_tree(path_in_repo="sub/dir") quotes the path with safe="".
        assert_eq!(
            run(Method::GET, "/api/models/org/name/tree/refs%2Fpr%2F1/sub%2fdir%2Fdeeper"),
            model(Action::Metadata, "org/name", Some("refs/pr/1"))
        );
        assert_eq!(
            run(Method::GET, "/org/name/resolve/main/sub%2Fconfig.json"),
            model(Action::Download, "org/name", Some("main"))
        );
        assert_eq!(
            run(Method::GET, &format!("/api/resolve-cache/models/org/name/{SHA}/a%2Fb")),
            model(Action::Download, "org/name", Some(SHA))
        );
        for path in [
            "/api/models/org/name/tree/main/..%2F..%2Fother",
            "/api/models/org/name/tree/main/a%2F.%2Fb",
            "/api/models/org/name/tree/main/%2Fetc",
            "/org/name/resolve/main/a%2F%2Fb",
            "/org/name/resolve/main/a/b%2F",
        ] {
            assert_eq!(
                run(Method::GET, path),
                Err(ClassifyError::BadRepoPath("a file path has an empty, '.' or '..' component once decoded")),
                "{path}"
            );
        }
    }

    #[test]
    fn ambiguous_and_malformed_repo_paths() {
        for path in [
            // `a` at revision `resolve`, or `a/resolve` at revision `main`?
            "/a/resolve/resolve/main/f",
            "/a/raw/blob/main/f",
            "/api/models/a/tree/tree/main",
            "/api/models/a/refs",
            // A repo whose name is a commit id.
            &format!("/api/resolve-cache/models/a/{SHA}/{SHA}/f"),
        ] {
            assert_eq!(run(Method::GET, path), Err(ClassifyError::BadRepoPath(AMBIGUOUS)), "{path}");
        }
        for path in [
            "/api/resolve-cache/models/org/name/main/config.json",
            "/api/resolve-cache/models/org/name",
            "/api/resolve-cache/things/org/name/6cee5e81ee83917806bbde320786a8fb61efebee/f",
            "/api/resolve-cache",
        ] {
            assert_eq!(run(Method::GET, path), Err(ClassifyError::BadRepoPath(RESOLVE_CACHE)), "{path}");
        }
        assert_eq!(
            ClassifyError::BadRepoPath(AMBIGUOUS).to_string(),
            "cannot tell the repository from the path: the repo id could be one segment or two"
        );
    }

    #[test]
    fn bad_ids_and_revisions() {
        for (path, id, reason) in [
            ("/org/na%6De/resolve/main/f", "org/na%6De", "percent-encoded characters are not allowed in a repo id"),
            ("/api/models/%6Frg/name", "%6Frg/name", "percent-encoded characters are not allowed in a repo id"),
            ("/org/na..me/resolve/main/f", "org/na..me", "'--' and '..' are not allowed"),
            ("/org/name.git/resolve/main/f", "org/name.git", "a repo name cannot end with '.git'"),
            ("/org/-name/resolve/main/f", "org/-name", "org and name cannot start or end with '-' or '.'"),
            (
                "/org/n%C3%A4me/resolve/main/f",
                "org/n%C3%A4me",
                "percent-encoded characters are not allowed in a repo id",
            ),
            ("/org/n\u{e4}me/resolve/main/f", "org/n?me", "only ASCII letters, digits, '-', '_' and '.' are allowed"),
        ] {
            assert_eq!(run(Method::GET, path), Err(ClassifyError::BadModelId { id: id.into(), reason }), "{path}");
        }
        for (path, revision) in [
            ("/org/name/resolve/a..b/f", "a..b"),
            ("/org/name/resolve/refs%252Fpr%252F1/f", "refs%2Fpr%2F1"),
            ("/api/models/org/name/revision/%2Fmain", "/main"),
            ("/api/models/org/name/revision/a%20b", "a b"),
        ] {
            assert!(
                matches!(run(Method::GET, path), Err(ClassifyError::BadRevision { revision: shown, .. }) if shown == revision),
                "{path}"
            );
        }
    }

    const FILES: [&str; 6] = [
        "config.json",
        "model.safetensors",
        "sub dir/tokenizer.json",
        "data/train-0.parquet",
        "\u{e9}t\u{e9}.txt",
        "a+b=c.txt",
    ];

    /// The paths huggingface_hub builds for a repo, a revision and a file, with their actions.
    fn hub_paths(repo_type: RepoType, id: &str, revision: &str, file: &str) -> Vec<(String, Action)> {
        let rev = quote(revision, "");
        let (file, tree_path) = (quote(file, "/"), quote(file, ""));
        let (prefix, api) = match repo_type {
            RepoType::Model => ("", "models"),
            RepoType::Dataset => ("/datasets", "datasets"),
            RepoType::Space => ("/spaces", "spaces"),
        };
        vec![
            (format!("{prefix}/{id}/resolve/{rev}/{file}"), Action::Download),
            (format!("/api/{api}/{id}/revision/{rev}"), Action::Metadata),
            (format!("/api/{api}/{id}/tree/{rev}/{tree_path}"), Action::Metadata),
            (format!("/api/{api}/{id}/xet-read-token/{rev}"), Action::Download),
        ]
    }

    const TYPES: [RepoType; 3] = [RepoType::Model, RepoType::Dataset, RepoType::Space];

    /// Property: the repo and revision read from the paths huggingface_hub builds are the ones it built
    /// them from.
    #[test]
    fn ids_and_revisions_round_trip() {
        let mut rng = Rng::new(0x5eed_0004);
        for _ in 0..2000 {
            let repo_type = *rng.pick(&TYPES);
            let id = random_repo_id(&mut rng);
            let revision = random_revision(&mut rng);
            let file = *rng.pick(&FILES);
            for (path, action) in hub_paths(repo_type, &id, &revision, file) {
                assert_eq!(run(Method::GET, &path), repo(action, repo_type, &id, Some(&revision)), "{path}");
            }
            let sha: String = (0..40).map(|_| *rng.pick(b"0123456789abcdef") as char).collect();
            let cache = format!("/api/resolve-cache/{}s/{id}/{sha}/{}", repo_type.name(), quote(file, "/"));
            assert_eq!(run(Method::GET, &cache), repo(Action::Download, repo_type, &id, Some(&sha)), "{cache}");
        }
    }

    /// Property: an escape in the id never makes hfgate read another repo than a standard percent-decoder
    /// would: the request is refused, or classified exactly like the decoded spelling (which, for a valid
    /// id, is that id); the revision is always the standard decoding of its segment.
    #[test]
    fn escaped_ids_are_not_smuggled() {
        let mut rng = Rng::new(0x5eed_0005);
        let mut refused = 0;
        for _ in 0..2000 {
            let repo_type = *rng.pick(&TYPES);
            let id = random_repo_id(&mut rng);
            let raw = smuggle(&mut rng, &id);
            let decoded = String::from_utf8(percent_decode(&raw)).ok();
            let revision = random_revision(&mut rng);
            let file = *rng.pick(&FILES);
            let decoded_paths = decoded.as_deref().map(|decoded| hub_paths(repo_type, decoded, &revision, file));
            for (index, (path, _)) in hub_paths(repo_type, &raw, &revision, file).into_iter().enumerate() {
                let Ok(classified) = run(Method::GET, &path) else {
                    refused += 1;
                    continue;
                };
                let decoded_path = decoded_paths.as_ref().and_then(|paths| paths.get(index));
                let Some((decoded_path, _)) = decoded_path else {
                    panic!("{path}: accepted, but its id is not UTF-8 once decoded");
                };
                assert_eq!(Ok(classified.clone()), run(Method::GET, decoded_path), "{path} vs {decoded_path}");
                if let Some(model) = classified.model {
                    assert_eq!(model.revision, Some(revision.clone()), "{path}");
                }
            }
        }
        assert!(refused > 0);
    }
}
