"""Signing-key rotation at the real IdP, with hfgate left running."""

from __future__ import annotations

import math
import secrets
import time
from pathlib import Path

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from support import AUDIENCE, Gate, Stack, bearer, idp_jwks_hits, jwt_parts, metrics_sum, wait_until


def jwks_fetch_metric(gate: Gate) -> float:
    text = gate.metrics()
    total, names = metrics_sum(text, "jwks", "fetch")
    assert names, f"/metrics has no sample whose name holds 'jwks' and 'fetch':\n{text}"
    return total


def call(gate: Gate, token: str) -> httpx.Response:
    return httpx.get(f"{gate.url}/tgi/echo", headers=bearer(token), timeout=10)


def test_rotation_without_restarting_hfgate(stack: Stack, keyfiles: dict[str, Path]) -> None:
    gate, idp = stack.gate, stack.idp
    ready_at = time.monotonic()

    token_a = idp.token()
    assert jwt_parts(token_a)[0]["kid"] == "key-a"
    res = call(gate, token_a)
    assert res.status_code == 200, res.text
    fetched_before = jwks_fetch_metric(gate)
    hits_before = idp_jwks_hits(idp)
    assert hits_before >= 1, "hfgate loaded the IdP's keys at start"

    # Same issuer and port, new signing key B; A is still published.
    idp.restart(keyfiles["BA"], "key-b")
    token_b = idp.token()
    assert jwt_parts(token_b)[0] == {"alg": "RS256", "typ": "at+jwt", "kid": "key-b"}

    # jwks_refetch_min_interval = 1s: let it pass since the start-up fetch.
    time.sleep(max(0.0, 1.2 - (time.monotonic() - ready_at)))

    res = call(gate, token_b)
    assert res.status_code == 200, f"a token signed by the new key: {res.status_code} {res.text}"
    seen = {k.lower(): v for k, v in res.json()["headers"].items()}
    assert seen.get("x-forwarded-user") == "ci-bot"

    res = call(gate, token_a)
    assert res.status_code == 200, f"the old key's token: {res.status_code} {res.text}"

    assert jwks_fetch_metric(gate) > fetched_before, "the JWKS fetch counter did not move"
    assert idp_jwks_hits(idp) > hits_before, "hfgate did not fetch the IdP's JWKS again"
    assert httpx.get(f"{gate.admin_url}/readyz", timeout=5).status_code == 200


def test_unknown_kids_do_not_hammer_the_idp(stack: Stack) -> None:
    """Tokens with random kids (signed by a key the IdP never had) are refused with bounded refetching."""
    gate, idp = stack.gate, stack.idp
    time.sleep(1.2)  # past the refetch interval of the start-up fetch
    hits_before = idp_jwks_hits(idp)

    key = ec.generate_private_key(ec.SECP256R1())
    now = int(time.time())
    claims = {
        "iss": idp.issuer,
        "aud": AUDIENCE,
        "sub": "intruder",
        "client_id": "intruder",
        "iat": now,
        "exp": now + 300,
    }

    started = time.monotonic()
    with httpx.Client(timeout=10) as client:
        for _ in range(25):
            forged = jwt.encode(claims, key, algorithm="ES256", headers={"kid": secrets.token_hex(8), "typ": "at+jwt"})
            res = client.get(f"{gate.url}/tgi/echo", headers=bearer(forged))
            assert res.status_code == 401, f"{res.status_code} {res.text}"
    elapsed = time.monotonic() - started

    # Let any refetch in flight reach the IdP's log.
    time.sleep(0.3)
    allowed = math.ceil(elapsed / 1.0) + 1
    hits = idp_jwks_hits(idp) - hits_before
    assert hits <= allowed, f"{hits} JWKS fetches for 25 unknown kids in {elapsed:.2f}s (at most {allowed})"

    # The real token still works afterwards.
    wait_until(lambda: call(gate, idp.token()).status_code == 200, "a valid token accepted", timeout=5)
