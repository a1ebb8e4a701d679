//! A mock of the Hugging Face Hub's read API, enough for the real `huggingface_hub` client
//! (`hf_hub_download`, `model_info`, `dataset_info`, `snapshot_download`) with `HF_ENDPOINT` pointed at a
//! hub route of hfgate. Two fixed repositories, each at `main` and `refs/pr/1`: the model `acme/tiny`
//! (`config.json`, and `model.safetensors` stored as an LFS file) and the dataset `acme/data` (`data.csv`).
//!
//! - `GET /api/{models,datasets}/{org}/{name}[/revision/{rev}]`: repo info (`id`, `sha`, `siblings`, ...).
//! - `GET /api/{models,datasets}/{org}/{name}/tree/{rev}[/{path}]`: the file listing `snapshot_download` reads.
//! - `GET`/`HEAD /{org}/{name}/resolve/{rev}/{file}` and `/datasets/{org}/{name}/resolve/{rev}/{file}`: the
//!   file, with the headers the client keys its cache on: `X-Repo-Commit`, `ETag` (the git blob id, or the
//!   sha256 of an LFS file), `Content-Length`, and for LFS files `X-Linked-Etag` and `X-Linked-Size`.
//!
//! A revision is a branch or ref name (percent-encoded in the path: `refs%2Fpr%2F1`) or a full commit id.
//! Failures carry the Hub's `X-Error-Code` (`RepoNotFound`, `RevisionNotFound`, `EntryNotFound`), which the
//! client turns into its typed errors.

use aws_lc_rs::digest;
use axum::Router;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

const LAST_MODIFIED: &str = "2026-01-15T09:30:00.000Z";
const CREATED_AT: &str = "2026-01-01T08:00:00.000Z";
/// Size of a git LFS pointer file, as the Hub reports it.
const LFS_POINTER_SIZE: usize = 134;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Model,
    Dataset,
}

#[derive(Debug)]
struct MockFile {
    path: &'static str,
    content: &'static [u8],
    /// Stored with git LFS: the Hub then names the file by its sha256.
    lfs: bool,
}

#[derive(Debug)]
struct MockRevision {
    name: &'static str,
    commit: &'static str,
    files: &'static [MockFile],
}

#[derive(Debug)]
struct MockRepo {
    kind: Kind,
    id: &'static str,
    revisions: &'static [MockRevision],
}

impl MockRepo {
    fn revision(&self, wanted: &str) -> Option<&'static MockRevision> {
        self.revisions.iter().find(|r| r.name == wanted || r.commit == wanted)
    }
}

const SAFETENSORS: &[u8] = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ";

const REPOS: &[MockRepo] = &[
    MockRepo {
        kind: Kind::Model,
        id: "acme/tiny",
        revisions: &[
            MockRevision {
                name: "main",
                commit: "2ab5721abb8dcca93edaf0835ac378d9dbbd9e6a",
                files: &[
                    MockFile {
                        path: "config.json",
                        content: b"{\"model_type\": \"tiny\", \"hidden_size\": 8}\n",
                        lfs: false,
                    },
                    MockFile { path: "model.safetensors", content: SAFETENSORS, lfs: true },
                ],
            },
            MockRevision {
                name: "refs/pr/1",
                commit: "b4ccdfd27d2a7990333db76dc3016eba2bcbab85",
                files: &[
                    MockFile {
                        path: "config.json",
                        content: b"{\"model_type\": \"tiny\", \"hidden_size\": 16}\n",
                        lfs: false,
                    },
                    MockFile { path: "model.safetensors", content: SAFETENSORS, lfs: true },
                ],
            },
        ],
    },
    MockRepo {
        kind: Kind::Dataset,
        id: "acme/data",
        revisions: &[
            MockRevision {
                name: "main",
                commit: "7298d2e1216789ae3cbb0ad705e137b6e5016097",
                files: &[MockFile { path: "data.csv", content: b"text,label\nhello,1\nbye,0\n", lfs: false }],
            },
            MockRevision {
                name: "refs/pr/1",
                commit: "a50b00ab2c574e652dc0bc87577b76e60c0c5180",
                files: &[MockFile { path: "data.csv", content: b"text,label\nhello,1\nbye,0\nagain,1\n", lfs: false }],
            },
        ],
    },
];

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The git blob id of a file's content, as `git hash-object` computes it.
fn git_blob_id(content: &[u8]) -> String {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(format!("blob {}\0", content.len()).as_bytes());
    ctx.update(content);
    hex(ctx.finish().as_ref())
}

fn sha256(content: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, content).as_ref())
}

