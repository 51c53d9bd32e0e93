"""Link control API hardening: bad numbers, fixed keys, the bearer token, one error shape, and
``edgebed link show/set/proxy`` finding the running stack and failing with a message, not a
traceback."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import REPO, proxy_process
from prometheus_client import CollectorRegistry

from netem.proxy import serve_links

TOKEN = "s3cret-token"
CLI = [sys.executable, "-m", "orchestrator.cli", "link"]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _control(body: Any, token: str | None = None) -> Any:
    proxies = await serve_links({"a": {"target": "127.0.0.1:9", "rtt_range_ms": [5, 15]},
                                 "b": {"target": "127.0.0.1:9"}},
                                control="127.0.0.1:0", registry=CollectorRegistry(),
                                token=token)
    try:
        async with httpx.AsyncClient(base_url=proxies.control_url, timeout=10,
                                     trust_env=False) as c:
            return await body(c, proxies)
    finally:
        await proxies.close()


def _shape(r: httpx.Response) -> dict[str, Any]:
    """The shared error body (common.httperrors.error_body), checked."""
    body = r.json()
    assert set(body) == {"detail", "field", "errors"}, body
    assert isinstance(body["detail"], str) and body["errors"], body
    assert all(set(e) == {"field", "msg"} for e in body["errors"]), body
    return dict(body)


BAD_BODIES = [
    # (raw JSON body, field named, text in detail)
    ('{"rtt_range_ms": [0, 1e400]}', "rtt_range_ms[1]", "integer within 0..60000, got inf"),
    ('{"rtt_range_ms": [0, Infinity]}', "rtt_range_ms[1]", "got inf"),
    ('{"rtt_range_ms": [NaN, 5]}', "rtt_range_ms[0]", "got nan"),
    ('{"rtt_range_ms": [true, 5]}', "rtt_range_ms[0]", "got true"),
    ('{"rtt_range_ms": [0, ' + "9" * 500 + "]}", "rtt_range_ms[1]", "an integer of 500 digits"),
    ('{"rtt_range_ms": null}', "rtt_range_ms", "got null"),
    ('{"delay_ms": true}', "up.delay_ms", "must be a number within 0..60000, got true"),
    ('{"delay_ms": 1e400}', "up.delay_ms", "within 0..60000, got inf"),
    ('{"delay_ms": NaN}', "up.delay_ms", "got nan"),
    ('{"up": {"loss_pct": ' + "1" * 400 + "}}", "up.loss_pct", "an integer of 400 digits"),
    ('{"rate_mbit": false}', "up.rate_mbit", "got false"),
    ('{"up": {"delay_ms": 5, "jitter_ms": 6}}', "up.jitter_ms", "within 0..delay_ms (5)"),
    ('{"direction": ["up"], "delay_ms": 1}', "direction", "one of up, down, both"),
    ('{"up": 5}', "up", "must be an object"),
    ('{"target": "127.0.0.1:8003"}', "target", "target cannot change at run time"),
    ('{"listen": "127.0.0.1:0"}', "listen", "listen cannot change at run time"),
    ('{"src": "mcu"}', "src", "src cannot change at run time"),
    ('{"dst": "cloud", "delay_ms": 1}', "dst", "dst cannot change at run time"),
]


@pytest.mark.parametrize(("raw", "field", "text"), BAD_BODIES)
def test_bad_put_is_422_naming_the_field_and_changes_nothing(raw: str, field: str,
                                                             text: str) -> None:
    async def body(c: httpx.AsyncClient, proxies: Any) -> None:
        before = proxies.links["a"].spec
        r = await c.put("/v1/links/a", content=raw.encode(),
                        headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
        err = _shape(r)
        assert err["field"] == field, err
        assert text in err["detail"], err
        assert proxies.links["a"].spec == before
        assert proxies.links["a"].spec.target == "127.0.0.1:9"

    run(_control(body))


def test_every_error_has_the_shared_shape() -> None:
    async def body(c: httpx.AsyncClient, _: Any) -> None:
        r = await c.get("/v1/links/nope")
        assert r.status_code == 404
        assert _shape(r)["field"] == "name" and "links: a, b" in r.json()["detail"]
        r = await c.put("/v1/links/nope", json={"delay_ms": 1})
        assert r.status_code == 404 and _shape(r)["field"] == "name"
        r = await c.put("/v1/links/nope/fidelity", json={})
        assert r.status_code == 404 and _shape(r)["field"] == "name"
        r = await c.get("/v1/nothing-here")
        assert r.status_code == 404 and _shape(r)["field"] is None
        r = await c.delete("/v1/links/a")
        assert r.status_code == 405 and _shape(r)
        r = await c.put("/v1/links/a", content=b"{not json",
                        headers={"content-type": "application/json"})
        assert r.status_code == 400 and _shape(r)["field"] == "body"
        r = await c.put("/v1/links/a", json=[1, 2])  # FastAPI's own validation
        assert r.status_code == 422 and _shape(r)["field"] == "body"
        for bad, field in (({"n": True}, "n"), ({"ks_pvalue": 2}, "ks_pvalue"),
                           ({"achieved": {"mean_ms": "x"}}, "achieved.mean_ms"),
                           ({"achieved": [1]}, "achieved")):
            r = await c.put("/v1/links/a/fidelity", json=bad)
            assert r.status_code == 422 and _shape(r)["field"] == field, r.text
        r = await c.put("/v1/links/a/fidelity", content=b'{"ks_statistic": Infinity}',
                        headers={"content-type": "application/json"})
        assert r.status_code == 422 and _shape(r)["field"] == "ks_statistic"

    run(_control(body))


def test_token_guards_puts_and_leaves_gets_open() -> None:
    async def body(c: httpx.AsyncClient, proxies: Any) -> None:
        assert (await c.get("/v1/links")).status_code == 200
        assert (await c.get("/v1/links/a")).status_code == 200
        assert (await c.get("/metrics")).status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}):
            r = await c.put("/v1/links/a", json={"delay_ms": 1}, headers=headers)
            assert r.status_code == 401, (headers, r.text)
            assert _shape(r)["field"] == "authorization"
            assert r.headers["www-authenticate"] == "Bearer"
            r = await c.put("/v1/links/a/fidelity", json={"n": 1}, headers=headers)
            assert r.status_code == 401
        # no token: not even a hint whether the link or the body is good
        r = await c.put("/v1/links/nope", content=b"{not json")
        assert r.status_code == 401
        assert proxies.links["a"].spec.rtt_range_ms == (5, 15)
        ok = {"Authorization": f"Bearer {TOKEN}"}
        r = await c.put("/v1/links/a", json={"direction": "up", "delay_ms": 7}, headers=ok)
        assert r.status_code == 200 and r.json()["spec"]["up"]["delay_ms"] == 7
        r = await c.put("/v1/links/a/fidelity", json={"n": 1}, headers=ok)
        assert r.status_code == 200

    run(_control(body, token=TOKEN))


# ---- CLI -----------------------------------------------------------------------------------

def _cli(*args: str, env: dict[str, str] | None = None,
         cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=full,
                          cwd=cwd or REPO, timeout=120)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    f = tmp_path / "link-token"
    f.write_text(TOKEN + "\n")
    f.chmod(0o600)
    return f


@pytest.fixture
def token_proxy(token_file: Path) -> Iterator[dict[str, Any]]:
    with proxy_process({"device-edge": {"target": "127.0.0.1:9", "rtt_range_ms": [5, 15]}},
                       token_file=token_file) as ready:
        yield ready


def test_cli_set_uses_the_token_and_the_stack_state_file(token_proxy: dict[str, Any],
                                                         token_file: Path,
                                                         tmp_path: Path) -> None:
    control = token_proxy["control"]
    assert token_proxy["control_auth"] == "bearer token"
    empty = tmp_path / "nothing"
    empty.mkdir()
    no_stack = {"EDGEBED_STATE_DIR": str(empty), "EDGEBED_LINK_CONTROL": ""}
    out = _cli("set", "device-edge", "--control", control, "--delay-ms", "3", env=no_stack)
    assert out.returncode == 2 and "error (401)" in out.stderr, out.stderr
    assert "--token-file" in out.stderr
    out = _cli("set", "device-edge", "--control", control, "--token-file", str(token_file),
               "--direction", "down", "--delay-ms", "3", env=no_stack)
    assert out.returncode == 0, out.stderr
    # no --control: the running stack's state file (plain JSON) names the URL and token file
    state = tmp_path / "state"
    state.mkdir()
    (state / "stack.json").write_text(json.dumps({
        "link_control_urls": {"links": control}, "link_token_file": str(token_file)}))
    env = {"EDGEBED_STATE_DIR": str(state), "EDGEBED_LINK_CONTROL": "http://127.0.0.1:1"}
    out = _cli("set", "device-edge", "--direction", "down", "--delay-ms", "4", env=env)
    assert out.returncode == 0, out.stderr
    assert "down 4 ms" in out.stdout, out.stdout
    show = _cli("show", "--json", env=env)
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["device-edge"]["spec"]["down"]["delay_ms"] == 4
    # ./.edgebed/stack.json when $EDGEBED_STATE_DIR is unset
    (tmp_path / ".edgebed").mkdir()
    (tmp_path / ".edgebed" / "stack.json").write_text((state / "stack.json").read_text())
    env_cwd = {k: v for k, v in os.environ.items() if k != "EDGEBED_STATE_DIR"}
    out = subprocess.run([*CLI, "show"], capture_output=True, text=True, cwd=tmp_path,
                         env={**env_cwd, "PYTHONPATH": str(REPO)}, timeout=120)
    assert out.returncode == 0 and "device-edge" in out.stdout, out.stderr


def test_cli_says_what_is_missing_when_nothing_runs(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"EDGEBED_STATE_DIR": str(tmp_path), "EDGEBED_LINK_CONTROL": ""}
    for args in (("show",), ("set", "device-edge", "--delay-ms", "3")):
        out = _cli(*args, env={**env, "EDGEBED_LINK_CONTROL": f"http://127.0.0.1:{port}"})
        assert out.returncode in (1, 2)
        assert "Traceback" not in out.stderr
        assert f"no link proxy control API answers at http://127.0.0.1:{port} (from " \
               f"$EDGEBED_LINK_CONTROL)" in out.stderr, out.stderr
        out = _cli(*args, env=env)
        assert f"no stack state file at {tmp_path / 'stack.json'}" in out.stderr, out.stderr
    (tmp_path / "stack.json").write_text(json.dumps({"link_control_urls": {},
                                                     "link_backend": "tc"}))
    out = _cli("show", env=env)
    assert out.returncode == 2 and "runs no link proxy control API" in out.stderr, out.stderr
    (tmp_path / "stack.json").write_text("{half")
    out = _cli("show", env=env)
    assert out.returncode == 2 and f"stack state file {tmp_path / 'stack.json'}" in out.stderr


def test_cli_bad_yaml_and_busy_port_exit_2_without_traceback(tmp_path: Path,
                                                             token_file: Path) -> None:
    bad = tmp_path / "links.yaml"
    bad.write_text("links:\n  a: {target: 127.0.0.1:9\n")
    for args in (("show", "--config", str(bad)), ("proxy", "--config", str(bad))):
        out = _cli(*args)
        assert out.returncode == 2, out
        assert "Traceback" not in out.stderr
        assert f"{bad}: not valid YAML (line 3, column 1)" in out.stderr, out.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = tmp_path / "busy.yaml"
        cfg.write_text(f"links:\n  a: {{target: '127.0.0.1:9', listen: '127.0.0.1:{port}'}}\n")
        out = _cli("proxy", "--config", str(cfg))
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert f"links.a.listen: cannot listen on 127.0.0.1:{port}: Address already in use" \
               in out.stderr, out.stderr
        cfg.write_text("links:\n  a: {target: '127.0.0.1:9'}\n")
        out = _cli("proxy", "--config", str(cfg), "--control", f"127.0.0.1:{port}")
        assert out.returncode == 2 and "Traceback" not in out.stderr
        assert f"control: cannot listen on 127.0.0.1:{port}" in out.stderr, out.stderr
    loose = tmp_path / "loose-token"
    loose.write_text(TOKEN)
    loose.chmod(0o644)
    out = _cli("proxy", "--config", str(cfg), "--token-file", str(loose))
    assert out.returncode == 2 and "must be 0600" in out.stderr, out.stderr
    out = _cli("proxy", "--config", str(cfg), "--token-file", str(tmp_path / "missing"))
    assert out.returncode == 2 and "cannot read token file" in out.stderr, out.stderr
