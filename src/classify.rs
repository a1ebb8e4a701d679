//! Classification: from the route's API kind and the request, the [`Action`] and the [`ModelRef`] the policy
//! decides on. Pure functions, no I/O.
//!
//! Two rules hold for every kind:
//!
//! - The model returned is exactly the one the upstream will act on for the path (or body) given, or the
//!   request is refused. Repo ids must be spelled literally in paths (an escape there would let the policy
//!   and the upstream read different ids); shapes the upstream could read two ways are refused.
//! - When in doubt, classify more strictly. Path keywords match after percent-decoding and ignoring ASCII
//!   case (some upstreams route that way), and a single trailing '/' is ignored: a request the upstream
//!   would not serve loses nothing by being classified, a request it would serve must not slip through as
//!   a model-less `read`.
//!
//! `read` and `write` without a model cover everything a kind does not recognise (for a hub route: web
//! pages, discussions, settings...); grant them only to callers trusted with whatever the route reaches.

mod generic;
mod hf_inference;
mod hub;
mod openai;
mod path;
#[cfg(test)]
mod testkit;
mod tgi;

use std::fmt;

use http::Method;

use crate::config::ApiKind;

/// What the caller asks the upstream to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Generate: text generation, chat, completions.
    Infer,
    /// Embeddings, reranking, similarity, classification.
    Embed,
    /// List models or repos (no model).
    List,
    /// Describe a model or repo: info, health, tokenizer, repo metadata.
    Metadata,
    /// Fetch repository files.
    Download,
    /// Any other read-only request.
    Read,
    /// Any other request.
    Write,
}

impl Action {
    pub const ALL: [Action; 7] =
        [Action::Infer, Action::Embed, Action::List, Action::Metadata, Action::Download, Action::Read, Action::Write];

    pub fn name(self) -> &'static str {
        match self {
            Action::Infer => "infer",
            Action::Embed => "embed",
            Action::List => "list",
            Action::Metadata => "metadata",
            Action::Download => "download",
            Action::Read => "read",
            Action::Write => "write",
        }
    }

    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|action| action.name() == name)
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The Hub's three kinds of repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RepoType {
    Model,
    Dataset,
    Space,
}

impl RepoType {
    pub fn name(self) -> &'static str {
        match self {
            RepoType::Model => "model",
            RepoType::Dataset => "dataset",
            RepoType::Space => "space",
        }
    }
}

impl fmt::Display for RepoType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The model (or dataset, or space) a request acts on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct ModelRef {
    /// Repo id (`org/name`, or a legacy single-segment id) or, on `openai` routes, the model string as sent.
    pub id: String,
    /// Git revision, percent-decoded (`refs/pr/1`).
    pub revision: Option<String>,
    /// Router provider or policy suffix (`cerebras`, `fastest`).
    pub provider: Option<String>,
    pub repo_type: RepoType,
}

impl ModelRef {
    fn model(id: impl Into<String>) -> ModelRef {
        ModelRef { id: id.into(), revision: None, provider: None, repo_type: RepoType::Model }
    }
}

/// What the policy engine decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Classified {
    pub action: Action,
    pub model: Option<ModelRef>,
}

impl Classified {
    fn bare(action: Action) -> Classified {
        Classified { action, model: None }
    }

    fn with(action: Action, model: ModelRef) -> Classified {
        Classified { action, model: Some(model) }
    }
}

/// What the classifier sees. `path` is relative to the route prefix (the route's prefix already removed,
/// always starting with '/'), still percent-encoded, without the query. It has already passed hfgate's path
/// normalization (no '..', '.', '//', control chars, bad escapes); for `hub` routes only, `%2F`/`%2f` may be
/// present.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    /// The route's configured `model`, for single-model endpoints (tgi, tei).
    pub route_model: Option<&'a str>,
}

