"""CI without secrets: a GitHub Actions job downloads from the Hub through hfgate with the identity token its
platform gives it, and no `HF_TOKEN`.

The unmodified `huggingface_hub` client runs in a child process with a clean environment, exactly as in a
workflow step: `HF_ENDPOINT` is hfgate's hub route, `HF_OIDC_RESOURCE` is set, and the GitHub Actions runtime
variables (`GITHUB_ACTIONS`, `ACTIONS_ID_TOKEN_REQUEST_URL`, `ACTIONS_ID_TOKEN_REQUEST_TOKEN`) point at a
GitHub-Actions-shaped issuer in the test process (`support.GitHubIssuer`), or `HF_OIDC_ID_TOKEN` holds a token
minted beforehand. The client asks the runtime for an id token whose audience is `HF_ENDPOINT`, posts it to
`{HF_ENDPOINT}/oauth/token` (RFC 8693), and sends the token hfgate answers with on every Hub call.

hfgate trusts the issuer as `kind = "workload"` with `require = { repository = "acme/*" }`; a Cedar policy
file decides on the token's claims (entity tags). The Hub mock insists on the organisation's credential, and a
recording tap in front of it (`support.HubTap`) shows what it received: the organisation's credential, never
the CI token or hfgate's token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from support import (
    HF_TOKEN_VALUE,
    Gate,
    GateFactory,
    GitHubIssuer,
    HubTap,
    Procs,
    bearer,
    jwt_parts,
    server_header,
    start_mock_upstream,
    tail,
    tamper,
)

# The mock Hub's model and its commit at main (src/demo/mock_hub.rs).
MODEL_ID = "acme/tiny"
TINY_MAIN = "2ab5721abb8dcca93edaf0835ac378d9dbbd9e6a"
TINY_CONFIG = {"model_type": "tiny", "hidden_size": 8}
# What the job scopes its token to (HF_OIDC_RESOURCE): its own repository.
RESOURCE = "acme/models"
PROD_SUBJECT = "repo:acme/models:environment:prod"
STAGING_SUBJECT = "repo:acme/models:environment:staging"
REQUIRE_REFUSAL = (
    "claim repository is 'evil/models' and does not satisfy issuer github's require: expected one of [acme/*]"
)

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"

# Workloads of acme's repositories may read acme's models: the claim `repository`, as a Cedar tag.
REPOSITORY_POLICY = """
@id("acme-repositories-read-acme-models")
permit (
  principal is Hfgate::Workload,
  action in [Hfgate::Action::"download", Hfgate::Action::"metadata"],
  resource is Hfgate::Model
)
when {
  principal.hasTag("repository") && principal.getTag("repository") like "acme/*" && resource.id like "acme/*"
};
"""

# Only jobs running in the prod environment: the claim `environment`.
PROD_ONLY_POLICY = """
@id("prod-environment-only")
permit (
  principal is Hfgate::Workload,
  action in [Hfgate::Action::"download", Hfgate::Action::"metadata"],
  resource is Hfgate::Model
)
when { principal.hasTag("environment") && principal.getTag("environment") == "prod" };
"""


@dataclass
class WorkloadStack:
    ci: GitHubIssuer
    tap: HubTap
    gate: Gate

    @property
    def hub(self) -> str:
        """The hub route, as a workflow sets HF_ENDPOINT (and so the CI token's audience)."""
        return f"{self.gate.url}/hub"

    @property
    def token_endpoint(self) -> str:
        return f"{self.hub}/oauth/token"


def workload_config(port: int, admin_port: int, audit_path: Path, ci: str, upstream: str, policy: Path) -> str:
    return server_header(port, admin_port, audit_path) + f"""\

[[issuer]]
name = "github"
issuer = "{ci}"
audiences = ["http://127.0.0.1:{port}/hub", "hfgate"]
kind = "workload"
require = {{ repository = "acme/*" }}
jwks_refetch_min_interval = "1s"

[[route]]
name = "hub"
path = "/hub/"
upstream = "{upstream}"
api = "hub"
credential = "env:HF_TOKEN"
strip_prefix = true

[authz]
policy_file = "{policy}"
"""


WorkloadGate = Callable[..., WorkloadStack]


@pytest.fixture
def workload_gate(
    github_issuer: GitHubIssuer,
    procs: Procs,
    hfgate_bin: Path,
    start_configured_gate: GateFactory,
    tmp_path: Path,
) -> Iterator[WorkloadGate]:
    """hfgate trusting the GitHub-shaped issuer as a workload issuer, with a hub route to the credential-checking
    Hub mock (through the tap) and the given Cedar policy file."""
    upstream = start_mock_upstream(procs, hfgate_bin, chunk_delay="20ms", expect_credential=True)
    tap = HubTap(upstream.url)

    def start(policy: str = REPOSITORY_POLICY) -> WorkloadStack:
        policy_file = tmp_path / "workloads.cedar"
        policy_file.write_text(policy)
        gate = start_configured_gate(
            lambda port, admin_port, audit_path: workload_config(
                port, admin_port, audit_path, github_issuer.issuer, tap.url, policy_file
            )
        )
        return WorkloadStack(ci=github_issuer, tap=tap, gate=gate)

    try:
        yield start
    finally:
        tap.stop()


# --------------------------------------------------------------------------
# the CI job: huggingface_hub in a child process, configured by its environment only
# --------------------------------------------------------------------------

# What a workflow step runs: no endpoint, no token in the code. Prints one JSON line: what it got, or the chain
# of errors (with the HTTP answers behind them).
CI_PROGRAM = r"""
import json, sys
out = {}
try:
    from huggingface_hub import HfApi, get_token, hf_hub_download
    info = HfApi().model_info(sys.argv[2])
    out["model_info"] = {"id": info.id, "sha": info.sha, "siblings": sorted(s.rfilename for s in info.siblings or [])}
    path = hf_hub_download(repo_id=sys.argv[2], filename="config.json", cache_dir=sys.argv[1])
    out["path"] = path
    out["config"] = json.loads(open(path).read())
    out["token"] = get_token()
except Exception as err:
    chain, seen = [], err
    while seen is not None and len(chain) < 5:
        entry = {"types": [c.__name__ for c in type(seen).__mro__], "message": str(seen)}
        response = getattr(seen, "response", None)
        if response is not None:
            entry["status"] = response.status_code
            entry["method"] = response.request.method
            entry["url"] = str(response.request.url)
            entry["www_authenticate"] = response.headers.get("www-authenticate")
            try:
                entry["body"] = response.text
            except Exception:
                entry["body"] = None
        chain.append(entry)
        seen = seen.__cause__ or seen.__context__
    out["error"] = chain
print(json.dumps(out))
sys.exit(3 if "error" in out else 0)
"""

# Variables that would hand the child a credential or a provider other than the ones a test sets.
_CI_VARIABLES = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN",
    "HF_OIDC_RESOURCE",
    "HF_OIDC_ID_TOKEN",
    "GITHUB_ACTIONS",
    "ACTIONS_ID_TOKEN_REQUEST_URL",
    "ACTIONS_ID_TOKEN_REQUEST_TOKEN",
)


