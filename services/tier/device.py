"""Device emulation: FIFO worker slots with a bounded wait queue, and precise device-time holds.

A tier has ``concurrency`` slots (an MCU has one). A request takes a free slot or waits in FIFO
order; when ``queue_limit`` requests already wait, it is refused (:class:`QueueFull` → 503).
Waiting is real: a coroutine parks on a future until a finishing request hands its slot over.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections import deque


class QueueFull(Exception):
    """The tier's wait queue is full."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"queue full: {waiting} requests waiting")
        self.waiting = waiting


class DeviceSlots:
    """``concurrency`` numbered slots handed out FIFO; at most ``queue_limit`` waiters.

    Use from the event loop thread only (no locking needed there).
    """

    def __init__(self, concurrency: int, queue_limit: int) -> None:
        self.concurrency = concurrency
        self.queue_limit = queue_limit
        self._free: list[int] = list(range(concurrency - 1, -1, -1))
        self._waiters: deque[asyncio.Future[int]] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    @property
    def in_service(self) -> int:
        return self.concurrency - len(self._free)

    def try_acquire_possible(self) -> bool:
        """Whether :meth:`try_acquire` would succeed now."""
        return bool(self._free) and not self._waiters

    def try_acquire(self) -> int | None:
        """A free slot without waiting, or None."""
        if self._free and not self._waiters:
            return self._free.pop()
        return None

    async def acquire(self) -> int:
        """Wait for a slot (FIFO). Raises QueueFull if ``queue_limit`` requests already wait."""
        slot = self.try_acquire()
        if slot is not None:
            return slot
        if len(self._waiters) >= self.queue_limit:
            raise QueueFull(len(self._waiters))
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # handed a slot just as we were cancelled: pass it on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def release(self, slot: int) -> None:
        """Hand the slot to the oldest waiter, or mark it free."""
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(slot)
                return
        self._free.append(slot)


def hold_until(deadline_s: float, stop: threading.Event | None = None) -> float:
    """Block this (worker) thread until ``time.perf_counter() >= deadline_s``; return the time.

    The event loop's timers have 1 ms granularity, so device holds run on worker threads.
    A timed wait wakes within ~0.1 ms when the thread gets a CPU at once, which
    :func:`try_realtime_thread` arranges on a busy host. Setting ``stop`` ends the hold early
    (server shutdown), so a 12 s emulated LM answer does not delay exit.
    """
    remaining = deadline_s - time.perf_counter()
    if remaining > 0:
        if stop is None:
            time.sleep(remaining)
        else:
            stop.wait(remaining)
    return time.perf_counter()


REALTIME_PRIORITY = 10


def try_realtime_thread() -> bool:
    """Give the calling thread SCHED_FIFO priority (it only sleeps, so it cannot hog a CPU).

    On a loaded host a sleeping thread is otherwise woken milliseconds late, which would show
    up as device-time error. Needs CAP_SYS_NICE (root); returns False when not permitted.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(REALTIME_PRIORITY))
    except (AttributeError, OSError):
        return False
    return True
