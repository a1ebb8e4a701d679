//! `openai` and `router` routes: OpenAI-compatible servers (vLLM, TGI's Messages API, llama.cpp...) and the
//! Inference Providers router. The model is the body's top-level `model`, never guessed.
//!
//! Endpoints are matched with or without the `/v1` prefix: a route whose upstream URL already ends in
//! `/v1` (`https://router.huggingface.co/v1`) receives `/chat/completions` from clients configured with the
//! route's URL as their base URL.

use std::fmt;

use http::Method;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};

use super::path::{check_repo_id, is_keyword, is_keywords, percent_decode, segments, shown};
use super::{Action, Classified, ClassifyError, ModelRef, Request, is_read_method, read_or_write};

/// How the model string is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flavor {
    /// Taken whole: the server's own model name, whatever its shape.
    OpenAi,
    /// A Hub repo id with an optional `:provider` or `:policy` suffix after the last ':'.
    Router,
}

/// POST endpoints whose body names the model.
const BODY_ENDPOINTS: [(&[&str], Action); 5] = [
    (&["chat", "completions"], Action::Infer),
    (&["completions"], Action::Infer),
    (&["responses"], Action::Infer),
    (&["messages"], Action::Infer),
    (&["embeddings"], Action::Embed),
];

/// Longest model string accepted on `openai` routes.
const MAX_MODEL_CHARS: usize = 256;

enum Endpoint<'s> {
    /// The model is in the body.
    Body(Action),
    /// `GET /v1/models`.
    List,
    /// `GET /v1/models/{id}`, with the id's raw segments (one or two).
    Metadata(&'s [&'s str]),
    Other,
}

fn endpoint<'s>(method: &Method, segments: &'s [&'s str]) -> Endpoint<'s> {
    let rest = match segments.split_first() {
        Some((first, rest)) if is_keyword(first, "v1") => rest,
        _ => segments,
    };
    if *method == Method::POST {
        return match BODY_ENDPOINTS.iter().find(|(keywords, _)| is_keywords(rest, keywords)) {
            Some((_, action)) => Endpoint::Body(*action),
            None => Endpoint::Other,
        };
    }
    if !is_read_method(method) {
        return Endpoint::Other;
    }
    match rest.split_first() {
        Some((first, ids)) if is_keyword(first, "models") => match ids.len() {
            0 => Endpoint::List,
            1 | 2 => Endpoint::Metadata(ids),
            _ => Endpoint::Other,
        },
        _ => Endpoint::Other,
    }
}

pub(super) fn needs_body(request: &Request<'_>) -> bool {
    matches!(endpoint(request.method, &segments(request.path)), Endpoint::Body(_))
}

pub(super) fn classify(
    flavor: Flavor,
    request: &Request<'_>,
    body: Option<&[u8]>,
) -> Result<Classified, ClassifyError> {
    let segments = segments(request.path);
    match endpoint(request.method, &segments) {
        Endpoint::Body(action) => {
            let model = body_model(body.unwrap_or_default())?;
            Ok(Classified::with(action, model_ref(flavor, &model)?))
        }
        Endpoint::List => Ok(Classified::bare(Action::List)),
        Endpoint::Metadata(raw) => Ok(Classified::with(Action::Metadata, path_model(flavor, raw)?)),
        Endpoint::Other => Ok(Classified::bare(read_or_write(request.method))),
    }
}

/// The model named by `/v1/models/{id}`.
fn path_model(flavor: Flavor, raw: &[&str]) -> Result<ModelRef, ClassifyError> {
    let joined = raw.join("/");
    let mut decoded = Vec::with_capacity(raw.len());
    for part in raw {
        let bytes = percent_decode(part);
        // A router id is a Hub repo id, spelled literally like every repo id in a path.
        if flavor == Flavor::Router && bytes != part.as_bytes() {
            return Err(bad_id(&joined, "percent-encoded characters are not allowed in a repo id"));
        }
        match String::from_utf8(bytes) {
            Ok(part) => decoded.push(part),
            Err(_) => return Err(bad_id(&joined, "not UTF-8 once decoded")),
        }
    }
    model_ref(flavor, &decoded.join("/"))
}

fn bad_id(id: &str, reason: &'static str) -> ClassifyError {
    ClassifyError::BadModelId { id: shown(id), reason }
}

/// Reads a model string the way the route's upstream does.
fn model_ref(flavor: Flavor, model: &str) -> Result<ModelRef, ClassifyError> {
    if model.is_empty() {
        return Err(ClassifyError::EmptyModel);
    }
    match flavor {
        Flavor::OpenAi => {
            check_free_model(model).map_err(|reason| bad_id(model, reason))?;
            Ok(ModelRef::model(model))
        }
        Flavor::Router => {
            let (id, provider) = match model.rsplit_once(':') {
                Some((id, provider)) => (id, Some(provider)),
                None => (model, None),
            };
            if let Some(provider) = provider {
                check_provider(provider).map_err(|reason| bad_id(model, reason))?;
            }
            check_repo_id(id)?;
            Ok(ModelRef { provider: provider.map(str::to_owned), ..ModelRef::model(id) })
        }
    }
}

/// Model names on OpenAI-compatible servers are free-form; only what no server would accept as a name
/// (and what would make the audit line misleading) is refused.
fn check_free_model(model: &str) -> Result<(), &'static str> {
    if model.chars().nth(MAX_MODEL_CHARS).is_some() {
        return Err("longer than 256 characters");
    }
    if model.chars().any(char::is_control) {
        return Err("contains a control character");
    }
    if model.starts_with(char::is_whitespace) || model.ends_with(char::is_whitespace) {
        return Err("leading or trailing whitespace");
    }
    Ok(())
}

