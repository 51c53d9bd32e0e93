"""Live-test helpers: real tier servers (``services.tier.process.start_tier``) and link proxies
(``python -m netem.proxy``) on loopback, always torn down."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.paths import eval_set_path, models_dir

REPO_ROOT = Path(__file__).resolve().parents[2]
FAST_LM = {"ttft_ms": 2.0, "tpot_ms": 0.05}  # LM stubs answer in a few ms (real-mode test tiers)


def require_artifacts() -> None:
    missing = [
        str(p)
        for p in (
            models_dir() / "tinycnn.tflite",
            models_dir() / "int8.tflite",
            models_dir() / "fp32.tflite",
            eval_set_path(),
        )
        if not p.exists()
    ]
    if missing:
        pytest.skip(f"committed models / evaluation set not present yet: {', '.join(missing)}")


def start_tiers(
    device_time: str,
    overrides: dict[str, dict[str, Any]] | None = None,
    stack: ExitStack | None = None,
) -> dict[str, Any]:
    """MCU, EDGE, CLOUD tier processes; returns {"MCU": TierProcess, ...}."""
    from services.tier.process import start_tier

    require_artifacts()
    out = {}
    assert stack is not None
    for tier in ("mcu", "edge", "cloud"):
        cfg = (overrides or {}).get(tier)
        out[tier.upper()] = stack.enter_context(
            start_tier(tier, device_time=device_time, config_overrides=cfg, ready_timeout_s=60)
        )
    return out


@contextmanager
def link_proxy(links: dict[str, dict[str, Any]], seed: int = 5) -> Iterator[dict[str, str]]:
    """Run ``python -m netem.proxy`` for ``links`` ({name: LinkSpec fields with target});
    yields {name: "http://host:port", "control": control API URL}; stops the proxy after."""
    doc = {
        "links": {n: {"listen": "127.0.0.1:0", **spec} for n, spec in links.items()},
        "seed": seed,
        "control": "127.0.0.1:0",
    }
    fd, path = tempfile.mkstemp(prefix="edgebed-links-", suffix=".yaml")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(doc, fh)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "netem.proxy", "--config", path],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"link proxy did not start: {err[-2000:]}")
        ready = json.loads(line)
        urls = {name: f"http://{addr}" for name, addr in ready["links"].items()}
        urls["control"] = ready["control"]
        yield urls
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        Path(path).unlink(missing_ok=True)