def github_runtime_env(stack: WorkloadStack) -> dict[str, str]:
    """What GitHub Actions sets in a job with `permissions: id-token: write`, plus the workflow's HF_* lines."""
    return {
        "HF_ENDPOINT": stack.hub,
        "HF_OIDC_RESOURCE": RESOURCE,
        "GITHUB_ACTIONS": "true",
        "ACTIONS_ID_TOKEN_REQUEST_URL": stack.ci.runtime_url,
        "ACTIONS_ID_TOKEN_REQUEST_TOKEN": stack.ci.request_token,
    }


def run_ci_job(tmp_path: Path, env: dict[str, str], name: str, model: str = MODEL_ID) -> dict[str, Any]:
    """The CI program in a fresh interpreter; its JSON answer (`error` set when the client raised)."""
    child_env = {k: v for k, v in os.environ.items() if k not in _CI_VARIABLES}
    child_env["HF_HOME"] = str(tmp_path / f"{name}-hf-home")  # no stored token
    child_env.update(env)
    cache = tmp_path / f"{name}-hf-cache"
    try:
        res = subprocess.run(
            [sys.executable, "-c", CI_PROGRAM, str(cache), model],
            env=child_env,
            capture_output=True,
            text=True,
            timeout=45,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"the CI job ({name}) did not finish within 45s")
    lines = res.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        answer = None
    if answer is None or res.returncode not in (0, 3):
        pytest.fail(f"the CI job ({name}) exited {res.returncode} without an answer:\n{tail(res.stderr, 60)}")
    answer["stderr"] = res.stderr
    return answer


