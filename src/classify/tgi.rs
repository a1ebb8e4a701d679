//! `tgi` and `tei` routes (text-generation-inference, text-embeddings-inference, and Inference Endpoints
//! running them). These servers serve one model and ignore any model named in the body, so the model is
//! the route's configured one and the body is never read.
//!
//! The action comes from the path alone, whatever the method: a method the server does not accept there is
//! refused by the server, and classifying it by path is never looser than by method.

use super::path::{is_keywords, segments};
use super::{Action, Classified, ModelRef, Request, is_read_method, read_or_write};

/// Which server: they differ only in what their default routes (`POST /`, `/invocations`, `/vertex`) do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Server {
    Tgi,
    Tei,
}

impl Server {
    /// What `POST /`, `/invocations` (SageMaker) and `/vertex` (Vertex AI) run on this server.
    fn default_action(self) -> Action {
        match self {
            Server::Tgi => Action::Infer,
            Server::Tei => Action::Embed,
        }
    }
}

/// What a path means on these servers.
#[derive(Debug, Clone, Copy)]
enum Meaning {
    Is(Action),
    /// The server's default task.
    Default,
}

/// One table for both servers: a TGI path sent to TEI is answered 404 by TEI, and the other way round.
const ENDPOINTS: [(&[&str], Meaning); 24] = [
    (&["generate"], Meaning::Is(Action::Infer)),
    (&["generate_stream"], Meaning::Is(Action::Infer)),
    (&["v1", "chat", "completions"], Meaning::Is(Action::Infer)),
    (&["v1", "completions"], Meaning::Is(Action::Infer)),
    (&["embed"], Meaning::Is(Action::Embed)),
    (&["embed_all"], Meaning::Is(Action::Embed)),
    (&["embed_sparse"], Meaning::Is(Action::Embed)),
    (&["rerank"], Meaning::Is(Action::Embed)),
    (&["predict"], Meaning::Is(Action::Embed)),
    (&["predict_tokens"], Meaning::Is(Action::Embed)),
    (&["similarity"], Meaning::Is(Action::Embed)),
    (&["embeddings"], Meaning::Is(Action::Embed)),
    (&["v1", "embeddings"], Meaning::Is(Action::Embed)),
    (&["v1", "classify"], Meaning::Is(Action::Embed)),
    (&["info"], Meaning::Is(Action::Metadata)),
    (&["health"], Meaning::Is(Action::Metadata)),
    (&["ping"], Meaning::Is(Action::Metadata)),
    (&["metrics"], Meaning::Is(Action::Metadata)),
    (&["v1", "models"], Meaning::Is(Action::Metadata)),
    (&["tokenize"], Meaning::Is(Action::Metadata)),
    (&["chat_tokenize"], Meaning::Is(Action::Metadata)),
    (&["decode"], Meaning::Is(Action::Metadata)),
    (&["invocations"], Meaning::Default),
    (&["vertex"], Meaning::Default),
];

pub(super) fn classify(server: Server, request: &Request<'_>) -> Classified {
    let segments = segments(request.path);
    let meaning = if segments.is_empty() {
        // `GET /` is the health check on both servers, `POST /` runs the default task.
        if is_read_method(request.method) { Some(Meaning::Is(Action::Metadata)) } else { Some(Meaning::Default) }
    } else {
        ENDPOINTS.iter().find(|(keywords, _)| is_keywords(&segments, keywords)).map(|(_, meaning)| *meaning)
    };
    let action = match meaning {
        Some(Meaning::Is(action)) => action,
        Some(Meaning::Default) => server.default_action(),
        None => read_or_write(request.method),
    };
    Classified { action, model: request.route_model.map(ModelRef::model) }
}

#[cfg(test)]
mod tests {
    use http::Method;

    use super::*;
    use crate::classify::{RepoType, classify as classify_request, needs_body};
    use crate::config::ApiKind;

    const ROUTE_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

