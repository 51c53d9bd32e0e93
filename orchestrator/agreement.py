"""Check the testbed against the simulator where they should agree: always_cloud on CV requests.

Starts a profile-mode CLOUD tier (device time 12 ms, emulated) behind a userspace link proxy
(``python -m netem.proxy``) drawing the simulator's RTT (integer-uniform 30–120 ms, one draw per
request), replays a CV-only workload through ``always_cloud`` and compares the mean latency
with the simulator's expectation, cloud compute + mean RTT.

Two expectations are reported. *Same draws* (the criterion): the simulator fed the RTTs this run
drew, 12 ms + the mean of the link's draws for these requests (the proxy counts them,
``edgebed_link_drawn_delay_seconds_total``) — common random numbers, so the comparison measures
the testbed, not the luck of 500 draws (their mean has a standard error of 1.2 ms, half the 3 %
budget). *Law*: 12 + 75 = 87 ms, the simulator's long-run mean. A direct run without the link
measures the host's HTTP overhead, so a miss can be attributed.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from netem.proxy import proxy_subprocess
from orchestrator.profiles import SIM_LATENCY_MS, SIM_RTT_RANGE_MS
from orchestrator.run import run_experiment
from services.tier.classes import ESCALATION_LADDER

CLOUD = ESCALATION_LADDER[-1]  # the simulator's cloud row, served by a node named after it
LINK = f"device-{CLOUD}"


@contextmanager
def link_proxy(links: dict[str, dict[str, Any]], seed: int = 5) -> Iterator[dict[str, str]]:
    """Run the link proxy for ``links`` ({name: LinkSpec fields with ``target``});
    yields {name: "http://host:port", "control": control API URL}; stops the proxy after."""
    listening = {n: {"listen": "127.0.0.1:0", **spec} for n, spec in links.items()}
    with proxy_subprocess(listening, seed=seed) as ready:
        urls = {name: f"http://{addr}" for name, addr in ready["links"].items()}
        urls["control"] = ready["control"]
        yield urls


def link_counters(control_url: str, link: str, direction: str = "up") -> dict[str, float]:
    """The proxy's own figures for one link direction (chunks, applied delay sum/count)."""
    text = httpx.get(f"{control_url}/metrics", trust_env=False).text
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.labels.get("link") == link and s.labels.get("direction") == direction:
                out[s.name] = s.value
    return out


@dataclass
class Agreement:
    n: int
    expected_ms: float  # simulator, same draws: cloud compute + mean of this run's RTT draws
    law_expected_ms: float  # simulator, long run: cloud compute + the law's mean RTT (87 ms)
    measured_ms: float  # mean latency_ms of the live run
    device_ms: float  # mean device time the tier held each request (emulated)
    drawn_rtt_ms: float  # mean RTT the link drew for the run's requests
    link_delay_ms: float  # mean delay the proxy applied per uplink chunk
    link_chunks: int  # uplink chunks the proxy forwarded
    link_draws: int  # uplink delay draws (one per message: one per request)
    baseline_overhead_ms: float  # same requests without the link: latency - device time
    outcomes: dict[str, int]

    @property
    def error_pct(self) -> float:
        """Error against the simulator fed the same RTT draws (the criterion)."""
        return 100.0 * abs(self.measured_ms - self.expected_ms) / self.expected_ms

    @property
    def law_error_pct(self) -> float:
        return 100.0 * abs(self.measured_ms - self.law_expected_ms) / self.law_expected_ms

    def report(self) -> str:
        compute = SIM_LATENCY_MS[CLOUD]["fp32"]
        return (
            f"simulator: CLOUD fp32 {compute:.0f} ms + RTT U{list(SIM_RTT_RANGE_MS[CLOUD])}; "
            f"same draws: {compute:.0f} + {self.drawn_rtt_ms:.2f} = {self.expected_ms:.2f} ms, "
            f"law: {self.law_expected_ms:.1f} ms; testbed mean {self.measured_ms:.2f} ms = device "
            f"{self.device_ms:.2f} + link {self.link_delay_ms:.2f} + HTTP/host "
            f"{self.measured_ms - self.device_ms - self.link_delay_ms:.2f} ms (no-link baseline "
            f"overhead {self.baseline_overhead_ms:.2f} ms); error {self.error_pct:.2f} % vs same "
            f"draws, {self.law_error_pct:.2f} % vs law (n={self.n}, {self.link_draws} uplink draws)"
        )  # fmt: skip


def measure_agreement(
    out_dir: str | Path, *, n: int = 500, rate_rps: float = 20.0, seed: int = 5,
    baseline_n: int = 100, realtime: bool = False,
) -> Agreement:  # fmt: skip
    """Run the check (starts and stops its own tier and proxy) and return the figures."""
    from services.tier.process import start_tier

    out = Path(out_dir)
    lo, hi = SIM_RTT_RANGE_MS[CLOUD]
    replay = {"progress": False, "concurrency": 32, "realtime": realtime, "host_lead": "off"}
    workload = {"n": n, "lm_ratio": 0.0}
    arrival = {"process": "poisson", "params": {"rate_rps": rate_rps}}
    with ExitStack() as stack:
        cloud = stack.enter_context(start_tier(
            CLOUD, device_time="profile",
            config_overrides={"concurrency": 16, "queue_limit": 1024}, ready_timeout_s=60,
        ))  # fmt: skip
        base = run_experiment({
            "workload": {"n": baseline_n, "lm_ratio": 0.0}, "arrival": arrival,
            "policies": ["always_cloud"], "replay": replay,
        }, out / "baseline", targets={CLOUD: cloud.url}, plots=False).records  # fmt: skip
        urls = stack.enter_context(link_proxy({LINK: {
            "src": "device", "dst": CLOUD, "rtt_range_ms": [lo, hi],
            "target": f"{cloud.host}:{cloud.port}"}}, seed=seed))  # fmt: skip
        rec = run_experiment({
            "workload": workload, "arrival": arrival, "policies": ["always_cloud"],
            "replay": replay,
        }, out / "linked", targets={CLOUD: urls[LINK]}, plots=False,
            probe=False).records  # fmt: skip
        link = link_counters(urls["control"], LINK)
    count = link.get("edgebed_link_delay_seconds_count", 0.0) or 1.0
    chunks = int(link.get("edgebed_link_chunks_total", 0))
    draws = int(link.get("edgebed_link_messages_total", 0))  # one draw per message
    drawn_ms = 1e3 * link.get("edgebed_link_drawn_delay_seconds_total", 0.0) / max(draws, 1)
    compute_ms = SIM_LATENCY_MS[CLOUD]["fp32"]
    return Agreement(
        n=n,
        expected_ms=compute_ms + drawn_ms,
        law_expected_ms=compute_ms + (lo + hi) / 2,
        measured_ms=float(rec["latency_ms"].mean()),
        device_ms=float(rec["device_ms"].mean()),
        drawn_rtt_ms=drawn_ms,
        link_delay_ms=1e3 * link.get("edgebed_link_delay_seconds_sum", 0.0) / count,
        link_chunks=chunks,
        link_draws=draws,
        baseline_overhead_ms=float((base["latency_ms"] - base["device_ms"]).mean()),
        outcomes={str(k): int(v) for k, v in rec["outcome"].value_counts().items()},
    )
