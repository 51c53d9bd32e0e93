"""Recompute the manifest's figures from the committed files with LiteRT only (no TensorFlow).

``edgebed models eval`` prints, per model, accuracy on the committed easy and hard sets and the
median invoke time; ``--check`` exits 1 when a file's sha256 or any accuracy differs from
``models/manifest.json``. The research models (``research`` in the manifest: segments,
multi-exit, variants, multi-scale) are recomputed by :mod:`models.research` the same way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from models.paths import eval_set_path, manifest_path, models_dir
from models.runtime import LiteRTModel, median_invoke_time_us

MODEL_NAMES = ("fp32", "int8", "tinycnn")
TIMING_INVOKES = 300


def load_eval_set(path: Path | None = None) -> dict[str, np.ndarray]:
    with np.load(path or eval_set_path()) as z:
        return {k: z[k] for k in z.files}


def load_manifest() -> dict[str, Any]:
    return json.loads(manifest_path().read_text())


def describe_model(path: Path) -> dict[str, Any]:
    m = LiteRTModel(path)
    return {
        "file": f"models/{path.name}",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bytes": path.stat().st_size,
        "input": {"dtype": m.input_dtype.name, "shape": list(m.input_shape),
                  "scale": m.input_quant[0], "zero_point": int(m.input_quant[1])},
        "output": {"dtype": m.output_dtype.name, "scale": m.output_quant[0],
                   "zero_point": int(m.output_quant[1])},
    }


def median_invoke_us(model: LiteRTModel, image: np.ndarray, n: int = TIMING_INVOKES) -> float:
    x = model.prepared(image)
    return median_invoke_time_us(lambda: model.invoke_only(x), n)


def evaluate_model(path: Path, eval_set: dict[str, np.ndarray]) -> dict[str, Any]:
    model = LiteRTModel(path)
    out: dict[str, Any] = {}
    for split in ("easy", "hard"):
        pred = model.predict_batch(eval_set[f"{split}_images"])
        labels = eval_set[f"{split}_labels"].astype(np.int64)
        correct = int((pred == labels).sum())
        out[f"correct_{split}"] = correct
        out[f"accuracy_{split}_pct"] = round(100.0 * correct / len(labels), 2)
    out["median_invoke_us"] = median_invoke_us(model, eval_set["easy_images"][0])
    return out


def main(check: bool = False, as_json: bool = False, research: bool = True,
         write_timings: bool = False) -> int:
    manifest = load_manifest()
    eval_set = load_eval_set()
    rows = []
    problems = []
    expected_eval = manifest.get("eval_set", {}).get("sha256")
    actual_eval = hashlib.sha256(eval_set_path().read_bytes()).hexdigest()
    if expected_eval and expected_eval != actual_eval:
        problems.append(f"evaluation set sha256 {actual_eval[:12]}… != manifest {expected_eval[:12]}…")
    for name in MODEL_NAMES:
        path = models_dir() / f"{name}.tflite"
        want = manifest["models"][name]
        got = describe_model(path) | evaluate_model(path, eval_set)
        rows.append({"model": name, **got})
        if got["sha256"] != want["sha256"]:
            problems.append(f"{name}: sha256 differs from manifest")
        for key in ("correct_easy", "correct_hard", "accuracy_easy_pct", "accuracy_hard_pct"):
            if got[key] != want[key]:
                problems.append(f"{name}: {key} = {got[key]}, manifest says {want[key]}")
    figures: dict[str, Any] = {}
    if research and "research" in manifest:
        from models import research as rs

        figures = rs.research_figures(manifest["research"], eval_set, models_dir())
        problems += rs.compare(manifest["research"], figures)
    if as_json:
        print(json.dumps({"models": rows, "research": figures, "problems": problems}, indent=2))
    else:
        print(f"{'model':8} {'bytes':>7} {'input':>7} {'easy %':>7} {'hard %':>7} "
              f"{'manifest easy/hard %':>21} {'invoke µs':>9}")
        for r in rows:
            want = manifest["models"][r["model"]]
            print(f"{r['model']:8} {r['bytes']:>7} {r['input']['dtype']:>7} "
                  f"{r['accuracy_easy_pct']:>7.2f} {r['accuracy_hard_pct']:>7.2f} "
                  f"{want['accuracy_easy_pct']:>10.2f}/{want['accuracy_hard_pct']:<10.2f} "
                  f"{r['median_invoke_us']:>9.1f}")
        if figures:
            from models.research_report import research_tables

            print()
            print(research_tables(figures))
        print("matches manifest" if not problems else "DIFFERS from manifest:\n  " + "\n  ".join(problems))
    if write_timings:
        if problems:
            print("not writing timings: the files differ from the manifest")
            return 1
        if figures:
            from models import research as rs

            rs.merge(manifest["research"], figures)
            manifest_path().write_text(json.dumps(manifest, indent=2) + "\n")
            print(f"wrote this host's invoke times into {manifest_path()}")
    return 1 if (check and problems) else 0