    fn run(api: ApiKind, method: Method, path: &str, route_model: Option<&str>) -> Classified {
        let request = Request { method: &method, path, route_model };
        assert!(!needs_body(api, &request));
        // The body is never read: even one naming another model changes nothing.
        let body = br#"{"model":"other/model"}"#;
        let classified = classify_request(api, &request, Some(body));
        assert_eq!(classified, classify_request(api, &request, None));
        classified.unwrap_or_else(|error| panic!("{path}: {error}"))
    }

    fn routed(action: Action) -> Classified {
        Classified {
            action,
            model: Some(ModelRef {
                id: ROUTE_MODEL.into(),
                revision: None,
                provider: None,
                repo_type: RepoType::Model,
            }),
        }
    }

    #[test]
    fn inference_client_against_tgi_uses_the_route_model() {
        // InferenceClient(base_url=...).chat_completion(...) posts {"model":"tgi",...}: TGI ignores it.
        assert_eq!(run(ApiKind::Tgi, Method::POST, "/v1/chat/completions", Some(ROUTE_MODEL)), routed(Action::Infer));
        // text_generation() posts to the base URL itself; generate and the stream variant.
        for path in ["/", "/generate", "/generate_stream", "/v1/completions", "/invocations", "/vertex"] {
            assert_eq!(run(ApiKind::Tgi, Method::POST, path, Some(ROUTE_MODEL)), routed(Action::Infer), "{path}");
        }
    }

    #[test]
    fn tei_endpoints_embed() {
        for path in [
            "/",
            "/embed",
            "/embed_all",
            "/embed_sparse",
            "/rerank",
            "/predict",
            "/predict_tokens",
            "/similarity",
            "/embeddings",
            "/v1/embeddings",
            "/v1/classify",
            "/invocations",
            "/vertex",
        ] {
            assert_eq!(run(ApiKind::Tei, Method::POST, path, Some(ROUTE_MODEL)), routed(Action::Embed), "{path}");
        }
        // The generation routes keep their meaning whichever server the route points at.
        assert_eq!(run(ApiKind::Tei, Method::POST, "/generate", Some(ROUTE_MODEL)), routed(Action::Infer));
        assert_eq!(run(ApiKind::Tgi, Method::POST, "/embed", Some(ROUTE_MODEL)), routed(Action::Embed));
    }

    #[test]
    fn metadata_endpoints() {
        for api in [ApiKind::Tgi, ApiKind::Tei] {
            for (method, path) in [
                (Method::GET, "/"),
                (Method::HEAD, "/"),
                (Method::GET, "/info"),
                (Method::GET, "/health"),
                (Method::GET, "/ping"),
                (Method::GET, "/metrics"),
                (Method::GET, "/v1/models"),
                (Method::POST, "/tokenize"),
                (Method::POST, "/chat_tokenize"),
                (Method::POST, "/decode"),
                (Method::GET, "/Info/"),
            ] {
                assert_eq!(run(api, method, path, Some(ROUTE_MODEL)), routed(Action::Metadata), "{path}");
            }
        }
    }

    #[test]
    fn other_paths_go_by_method() {
        for api in [ApiKind::Tgi, ApiKind::Tei] {
            assert_eq!(run(api, Method::GET, "/docs", Some(ROUTE_MODEL)), routed(Action::Read));
            assert_eq!(run(api, Method::GET, "/api-doc/openapi.json", Some(ROUTE_MODEL)), routed(Action::Read));
            assert_eq!(run(api, Method::POST, "/generate/extra", Some(ROUTE_MODEL)), routed(Action::Write));
            assert_eq!(run(api, Method::DELETE, "/anything", Some(ROUTE_MODEL)), routed(Action::Write));
        }
    }

    #[test]
    fn without_a_route_model_there_is_no_model() {
        assert_eq!(run(ApiKind::Tgi, Method::POST, "/generate", None), Classified::bare(Action::Infer));
        assert_eq!(run(ApiKind::Tei, Method::POST, "/embed", None), Classified::bare(Action::Embed));
    }
}
