"""Processes, peers and small helpers shared by the hfgate end-to-end tests."""

from __future__ import annotations

import base64
import ctypes
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

E2E_DIR = Path(__file__).resolve().parent.parent
REPO_DIR = E2E_DIR.parent
IDP_DIR = E2E_DIR / "idp"
IDP_SCRIPT = IDP_DIR / "idp.mjs"
BROWSER_SCRIPT = IDP_DIR / "browser.mjs"
CHROMIUM = Path(os.environ.get("HFGATE_E2E_CHROMIUM", "/usr/bin/chromium"))

# The organisation's upstream credential, known only to hfgate. Random per run
# so that finding it anywhere it should not be is meaningful.
HF_TOKEN_VALUE = "hf_e2e_upstream_secret_" + secrets.token_hex(12)

AUDIENCE = "urn:hfgate"
OTHER_AUDIENCE = "urn:other"
CHUNK_DELAY = "300ms"
MODEL = "demo/tiny-chat"


def _die_with_parent() -> None:
    """In the child before exec: get SIGKILL if the test runner dies (Linux)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Proc:
    """One child process, its own process group, output captured to files.

    Children die with the test runner even when it is killed without running teardown.
    """

    def __init__(self, name: str, argv: list[str], logdir: Path, env: dict[str, str] | None) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.stdout_path = logdir / f"{name}.stdout"
        self.stderr_path = logdir / f"{name}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                cwd=logdir,
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def returncode(self) -> int | None:
        return self.popen.poll()

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it if it lingers."""
        if self.popen.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=timeout)
        # Anything the child left behind in its group goes too.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class Procs:
    """The processes of one test (or one session); all stopped at teardown."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.all: list[Proc] = []
        self._names: dict[str, int] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        n = self._names.get(name, 0) + 1
        self._names[name] = n
        unique = name if n == 1 else f"{name}.{n}"
        proc = Proc(unique, argv, self.logdir, env)
        self.all.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.all):
            proc.stop()


def tail(text: str, lines: int = 150) -> str:
    parts = text.splitlines()
    if len(parts) > lines:
        parts = [f"... ({len(parts) - lines} earlier lines cut)"] + parts[-lines:]
    return "\n".join(parts)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(count: int) -> list[int]:
    """`count` distinct free ports: the sockets stay bound until all are chosen (two free_port() calls in a
    row can return the same port)."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def wait_until(
    predicate: Callable[[], Any],
    what: str,
    timeout: float = 15.0,
    interval: float = 0.05,
    watch: tuple[Proc, ...] = (),
) -> Any:
    """Poll `predicate` until it returns a truthy value, within `timeout` seconds.

    Fails at once if a watched process exits first.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        for proc in watch:
            if not proc.alive():
                pytest.fail(f"{proc.name} exited with status {proc.returncode()} while waiting for {what}")
        try:
            value = predicate()
            if value:
                return value
        except Exception as err:  # noqa: BLE001 - polled again until the deadline
            last_error = err
        if time.monotonic() >= deadline:
            detail = f"; last error: {last_error!r}" if last_error else ""
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return None


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and payload of a JWS compact token, unverified."""

    def seg(s: str) -> dict[str, Any]:
        return json.loads(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)))

    head, payload, _sig = token.split(".")
    return seg(head), seg(payload)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def metric_samples(text: str) -> list[tuple[str, str, float]]:
    """(name, labels, value) of every sample in a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m:
            try:
                samples.append((m.group(1), m.group(2) or "", float(m.group(3))))
            except ValueError:
                continue
    return samples


class IdP:
    """oidc-provider, started by e2e/idp/idp.mjs."""

    def __init__(self, procs: Procs, node: str) -> None:
        self.procs = procs
        self.node = node
        self.proc: Proc | None = None
        self.port = 0
        self.issuer = ""
        self.extra_args: list[str] = []

    def start(self, keys: Path, sign_kid: str, port: int | None = None, extra_args: list[str] | None = None) -> IdP:
        """`extra_args`: more options of idp.mjs (`--hfgate-url URL`, `--token-ttl N`), kept for restarts."""
        if extra_args is not None:
            self.extra_args = list(extra_args)
        argv = [self.node, str(IDP_SCRIPT), "--port", str(port if port is not None else self.port)]
        argv += ["--keys", str(keys), "--sign-kid", sign_kid, *self.extra_args]
        proc = self.procs.start("idp", argv)

        def ready() -> str | None:
            for line in proc.stdout().splitlines():
                if line.startswith("ready "):
                    return line.split(" ", 1)[1].strip()
            return None

        issuer = wait_until(ready, "the IdP's ready line", timeout=20, watch=(proc,))
        self.proc = proc
        self.issuer = issuer
        self.port = int(issuer.rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None

    def restart(self, keys: Path, sign_kid: str) -> IdP:
        """Same port, same issuer, other keys."""
        self.stop()
        return self.start(keys, sign_kid, port=self.port)

    def token_response(
        self,
        client: str = "ci-bot",
        resource: str | None = AUDIENCE,
        scope: str | None = "infer",
    ) -> httpx.Response:
        secret = f"{client}-secret"
        form = {"grant_type": "client_credentials"}
        if resource is not None:
            form["resource"] = resource
        if scope is not None:
            form["scope"] = scope
        auth = None
        if client == "ci-bot":  # registered with client_secret_post
            form.update(client_id=client, client_secret=secret)
        else:  # client_secret_basic
            auth = (client, secret)
        return httpx.post(f"{self.issuer}/token", data=form, auth=auth, timeout=10)

    def token(self, client: str = "ci-bot", resource: str | None = AUDIENCE, scope: str | None = "infer") -> str:
        res = self.token_response(client, resource, scope)
        assert res.status_code == 200, f"token request failed: {res.status_code} {res.text}"
        return res.json()["access_token"]


_SUBCOMMANDS: dict[tuple[Path, str], bool] = {}


def require_subcommand(binary: Path, name: str) -> None:
    """Fail unless `hfgate NAME --help` succeeds (hidden subcommands count too)."""
    key = (binary, name)
    if key not in _SUBCOMMANDS:
        res = subprocess.run([str(binary), name, "--help"], capture_output=True, text=True, timeout=30)
        _SUBCOMMANDS[key] = res.returncode == 0
        if res.returncode != 0:
            pytest.fail(f"`{binary} {name} --help` exited {res.returncode}: no `{name}` subcommand?\n{res.stderr}")
    if not _SUBCOMMANDS[key]:
        pytest.fail(f"`{binary}` has no `{name}` subcommand")


def hfgate_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["HF_TOKEN"] = HF_TOKEN_VALUE
    env.setdefault("RUST_BACKTRACE", "1")
    if extra:
        env.update(extra)
    return env


@dataclass
class Upstream:
    url: str
    proc: Proc


def start_mock_upstream(
    procs: Procs, binary: Path, chunk_delay: str = CHUNK_DELAY, expect_credential: bool = False
) -> Upstream:
    """`hfgate mock-upstream` (model shapes, `/echo` and a Hub-shaped API) on a free port.

    With `expect_credential`, it refuses (401) any request not carrying `Authorization: Bearer $HF_TOKEN`.
    """
    require_subcommand(binary, "mock-upstream")
    for _attempt in range(3):
        port = free_port()
        argv = [binary, "mock-upstream", "--listen", f"127.0.0.1:{port}", "--chunk-delay", chunk_delay]
        if expect_credential:
            argv += ["--expect-credential-env", "HF_TOKEN"]
        proc = procs.start("mock-upstream", argv, env=hfgate_env())
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.alive():
            if http_status(f"{url}/health", timeout=1) == 200:
                return Upstream(url, proc)
            time.sleep(0.05)
        if proc.alive():
            pytest.fail(f"mock upstream on {url} did not answer GET /health 200 within 15s")
        # It died (a port taken between free_port() and bind): try another port.
    pytest.fail("mock upstream exited three times before answering /health")


@dataclass
class Gate:
    url: str
    admin_url: str
    config_path: Path
    audit_path: Path
    proc: Proc
    env: dict[str, str] = field(default_factory=dict)

    def audit(self) -> list[dict[str, Any]]:
        return read_jsonl(self.audit_path)

    def wait_audit(self, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """Wait until the audit file holds `count` lines, then check no extra line follows."""
        wait_until(lambda: len(self.audit()) >= count, f"{count} audit lines in {self.audit_path}", timeout=timeout)
        time.sleep(0.3)
        return self.audit()

    def metrics(self) -> str:
        res = httpx.get(f"{self.admin_url}/metrics", timeout=5)
        assert res.status_code == 200, f"GET /metrics: {res.status_code} {res.text[:500]}"
        return res.text


GateFactory = Callable[..., Gate]


def server_header(port: int, admin_port: int, audit_path: Path) -> str:
    """The `[server]` and `[audit]` tables every gate config of this tier starts with."""
    return f"""\
