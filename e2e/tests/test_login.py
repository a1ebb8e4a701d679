"""Sign-in for people: browser SSO (authorization code + PKCE) and the CLI's device flow.

A real browser (Debian's Chromium through playwright-core, e2e/idp/browser.mjs) signs in at the real IdP
(oidc-provider, e2e/idp/idp.mjs) as alice (group ml-research) or bob (group support). The gate's `tgi`
route has `login = "redirect"`, and one rule lets ml-research use it. The mock upstream insists on the
organisation's credential and echoes what it received at /echo.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from support import (
    ALICE,
    AUDIENCE,
    BOB,
    HF_TOKEN_VALUE,
    MESSAGES,
    WEB_CLIENT_SECRET,
    Browser,
    Gate,
    LoginStackFactory,
    Procs,
    cli_env,
    jwt_parts,
    require_subcommand,
    wait_until,
)

RULES = """
[[allow]]
groups = ["ml-research"]
routes = ["tgi"]
"""

PROTECTED = "/tgi/echo/x?a=1&b=two"
SESSION_COOKIE = "hfgate"  # public_url is http: no __Host- prefix
LOGIN_COOKIE = "hfgate-login"


def echoed_headers(result: dict[str, Any]) -> dict[str, str]:
    """The headers the mock upstream saw, from the body of a page the browser loaded from /echo."""
    assert result["status"] == 200, f"{result['url']}: {result['status']}\n{result['text'][:2000]}"
    body = result["body"] or result["text"]
    try:
        seen = json.loads(body)
    except json.JSONDecodeError as err:
        raise AssertionError(f"the upstream's /echo answer is not JSON ({err}): {body[:2000]}") from err
    return {k.lower(): v for k, v in seen["headers"].items()}


def cookie(cookies: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    found = [c for c in cookies if c["name"] == name]
    assert len(found) <= 1, f"two cookies named {name}: {found}"
    return found[0] if found else None


def audit_for(gate: Gate, predicate: Any, what: str, timeout: float = 10.0) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        matching = [e for e in gate.audit() if predicate(e)]
        return matching[-1] if matching else None

    return wait_until(find, f"an audit line for {what} in {gate.audit_path}", timeout=timeout)


def assert_is_alice(identity: dict[str, Any] | None, issuer: str) -> None:
    assert identity, "the audit line has no identity"
    assert identity["subject"] == "alice", identity
    assert identity.get("email") == ALICE["email"], identity
    assert identity["issuer"] == issuer, identity
    assert identity.get("groups") == ALICE["groups"], identity
    assert identity.get("kind") == "user", identity


def assert_secret_nowhere(gate: Gate, what: str, value: str) -> None:
    assert value not in gate.audit_path.read_text(), f"the {what} is in the audit file"
    assert value not in gate.proc.stderr(), f"the {what} is in hfgate's stderr"
    assert value not in gate.proc.stdout(), f"the {what} is in hfgate's stdout"


# --------------------------------------------------------------------------
# browser SSO
# --------------------------------------------------------------------------


def test_browser_signs_in_reaches_the_route_and_signs_out(
    start_login_stack: LoginStackFactory, browser: Browser
) -> None:
    stack = start_login_stack(RULES)
    gate, idp = stack.gate, stack.idp

    # 1. A protected page sends the browser through /.hfgate/login to the IdP's sign-in form;
    # 2. signing in as alice lands on the original path and query, through the gate.
    # (Screenshots of the pages a person sees go to tmp_path/browser/.)
    [landed, _, _, back, jar] = browser.run(
        {"op": "goto", "url": gate.url + PROTECTED},
        {"op": "expect_sign_in"},
        {"op": "screenshot", "name": "idp-sign-in.png"},
        {"op": "sign_in", "user": "alice", "password": "wonderland", "until": f"{gate.url}/tgi/"},
        {"op": "cookies"},
    )
    assert landed["url"].startswith(f"{idp.issuer}/interaction/"), landed["url"]
    hops = [h["url"] for h in landed["history"]]
    assert hops[0] == gate.url + PROTECTED, hops
    login_hops = [u for u in hops if u.startswith(f"{gate.url}/.hfgate/login")]
    assert login_hops, f"the gate did not send the browser to /.hfgate/login: {hops}"
    assert parse_qs(urlsplit(login_hops[0]).query).get("rd") == [PROTECTED], login_hops[0]
    auth = [u for u in hops if u.startswith(f"{idp.issuer}/auth")]
    assert auth, f"the browser never reached the IdP's authorization endpoint: {hops}"
    params = {k: v[0] for k, v in parse_qs(urlsplit(auth[0]).query).items()}
    assert params.get("response_type") == "code", params
    assert params.get("client_id") == "hfgate-web", params
    assert params.get("redirect_uri") == f"{gate.url}/.hfgate/callback", params
    assert params.get("code_challenge_method") == "S256", params
    assert len(params.get("code_challenge", "")) == 43, "an S256 challenge is 43 base64url characters"
    assert params.get("state") and params.get("nonce"), params
    assert "openid" in params.get("scope", "").split(), params

    assert back["url"] == gate.url + PROTECTED, back["url"]
    assert any(h["url"].startswith(f"{gate.url}/.hfgate/callback?") for h in back["history"]), back["history"]
    headers = echoed_headers(back)
    assert headers.get("x-forwarded-user") == "alice", headers
    assert headers.get("x-forwarded-email") == ALICE["email"], headers
    assert headers.get("x-forwarded-groups") == "ml-research", headers
    assert headers.get("authorization") == f"Bearer {HF_TOKEN_VALUE}", "the upstream gets the organisation's credential"

    # The session cookie: HttpOnly, SameSite=Lax, host-only on the gate, not Secure on http.
    session = cookie(jar["cookies"], SESSION_COOKIE)
    names = [c["name"] for c in jar["cookies"]]
    assert session is not None, f"no {SESSION_COOKIE!r} cookie after the callback: {names}"
    assert session["httpOnly"] is True, session
    assert session["sameSite"] == "Lax", session
    assert session["path"] == "/", session
    assert session["secure"] is False, "public_url is http"
    assert session["domain"] == "127.0.0.1", session
    session_value = session["value"]
    for name, value in headers.items():
        assert session_value not in value, f"hfgate's session cookie reached the upstream in {name}"

    # The audit line of the browser's request names alice.
    event = audit_for(
        gate,
        lambda e: e["method"] == "GET" and e["path"].startswith("/tgi/echo/x") and e["status"] == 200,
        "the browser's GET /tgi/echo/x",
    )
    assert event["route"] == "tgi"
    assert_is_alice(event.get("identity"), idp.issuer)

    # 3. whoami, in the browser (HTML) and as JSON with the session cookie.
    [whoami, _] = browser.run(
        {"op": "goto", "url": f"{gate.url}/.hfgate/whoami"}, {"op": "screenshot", "name": "whoami.png"}
    )
    assert whoami["status"] == 200, whoami
    assert whoami["url"] == f"{gate.url}/.hfgate/whoami", "a signed-in browser is not sent to sign in again"
    assert "alice" in whoami["text"] and "ml-research" in whoami["text"], whoami["text"]
    assert f"hfgate login --server {gate.url}" in whoami["text"], whoami["text"]
    assert "export HF_TOKEN=$(hfgate token)" in whoami["text"], whoami["text"]
    res = httpx.get(
        f"{gate.url}/.hfgate/whoami",
        headers={"Accept": "application/json"},
        cookies={SESSION_COOKIE: session_value},
        timeout=10,
    )
    assert res.status_code == 200, f"{res.status_code} {res.text}"
    me = res.json()
    assert me["subject"] == "alice" and me["email"] == ALICE["email"], me
    assert me["issuer"] == idp.issuer, me
    assert me["groups"] == ["ml-research"], me
    # Checked last, so that one field's shape does not hide the rest of the flow.
    whoami_json = me
    assert any(r.get("route") == "tgi" for r in me.get("routes", [])), me

    # 4. An API client on the same route gets 401, not a redirect; so does a browser's POST.
    for headers_sent in ({}, {"Accept": "application/json"}):
        res = httpx.get(gate.url + PROTECTED, headers=headers_sent, timeout=10, follow_redirects=False)
        assert res.status_code == 401, f"Accept {headers_sent}: {res.status_code} {res.headers} {res.text[:300]}"
    res = httpx.post(f"{gate.url}/tgi/echo/x", headers={"Accept": "text/html"}, timeout=10, follow_redirects=False)
    assert res.status_code == 401, f"a POST is never redirected: {res.status_code} {res.headers}"
    res = httpx.get(f"{gate.url}/.hfgate/whoami", headers={"Accept": "application/json"}, timeout=10)
    assert res.status_code == 401, f"whoami without a session: {res.status_code}"

    # 5. Sign out: the gate clears its cookie and sends the browser to the IdP's end_session_endpoint,
    #    which comes back to /.hfgate/signed-out.
    [at_idp, _, signed_out, _, jar_after] = browser.run(
        {"op": "goto", "url": f"{gate.url}/.hfgate/logout"},
        {"op": "screenshot", "name": "idp-sign-out.png"},
        {"op": "confirm_logout", "until": f"{gate.url}/.hfgate/signed-out"},
        {"op": "screenshot", "name": "signed-out.png"},
        {"op": "cookies"},
    )
    end_session = [h["url"] for h in at_idp["history"] if h["url"].startswith(f"{idp.issuer}/session/end")]
    assert end_session, f"/.hfgate/logout did not lead to the IdP's end_session_endpoint: {at_idp['history']}"
    logout_params = {k: v[0] for k, v in parse_qs(urlsplit(end_session[0]).query).items()}
    assert logout_params.get("client_id") == "hfgate-web", logout_params
    assert logout_params.get("post_logout_redirect_uri") == f"{gate.url}/.hfgate/signed-out", logout_params
    assert signed_out["url"] == f"{gate.url}/.hfgate/signed-out", signed_out["url"]
    assert signed_out["status"] == 200, signed_out
    assert "you are signed out" in signed_out["text"].lower(), signed_out["text"]
    assert "/.hfgate/login" in (signed_out["body"] or ""), "the signed-out page links to /.hfgate/login"
    left = cookie(jar_after["cookies"], SESSION_COOKIE)
    assert left is None or left["value"] == "", f"the session cookie survived the logout: {left}"

    # 6. After logout the protected page asks to sign in again (the IdP's session is gone too).
    [again] = browser.run({"op": "goto", "url": gate.url + PROTECTED}, {"op": "expect_sign_in"})[:1]
    assert again["url"].startswith(f"{idp.issuer}/interaction/"), again["url"]

    secrets = {"session cookie": session_value, "web client secret": WEB_CLIENT_SECRET, "cookie key": stack.cookie_key}
    for what, value in secrets.items():
        assert_secret_nowhere(gate, what, value)

    session_info = whoami_json.get("session")
    assert isinstance(session_info, dict) and session_info.get("expires_at"), (
        f'whoami JSON of a browser session: expected "session": {{"expires_at": ...}}, got {whoami_json}'
    )


def test_browser_user_without_a_rule_is_refused(start_login_stack: LoginStackFactory, browser: Browser) -> None:
    stack = start_login_stack(RULES)
    gate = stack.gate
    [_, back] = browser.run(
        {"op": "goto", "url": gate.url + PROTECTED},
        {"op": "sign_in", "user": "bob", "password": "builder", "until": f"{gate.url}/tgi/"},
    )
    assert back["url"] == gate.url + PROTECTED, back["url"]
    assert back["status"] == 403, f"bob (support) has no rule for the tgi route: {back['status']} {back['text'][:500]}"

    event = audit_for(
        gate, lambda e: e["path"].startswith("/tgi/echo/x") and e["status"] == 403, "bob's refused request"
    )
    who = event.get("identity") or {}
    assert who.get("subject") == "bob" and who.get("email") == BOB["email"], event
    assert event["decision"]["allow"] is False, event

    # whoami still tells bob who he is and what he may not use.
    [whoami] = browser.run({"op": "goto", "url": f"{gate.url}/.hfgate/whoami"})
    assert whoami["status"] == 200 and "bob" in whoami["text"] and "support" in whoami["text"], whoami["text"]


def test_login_endpoint_refuses_foreign_redirects(start_login_stack: LoginStackFactory) -> None:
    stack = start_login_stack(RULES)
    gate = stack.gate
    with httpx.Client(timeout=10, follow_redirects=False) as client:
        for rd in ("https://evil.example/", "//evil.example/x", "http://127.0.0.2:1/x", "javascript:alert(1)"):
            res = client.get(f"{gate.url}/.hfgate/login", params={"rd": rd})
            assert res.status_code == 400, f"rd={rd!r}: {res.status_code} {res.headers.get('location')}"
        res = client.get(f"{gate.url}/.hfgate/login", params={"rd": gate.url + PROTECTED})
        assert res.status_code == 302, f"an absolute rd on the gate's origin: {res.status_code} {res.text[:300]}"
        res = client.get(f"{gate.url}/.hfgate/login", params={"rd": PROTECTED})
        assert res.status_code == 302, res.text
        location = res.headers["location"]
        assert location.startswith(f"{stack.idp.issuer}/auth?"), f"not the IdP's authorization_endpoint: {location}"
        state = next((c for c in res.cookies.jar if c.name == LOGIN_COOKIE), None)
        assert state is not None, f"no {LOGIN_COOKIE} cookie: {res.headers.get_list('set-cookie')}"
        set_cookie = [h for h in res.headers.get_list("set-cookie") if h.startswith(f"{LOGIN_COOKIE}=")]
        assert set_cookie and "httponly" in set_cookie[0].lower(), set_cookie


# --------------------------------------------------------------------------
# the CLI's device flow
# --------------------------------------------------------------------------


def start_cli_login(procs: Procs, hfgate_bin: Path, gate: Gate, env: dict[str, str]) -> tuple[Any, str, str]:
    """`hfgate login --server URL --no-browser`; the URL and code it prints on stderr."""
    require_subcommand(hfgate_bin, "login")
    proc = procs.start("hfgate-login", [hfgate_bin, "login", "--server", gate.url, "--no-browser"], env=env)

    def prompt() -> tuple[str, str] | None:
        err = proc.stderr()
        url = re.search(r"^Sign in at: (\S+)\s*$", err, re.MULTILINE)
        code = re.search(r"^Code: (\S+)\s*$", err, re.MULTILINE)
        return (url.group(1), code.group(1)) if url and code else None

    what = "`Sign in at: URL` and `Code: CODE` on hfgate login's stderr"
    url, code = wait_until(prompt, what, timeout=20, watch=(proc,))
    return proc, url, code


def find_values(obj: Any, key: str) -> list[Any]:
    """Every value stored under `key`, at any depth."""
    found = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            found += [v] if k == key else find_values(v, key)
    elif isinstance(obj, list):
        for v in obj:
            found += find_values(v, key)
    return found


def wait_exit(proc: Any, what: str, timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while proc.alive():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} still running after {timeout:.0f}s; stderr:\n{proc.stderr()}")
        time.sleep(0.1)
    return proc.returncode()


def hfgate_cli(hfgate_bin: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(hfgate_bin), *args], env=env, capture_output=True, text=True, timeout=30)


def test_device_flow_token_feeds_huggingface_hub(
    start_login_stack: LoginStackFactory, browser: Browser, procs: Procs, hfgate_bin: Path, tmp_path: Path
) -> None:
    stack = start_login_stack(RULES)
    gate, idp = stack.gate, stack.idp
    config_home, home = tmp_path / "xdg", tmp_path / "home"
    home.mkdir()
    env = cli_env(config_home, home)

    # What `hfgate login` is told by the gate: no secret.
    res = httpx.get(f"{gate.url}/.hfgate/cli-config", timeout=10)
    assert res.status_code == 200, res.text
    cli_config = res.json()
    assert cli_config["server"] == gate.url, cli_config
    assert cli_config["issuer"] == idp.issuer, cli_config
    assert cli_config["scopes"] == ["openid", "email", "groups", "offline_access"], cli_config
    assert cli_config["client_id"] == "hfgate-cli", cli_config
    assert cli_config["parameters"] == {"resource": AUDIENCE}, cli_config
    assert cli_config["token"] == "access_token", cli_config
    assert WEB_CLIENT_SECRET not in res.text

    login, url, code = start_cli_login(procs, hfgate_bin, gate, env)
    assert url.startswith(f"{idp.issuer}/device"), url
    [approved] = browser.run({"op": "approve_device", "url": url, "code": code, "user": "alice", "password": "pw"})
    assert "signed in" in approved["text"].lower(), approved["text"]

    status = wait_exit(login, "hfgate login")
    assert status == 0, f"hfgate login exited {status}: {login.stderr()}"
    assert f"Signed in to {gate.url} as {ALICE['email']}" in login.stderr(), login.stderr()

    creds = config_home / "hfgate" / "credentials.json"
    assert creds.exists(), f"no {creds}: {sorted(str(p) for p in config_home.rglob('*'))}"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600, oct(creds.stat().st_mode)
    assert stat.S_IMODE(creds.parent.stat().st_mode) == 0o700, oct(creds.parent.stat().st_mode)
    assert gate.url in creds.read_text(), "credentials.json has an entry for the server"

    # HF_TOKEN=$(hfgate token)
    out = hfgate_cli(hfgate_bin, env, "token")
    assert out.returncode == 0, f"hfgate token exited {out.returncode}: {out.stderr}"
    assert out.stdout.endswith("\n") and out.stdout.count("\n") == 1, repr(out.stdout)
    token = out.stdout.strip()
    _head, claims = jwt_parts(token)
    assert claims["aud"] == AUDIENCE and claims["iss"] == idp.issuer, claims
    assert claims["sub"] == "alice" and claims.get("email") == ALICE["email"], claims
    assert claims.get("groups") == ALICE["groups"], claims
    named = hfgate_cli(hfgate_bin, env, "token", "--server", gate.url)
    assert named.stdout.strip() == token, f"--server names the same entry: {named.stderr}"

    # An unmodified huggingface_hub client picks HF_TOKEN up from the environment.
    program = (
        "import os, sys\n"
        "from huggingface_hub import InferenceClient\n"
        "client = InferenceClient(base_url=sys.argv[1], timeout=30)\n"
        f"out = client.chat_completion(messages={MESSAGES!r}, max_tokens=16)\n"
        "print(out.choices[0].message.content)\n"
    )
    child_env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_IMPLICIT_TOKEN"}
    child_env["HF_TOKEN"] = token
    chat = subprocess.run(
        [sys.executable, "-c", program, f"{gate.url}/tgi"], env=child_env, capture_output=True, text=True, timeout=60
    )
    assert chat.returncode == 0, f"InferenceClient.chat_completion failed:\n{chat.stderr[-3000:]}"
    assert chat.stdout.strip(), "the chat completion carried no text"

    event = audit_for(
        gate,
        lambda e: e["method"] == "POST" and e["path"] == "/tgi/v1/chat/completions",
        "the InferenceClient's chat completion",
    )
    assert event["status"] == 200, event
    assert event["action"] == "infer", event
    assert_is_alice(event.get("identity"), idp.issuer)
    assert event["identity"].get("client_id") == "hfgate-cli", event["identity"]

    # Sign out: the token is gone, and the refresh token is revoked at the IdP (it has a revocation_endpoint).
    refresh_tokens = find_values(json.loads(creds.read_text()), "refresh_token")
    assert len(refresh_tokens) == 1, "credentials.json keeps one refresh token (offline_access was asked for)"
    out = hfgate_cli(hfgate_bin, env, "logout")
    assert out.returncode == 0, f"hfgate logout exited {out.returncode}: {out.stderr}"
    out = hfgate_cli(hfgate_bin, env, "token")
    assert out.returncode != 0, f"hfgate token after logout printed {out.stdout!r}"
    assert out.stdout.strip() == "", "no token on stdout after logout"
    assert out.stderr.strip(), "hfgate token says why it failed"
    res = httpx.post(
        f"{idp.issuer}/token",
        data={"grant_type": "refresh_token", "client_id": "hfgate-cli", "refresh_token": refresh_tokens[0]},
        timeout=10,
    )
    assert res.status_code == 400 and res.json().get("error") == "invalid_grant", (
        f"the refresh token still works after hfgate logout: {res.status_code} {res.text[:300]}"
    )

    assert_secret_nowhere(gate, "CLI access token", token)

    # whoami with the bearer token (still valid: a JWT outlives the CLI's logout): no session.
    as_bearer = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    res = httpx.get(f"{gate.url}/.hfgate/whoami", headers=as_bearer, timeout=10)
    assert res.status_code == 200, f"{res.status_code} {res.text}"
    me = res.json()
    assert me["subject"] == "alice" and me["groups"] == ALICE["groups"], me
    assert "session" in me and me["session"] is None, (
        f'whoami JSON of a bearer token: expected "session": null, got {me}'
    )


def test_device_flow_refreshes_a_token_about_to_expire(
    start_login_stack: LoginStackFactory, browser: Browser, procs: Procs, hfgate_bin: Path, tmp_path: Path
) -> None:
    """Access tokens live 30 s at this IdP: `hfgate token` refreshes each time (it does within 60 s of expiry)."""
    stack = start_login_stack(RULES, idp_args=("--token-ttl", "30"))
    gate, idp = stack.gate, stack.idp
    env = cli_env(tmp_path / "xdg", tmp_path)

    login, url, code = start_cli_login(procs, hfgate_bin, gate, env)
    browser.run({"op": "approve_device", "url": url, "code": code, "user": "alice", "password": "pw"})
    assert wait_exit(login, "hfgate login") == 0, login.stderr()
    stored = (tmp_path / "xdg" / "hfgate" / "credentials.json").read_text()

    grants_before = idp.proc.stderr().count("idp: POST /token 200")
    out = hfgate_cli(hfgate_bin, env, "token")
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip()
    assert token and token not in stored, "hfgate token refreshed the token that expires within 60 s"
    assert idp.proc.stderr().count("idp: POST /token 200") > grants_before, "no refresh request reached the IdP"
    _head, claims = jwt_parts(token)
    assert claims["sub"] == "alice" and claims["aud"] == AUDIENCE, claims
    assert claims["exp"] > time.time(), claims

    res = httpx.get(f"{gate.url}/tgi/echo/x", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert res.status_code == 200, f"the refreshed token is refused: {res.status_code} {res.text}"
    assert {k.lower(): v for k, v in res.json()["headers"].items()}.get("x-forwarded-user") == "alice"


def test_device_flow_denied_exits_1(
    start_login_stack: LoginStackFactory, browser: Browser, procs: Procs, hfgate_bin: Path, tmp_path: Path
) -> None:
    gate = start_login_stack(RULES).gate
    env = cli_env(tmp_path / "xdg", tmp_path)
    login, url, code = start_cli_login(procs, hfgate_bin, gate, env)
    browser.run({"op": "approve_device", "url": url, "code": code, "deny": True})
    status = wait_exit(login, "hfgate login after the user aborted")
    assert status == 1, f"hfgate login exited {status}: {login.stderr()}"
    assert "denied" in login.stderr().lower() or "access_denied" in login.stderr(), login.stderr()
    out = hfgate_cli(hfgate_bin, env, "token")
    assert out.returncode != 0 and not out.stdout.strip(), f"a token after a denied login: {out.stdout!r}"
