"""Fixtures for the local-stack tests: a stray-process check over the whole session, helpers."""

from __future__ import annotations

import os
import time

import pytest
from stack_testutil import descendants


@pytest.fixture(scope="session", autouse=True)
def no_stray_processes():
    """After the whole session, no process started during it may still run (checked here)."""
    before = set(descendants(os.getpid()))
    yield
    deadline = time.monotonic() + 10
    while True:
        stray = {p: c for p, c in descendants(os.getpid()).items() if p not in before}
        if not stray or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not stray, f"processes left running after the test session: {stray}"