def assert_succeeded(answer: dict[str, Any]) -> None:
    assert "error" not in answer, "the CI job failed:\n" + json.dumps(answer.get("error"), indent=1)
    assert answer["model_info"] == {
        "id": MODEL_ID,
        "sha": TINY_MAIN,
        "siblings": ["config.json", "model.safetensors"],
    }, answer["model_info"]
    assert answer["config"] == TINY_CONFIG
    assert f"/snapshots/{TINY_MAIN}/" in answer["path"], answer["path"]


# --------------------------------------------------------------------------
# checks on hfgate's answers, its audit, and what the Hub received
# --------------------------------------------------------------------------


def exchange(stack: WorkloadStack, subject_token: str, *, form: bool = False, **fields: str) -> httpx.Response:
    body = {
        "grant_type": TOKEN_EXCHANGE,
        "subject_token_type": ID_TOKEN_TYPE,
        "subject_token": subject_token,
        "resource": RESOURCE,
    } | fields
    if form:
        return httpx.post(stack.token_endpoint, data=body, timeout=10)
    return httpx.post(stack.token_endpoint, json=body, timeout=10)


def assert_oauth_error(res: httpx.Response, error: str, description_has: str) -> dict[str, Any]:
    """An RFC 6749 §5.2 error answer: 400, JSON, no-store, the request id of its audit line."""
    assert res.status_code == 400, f"{res.status_code} {res.text}"
    assert res.headers.get("content-type", "").startswith("application/json"), res.headers
    assert res.headers.get("cache-control") == "no-store", res.headers
    body = res.json()
    assert body.get("error") == error, body
    assert description_has in body.get("error_description", ""), body
    assert body.get("request_id") and body["request_id"] == res.headers.get("x-request-id"), (body, res.headers)
    assert "access_token" not in body, body
    return body


def gate_jwks_key(stack: WorkloadStack, token: str) -> Any:
    res = httpx.get(f"{stack.gate.url}/.hfgate/jwks.json", timeout=5)
    assert res.status_code == 200, res.text
    keyset = jwt.PyJWKSet.from_dict(res.json())
    kid = jwt.get_unverified_header(token).get("kid")
    return keyset[kid].key if kid else keyset.keys[0].key


def assert_hfgate_token(stack: WorkloadStack, token: str, ci_token: str) -> dict[str, Any]:
    """hfgate's token: signed by hfgate's key (its JWKS), `typ` hfgate-at+jwt, `aud` hfgate, `iss` the gate,
    an hour long, with the CI token's identity and claims, and the original issuer in `idp`."""
    header = jwt.get_unverified_header(token)
    assert header.get("typ") == "hfgate-at+jwt", header
    claims = jwt.decode(
        token,
        gate_jwks_key(stack, token),
        algorithms=[header["alg"]],
        audience="hfgate",
        issuer=stack.gate.url,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    _head, ci = jwt_parts(ci_token)
    assert claims["idp"] == stack.ci.issuer, claims
    assert claims["exp"] - claims["iat"] == 3600, claims
    assert claims["exp"] > time.time() + 3000, claims
    for name in ("sub", "repository", "repository_owner", "ref", "environment", "job_workflow_ref", "run_id", "sha"):
        assert claims.get(name) == ci.get(name), (name, claims, ci)
    assert claims["jti"] != ci["jti"], "hfgate's token is a token of its own"
    return claims


def assert_ci_identity(event: dict[str, Any], ci: GitHubIssuer, subject: str) -> None:
    who = event.get("identity") or {}
    assert who.get("issuer") == ci.issuer, event
    assert who.get("subject") == subject, event
    assert who.get("kind") == "workload", event


def exchange_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["path"] == "/hub/oauth/token"]


