"""What the upstream receives: the organisation's credential and a verified identity, nothing the caller forged.

The mock upstream's /echo describes the request it got.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt

from support import HF_TOKEN_VALUE, Stack, bearer


def echo(stack: Stack, token: str, headers: dict[str, str] | None = None, path: str = "/tgi/echo/x?a=1&b=two") -> Any:
    res = httpx.get(f"{stack.gate.url}{path}", headers={**bearer(token), **(headers or {})}, timeout=10)
    assert res.status_code == 200, f"{res.status_code} {res.text}"
    seen = res.json()
    seen["headers"] = {k.lower(): v for k, v in seen["headers"].items()}
    return seen


def test_upstream_gets_org_credential_not_the_callers_token(stack: Stack) -> None:
    token = stack.idp.token()
    seen = echo(stack, token)
    headers = seen["headers"]
    assert headers.get("authorization") == f"Bearer {HF_TOKEN_VALUE}"
    for name, value in headers.items():
        assert token not in value, f"the caller's token reached the upstream in {name}"
        assert token.split(".")[2] not in value, f"the caller's token signature reached the upstream in {name}"
    assert seen["method"] == "GET"
    assert seen["path"] == "/echo/x", "strip_prefix removes /tgi"
    assert seen["query"] in ("a=1&b=two", "?a=1&b=two"), seen["query"]


def test_upstream_gets_identity_headers(stack: Stack) -> None:
    token = stack.idp.token()
    seen = echo(stack, token)
    h = seen["headers"]
    assert h.get("x-forwarded-user") == "ci-bot"
    assert h.get("x-forwarded-groups") == "ci,ml-research"
    assert "x-forwarded-email" not in h or h["x-forwarded-email"] == "", "the token carries no email"
    assert h.get("x-request-id")
    assert h.get("x-forwarded-proto") == "http"
    assert h.get("x-forwarded-host") == stack.gate.url.removeprefix("http://")
    assert "127.0.0.1" in h.get("x-forwarded-for", "")
    assert h.get("x-hfgate-assertion")


def test_client_sent_identity_headers_are_replaced(stack: Stack) -> None:
    token = stack.idp.token()
    forged = {
        "X-Forwarded-User": "admin",
        "X-Forwarded-Email": "admin@example.com",
        "X-Forwarded-Groups": "admins",
        "X-Hfgate-Assertion": "forged.assertion.value",
        "X-Hfgate-Impersonate": "admin",
    }
    h = echo(stack, token, forged)["headers"]
    assert h.get("x-forwarded-user") == "ci-bot"
    assert h.get("x-forwarded-email", "") != "admin@example.com"
    assert h.get("x-forwarded-groups") == "ci,ml-research"
    assert h.get("x-hfgate-assertion") not in (None, "forged.assertion.value")
    assert "x-hfgate-impersonate" not in h
    for name, value in h.items():
        if name != "x-hfgate-assertion":  # base64: checked by verification instead
            assert "admin" not in value, f"a forged value reached the upstream in {name}: {value}"


def test_connection_nominated_headers_are_dropped(stack: Stack) -> None:
    token = stack.idp.token()
    h = echo(stack, token, {"Connection": "keep-alive, X-Hop-Secret", "X-Hop-Secret": "1", "X-Kept": "yes"})["headers"]
    assert "x-hop-secret" not in h, "a header named in Connection is hop-by-hop (RFC 9110 7.6.1)"
    assert h.get("x-kept") == "yes"


def test_identity_assertion_verifies_against_the_gates_jwks(stack: Stack) -> None:
    token = stack.idp.token()
    h = echo(stack, token)["headers"]
    assertion = h["x-hfgate-assertion"]

    res = httpx.get(f"{stack.gate.url}/.hfgate/jwks.json", timeout=5)
    assert res.status_code == 200, res.text
    jwks = res.json()
    assert jwks["keys"], jwks
    assert all("d" not in k for k in jwks["keys"]), "the assertion JWKS must hold public keys only"

    header = jwt.get_unverified_header(assertion)
    assert header["alg"] == "ES256", header
    keyset = jwt.PyJWKSet.from_dict(jwks)
    key = keyset[header["kid"]] if "kid" in header else keyset.keys[0]
    claims = jwt.decode(assertion, key.key, algorithms=["ES256"], audience="tgi")
    assert claims["sub"] == "ci-bot"
    now = time.time()
    assert claims["exp"] > now
    if "iat" in claims:
        assert claims["exp"] - claims["iat"] <= 15 * 60, "the assertion should be minutes long"

    # The assertion is bound to the route: another audience does not verify.
    try:
        jwt.decode(assertion, key.key, algorithms=["ES256"], audience="some-other-route")
    except jwt.InvalidAudienceError:
        pass
    else:
        raise AssertionError("the assertion verified for an audience other than the route")


def test_request_id_is_returned_and_forwarded(stack: Stack) -> None:
    token = stack.idp.token()
    res = httpx.get(f"{stack.gate.url}/tgi/echo", headers=bearer(token), timeout=10)
    assert res.status_code == 200
    upstream_id = {k.lower(): v for k, v in res.json()["headers"].items()}.get("x-request-id")
    assert upstream_id
    returned = res.headers.get("x-request-id")
    if returned is not None:
        assert returned == upstream_id
