"""Fixtures for tier tests: committed models/eval set (skip if absent) and live tier servers."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest

from models.paths import eval_set_path, models_dir
from services.tier.process import TierProcess, start_tier

MODEL_FILES = ("tinycnn.tflite", "int8.tflite", "fp32.tflite")


def models_present() -> bool:
    return all((models_dir() / f).is_file() for f in MODEL_FILES)


def require_models() -> None:
    missing = [f for f in MODEL_FILES if not (models_dir() / f).is_file()]
    if missing:
        pytest.skip(f"committed models missing in {models_dir()}: {', '.join(missing)}")


@pytest.fixture
def need_models() -> None:
    require_models()


@pytest.fixture(scope="session")
def eval_set() -> dict[str, np.ndarray]:
    path = eval_set_path()
    if not path.is_file():
        pytest.skip(f"evaluation set {path} not committed yet")
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


# Fast LM timing so generate calls in tests take milliseconds, not seconds.
FAST_LM = {"ttft_ms": 2.0, "tpot_ms": 0.01}


@pytest.fixture(scope="session")
def real_tiers() -> Iterator[dict[str, TierProcess]]:
    """One real-mode server per built-in tier, shared by the session (fast LM)."""
    require_models()
    started: dict[str, TierProcess] = {}
    try:
        for tier, lm in (("mcu", "slm"), ("edge", "slm"), ("cloud", "llm")):
            started[tier] = start_tier(
                tier, device_time="real", config_overrides={"lm": {lm: FAST_LM}}
            )
        yield started
    finally:
        for tp in started.values():
            tp.stop()


@pytest.fixture
def tier_factory() -> Iterator[Callable[..., TierProcess]]:
    """Start tiers with custom overrides inside one test; all are stopped afterwards."""
    require_models()
    started: list[TierProcess] = []

    def _start(tier: str, **kwargs: Any) -> TierProcess:
        tp = start_tier(tier, **kwargs)
        started.append(tp)
        return tp

    yield _start
    for tp in started:
        tp.stop()
