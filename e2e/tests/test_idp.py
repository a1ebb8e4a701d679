"""The IdP itself: what oidc-provider issues to a client-credentials workload.

These need no hfgate binary; they pin down the tokens every other test relies on.
"""

from __future__ import annotations

import time

import httpx
import jwt

from support import AUDIENCE, OTHER_AUDIENCE, IdP, jwt_parts


def test_discovery_names_the_issuer_and_jwks(idp: IdP) -> None:
    meta = httpx.get(f"{idp.issuer}/.well-known/openid-configuration", timeout=5).json()
    assert meta["issuer"] == idp.issuer
    assert not idp.issuer.endswith("/")
    assert "client_credentials" in meta["grant_types_supported"]
    jwks = httpx.get(meta["jwks_uri"], timeout=5).json()
    assert [k["kid"] for k in jwks["keys"]] == ["key-a"]
    assert all("d" not in k for k in jwks["keys"]), "the jwks endpoint must publish public keys only"


def test_client_credentials_token_is_an_rfc9068_jwt(idp: IdP) -> None:
    res = idp.token_response("ci-bot", AUDIENCE, "infer")
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "infer"

    header, claims = jwt_parts(body["access_token"])
    assert header == {"alg": "ES256", "typ": "at+jwt", "kid": "key-a"}
    assert claims["iss"] == idp.issuer
    assert claims["aud"] == AUDIENCE
    assert claims["sub"] == "ci-bot", "oidc-provider sets sub = client_id for client-credentials tokens"
    assert claims["client_id"] == "ci-bot"
    assert claims["scope"] == "infer"
    assert claims["groups"] == ["ci", "ml-research"]
    assert claims["jti"]
    now = time.time()
    assert abs(claims["iat"] - now) < 60
    assert claims["exp"] - claims["iat"] == body["expires_in"]
    assert "email" not in claims

    # The signature verifies against the published keys.
    jwks = jwt.PyJWKSet.from_dict(httpx.get(f"{idp.issuer}/jwks", timeout=5).json())
    verified = jwt.decode(
        body["access_token"],
        jwks["key-a"].key,
        algorithms=["ES256"],
        audience=AUDIENCE,
        issuer=idp.issuer,
    )
    assert verified == claims


def test_other_client_gets_the_other_audience(idp: IdP) -> None:
    _, claims = jwt_parts(idp.token("other-app", OTHER_AUDIENCE, None))
    assert claims["aud"] == OTHER_AUDIENCE
    assert claims["sub"] == "other-app"


def test_resources_are_per_client(idp: IdP) -> None:
    res = idp.token_response("ci-bot", OTHER_AUDIENCE, None)
    assert res.status_code == 400
    assert res.json()["error"] == "invalid_target"


def test_restart_with_new_signing_key_keeps_the_issuer(idp: IdP, keyfiles) -> None:
    issuer = idp.issuer
    idp.restart(keyfiles["BA"], "key-b")
    assert idp.issuer == issuer
    header, claims = jwt_parts(idp.token())
    assert header["alg"] == "RS256" and header["kid"] == "key-b"
    assert claims["iss"] == issuer
    jwks = httpx.get(f"{issuer}/jwks", timeout=5).json()
    assert [k["kid"] for k in jwks["keys"]] == ["key-b", "key-a"]
