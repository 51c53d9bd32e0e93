"""Link benchmarks: proxy fidelity table (configured vs achieved) and proxy overhead table.

    python bench/bench_links.py [--quick] [--json FILE]

Fidelity (issue 4 acceptance): the proxy (``python -m netem.proxy``) on loopback, a TCP echo
server and the probe, each its own process (SCHED_FIFO when root). Links: fixed 10 ms RTT
(5 ms each way), the simulator's uniform 30–120 ms RTT, normal 50±10 ms RTT (N(25, 7.07) each
way), 20 % loss with a 100 ms RTO penalty, and a 1 Mbit/s link (throughput). The link's part of a
round trip = probe RTT − median RTT of the direct path to the echo server (no proxy), probed at
the link's pace: the link is charged with all it adds, its own forwarding included.

Overhead: p50/p99 round trip of 64-byte echoes, direct vs through a zero-delay link, for the
proxy subprocess (uvloop) and in-process (asyncio default loop). Target: p50 added ≤ 150 µs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from netem.probe import (  # noqa: E402
    fidelity_report,
    format_table,
    measure_rtts,
    measure_throughput,
    paced_baseline_ms,
    start_echo_server,
)
from netem.proxy import serve_links  # noqa: E402
from netem.sched import set_realtime  # noqa: E402
from netem.spec import LinkSpec  # noqa: E402

ROOT = os.geteuid() == 0
FIDELITY = {
    "fixed-10": ({"delay_ms": 5}, 500),
    "uniform-30-120": ({"rtt_range_ms": [30, 120]}, 4000),
    "normal-50-10": ({"distribution": "normal", "delay_ms": 25, "jitter_ms": 10 / 2**0.5}, 1000),
    "loss-20pct-rto100": ({"up": {"loss_pct": 20, "loss_rto_ms": 100}}, 500),
}


class Proc:
    """A child process printing one JSON ready line; stopped on exit."""

    def __init__(self, argv: list[str]) -> None:
        self.p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO,
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        assert self.p.stdout is not None
        self.ready = json.loads(self.p.stdout.readline())

    def __enter__(self) -> dict[str, Any]:
        return self.ready

    def __exit__(self, *exc: object) -> None:
        self.p.terminate()
        self.p.wait(timeout=10)


def _proxy_argv(links: dict[str, Any]) -> list[str]:
    fd, path = tempfile.mkstemp(prefix="edgebed-bench-", suffix=".yaml")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump({"links": links, "seed": 11}, fh)
    return [sys.executable, "-m", "netem.proxy", "--config", path,
            *(["--realtime"] if ROOT else [])]


async def fidelity(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    echo_argv = [sys.executable, "-m", "netem.probe", "serve", "--bind", "127.0.0.1:0"]
    reports = []
    with Proc(echo_argv) as echo:
        target = echo["echo"]
        links = {n: {**spec, "target": target} for n, (spec, _) in FIDELITY.items()}
        links["rate-1mbit"] = {"rate_mbit": 1, "target": target}
        with Proc(_proxy_argv(links)) as ready:
            addr = ready["links"]
            for name, (spec, n) in FIDELITY.items():
                n = min(n, 300) if quick else n
                link = LinkSpec.model_validate(spec)
                base = await paced_baseline_ms(target, link, 200, concurrency=8)
                x = await measure_rtts(addr[name], n, concurrency=8)
                reports.append(fidelity_report(x, link, name=name, baseline_ms=base))
                if link.up.loss_pct:
                    reports[-1]["loss_check"] = loss_check(x - base, link)
            thr = await measure_throughput(addr["rate-1mbit"], 125_000 if quick else 250_000)
    return reports, {"configured_mbit": 1.0, **thr, "proxy_scheduling": ready.get("realtime"),
                     "arrival": ready.get("arrival")}


def loss_check(x_ms: np.ndarray, link: LinkSpec) -> dict[str, Any]:
    """The documented loss model on measured link times: a probe pays the RTO with probability
    loss_pct/100 (binomial, 3.5 σ), and the penalty is the RTO (median slow - median fast)."""
    p, rto = link.up.loss_ratio, link.up.loss_rto_ms
    slow = x_ms >= rto / 2
    n, k = len(x_ms), int(slow.sum())
    sd = float(np.sqrt(n * p * (1 - p)))
    penalty = float(np.median(x_ms[slow]) - np.median(x_ms[~slow])) if 0 < k < n else float("nan")
    return {"n": n, "slow": k, "expected": n * p, "bound": 3.5 * sd, "penalty_ms": penalty,
            "rto_ms": rto, "ok": bool(abs(k - n * p) <= 3.5 * sd and abs(penalty - rto) <= 2.0)}


async def overhead(n: int, rounds: int = 6) -> list[dict[str, Any]]:
    """Round trips direct and through zero-delay links, interleaved in ``rounds`` rounds.

    The VM's host drifts in speed between runs (the direct path's p50 alone moved 77-108 µs
    between runs), so each round measures every path back to back and a path's added latency
    is the median over rounds of (its p50 - that round's direct p50); the range is reported.
    """
    echo = await start_echo_server()
    target = f"127.0.0.1:{echo.sockets[0].getsockname()[1]}"
    per = max(100, n // rounds)
    samples: dict[str, list[np.ndarray]] = {}
    try:
        with Proc(_proxy_argv({"zero": {"target": target}})) as ready, \
                Proc([*_proxy_argv({"zero": {"target": target}}), "--poll-us", "0"]) as ready0:
            proxies = await serve_links({"zero": {"target": target}})
            host, port = proxies.address("zero")
            paths = {"direct (no proxy)": target, "proxy subprocess": ready["links"]["zero"],
                     "proxy, no polling": ready0["links"]["zero"],
                     "proxy in-process": f"{host}:{port}"}
            try:
                for addr in paths.values():
                    await measure_rtts(addr, 50)  # connect, warm up
                for _ in range(rounds):
                    for name, addr in paths.items():
                        samples.setdefault(name, []).append(await measure_rtts(addr, per))
            finally:
                await proxies.close()
        loop_note = (f"epoll loop, adaptive poll window up to {ready['poll_us']:g} µs"
                     if ready.get("poll_us") else "uvloop")
    finally:
        echo.close()
    notes = {"direct (no proxy)": "",
             "proxy subprocess": loop_note + (", SCHED_FIFO" if ROOT else ""),
             "proxy, no polling": "poll_us 0: uvloop, sleeps at once",
             "proxy in-process": "asyncio loop shared with the probe"}
    direct = samples["direct (no proxy)"]
    rows = []
    for name, xs in samples.items():
        added50 = [1000 * float(np.median(x) - np.median(d)) for x, d in zip(xs, direct, strict=True)]
        added99 = [1000 * float(np.percentile(x, 99) - np.percentile(d, 99))
                   for x, d in zip(xs, direct, strict=True)]
        x = np.concatenate(xs)
        rows.append({"path": name, "n": len(x), "p50_us": float(np.median(x)) * 1000,
                     "p99_us": float(np.percentile(x, 99)) * 1000,
                     "added_p50_us": float(np.median(added50)),
                     "added_p50_range_us": (min(added50), max(added50)),
                     "added_p99_us": float(np.median(added99)), "note": notes[name]})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer probes (smoke run)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    sched = set_realtime() if ROOT else "normal (not root)"
    load = os.getloadavg()
    print(f"# bench_links  host load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
          f"{os.cpu_count()} CPUs; probe scheduling: {sched}")
    t0 = time.time()
    reports, thr = asyncio.run(fidelity(args.quick))
    print("\n## Fidelity: proxy backend on loopback (link part = RTT - direct-path median)")
    print(format_table(reports))
    for r in reports:
        print(f"  {r['link']:<18} law: {r['configured_law']}; baseline {r['baseline_ms']:.3f} ms;"
              f" mean error {r['mean_error_ms']:+.3f} ms (tolerance ±{r['mean_tolerance_ms']:.2f},"
              f" sampling SE {r['mean_se_ms']:.2f}); KS±0.5ms D={r['ks_statistic']:.3f}"
              f" p={r['ks_pvalue']:.3f}; raw KS "
              f"D={r['ks_raw_statistic']:.3f} p={r['ks_raw_pvalue']:.3g}")
        if "loss_check" in r:
            lc = r["loss_check"]
            print(f"  {'':<18} loss model: {lc['slow']}/{lc['n']} probes paid the RTO "
                  f"(configured {lc['expected']:.0f} ± {lc['bound']:.0f} at 3.5 σ), penalty "
                  f"{lc['penalty_ms']:.2f} ms (RTO {lc['rto_ms']:g}) -> "
                  f"{'ok' if lc['ok'] else 'NO'}; the mean criterion cannot judge this row at "
                  f"n={lc['n']} (sampling SE {r['mean_se_ms']:.2f} ms > tolerance)")
    ok_rate = 0.95 <= thr["rate_mbit"] <= 1.05
    print(f"  rate-1mbit         configured 1.000 Mbit/s, achieved {thr['rate_mbit']:.3f} Mbit/s "
          f"({'ok' if ok_rate else 'NO'}; target 0.95-1.05)")
    rows = asyncio.run(overhead(500 if args.quick else 3000))
    print("\n## Overhead: 64-byte echo round trip, zero-delay link (target: added p50 <= 150 us)")
    print("   added = median over interleaved rounds of (path p50 - direct p50), [round range]")
    print(f"{'path':<20} {'n':>5} {'p50 us':>8} {'p99 us':>8} {'added p50':>10} "
          f"{'[range]':>13} {'added p99':>10}  note")
    for r in rows:
        lo, hi = r["added_p50_range_us"]
        print(f"{r['path']:<20} {r['n']:>5} {r['p50_us']:>8.1f} {r['p99_us']:>8.1f} "
              f"{r['added_p50_us']:>10.1f} {f'[{lo:.0f}, {hi:.0f}]':>13} "
              f"{r['added_p99_us']:>10.1f}  {r['note']}")
    sub = next(r for r in rows if r["path"] == "proxy subprocess")
    print(f"proxy subprocess added p50 {sub['added_p50_us']:.1f} us -> "
          f"{'MET' if sub['added_p50_us'] <= 150 else 'NOT MET'} (target <= 150 us)")
    print(f"\n# took {time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"fidelity": reports, "throughput": thr,
                                               "overhead": rows, "load_avg": load}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
