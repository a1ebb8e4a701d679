"""Fixtures of the hfgate end-to-end tier.

Every peer is a real process on a loopback port: the oidc-provider IdP (node),
`hfgate mock-upstream`, `hfgate serve` and `hfgate demo`. Fixtures wait for
readiness with bounded polling, stop their processes at teardown, and attach
the processes' output to the report of a failing test. A missing peer fails
the test; nothing here skips.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from support import (
    BROWSER_SCRIPT,
    CHROMIUM,
    IDP_DIR,
    IDP_SCRIPT,
    REPO_DIR,
    WEB_CLIENT_SECRET,
    Browser,
    Demo,
    Gate,
    GateFactory,
    GitHubIssuer,
    IdP,
    LoginStack,
    LoginStackFactory,
    Procs,
    Stack,
    Upstream,
    free_ports,
    gate_config,
    hfgate_env,
    http_status,
    login_gate_config,
    require_subcommand,
    serve_gate,
    start_mock_upstream,
    tail,
    wait_until,
)

# Environment variables that would let a client pick up a credential or an
# endpoint other than the one a test hands it.
_SCRUBBED_ENV = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_API_TOKEN",
    "HF_ENDPOINT",
    "HF_INFERENCE_ENDPOINT",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "OPENAI_ORG_ID",
    "OPENAI_PROJECT_ID",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "HFGATE_TOKEN",
)


def pytest_configure(config: pytest.Config) -> None:
    for name in _SCRUBBED_ENV:
        os.environ.pop(name, None)
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["HF_HUB_DISABLE_IMPLICIT_TOKEN"] = "1"
    # A private, empty Hugging Face home: no stored token can leak in.
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="hfgate-e2e-hfhome-")


# --------------------------------------------------------------------------
# processes
# --------------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    procs: Procs | None = getattr(item, "_e2e_procs", None)
    if procs is None:
        return
    for proc in procs.all:
        state = "running" if proc.alive() else f"exited {proc.returncode()}"
        report.sections.append((f"{proc.name} ({state}) argv", " ".join(proc.argv)))
        out = proc.stdout()
        if out.strip():
            report.sections.append((f"{proc.name} stdout", tail(out)))
        report.sections.append((f"{proc.name} stderr", tail(proc.stderr())))


@pytest.fixture
def procs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Procs]:
    group = Procs(tmp_path)
    request.node._e2e_procs = group
    try:
        yield group
    finally:
        group.stop_all()


# --------------------------------------------------------------------------
# peers: node + the IdP, the hfgate binary
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def node_bin() -> str:
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: the IdP (oidc-provider) needs Node.js >= 20")
    if not (IDP_DIR / "node_modules" / "oidc-provider" / "package.json").exists():
        pytest.fail(f"oidc-provider is not installed in {IDP_DIR}/node_modules: run e2e/run.sh (npm ci)")
    return node


@pytest.fixture(scope="session")
def keyfiles(node_bin: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Private JWKS files: A (ES256), B (RS256), and BA = [B, A]."""
    d = tmp_path_factory.mktemp("idp-keys")
    for kid, alg in (("key-a", "ES256"), ("key-b", "RS256")):
        out = d / f"{kid}.json"
        res = subprocess.run(
            [node_bin, str(IDP_SCRIPT), "genkey", "--kid", kid, "--alg", alg, "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if res.returncode != 0:
            pytest.fail(f"idp.mjs genkey failed ({res.returncode}): {res.stderr}")
    a = json.loads((d / "key-a.json").read_text())
    b = json.loads((d / "key-b.json").read_text())
    (d / "key-ba.json").write_text(json.dumps({"keys": b["keys"] + a["keys"]}))
    return {"A": d / "key-a.json", "B": d / "key-b.json", "BA": d / "key-ba.json"}


@pytest.fixture
def idp(procs: Procs, node_bin: str, keyfiles: dict[str, Path]) -> IdP:
    """The IdP on a free port, signing with key A (ES256)."""
    return IdP(procs, node_bin).start(keyfiles["A"], "key-a", port=0)


@pytest.fixture(scope="session")
def hfgate_bin() -> Path:
    raw = os.environ.get("HFGATE_BIN") or str(REPO_DIR / "target" / "debug" / "hfgate")
    path = Path(raw)
    if not path.is_absolute():
        path = (Path.cwd() / path).resolve()
    if not path.exists():
        pytest.fail(f"hfgate binary not found at {path} (set HFGATE_BIN or build it)")
    if not os.access(path, os.X_OK):
        pytest.fail(f"hfgate binary at {path} is not executable")
    return path


# --------------------------------------------------------------------------
# hfgate: mock upstream, proxy, demo
# --------------------------------------------------------------------------


@pytest.fixture
def upstream(procs: Procs, hfgate_bin: Path) -> Upstream:
    return start_mock_upstream(procs, hfgate_bin)


@pytest.fixture
def start_gate(procs: Procs, hfgate_bin: Path, tmp_path: Path) -> GateFactory:
    """Start `hfgate serve` for an issuer and an upstream; wait for /readyz 200 unless told not to."""

    def start(
        issuer: str,
        upstream_url: str,
        *,
        wait_ready: bool = True,
        issuer_extra: str = "",
        extra: str = "",
        env: dict[str, str] | None = None,
    ) -> Gate:
        def render(port: int, admin_port: int, audit_path: Path) -> str:
            return gate_config(
                port=port,
                admin_port=admin_port,
                audit_path=audit_path,
                issuer=issuer,
                upstream=upstream_url,
                issuer_extra=issuer_extra,
                extra=extra,
            )

        return serve_gate(procs, hfgate_bin, tmp_path, render, env, wait_ready=wait_ready, name="gate")

    return start


@pytest.fixture
def stack(idp: IdP, upstream: Upstream, start_gate: GateFactory) -> Stack:
    """IdP (key A) + mock upstream + hfgate serve, ready."""
    gate = start_gate(idp.issuer, upstream.url)
    return Stack(idp=idp, upstream=upstream, gate=gate)


@pytest.fixture
def demo(procs: Procs, hfgate_bin: Path) -> Demo:
    require_subcommand(hfgate_bin, "demo")
    port, admin_port = free_ports(2)
    proc = procs.start(
        "hfgate-demo",
        [hfgate_bin, "demo", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin_port}"],
        env=hfgate_env(),
    )

    def token() -> str | None:
        m = re.search(r"^\s*export HFGATE_TOKEN=(\S+)\s*$", proc.stdout(), re.MULTILINE)
        return m.group(1).strip("'\"") if m else None

    tok = wait_until(token, "`export HFGATE_TOKEN=...` on hfgate demo's stdout", timeout=20, watch=(proc,))
    admin_url = f"http://127.0.0.1:{admin_port}"
    wait_until(
        lambda: http_status(f"{admin_url}/readyz", timeout=1) == 200,
        "hfgate demo GET /readyz 200",
        timeout=15,
        watch=(proc,),
    )
    return Demo(url=f"http://127.0.0.1:{port}", admin_url=admin_url, token=tok, proc=proc)


# --------------------------------------------------------------------------
# sign-in: a browser, and the IdP + hfgate with [login]
# --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser_ready(node_bin: str) -> str:
    """Chromium and playwright-core are there; the browser driver's node."""
    if not (IDP_DIR / "node_modules" / "playwright-core" / "package.json").exists():
        pytest.fail(f"playwright-core is not installed in {IDP_DIR}/node_modules: run e2e/run.sh (npm ci)")
    if not CHROMIUM.exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: apt-get install chromium (scripts/test.sh does), or set HFGATE_E2E_CHROMIUM"
        )
    if not BROWSER_SCRIPT.exists():
        pytest.fail(f"the browser driver {BROWSER_SCRIPT} is missing")
    return node_bin


@pytest.fixture
def browser(browser_ready: str, tmp_path: Path) -> Browser:
    """A fresh browser profile for this test; screenshots of failures go to tmp_path/browser/."""
    return Browser(browser_ready, tmp_path)


@pytest.fixture
def start_login_stack(
    procs: Procs, node_bin: str, keyfiles: dict[str, Path], hfgate_bin: Path, tmp_path: Path
) -> LoginStackFactory:
    """The IdP (knowing the gate's URL), the mock upstream and `hfgate serve` with [login], ready.

    The gate's port is chosen first, since the IdP registers {gate}/.hfgate/callback as a redirect URI.
    """

    def start(rules: str, *, idp_args: tuple[str, ...] = (), login_extra: str = "") -> LoginStack:
        upstream = start_mock_upstream(procs, hfgate_bin, chunk_delay="20ms", expect_credential=True)
        cookie_key = base64.b64encode(secrets.token_bytes(32)).decode()
        env = {"HFGATE_CLIENT_SECRET": WEB_CLIENT_SECRET, "HFGATE_COOKIE_KEY": cookie_key}
        started: list[IdP] = []

        def render(port: int, admin_port: int, audit_path: Path) -> str:
            # The IdP registers {gate}/.hfgate/callback, so it starts once the gate's port is known.
            idp = IdP(procs, node_bin).start(
                keyfiles["A"], "key-a", port=0, extra_args=["--hfgate-url", f"http://127.0.0.1:{port}", *idp_args]
            )
            started.append(idp)
            return login_gate_config(
                port=port,
                admin_port=admin_port,
                audit_path=audit_path,
                issuer=idp.issuer,
                upstream=upstream.url,
                rules=rules,
                login_extra=login_extra,
            )

        gate = serve_gate(procs, hfgate_bin, tmp_path, render, env, name="login", on_retry=lambda: started[-1].stop())
        return LoginStack(idp=started[-1], upstream=upstream, gate=gate, cookie_key=cookie_key)

    return start


# --------------------------------------------------------------------------
# workloads: a GitHub-Actions-shaped issuer, a gate whose config knows its own URL
# --------------------------------------------------------------------------


@pytest.fixture
def github_issuer() -> Iterator[GitHubIssuer]:
    """A GitHub-Actions-shaped OIDC issuer and Actions id-token runtime, on a loopback port in this process."""
    issuer = GitHubIssuer()
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture
def start_configured_gate(procs: Procs, hfgate_bin: Path, tmp_path: Path) -> GateFactory:
    """`hfgate serve` with a whole config rendered for its ports: `start(render, env=None)`, where
    `render(port, admin_port, audit_path)` returns the TOML. Waits for /readyz 200."""

    def start(render, env: dict[str, str] | None = None) -> Gate:  # noqa: ANN001 - Callable[[int, int, Path], str]
        return serve_gate(procs, hfgate_bin, tmp_path, render, env)

    return start
