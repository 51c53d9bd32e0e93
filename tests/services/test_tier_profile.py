"""Profile mode over real HTTP: emulated device time, real queueing under concurrency, 503."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from services.tier.process import TierProcess

BINARY = {"content-type": "application/octet-stream"}
TOL_MS = 1.0


def _post_many(url: str, n: int, model: str = "int8") -> list[httpx.Response]:
    """``n`` requests sent at once over ``n`` connections."""

    async def run() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
        async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:
            # open the connections first so the burst is not spread by TCP set-up
            await asyncio.gather(*(client.get("/healthz") for _ in range(n)))
            return await asyncio.gather(
                *(
                    client.post(f"/v1/infer?model={model}", content=bytes(784), headers=BINARY)
                    for _ in range(n)
                )
            )

    return asyncio.run(run())


def test_emulated_time_matches_configured_latency(tier_factory: Callable[..., TierProcess]) -> None:
    tp = tier_factory("mcu", device_time="profile")
    errors = {}
    with httpx.Client(base_url=tp.url, timeout=10.0) as client:
        for model, configured_ms in (("int8", 25.0), ("tinycnn", 7.0)):
            got = []
            for _ in range(20):
                r = client.post(f"/v1/infer?model={model}", content=bytes(784), headers=BINARY)
                assert r.status_code == 200, r.text
                t = r.json()["timing"]
                assert r.json()["emulated"]["device_time"] is True
                assert t["target_ms"] == configured_ms
                got.append(t["emulated_ms"])
            errors[model] = (configured_ms, got)
    overloaded = os.getloadavg()[0] > (os.cpu_count() or 1)
    for model, (configured_ms, got) in errors.items():
        err = np.abs(np.array(got) - configured_ms)
        report = f"{model}: configured {configured_ms} ms ± {TOL_MS}, measured {np.round(got, 3)}"
        assert np.median(err) <= 0.3, report
        if overloaded:
            # A host with more runnable threads than CPUs can preempt the server while it
            # holds the GIL; tolerate rare late wake-ups there, and say so.
            assert (err <= TOL_MS).mean() >= 0.9, report + f" (load {os.getloadavg()[0]:.1f})"
            if (err > TOL_MS).any():
                print(f"note: host overloaded (load {os.getloadavg()[0]:.1f}); {report}")
        else:
            assert np.all(err <= TOL_MS), report


def test_jitter_draws_are_held(tier_factory: Callable[..., TierProcess]) -> None:
    jitter = {"dist": "uniform", "low_ms": 0.0, "high_ms": 10.0}
    tp = tier_factory(
        "edge", config_overrides={"models": {"int8": {"latency_ms": 5.0, "jitter": jitter}}}
    )
    with httpx.Client(base_url=tp.url, timeout=10.0) as client:
        timings = [
            client.post("/v1/infer?model=int8", content=bytes(784), headers=BINARY).json()["timing"]
            for _ in range(30)
        ]
    targets = np.array([t["target_ms"] for t in timings])
    held = np.array([t["emulated_ms"] for t in timings])
    assert targets.min() >= 5.0 and targets.max() <= 15.0, targets
    assert targets.std() > 1.0, f"uniform 0–10 ms jitter should spread targets: {targets}"
    assert np.all(np.abs(held - targets) <= TOL_MS), list(zip(targets, held, strict=True))


def test_concurrency_one_serialises_ten_simultaneous_requests(
    tier_factory: Callable[..., TierProcess],
) -> None:
    service_ms = 50.0
    tp = tier_factory(
        "mcu", config_overrides={"models": {"int8": {"latency_ms": service_ms}}, "queue_limit": 16}
    )
    t0 = time.perf_counter()
    responses = _post_many(tp.url, 10)
    wall_ms = (time.perf_counter() - t0) * 1000.0
    assert [r.status_code for r in responses] == [200] * 10
    timings = sorted((r.json()["timing"] for r in responses), key=lambda t: t["queue_ms"])
    queue = np.array([t["queue_ms"] for t in timings])
    held = np.array([t["emulated_ms"] for t in timings])
    report = (
        f"configured {service_ms} ms per request, concurrency 1; wall {wall_ms:.1f} ms; "
        f"queue_ms {queue.round(1).tolist()}; held {held.round(2).tolist()}"
    )
    assert np.all(np.abs(held - service_ms) <= 2 * TOL_MS), report
    # One at a time: the burst takes at least ten service times, and the k-th request in line
    # really waited for the ones before it (spread over ~10 service times).
    assert wall_ms >= 10 * service_ms, report
    assert queue[0] < 0.5 * service_ms and queue[-1] >= 6 * service_ms, report
    assert np.all(np.diff(queue) > 0.3 * service_ms), report


def test_edge_concurrency_two_runs_two_at_once(tier_factory: Callable[..., TierProcess]) -> None:
    service_ms = 100.0
    tp = tier_factory("edge", config_overrides={"models": {"int8": {"latency_ms": service_ms}}})
    responses = _post_many(tp.url, 4)
    queue = sorted(r.json()["timing"]["queue_ms"] for r in responses)
    # two start at once, two wait about one service time
    assert queue[1] < 0.5 * service_ms <= queue[2], f"concurrency 2, {service_ms} ms: {queue}"


def test_full_queue_answers_503_with_retry_after(tier_factory: Callable[..., TierProcess]) -> None:
    tp = tier_factory(
        "mcu", config_overrides={"models": {"int8": {"latency_ms": 600.0}}, "queue_limit": 2}
    )
    responses = _post_many(tp.url, 6)
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 200, 503, 503, 503], codes  # 1 in service + 2 waiting
    for r in responses:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["field"] == "model" and "queue_limit 2" in r.json()["detail"]
    metrics = httpx.get(f"{tp.url}/metrics").text
    assert 'edgebed_requests_total{model="int8",outcome="queue_full",tier="mcu"} 3.0' in metrics


@pytest.mark.parametrize("tier", ["mcu"])
def test_mcu_refuses_fp32_at_start(tier: str, tier_factory: Callable[..., TierProcess]) -> None:
    from services.tier.process import TierStartError

    with pytest.raises(TierStartError) as err:
        tier_factory(tier, config_overrides={"models": {"fp32": {}}}, ready_timeout_s=30)
    msg = str(err.value)
    assert "memory_bytes" in msg and "fp32" in msg, msg