[server]
listen = "127.0.0.1:{port}"
admin_listen = "127.0.0.1:{admin_port}"
public_url = "http://127.0.0.1:{port}"

[audit]
path = "{audit_path}"
"""


def gate_config(
    *,
    port: int,
    admin_port: int,
    audit_path: Path,
    issuer: str,
    upstream: str,
    issuer_extra: str = "",
    extra: str = "",
) -> str:
    return server_header(port, admin_port, audit_path) + f"""\

[[issuer]]
name = "oidc"
issuer = "{issuer}"
audiences = ["{AUDIENCE}"]
jwks_refetch_min_interval = "1s"
{issuer_extra}
[[route]]
name = "tgi"
path = "/tgi/"
upstream = "{upstream}"
api = "tgi"
model = "{MODEL}"
credential = "env:HF_TOKEN"
strip_prefix = true
{extra}"""


@dataclass
class Stack:
    idp: IdP
    upstream: Upstream
    gate: Gate


@dataclass
class Demo:
    url: str
    admin_url: str
    token: str
    proc: Proc


# --------------------------------------------------------------------------
# clients
# --------------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "Say hello to the gate, one word at a time."}]


@dataclass
class Streamed:
    """Content pieces of a streamed chat completion and when they arrived."""

    pieces: list[str]
    times: list[float]  # seconds since the request started, one per content piece
    chunks: list[Any]  # every chunk object, content or not

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def hf_stream_chat(base_url: str, token: str, timeout: float = 60.0) -> Streamed:
    """A streamed chat completion with huggingface_hub.InferenceClient."""
    from huggingface_hub import InferenceClient

    client = InferenceClient(base_url=base_url, api_key=token, timeout=timeout)
    started = time.monotonic()
    pieces, times, chunks = [], [], []
    for chunk in client.chat_completion(messages=MESSAGES, max_tokens=64, stream=True):
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            times.append(time.monotonic() - started)
    return Streamed(pieces, times, chunks)


def openai_client(base_url: str, token: str) -> Any:
    import openai

    return openai.OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=60.0)


def openai_stream_chat(base_url: str, token: str) -> Streamed:
    client = openai_client(base_url, token)
    started = time.monotonic()
    pieces, times, chunks = [], [], []
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=64, stream=True)
    for chunk in stream:
        chunks.append(chunk)
        if chunk.choices and chunk.choices[0].delta and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
            times.append(time.monotonic() - started)
    return Streamed(pieces, times, chunks)


def assert_streamed_progressively(s: Streamed, min_chunks: int = 5) -> None:
    """The first piece arrives well before the last: the proxy does not buffer the stream."""
    assert len(s.pieces) >= min_chunks, f"expected >= {min_chunks} content chunks, got {len(s.pieces)}: {s.pieces!r}"
    first, last = s.times[0], s.times[-1]
    assert first < 0.5 * last, (
        f"first chunk at {first:.3f}s, last at {last:.3f}s: the stream looks buffered "
        f"(arrival times {[round(t, 3) for t in s.times]})"
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def chat_body(stream: bool = False) -> dict[str, Any]:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": 16, "stream": stream}


def metrics_sum(text: str, *needles: str) -> tuple[float, list[str]]:
    """Sum of every sample whose metric name holds all `needles`; and those names."""
    total, names = 0.0, []
    for name, _labels, value in metric_samples(text):
        if all(n in name for n in needles):
            total += value
            names.append(name)
    return total, names


def tamper(token: str) -> str:
    """The same token with one signature byte changed."""
    head, payload, sig = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{payload}.{b64url(bytes(raw))}"


def with_payload(token: str, **changes: Any) -> str:
    """The token with payload claims changed and the original signature kept."""
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims.update(changes)
    return f"{head}.{b64url(json.dumps(claims).encode())}.{sig}"


def idp_jwks_hits(idp: IdP) -> int:
    """How many times the IdP's JWKS was fetched, over every run of it in this test."""
    return sum(
        1
        for proc in idp.procs.all
        if proc.name.split(".")[0] == "idp"
        for line in proc.stderr().splitlines()
        if line.startswith("idp: GET /jwks ")
    )


