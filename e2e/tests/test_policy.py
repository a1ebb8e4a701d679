"""Per-model policy with the real clients: shorthand rules and a Cedar policy file decide which identity may
download, read or run which model, and which organisation a call is billed to.

The IdP's `ci-bot` carries groups ci and ml-research, `support-bot` the group support. The mock upstream
(model shapes, `/echo` and a Hub-shaped API serving `acme/tiny` and the dataset `acme/data` at `main` and
`refs/pr/1`) insists on the organisation's credential, so every request below that succeeds went through
hfgate's credential injection too.
"""

from __future__ import annotations

import json
import subprocess
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from huggingface_hub import HfApi, InferenceClient, hf_hub_download, snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

from support import (
    MESSAGES,
    MODEL,
    GateFactory,
    IdP,
    Procs,
    Stack,
    bearer,
    openai_client,
    openai_stream_chat,
    start_mock_upstream,
)

# Commits of the mock Hub's repositories (src/demo/mock_hub.rs).
TINY_MAIN = "2ab5721abb8dcca93edaf0835ac378d9dbbd9e6a"
TINY_PR1 = "b4ccdfd27d2a7990333db76dc3016eba2bcbab85"
DATA_MAIN = "7298d2e1216789ae3cbb0ad705e137b6e5016097"
OTHER_MODEL = "meta-llama/Llama-3.1-8B-Instruct"

PolicyGate = Callable[..., Stack]


def routes(upstream: str) -> str:
    """Routes beside the default `tgi` one: the Hub, an OpenAI-style endpoint, and two generic ones."""
    return f"""
[[route]]
name = "hub"
path = "/hub/"
upstream = "{upstream}"
api = "hub"
credential = "env:HF_TOKEN"
strip_prefix = true

[[route]]
name = "openai"
path = "/openai/"
upstream = "{upstream}"
api = "openai"
credential = "env:HF_TOKEN"
strip_prefix = true

[[route]]
name = "echo"
path = "/echo/"
upstream = "{upstream}"
api = "generic"
credential = "env:HF_TOKEN"

[[route]]
name = "billed"
path = "/billed/"
upstream = "{upstream}"
api = "generic"
credential = "env:HF_TOKEN"
strip_prefix = true
bill_to = "acme-route"
"""


@pytest.fixture
def policy_gate(idp: IdP, procs: Procs, hfgate_bin: Path, start_gate: GateFactory, tmp_path: Path) -> PolicyGate:
    """hfgate in front of a credential-checking mock upstream, with the given rules and Cedar policy file."""
    upstream = start_mock_upstream(procs, hfgate_bin, chunk_delay="20ms", expect_credential=True)

    def start(rules: str = "", cedar: str | None = None) -> Stack:
        extra = routes(upstream.url)
        if cedar is not None:
            policy_file = tmp_path / "policies.cedar"
            policy_file.write_text(cedar)
            extra += f'\n[authz]\npolicy_file = "{policy_file}"\n'
        gate = start_gate(idp.issuer, upstream.url, extra=extra + rules)
        return Stack(idp=idp, upstream=upstream, gate=gate)

    return start


def events_for(stack: Stack, count: int) -> list[dict[str, Any]]:
    events = stack.gate.wait_audit(count)
    assert len(events) == count, json.dumps(events, indent=1)
    return events


def assert_insufficient_scope(res: httpx.Response, description: str) -> None:
    """hfgate's 403: RFC 6750 insufficient_scope, with the reason in the challenge and the JSON body."""
    assert res.status_code == 403, f"{res.status_code} {res.text}"
    assert res.headers.get("www-authenticate") == (
        f'Bearer realm="hfgate", error="insufficient_scope", error_description="{description}"'
    )
    body = res.json()
    assert body["error"] == "insufficient_scope"
    assert body["error_description"] == description
    assert body.get("request_id") == res.headers.get("x-request-id")


def http_error_in_chain(err: BaseException) -> HfHubHTTPError:
    """The HfHubHTTPError behind an error of huggingface_hub (a refused HEAD surfaces as its cause)."""
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, HfHubHTTPError):
            return seen
        seen = seen.__cause__
    raise AssertionError(f"no HfHubHTTPError behind {err!r}")


def echo_headers(res: httpx.Response) -> dict[str, str]:
    assert res.status_code == 200, f"{res.status_code} {res.text}"
    return {k.lower(): v for k, v in res.json()["headers"].items()}


# --------------------------------------------------------------------------
# the Hub: downloads, metadata, revisions
# --------------------------------------------------------------------------

