"""Process-tree helpers for tests: which processes a test run left behind."""

from __future__ import annotations

import os
import time
from pathlib import Path


def descendants(root: int) -> dict[int, str]:
    """Live (non-zombie) descendants of ``root``: pid -> command line."""
    children: dict[int, list[int]] = {}
    cmd: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2 :].split()
        if rest[0] in ("Z", "X"):
            continue
        pid, ppid = int(entry.name), int(rest[1])
        children.setdefault(ppid, []).append(pid)
        cmd[pid] = cmdline.strip()
    out: dict[int, str] = {}
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            out[child] = cmd.get(child, "")
            todo.append(child)
    return out


def strays(before: set[int], grace_s: float = 10.0) -> dict[int, str]:
    """This process's descendants not in ``before``, after waiting up to ``grace_s`` for them to exit."""
    deadline = time.monotonic() + grace_s
    while True:
        stray = {p: c for p, c in descendants(os.getpid()).items() if p not in before}
        if not stray or time.monotonic() > deadline:
            return stray
        time.sleep(0.2)
