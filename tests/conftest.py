"""Shared pytest configuration: repository root and helpers for tests that need root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces / tc); run the suite as root to include it")
