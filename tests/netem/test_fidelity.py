"""Acceptance fidelity of the proxy backend on loopback (real processes, >= 500 probes each).

Proxy, echo server and probe run as separate processes (SCHED_FIFO when root, so a busy host's
scheduler does not masquerade as link jitter). The link's part of each round trip is the probe
RTT minus the median RTT of the direct path to the echo server, no proxy (``--baseline-target``),
probed at the shaped link's pace so endpoints wake from idle in both (netem.probe.paced_baseline_ms):
the link is charged with everything it adds, its own forwarding included, as the tc backend's
check charges netem against the bare veth.
Criteria (issue 4): achieved mean within max(0.5 ms, 2 %) of the configured mean; KS test
(±0.5 ms timing tolerance, see netem.spec.ks_1samp) not rejecting the configured law at p = 0.01.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, echo_process, proxy_process

from netem.probe import format_table

pytestmark = pytest.mark.slow

ROOT = os.geteuid() == 0
CASES = {
    # name: (link spec, probes)
    "fixed-10": ({"delay_ms": 5}, 500),                           # 5 ms each way = 10 ms RTT
    "uniform-30-120": ({"rtt_range_ms": [30, 120]}, 4000),        # the simulator's cloud RTT
    "normal-50-10": ({"distribution": "normal", "delay_ms": 25,   # N(25, 7.07) each way
                      "jitter_ms": 10 / 2**0.5}, 1000),            # = N(50, 10) round trip
}


def _probe(target: str, baseline: str, config: Path, name: str, n: int, out: Path) -> dict:
    argv = [sys.executable, "-m", "orchestrator.cli", "link", "probe", "--target", target,
            "--baseline-target", baseline, "--n", str(n),
            "--concurrency", "8", "--link-config", str(config), "--link", name,
            "--json", str(out)]
    if ROOT:
        argv.append("--realtime")
    res = subprocess.run(argv, capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.exists(), res.stderr
    return json.loads(out.read_text())


def _host_wake_lateness_us(n: int = 200) -> tuple[float, float]:
    """p50/p95 lateness of 2 ms sleeps on this host (µs): how noisy its timer wake-ups are."""
    late = []
    for _ in range(n):
        t0 = time.perf_counter()
        time.sleep(0.002)
        late.append((time.perf_counter() - t0 - 0.002) * 1e6)
    late.sort()
    return late[n // 2], late[int(n * 0.95)]


def _measure(case: str, tmp_path: Path) -> tuple[dict, dict]:
    spec, n = CASES[case]
    with echo_process(realtime=ROOT) as echo:
        links = {case: {**spec, "target": echo}}
        config = tmp_path / "links.yaml"
        config.write_text(json.dumps({"links": links}))
        with proxy_process(links, realtime=ROOT, control=False) as ready:
            rep = _probe(ready["links"][case], echo, config, case, n, tmp_path / "report.json")
    return rep, ready


# The VM's host now and then stalls its vCPUs for a few hundred milliseconds (seen in about one
# of eight bench runs: the unshaped baseline and every link figure inflated together). A
# fixed-10 run lasts under a second, so such a stall can cover much of it. A case that fails is
# therefore measured once more and both tables are printed; a real fault fails both times.
ATTEMPTS = 2


@pytest.mark.parametrize("case", list(CASES))
def test_proxy_fidelity(case: str, tmp_path: Path) -> None:
    for attempt in range(1, ATTEMPTS + 1):
        wake50, wake95 = _host_wake_lateness_us()
        rep, ready = _measure(case, tmp_path)
        print(format_table([rep]))
        load = ("host load avg {:.1f} {:.1f} {:.1f}".format(*os.getloadavg())
                + f"; 2 ms sleeps wake late by p50 {wake50:.0f} µs, p95 {wake95:.0f} µs")
        print(load)
        print(f"baseline (direct path, no proxy) median {rep['baseline_ms']:.3f} ms; "
              f"proxy scheduling: {ready.get('realtime')}; chunk arrival: {ready.get('arrival')}")
        if rep["mean_ok"] and rep["ks_ok"]:
            break
        print(f"attempt {attempt} of {ATTEMPTS} missed" + (", measuring again"
                                                          if attempt < ATTEMPTS else ""))
    assert rep["n"] >= 500
    assert rep["mean_ok"], (f"configured mean {rep['configured']['mean_ms']:.3f} ms, achieved "
                            f"{rep['achieved']['mean_ms']:.3f} ms, tolerance "
                            f"{rep['mean_tolerance_ms']:.3f} ms; {load}")
    assert rep["ks_ok"], (f"KS D={rep['ks_statistic']:.4f} p={rep['ks_pvalue']:.4g} against "
                          f"{rep['configured_law']}; {load}")
