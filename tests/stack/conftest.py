"""Stack-test configuration: no process started during the test session may outlive it.

Two checks: a session fixture (reported as an error of the last stack test's teardown) and,
for the whole suite, ``pytest_sessionfinish`` comparing this process's descendants with the
ones that existed when this conftest was collected (before any test ran).
"""

from __future__ import annotations

import os
import time

import pytest
from stack_testutil import descendants

_BEFORE_SESSION = set(descendants(os.getpid()))


def _strays(before: set[int], grace_s: float = 10.0) -> dict[int, str]:
    deadline = time.monotonic() + grace_s
    while True:
        stray = {p: c for p, c in descendants(os.getpid()).items() if p not in before}
        if not stray or time.monotonic() > deadline:
            return stray
        time.sleep(0.2)


@pytest.fixture(scope="session", autouse=True)
def no_stray_processes():
    """After the stack tests (and everything after them), nothing they started may still run."""
    before = set(descendants(os.getpid()))
    yield
    stray = _strays(before)
    assert not stray, f"processes left running after the test session: {stray}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the whole run if any test of the suite left a child process running."""
    stray = _strays(_BEFORE_SESSION)
    if stray:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = "\n".join(f"  pid {p}: {c}" for p, c in sorted(stray.items()))
        msg = f"STRAY PROCESSES left running by the test suite:\n{lines}"
        if reporter is not None:
            reporter.write_line(msg, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
