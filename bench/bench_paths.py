"""Multi-hop path benchmarks: the proxy's overhead per hop, and the fidelity of paths.

    python bench/bench_paths.py [--quick] [--json FILE]

Overhead: p50/p99 round trip of 64-byte echoes, direct vs through zero-delay paths of 1, 2
and 3 hops (and a plain zero-delay link) served by one proxy subprocess
(``python -m netem.proxy``), interleaved in rounds; added = median over rounds of (path
p50 - that round's direct p50). Target: a path of two hops adds no more than 2x one hop's
overhead (each hop is a real listener: a loopback TCP connection and one pass through the
proxy's event loop).

Fidelity: paths measured with :func:`netem.probe.probe_path` against the convolution of their
hops' laws, charged against the direct path to the echo server, the mean judged against what
the hops drew for these probes (the proxy's counters of every hop).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from netem.probe import format_table, measure_rtts, probe_path, start_echo_server  # noqa: E402
from netem.proxy import proxy_subprocess  # noqa: E402
from netem.sched import set_realtime  # noqa: E402
from netem.spec import Topology  # noqa: E402

ROOT = os.geteuid() == 0
ZERO_LINKS = {"z1": {"src": "device", "dst": "edge-1"},
              "z2": {"src": "edge-1", "dst": "regional"},
              "z3": {"src": "regional", "dst": "cloud"}}
ZERO_PATHS = {"1-hop": ["z1"], "2-hop": ["z1", "z2"], "3-hop": ["z1", "z2", "z3"]}
FIDELITY_LINKS = {
    "device-edge1": {"src": "device", "dst": "edge-1", "delay_ms": 10},
    "edge1-regional": {"src": "edge-1", "dst": "regional", "delay_ms": 20},
    "regional-cloud": {"src": "regional", "dst": "cloud", "rtt_range_ms": [30, 120]},
    "jit-a": {"src": "device", "dst": "e", "up": {"delay_ms": 10, "jitter_ms": 5},
              "down": {"delay_ms": 2}},
    "jit-b": {"src": "e", "dst": "r", "distribution": "normal", "delay_ms": 8, "jitter_ms": 2},
}
FIDELITY_PATHS = {  # name: (hops, probes)
    "fixed-10+20": (["device-edge1", "edge1-regional"], 500),
    "uni+normal": (["jit-a", "jit-b"], 1000),
    "dev-reg-cloud": (["device-edge1", "edge1-regional", "regional-cloud"], 1000),
}


async def overhead(n: int, rounds: int = 6) -> list[dict[str, Any]]:
    echo = await start_echo_server()
    target = f"127.0.0.1:{echo.sockets[0].getsockname()[1]}"
    per = max(100, n // rounds)
    samples: dict[str, list[np.ndarray]] = {}
    try:
        with proxy_subprocess({**ZERO_LINKS, "plain": {"target": target}}, realtime=ROOT,
                              control=False, paths={p: {"hops": h, "target": target}
                                                    for p, h in ZERO_PATHS.items()}) as ready:
            paths = {"direct (no proxy)": target, "plain link": ready["links"]["plain"],
                     **{f"path {p}": ready["paths"][p] for p in ZERO_PATHS}}
            for addr in paths.values():
                await measure_rtts(addr, 50)  # connect, warm up
            for _ in range(rounds):
                for name, addr in paths.items():
                    samples.setdefault(name, []).append(await measure_rtts(addr, per))
            note = (f"proxy subprocess, poll window up to {ready.get('poll_us')} µs, "
                    f"scheduling {ready.get('realtime')}")
    finally:
        await asyncio.sleep(0.2)  # the stopped proxy's connections reach the echo server
        echo.close()
        await echo.wait_closed()
    direct = samples["direct (no proxy)"]
    rows = []
    for name, xs in samples.items():
        added50 = [1000 * float(np.median(x) - np.median(d)) for x, d in zip(xs, direct, strict=True)]
        added99 = [1000 * float(np.percentile(x, 99) - np.percentile(d, 99))
                   for x, d in zip(xs, direct, strict=True)]
        x = np.concatenate(xs)
        rows.append({"path": name, "n": len(x), "p50_us": 1000 * float(np.median(x)),
                     "p99_us": 1000 * float(np.percentile(x, 99)),
                     "added_p50_us": float(np.median(added50)),
                     "added_p50_range_us": (min(added50), max(added50)),
                     "added_p99_us": float(np.median(added99)), "note": note})
    return rows


async def fidelity(quick: bool) -> list[dict[str, Any]]:
    echo = await start_echo_server()
    target = f"127.0.0.1:{echo.sockets[0].getsockname()[1]}"
    topo = Topology.model_validate({"links": FIDELITY_LINKS, "paths": {
        p: {"hops": h, "target": target} for p, (h, _) in FIDELITY_PATHS.items()}})
    reports = []
    try:
        with proxy_subprocess(FIDELITY_LINKS, realtime=ROOT, seed=11, paths={
                p: {"hops": h, "target": target} for p, (h, _) in FIDELITY_PATHS.items()}) as ready:
            for name, (_, n) in FIDELITY_PATHS.items():
                n = min(n, 200) if quick else n
                reports.append(await probe_path(
                    ready["paths"][name], topo.path_law(name), name=name, n=n, concurrency=4,
                    baseline_target=target, baseline_n=200, control_url=ready["control"]))
    finally:
        await asyncio.sleep(0.2)  # the stopped proxy's connections reach the echo server
        echo.close()
        await echo.wait_closed()
    return reports


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer probes (smoke run)")
    ap.add_argument("--no-fidelity", action="store_true", help="overhead table only")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    sched = set_realtime() if ROOT else "normal (not root)"
    load = os.getloadavg()
    print(f"# bench_paths  host load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"{os.cpu_count()} CPUs; probe scheduling: {sched}")
    t0 = time.time()
    rows = asyncio.run(overhead(600 if args.quick else 3000))
    print("\n## Overhead: 64-byte echo round trip, zero-delay paths (target: 2-hop added "
          "<= 2 x 1-hop added)")
    print("   added = median over interleaved rounds of (path p50 - direct p50), [round range]")
    print(f"{'path':<18} {'n':>5} {'p50 us':>8} {'p99 us':>8} {'added p50':>10} "
          f"{'[range]':>13} {'added p99':>10}")
    for r in rows:
        lo, hi = r["added_p50_range_us"]
        print(f"{r['path']:<18} {r['n']:>5} {r['p50_us']:>8.1f} {r['p99_us']:>8.1f} "
              f"{r['added_p50_us']:>10.1f} {f'[{lo:.0f}, {hi:.0f}]':>13} "
              f"{r['added_p99_us']:>10.1f}")
    by = {r["path"]: r for r in rows}
    one, two = by["path 1-hop"], by["path 2-hop"]
    for stat in ("added_p50_us", "added_p99_us"):
        ratio = two[stat] / one[stat] if one[stat] > 0 else float("inf")
        verdict = "MET" if two[stat] <= 2 * one[stat] else "NOT MET"
        print(f"2-hop / 1-hop {stat.split('_')[1]}: {two[stat]:.1f} / {one[stat]:.1f} us = "
              f"{ratio:.2f} -> {verdict} (target <= 2)")
    print(f"({rows[0]['note']})")
    reports: list[dict[str, Any]] = []
    if not args.no_fidelity:
        reports = asyncio.run(fidelity(args.quick))
        print("\n## Fidelity: paths on loopback (link part = RTT - direct-path median; "
              "mean vs the hops' drawn sum)")
        print(format_table(reports))
        for r in reports:
            print(f"  {r['link']:<16} {r['configured_law']}; baseline {r['baseline_ms']:.3f} ms;"
                  f" drawn per hop {r['drawn_by_hop']}")
    print(f"\n# took {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"overhead": rows, "fidelity": reports,
                                               "load_avg": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
