"""Check the testbed against the simulator where they should agree: always_cloud on CV requests.

Starts a profile-mode CLOUD tier (device time 12 ms, emulated) behind a userspace link proxy
(``python -m netem.proxy``) drawing the simulator's RTT (integer-uniform 30–120 ms, one draw per
request), replays a CV-only workload through ``always_cloud`` and compares the mean latency
with the simulator's expectation, cloud compute + mean RTT = 12 + 75 = 87 ms. The proxy's own
counters tell how many draws were made and their mean, and a direct run without the link
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
from orchestrator.experiment import run_experiment
from orchestrator.profiles import SIM_LATENCY_MS, SIM_RTT_RANGE_MS


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
    expected_ms: float  # simulator: cloud compute + mean RTT
    measured_ms: float  # mean latency_ms of the live run
    device_ms: float  # mean device time the tier held each request (emulated)
    link_delay_ms: float  # mean delay the proxy applied per uplink chunk
    link_chunks: int  # uplink chunks the proxy forwarded (requests + 2 run probes)
    baseline_overhead_ms: float  # same requests without the link: latency - device time
    outcomes: dict[str, int]

    @property
    def error_pct(self) -> float:
        return 100.0 * abs(self.measured_ms - self.expected_ms) / self.expected_ms

    def report(self) -> str:
        return (
            f"simulator: CLOUD fp32 {SIM_LATENCY_MS['CLOUD']['fp32']:.0f} ms + RTT "
            f"U{list(SIM_RTT_RANGE_MS['CLOUD'])} (mean 75 ms) = {self.expected_ms:.1f} ms; "
            f"testbed mean {self.measured_ms:.2f} ms = device {self.device_ms:.2f} + link "
            f"{self.link_delay_ms:.2f} + HTTP/host {self.measured_ms - self.device_ms - self.link_delay_ms:.2f} ms "
            f"(no-link baseline overhead {self.baseline_overhead_ms:.2f} ms); "
            f"error {self.error_pct:.2f} % (n={self.n}, {self.link_chunks} uplink chunks)"
        )  # fmt: skip


def measure_agreement(
    out_dir: str | Path, *, n: int = 500, rate_rps: float = 20.0, seed: int = 5,
    baseline_n: int = 100, realtime: bool = False,
) -> Agreement:  # fmt: skip
    """Run the check (starts and stops its own tier and proxy) and return the figures."""
    from services.tier.process import start_tier

    out = Path(out_dir)
    lo, hi = SIM_RTT_RANGE_MS["CLOUD"]
    replay = {"progress": False, "concurrency": 32, "timeout_min_s": 20.0, "realtime": realtime}
    workload = {"n": n, "lm_ratio": 0.0}
    arrival = {"name": "poisson", "params": {"rate_rps": rate_rps}}
    with ExitStack() as stack:
        cloud = stack.enter_context(start_tier(
            "cloud", device_time="profile",
            config_overrides={"concurrency": 16, "queue_limit": 1024}, ready_timeout_s=60,
        ))  # fmt: skip
        base = run_experiment({
            "workload": {"n": baseline_n, "lm_ratio": 0.0}, "arrival": arrival,
            "policies": ["always_cloud"], "targets": {"CLOUD": cloud.url}, "replay": replay,
        }, out / "baseline", plots=False).records  # fmt: skip
        urls = stack.enter_context(link_proxy({"device-cloud": {
            "src": "device", "dst": "cloud", "rtt_range_ms": [lo, hi],
            "target": f"{cloud.host}:{cloud.port}"}}, seed=seed))  # fmt: skip
        rec = run_experiment({
            "workload": workload, "arrival": arrival, "policies": ["always_cloud"],
            "targets": {"CLOUD": urls["device-cloud"]}, "replay": replay,
        }, out / "linked", plots=False).records  # fmt: skip
        link = link_counters(urls["control"], "device-cloud")
    count = link.get("edgebed_link_delay_seconds_count", 0.0) or 1.0
    return Agreement(
        n=n,
        expected_ms=SIM_LATENCY_MS["CLOUD"]["fp32"] + (lo + hi) / 2,
        measured_ms=float(rec["latency_ms"].mean()),
        device_ms=float(rec["device_ms"].mean()),
        link_delay_ms=1e3 * link.get("edgebed_link_delay_seconds_sum", 0.0) / count,
        link_chunks=int(link.get("edgebed_link_chunks_total", 0)),
        baseline_overhead_ms=float((base["latency_ms"] - base["device_ms"]).mean()),
        outcomes={str(k): int(v) for k, v in rec["outcome"].value_counts().items()},
    )
