"""DeviceSlots: FIFO hand-over, bounded waiting, cancellation; hold_until precision."""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from services.tier.device import DeviceSlots, QueueFull, hold_until, try_realtime_thread


def test_fifo_and_queue_limit() -> None:
    async def scenario() -> list[int]:
        slots = DeviceSlots(concurrency=1, queue_limit=2)
        order: list[int] = []
        first = await slots.acquire()

        async def waiter(i: int) -> None:
            s = await slots.acquire()
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
        s = await slots.acquire()
        t = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        slots.release(s)
        assert slots.in_service == 0 and slots.waiting == 0
        assert await slots.acquire() == s

    asyncio.run(scenario())


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
