"""Time ``edgebed demo`` end to end (target: under 3 minutes on a 2-core machine) and print it.

    python bench/bench_demo.py [--config experiments/seed.yaml] [--runs 1]

Runs the demo as a user would (a fresh process, a fresh state dir), and prints the wall time,
the stack start-up time the demo reported, the replay share, and the machine's load average
(figures measured on a busy machine are not comparable with a quiet one).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 180.0


def one_run(config: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="edgebed-bench-demo-") as tmp:
        load_before = os.getloadavg()[0]
        t0 = time.monotonic()
        out = subprocess.run(
            [sys.executable, "-m", "orchestrator.cli", "demo", "--config", str(config),
             "--state-dir", f"{tmp}/state", "--out", f"{tmp}/run", "--no-progress"],
            capture_output=True, text=True, cwd=REPO,
        )
        wall = time.monotonic() - t0
        if out.returncode != 0:
            sys.exit(f"demo failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
        up = re.search(r"stack ready in ([0-9.]+) s", out.stdout)
        inner = re.search(r"demo took ([0-9.]+) s", out.stdout)
        return {
            "wall_s": wall,
            "stack_up_s": float(up.group(1)) if up else float("nan"),
            "demo_s": float(inner.group(1)) if inner else float("nan"),
            "load_1min": (load_before + os.getloadavg()[0]) / 2,
        }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, default=REPO / "experiments" / "seed.yaml")
    p.add_argument("--runs", type=int, default=1)
    args = p.parse_args()
    print(f"edgebed demo --config {args.config.name}  ({os.cpu_count()} CPUs)")
    print(f"{'run':>3} {'wall s':>8} {'stack up s':>11} {'in-demo s':>10} {'start-up s':>11} "
          f"{'load':>6} {'< 3 min':>8}")
    for i in range(args.runs):
        r = one_run(args.config)
        startup = r["wall_s"] - r["demo_s"]  # interpreter + imports before the demo starts
        ok = "yes" if r["wall_s"] < TARGET_S else "NO"
        print(f"{i + 1:>3} {r['wall_s']:>8.1f} {r['stack_up_s']:>11.1f} {r['demo_s']:>10.1f} "
              f"{startup:>11.1f} {r['load_1min']:>6.1f} {ok:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