HUB_RULES = """
[[allow]]
groups = ["ci"]
routes = ["hub"]
models = ["acme/*"]
actions = ["download", "metadata"]

[[allow]]
groups = ["ci"]
routes = ["hub"]
datasets = ["acme/data"]
actions = ["download"]
"""


def test_hub_downloads_and_metadata_as_the_rules_permit(policy_gate: PolicyGate, tmp_path: Path) -> None:
    stack = policy_gate(HUB_RULES)
    token = stack.idp.token()
    hub = f"{stack.gate.url}/hub"
    cache = tmp_path / "hf-cache"

    path = hf_hub_download(repo_id="acme/tiny", filename="config.json", endpoint=hub, token=token, cache_dir=cache)
    assert json.loads(Path(path).read_text()) == {"model_type": "tiny", "hidden_size": 8}
    assert f"/snapshots/{TINY_MAIN}/" in path, path

    info = HfApi(endpoint=hub, token=token).model_info("acme/tiny")
    assert info.id == "acme/tiny" and info.sha == TINY_MAIN
    assert sorted(s.rfilename for s in info.siblings or []) == ["config.json", "model.safetensors"]

    # repo info, the tree listing and every file, all through the gate.
    folder = Path(snapshot_download(repo_id="acme/tiny", endpoint=hub, token=token, cache_dir=cache))
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]

    data = hf_hub_download(
        repo_id="acme/data", filename="data.csv", repo_type="dataset", endpoint=hub, token=token, cache_dir=cache
    )
    assert Path(data).read_text().startswith("text,label\n")
    assert f"/snapshots/{DATA_MAIN}/" in data, data

    # A rule naming models does not reach datasets: dataset metadata is nobody's.
    with pytest.raises(HfHubHTTPError) as refused:
        HfApi(endpoint=hub, token=token).dataset_info("acme/data")
    assert refused.value.response.status_code == 403
    assert "no policy permits metadata on acme/data" in str(refused.value)

    events = stack.gate.wait_audit(1)
    by_path: dict[tuple[str, str], dict[str, Any]] = {(e["method"], e["path"]): e for e in events}

    head = by_path[("HEAD", "/hub/acme/tiny/resolve/main/config.json")]
    assert head["status"] == 200
    assert head["action"] == "download"
    assert head["model"] == {"id": "acme/tiny", "revision": "main", "provider": None, "repo_type": "model"}
    assert head["decision"]["allow"] is True
    assert head["decision"]["policies"] == ["allow[0]"]
    assert head["decision"]["policy_set"], "an allowed decision names the policy set"
    assert by_path[("GET", "/hub/acme/tiny/resolve/main/config.json")]["action"] == "download"

    meta = by_path[("GET", "/hub/api/models/acme/tiny")]
    assert meta["status"] == 200 and meta["action"] == "metadata"
    assert meta["model"]["id"] == "acme/tiny" and meta["model"]["revision"] is None

    tree = [e for e in events if e["path"].startswith("/hub/api/models/acme/tiny/tree/")]
    assert tree and all(e["status"] == 200 and e["action"] == "metadata" for e in tree), tree

    csv = by_path[("GET", "/hub/datasets/acme/data/resolve/main/data.csv")]
    assert csv["status"] == 200
    assert csv["model"] == {"id": "acme/data", "revision": "main", "provider": None, "repo_type": "dataset"}
    assert csv["decision"]["policies"] == ["allow[1]"]

    denied = by_path[("GET", "/hub/api/datasets/acme/data")]
    assert denied["status"] == 403 and denied["action"] == "metadata"
    assert denied["model"]["repo_type"] == "dataset"
    assert denied["decision"]["allow"] is False and denied["decision"]["policies"] == []
    assert denied["decision"]["policy_set"] == head["decision"]["policy_set"]


MAIN_ONLY_CEDAR = """
@id("main-revisions-only")
permit (principal in Hfgate::Group::"ci", action == Hfgate::Action::"download", resource)
when { resource is Hfgate::Model && resource.revision == "main" };

@id("ci-reads-metadata")
permit (principal in Hfgate::Group::"ci", action == Hfgate::Action::"metadata", resource is Hfgate::Model);
"""