/// Providers (`cerebras`, `fireworks-ai`) and routing policies (`fastest`, `cheapest`) are lowercase; other
/// spellings are refused rather than matched against policies written in lowercase.
fn check_provider(provider: &str) -> Result<(), &'static str> {
    if provider.is_empty() {
        return Err("empty provider after ':'");
    }
    if provider.len() > 64 || !provider.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err("a provider is at most 64 lowercase letters, digits and '-'");
    }
    Ok(())
}

/// The top-level `model` of a JSON object body, as a string.
fn body_model(body: &[u8]) -> Result<String, ClassifyError> {
    let top: TopLevel = serde_json::from_slice(body).map_err(|_| ClassifyError::BodyNotJson)?;
    if top.duplicate {
        return Err(ClassifyError::DuplicateModel);
    }
    match top.model {
        None => Err(ClassifyError::NoModel),
        Some(serde_json::Value::String(model)) if model.is_empty() => Err(ClassifyError::EmptyModel),
        Some(serde_json::Value::String(model)) => Ok(model),
        Some(_) => Err(ClassifyError::ModelNotString),
    }
}

/// The top-level `model` value of a JSON object; every other value is skipped without being built.
/// A repeated `model` is noted (and refused by the caller): which one an upstream reads varies by server.
struct TopLevel {
    model: Option<serde_json::Value>,
    duplicate: bool,
}

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<TopLevel, D::Error> {
        deserializer.deserialize_map(TopLevelVisitor)
    }
}

struct TopLevelVisitor;