def assert_downloads_audited(events: list[dict[str, Any]], ci: GitHubIssuer, subject: str, policy: str) -> None:
    """The client's metadata call and download went through as `subject`, permitted by `policy`."""
    calls = {(e["method"], e["path"]): e for e in events if e["path"] != "/hub/oauth/token"}
    meta = calls.get(("GET", f"/hub/api/models/{MODEL_ID}"))
    head = calls.get(("HEAD", f"/hub/{MODEL_ID}/resolve/main/config.json"))
    assert meta is not None and head is not None, json.dumps(events, indent=1)
    assert meta["action"] == "metadata" and head["action"] == "download", (meta, head)
    for event in calls.values():
        assert event["status"] == 200, event
        assert event["route"] == "hub", event
        assert_ci_identity(event, ci, subject)
        assert event["model"]["id"] == MODEL_ID, event
        assert event["decision"]["allow"] is True, event
        assert event["decision"]["policies"] == [policy], event


def assert_hub_saw_only_the_organisation_credential(stack: WorkloadStack, *tokens: str) -> list[dict[str, Any]]:
    """Every request the Hub mock received carried the organisation's credential, and none of `tokens` (nor
    their signatures) anywhere in its line or headers; hfgate answered /oauth/token itself."""
    received = stack.tap.received()
    assert received, "the Hub mock received nothing"
    for request in received:
        headers = {k.lower(): v for k, v in request["headers"].items()}
        assert headers.get("authorization") == f"Bearer {HF_TOKEN_VALUE}", request
        seen = json.dumps(request)
        for token in tokens:
            assert token not in seen, f"a caller's token reached the Hub: {request}"
            assert token.rsplit(".", 1)[-1] not in seen, f"a caller's token signature reached the Hub: {request}"
        assert not request["path"].endswith("/oauth/token"), request
    return received


# --------------------------------------------------------------------------
# (a) GitHub Actions: the runtime mints the token, huggingface_hub exchanges it
# --------------------------------------------------------------------------


def test_github_actions_job_downloads_without_a_secret(workload_gate: WorkloadGate, tmp_path: Path) -> None:
    stack = workload_gate()
    ci = stack.ci

    answer = run_ci_job(tmp_path, github_runtime_env(stack), "github")
    assert_succeeded(answer)

    # huggingface_hub asked the Actions runtime once, with the request token, for audience = HF_ENDPOINT.
    runtime = ci.runtime_requests()
    assert len(runtime) == 1, runtime
    headers = {k.lower(): v for k, v in runtime[0]["headers"].items()}
    assert headers.get("authorization") == f"Bearer {ci.request_token}", runtime
    # (huggingface_hub 2.4 passes `audience` as httpx params, which replace the URL's own query: GitHub's
    # `api-version=2.0` does not reach the runtime. The fake runtime does not insist on it.)
    assert runtime[0]["query"].get("audience") == stack.hub, runtime
    assert len(ci.minted) == 1
    ci_token = ci.minted[0]
    _head, ci_claims = jwt_parts(ci_token)
    assert ci_claims["aud"] == stack.hub and ci_claims["sub"] == PROD_SUBJECT, ci_claims

    # The token the client used afterwards is hfgate's, not GitHub's.
    hfgate_token = answer["token"]
    assert hfgate_token and hfgate_token != ci_token
    assert_hfgate_token(stack, hfgate_token, ci_token)

    events = stack.gate.wait_audit(4)
    exchanges = exchange_events(events)
    assert len(exchanges) == 1, json.dumps(events, indent=1)
    ex = exchanges[0]
    assert ex["status"] == 200 and ex["method"] == "POST" and ex["route"] == "hub", ex
    assert_ci_identity(ex, ci, PROD_SUBJECT)
    assert ex["decision"]["allow"] is True, ex
    assert events.index(ex) == 0, "the exchange comes before the Hub calls"
    assert_downloads_audited(events, ci, PROD_SUBJECT, "acme-repositories-read-acme-models")

    received = assert_hub_saw_only_the_organisation_credential(stack, ci_token, hfgate_token, ci.request_token)
    assert {(r["method"], r["path"]) for r in received} >= {
        ("GET", f"/api/models/{MODEL_ID}"),
        ("HEAD", f"/{MODEL_ID}/resolve/main/config.json"),
    }, received
    # Neither token is written to hfgate's logs either.
    for output in (stack.gate.proc.stdout(), stack.gate.proc.stderr()):
        assert ci_token not in output and hfgate_token not in output


