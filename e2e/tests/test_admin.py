"""The admin listener and `hfgate check`."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx

from support import (
    GateFactory,
    IdP,
    Stack,
    Upstream,
    bearer,
    free_port,
    gate_config,
    hfgate_env,
    http_status,
    require_subcommand,
    wait_until,
)


def test_admin_endpoints(stack: Stack) -> None:
    admin = stack.gate.admin_url
    assert httpx.get(f"{admin}/healthz", timeout=5).status_code == 200
    assert httpx.get(f"{admin}/readyz", timeout=5).status_code == 200
    # One request so that request metrics exist.
    assert httpx.get(f"{stack.gate.url}/tgi/echo", headers=bearer(stack.idp.token()), timeout=10).status_code == 200
    res = httpx.get(f"{admin}/metrics", timeout=5)
    assert res.status_code == 200
    assert res.headers.get("content-type", "").startswith(("text/plain", "application/openmetrics-text"))
    assert re.search(r"^# TYPE \S+ (counter|gauge|histogram)", res.text, re.MULTILINE), res.text[:2000]

    # The admin endpoints are not on the proxy port.
    for path in ("/healthz", "/readyz", "/metrics"):
        assert httpx.get(f"{stack.gate.url}{path}", timeout=5).status_code != 200, path


def test_readyz_waits_for_the_issuers_keys(
    procs, node_bin: str, keyfiles: dict[str, Path], upstream: Upstream, start_gate: GateFactory
) -> None:
    """hfgate starts while the IdP is down: alive but not ready; ready once the IdP answers."""
    idp_port = free_port()
    gate = start_gate(f"http://127.0.0.1:{idp_port}", upstream.url, wait_ready=False)
    assert http_status(f"{gate.admin_url}/healthz") == 200
    assert http_status(f"{gate.admin_url}/readyz") == 503

    IdP(procs, node_bin).start(keyfiles["A"], "key-a", port=idp_port)
    wait_until(
        lambda: http_status(f"{gate.admin_url}/readyz", timeout=1) == 200,
        "GET /readyz 200 after the IdP came up",
        timeout=30,
        interval=0.2,
        watch=(gate.proc,),
    )


def run_check(hfgate_bin: Path, config: Path) -> subprocess.CompletedProcess[str]:
    require_subcommand(hfgate_bin, "check")
    return subprocess.run(
        [str(hfgate_bin), "check", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env=hfgate_env(),
    )


def write_config(tmp_path: Path, name: str, extra: str = "") -> Path:
    path = tmp_path / name
    path.write_text(
        gate_config(
            port=18080,
            admin_port=19090,
            audit_path=tmp_path / "audit.jsonl",
            issuer="http://127.0.0.1:18000",
            upstream="http://127.0.0.1:13000",
            extra=extra,
        )
    )
    return path


def test_check_accepts_a_valid_config(hfgate_bin: Path, tmp_path: Path) -> None:
    res = run_check(hfgate_bin, write_config(tmp_path, "good.toml"))
    assert res.returncode == 0, f"exit {res.returncode}\nstdout: {res.stdout}\nstderr: {res.stderr}"


def test_check_names_file_line_and_key_of_an_unknown_key(hfgate_bin: Path, tmp_path: Path) -> None:
    config = write_config(tmp_path, "bad.toml", 'upstream_timeout_typo = "5s"\n')
    line = next(i for i, text in enumerate(config.read_text().splitlines(), 1) if "upstream_timeout_typo" in text)
    res = run_check(hfgate_bin, config)
    assert res.returncode != 0, f"check accepted an unknown key\nstderr: {res.stderr}"
    expected = f"{config}:{line}: "
    assert expected in res.stderr, f"expected `{expected}...` in stderr, got:\n{res.stderr}"
    assert "upstream_timeout_typo" in res.stderr, res.stderr