# --------------------------------------------------------------------------
# sign-in: the browser driver and a gate with [login]
# --------------------------------------------------------------------------

WEB_CLIENT_SECRET = "hfgate-web-secret"
ALICE = {"user": "alice", "email": "alice@example.com", "groups": ["ml-research"]}
BOB = {"user": "bob", "email": "bob@example.com", "groups": ["support"]}


class Browser:
    """Headless Chromium driven by e2e/idp/browser.mjs: one JSON request in, one JSON answer out.

    Runs share cookies through a storage-state file, so consecutive `run` calls act as one browser.
    A failing run fails the test with the driver's reason and the path of its screenshot.
    """

    def __init__(self, node: str, workdir: Path) -> None:
        self.node = node
        self.workdir = workdir
        self.state = workdir / "browser-state.json"
        self.artifacts = workdir / "browser"
        self.runs = 0

    def run(self, *steps: dict[str, Any], timeout: float = 60.0) -> list[dict[str, Any]]:
        self.runs += 1
        request = {
            "steps": list(steps),
            "state": str(self.state),
            "artifacts": str(self.artifacts),
            "chromium": str(CHROMIUM),
            "timeout_ms": 15000,
            "total_ms": int(timeout * 1000),
        }
        log = self.workdir / f"browser-run-{self.runs}.log"
        try:
            res = subprocess.run(
                [self.node, str(BROWSER_SCRIPT)],
                input=json.dumps(request),
                capture_output=True,
                text=True,
                timeout=timeout + 15,
                cwd=self.workdir,
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"the browser driver did not finish within {timeout + 15:.0f}s (steps: {list(steps)})")
        log.write_text(f"request: {json.dumps(request, indent=1)}\nstdout: {res.stdout}\nstderr: {res.stderr}\n")
        try:
            answer = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else None
        except json.JSONDecodeError:
            answer = None
        if answer is None:
            pytest.fail(
                f"the browser driver exited {res.returncode} without an answer; stderr:\n{tail(res.stderr, 40)}"
            )
        if res.returncode != 0 or not answer.get("ok"):
            step = answer.get("step")
            failed = steps[step] if isinstance(step, int) and 0 <= step < len(steps) else None
            pytest.fail(
                f"browser step {step} {json.dumps(failed)} failed: {answer.get('error')}\n"
                f"  at {answer.get('url')}\n  screenshot: {answer.get('screenshot')}\n  html: {answer.get('html')}\n"
                f"  log: {log}"
            )
        return answer["results"]


