"""Device emulation: FIFO worker slots with a bounded wait queue, and precise device-time holds.

A tier has ``concurrency`` slots (an MCU has one). A request takes a free slot or waits in FIFO
order; when ``queue_limit`` requests already wait, it is refused (:class:`QueueFull` → 503).
Waiting is real: a coroutine parks on a future until a finishing request hands its slot over.

Every slot also carries the time its emulated device is *nominally* free: the nominal end
(start + device time) of the request it serves or served last. A request starts service at
``max(its arrival, that time)``. Holds end a little early to cover the testbed's own response
path (the send and host leads), so a slot is handed over physically before the previous request
is nominally done; starting the next one at the nominal end keeps queueing (M/D/1/K waits,
``queue_ms``) exactly that of the emulated device.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass


class QueueFull(Exception):
    """The tier's wait queue is full."""

    def __init__(self, waiting: int) -> None:
        super().__init__(f"queue full: {waiting} requests waiting")
        self.waiting = waiting


# A slot handed out: its number and the (perf_counter) time its device is nominally free.
Grant = tuple[int, float]


@dataclass(eq=False)
class _Waiter:
    fut: asyncio.Future[Grant]
    device_s: float  # the device time the waiting request expects to take
    counted: bool = True  # False: a formed batch, whose requests are counted in ``pending``


class DeviceSlots:
    """``concurrency`` numbered slots handed out FIFO; at most ``queue_limit`` waiters.

    Use from the event loop thread only (no locking needed there).
    """

    def __init__(self, concurrency: int, queue_limit: int) -> None:
        self.concurrency = concurrency
        self.queue_limit = queue_limit
        self._free: list[int] = list(range(concurrency - 1, -1, -1))
        # per slot: when its device is nominally free (perf_counter s); for a slot in service,
        # the expected end of the request it serves
        self._free_at: list[float] = [0.0] * concurrency
        self._waiters: deque[_Waiter] = deque()
        self._uncounted = 0  # waiters standing for a batch (not requests)
        # requests waiting in dynamic batchers (``services.tier.batching``): they wait like the
        # requests queued here (queue_limit, queue depth) and ``pending_s`` is their expected
        # device time (Retry-After)
        self.pending = 0
        self.pending_s = 0.0

    @property
    def waiting(self) -> int:
        """Requests waiting: for a slot, or in a dynamic batcher."""
        return len(self._waiters) - self._uncounted + self.pending

    def full(self) -> bool:
        return self.waiting >= self.queue_limit

    @property
    def in_service(self) -> int:
        return self.concurrency - len(self._free)

    def try_acquire(self, device_s: float = 0.0) -> Grant | None:
        """A free slot without waiting (and when its device is nominally free), or None."""
        if self._free and not self._waiters:
            slot = self._free.pop()
            free_at = self._free_at[slot]
            self._free_at[slot] = max(free_at, time.perf_counter()) + device_s
            return slot, free_at
        return None

    def enqueue(self, device_s: float, *, counted: bool = True) -> asyncio.Future[Grant]:
        """Join the wait queue of a request expecting ``device_s`` of device time; the future
        gives the slot once a finishing request hands it over. Raises QueueFull when
        ``queue_limit`` requests already wait. Leave with :meth:`withdraw`.

        ``counted=False``: a formed batch waiting for a model instance; its requests are already
        counted as waiting (``pending``), so it is never refused and does not count itself."""
        if counted and self.full():
            raise QueueFull(self.waiting)
        fut: asyncio.Future[Grant] = asyncio.get_running_loop().create_future()
        self._waiters.append(_Waiter(fut, device_s, counted))
        if not counted:
            self._uncounted += 1
        return fut

    def withdraw(self, fut: asyncio.Future[Grant]) -> None:
        """Leave the queue (client gone, task cancelled); a slot handed over meanwhile is passed
        on unused, with the same nominal free time."""
        if fut.done() and not fut.cancelled():
            slot, free_at = fut.result()
            self.release(slot, free_at)
            return
        for w in self._waiters:
            if w.fut is fut:
                self._waiters.remove(w)
                self._uncounted -= not w.counted
                break
        fut.cancel()

    async def acquire(self, device_s: float = 0.0) -> Grant:
        """Wait for a slot (FIFO). Raises QueueFull if ``queue_limit`` requests already wait."""
        grant = self.try_acquire(device_s)
        if grant is not None:
            return grant
        fut = self.enqueue(device_s)
        try:
            return await fut
        except asyncio.CancelledError:
            self.withdraw(fut)
            raise

    def expect_end(self, slot: int, end_s: float) -> None:
        """Record when the request in ``slot`` will nominally end (once its target is drawn)."""
        self._free_at[slot] = end_s

    def release(self, slot: int, nominal_end_s: float | None = None) -> None:
        """Hand the slot to the oldest waiter, or mark it free. ``nominal_end_s`` is when the
        finished request nominally ended (its start + device time; None: now, e.g. an aborted
        hold): the next request starts service then, not at this (earlier) hand-over."""
        free_at = time.perf_counter() if nominal_end_s is None else nominal_end_s
        while self._waiters:
            w = self._waiters.popleft()
            self._uncounted -= not w.counted
            if not w.fut.done():
                w.fut.set_result((slot, free_at))
                self._free_at[slot] = free_at + w.device_s
                return
        self._free_at[slot] = free_at
        self._free.append(slot)

    def backlog_s(self, now_s: float) -> float:
        """Device time still to serve: what remains of the requests in service (to their
        nominal ends) plus the expected device time of every waiting request (batch-pending
        ones included)."""
        remaining = sum(max(0.0, end - now_s) for end in self._free_at)
        return remaining + sum(w.device_s for w in self._waiters) + self.pending_s

    def retry_after_s(self, now_s: float) -> int:
        """Whole seconds until the backlog is served on ``concurrency`` slots (at least 1)."""
        return max(1, math.ceil(self.backlog_s(now_s) / self.concurrency))


def hold_until(deadline_s: float, stop: threading.Event | None = None) -> float:
    """Block this (worker) thread until ``time.perf_counter() >= deadline_s``; return the time.

    The event loop's timers have 1 ms granularity, so device holds run on worker threads.
    A timed wait wakes within ~0.1 ms when the thread gets a CPU at once, which
    :func:`try_realtime_thread` arranges on a busy host. Setting ``stop`` ends the hold at once
    (an aborted request, server shutdown), so the thread is free for the next hold instead of
    sleeping through, e.g., the rest of a 12 s emulated LM answer.
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