impl<'de> Visitor<'de> for TopLevelVisitor {
    type Value = TopLevel;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TopLevel, A::Error> {
        let mut top = TopLevel { model: None, duplicate: false };
        while let Some(IsModel(is_model)) = map.next_key()? {
            if is_model {
                top.duplicate |= top.model.is_some();
                top.model = Some(map.next_value()?);
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(top)
    }
}

/// Whether an object key is `model` (after JSON unescaping), without allocating it.
struct IsModel(bool);

impl<'de> Deserialize<'de> for IsModel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<IsModel, D::Error> {
        deserializer.deserialize_str(IsModelVisitor)
    }
}

struct IsModelVisitor;

impl Visitor<'_> for IsModelVisitor {
    type Value = IsModel;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<IsModel, E> {
        Ok(IsModel(key == "model"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::{RepoType, classify as classify_request, needs_body as request_needs_body};
    use crate::config::ApiKind;

    fn run(api: ApiKind, method: Method, path: &str, body: &str) -> Result<Classified, ClassifyError> {
        let request = Request { method: &method, path, route_model: Some("configured/model") };
        classify_request(api, &request, Some(body.as_bytes()))
    }

    fn needs(api: ApiKind, method: Method, path: &str) -> bool {
        request_needs_body(api, &Request { method: &method, path, route_model: None })
    }

    fn model(id: &str, provider: Option<&str>) -> Option<ModelRef> {
        Some(ModelRef {
            id: id.into(),
            revision: None,
            provider: provider.map(str::to_owned),
            repo_type: RepoType::Model,
        })
    }

    #[test]
    fn openai_client_shapes() {
        // openai-python: client.chat.completions.create(model=..., messages=...)
        let chat =
            r#"{"messages":[{"role":"user","content":"Hi"}],"model":"meta-llama/Llama-3.1-8B-Instruct","stream":true}"#;
        assert_eq!(
            run(ApiKind::OpenAi, Method::POST, "/v1/chat/completions", chat),
            Ok(Classified { action: Action::Infer, model: model("meta-llama/Llama-3.1-8B-Instruct", None) })
        );
        // client.embeddings.create(model=..., input=...)
        let embed = r#"{"input":["a","b"],"model":"BAAI/bge-small-en-v1.5","encoding_format":"base64"}"#;
        assert_eq!(
            run(ApiKind::OpenAi, Method::POST, "/v1/embeddings", embed),
            Ok(Classified { action: Action::Embed, model: model("BAAI/bge-small-en-v1.5", None) })
        );
        // client.models.list() / retrieve()
        assert_eq!(run(ApiKind::OpenAi, Method::GET, "/v1/models", ""), Ok(Classified::bare(Action::List)));
        assert_eq!(
            run(ApiKind::OpenAi, Method::GET, "/v1/models/org/name", ""),
            Ok(Classified { action: Action::Metadata, model: model("org/name", None) })
        );
        assert_eq!(
            run(ApiKind::OpenAi, Method::GET, "/v1/models/gpt-4o", ""),
            Ok(Classified { action: Action::Metadata, model: model("gpt-4o", None) })
        );
        // Legacy completions, Responses API, Anthropic-style Messages API.
        for path in ["/v1/completions", "/v1/responses", "/v1/messages"] {
            assert_eq!(
                run(ApiKind::OpenAi, Method::POST, path, r#"{"model":"m","prompt":"x"}"#),
                Ok(Classified { action: Action::Infer, model: model("m", None) }),
                "{path}"
            );
        }
    }

    #[test]
    fn huggingface_hub_inference_client_against_an_openai_server() {
        // InferenceClient(base_url=...).chat_completion(...) sends model "tgi" when none is given: on an
        // openai route the model string is taken as sent.
        let body = r#"{"model":"tgi","messages":[{"role":"user","content":"Hi"}],"stream":false}"#;
        assert_eq!(
            run(ApiKind::OpenAi, Method::POST, "/v1/chat/completions", body),
            Ok(Classified { action: Action::Infer, model: model("tgi", None) })
        );
    }

    #[test]
    fn the_v1_prefix_is_optional() {
        let body = r#"{"model":"m"}"#;
        for (path, action) in [
            ("/chat/completions", Action::Infer),
            ("/completions", Action::Infer),
            ("/responses", Action::Infer),
            ("/messages", Action::Infer),
            ("/embeddings", Action::Embed),
            ("/V1/Chat/Completions", Action::Infer),
            ("/v1/chat/completions/", Action::Infer),
        ] {
            assert!(needs(ApiKind::OpenAi, Method::POST, path), "{path}");
            assert_eq!(
                run(ApiKind::OpenAi, Method::POST, path, body),
                Ok(Classified { action, model: model("m", None) }),
                "{path}"
            );
        }
        assert_eq!(run(ApiKind::Router, Method::GET, "/models", ""), Ok(Classified::bare(Action::List)));
        assert_eq!(
            run(ApiKind::Router, Method::GET, "/models/org/name", ""),
            Ok(Classified { action: Action::Metadata, model: model("org/name", None) })
        );
    }

    #[test]
    fn router_models_split_off_the_provider() {
        for (sent, id, provider) in [
            ("meta-llama/Llama-3.1-8B-Instruct:fastest", "meta-llama/Llama-3.1-8B-Instruct", Some("fastest")),
            ("meta-llama/Llama-3.1-8B-Instruct:cheapest", "meta-llama/Llama-3.1-8B-Instruct", Some("cheapest")),
            ("meta-llama/Llama-3.1-8B-Instruct:cerebras", "meta-llama/Llama-3.1-8B-Instruct", Some("cerebras")),
            ("openai/gpt-oss-120b:fireworks-ai", "openai/gpt-oss-120b", Some("fireworks-ai")),
            ("deepseek-ai/DeepSeek-R1", "deepseek-ai/DeepSeek-R1", None),
        ] {
            let body = format!(r#"{{"model":"{sent}","messages":[]}}"#);
            assert_eq!(
                run(ApiKind::Router, Method::POST, "/v1/chat/completions", &body),
                Ok(Classified { action: Action::Infer, model: model(id, provider) }),
                "{sent}"
            );
            // The same string on an openai route is taken whole.
            assert_eq!(
                run(ApiKind::OpenAi, Method::POST, "/v1/chat/completions", &body),
                Ok(Classified { action: Action::Infer, model: model(sent, None) }),
                "{sent}"
            );
        }
        assert_eq!(
            run(ApiKind::Router, Method::GET, "/v1/models/org/name:fastest", ""),
            Ok(Classified { action: Action::Metadata, model: model("org/name", Some("fastest")) })
        );
    }

    #[test]
    fn needs_body_exactly_for_posts_that_name_the_model() {
        for api in [ApiKind::OpenAi, ApiKind::Router] {
            assert!(needs(api, Method::POST, "/v1/chat/completions"));
            assert!(needs(api, Method::POST, "/v1/embeddings"));
            assert!(!needs(api, Method::GET, "/v1/chat/completions"));
            assert!(!needs(api, Method::PUT, "/v1/chat/completions"));
            assert!(!needs(api, Method::GET, "/v1/models"));
            assert!(!needs(api, Method::POST, "/v1/models"));
            assert!(!needs(api, Method::POST, "/v1/files"));
            assert!(!needs(api, Method::POST, "/v1/chat/completions/extra"));
        }
    }

    #[test]
    fn other_requests_go_by_method_without_a_model() {
        for api in [ApiKind::OpenAi, ApiKind::Router] {
            for (method, path, action) in [
                (Method::GET, "/v1/chat/completions", Action::Read),
                (Method::GET, "/health", Action::Read),
                (Method::HEAD, "/v1/models/a/b/c", Action::Read),
                (Method::POST, "/v1/files", Action::Write),
                (Method::DELETE, "/v1/models/org/name", Action::Write),
                (Method::POST, "/v1/models", Action::Write),
                (Method::POST, "/together/v1/chat/completions", Action::Write),
            ] {
                // No body is read: a body that would fail is not looked at.
                assert_eq!(run(api, method.clone(), path, "not json"), Ok(Classified::bare(action)), "{method} {path}");
            }
        }
    }

    #[test]
    fn duplicate_model_keys_are_refused() {
        let body = r#"{"model":"allowed/model","messages":[],"model":"other/model"}"#;
        for api in [ApiKind::Router, ApiKind::OpenAi] {
            assert_eq!(run(api, Method::POST, "/v1/chat/completions", body), Err(ClassifyError::DuplicateModel));
        }
        // The same value twice is still two keys: nothing is gained by telling the cases apart.
        let same = r#"{"model":"a/b","model":"a/b"}"#;
        assert_eq!(
            run(ApiKind::Router, Method::POST, "/v1/chat/completions", same),
            Err(ClassifyError::DuplicateModel)
        );
        // The key is compared after JSON unescaping, as every JSON parser reads it.
        let escaped = r#"{"model":"a/b","mod\u0065l":"c/d"}"#;
        assert_eq!(
            run(ApiKind::Router, Method::POST, "/v1/chat/completions", escaped),
            Err(ClassifyError::DuplicateModel)
        );
        // A nested "model" is not the top-level one.
        let nested = r#"{"messages":[{"model":"x/y"}],"extra":{"model":"x/y"}}"#;
        assert_eq!(run(ApiKind::Router, Method::POST, "/v1/chat/completions", nested), Err(ClassifyError::NoModel));
    }

    #[test]
    fn body_errors() {
        let cases: [(&str, ClassifyError); 14] = [
            ("", ClassifyError::BodyNotJson),
            ("not json", ClassifyError::BodyNotJson),
            (r#"["model"]"#, ClassifyError::BodyNotJson),
            (r#""model""#, ClassifyError::BodyNotJson),
            ("null", ClassifyError::BodyNotJson),
            (r#"{"model":"a/b"} {}"#, ClassifyError::BodyNotJson),
            (r#"{"model":"a/b""#, ClassifyError::BodyNotJson),
            ("\u{feff}{\"model\":\"a/b\"}", ClassifyError::BodyNotJson),
            (r#"{"model":"\ud800"}"#, ClassifyError::BodyNotJson),
            (r#"{"messages":[]}"#, ClassifyError::NoModel),
            (r#"{"Model":"a/b"}"#, ClassifyError::NoModel),
            (r#"{"model":null}"#, ClassifyError::ModelNotString),
            (r#"{"model":["a/b"]}"#, ClassifyError::ModelNotString),
            (r#"{"model":""}"#, ClassifyError::EmptyModel),
        ];
        for api in [ApiKind::OpenAi, ApiKind::Router] {
            for (body, expected) in &cases {
                assert_eq!(run(api, Method::POST, "/v1/chat/completions", body), Err(expected.clone()), "{body}");
            }
            let request = Request { method: &Method::POST, path: "/v1/embeddings", route_model: None };
            assert_eq!(classify_request(api, &request, None), Err(ClassifyError::BodyNotJson));
            assert_eq!(
                run(api, Method::POST, "/v1/embeddings", r#"{"model":{"id":"a/b"}}"#),
                Err(ClassifyError::ModelNotString)
            );
            // Deep nesting elsewhere is skipped without recursion; inside `model` it hits serde_json's limit.
            let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
            assert_eq!(
                run(api, Method::POST, "/v1/embeddings", &format!(r#"{{"input":{deep},"model":"a/b"}}"#)),
                Ok(Classified { action: Action::Embed, model: model("a/b", None) })
            );
            assert_eq!(
                run(api, Method::POST, "/v1/embeddings", &format!(r#"{{"model":{deep}}}"#)),
                Err(ClassifyError::BodyNotJson)
            );
        }
    }

    #[test]
    fn model_id_errors() {
        let bad = |api, body: &str| match run(api, Method::POST, "/v1/chat/completions", body) {
            Err(ClassifyError::BadModelId { id, reason }) => Some((id, reason)),
            _ => None,
        };
        let router = |model: &str| bad(ApiKind::Router, &format!(r#"{{"model":"{model}"}}"#));
        assert_eq!(router("a/b/c"), Some(("a/b/c".into(), "a repo id is 'org/name'")));
        assert_eq!(router("org/name:"), Some(("org/name:".into(), "empty provider after ':'")));
        assert_eq!(
            router("org/name:Cerebras"),
            Some(("org/name:Cerebras".into(), "a provider is at most 64 lowercase letters, digits and '-'"))
        );
        assert_eq!(router(":fastest"), Some(("".into(), "empty org or name")));
        assert_eq!(
            router("a:b/c:fastest"),
            Some(("a:b/c".into(), "only ASCII letters, digits, '-', '_' and '.' are allowed"))
        );
        assert_eq!(router("org/../x"), Some(("org/../x".into(), "a repo id is 'org/name'")));
        assert_eq!(
            router("org/na me"),
            Some(("org/na me".into(), "only ASCII letters, digits, '-', '_' and '.' are allowed"))
        );
        assert_eq!(router("org/name.git"), Some(("org/name.git".into(), "a repo name cannot end with '.git'")));
        let openai = |model: &str| bad(ApiKind::OpenAi, &format!(r#"{{"model":"{model}"}}"#));
        assert_eq!(openai(r"gpt\n4"), Some(("gpt?4".into(), "contains a control character")));
        assert_eq!(openai(" gpt-4"), Some((" gpt-4".into(), "leading or trailing whitespace")));
        let long = "m".repeat(257);
        assert_eq!(openai(&long), Some((format!("{}...", "m".repeat(64)), "longer than 256 characters")));
        assert!(openai(&"m".repeat(256)).is_none());
        // The message quotes a sanitized, short piece of the input.
        let error = run(ApiKind::OpenAi, Method::POST, "/v1/chat/completions", r#"{"model":"a\"b\u0000"}"#);
        assert_eq!(
            error.map_err(|e| e.to_string()),
            Err("invalid model id 'a?b?': contains a control character".to_string())
        );
        // Path ids: decoded on openai routes, literal on router routes.
        assert_eq!(
            run(ApiKind::OpenAi, Method::GET, "/v1/models/my%20model", ""),
            Ok(Classified { action: Action::Metadata, model: model("my model", None) })
        );
        assert_eq!(
            run(ApiKind::Router, Method::GET, "/v1/models/org/n%61me", ""),
            Err(ClassifyError::BadModelId {
                id: "org/n%61me".into(),
                reason: "percent-encoded characters are not allowed in a repo id"
            })
        );
        assert_eq!(
            run(ApiKind::OpenAi, Method::GET, "/v1/models/%FF", ""),
            Err(ClassifyError::BadModelId { id: "%FF".into(), reason: "not UTF-8 once decoded" })
        );
    }
}
