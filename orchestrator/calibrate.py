"""Measure this host's own HTTP overhead per tier, so profile-mode tiers can absorb it.

The teaching simulator's latency is device time + RTT. On a real host every request also pays
the client, the loopback stack, the server's HTTP framing and, above all on a VM, process
wake-ups: on the project's 2-core VM a loopback round trip costs 0.2 ms back to back but ~0.9 ms
after 20 ms idle (blocking sockets, no framework), and a replayed request ~1.4 ms. That is not
part of the emulated system. Before each pass the orchestrator sends a few calibration requests
on the *direct* path to each tier (``POST /v1/calibrate``: held 20 ms like a profile request,
no inference, not counted as traffic) one after another, as serial replay does, and takes the
trimmed mean of latency − the tier's held time. The tier then ends its profile holds that much
earlier (``x-edgebed-host-lead-ms``), never below its real compute. Links are not calibrated:
what the link proxy adds is its own infidelity and stays visible in the fidelity table.
"""

from __future__ import annotations

import json
import time

import aiohttp
from scipy import stats

from orchestrator.client import make_session

CALIBRATION_HOLD_MS = 20.0  # idle long enough to pay full wake-ups: 5 ms gave 0.64-0.82 ms, >= 10 ms 0.81-0.93
CALIBRATION_N = 16
CALIBRATION_WARMUP = 3
MAX_LEAD_MS = 5.0
CALIBRATION_BODY = bytes(784)


async def measure_overhead_ms(
    client: aiohttp.ClientSession, url: str, *, n: int = CALIBRATION_N,
    hold_ms: float = CALIBRATION_HOLD_MS,
) -> float:
    """Mean (latency − held device time) in ms of ``n`` calibration requests to ``url``, the
    slowest and fastest tenth left out (a host stall must not set every request's lead).

    Raises ``LookupError`` when the tier has no calibration endpoint, ``OSError``/aiohttp errors
    when it cannot be reached."""
    endpoint = f"{url.rstrip('/')}/v1/calibrate?hold_ms={hold_ms:g}"
    out = []
    headers = {"content-type": "application/octet-stream"}
    for i in range(n + CALIBRATION_WARMUP):
        t0 = time.perf_counter()
        async with client.post(endpoint, data=CALIBRATION_BODY, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=10)) as resp:
            body = await resp.read()
        latency_ms = (time.perf_counter() - t0) * 1e3
        if resp.status == 404:
            raise LookupError(f"{url} has no /v1/calibrate endpoint")
        if resp.status != 200:
            raise OSError(f"{endpoint}: HTTP {resp.status}")
        held_ms = float(json.loads(body)["timing"]["emulated_ms"])
        if i >= CALIBRATION_WARMUP:
            out.append(latency_ms - held_ms)
    return float(stats.trim_mean(out, 0.1))


async def host_leads_ms(direct_urls: dict[str, str]) -> tuple[dict[str, float], dict[str, str]]:
    """Host lead per tier (ms, within 0..MAX_LEAD_MS) and a note per tier that got none."""
    leads: dict[str, float] = {}
    notes: dict[str, str] = {}
    async with make_session(4) as client:
        for tier, url in direct_urls.items():
            try:
                overhead = await measure_overhead_ms(client, url)
            except (TimeoutError, LookupError, OSError, aiohttp.ClientError, KeyError, ValueError) as exc:
                notes[tier] = f"not calibrated: {type(exc).__name__}: {exc}"[:200]
                continue
            leads[tier] = float(min(max(overhead, 0.0), MAX_LEAD_MS))
    return leads, notes
