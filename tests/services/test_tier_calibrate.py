"""``POST /v1/calibrate``: held like a profile request, not counted as inference traffic."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from orchestrator.calibrate import measure_overhead_ms
from orchestrator.client import make_session
from services.tier.process import TierProcess


def _requests_total(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("edgebed_requests_total{"))


@pytest.mark.slow
def test_calibration_holds_and_is_not_counted(real_tiers: dict[str, TierProcess]) -> None:
    url = real_tiers["edge"].url
    with httpx.Client(base_url=url, timeout=10.0) as client:
        before = _requests_total(client.get("/metrics").text)
        r = client.post("/v1/calibrate?hold_ms=20", content=bytes(784),
                        headers={"content-type": "application/octet-stream"})
        assert r.status_code == 200, r.text
        held = r.json()["timing"]["emulated_ms"]
        assert 19.0 <= held <= 30.0, held  # held, even in a real-mode tier
        for bad in ("-1", "101", "nan", "abc", "1e400"):
            b = client.post(f"/v1/calibrate?hold_ms={bad}", content=b"")
            assert b.status_code == 422 and b.json()["field"] == "hold_ms", (bad, b.text)
        after = _requests_total(client.get("/metrics").text)
    assert after == before, "calibration requests were counted as inference requests"

    async def measure() -> float:
        async with make_session(2) as session:
            return await measure_overhead_ms(session, url, n=8)

    overhead = asyncio.run(measure())
    # what the host adds to a loopback request: more than nothing, far less than the hold
    assert 0.0 < overhead < 10.0, overhead