# --------------------------------------------------------------------------
# (b) a token minted beforehand: HF_OIDC_ID_TOKEN
# --------------------------------------------------------------------------


def test_pre_minted_id_token_is_exchanged(workload_gate: WorkloadGate, tmp_path: Path) -> None:
    stack = workload_gate()
    ci = stack.ci
    ci_token = ci.mint(stack.hub)

    answer = run_ci_job(
        tmp_path,
        {"HF_ENDPOINT": stack.hub, "HF_OIDC_RESOURCE": RESOURCE, "HF_OIDC_ID_TOKEN": ci_token},
        "pre-minted",
    )
    assert_succeeded(answer)
    assert ci.runtime_requests() == [], "with HF_OIDC_ID_TOKEN the client asks no runtime"
    hfgate_token = answer["token"]
    claims = assert_hfgate_token(stack, hfgate_token, ci_token)
    assert claims["requested_resource"] == RESOURCE, claims

    events = stack.gate.wait_audit(4)
    exchanges = exchange_events(events)
    assert len(exchanges) == 1 and exchanges[0]["status"] == 200, json.dumps(events, indent=1)
    assert_ci_identity(exchanges[0], ci, PROD_SUBJECT)
    assert_downloads_audited(events, ci, PROD_SUBJECT, "acme-repositories-read-acme-models")

    # The exchange itself, as RFC 8693 describes it: JSON (as huggingface_hub posts it) and a form.
    for form in (False, True):
        subject_token = ci.mint(stack.hub)
        res = exchange(stack, subject_token, form=form)
        assert res.status_code == 200, f"{'form' if form else 'JSON'} exchange: {res.status_code} {res.text}"
        assert res.headers.get("cache-control") == "no-store", res.headers
        body = res.json()
        assert body["token_type"].lower() == "bearer" and body["expires_in"] == 3600, body
        assert body["issued_token_type"] == ACCESS_TOKEN_TYPE, body
        assert_hfgate_token(stack, body["access_token"], subject_token)
        # ...which hfgate then takes as a bearer token, as the same workload.
        meta = httpx.get(f"{stack.hub}/api/models/{MODEL_ID}", headers=bearer(body["access_token"]), timeout=10)
        assert meta.status_code == 200 and meta.json()["id"] == MODEL_ID, meta.text
        seen_tokens = (ci_token, hfgate_token, subject_token, body["access_token"])
        assert_hub_saw_only_the_organisation_credential(stack, *seen_tokens)

    events = stack.gate.wait_audit(8)
    assert [e["status"] for e in exchange_events(events)] == [200, 200, 200], json.dumps(events, indent=1)
    for event in events[4:]:
        assert_ci_identity(event, ci, PROD_SUBJECT)


# --------------------------------------------------------------------------
# (c) a job of another repository: refused by the issuer's `require`
# --------------------------------------------------------------------------