@dataclass
class LoginStack:
    idp: IdP
    upstream: Upstream
    gate: Gate
    cookie_key: str


LoginStackFactory = Callable[..., LoginStack]


def login_gate_config(
    *, port: int, admin_port: int, audit_path: Path, issuer: str, upstream: str, rules: str, login_extra: str = ""
) -> str:
    """hfgate with [login] (the IdP's hfgate-web and hfgate-cli clients) and a `tgi` route that redirects
    browsers to sign in. Secrets come from the environment (HFGATE_CLIENT_SECRET, HFGATE_COOKIE_KEY)."""
    return server_header(port, admin_port, audit_path) + f"""\

[[issuer]]
name = "corp"
issuer = "{issuer}"
audiences = ["{AUDIENCE}"]
jwks_refetch_min_interval = "1s"

[login]
issuer = "corp"
client_id = "hfgate-web"
client_secret = "${{HFGATE_CLIENT_SECRET}}"
scopes = ["openid", "email", "profile", "groups", "offline_access"]
cookie_keys = ["${{HFGATE_COOKIE_KEY}}"]
cli_client_id = "hfgate-cli"
cli_scopes = ["openid", "email", "groups", "offline_access"]
cli_parameters = {{ resource = "{AUDIENCE}" }}
cli_token = "access_token"
{login_extra}
[[route]]
name = "tgi"
path = "/tgi/"
upstream = "{upstream}"
api = "tgi"
model = "{MODEL}"
credential = "env:HF_TOKEN"
strip_prefix = true
login = "redirect"
{rules}"""


