"""Fixtures for the orchestrator's live tests: three real tier processes, torn down after."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from orch_live import FAST_LM, start_tiers


@pytest.fixture(scope="module")
def real_tiers() -> Iterator[dict[str, Any]]:
    """Three tiers in real mode (device time = real LiteRT compute), fast LM stubs."""
    lm = {"mcu": "slm", "edge": "slm", "cloud": "llm"}
    overrides = {
        t: {"concurrency": 4, "queue_limit": 512, "lm": {lm[t]: FAST_LM}}
        for t in ("mcu", "edge", "cloud")
    }
    with ExitStack() as stack:
        yield start_tiers("real", overrides, stack)