def test_job_of_a_foreign_repository_is_refused_by_require(workload_gate: WorkloadGate, tmp_path: Path) -> None:
    stack = workload_gate()
    ci = stack.ci
    ci.runtime_claims = {"repository": "evil/models"}

    answer = run_ci_job(tmp_path, github_runtime_env(stack), "evil")
    assert "error" in answer, f"a job of evil/models got through: {answer}"
    assert len(ci.runtime_requests()) == 1 and len(ci.minted) == 1
    _head, evil_claims = jwt_parts(ci.minted[0])
    assert evil_claims["repository"] == "evil/models" and evil_claims["aud"] == stack.hub, evil_claims
    # The client's error is the exchange's answer, and says which check failed.
    first = answer["error"][0]
    assert "HfHubHTTPError" in first["types"], answer["error"]
    assert first["status"] == 400 and first["method"] == "POST", first
    assert first["url"] == stack.token_endpoint, first
    assert "invalid_grant" in first["message"] and REQUIRE_REFUSAL in first["message"], first
    assert REQUIRE_REFUSAL in json.loads(first["body"])["error_description"], first

    # The same exchange, looked at directly.
    evil = ci.mint(stack.hub, repository="evil/models")
    body = assert_oauth_error(exchange(stack, evil), "invalid_grant", REQUIRE_REFUSAL)
    # And the token as a bearer token straight to the Hub route: 401, the same reason.
    direct = ci.mint("hfgate", repository="evil/models")
    res = httpx.get(f"{stack.hub}/api/models/{MODEL_ID}", headers=bearer(direct), timeout=10)
    assert res.status_code == 401, f"{res.status_code} {res.text}"
    assert REQUIRE_REFUSAL in res.headers.get("www-authenticate", ""), res.headers
    assert REQUIRE_REFUSAL in res.json()["error_description"], res.text

    events = stack.gate.wait_audit(3)
    assert len(events) == 3, json.dumps(events, indent=1)
    refused = exchange_events(events)
    assert [e["status"] for e in refused] == [400, 400], json.dumps(events, indent=1)
    for event in refused:
        assert event["method"] == "POST" and event["route"] == "hub", event
        assert event["decision"]["allow"] is False, event
        assert REQUIRE_REFUSAL in (event.get("error") or "") + event["decision"].get("reason", ""), event
    assert refused[1]["request_id"] == body["request_id"]
    assert stack.tap.received() == [], "nothing of a refused job reaches the Hub"


# --------------------------------------------------------------------------
# (d) Cedar on the token's claims: prod may, staging may not
# --------------------------------------------------------------------------


