"""LiteRT invoke latency per committed model: p50/p99 µs of ``invoke()`` alone and of a full predict.

    python bench/bench_models.py [--n 5000]

``invoke`` is set_tensor + invoke on a prepared input tensor; ``predict`` adds input
quantization (uint8 → model input), output dequantization and renormalisation — the served path.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from models.evaluate import MODEL_NAMES, load_eval_set, load_manifest
from models.paths import models_dir
from models.runtime import LiteRTModel


def _percentiles_us(samples_ns: list[int]) -> tuple[float, float]:
    arr = np.asarray(samples_ns, dtype=np.float64) / 1000.0
    return float(np.percentile(arr, 50)), float(np.percentile(arr, 99))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000, help="timed calls per model (after 200 warm-up)")
    args = ap.parse_args()
    images = load_eval_set()["easy_images"]
    manifest = load_manifest()["models"]
    print(f"LiteRT invoke latency, {args.n} calls per model, 1 thread, "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'model':8} {'bytes':>8} {'params':>7} {'input':>7} "
          f"{'invoke p50':>10} {'p99':>7} {'predict p50':>11} {'p99':>7}  (µs)")
    for name in MODEL_NAMES:
        m = LiteRTModel(models_dir() / f"{name}.tflite")
        x = m.prepared(images[0])
        for i in range(200):
            m.invoke_only(x)
            m.predict(images[i])
        inv, pred = [], []
        for i in range(args.n):
            t0 = time.perf_counter_ns()
            m.invoke_only(x)
            inv.append(time.perf_counter_ns() - t0)
            img = images[i % len(images)]
            t0 = time.perf_counter_ns()
            m.predict(img)
            pred.append(time.perf_counter_ns() - t0)
        i50, i99 = _percentiles_us(inv)
        p50, p99 = _percentiles_us(pred)
        entry = manifest[name]
        print(f"{name:8} {entry['bytes']:>8} {entry['parameters']:>7} {m.input_dtype.name:>7} "
              f"{i50:>10.1f} {i99:>7.1f} {p50:>11.1f} {p99:>7.1f}")


if __name__ == "__main__":
    main()
