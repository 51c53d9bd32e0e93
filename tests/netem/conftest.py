"""Helpers for the netem tests: run coroutines, start the proxy subprocess, echo servers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from netem.proxy import proxy_subprocess

REPO = Path(__file__).resolve().parents[2]


@contextmanager
def proxy_process(links: dict[str, dict[str, Any]], *, seed: int = 1, control: bool = True,
                  realtime: bool = False, token_file: Path | None = None,
                  paths: dict[str, dict[str, Any]] | None = None) -> Iterator[dict[str, Any]]:
    """``python -m netem.proxy`` for ``links`` (each with ``target`` unless only ``paths``
    cross it) and ``paths``; yields its ready line."""
    with proxy_subprocess(links, seed=seed, control=control, realtime=realtime,
                          token_file=token_file, paths=paths) as ready:
        yield ready


@contextmanager
def echo_process(realtime: bool = False) -> Iterator[str]:
    """``edgebed link echo`` as a subprocess on a free loopback port; yields host:port."""
    argv = [sys.executable, "-m", "orchestrator.cli", "link", "echo", "--bind", "127.0.0.1:0"]
    if realtime:
        argv.append("--realtime")
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            raise RuntimeError("echo server did not start")
        yield json.loads(line)["echo"]
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        if proc.stdout:
            proc.stdout.close()