def test_cedar_policy_on_the_environment_claim(workload_gate: WorkloadGate, tmp_path: Path) -> None:
    stack = workload_gate(PROD_ONLY_POLICY)
    ci = stack.ci

    prod = run_ci_job(
        tmp_path,
        {"HF_ENDPOINT": stack.hub, "HF_OIDC_RESOURCE": RESOURCE, "HF_OIDC_ID_TOKEN": ci.mint(stack.hub)},
        "prod",
    )
    assert_succeeded(prod)
    events = stack.gate.wait_audit(4)
    assert_downloads_audited(events, ci, PROD_SUBJECT, "prod-environment-only")
    done = len(events)

    staging_token = ci.mint(stack.hub, environment="staging")
    staging = run_ci_job(
        tmp_path,
        {"HF_ENDPOINT": stack.hub, "HF_OIDC_RESOURCE": RESOURCE, "HF_OIDC_ID_TOKEN": staging_token},
        "staging",
    )
    # The exchange succeeds (the issuer's require holds), the policy refuses the metadata call.
    assert "error" in staging, f"a staging job got through: {staging}"
    first = staging["error"][0]
    assert "HfHubHTTPError" in first["types"] and first["status"] == 403, staging["error"]
    assert first["url"] == f"{stack.hub}/api/models/{MODEL_ID}", first
    assert "insufficient_scope: no policy permits metadata on acme/tiny" in first["message"], first

    # Directly: the staging job's hfgate token, a download: 403 naming the decision.
    res = exchange(stack, ci.mint(stack.hub, environment="staging"))
    assert res.status_code == 200, res.text
    staging_hfgate = res.json()["access_token"]
    assert jwt_parts(staging_hfgate)[1]["environment"] == "staging"
    res = httpx.get(f"{stack.hub}/{MODEL_ID}/resolve/main/config.json", headers=bearer(staging_hfgate), timeout=10)
    assert res.status_code == 403, f"{res.status_code} {res.text}"
    description = "no policy permits download on acme/tiny"
    assert res.headers.get("www-authenticate") == (
        f'Bearer realm="hfgate", error="insufficient_scope", error_description="{description}"'
    ), res.headers
    assert res.json()["error"] == "insufficient_scope" and res.json()["error_description"] == description

    events = stack.gate.wait_audit(done + 4)
    later = events[done:]
    assert [e["status"] for e in exchange_events(later)] == [200, 200], json.dumps(later, indent=1)
    refused = [e for e in later if e["status"] == 403]
    assert [(e["method"], e["path"]) for e in refused] == [
        ("GET", f"/hub/api/models/{MODEL_ID}"),
        ("GET", f"/hub/{MODEL_ID}/resolve/main/config.json"),
    ], json.dumps(later, indent=1)
    for event in refused:
        assert_ci_identity(event, ci, STAGING_SUBJECT)
        assert event["decision"]["allow"] is False and event["decision"]["policies"] == [], event
        assert event["decision"]["policy_set"], event
        assert event["decision"]["reason"].startswith("no policy permits "), event
    # Refused calls never reach the Hub: it saw the prod job's calls and the staging exchange's none.
    allowed_calls = [e for e in events if e["status"] == 200 and e["path"] != "/hub/oauth/token"]
    assert len(stack.tap.received()) == len(allowed_calls), (stack.tap.received(), allowed_calls)


# --------------------------------------------------------------------------
# the exchange's refusals: RFC 6749 errors naming the check
# --------------------------------------------------------------------------


def test_exchange_refusals_name_the_failed_check(workload_gate: WorkloadGate) -> None:
    stack = workload_gate()
    ci = stack.ci
    good = ci.mint(stack.hub)
    now = int(time.time())

    assert_oauth_error(
        exchange(stack, good, grant_type="client_credentials"), "unsupported_grant_type", TOKEN_EXCHANGE
    )
    assert_oauth_error(
        exchange(stack, good, subject_token_type=ACCESS_TOKEN_TYPE), "invalid_request", "subject_token_type"
    )
    assert_oauth_error(exchange(stack, ""), "invalid_request", "subject_token")
    # A token for huggingface.co (a job that forgot HF_ENDPOINT's audience) is not for hfgate.
    assert_oauth_error(exchange(stack, ci.mint("https://huggingface.co")), "invalid_grant", "aud mismatch")
    assert_oauth_error(exchange(stack, tamper(good)), "invalid_grant", "signature verification failed")
    expired = ci.mint(stack.hub, iat=now - 900, nbf=now - 900, exp=now - 600)
    assert_oauth_error(exchange(stack, expired), "invalid_grant", "expired")
    # Workload issuers default to max_token_lifetime = 1h.
    long_lived = ci.mint(stack.hub, exp=now + 2 * 3600)
    assert_oauth_error(exchange(stack, long_lived), "invalid_grant", "exceeds max_token_lifetime 1h")
    # hfgate's own token is not exchanged again.
    res = exchange(stack, good)
    assert res.status_code == 200, res.text
    assert_oauth_error(exchange(stack, res.json()["access_token"]), "invalid_grant", "issued by hfgate")

    events = stack.gate.wait_audit(9)
    assert [e["status"] for e in events] == [400] * 7 + [200, 400], json.dumps(events, indent=1)
    for event in events:
        assert event["path"] == "/hub/oauth/token", event
        assert event["decision"]["allow"] is (event["status"] == 200), event
    assert stack.tap.received() == [], "an exchange never reaches the Hub"