def cli_env(config_home: Path, home: Path) -> dict[str, str]:
    """The environment of `hfgate login|token|logout`: credentials under `config_home`, no browser to open."""
    env = dict(os.environ)
    for name in ("HFGATE_CONFIG_DIR", "BROWSER", "DISPLAY", "WAYLAND_DISPLAY", "HF_TOKEN"):
        env.pop(name, None)
    env["XDG_CONFIG_HOME"] = str(config_home)
    env["HOME"] = str(home)
    env.setdefault("RUST_BACKTRACE", "1")
    return env


# --------------------------------------------------------------------------
# workloads: a GitHub-Actions-shaped OIDC issuer, and a tap in front of the Hub mock
# --------------------------------------------------------------------------

GITHUB_REPOSITORY = "acme/models"
GITHUB_RUNTIME_TOKEN = "ghs_e2e_runtime_request_token_" + secrets.token_hex(8)


def github_claims(issuer: str, audience: str, **changes: Any) -> dict[str, Any]:
    """The claims of a GitHub Actions OIDC token (as GitHub documents them) for a push to main of
    `acme/models` in the `prod` environment; `changes` replace claims (`None` removes one). A different
    `repository` or `environment` also changes `sub`, `repository_owner` and the workflow refs to match."""
    repository = changes.get("repository") or GITHUB_REPOSITORY
    environment = changes.get("environment", "prod")
    owner = repository.split("/", 1)[0]
    ref = changes.get("ref") or "refs/heads/main"
    workflow_ref = f"{repository}/.github/workflows/release.yml@{ref}"
    sha = secrets.token_hex(20)
    now = int(time.time())
    claims: dict[str, Any] = {
        "jti": secrets.token_hex(16),
        "sub": f"repo:{repository}:environment:{environment}" if environment else f"repo:{repository}:ref:{ref}",
        "aud": audience,
        "ref": ref,
        "sha": sha,
        "repository": repository,
        "repository_owner": owner,
        "repository_owner_id": "81234567",
        "run_id": "9876543210",
        "run_number": "42",
        "run_attempt": "1",
        "repository_visibility": "private",
        "repository_id": "712345678",
        "actor_id": "583231",
        "actor": "octocat",
        "workflow": "release",
        "head_ref": "",
        "base_ref": "",
        "event_name": "push",
        "ref_protected": "true",
        "ref_type": "branch",
        "workflow_ref": workflow_ref,
        "workflow_sha": sha,
        "job_workflow_ref": workflow_ref,
        "job_workflow_sha": sha,
        "runner_environment": "github-hosted",
        "iss": issuer,
        "nbf": now,
        "exp": now + 300,
        "iat": now,
    }
    if environment:
        claims["environment"] = environment
    for name, value in changes.items():
        if name in ("repository", "environment", "ref"):
            continue
        if value is None:
            claims.pop(name, None)
        else:
            claims[name] = value
    return claims