def test_cedar_policy_file_refuses_a_pr_revision(policy_gate: PolicyGate, tmp_path: Path) -> None:
    stack = policy_gate(cedar=MAIN_ONLY_CEDAR)
    token = stack.idp.token()
    hub = f"{stack.gate.url}/hub"
    cache = tmp_path / "hf-cache"

    path = hf_hub_download(repo_id="acme/tiny", filename="config.json", endpoint=hub, token=token, cache_dir=cache)
    assert json.loads(Path(path).read_text())["hidden_size"] == 8

    # The PR's metadata may be read (revision decoded from refs%2Fpr%2F1), its files not downloaded.
    info = HfApi(endpoint=hub, token=token).model_info("acme/tiny", revision="refs/pr/1")
    assert info.sha == TINY_PR1

    with pytest.raises((HfHubHTTPError, LocalEntryNotFoundError)) as refused:
        hf_hub_download(
            repo_id="acme/tiny",
            filename="config.json",
            revision="refs/pr/1",
            endpoint=hub,
            token=token,
            cache_dir=cache,
        )
    # huggingface_hub reports a refused HEAD as "not in the local cache either", caused by the HTTP error.
    # A HEAD answer has no body: the reason travels in the challenge.
    http_error = http_error_in_chain(refused.value)
    assert http_error.response.status_code == 403
    assert http_error.response.request.method == "HEAD"
    assert 'error_description="no policy permits download on acme/tiny"' in http_error.response.headers.get(
        "www-authenticate", ""
    )

    res = httpx.get(f"{hub}/acme/tiny/resolve/refs%2Fpr%2F1/config.json", headers=bearer(token), timeout=10)
    assert_insufficient_scope(res, "no policy permits download on acme/tiny")

    events = stack.gate.wait_audit(1)
    allowed = [e for e in events if e["path"] == "/hub/acme/tiny/resolve/main/config.json"]
    assert allowed and all(e["decision"]["policies"] == ["main-revisions-only"] for e in allowed), allowed
    pr_meta = next(e for e in events if e["path"].startswith("/hub/api/models/acme/tiny/revision/"))
    assert pr_meta["status"] == 200 and pr_meta["model"]["revision"] == "refs/pr/1"
    assert pr_meta["decision"]["policies"] == ["ci-reads-metadata"]

    refused_events = [e for e in events if e["status"] == 403]
    assert {e["method"] for e in refused_events} == {"HEAD", "GET"}, refused_events
    for event in refused_events:
        assert event["path"] == "/hub/acme/tiny/resolve/refs%2Fpr%2F1/config.json"
        assert event["action"] == "download"
        assert event["model"] == {"id": "acme/tiny", "revision": "refs/pr/1", "provider": None, "repo_type": "model"}
        assert event["decision"]["allow"] is False
        assert event["decision"]["policy_set"]
        assert event["identity"]["subject"] == "ci-bot"


# --------------------------------------------------------------------------
# the same identity: download yes, inference no
# --------------------------------------------------------------------------

CI_DOWNLOADS_ONLY = """
[[allow]]
groups = ["ci"]
actions = ["download", "metadata"]
"""


def test_ci_may_download_but_not_infer(policy_gate: PolicyGate, tmp_path: Path) -> None:
    stack = policy_gate(CI_DOWNLOADS_ONLY)
    token = stack.idp.token()

    path = hf_hub_download(
        repo_id="acme/tiny",
        filename="model.safetensors",
        endpoint=f"{stack.gate.url}/hub",
        token=token,
        cache_dir=tmp_path / "hf-cache",
    )
    assert Path(path).stat().st_size > 0

    # Metadata of the TGI endpoint is fine...
    res = httpx.get(f"{stack.gate.url}/tgi/info", headers=bearer(token), timeout=10)
    assert res.status_code == 200, res.text

    # ...running it is not.
    client = InferenceClient(base_url=f"{stack.gate.url}/tgi", api_key=token, timeout=30)
    with pytest.raises(HfHubHTTPError) as refused:
        client.chat_completion(messages=MESSAGES, max_tokens=8)
    err = refused.value
    assert err.response.status_code == 403
    assert f"insufficient_scope: no policy permits infer on {MODEL}" in str(err)
    assert err.response.json()["error_description"] == f"no policy permits infer on {MODEL}"

    events = stack.gate.wait_audit(1)
    chat = next(e for e in events if e["path"] == "/tgi/v1/chat/completions")
    assert chat["status"] == 403 and chat["action"] == "infer"
    assert chat["model"]["id"] == MODEL
    assert chat["decision"]["allow"] is False
    info = next(e for e in events if e["path"] == "/tgi/info")
    assert info["action"] == "metadata" and info["decision"]["policies"] == ["allow[0]"]


# --------------------------------------------------------------------------
# an OpenAI-style route: the model comes from the body
# --------------------------------------------------------------------------

OPENAI_RULES = """
[[allow]]
groups = ["ml-research"]
routes = ["openai"]
models = ["demo/*"]
actions = ["infer"]
"""


