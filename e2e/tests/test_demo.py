"""`hfgate demo`: the printed token works with an unmodified Hugging Face client."""

from __future__ import annotations

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from support import MESSAGES, Demo, hf_stream_chat, jwt_parts


def test_demo_prints_a_jwt(demo: Demo) -> None:
    header, claims = jwt_parts(demo.token)
    assert header.get("alg") not in (None, "none") and not header["alg"].startswith("HS"), header
    assert claims.get("sub"), claims


def test_demo_streams_chat_with_the_printed_token(demo: Demo) -> None:
    streamed = hf_stream_chat(f"{demo.url}/demo", demo.token)
    assert streamed.pieces, f"no content chunk in {streamed.chunks!r}"
    assert streamed.text.strip()


def test_demo_refuses_a_request_without_the_token(demo: Demo) -> None:
    res = httpx.post(
        f"{demo.url}/demo/v1/chat/completions",
        json={"model": "tgi", "messages": MESSAGES, "stream": True},
        timeout=10,
    )
    assert res.status_code == 401, f"{res.status_code} {res.text}"
    assert 'realm="hfgate"' in res.headers.get("www-authenticate", "")

    client = InferenceClient(base_url=f"{demo.url}/demo", timeout=10)
    with pytest.raises(HfHubHTTPError) as info:
        client.chat_completion(messages=MESSAGES, max_tokens=8)
    assert info.value.response.status_code == 401
