"""Benchmark the orchestrator's open-loop replay: send-time precision, highest sustained rate.

1. Open-loop Poisson at 100 requests/s for 20 s against a live EDGE tier (always_edge, CV):
   the lag between each request's intended and actual send time (target: p99 <= 2 ms).
2. The highest replay rate the orchestrator sustains against a zero-work tier (device_time
   real: the tier only runs the ~15 µs LiteRT tinycnn invoke): constant arrivals at rising
   rates; a rate is sustained when >= 99 % are answered, the pass finishes within 5 % of its
   scheduled duration and p99 send lag stays <= 5 ms.
3. Agreement with the simulator (``orchestrator.agreement``): always_cloud on CV requests,
   profile-mode CLOUD behind a link proxy with the simulator's RTT range; mean latency vs
   12 + 75 = 87 ms (target: within 3 %), with the host's own HTTP overhead for attribution.

    python bench/bench_replay.py [--rate-rps 100] [--duration-s 20] [--max-rate-rps 3200]

Prints both figures. Timings depend on how loaded the host is; say so when quoting them.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from orchestrator.agreement import measure_agreement
from orchestrator.run import run_experiment
from services.tier.process import start_tier


def one_pass(
    url: str,
    rate_rps: float,
    duration_s: float,
    process: str,
    out: Path,
    concurrency: int,
    realtime: bool = False,
) -> dict[str, float]:
    n = max(1, int(rate_rps * duration_s))
    t0 = time.perf_counter()
    result = run_experiment(
        {
            "name": f"bench-{process}-{rate_rps:g}",
            "seeds": 1,
            "workload": {"n": n, "lm_ratio": 0.0},
            "arrival": {"process": process, "params": {"rate_rps": rate_rps}},
            "policies": [{"name": "always_edge", "params": {"cv_route": "edge/tinycnn"}}],
            "replay": {
                "concurrency": concurrency,
                "progress": False,
                "realtime": realtime,
                "host_lead": "off",
            },
        },
        out,
        targets={"edge": url},
        plots=False,
    )
    wall_s = time.perf_counter() - t0
    rec = result.records
    lag = rec["send_lag_ms"].to_numpy()
    last_send = float(rec["schedule_s"].max())
    return {
        "n": n,
        "ok_pct": 100.0 * float((rec["outcome"] == "ok").mean()),
        "lag_p50_ms": float(np.percentile(lag, 50)),
        "lag_p99_ms": float(np.percentile(lag, 99)),
        "lag_max_ms": float(lag.max()),
        "latency_p50_ms": float(rec["latency_ms"].median()),
        "latency_p99_ms": float(rec["latency_ms"].quantile(0.99)),
        "scheduled_s": last_send,
        "pass_s": float(result.passes[0].duration_s) if result.passes else float("nan"),
        "wall_s": wall_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rate-rps", type=float, default=100.0)
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--max-rate-rps", type=float, default=3200.0)
    p.add_argument("--step-duration-s", type=float, default=5.0)
    p.add_argument(
        "--concurrency",
        type=int,
        default=512,
        help="max in flight; high so the schedule, not the window, sets send times",
    )
    p.add_argument("--start-rate-rps", type=float, default=25.0)
    p.add_argument(
        "--agreement-n",
        type=int,
        default=500,
        help="requests for the simulator-agreement check (0 = skip it)",
    )
    p.add_argument(
        "--realtime",
        action="store_true",
        help="replay loop under SCHED_FIFO (root): precise sends on a busy host",
    )
    args = p.parse_args(argv)

    overrides = {"concurrency": 8, "queue_limit": 4096}
    with (
        start_tier("edge", device_time="real", config_overrides=overrides) as tier,
        tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp,
    ):
        print(
            f"tier: {tier.url} (EDGE, device_time real, tinycnn); replay realtime: "
            f"{args.realtime}; host load average: {os.getloadavg()[0]:.2f}"
        )
        r = one_pass(
            tier.url,
            args.rate_rps,
            args.duration_s,
            "poisson",
            Path(tmp) / "p",
            args.concurrency,
            args.realtime,
        )
        verdict = "PASS" if r["lag_p99_ms"] <= 2.0 else "FAIL"
        print(
            f"\n[1] open-loop Poisson {args.rate_rps:g} req/s for {args.duration_s:g} s "
            f"({r['n']} requests): send lag p50 {r['lag_p50_ms']:.3f} ms, "
            f"p99 {r['lag_p99_ms']:.3f} ms, max {r['lag_max_ms']:.3f} ms "
            f"(target p99 <= 2 ms: {verdict}); answered {r['ok_pct']:.1f} %, "
            f"latency p50 {r['latency_p50_ms']:.2f} ms p99 {r['latency_p99_ms']:.2f} ms"
        )

        print("\n[2] constant-rate steps against the zero-work tier:")
        print(
            f"{'rate':>8} {'n':>6} {'ok%':>6} {'lag p50':>8} {'lag p99':>8} {'lag max':>8} "
            f"{'lat p50':>8} {'sched s':>8} {'pass s':>7}  sustained"
        )
        best = 0.0
        rate = args.start_rate_rps
        k = 0
        while rate <= args.max_rate_rps:
            k += 1
            r = one_pass(
                tier.url,
                rate,
                args.step_duration_s,
                "constant",
                Path(tmp) / f"c{k}",
                args.concurrency,
                args.realtime,
            )
            ok = (
                r["ok_pct"] >= 99.0
                and r["pass_s"] <= r["scheduled_s"] * 1.05 + 0.05
                and r["lag_p99_ms"] <= 5.0
            )
            print(
                f"{rate:8.0f} {r['n']:6d} {r['ok_pct']:6.1f} {r['lag_p50_ms']:8.3f} "
                f"{r['lag_p99_ms']:8.3f} {r['lag_max_ms']:8.2f} {r['latency_p50_ms']:8.2f} "
                f"{r['scheduled_s']:8.2f} {r['pass_s']:7.2f}  {'yes' if ok else 'no'}"
            )
            if not ok:
                break
            best = rate
            rate *= 1.5
        print(
            f"\nhighest sustained replay rate: {best:.0f} req/s "
            f"(one orchestrator process, one zero-work tier, concurrency {args.concurrency})"
        )
        if args.agreement_n > 0:
            a = measure_agreement(
                Path(tmp) / "agreement", n=args.agreement_n, realtime=args.realtime
            )
            verdict = "PASS" if a.error_pct <= 3.0 else "FAIL"
            print(f"\n[3] {a.report()} (target <= 3 %: {verdict}); outcomes {a.outcomes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
