"""Start, watch and stop the stack's server processes, tracked by PID so any process can stop them.

Every process is started in its own session (its PID is its process-group id), with its output
in a log file, and is remembered as a :class:`ProcessRecord` (PID plus the kernel's start time,
so a recycled PID is never mistaken for ours). Stopping sends SIGTERM to the group, waits, then
SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import httpx
from pydantic import BaseModel


class StartError(RuntimeError):
    """A managed process exited or never became ready."""


class ProcessRecord(BaseModel):
    """One process the stack started."""

    name: str
    kind: str  # tier | link | prometheus | other
    pid: int
    start_ticks: int  # field 22 of /proc/<pid>/stat: start time since boot, in clock ticks
    argv: list[str]
    log_path: str
    url: str | None = None  # base URL it serves, if any
    ready_path: str | None = None  # path answering 200 once ready


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start ticks) of ``pid`` or None when no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm may contain spaces and parentheses: split after the last ')'
    rest = raw[raw.rindex(")") + 2 :].split()
    return rest[0], int(rest[19])


def _reap(pid: int) -> None:
    """Collect ``pid``'s exit status if it is our child (no zombie left behind)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_running(rec: ProcessRecord) -> bool:
    """True while the recorded process (same PID *and* start time) is alive and not a zombie."""
    _reap(rec.pid)
    stat = _proc_stat(rec.pid)
    if stat is None:
        return False
    state, ticks = stat
    return ticks == rec.start_ticks and state not in ("Z", "X")


def spawn(
    name: str,
    kind: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    url: str | None = None,
    ready_path: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> ProcessRecord:
    """Start ``argv`` in a new session with stdout+stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        log.write(f"=== {stamp} edgebed starts {name}: {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    # The child is reaped by is_running()/stop() through waitpid, also from another process's view.
    stat = _proc_stat(proc.pid)
    ticks = stat[1] if stat else 0
    return ProcessRecord(
        name=name,
        kind=kind,
        pid=proc.pid,
        start_ticks=ticks,
        argv=list(argv),
        log_path=str(log_path),
        url=url,
        ready_path=ready_path,
    )


def log_tail(rec: ProcessRecord, lines: int = 15) -> str:
    try:
        text = Path(rec.log_path).read_text(errors="replace")
    except FileNotFoundError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_ready(rec: ProcessRecord, timeout_s: float = 60.0, poll_s: float = 0.1) -> float:
    """Poll ``url + ready_path`` until HTTP 200; return seconds waited.

    Raises :class:`StartError` with the log tail if the process exits or the timeout passes.
    """
    if not rec.url or not rec.ready_path:
        return 0.0
    t0 = time.monotonic()
    target = rec.url.rstrip("/") + rec.ready_path
    last = "no answer yet"
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while True:
            if not is_running(rec):
                raise StartError(
                    f"{rec.name} exited before it was ready ({target}); log {rec.log_path}:\n"
                    + log_tail(rec)
                )
            try:
                r = client.get(target)
                if r.status_code == 200:
                    return time.monotonic() - t0
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            if time.monotonic() - t0 > timeout_s:
                raise StartError(
                    f"{rec.name} not ready after {timeout_s:.0f} s ({target}: {last}); "
                    f"log {rec.log_path}:\n" + log_tail(rec)
                )
            time.sleep(poll_s)


def stop(rec: ProcessRecord, timeout_s: float = 10.0) -> str:
    """Stop the process group of ``rec``; return what happened ("stopped", "killed", ...)."""
    if not is_running(rec):
        stat = _proc_stat(rec.pid)
        if stat is None or stat[1] == rec.start_ticks:  # PID not recycled: the group is ours
            if group_members(rec.pid):
                _kill_group_leftovers(rec.pid)
                return "leader gone, group killed"
        return "not running"
    try:
        os.killpg(rec.pid, signal.SIGTERM)
    except ProcessLookupError:
        return "not running"
    except PermissionError:
        os.kill(rec.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not is_running(rec):
            _kill_group_leftovers(rec.pid)
            return "stopped"
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(rec.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and is_running(rec):
        time.sleep(0.05)
    return "killed"


def _kill_group_leftovers(pgid: int) -> None:
    """SIGKILL whatever is still in the process group once its leader is gone (workers)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def group_members(pgid: int) -> list[int]:
    """PIDs (not zombies) currently in process group ``pgid``."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        rest = raw[raw.rindex(")") + 2 :].split()
        if rest[0] in ("Z", "X"):
            continue
        if int(rest[2]) == pgid:
            out.append(int(entry.name))
    return out
