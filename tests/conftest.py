"""Shared pytest configuration: repository root, root-only skips, and the suite's stray-process check."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from procutil import descendants, strays

REPO_ROOT = Path(__file__).resolve().parents[1]
# Processes that existed before any test ran: anything else still alive at the end is a stray.
_BEFORE_SESSION = set(descendants(os.getpid()))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces / tc); run the suite as root to include it")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the whole run if any test of the suite left a child process running."""
    stray = strays(_BEFORE_SESSION)
    if stray:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = "\n".join(f"  pid {p}: {c}" for p, c in sorted(stray.items()))
        msg = f"STRAY PROCESSES left running by the test suite:\n{lines}"
        if reporter is not None:
            reporter.write_line(msg, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the Docker end-to-end test last: building images churns CPU, memory and page cache,
    and the timing-sensitive tests (link fidelity, device holds) should not run in its wake."""
    items.sort(key=lambda item: item.get_closest_marker("docker") is not None)