class GitHubIssuer:
    """A GitHub-Actions-shaped OpenID Connect issuer in the test process (a thread on a loopback port).

    - `/.well-known/openid-configuration` and `/jwks`, as `https://token.actions.githubusercontent.com`
      serves them (issuer = this server's own `http://127.0.0.1:PORT`; RS256 key);
    - `mint(audience, **changes)`: a token with GitHub's claim set ([`github_claims`]);
    - the Actions runtime's id-token endpoint, `GET /token?audience=...` with
      `Authorization: Bearer <ACTIONS_ID_TOKEN_REQUEST_TOKEN>`, answering `{"value": <token for that
      audience>}`: what `huggingface_hub` calls when `GITHUB_ACTIONS=true`. `runtime_claims` are the
      `changes` it mints with (`{"repository": "evil/models"}` makes it a job of another repository).

    Every request is recorded in `requests` (method, path, query, headers) and every token minted in `minted`.
    """

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = b64url(secrets.token_bytes(20))
        self.request_token = GITHUB_RUNTIME_TOKEN
        self.runtime_claims: dict[str, Any] = {}
        self.requests: list[dict[str, Any]] = []
        self.minted: list[str] = []
        self._lock = threading.Lock()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                url = urlsplit(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                with issuer._lock:
                    issuer.requests.append(
                        {"method": "GET", "path": url.path, "query": query, "headers": dict(self.headers.items())}
                    )
                if url.path == "/.well-known/openid-configuration":
                    self._send(200, issuer.discovery())
                elif url.path == "/jwks":
                    self._send(200, issuer.jwks())
                elif url.path == "/token":
                    if self.headers.get("Authorization") != f"Bearer {issuer.request_token}":
                        self._send(401, {"message": "Bad credentials"})
                        return
                    # Without an audience, GitHub uses the repository owner's URL.
                    owner = (issuer.runtime_claims.get("repository") or GITHUB_REPOSITORY).split("/")[0]
                    audience = query.get("audience") or f"https://github.com/{owner}"
                    self._send(200, {"count": 2000, "value": issuer.mint(audience, **issuer.runtime_claims)})
                else:
                    self._send(404, {"message": "Not Found"})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.issuer = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="github-issuer", daemon=True)
        self._thread.start()

    @property
    def runtime_url(self) -> str:
        """ACTIONS_ID_TOKEN_REQUEST_URL: with a query of its own, as GitHub's has (`api-version`)."""
        return f"{self.issuer}/token?api-version=2.0"

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{self.issuer}/jwks",
            "subject_types_supported": ["public", "pairwise"],
            "response_types_supported": ["id_token"],
            "claims_supported": [
                "sub", "aud", "exp", "iat", "iss", "jti", "nbf", "ref", "sha", "repository", "repository_id",
                "repository_owner", "repository_owner_id", "run_id", "run_number", "run_attempt", "actor",
                "actor_id", "workflow", "workflow_ref", "workflow_sha", "head_ref", "base_ref", "event_name",
                "ref_type", "ref_protected", "environment", "job_workflow_ref", "job_workflow_sha",
                "repository_visibility", "runner_environment",
            ],  # fmt: skip
            "id_token_signing_alg_values_supported": ["RS256"],
            "scopes_supported": ["openid"],
        }

    def jwks(self) -> dict[str, Any]:
        numbers = self.key.public_key().public_numbers()

        def uint(n: int) -> str:
            return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))

        jwk = {"kty": "RSA", "alg": "RS256", "use": "sig", "kid": self.kid, "n": uint(numbers.n), "e": uint(numbers.e)}
        return {"keys": [jwk]}

    def sign(self, claims: dict[str, Any]) -> str:
        import jwt as pyjwt

        token = pyjwt.encode(claims, self.key, algorithm="RS256", headers={"kid": self.kid, "x5t": self.kid})
        with self._lock:
            self.minted.append(token)
        return token

    def mint(self, audience: str, **changes: Any) -> str:
        return self.sign(github_claims(self.issuer, audience, **changes))

    def runtime_requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["path"] == "/token"]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class HubTap:
    """A recording reverse proxy on a loopback port in front of the Hub mock: what the upstream received
    (method, path, headers) for every request hfgate sent, answered with the mock's own response."""

    def __init__(self, upstream: str) -> None:
        import http.client
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import urlsplit

        target = urlsplit(upstream)
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        tap = self
        hop = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items() if k.lower() not in hop}
                with tap._lock:
                    tap.requests.append(
                        {"method": self.command, "path": self.path, "headers": dict(self.headers.items())}
                    )
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    res = conn.getresponse()
                    data = res.read()
                    self.send_response(res.status, res.reason)
                    for name, value in res.getheaders():
                        if name.lower() not in hop and name.lower() != "content-length":
                            self.send_header(name, value)
                    if self.command == "HEAD":
                        self.send_header("Content-Length", res.getheader("Content-Length") or "0")
                        self.end_headers()
                    else:
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                finally:
                    conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = _forward  # noqa: N815

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, name="hub-tap", daemon=True)
        self._thread.start()

    def received(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.requests)

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_gate(
    procs: Procs,
    binary: Path,
    workdir: Path,
    render: Callable[[int, int, Path], str],
    env: dict[str, str] | None = None,
    *,
    wait_ready: bool = True,
    name: str = "serve",
    on_retry: Callable[[], None] | None = None,
) -> Gate:
    """`hfgate serve` with the config `render(port, admin_port, audit_path)` returns, answering /healthz and,
    unless `wait_ready` is false, ready (/readyz 200). The ports are chosen first, so a config can know the
    gate's own URL (an audience that is the gate, an IdP redirect URI); when another process takes a port
    before hfgate binds it, `on_retry` undoes what `render` started and the next attempt picks new ports."""
    require_subcommand(binary, "serve")
    full_env = hfgate_env(env)
    for attempt in range(3):
        port, admin_port = free_ports(2)
        config_path = workdir / f"hfgate-{name}-{attempt}.toml"
        audit_path = workdir / f"audit-{name}-{attempt}.jsonl"
        config_path.write_text(render(port, admin_port, audit_path))
        proc = procs.start("hfgate", [binary, "serve", "--config", config_path], env=full_env)
        gate = Gate(
            url=f"http://127.0.0.1:{port}",
            admin_url=f"http://127.0.0.1:{admin_port}",
            config_path=config_path,
            audit_path=audit_path,
            proc=proc,
            env=full_env,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.alive():
            if http_status(f"{gate.admin_url}/healthz", timeout=1) == 200:
                break
            time.sleep(0.05)
        if not proc.alive():
            if "in use" in proc.stderr().lower():
                if on_retry is not None:
                    on_retry()
                continue  # a port taken between free_port() and bind
            pytest.fail(f"hfgate serve exited with status {proc.returncode()} at start:\n{tail(proc.stderr(), 40)}")
        if http_status(f"{gate.admin_url}/healthz", timeout=1) != 200:
            pytest.fail("hfgate serve: GET /healthz on the admin listener did not answer 200 within 15s")
        if wait_ready:
            wait_until(
                lambda: http_status(f"{gate.admin_url}/readyz", timeout=1) == 200,
                "hfgate GET /readyz 200",
                timeout=15,
                watch=(proc,),
            )
        return gate
    pytest.fail("hfgate serve could not bind its ports in three attempts")
