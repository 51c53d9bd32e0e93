"""start_tier / edgebed serve: readiness, clean stop (no stray process), start-up errors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest

from services.tier.process import TierProcess, TierStartError, start_tier


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0); check its state
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.usefixtures("need_models")
def test_start_ready_stop_leaves_no_process() -> None:
    with start_tier("cloud", device_time="real") as tp:
        pid = tp.pid
        assert httpx.get(f"{tp.url}/readyz").status_code == 200
        assert tp.rss_bytes() and tp.rss_bytes() > 10 * 2**20
    assert _gone(pid), f"tier process {pid} still running after stop()"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{tp.url}/healthz", timeout=1.0)


@pytest.mark.usefixtures("need_models")
@pytest.mark.parametrize("poll_us", [0, 200])
def test_both_event_loops_serve_and_stop_cleanly(poll_us: int) -> None:
    """poll_us 0: uvicorn's own loop (uvloop); > 0: the busy-polling epoll loop."""
    with start_tier("edge", device_time="real", config_overrides={"poll_us": poll_us}) as tp:
        pid = tp.pid
        r = httpx.post(f"{tp.url}/v1/infer?model=int8", content=bytes(784),
                       headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200 and 0 <= r.json()["prediction"] <= 9
        # graceful on SIGTERM (uvicorn re-raises the signal once shut down), never SIGKILL
        assert tp.stop() in (0, -signal.SIGTERM)
    assert _gone(pid)


def test_bad_config_fails_fast_with_the_servers_message() -> None:
    with pytest.raises(TierStartError) as err:
        start_tier("edge", config_overrides={"concurrency": 0}, ready_timeout_s=30)
    assert "concurrency: must be within 1..256, got 0" in str(err.value)


def test_cli_serve_refuses_bad_port_and_unknown_tier() -> None:
    run = [sys.executable, "-m", "services.tier"]
    r = subprocess.run([*run, "--tier", "edge", "--port", "70000"], capture_output=True, text=True)
    assert r.returncode == 2 and "--port must be within 1..65535" in r.stderr
    r = subprocess.run([*run, "--tier", "nope"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "class: required for node 'nope'" in r.stderr, r.stderr
    assert "mcu, edge, cloud, gpu, npu" in r.stderr, r.stderr
    r = subprocess.run([*run, "--tier", "nope", "--class", "tpu"], capture_output=True, text=True)
    assert r.returncode == 2, r.stderr
    assert "class: must be one of mcu, edge, cloud, gpu, npu, got 'tpu'" in r.stderr, r.stderr


def test_serve_is_registered_in_edgebed_cli() -> None:
    from orchestrator.cli import build_parser

    args = build_parser().parse_args(["serve", "--tier", "edge", "--port", "8001"])
    assert (args.tier, args.port, args.host) == ("edge", 8001, "127.0.0.1")


def test_two_tiers_on_free_ports(tier_factory: Callable[..., TierProcess]) -> None:
    a = tier_factory("mcu", device_time="real")
    b = tier_factory("mcu", device_time="real")
    assert a.port != b.port
    for tp in (a, b):
        assert httpx.get(f"{tp.url}/healthz").json()["tier"] == "mcu"
