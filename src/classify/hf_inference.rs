//! `hf-inference` routes: the serverless Inference API shape, where the path names the model:
//! `/models/{repo}`, `/models/{repo}/pipeline/{task}`, `/models/{repo}/v1/chat/completions`.
//!
//! Everything under `/models/` runs a model, so a path there that does not fit these shapes is refused
//! rather than passed as a model-less `write`.

use super::path::{is_keyword, is_keywords, repo_id_from_segments, segments};
use super::{Action, Classified, ClassifyError, ModelRef, Request, is_read_method, read_or_write};

/// Pipelines that compute embeddings rather than generate.
const EMBED_TASKS: [&str; 2] = ["feature-extraction", "sentence-similarity"];

/// What the segments after the repo id ask for, when POSTed.
fn tail_action(tail: &[&str]) -> Option<Action> {
    match tail {
        [] => Some(Action::Infer),
        [pipeline, task] if is_keyword(pipeline, "pipeline") => {
            if EMBED_TASKS.iter().any(|embed| is_keyword(task, embed)) {
                Some(Action::Embed)
            } else {
                Some(Action::Infer)
            }
        }
        _ if is_keywords(tail, &["v1", "chat", "completions"]) || is_keywords(tail, &["v1", "completions"]) => {
            Some(Action::Infer)
        }
        _ if is_keywords(tail, &["v1", "embeddings"]) => Some(Action::Embed),
        _ => None,
    }
}

