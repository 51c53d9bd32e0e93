"""Process scheduling for timing-critical link processes (proxy, probe, echo) on busy hosts."""

from __future__ import annotations

import os


def set_realtime(priority: int = 10) -> str:
    """Put this process under SCHED_FIFO ``priority`` (needs root); returns what happened.

    netem's timers run in the kernel and are not delayed by a busy CPU; a userspace proxy is,
    so on a loaded host (CI runners, laptops compiling) the proxy and the probe ask for
    real-time scheduling. Failing that they run normally and say so.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError, AttributeError) as exc:
        return f"realtime scheduling unavailable: {exc}"
    return f"SCHED_FIFO priority {priority}"