impl MockFile {
    /// What the Hub uses as the file's ETag: the sha256 for LFS files, else the git blob id.
    fn etag(&self) -> String {
        if self.lfs { sha256(self.content) } else { git_blob_id(self.content) }
    }

    fn lfs_json(&self) -> Option<(String, Value)> {
        self.lfs.then(|| (sha256(self.content), json!(self.content.len())))
    }
}

#[derive(Debug, Deserialize)]
struct RepoPath {
    org: String,
    name: String,
    rev: Option<String>,
    path: Option<String>,
}

/// The mock Hub's routes. Stateless, so they merge into a router of any state.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let info_model = get(|Path(p): Path<RepoPath>| async move { info(Kind::Model, p) });
    let info_dataset = get(|Path(p): Path<RepoPath>| async move { info(Kind::Dataset, p) });
    let tree_model = get(|Path(p): Path<RepoPath>| async move { tree(Kind::Model, p) });
    let tree_dataset = get(|Path(p): Path<RepoPath>| async move { tree(Kind::Dataset, p) });
    Router::new()
        .route("/api/models/{org}/{name}", info_model.clone())
        .route("/api/models/{org}/{name}/revision/{rev}", info_model)
        .route("/api/datasets/{org}/{name}", info_dataset.clone())
        .route("/api/datasets/{org}/{name}/revision/{rev}", info_dataset)
        .route("/api/models/{org}/{name}/tree/{rev}", tree_model.clone())
        .route("/api/models/{org}/{name}/tree/{rev}/{*path}", tree_model)
        .route("/api/datasets/{org}/{name}/tree/{rev}", tree_dataset.clone())
        .route("/api/datasets/{org}/{name}/tree/{rev}/{*path}", tree_dataset)
        .route(
            "/{org}/{name}/resolve/{rev}/{*path}",
            get(|Path(p): Path<RepoPath>| async move { resolve(Kind::Model, p) }),
        )
        .route(
            "/datasets/{org}/{name}/resolve/{rev}/{*path}",
            get(|Path(p): Path<RepoPath>| async move { resolve(Kind::Dataset, p) }),
        )
}

/// A failure the way the Hub reports it: the status, `X-Error-Code` and `X-Error-Message`, and a JSON body.
#[derive(Debug)]
struct HubError {
    code: &'static str,
    message: String,
    /// The resolved commit, when the revision exists (the client caches a missing file per commit).
    commit: Option<&'static str>,
}

impl IntoResponse for HubError {
    fn into_response(self) -> Response {
        let mut headers = HeaderMap::new();
        headers.insert(HeaderName::from_static("x-error-code"), HeaderValue::from_static(self.code));
        if let Ok(value) = HeaderValue::from_str(&self.message) {
            headers.insert(HeaderName::from_static("x-error-message"), value);
        }
        if let Some(commit) = self.commit {
            headers.insert(HeaderName::from_static("x-repo-commit"), HeaderValue::from_static(commit));
        }
        (StatusCode::NOT_FOUND, headers, axum::Json(json!({"error": self.message}))).into_response()
    }
}

/// The repo and revision a path names.
fn lookup(kind: Kind, p: &RepoPath) -> Result<(&'static MockRepo, &'static MockRevision), HubError> {
    let id = format!("{}/{}", p.org, p.name);
    let Some(repo) = REPOS.iter().find(|r| r.kind == kind && r.id == id) else {
        return Err(HubError { code: "RepoNotFound", message: format!("Repository not found: {id}"), commit: None });
    };
    let wanted = p.rev.as_deref().unwrap_or("main");
    let Some(revision) = repo.revision(wanted) else {
        return Err(HubError { code: "RevisionNotFound", message: format!("Invalid rev id: {wanted}"), commit: None });
    };
    Ok((repo, revision))
}

fn info(kind: Kind, p: RepoPath) -> Result<Response, HubError> {
    let (repo, revision) = lookup(kind, &p)?;
    let siblings: Vec<Value> = revision
        .files
        .iter()
        .map(|f| {
            let mut sibling = json!({"rfilename": f.path, "size": f.content.len(), "blobId": git_blob_id(f.content)});
            if let Some((sha256, size)) = f.lfs_json() {
                sibling["lfs"] = json!({"sha256": sha256, "size": size, "pointerSize": LFS_POINTER_SIZE});
            }
            sibling
        })
        .collect();
    let used_storage: usize = revision.files.iter().map(|f| f.content.len()).sum();
    let mut body = json!({
        "id": repo.id,
        "author": p.org,
        "sha": revision.commit,
        "lastModified": LAST_MODIFIED,
        "createdAt": CREATED_AT,
        "private": false,
        "gated": false,
        "disabled": false,
        "downloads": 0,
        "likes": 0,
        "tags": [],
        "siblings": siblings,
        "usedStorage": used_storage,
    });
    if kind == Kind::Model {
        body["modelId"] = json!(repo.id);
        body["library_name"] = json!("transformers");
        body["pipeline_tag"] = json!("text-generation");
    }
    Ok(axum::Json(body).into_response())
}

