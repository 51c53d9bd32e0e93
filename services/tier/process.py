"""Start a tier as a real server subprocess on loopback, wait until ready, stop it cleanly.

    with start_tier("edge", device_time="real") as tier:
        httpx.post(f"{tier.url}/v1/infer?model=int8", content=image_bytes,
                   headers={"content-type": "application/octet-stream"})

Used by tests, benchmarks, ``edgebed up`` and the orchestrator.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

_LIVE: weakref.WeakSet[TierProcess] = weakref.WeakSet()
REPO_ROOT = Path(__file__).resolve().parents[2]


class TierStartError(RuntimeError):
    """The tier process exited or did not become ready; the message holds its stderr."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port the OS reports free on ``host`` (bind to port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class TierProcess:
    """A running tier server (``python -m services.tier``)."""

    def __init__(
        self,
        tier: str,
        host: str,
        port: int,
        proc: subprocess.Popen[bytes],
        log_path: Path,
        config_path: Path | None,
    ) -> None:
        self.tier = tier
        self.host = host
        self.port = port
        self.proc = proc
        self.log_path = log_path
        self.config_path = config_path
        _LIVE.add(self)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_text(self, max_chars: int = 4000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-max_chars:]

    def rss_bytes(self) -> int | None:
        """Resident memory of the server process (from /proc; None where unavailable)."""
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM (graceful), then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout_s)
        for path in (self.config_path, self.log_path):
            if path is not None:
                try:
                    path.unlink()
                except OSError:
                    pass
        _LIVE.discard(self)
        return self.proc.returncode

    def __enter__(self) -> TierProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"TierProcess(tier={self.tier!r}, url={self.url!r}, pid={self.pid})"


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None, timeout_s: float) -> None:
    """Poll ``url/readyz`` until it answers 200; raise TimeoutError or RuntimeError (exited)."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"exited with code {proc.returncode}")
            try:
                if client.get(f"{url}/readyz").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"not ready after {timeout_s:.0f} s")
            time.sleep(0.05)


def start_tier(
    tier: str,
    port: int | None = None,
    *,
    host: str = "127.0.0.1",
    node_class: str | None = None,
    device_time: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    config_file: str | Path | None = None,
    ready_timeout_s: float = 30.0,
    env: dict[str, str] | None = None,
    attempts: int = 3,
) -> TierProcess:
    """Start the tier node ``tier`` and wait for it. ``node_class`` (``--class``) is its hardware
    class; without it the class is the ``class:`` of the config, else the node name (a class name).

    ``port=None`` picks a free port (retrying on a bind race). ``config_overrides`` is merged
    over the tier's config (``None`` values remove keys, e.g. ``{"models": {"fp32": None}}``).
    Raises :class:`TierStartError` with the server's stderr if it exits or is not ready in time.
    """
    from services.tier.config import deep_merge, read_yaml

    config_path: Path | None = None
    if config_overrides or config_file:
        data = read_yaml(Path(config_file)) if config_file else {}
        data = deep_merge(data, config_overrides or {})
        fd, name = tempfile.mkstemp(prefix=f"edgebed-{tier}-", suffix=".yaml")
        with os.fdopen(fd, "w") as fh:
            yaml.safe_dump(data, fh)
        config_path = Path(name)
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    last_error = ""
    for attempt in range(max(1, attempts)):
        use_port = port if port is not None else free_port(host)
        argv = [sys.executable, "-m", "services.tier", "--tier", tier, "--host", host,
                "--port", str(use_port)]  # fmt: skip
        if config_path is not None:
            argv += ["--config", str(config_path)]
        if node_class:
            argv += ["--class", node_class]
        if device_time:
            argv += ["--device-time", device_time]
        fd, log_name = tempfile.mkstemp(prefix=f"edgebed-{tier}-", suffix=".log")
        log_path = Path(log_name)
        with os.fdopen(fd, "wb") as log:
            proc = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env
            )
        tp = TierProcess(tier, host, use_port, proc, log_path, config_path)
        try:
            wait_ready(tp.url, proc, ready_timeout_s)
            return tp
        except (RuntimeError, TimeoutError) as exc:
            output = tp.stderr_text()
            tp.config_path = None  # keep the config for a retry
            tp.stop()
            last_error = f"tier {tier} on {host}:{use_port} {exc}; server output:\n{output}"
            if (
                port is None
                and "address already in use" in output.lower()
                and attempt + 1 < attempts
            ):
                continue
            break
    if config_path is not None:
        config_path.unlink(missing_ok=True)
    raise TierStartError(last_error)


@atexit.register
def _stop_all() -> None:  # safety net: never leave a tier behind
    for tp in list(_LIVE):
        try:
            tp.stop(timeout_s=2.0)
        except Exception:
            pass
