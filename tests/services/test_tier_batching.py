"""Dynamic batching on a gpu-class node over real HTTP (Triton's dynamic batcher semantics): a
batch forms at max_batch waiting requests or when the oldest waited max_queue_delay_ms, takes
base_ms + per_item_ms × k, completes together; concurrency = batches in flight; queue_limit
sheds; a client leaving the batcher (abort); real mode; metrics and energy."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from tierhttp import abandon, burst, exchange, infer_request, metric, request_bytes

from services.tier.process import TierProcess

BASE_MS, PER_ITEM_MS = 20.0, 5.0


def _gpu(tier_factory: Callable[..., TierProcess], *, max_batch: int = 4, delay_ms: float = 20.0,
         concurrency: int = 2, **extra: object) -> TierProcess:  # fmt: skip
    batching = {"max_batch": max_batch, "max_queue_delay_ms": delay_ms, "base_ms": BASE_MS,
                "per_item_ms": PER_ITEM_MS}  # fmt: skip
    return tier_factory(
        "gpu", config_overrides={"concurrency": concurrency, "models": {"int8": {"batching": batching}},
                                 **extra},
    )  # fmt: skip


def _timings(answers: list) -> list[dict]:
    assert [a.status_code for a in answers] == [200] * len(answers), [a.body for a in answers]
    return sorted((a.json()["timing"] for a in answers), key=lambda t: t["queue_ms"])


def _report(ts: list[dict]) -> list[tuple]:
    return [(t["batch_size"], round(t["batch_wait_ms"], 2), round(t["queue_ms"], 2),
             round(t["emulated_ms"], 2), t["target_ms"]) for t in ts]  # fmt: skip


def test_full_batches_form_at_max_batch(tier_factory: Callable[..., TierProcess]) -> None:
    """8 simultaneous requests, max_batch 4, two instances: two batches of 4 at once, each
    request done after base + 4 × per_item = 40 ms, long before the 20 ms queue delay would have
    formed a batch (the size triggers it)."""
    tp = _gpu(tier_factory)
    batch_ms = BASE_MS + 4 * PER_ITEM_MS
    t0 = time.perf_counter()
    answers = burst(tp.url, [infer_request(tp.url)] * 8)
    ts = _timings(answers)
    report = _report(ts)
    print("batches of 4, 2 instances:", report)
    for t in ts:
        assert t["batch_size"] == 4, report
        assert t["target_ms"] == batch_ms, report
        # the burst is parsed one request after the other: a batch forms when its 4th arrives
        assert 0.0 <= t["batch_wait_ms"] <= t["queue_ms"] + 1e-9 <= 8.0, report
        assert abs(t["emulated_ms"] - batch_ms) < 1.5, report
    # every answer is back after ~40 ms (not 2 × 40: the batches ran side by side, nor 40 + 20
    # of queue delay)
    last = max(a.t_done for a in answers) - t0
    assert batch_ms - 1.5 <= last * 1000.0 < batch_ms + 15.0, (last, report)
    assert metric(tp.url, "edgebed_tier_batch_size_count", tier="gpu", model="int8") == 2
    assert metric(tp.url, "edgebed_tier_batch_size_sum", tier="gpu", model="int8") == 8
    assert metric(tp.url, "edgebed_tier_batch_size_bucket", tier="gpu", model="int8",
                  le="3.0") == 0  # fmt: skip
    assert metric(tp.url, "edgebed_requests_total", tier="gpu", model="int8", outcome="ok") == 8
    # energy: a batch's active energy is shared by its 4 requests (70 W × 40 ms / 4 + 9 W idle)
    for a in answers:
        body = a.json()
        t, e = body["timing"], body["energy"]
        assert abs(e["power_mj"] - (70.0 * t["emulated_ms"] / 4 + 9.0 * t["queue_ms"])) < 1e-6


def test_one_instance_serves_batches_one_after_the_other(
    tier_factory: Callable[..., TierProcess],
) -> None:
    """One instance: the second batch (formed at once) waits for the first to end nominally."""
    tp = _gpu(tier_factory, concurrency=1)
    batch_ms = BASE_MS + 4 * PER_ITEM_MS
    ts = _timings(burst(tp.url, [infer_request(tp.url)] * 8))
    report = _report(ts)
    print("batches of 4, 1 instance:", report)
    assert [t["batch_size"] for t in ts] == [4] * 8, report
    for t in ts[:4]:
        assert t["queue_ms"] <= 8.0, report
    for t in ts[4:]:
        # started at the first batch's nominal end: 40 ms after the 4th arrival, which came at
        # most a few ms before these
        assert batch_ms - 8.0 <= t["queue_ms"] <= batch_ms + 0.01, report
        assert t["batch_wait_ms"] <= 8.0, report
        assert abs(t["emulated_ms"] - batch_ms) < 1.5, report


def test_a_lone_request_waits_the_queue_delay(tier_factory: Callable[..., TierProcess]) -> None:
    """Alone, a request waits max_queue_delay_ms for company, then runs as a batch of 1."""
    tp = _gpu(tier_factory, delay_ms=30.0)
    want_ms = 30.0 + BASE_MS + PER_ITEM_MS
    trips, ts = [], []
    for _ in range(5):
        time.sleep(0.05)
        t0 = time.perf_counter()
        a = exchange(tp.url, infer_request(tp.url))
        trips.append((a.t_done - t0) * 1000.0)
        ts.append(a.json()["timing"])
    report = (_report(ts), np.round(trips, 2).tolist())
    print("lone requests:", report)
    for t in ts:
        assert t["batch_size"] == 1, report
        assert abs(t["batch_wait_ms"] - 30.0) < 1e-6, report  # nominal: arrival + the delay
        assert abs(t["queue_ms"] - 30.0) < 1e-6, report
        assert t["target_ms"] == BASE_MS + PER_ITEM_MS, report
        assert abs(t["emulated_ms"] - (BASE_MS + PER_ITEM_MS)) < 1.5, report
    # the client sees the delay plus the batch's device time (plus its own HTTP path)
    assert want_ms - 1.0 <= np.median(trips) < want_ms + 10.0, report


def test_requests_arriving_within_the_delay_share_a_batch(
    tier_factory: Callable[..., TierProcess],
) -> None:
    """3 requests, max_batch 8: the batch forms when the oldest has waited the delay (60 ms)
    and holds all 3 (base + 3 × per_item)."""
    tp = _gpu(tier_factory, max_batch=8, delay_ms=60.0)
    ts = _timings(burst(tp.url, [infer_request(tp.url)] * 3))
    report = _report(ts)
    print("delay-formed batch:", report)
    for t in ts:
        assert t["batch_size"] == 3 and t["target_ms"] == BASE_MS + 3 * PER_ITEM_MS, report
        assert 60.0 - 8.0 <= t["batch_wait_ms"] == t["queue_ms"] <= 60.0 + 1e-6, report


def test_queue_limit_sheds_batched_requests(tier_factory: Callable[..., TierProcess]) -> None:
    """queue_limit 3: requests waiting in the batcher count; the rest get 503 + Retry-After."""
    tp = _gpu(tier_factory, max_batch=8, delay_ms=150.0, concurrency=1, queue_limit=3)
    answers = burst(tp.url, [infer_request(tp.url)] * 6)
    codes = sorted(a.status_code for a in answers)
    assert codes == [200] * 3 + [503] * 3, codes
    for a in answers:
        if a.status_code == 503:
            assert a.json()["field"] == "model" and "queue_limit 3" in a.json()["detail"]
            assert int(a.header("retry-after") or 0) >= 1
        else:
            assert a.json()["timing"]["batch_size"] == 3
    assert metric(tp.url, "edgebed_requests_total", tier="gpu", model="int8",
                  outcome="queue_full") == 3  # fmt: skip


def _status(url: str) -> dict:
    return exchange(url, request_bytes(url, "GET", "/v1/status")).json()


def test_a_client_leaving_the_batcher_is_aborted(tier_factory: Callable[..., TierProcess]) -> None:
    """on_disconnect abort: a request whose client leaves before its batch starts leaves the
    batcher (not in the next batch, counted aborted); the queue depth shows the batcher."""
    tp = _gpu(tier_factory, max_batch=8, delay_ms=400.0, on_disconnect="abort")
    abandon(tp.url, infer_request(tp.url), after_s=0.05)
    deadline = time.monotonic() + 5.0
    while metric(tp.url, "edgebed_tier_abandoned_total", tier="gpu", model="int8",
                 action="aborted") < 1 and time.monotonic() < deadline:  # fmt: skip
        time.sleep(0.01)
    assert metric(tp.url, "edgebed_tier_abandoned_total", tier="gpu", model="int8",
                  action="aborted") == 1  # fmt: skip
    assert _status(tp.url)["queue_depth"] == 0
    t = exchange(tp.url, infer_request(tp.url)).json()["timing"]
    assert t["batch_size"] == 1, t
    assert metric(tp.url, "edgebed_tier_batch_size_sum", tier="gpu", model="int8") == 1


def test_real_mode_batches_and_reports_the_real_compute(
    tier_factory: Callable[..., TierProcess],
) -> None:
    tp = tier_factory(
        "gpu", device_time="real",
        config_overrides={"models": {"int8": {"batching": {"max_batch": 4,
                                                           "max_queue_delay_ms": 200.0}}}},
    )  # fmt: skip
    ts = _timings(burst(tp.url, [infer_request(tp.url)] * 4))
    for t in ts:
        assert t["batch_size"] == 4 and t["send_lead_ms"] == 0.0, t
        # the batch's device time is its four real invokes (tens of µs each)
        assert t["emulated_ms"] == t["target_ms"] >= t["compute_ms"] > 0.0, t
        assert t["emulated_ms"] < 20.0, t