def test_openai_route_permits_by_the_model_in_the_body(policy_gate: PolicyGate) -> None:
    stack = policy_gate(OPENAI_RULES)
    token = stack.idp.token()
    base = f"{stack.gate.url}/openai/v1"

    streamed = openai_stream_chat(base, token)
    assert streamed.text.strip() and len(streamed.pieces) > 1

    with pytest.raises(openai.PermissionDeniedError) as refused:
        openai_client(base, token).chat.completions.create(model=OTHER_MODEL, messages=MESSAGES, max_tokens=8)
    assert refused.value.status_code == 403
    assert refused.value.response.json()["error_description"] == f"no policy permits infer on {OTHER_MODEL}"

    # A caller outside ml-research gets nothing, not even the permitted model.
    with pytest.raises(openai.PermissionDeniedError):
        openai_client(base, stack.idp.token("support-bot")).chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=8
        )

    events = events_for(stack, 3)
    ok, other, support = events
    assert ok["status"] == 200 and ok["action"] == "infer"
    assert ok["model"] == {"id": MODEL, "revision": None, "provider": None, "repo_type": "model"}
    assert ok["decision"]["allow"] is True and ok["decision"]["policies"] == ["allow[0]"]
    assert ok["usage"]["completion_tokens"] > 0
    assert other["status"] == 403 and other["model"]["id"] == OTHER_MODEL
    assert other["decision"]["allow"] is False
    assert support["status"] == 403 and support["identity"]["subject"] == "support-bot"


# --------------------------------------------------------------------------
# X-HF-Bill-To
# --------------------------------------------------------------------------

BILLING_RULES = """
[[allow]]
groups = ["ci"]
routes = ["echo", "billed", "tgi"]
bill_to = "acme-research"

[[allow]]
groups = ["support"]
routes = ["echo", "billed"]
"""


def test_bill_to_comes_from_policy_and_only_permitted_values_pass(policy_gate: PolicyGate) -> None:
    stack = policy_gate(BILLING_RULES)
    ci, support = stack.idp.token(), stack.idp.token("support-bot")
    gate = stack.gate.url

    def echo(token: str, prefix: str = "/echo", bill_to: str | None = None) -> httpx.Response:
        headers = bearer(token) | ({"X-HF-Bill-To": bill_to} if bill_to else {})
        return httpx.get(f"{gate}{prefix}/echo/x", headers=headers, timeout=10)

    # The rule's bill_to is set upstream; a route's bill_to applies when no permitting rule names one.
    assert echo_headers(echo(ci)).get("x-hf-bill-to") == "acme-research"
    assert echo_headers(echo(ci, "/billed")).get("x-hf-bill-to") == "acme-research"
    assert "x-hf-bill-to" not in echo_headers(echo(support))
    assert echo_headers(echo(support, "/billed")).get("x-hf-bill-to") == "acme-route"

    # A client-sent value passes when policy lets that caller bill that organisation...
    assert echo_headers(echo(ci, bill_to="acme-research")).get("x-hf-bill-to") == "acme-research"
    assert echo_headers(echo(support, "/billed", bill_to="acme-route")).get("x-hf-bill-to") == "acme-route"
    # ...and is refused otherwise.
    assert_insufficient_scope(echo(ci, bill_to="evil-corp"), "no policy permits billing evil-corp")
    assert_insufficient_scope(echo(support, bill_to="acme-research"), "no policy permits billing acme-research")

    # huggingface_hub's InferenceClient(bill_to=...) sends X-HF-Bill-To.
    with warnings.catch_warnings():
        # It warns that bill_to only applies to Hugging Face tokens: the gate puts one on upstream.
        warnings.simplefilter("ignore", UserWarning)
        permitted = InferenceClient(base_url=f"{gate}/tgi", api_key=ci, bill_to="acme-research", timeout=30)
        forbidden = InferenceClient(base_url=f"{gate}/tgi", api_key=ci, bill_to="evil-corp", timeout=30)
    out = permitted.chat_completion(messages=MESSAGES, max_tokens=4)
    assert out.choices[0].message.content
    with pytest.raises(HfHubHTTPError) as refused:
        forbidden.chat_completion(messages=MESSAGES, max_tokens=4)
    assert refused.value.response.status_code == 403
    assert "insufficient_scope: no policy permits billing evil-corp" in str(refused.value)

    events = events_for(stack, 10)
    refused_events = [e for e in events if e["status"] == 403]
    assert len(refused_events) == 3, refused_events
    assert all(e["decision"]["allow"] is False for e in refused_events), refused_events
    chat = [e for e in events if e["path"] == "/tgi/v1/chat/completions"]
    assert [e["status"] for e in chat] == [200, 403]
    assert chat[0]["action"] == "infer" and chat[0]["decision"]["policies"] == ["allow[0]"]


