"""Figures of the research models (segments, multi-exit, variants, multi-scale) from the files.

The training pipeline (:mod:`models.training.research`, TensorFlow) writes the files and calls
:func:`research_figures` to put their figures into ``manifest.json`` under ``research``;
``edgebed models eval`` calls the same function with LiteRT only and :func:`compare` reports
every figure that differs. Everything here reads only the committed files and evaluation set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from models.chain import Chain, Segment, TensorMeta
from models.runtime import LiteRTModel, resize_images

SPLITS = ("easy", "hard")
# Figures `edgebed models eval --check` insists on; timings vary by host and are not compared.
CHECKED_KEYS = ("sha256", "whole_sha256", "bytes", "parameters", "correct_easy", "correct_hard",
                "accuracy_easy_pct", "accuracy_hard_pct", "mismatches_vs_whole",
                "rows_differing_vs_whole", "probability_vector_length", "weight_sparsity_pct",
                "exit_share_pct", "serving_classes", "serving_classes_run_time", "run_time_bytes", "requantized", "requantized_cuts")
EXIT_THRESHOLDS = (0.8, 0.9, 0.95, 0.99)
WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


# --- files ---


def model_path(models_dir: Path, file: str) -> Path:
    """A manifest ``file`` (``models/segments/x.tflite``) inside ``models_dir``."""
    return models_dir / file.removeprefix("models/")


def file_entry(path: Path, models_dir: Path) -> dict[str, Any]:
    return {"file": "models/" + path.relative_to(models_dir).as_posix(),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "bytes": path.stat().st_size}


def parameters(path: Path) -> int:
    """Weights and biases of every convolution and dense op (what Keras' count_params counts)."""
    interp = Interpreter(model_path=str(path))
    shapes = {d["index"]: d["shape"] for d in interp.get_tensor_details()}
    total = 0
    for op in interp._get_ops_details():
        if op["op_name"] in WEIGHT_OPS:
            total += sum(int(np.prod(shapes[int(i)])) for i in op["inputs"][1:] if int(i) >= 0)
    return total


def weight_report(path: Path) -> dict[str, Any]:
    """Stored kernel dtypes, share of zero weights, and the bytes of weights unpacked at run
    time (float16 kernels go through DEQUANTIZE, sparse ones through DENSIFY: LiteRT keeps the
    float32 result beside the file)."""
    from ai_edge_litert.interpreter import OpResolverType

    # Run once without delegates, keeping every tensor, so unpacked kernels can be read.
    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    interp.set_tensor(inp["index"], np.zeros(inp["shape"], dtype=inp["dtype"]))
    interp.invoke()
    details = {d["index"]: d for d in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    producers = {int(o): op for op in ops for o in op["outputs"]}
    dtypes, zeros, total, unpacked = set(), 0, 0, 0
    for op in ops:
        if op["op_name"] not in WEIGHT_OPS:
            continue
        for pos, idx in enumerate(int(i) for i in op["inputs"][1:]):
            if idx < 0:
                continue
            src = producers.get(idx)
            if src is not None and src["op_name"] in ("DEQUANTIZE", "DENSIFY"):
                unpacked += interp.get_tensor(idx).nbytes
                stored = int(src["inputs"][0])
            else:
                stored = idx
            if pos == 0:  # the kernel
                w = interp.get_tensor(idx)
                dtypes.add(np.dtype(details[stored]["dtype"]).name)
                zeros += int((w == 0).sum())
                total += w.size
    return {"weight_dtypes": sorted(dtypes),
            "weight_sparsity_pct": round(100.0 * zeros / total, 2) if total else 0.0,
            "unpacked_weight_bytes": unpacked}


# --- scoring ---


def score(pred: dict[str, np.ndarray], eval_set: dict[str, np.ndarray]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in SPLITS:
        labels = eval_set[f"{split}_labels"].astype(np.int64)
        correct = int((np.asarray(pred[split]) == labels).sum())
        out[f"correct_{split}"] = correct
        out[f"accuracy_{split}_pct"] = round(100.0 * correct / len(labels), 2)
    return out


def _images(eval_set: dict[str, np.ndarray]) -> Iterator[tuple[str, np.ndarray]]:
    for split in SPLITS:
        yield split, eval_set[f"{split}_images"]


def evaluate_classifier(path: Path, eval_set: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accuracy, probability-vector length and median invoke of one complete classifier file
    (images are area-resized to its input resolution first)."""
    model = LiteRTModel(path)
    size = int(model.input_shape[-1])
    pred: dict[str, np.ndarray] = {}
    length = 0
    for split, images in _images(eval_set):
        imgs = resize_images(images, size)
        probs = [model.probabilities(img)[0] for img in imgs]
        length = len(probs[0])
        pred[split] = np.array([int(np.argmax(p)) for p in probs])
    from models.evaluate import median_invoke_us

    first = resize_images(eval_set["easy_images"][0], size)
    return {**score(pred, eval_set), "probability_vector_length": length,
            "median_invoke_us": median_invoke_us(model, first)}


# --- serving classes ---


def serving_classes(nbytes: int, full_integer: bool) -> list[str]:
    """Hardware classes whose default node may hold this file: ``bytes × concurrency ≤
    memory_bytes`` (the tier's own check) and, on an INT8-only class, full-integer INT8."""
    from services.tier import classes

    out = []
    for name in classes.class_names():
        cfg = classes.class_defaults(name)
        if classes.node_class(name).int8_only and not full_integer:
            continue
        if nbytes * int(cfg.get("concurrency", 1)) <= int(cfg["memory_bytes"]):
            out.append(name)
    return out


def class_budgets() -> dict[str, dict[str, Any]]:
    """Each class's default ``memory_bytes``, ``concurrency`` and INT8-only rule."""
    from services.tier import classes

    return {n: {"memory_bytes": int(classes.class_defaults(n)["memory_bytes"]),
                "concurrency": int(classes.class_defaults(n).get("concurrency", 1)),
                "int8_only": classes.node_class(n).int8_only} for n in classes.class_names()}


# --- segments ---


def segment_figures(path: Path) -> dict[str, Any]:
    seg = Segment(path)
    out: dict[str, Any] = {"input": seg.input.as_dict()}
    for key, meta in seg.outputs.items():
        out[key] = meta.as_dict()
    x = np.zeros(seg.input.shape, dtype=seg.input.dtype)
    out["parameters"] = parameters(path)
    out["median_invoke_us"] = seg.median_invoke_us(x)
    return out


def evaluate_cuts(entry: dict[str, Any], eval_set: dict[str, np.ndarray],
                  models_dir: Path) -> dict[str, Any]:
    """Every cut of a cut model: head (segments 1..k) → bytes → tail, on the whole evaluation
    set, against the whole model it was cut from."""
    files = [model_path(models_dir, s["file"]) for s in entry["segments"]]
    chain = Chain(files)
    whole = LiteRTModel(model_path(models_dir, entry["whole"]))
    segs = [{**file_entry(f, models_dir), **segment_figures(f)} for f in files]
    ref = {split: [whole.probabilities(img)[0] for img in imgs] for split, imgs in _images(eval_set)}
    cuts = []
    for cut in range(1, len(files)):
        pred: dict[str, np.ndarray] = {}
        mismatches = differing = 0
        for split, imgs in _images(eval_set):
            probs = [chain.tail(chain.head(img, cut), cut) for img in imgs]
            pred[split] = np.array([int(np.argmax(p)) for p in probs])
            mismatches += sum(int(np.argmax(p) != np.argmax(r)) for p, r in zip(probs, ref[split], strict=True))
            differing += sum(int(not np.array_equal(p, r)) for p, r in zip(probs, ref[split], strict=True))
        tensor = chain.segments[cut - 1].features
        assert tensor is not None
        cuts.append({
            "cut": cut, "after": entry["segments"][cut - 1]["name"],
            "head": [s["name"] for s in entry["segments"][:cut]],
            "tail": [s["name"] for s in entry["segments"][cut:]],
            "tensor": tensor.as_dict(),
            "requantized": cut in chain.requantized_cuts,
            "head_invoke_us": round(sum(s["median_invoke_us"] for s in segs[:cut]), 1),
            "tail_invoke_us": round(sum(s["median_invoke_us"] for s in segs[cut:]), 1),
            **score(pred, eval_set),
            "mismatches_vs_whole": mismatches, "rows_differing_vs_whole": differing,
        })
    return {"whole_sha256": hashlib.sha256(model_path(models_dir, entry["whole"]).read_bytes()).hexdigest(),
            "segments": [{"name": s["name"], **seg} for s, seg in zip(entry["segments"], segs, strict=True)],
            "cuts": cuts}


# --- multi-exit ---


def evaluate_multi_exit(entry: dict[str, Any], eval_set: dict[str, np.ndarray],
                        models_dir: Path) -> dict[str, Any]:
    """Accuracy of every exit (segments 1..k only) and of confidence-threshold early exit."""
    files = [model_path(models_dir, s["file"]) for s in entry["segments"]]
    chain = Chain(files)
    segs = [{**file_entry(f, models_dir), **segment_figures(f)} for f in files]
    exit_segment = [k + 1 for k, s in enumerate(chain.segments) if "probabilities" in s.outputs]
    per_exit: dict[str, list[list[np.ndarray]]] = {}
    for split, imgs in _images(eval_set):
        per_exit[split] = [chain.exits(img) for img in imgs]
    exits = []
    for e, seg_k in enumerate(exit_segment):
        pred = {s: np.array([int(np.argmax(p[e])) for p in per_exit[s]]) for s in SPLITS}
        # Cost of leaving here: segments 1..k (each also computes its own exit's head).
        exits.append({"exit": e + 1, "segments": seg_k, **score(pred, eval_set),
                      "invoke_us_to_here": round(sum(s["median_invoke_us"] for s in segs[:seg_k]), 1)})
    policy = []
    for t in EXIT_THRESHOLDS:
        pred, share = {}, []
        counts = np.zeros(len(exit_segment), dtype=np.int64)
        for s in SPLITS:
            taken = [next((e for e, p in enumerate(ps) if p.max() >= t), len(ps) - 1)
                     for ps in per_exit[s]]
            pred[s] = np.array([int(np.argmax(ps[e])) for ps, e in zip(per_exit[s], taken, strict=True)])
            share.append([round(100.0 * float(np.mean(np.array(taken) == e)), 2)
                          for e in range(len(exit_segment))])
            counts += np.bincount(taken, minlength=len(exit_segment))
        cost = [exits[e]["invoke_us_to_here"] for e in range(len(exit_segment))]
        policy.append({"threshold": t, **score(pred, eval_set),
                       "exit_share_pct": {s: sh for s, sh in zip(SPLITS, share, strict=True)},
                       "mean_invoke_us": round(float(np.dot(counts, cost) / counts.sum()), 1)})
    return {"segments": [{"name": s["name"], **seg} for s, seg in zip(entry["segments"], segs, strict=True)],
            "requantized_cuts": chain.requantized_cuts, "exits": exits, "early_exit": policy}


# --- classifiers: variants and multi-scale ---


def evaluate_target(entry: dict[str, Any], eval_set: dict[str, np.ndarray],
                    models_dir: Path) -> dict[str, Any]:
    path = model_path(models_dir, entry["file"])
    model = LiteRTModel(path)
    full_integer = model.quantized and model.output_dtype in (np.dtype(np.int8), np.dtype(np.uint8))
    out_meta = TensorMeta(model.output_dtype.name, (1, 10), float(model.output_quant[0]),
                          int(model.output_quant[1]))
    weights = weight_report(path)
    nbytes = path.stat().st_size
    # What a node holds while serving: the file plus any weights LiteRT unpacks from it.
    run_time = nbytes + weights["unpacked_weight_bytes"]
    return {**file_entry(path, models_dir),
            "input": {"dtype": model.input_dtype.name, "shape": list(model.input_shape),
                      "scale": model.input_quant[0], "zero_point": int(model.input_quant[1]),
                      "bytes": TensorMeta(model.input_dtype.name, model.input_shape).nbytes},
            "output": out_meta.as_dict(), **weights, "parameters": parameters(path),
            **evaluate_classifier(path, eval_set),
            "full_integer": bool(full_integer),
            "serving_classes": serving_classes(nbytes, bool(full_integer)),
            "run_time_bytes": run_time,
            "serving_classes_run_time": serving_classes(run_time, bool(full_integer))}


# --- all of it ---


def research_figures(research: dict[str, Any], eval_set: dict[str, np.ndarray],
                     models_dir: Path) -> dict[str, Any]:
    """Every figure of the manifest's ``research`` section, recomputed from the files."""
    out: dict[str, Any] = {"segments": {}, "multi_exit": {}, "variants": {}, "multiscale": {}}
    for name, entry in research.get("segments", {}).items():
        out["segments"][name] = evaluate_cuts(entry, eval_set, models_dir)
    for name, entry in research.get("multi_exit", {}).items():
        if isinstance(entry, dict) and "segments" in entry:
            out["multi_exit"][name] = evaluate_multi_exit(entry, eval_set, models_dir)
    for name, entry in research.get("variants", {}).items():
        out["variants"][name] = evaluate_target(entry, eval_set, models_dir)
    for name, entry in research.get("multiscale", {}).items():
        out["multiscale"][name] = evaluate_target(entry, eval_set, models_dir)
    return out


def merge(into: dict[str, Any], figures: dict[str, Any]) -> dict[str, Any]:
    """``into`` updated in place with ``figures`` (dicts merged key by key, lists item by item)."""
    for key, value in figures.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        elif (isinstance(value, list) and isinstance(into.get(key), list)
              and len(value) == len(into[key]) and all(isinstance(v, dict) for v in value)):
            for a, b in zip(into[key], value, strict=True):
                if isinstance(a, dict):
                    merge(a, b)
        else:
            into[key] = value
    return into


def compare(manifest: Any, figures: Any, where: str = "research") -> list[str]:
    """Every checked figure (:data:`CHECKED_KEYS`) where the manifest and the files disagree."""
    problems: list[str] = []
    if isinstance(figures, dict):
        if not isinstance(manifest, dict):
            return [f"{where}: missing in the manifest"]
        for key, value in figures.items():
            if key in CHECKED_KEYS:
                if manifest.get(key) != value:
                    problems.append(f"{where}.{key} = {value!r}, manifest says {manifest.get(key)!r}")
            elif isinstance(value, dict | list):
                problems += compare(manifest.get(key), value, f"{where}.{key}")
    elif isinstance(figures, list):
        if not isinstance(manifest, list) or len(manifest) != len(figures):
            return [f"{where}: {len(figures)} items, manifest has "
                    f"{len(manifest) if isinstance(manifest, list) else 'none'}"]
        for i, (m, f) in enumerate(zip(manifest, figures, strict=True)):
            problems += compare(m, f, f"{where}[{i}]")
    return problems