/// Why a request could not be classified. Each becomes a 400 whose description is the Display text, which
/// quotes at most a short, sanitized piece of the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClassifyError {
    /// The body is not one JSON object (a syntax error, another JSON type, trailing data, not UTF-8).
    #[error("request body is not a JSON object")]
    BodyNotJson,
    /// The body is a JSON object without a top-level `model`.
    #[error("request body has no 'model' field")]
    NoModel,
    /// The body names `model` more than once at the top level. Servers disagree on which one counts (most
    /// take the last, serde-based ones refuse), so hfgate refuses rather than decide on one the upstream
    /// might not use.
    #[error("request body has more than one top-level 'model' field")]
    DuplicateModel,
    /// The body's `model` is a number, an object, null...
    #[error("'model' in the request body is not a string")]
    ModelNotString,
    /// The body's `model` is `""`.
    #[error("'model' in the request body is empty")]
    EmptyModel,
    /// A model or repo id (from the body or the path) that breaks the id rules.
    #[error("invalid model id '{id}': {reason}")]
    BadModelId { id: String, reason: &'static str },
    /// A revision in a hub path that is not a valid git ref name once decoded.
    #[error("invalid revision '{revision}': {reason}")]
    BadRevision { revision: String, reason: &'static str },
    /// `%2F` anywhere but a hub path's revision or the file path after it.
    #[error("path contains an encoded slash (%2F) outside a hub revision or file path")]
    EncodedSlash,
    /// A path whose repo cannot be told for certain: ambiguous or malformed.
    #[error("cannot tell the repository from the path: {0}")]
    BadRepoPath(&'static str),
}

/// Whether the JSON body must be read to classify (openai/router POSTs that name the model in the body).
/// The proxy then reads at most a configured number of bytes and passes them to [`classify`].
pub fn needs_body(api: ApiKind, request: &Request<'_>) -> bool {
    match api {
        ApiKind::OpenAi | ApiKind::Router => openai::needs_body(request),
        ApiKind::Tgi | ApiKind::Tei | ApiKind::HfInference | ApiKind::Hub | ApiKind::Generic => false,
    }
}

/// Classifies a request. `body` is read only when [`needs_body`] says so; there, `None` counts as an
/// empty body.
pub fn classify(api: ApiKind, request: &Request<'_>, body: Option<&[u8]>) -> Result<Classified, ClassifyError> {
    if api != ApiKind::Hub && path::has_encoded_slash(request.path) {
        // Normalization already refuses these; checked again so no parser below ever has to consider them.
        return Err(ClassifyError::EncodedSlash);
    }
    match api {
        ApiKind::OpenAi => openai::classify(openai::Flavor::OpenAi, request, body),
        ApiKind::Router => openai::classify(openai::Flavor::Router, request, body),
        ApiKind::Tgi => Ok(tgi::classify(tgi::Server::Tgi, request)),
        ApiKind::Tei => Ok(tgi::classify(tgi::Server::Tei, request)),
        ApiKind::HfInference => hf_inference::classify(request),
        ApiKind::Hub => hub::classify(request),
        ApiKind::Generic => Ok(generic::classify(request)),
    }
}

/// GET, HEAD and OPTIONS: methods that do not change anything upstream.
fn is_read_method(method: &Method) -> bool {
    *method == Method::GET || *method == Method::HEAD || *method == Method::OPTIONS
}

/// The fallback for requests a kind does not recognise.
fn read_or_write(method: &Method) -> Action {
    if is_read_method(method) { Action::Read } else { Action::Write }
}

#[cfg(test)]
mod tests {
    use super::testkit::{Rng, random_body, random_method, random_path};
    use super::*;

    #[test]
    fn action_names_round_trip() {
        for action in Action::ALL {
            assert_eq!(Action::from_name(action.name()), Some(action));
            assert_eq!(action.to_string(), action.name());
            assert_eq!(serde_json::to_value(action).ok(), Some(serde_json::json!(action.name())));
        }
        assert_eq!(Action::from_name("admin"), None);
        assert_eq!(Action::from_name("Infer"), None);
        let names: Vec<&str> = Action::ALL.iter().map(|a| a.name()).collect();
        assert_eq!(names, ["infer", "embed", "list", "metadata", "download", "read", "write"]);
    }

    #[test]
    fn repo_types_serialize_as_their_names() {
        for repo_type in [RepoType::Model, RepoType::Dataset, RepoType::Space] {
            assert_eq!(serde_json::to_value(repo_type).ok(), Some(serde_json::json!(repo_type.name())));
            assert_eq!(repo_type.to_string(), repo_type.name());
        }
        let model = ModelRef {
            id: "org/name".into(),
            revision: Some("refs/pr/1".into()),
            provider: None,
            repo_type: RepoType::Dataset,
        };
        assert_eq!(
            serde_json::to_value(&model).ok(),
            Some(
                serde_json::json!({"id": "org/name", "revision": "refs/pr/1", "provider": null, "repo_type": "dataset"})
            )
        );
    }

    #[test]
    fn generic_routes_go_by_method() {
        for (method, action) in [
            (Method::GET, Action::Read),
            (Method::HEAD, Action::Read),
            (Method::OPTIONS, Action::Read),
            (Method::POST, Action::Write),
            (Method::PUT, Action::Write),
            (Method::DELETE, Action::Write),
            (Method::PATCH, Action::Write),
        ] {
            let request = Request { method: &method, path: "/v1/chat/completions", route_model: Some("org/name") };
            assert!(!needs_body(ApiKind::Generic, &request));
            assert_eq!(classify(ApiKind::Generic, &request, None), Ok(Classified::bare(action)));
        }
    }

    #[test]
    fn encoded_slashes_are_refused_outside_hub_revisions() {
        for api in ApiKind::ALL {
            for path in ["/models/org%2Fname", "/v1/chat/completions%2F"] {
                let request = Request { method: &Method::POST, path, route_model: None };
                assert_eq!(classify(api, &request, Some(b"{}")), Err(ClassifyError::EncodedSlash), "{}", api.name());
            }
        }
    }

    #[test]
    fn every_error_message_is_safe_to_show() {
        let errors = [
            ClassifyError::BodyNotJson,
            ClassifyError::NoModel,
            ClassifyError::DuplicateModel,
            ClassifyError::ModelNotString,
            ClassifyError::EmptyModel,
            ClassifyError::BadModelId { id: "a".into(), reason: "r" },
            ClassifyError::BadRevision { revision: "a".into(), reason: "r" },
            ClassifyError::EncodedSlash,
            ClassifyError::BadRepoPath("r"),
        ];
        for error in &errors {
            assert_safe_message(&error.to_string());
        }
        assert_eq!(ClassifyError::NoModel.to_string(), "request body has no 'model' field");
    }

    /// Printable ASCII without '"' or '\', and short: the text ends up in JSON and in challenge headers.
    fn assert_safe_message(message: &str) {
        assert!(message.len() <= 220, "{message}");
        assert!(message.bytes().all(|b| (b' '..=b'~').contains(&b) && b != b'"' && b != b'\\'), "{message}");
    }

    /// Property: no input makes `classify` panic, the body is ignored unless `needs_body` says so, and
    /// every refusal is safe to show.
    #[test]
    fn classify_never_panics_and_ignores_unneeded_bodies() {
        let mut rng = Rng::new(0x5eed_0001);
        for _ in 0..6000 {
            let method = random_method(&mut rng);
            let path = random_path(&mut rng);
            let body = random_body(&mut rng);
            for api in ApiKind::ALL {
                let route_model = if rng.below(2) == 0 { Some("org/name") } else { None };
                let request = Request { method: &method, path: &path, route_model };
                let with_body = classify(api, &request, Some(&body));
                if !needs_body(api, &request) {
                    assert_eq!(with_body, classify(api, &request, None), "{} {method} {path:?}", api.name());
                }
                check(with_body);
            }
            // Every body, against the endpoints that read one.
            for api in [ApiKind::OpenAi, ApiKind::Router] {
                let request = Request { method: &Method::POST, path: "/v1/chat/completions", route_model: None };
                check(classify(api, &request, Some(&body)));
            }
        }
    }

    fn check(result: Result<Classified, ClassifyError>) {
        match result {
            Ok(Classified { model: Some(model), .. }) => assert!(!model.id.is_empty()),
            Ok(Classified { model: None, .. }) => {}
            Err(error) => assert_safe_message(&error.to_string()),
        }
    }
}
