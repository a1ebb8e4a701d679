"""Requests without a valid token from the real IdP are refused with RFC 6750 errors."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from support import (
    MESSAGES,
    OTHER_AUDIENCE,
    Stack,
    b64url,
    bearer,
    chat_body,
    tamper,
    with_payload,
)


def post_chat(stack: Stack, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(
        f"{stack.gate.url}/tgi/v1/chat/completions",
        json=chat_body(),
        headers=headers or {},
        timeout=10,
    )


def auth_params(header: str) -> dict[str, str]:
    """The auth-params of a `Bearer k="v", ...` challenge."""
    assert header.startswith("Bearer "), header
    return dict(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', header))


def assert_invalid_token(res: httpx.Response, *, description_has: str | None = None) -> dict[str, Any]:
    assert res.status_code == 401, f"{res.status_code} {res.text}"
    challenge = res.headers.get("www-authenticate")
    assert challenge, f"401 without WWW-Authenticate; headers {dict(res.headers)}"
    params = auth_params(challenge)
    assert params.get("realm") == "hfgate", challenge
    assert params.get("error") == "invalid_token", challenge
    assert params.get("error_description"), challenge
    body = res.json()
    assert set(body) >= {"error", "error_description", "request_id"}, body
    assert body["error"] == "invalid_token", body
    assert body["request_id"], body
    if description_has is not None:
        assert description_has.lower() in params["error_description"].lower(), challenge
        assert description_has.lower() in body["error_description"].lower(), body
    return body


def test_no_token_is_refused(stack: Stack) -> None:
    res = post_chat(stack)
    assert res.status_code == 401, f"{res.status_code} {res.text}"
    challenge = res.headers.get("www-authenticate", "")
    params = auth_params(challenge)
    assert params.get("realm") == "hfgate", challenge
    body = res.json()
    assert set(body) >= {"error", "error_description", "request_id"}, body


def test_token_for_another_audience_names_aud(stack: Stack) -> None:
    token = stack.idp.token("other-app", OTHER_AUDIENCE, None)
    res = post_chat(stack, bearer(token))
    body = assert_invalid_token(res, description_has="aud")
    assert token not in res.text and token not in res.headers.get("www-authenticate", "")
    assert "urn:hfgate" in body["error_description"], "the description should name the expected audience"


def test_hugging_face_token_is_refused_with_a_hint(stack: Stack) -> None:
    fake = "hf_fakeFAKEfake0123456789abcdefghijklmn"
    client = InferenceClient(base_url=f"{stack.gate.url}/tgi", api_key=fake, timeout=10)
    with pytest.raises(HfHubHTTPError) as info:
        client.chat_completion(messages=MESSAGES, max_tokens=8)
    res = info.value.response
    assert res.status_code == 401
    challenge = res.headers.get("www-authenticate", "")
    assert auth_params(challenge).get("error") == "invalid_token", challenge
    description = res.json()["error_description"]
    assert "hugging face" in description.lower(), description
    assert fake not in res.text and fake not in challenge

    # The same through a plain client, checking the whole error shape.
    assert_invalid_token(post_chat(stack, bearer(fake)), description_has="hugging face")


def test_tampered_signature_is_refused(stack: Stack) -> None:
    token = stack.idp.token()
    assert post_chat(stack, bearer(token)).status_code == 200
    assert_invalid_token(post_chat(stack, bearer(tamper(token))))


def test_changed_claims_are_refused(stack: Stack) -> None:
    token = stack.idp.token()
    assert_invalid_token(post_chat(stack, bearer(with_payload(token, sub="admin"))))


def test_alg_none_is_refused(stack: Stack) -> None:
    token = stack.idp.token()
    _head, payload, _sig = token.split(".")
    none_header = b64url(b'{"alg":"none","typ":"at+jwt"}')
    unsigned = f"{none_header}.{payload}."
    assert_invalid_token(post_chat(stack, bearer(unsigned)))


def test_garbage_bearer_is_refused(stack: Stack) -> None:
    assert_invalid_token(post_chat(stack, bearer("not-a-jwt")))
