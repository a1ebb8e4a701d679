"""The audit trail: one line per request, a verified identity, never a secret."""

from __future__ import annotations

import httpx

from support import HF_TOKEN_VALUE, MESSAGES, MODEL, GateFactory, IdP, Upstream, bearer, chat_body, openai_client


def test_one_line_per_request_with_identity_and_no_secrets(
    idp: IdP, upstream: Upstream, start_gate: GateFactory
) -> None:
    # Verbose logs make the "no secret in the logs" check stronger.
    gate = start_gate(idp.issuer, upstream.url, env={"RUST_LOG": "debug,hyper=info,h2=info,rustls=info"})
    token = idp.token()
    fake_hf = "hf_fakeAuditCheck0123456789abcdefghij"
    other = idp.token("other-app", "urn:other", None)
    chat = f"{gate.url}/tgi/v1/chat/completions"

    responses = []
    with httpx.Client(timeout=30) as client:
        responses.append(client.get(f"{gate.url}/tgi/echo?q=1", headers=bearer(token)))  # 200
        responses.append(client.post(chat, json=chat_body(), headers=bearer(token)))  # 200, usage
        with client.stream("POST", chat, json=chat_body(stream=True), headers=bearer(token)) as res:
            res.read()
            responses.append(res)  # 200, streamed
        responses.append(client.post(chat, json=chat_body()))  # 401, no token
        responses.append(client.post(chat, json=chat_body(), headers=bearer(fake_hf)))  # 401, hf_ token
        responses.append(client.post(chat, json=chat_body(), headers=bearer(other)))  # 401, wrong audience
    # And one from an unmodified client.
    openai_client(f"{gate.url}/tgi/v1", token).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8)

    statuses = [r.status_code for r in responses] + [200]
    assert statuses == [200, 200, 200, 401, 401, 401, 200], statuses

    lines = gate.wait_audit(len(statuses))
    assert len(lines) == len(statuses), f"expected {len(statuses)} audit lines, got {len(lines)}: {lines}"
    assert sorted(e["status"] for e in lines) == sorted(statuses)

    ids = [e["request_id"] for e in lines]
    assert all(ids) and len(set(ids)) == len(ids), f"request ids must be present and unique: {ids}"
    refused_ids = {r.json()["request_id"] for r in responses if r.status_code == 401}
    assert refused_ids <= set(ids), "the request_id of an error body names its audit line"

    for event in lines:
        for key in ("request_id", "route", "method", "path", "status"):
            assert key in event, f"audit line without {key}: {event}"
        assert event["route"] == "tgi"
        if event["status"] == 200:
            who = event["identity"]
            assert who["issuer"] == idp.issuer
            assert who["subject"] == "ci-bot"
            assert who["client_id"] == "ci-bot"
            assert who["kind"] == "workload"
            assert who.get("groups") in (None, ["ci", "ml-research"])

    ok = [e for e in lines if e["status"] == 200]
    assert any(e["path"].startswith("/tgi/echo") and e["method"] == "GET" for e in ok), ok
    with_usage = [e for e in ok if (e.get("usage") or {}).get("completion_tokens")]
    assert len(with_usage) == 3, f"the three chat completions carry usage: {ok}"

    secrets = {
        "caller JWT": token,
        "caller JWT signature": token.split(".")[2],
        "other-app JWT": other,
        "upstream HF_TOKEN": HF_TOKEN_VALUE,
        "caller's hf_ token": fake_hf,
        "IdP client secret": "ci-bot-secret",
    }
    audit_text = gate.audit_path.read_text()
    stderr_text = gate.proc.stderr()
    stdout_text = gate.proc.stdout()
    for what, value in secrets.items():
        assert value not in audit_text, f"the {what} is in the audit file"
        assert value not in stderr_text, f"the {what} is in hfgate's stderr"
        assert value not in stdout_text, f"the {what} is in hfgate's stdout"
