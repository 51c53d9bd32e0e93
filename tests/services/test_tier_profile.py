"""Profile mode over real HTTP: emulated device time, real queueing under concurrency, 503."""

from __future__ import annotations

import http.client
import json
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np
import pytest

from services.tier.process import TierProcess

BINARY = {"content-type": "application/octet-stream"}
TOL_MS = 1.0


def check_holds(
    held_ms: list[float] | np.ndarray, target_ms: list[float] | np.ndarray, what: str
) -> None:
    """Holds match their targets: median error ≤ 0.3 ms and ≥ 90 % of holds within ±TOL_MS.

    On this project's 2-core VM, a SCHED_FIFO hold thread is still woken late now and then (a
    vCPU descheduled by the host: single holds 1–4 ms late at load average ~1); such outliers
    are printed, not hidden, and bounded by the 90 % rule. ``bench/bench_tier.py`` has the
    full distribution.
    """
    held, target = np.asarray(held_ms, dtype=float), np.asarray(target_ms, dtype=float)
    err = np.abs(held - target)
    load = os.getloadavg()[0]
    report = f"{what}: configured {np.round(target, 3)} ms ± {TOL_MS}, measured {np.round(held, 3)}"
    assert np.median(err) <= 0.3, report
    assert (err <= TOL_MS).mean() >= 0.9, f"{report} (load average {load:.1f})"
    if (err > TOL_MS).any():
        print(f"note: {int((err > TOL_MS).sum())} of {len(err)} holds outside ±{TOL_MS} ms "
              f"(load average {load:.1f}); {report}")


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict:
        return json.loads(self.body)


def _post_many(url: str, n: int, model: str = "int8") -> list[Answer]:
    """``n`` binary infer requests that reach the server together.

    Connections are opened first, then the complete pre-built requests are written back to
    back (microseconds apart), so the burst does not depend on how fast a client library is
    on a busy host.
    """
    host, port = url.removeprefix("http://").split(":")
    request = (
        f"POST /v1/infer?model={model} HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: 784\r\n\r\n"
    ).encode() + bytes(784)
    socks = [socket.create_connection((host, int(port)), timeout=30) for _ in range(n)]
    try:
        for s in socks:
            s.sendall(request)
        answers = []
        for s in socks:
            resp = http.client.HTTPResponse(s)
            resp.begin()
            answers.append(Answer(resp.status, dict(resp.getheaders()), resp.read()))
        return answers
    finally:
        for s in socks:
            s.close()


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
    for model, (configured_ms, got) in errors.items():
        check_holds(got, [configured_ms] * len(got), model)


def test_answer_leaves_the_tier_one_device_time_after_it_arrived(
    tier_factory: Callable[..., TierProcess],
) -> None:
    """The device time covers the tier's own handling: a hold ends ``send_lead_ms`` early (the
    learned time from hold end to the answer on the socket), so what a client sees is the
    device time plus only the HTTP parse before the handler and the client's own cost."""
    tp = tier_factory("edge", config_overrides={"models": {"int8": {"latency_ms": 10.0}}})
    host, port = tp.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    seen, leads = [], []
    try:
        for _ in range(60):
            time.sleep(0.01)
            t0 = time.perf_counter()
            conn.request("POST", "/v1/infer?model=int8", body=bytes(784), headers=BINARY)
            body = conn.getresponse().read()
            seen.append((time.perf_counter() - t0) * 1000.0)
            leads.append(json.loads(body)["timing"]["send_lead_ms"])
    finally:
        conn.close()
    over = np.median(seen[20:]) - 10.0
    report = (f"configured 10 ms; client round trip median {np.median(seen[20:]):.3f} ms; "
              f"send lead learned {leads[-1]:.3f} ms (first {leads[0]:.3f})")
    print(report)
    assert leads[0] == 0.0 and 0.0 < leads[-1] <= 1.0, report
    assert -0.3 <= over <= 1.5, report


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
    check_holds(held, targets, "int8 with uniform jitter")


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
    check_holds(held, [service_ms] * len(held), "int8 at concurrency 1")
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
            assert int({k.lower(): v for k, v in r.headers.items()}["retry-after"]) >= 1
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
