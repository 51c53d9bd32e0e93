"""DeviceSlots: FIFO hand-over, bounded waiting, cancellation, nominal hand-over times and the
backlog behind Retry-After; hold_until precision and its stop event."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.tier.device import DeviceSlots, QueueFull, hold_until, try_realtime_thread


def test_fifo_and_queue_limit() -> None:
    async def scenario() -> list[int]:
        slots = DeviceSlots(concurrency=1, queue_limit=2)
        order: list[int] = []
        first, _ = await slots.acquire()

        async def waiter(i: int) -> None:
            s, _ = await slots.acquire()
            order.append(i)
            await asyncio.sleep(0)
            slots.release(s)

        tasks = [asyncio.create_task(waiter(i)) for i in range(2)]
        await asyncio.sleep(0)
        assert slots.waiting == 2
        with pytest.raises(QueueFull):
            await slots.acquire()
        slots.release(first)
        await asyncio.gather(*tasks)
        assert slots.in_service == 0 and slots.waiting == 0
        return order

    assert asyncio.run(scenario()) == [0, 1]


def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    async def scenario() -> None:
        slots = DeviceSlots(concurrency=1, queue_limit=4)
        s, _ = await slots.acquire()
        t = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        slots.release(s)
        assert slots.in_service == 0 and slots.waiting == 0
        assert (await slots.acquire())[0] == s

    asyncio.run(scenario())


def test_hand_over_carries_the_nominal_end() -> None:
    """A waiter handed a slot early (a hold that ended ahead of its nominal end) is told the
    nominal end, not the hand-over time; a withdrawn waiter passes the same time on."""

    async def scenario() -> None:
        slots = DeviceSlots(concurrency=1, queue_limit=4)
        s, _ = await slots.acquire(0.050)
        a = slots.enqueue(0.050)
        b = slots.enqueue(0.050)
        nominal_end = time.perf_counter() + 123.0  # far from any physical time
        slots.release(s, nominal_end)
        assert a.result() == (s, nominal_end)
        slots.withdraw(a)  # a leaves after all: b gets the slot with the same nominal time
        assert b.result() == (s, nominal_end)
        slots.release(s, nominal_end + 0.05)
        assert slots.try_acquire() == (s, nominal_end + 0.05)  # a free slot keeps it too

    asyncio.run(scenario())


def test_backlog_counts_remaining_and_queued_device_time() -> None:
    """Retry-After's backlog: what remains of the request in service plus each waiting
    request's own device time, over the concurrency; whole seconds, at least 1."""

    async def scenario() -> None:
        slots = DeviceSlots(concurrency=2, queue_limit=4)
        now = time.perf_counter()
        s0, _ = await slots.acquire()
        s1, _ = await slots.acquire()
        slots.expect_end(s0, now + 0.100)
        slots.expect_end(s1, now + 3.000)
        slots.enqueue(0.025)
        slots.enqueue(12.0)
        assert slots.backlog_s(now) == pytest.approx(0.1 + 3.0 + 0.025 + 12.0)
        assert slots.retry_after_s(now) == 8  # ceil(15.125 / 2)
        small = DeviceSlots(concurrency=1, queue_limit=4)
        t, _ = await small.acquire()
        small.expect_end(t, now + 0.040)
        small.enqueue(0.040)
        small.enqueue(0.040)
        assert small.retry_after_s(now) == 1  # 0.12 s of backlog

    asyncio.run(scenario())


def test_hold_until_stop_event_ends_the_hold_at_once() -> None:
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    t0 = time.perf_counter()
    hold_until(t0 + 30.0, stop)
    assert time.perf_counter() - t0 < 10.0  # woken by the event, not after 30 s


def test_hold_until_precision() -> None:
    def holds() -> list[float]:
        if not try_realtime_thread():
            pytest.skip("SCHED_FIFO not permitted here (needs CAP_SYS_NICE)")
        errors = []
        for target_s in (0.002, 0.01, 0.025) * 5:
            t0 = time.perf_counter()
            t1 = hold_until(t0 + target_s)
            errors.append((t1 - t0 - target_s) * 1000.0)
        return errors

    with ThreadPoolExecutor(1) as pool:
        errors = pool.submit(holds).result()
    # never early; late by a fraction of a millisecond, as test_tier_profile.check_holds asks
    # of holds over HTTP: the VM's host now and then stalls a vCPU for 1-4 ms even for a
    # SCHED_FIFO thread (seen once in three runs of tests/services), so one outlier of 15
    # is printed, not failed
    report = f"overshoot ms per hold: {[round(e, 3) for e in errors]}"
    print(report)
    assert all(e >= 0.0 for e in errors), report
    assert sorted(errors)[len(errors) // 2] <= 0.3, report
    assert sum(e < 1.0 for e in errors) >= 0.9 * len(errors), report
