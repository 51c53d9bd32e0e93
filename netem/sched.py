"""Process scheduling for timing-critical link processes (proxy, probe, echo) on busy hosts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import selectors
import time
from collections.abc import Callable


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


class PollingEpollSelector(selectors.EpollSelector):
    """An epoll selector that busy-polls instead of sleeping where a wake-up would be late.

    A process woken on an idle CPU pays the CPU's wake-up latency. On virtual machines that
    disable guest halt polling (Firecracker sets ``haltpoll.guest_halt_poll_ns=0``), every
    wake-up of an idle vCPU is a VM exit: the project's 2-core VM pays ~80 µs per hop for it
    (a zero-delay proxy hop adds ~300 µs instead of ~80–130 µs), and a timer due in 5 ms fires
    ~180 µs late at the median and up to ~2 ms late at p99 when the host is busy. Two remedies,
    both CPU spent only around events, nothing while idle:

    * ``poll_us``: like the kernel's haltpoll and ``SO_BUSY_POLL``, keep polling (zero-timeout
      epoll) after each event before blocking, so request/response traffic finds the loop
      awake. The window adapts as the kernel's haltpoll governor does
      (``drivers/cpuidle/governors/haltpoll.c``): it starts at 0, grows (×2, from 50 µs, up to
      ``poll_us``) when an idle period ended just after the window, and shrinks (÷2, to 0 below
      50 µs) when an idle period outlasted ``poll_us``. Back-to-back traffic keeps the window
      open; sparse traffic (requests tens of ms apart, as in most experiments) closes it, so
      polling never steals a core from the other processes of a 2-core host. 200 µs is the
      kernel's own ``guest_halt_poll_ns`` default.
    * ``spin_us``: with a deadline source (:meth:`set_deadline_source`, the link proxy's
      release timer), stop sleeping this long before the next deadline and poll until it is
      due, then report the source's fd ready: releases happen on time instead of whenever the
      host wakes the vCPU. I/O arriving meanwhile is still served.
    """

    GROW_START_S = 50e-6  # haltpoll's guest_halt_poll_grow_start
    GROW = 2.0  # guest_halt_poll_grow
    SHRINK = 2.0  # guest_halt_poll_shrink

    def __init__(self, poll_us: float, spin_us: float = 0.0) -> None:
        super().__init__()
        self.poll_s = max(0.0, poll_us) / 1e6  # the largest poll window
        self.window_s = 0.0  # the current (adaptive) poll window
        self.spin_s = max(0.0, spin_us) / 1e6
        self._deadline_fd = -1
        self._next_deadline: Callable[[], float | None] = lambda: None

    def set_deadline_source(self, fd: int, next_deadline: Callable[[], float | None]) -> None:
        """``next_deadline()`` is the ``time.monotonic()`` instant at which ``fd`` (registered
        for reading) must be reported ready, or None; ``fd``'s handler must tolerate reporting
        before the fd is readable."""
        self._deadline_fd, self._next_deadline = fd, next_deadline

    def _due(self, ready: list[tuple[selectors.SelectorKey, int]],
             ) -> list[tuple[selectors.SelectorKey, int]]:
        if any(key.fd == self._deadline_fd for key, _ in ready):
            return ready
        with contextlib.suppress(KeyError):
            return [*ready, (self.get_key(self._deadline_fd), selectors.EVENT_READ)]
        return ready

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        start = time.monotonic()
        deadline = self._next_deadline() if self.spin_s > 0 and self._deadline_fd >= 0 else None
        if deadline is not None and deadline - start <= self.spin_s:
            # spin: poll I/O until the deadline (or the caller's timeout)
            while True:
                ready = super().select(0)
                now = time.monotonic()
                if now >= deadline:
                    return self._due(ready)
                if ready or (timeout is not None and now - start >= timeout):
                    return ready
        if deadline is not None:  # sleep no longer than until the spin window opens
            cap = deadline - self.spin_s - start
            timeout = cap if timeout is None else min(timeout, cap)
        if (timeout is not None and timeout <= 0) or self.poll_s <= 0:
            return super().select(timeout)
        window = self.window_s if timeout is None else min(self.window_s, timeout)
        if window > 0:
            while True:
                ready = super().select(0)
                spent = time.monotonic() - start
                if ready:
                    self._adapt(spent)
                    return ready
                if spent >= window:
                    break
        spent = time.monotonic() - start
        ready = super().select(None if timeout is None else max(0.0, timeout - spent))
        self._adapt(time.monotonic() - start)
        return ready

    def _adapt(self, idle_s: float) -> None:
        """haltpoll's ``adjust_poll_limit``: grow the window when an idle period ended just
        past it (within ``poll_s``), shrink it when the idle period outlasted ``poll_s``."""
        if self.window_s < idle_s <= self.poll_s:
            self.window_s = min(self.poll_s, max(self.window_s * self.GROW,
                                                 min(self.GROW_START_S, self.poll_s)))
        elif idle_s > self.poll_s:
            self.window_s /= self.SHRINK
            if self.window_s < min(self.GROW_START_S, self.poll_s):
                self.window_s = 0.0


def polling_loop_factory(poll_us: float,
                         spin_us: float = 0.0) -> Callable[[], asyncio.AbstractEventLoop]:
    """An event-loop factory whose selector busy-polls (see :class:`PollingEpollSelector`);
    Linux only."""
    return lambda: asyncio.SelectorEventLoop(PollingEpollSelector(poll_us, spin_us))
