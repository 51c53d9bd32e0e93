"""Stack-test configuration: no process started during the test session may outlive it.

Two checks: a session fixture (reported as an error of the last stack test's teardown) and,
for the whole suite, ``pytest_sessionfinish`` comparing this process's descendants with the
ones that existed when this conftest was collected (before any test ran).
"""

from __future__ import annotations

import os

import pytest
from procutil import descendants, strays


@pytest.fixture(scope="session", autouse=True)
def no_stray_processes():
    """After the stack tests (and everything after them), nothing they started may still run."""
    before = set(descendants(os.getpid()))
    yield
    stray = strays(before)
    assert not stray, f"processes left running after the test session: {stray}"


@pytest.fixture
def state_dir(tmp_path):
    """A stack state directory; whatever a test did, nothing it started may outlive it."""
    from stack_testutil import processes_mentioning

    from orchestrator.stack import manager

    d = tmp_path / "state"
    yield d
    left = processes_mentioning(str(d))
    if left:
        manager.down(d)
    assert not left, f"test left processes running: {left}"
