"""Live-test helpers: real tier servers (``services.tier.process.start_tier``) and link proxies
(``python -m netem.proxy``) on loopback, always torn down."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

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
    """MCU, EDGE, CLOUD tier processes; returns {"mcu": TierProcess, ...}."""
    from services.tier.process import start_tier

    require_artifacts()
    out = {}
    assert stack is not None
    for tier in ("mcu", "edge", "cloud"):
        cfg = (overrides or {}).get(tier)
        out[tier] = stack.enter_context(
            start_tier(tier, device_time=device_time, config_overrides=cfg, ready_timeout_s=60)
        )
    return out
