"""`hfgate demo`: the printed token works with an unmodified Hugging Face client, and people sign in
as the banner says: a browser through the dev issuer's page, `hfgate login` with the device flow."""

from __future__ import annotations

import html
import re
import subprocess
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from support import MESSAGES, Demo, Procs, cli_env, hf_stream_chat, jwt_parts, wait_until

BROWSER_ACCEPT = "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
ALICE_EMAIL = "alice@demo.hfgate.dev"


def banner(demo: Demo, pattern: str) -> str:
    """The first group of `pattern` in the demo's banner."""
    found = re.search(pattern, demo.proc.stdout(), re.MULTILINE)
    assert found, f"{pattern!r} is not in the banner:\n{demo.proc.stdout()[:4000]}"
    return found.group(1)


def form(page: httpx.Response, form_id: str) -> tuple[str, dict[str, str]]:
    """The absolute action and the hidden fields of the page's form `form_id` (the dev issuer's pages are
    plain HTML forms, as a browser without script submits them)."""
    found = re.search(rf'<form method="post" action="([^"]+)" id="{form_id}">(.*?)</form>', page.text, re.DOTALL)
    assert found, f"no form {form_id!r} at {page.url}:\n{page.text[:3000]}"
    fields = {
        html.unescape(m.group(1)): html.unescape(m.group(2))
        for m in re.finditer(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', found.group(2))
    }
    return str(page.url.join(html.unescape(found.group(1)))), fields


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


def test_demo_browser_signs_in_at_the_dev_issuer_and_reaches_the_model_as_alice(demo: Demo) -> None:
    url = banner(demo, r"open (\S+) in a browser to sign in")
    assert url == f"{demo.url}/demo/", url
    issuer = banner(demo, r"^\s*dev issuer\s+(\S+)")

    # A cookie jar and redirects followed, as a browser does.
    with httpx.Client(follow_redirects=True, timeout=10, headers={"Accept": BROWSER_ACCEPT}) as browser:
        sign_in = browser.get(url)
        assert sign_in.status_code == 200, f"{sign_in.url}: {sign_in.status_code} {sign_in.text[:2000]}"
        hops = [str(r.url) for r in sign_in.history]
        assert any(h.startswith(f"{demo.url}/.hfgate/login?") for h in hops), hops
        assert str(sign_in.url).startswith(f"{issuer}/authorize?"), sign_in.url
        assert "Sign in to the hfgate demo as:" in sign_in.text, sign_in.text
        assert 'value="alice"' in sign_in.text and 'value="bob"' in sign_in.text, sign_in.text

        action, fields = form(sign_in, "sign-in")
        assert fields.get("code_challenge_method") == "S256", fields
        landed = browser.post(action, data={**fields, "user": "alice"})
        assert landed.status_code == 200, f"{landed.url}: {landed.status_code} {landed.text[:2000]}"
        assert str(landed.url) == url, [str(r.url) for r in landed.history] + [str(landed.url)]
        callbacks = [str(r.url) for r in landed.history if str(r.url).startswith(f"{demo.url}/.hfgate/callback?")]
        assert callbacks, [str(r.url) for r in landed.history]
        answer = parse_qs(urlsplit(callbacks[0]).query)
        assert answer.get("iss") == [issuer] and answer.get("code") and answer.get("state"), answer
        # The mock model's page names the identity hfgate forwarded.
        assert '<strong id="user">alice</strong>' in landed.text, landed.text
        assert ALICE_EMAIL in landed.text and "ml-research" in landed.text, landed.text

        who = browser.get(f"{demo.url}/.hfgate/whoami", headers={"Accept": "application/json"})
        assert who.status_code == 200, who.text
        me = who.json()
        assert me["subject"] == "alice", me
        assert me["email"] == ALICE_EMAIL, me
        assert me["groups"] == ["ml-research"], me
        assert me["issuer"] == issuer, me
        assert me["session"] is not None, "signed in with a browser session"
        page = browser.get(f"{demo.url}/.hfgate/whoami")
        assert page.status_code == 200 and "alice" in page.text and "ml-research" in page.text, page.text

    # API clients on the same route still need a bearer token: no redirect, a 401.
    api = httpx.get(f"{demo.url}/demo/info", headers={"Accept": "application/json"}, timeout=10)
    assert api.status_code == 401, f"{api.status_code} {api.text}"


def test_demo_cli_login_then_token_is_accepted(demo: Demo, procs: Procs, hfgate_bin: Path, tmp_path: Path) -> None:
    assert banner(demo, r"(hfgate login --server \S+)") == f"hfgate login --server {demo.url}"
    assert "export HF_TOKEN=$(hfgate token)" in demo.proc.stdout()
    env = cli_env(tmp_path / "config", tmp_path / "home")

    login = procs.start("hfgate-login", [hfgate_bin, "login", "--server", demo.url, "--no-browser"], env=env)
    printed = wait_until(
        lambda: re.search(r"^Sign in at: (\S+)\nCode: (\S+)$", login.stderr(), re.MULTILINE),
        "`Sign in at:` and `Code:` on hfgate login's stderr",
        timeout=20,
        watch=(login,),
    )
    address, code = printed.group(1), printed.group(2)
    issuer = banner(demo, r"^\s*dev issuer\s+(\S+)")
    assert address.startswith(f"{issuer}/device?"), address

    # The person approves the code at the dev issuer's page, as alice.
    with httpx.Client(follow_redirects=True, timeout=10) as browser:
        page = browser.get(address)
        assert page.status_code == 200, f"{page.status_code} {page.text[:2000]}"
        assert f'<strong id="user-code">{code}</strong>' in page.text, page.text
        action, fields = form(page, "approve")
        approved = browser.post(action, data={**fields, "user": "alice"})
        assert approved.status_code == 200 and "Signed in as alice" in approved.text, approved.text

    wait_until(lambda: not login.alive(), "hfgate login to finish after the approval", timeout=20)
    assert login.returncode() == 0, login.stderr()
    assert f"Signed in to {demo.url} as {ALICE_EMAIL}" in login.stderr(), login.stderr()

    res = subprocess.run([str(hfgate_bin), "token"], env=env, capture_output=True, text=True, timeout=20)
    assert res.returncode == 0, res.stderr
    token = res.stdout.strip()
    _, claims = jwt_parts(token)
    assert claims["sub"] == "alice" and claims["aud"] == "hfgate" and claims["iss"] == issuer, claims

    # HF_TOKEN=$(hfgate token) works with an unmodified client, and hfgate knows who it is.
    streamed = hf_stream_chat(f"{demo.url}/demo", token)
    assert streamed.pieces, f"no content chunk in {streamed.chunks!r}"
    who = httpx.get(
        f"{demo.url}/.hfgate/whoami",
        headers={"Accept": "application/json", "Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert who.status_code == 200, who.text
    assert who.json()["subject"] == "alice" and who.json()["session"] is None, who.json()
