"""Unmodified Hugging Face and OpenAI clients through hfgate with a real IdP token."""

from __future__ import annotations

from support import (
    MESSAGES,
    MODEL,
    Stack,
    assert_streamed_progressively,
    hf_stream_chat,
    openai_client,
    openai_stream_chat,
)


def test_huggingface_hub_streams_chat_through_the_gate(stack: Stack) -> None:
    token = stack.idp.token()
    streamed = hf_stream_chat(f"{stack.gate.url}/tgi", token)
    assert_streamed_progressively(streamed)
    assert streamed.text.strip(), "the stream carried no text"
    finishes = [c.choices[0].finish_reason for c in streamed.chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"], f"expected one finish_reason 'stop', got {finishes!r}"


def test_openai_streams_chat_through_the_gate(stack: Stack) -> None:
    token = stack.idp.token()
    streamed = openai_stream_chat(f"{stack.gate.url}/tgi/v1", token)
    assert_streamed_progressively(streamed)
    assert streamed.chunks[0].object == "chat.completion.chunk"


def test_openai_non_streaming_usage_reaches_the_audit(stack: Stack) -> None:
    token = stack.idp.token()
    client = openai_client(f"{stack.gate.url}/tgi/v1", token)
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content
    usage = completion.usage
    assert usage is not None and usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    lines = stack.gate.wait_audit(1)
    assert len(lines) == 1, lines
    event = lines[0]
    assert event["route"] == "tgi"
    assert event["method"] == "POST"
    assert event["status"] == 200
    assert event["usage"]["prompt_tokens"] == usage.prompt_tokens
    assert event["usage"]["completion_tokens"] == usage.completion_tokens


def test_streamed_usage_reaches_the_audit(stack: Stack) -> None:
    """The usage object of the last SSE chunk is what the audit records."""
    token = stack.idp.token()
    streamed = openai_stream_chat(f"{stack.gate.url}/tgi/v1", token)
    usages = [c.usage for c in streamed.chunks if getattr(c, "usage", None)]
    assert usages, "the mock upstream's last content chunk carries usage"
    event = stack.gate.wait_audit(1)[0]
    assert event["status"] == 200
    assert event["usage"]["prompt_tokens"] == usages[-1].prompt_tokens
    assert event["usage"]["completion_tokens"] == usages[-1].completion_tokens