# --------------------------------------------------------------------------
# no policy at all: authentication only
# --------------------------------------------------------------------------


def test_without_any_policy_authorization_is_off(policy_gate: PolicyGate, tmp_path: Path) -> None:
    stack = policy_gate()
    token = stack.idp.token("support-bot")
    path = hf_hub_download(
        repo_id="acme/tiny",
        filename="config.json",
        revision="refs/pr/1",
        endpoint=f"{stack.gate.url}/hub",
        token=token,
        cache_dir=tmp_path / "hf-cache",
    )
    assert json.loads(Path(path).read_text())["hidden_size"] == 16
    events = stack.gate.wait_audit(2)
    assert all(e["status"] == 200 and e["decision"]["allow"] is True for e in events), events
    assert all(e["decision"]["policies"] == [] and e["decision"].get("policy_set") is None for e in events), events
    assert events[0]["action"] == "download" and events[0]["model"]["revision"] == "refs/pr/1"


# --------------------------------------------------------------------------
# the audit says why
# --------------------------------------------------------------------------


def test_refusal_reason_reaches_the_audit(policy_gate: PolicyGate) -> None:
    """A refused request's audit line carries the decision's reason, as the 403 does."""
    stack = policy_gate(OPENAI_RULES + BILLING_RULES)
    token = stack.idp.token()
    gate = stack.gate.url

    with pytest.raises(openai.PermissionDeniedError):
        openai_client(f"{gate}/openai/v1", token).chat.completions.create(
            model=OTHER_MODEL, messages=MESSAGES, max_tokens=8
        )
    res = httpx.get(f"{gate}/echo/echo/x", headers=bearer(token) | {"X-HF-Bill-To": "evil-corp"}, timeout=10)
    assert_insufficient_scope(res, "no policy permits billing evil-corp")

    model_refusal, bill_refusal = events_for(stack, 2)
    assert model_refusal["status"] == 403 and bill_refusal["status"] == 403
    assert model_refusal["decision"]["reason"] == f"no policy permits infer on {OTHER_MODEL}", model_refusal
    assert bill_refusal["decision"]["reason"] == "no policy permits billing evil-corp", bill_refusal


# --------------------------------------------------------------------------
# hfgate explain
# --------------------------------------------------------------------------


def explain(
    stack: Stack, hfgate_bin: Path, token: str, method: str, url: str, body: Path | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(hfgate_bin), "explain", "--config", str(stack.gate.config_path), "--token", token]
    argv += ["--method", method, "--url", url]
    if body is not None:
        argv += ["--body", str(body)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, env=stack.gate.env)


def test_explain_traces_an_allowed_and_a_refused_request(
    policy_gate: PolicyGate, hfgate_bin: Path, tmp_path: Path
) -> None:
    stack = policy_gate(HUB_RULES + OPENAI_RULES)
    token = stack.idp.token()
    gate = stack.gate.url

    allowed = explain(stack, hfgate_bin, token, "GET", f"{gate}/hub/acme/tiny/resolve/refs%2Fpr%2F1/config.json")
    assert allowed.returncode == 0, f"{allowed.returncode}\n{allowed.stdout}\n{allowed.stderr}"
    out = allowed.stdout
    assert "identity: ci-bot" in out, out
    assert "action: download" in out and "model: acme/tiny" in out and "revision: refs/pr/1" in out, out
    assert "decision: ALLOW" in out, out
    assert "reason: permitted by allow[0]" in out, out

    body = tmp_path / "chat.json"
    body.write_text(json.dumps({"model": OTHER_MODEL, "messages": MESSAGES}))
    refused = explain(stack, hfgate_bin, token, "POST", f"{gate}/openai/v1/chat/completions", body)
    assert refused.returncode == 2, f"{refused.returncode}\n{refused.stdout}\n{refused.stderr}"
    out = refused.stdout
    assert f"model: {OTHER_MODEL}" in out and "action: infer" in out, out
    assert "decision: DENY" in out, out
    assert f"reason: no policy permits infer on {OTHER_MODEL}" in out, out

    # The trace matches what the gate does with the same request.
    res = httpx.post(f"{gate}/openai/v1/chat/completions", headers=bearer(token), content=body.read_bytes(), timeout=10)
    assert_insufficient_scope(res, f"no policy permits infer on {OTHER_MODEL}")