pub(super) fn classify(request: &Request<'_>) -> Result<Classified, ClassifyError> {
    let segments = segments(request.path);
    let rest = match segments.split_first() {
        Some((first, rest)) if is_keyword(first, "models") && !rest.is_empty() => rest,
        _ => return Ok(Classified::bare(read_or_write(request.method))),
    };
    // The repo id is `org/name` or a legacy single `name`; the tails above never let both readings fit.
    let one = rest.get(1..).and_then(tail_action).map(|action| (1, action));
    let two = rest.get(2..).and_then(tail_action).map(|action| (2, action));
    let (parts, action) = match (one, two) {
        (Some(_), Some(_)) => return Err(ClassifyError::BadRepoPath("the repo id could be one segment or two")),
        (Some(found), None) | (None, Some(found)) => found,
        (None, None) => return Err(ClassifyError::BadRepoPath("not a model endpoint under /models/")),
    };
    let id = repo_id_from_segments(&rest[..parts])?;
    let action = if is_read_method(request.method) { Action::Metadata } else { action };
    Ok(Classified::with(action, ModelRef::model(id)))
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::classify::path::percent_decode;
    use crate::classify::testkit::{Rng, quote, random_repo_id, smuggle};
    use crate::classify::{classify as classify_request, needs_body};
    use crate::config::ApiKind;

    fn run(method: Method, path: &str) -> Result<Classified, ClassifyError> {
        let request = Request { method: &method, path, route_model: None };
        assert!(!needs_body(ApiKind::HfInference, &request));
        classify_request(ApiKind::HfInference, &request, Some(b"{\"model\":\"other/model\"}"))
    }

    fn on(action: Action, id: &str) -> Result<Classified, ClassifyError> {
        Ok(Classified::with(action, ModelRef::model(id)))
    }

    #[test]
    fn inference_client_shapes() {
        // InferenceClient(model="org/name", provider="hf-inference").text_generation / chat_completion /
        // feature_extraction / sentence_similarity / text_classification.
        for (path, action) in [
            ("/models/org/name", Action::Infer),
            ("/models/org/name/pipeline/text-generation", Action::Infer),
            ("/models/org/name/v1/chat/completions", Action::Infer),
            ("/models/org/name/v1/completions", Action::Infer),
            ("/models/org/name/pipeline/feature-extraction", Action::Embed),
            ("/models/org/name/pipeline/sentence-similarity", Action::Embed),
            ("/models/org/name/pipeline/text-classification", Action::Infer),
            ("/models/org/name/v1/embeddings", Action::Embed),
            ("/models/org/name/", Action::Infer),
            ("/Models/org/name/Pipeline/Feature-Extraction", Action::Embed),
        ] {
            assert_eq!(run(Method::POST, path), on(action, "org/name"), "{path}");
            assert_eq!(run(Method::GET, path), on(Action::Metadata, "org/name"), "{path}");
            assert_eq!(run(Method::HEAD, path), on(Action::Metadata, "org/name"), "{path}");
        }
    }

    #[test]
    fn legacy_single_segment_ids() {
        assert_eq!(run(Method::POST, "/models/gpt2"), on(Action::Infer, "gpt2"));
        assert_eq!(run(Method::POST, "/models/gpt2/pipeline/text-generation"), on(Action::Infer, "gpt2"));
        assert_eq!(
            run(Method::POST, "/models/bert-base-uncased/v1/embeddings"),
            on(Action::Embed, "bert-base-uncased")
        );
        // A repo named `pipeline` under org `gpt2` is `org/name` with no tail.
        assert_eq!(run(Method::POST, "/models/gpt2/pipeline"), on(Action::Infer, "gpt2/pipeline"));
    }

    #[test]
    fn paths_outside_models_go_by_method() {
        assert_eq!(run(Method::GET, "/"), Ok(Classified::bare(Action::Read)));
        assert_eq!(run(Method::GET, "/models"), Ok(Classified::bare(Action::Read)));
        assert_eq!(run(Method::GET, "/status/org/name"), Ok(Classified::bare(Action::Read)));
        assert_eq!(run(Method::POST, "/v1/chat/completions"), Ok(Classified::bare(Action::Write)));
    }

    #[test]
    fn errors() {
        for path in
            ["/models/org/name/extra", "/models/a/b/c", "/models/a/b/c/pipeline/t", "/models/org/name/v1/models"]
        {
            assert_eq!(
                run(Method::POST, path),
                Err(ClassifyError::BadRepoPath("not a model endpoint under /models/")),
                "{path}"
            );
        }
        assert_eq!(
            run(Method::POST, "/models/org/n%61me"),
            Err(ClassifyError::BadModelId {
                id: "org/n%61me".into(),
                reason: "percent-encoded characters are not allowed in a repo id"
            })
        );
        assert_eq!(
            run(Method::POST, "/models/org/na..me/pipeline/text-generation"),
            Err(ClassifyError::BadModelId { id: "org/na..me".into(), reason: "'--' and '..' are not allowed" })
        );
        assert_eq!(run(Method::POST, "/models/org%2Fname"), Err(ClassifyError::EncodedSlash));
        assert_eq!(
            run(Method::POST, "/models/org/name").map(|c| c.model.map(|m| m.id)),
            Ok(Some("org/name".to_string()))
        );
    }

    const TAILS: [&str; 6] = [
        "",
        "/pipeline/text-generation",
        "/pipeline/feature-extraction",
        "/v1/chat/completions",
        "/v1/embeddings",
        "/v1/completions",
    ];

    /// Property: the id read from a path built from a valid repo id is that id.
    #[test]
    fn ids_round_trip() {
        let mut rng = Rng::new(0x5eed_0002);
        for _ in 0..3000 {
            let id = random_repo_id(&mut rng);
            let tail = *rng.pick(&TAILS);
            let path = format!("/models/{id}{tail}");
            let classified = run(Method::POST, &path).unwrap_or_else(|error| panic!("{path}: {error}"));
            assert_eq!(classified.model.map(|m| m.id), Some(id), "{path}");
        }
    }

    /// Property: an escape in the id never makes hfgate read another model than a standard
    /// percent-decoder would: the request is refused or classified like the decoded spelling.
    #[test]
    fn escaped_ids_are_not_smuggled() {
        let mut rng = Rng::new(0x5eed_0003);
        for _ in 0..3000 {
            let id = random_repo_id(&mut rng);
            let raw = smuggle(&mut rng, &id);
            let tail = *rng.pick(&TAILS);
            let path = format!("/models/{raw}{tail}");
            if let Ok(classified) = run(Method::POST, &path) {
                let decoded = String::from_utf8(percent_decode(&raw)).unwrap_or_else(|_| panic!("{path}"));
                assert_eq!(Ok(classified), run(Method::POST, &format!("/models/{decoded}{tail}")), "{path}");
            }
            // The fully encoded spelling (`quote(id, safe="")`) is refused, or read as the id itself.
            let quoted = format!("/models/{}{tail}", quote(&id, ""));
            if let Ok(Classified { model: Some(model), .. }) = run(Method::POST, &quoted) {
                assert_eq!(model.id, id, "{quoted}");
            }
        }
    }
}