fn tree(kind: Kind, p: RepoPath) -> Result<Response, HubError> {
    let (_repo, revision) = lookup(kind, &p)?;
    // Every file of the mock lives at the top level, so a listing under a folder is empty.
    if p.path.as_deref().is_some_and(|path| !path.is_empty()) {
        return Ok(axum::Json(json!([])).into_response());
    }
    let entries: Vec<Value> = revision
        .files
        .iter()
        .map(|f| {
            let mut entry =
                json!({"type": "file", "oid": git_blob_id(f.content), "size": f.content.len(), "path": f.path});
            if let Some((sha256, size)) = f.lfs_json() {
                entry["lfs"] = json!({"oid": sha256, "size": size, "pointerSize": LFS_POINTER_SIZE});
            }
            entry
        })
        .collect();
    Ok(axum::Json(json!(entries)).into_response())
}

fn resolve(kind: Kind, p: RepoPath) -> Result<Response, HubError> {
    let (_repo, revision) = lookup(kind, &p)?;
    let wanted = p.path.as_deref().unwrap_or_default();
    let Some(file) = revision.files.iter().find(|f| f.path == wanted) else {
        return Err(HubError {
            code: "EntryNotFound",
            message: format!("{wanted} does not exist on \"{}\"", revision.name),
            commit: Some(revision.commit),
        });
    };
    let etag = file.etag();
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(file.content.len()));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    headers.insert(HeaderName::from_static("x-repo-commit"), HeaderValue::from_static(revision.commit));
    if let Ok(value) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        headers.insert(header::ETAG, value.clone());
        if file.lfs {
            headers.insert(HeaderName::from_static("x-linked-etag"), value);
            headers.insert(HeaderName::from_static("x-linked-size"), HeaderValue::from(file.content.len()));
        }
    }
    Ok((StatusCode::OK, headers, file.content).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One HTTP/1.1 request to the mock on a real socket; the raw response.
    async fn call(method: &str, target: &str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move { axum::serve(listener, router::<()>()).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("{method} {target} HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        stream.read_to_end(&mut out).await.expect("read");
        server.abort();
        String::from_utf8_lossy(&out).to_lowercase()
    }

    #[test]
    fn blob_ids_match_git() {
        // `printf 'hello\n' | git hash-object --stdin`
        assert_eq!(git_blob_id(b"hello\n"), "ce013625030ba8dba906f756967f9e9ca394464a");
    }

    #[tokio::test]
    async fn model_info_at_an_encoded_pr_revision() {
        let response = call("GET", "/api/models/acme/tiny/revision/refs%2Fpr%2F1").await;
        assert!(response.starts_with("http/1.1 200"), "{response}");
        assert!(response.contains("\"sha\":\"b4ccdfd27d2a7990333db76dc3016eba2bcbab85\""), "{response}");
        assert!(response.contains("\"rfilename\":\"model.safetensors\""), "{response}");
    }

    #[tokio::test]
    async fn head_of_a_file_carries_what_the_client_caches_on() {
        let response = call("HEAD", "/acme/tiny/resolve/main/config.json").await;
        assert!(response.starts_with("http/1.1 200"), "{response}");
        assert!(response.contains("x-repo-commit: 2ab5721abb8dcca93edaf0835ac378d9dbbd9e6a"), "{response}");
        assert!(response.contains("etag: \""), "{response}");
        let length = REPOS[0].revisions[0].files[0].content.len();
        assert!(response.contains(&format!("content-length: {length}")), "{response}");
    }

    #[tokio::test]
    async fn dataset_file_and_hub_errors() {
        let response = call("GET", "/datasets/acme/data/resolve/refs%2Fpr%2F1/data.csv").await;
        assert!(response.starts_with("http/1.1 200") && response.ends_with("again,1\n"), "{response}");
        let response = call("GET", "/acme/tiny/resolve/main/missing.bin").await;
        assert!(response.starts_with("http/1.1 404") && response.contains("x-error-code: entrynotfound"), "{response}");
        let response = call("GET", "/api/models/acme/tiny/revision/v9").await;
        assert!(response.contains("x-error-code: revisionnotfound"), "{response}");
        let response = call("GET", "/api/datasets/acme/tiny").await;
        assert!(response.contains("x-error-code: reponotfound"), "{response}");
    }
}
