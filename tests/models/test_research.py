"""The research models (segments, multi-exit, variants, multi-scale): files, exactness, figures."""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path

import numpy as np
import pytest
import yaml
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from models.chain import Chain, CutTensor, TensorMeta
from models.evaluate import load_eval_set, load_manifest
from models.paths import models_dir
from models.research import model_path, resize_images, score
from models.runtime import LiteRTModel

REPO = Path(__file__).resolve().parents[2]
CUT_MODELS = ("fp32", "int8")


@pytest.fixture(scope="module")
def research() -> dict:
    return load_manifest()["research"]


@pytest.fixture(scope="module")
def eval_set() -> dict[str, np.ndarray]:
    return load_eval_set()


def _files(research: dict) -> list[dict]:
    out = [s for e in research["segments"].values() for s in e["segments"]]
    out += [s for p in ("fp32", "int8") for s in research["multi_exit"][p]["segments"]]
    out += list(research["variants"].values()) + list(research["multiscale"].values())
    return out


def _path(entry: dict) -> Path:
    return model_path(models_dir(), entry["file"])


def test_manifest_hashes_and_sizes(research: dict) -> None:
    entries = _files(research)
    assert len(entries) >= 6 + 6 + 3 + 3 + 4 + 5
    for e in entries:
        assert e["file"].startswith("models/") and e["file"].endswith(".tflite"), e["file"]
        path = _path(e)
        assert e["bytes"] == path.stat().st_size, e["file"]
        assert e["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest(), e["file"]
    for name, e in research["segments"].items():
        whole = models_dir() / f"{name}.tflite"
        assert e["whole"] == f"models/{name}.tflite"
        assert e["whole_sha256"] == hashlib.sha256(whole.read_bytes()).hexdigest(), \
            f"{name}.tflite changed since it was cut: run `edgebed models research`"
    added = sum(e["bytes"] for e in entries if e["file"] != "models/fp32.tflite")
    assert added < 4_500_000, f"research models add {added:,} bytes"


def test_manifest_lists_the_figures_asked_for(research: dict) -> None:
    for e in research["segments"].values():
        for s in e["segments"]:
            out = s.get("features") or s["probabilities"]
            assert out["bytes"] > 0 and s["parameters"] >= 0 and s["median_invoke_us"] > 0
        for c in e["cuts"]:
            assert {"accuracy_easy_pct", "accuracy_hard_pct", "head_invoke_us",
                    "tail_invoke_us"} <= set(c)
            assert c["tensor"]["bytes"] == int(np.prod(c["tensor"]["shape"])) * \
                np.dtype(c["tensor"]["dtype"]).itemsize
    for p in ("fp32", "int8"):
        for ex in research["multi_exit"][p]["exits"]:
            assert {"accuracy_easy_pct", "accuracy_hard_pct", "invoke_us_to_here"} <= set(ex)
    for e in [*research["variants"].values(), *research["multiscale"].values()]:
        assert {"accuracy_easy_pct", "accuracy_hard_pct", "parameters", "median_invoke_us",
                "serving_classes"} <= set(e)
        assert e["output"]["bytes"] == 10 * np.dtype(e["output"]["dtype"]).itemsize


# --- segments: head∘tail = whole, at every cut, on the whole evaluation set ---


@pytest.mark.parametrize("name", CUT_MODELS)
def test_head_tail_equals_whole_at_every_cut(name: str, research: dict,
                                             eval_set: dict[str, np.ndarray]) -> None:
    entry = research["segments"][name]
    chain = Chain([_path(s) for s in entry["segments"]])
    assert chain.requantized_cuts == [], "sender and receiver must quantize each cut alike"
    whole = LiteRTModel(models_dir() / f"{name}.tflite")
    images = np.concatenate([eval_set["easy_images"], eval_set["hard_images"]])
    ref = [whole.probabilities(img)[0] for img in images]
    assert len(entry["cuts"]) == len(entry["segments"]) - 1 >= 5
    for cut in range(1, len(entry["segments"])):
        wire = entry["cuts"][cut - 1]["tensor"]
        differing = []
        for i, img in enumerate(images):
            sent = chain.head(img, cut)
            # What crosses the link: the bytes, and the manifest's dtype/shape/scale/zero point.
            received = CutTensor(bytes(sent.data), TensorMeta(
                wire["dtype"], tuple(wire["shape"]), wire["scale"], wire["zero_point"]))
            probs = chain.tail(received, cut)
            if not np.array_equal(probs, ref[i]):
                differing.append(i)
        assert differing == [], f"{name} cut {cut}: {len(differing)} of {len(images)} differ"
        assert len(sent.data) == wire["bytes"]


def _no_delegate(path: Path) -> Interpreter:
    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True,
                         experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interp.allocate_tensors()
    return interp


@pytest.mark.parametrize("name", CUT_MODELS)
def test_cut_tensor_is_the_whole_models_own_tensor(name: str, research: dict,
                                                   eval_set: dict[str, np.ndarray]) -> None:
    """Each head's output is, byte for byte and with the same quantization, the tensor the
    whole model computes at that layer (reference kernels on both sides)."""
    entry = research["segments"][name]
    whole = _no_delegate(models_dir() / f"{name}.tflite")
    w_in = whole.get_input_details()[0]
    heads = [_no_delegate(_path(s)) for s in entry["segments"][:-1]]
    served = LiteRTModel(models_dir() / f"{name}.tflite")
    for img in eval_set["hard_images"][:40]:
        x = served.prepared(img)
        whole.set_tensor(w_in["index"], x)
        whole.invoke()
        tensors = [(d, whole.get_tensor(d["index"])) for d in whole.get_tensor_details()
                   if len(d["shape"]) >= 2]
        h = x
        for k, interp in enumerate(heads):
            i, o = interp.get_input_details()[0], interp.get_output_details()[0]
            interp.set_tensor(i["index"], h.reshape(i["shape"]))
            interp.invoke()
            h = interp.get_tensor(o["index"])
            same = [d for d, t in tensors if t.shape == h.shape and t.dtype == h.dtype
                    and d["quantization"] == o["quantization"] and np.array_equal(t, h)]
            assert same, f"{name}: cut {k + 1} ({entry['segments'][k]['name']}) is not a tensor of the whole model"


def test_int8_cut_quantization_is_the_committed_one(research: dict) -> None:
    segs = research["segments"]["int8"]["segments"]
    for a, b in itertools.pairwise(segs):
        assert (a["features"]["scale"], a["features"]["zero_point"]) == \
            (b["input"]["scale"], b["input"]["zero_point"])
    check = research["segments"]["int8"]["ptq_cut_check"]
    assert len(check["cuts"]) == 5 and check["images"] == 4000


def test_cut_tensor_bytes_round_trip_and_requantize() -> None:
    meta = TensorMeta("int8", (1, 4), 0.5, -10)
    t = CutTensor.of(np.array([[-128, -10, 0, 127]], dtype=np.int8), meta)
    assert len(t.data) == meta.nbytes == 4
    assert np.array_equal(t.real(), [[-59.0, 0.0, 5.0, 68.5]])
    assert np.array_equal(t.encoded_for(meta), t.array())
    other = TensorMeta("int8", (1, 4), 1.0, 0)
    assert np.array_equal(t.encoded_for(other), [[-59, 0, 5, 68]])  # 68.5 rounds to even
    assert np.array_equal(t.encoded_for(TensorMeta("float32", (4,))), [-59.0, 0.0, 5.0, 68.5])


# --- multi-exit ---


@pytest.mark.parametrize("precision", ("fp32", "int8"))
def test_multi_exit_accuracies_from_chained_segments(precision: str, research: dict,
                                                     eval_set: dict[str, np.ndarray]) -> None:
    entry = research["multi_exit"][precision]
    files = [_path(s) for s in entry["segments"]]
    assert len(entry["exits"]) >= 3
    for ex in entry["exits"]:
        k = ex["segments"]
        # Leaving at exit k needs segments 1..k only: a chain of just those gives the figure.
        chain = Chain(files[:k])
        assert chain.requantized_cuts == []
        pred = {s: np.array([int(np.argmax(chain.probabilities(img)))
                             for img in eval_set[f"{s}_images"]]) for s in ("easy", "hard")}
        got = score(pred, eval_set)
        for key, value in got.items():
            assert ex[key] == value, (precision, ex["exit"], key)
    first, last = entry["exits"][0], entry["exits"][-1]
    assert last["accuracy_easy_pct"] >= 98.5, last
    assert last["accuracy_hard_pct"] > first["accuracy_hard_pct"], (first, last)
    assert last["invoke_us_to_here"] > first["invoke_us_to_here"]


# --- variants ---


def test_variants_are_complete_classifiers(research: dict, eval_set: dict[str, np.ndarray]) -> None:
    variants = research["variants"]
    assert len(variants) >= 4
    assert len({(v["resolution"], v["width"]) for v in variants.values()}) == len(variants)
    assert len({v["resolution"] for v in variants.values()}) >= 2
    assert len({v["training"]["seed"] for v in variants.values()}) == len(variants)
    for name, v in variants.items():
        model = LiteRTModel(_path(v))
        assert model.input_shape == (1, v["resolution"], v["resolution"]), name
        assert v["probability_vector_length"] == 10
        for img in resize_images(eval_set["hard_images"][:50], v["resolution"]):
            probs, _ = model.probabilities(img)
            assert probs.shape == (10,) and (probs >= 0).all(), name
            assert abs(probs.sum() - 1.0) < 1e-9, name
        assert v["accuracy_easy_pct"] >= 97.0, (name, v["accuracy_easy_pct"])


def test_resize_is_an_exact_area_average() -> None:
    rng = np.random.default_rng(3)
    imgs = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    half = resize_images(imgs, 14)
    blocks = imgs.reshape(3, 14, 2, 14, 2).astype(np.int64).sum(axis=(2, 4))
    assert np.array_equal(half, (2 * blocks + 4) // 8)
    assert np.array_equal(resize_images(imgs, 28), imgs)
    flat = np.full((28, 28), 77, dtype=np.uint8)
    assert (resize_images(flat, 20) == 77).all()


# --- multi-scale ---


def _class_rules() -> dict[str, tuple[int, int, bool]]:
    """memory_bytes, concurrency and INT8-only of each class, read from the YAML files."""
    rules = {}
    for path in sorted((REPO / "services").glob("*/tier.yaml")):
        cfg = yaml.safe_load(path.read_text())
        rules[cfg["class"]] = (int(cfg["memory_bytes"]), int(cfg.get("concurrency", 1)),
                               cfg["class"] == "npu")
    return rules


def test_multiscale_targets(research: dict) -> None:
    ms = research["multiscale"]
    assert {"fp32", "fp32_int8", "fp32_dynamic", "fp32_f16", "fp32_pruned"} <= set(ms)
    full = LiteRTModel(_path(ms["fp32_int8"]))
    assert full.input_dtype == np.int8 and full.output_dtype == np.int8
    dyn = LiteRTModel(_path(ms["fp32_dynamic"]))
    assert dyn.input_dtype == np.float32 and "int8" in ms["fp32_dynamic"]["weight_dtypes"]
    assert ms["fp32_f16"]["weight_dtypes"] == ["float16"]
    assert ms["fp32_pruned"]["weight_sparsity_pct"] >= 80.0
    for name in ("fp32_int8", "fp32_dynamic", "fp32_f16"):
        assert ms[name]["bytes"] < ms["fp32"]["bytes"] * 0.6, name
    for name, e in ms.items():
        assert e["parameters"] == ms["fp32"]["parameters"], name
        assert ms["fp32"]["accuracy_easy_pct"] - e["accuracy_easy_pct"] <= 1.0, name
    rules = _class_rules()
    assert {"mcu", "edge", "cloud", "gpu", "npu"} <= set(rules)
    for name, e in ms.items():
        for key, need in (("serving_classes", e["bytes"]),
                          ("serving_classes_run_time", e["run_time_bytes"])):
            want = [c for c, (mem, conc, int8_only) in rules.items()
                    if need * conc <= mem and (e["full_integer"] or not int8_only)]
            assert sorted(e[key]) == sorted(want), (name, key)
    assert "npu" in ms["fp32_int8"]["serving_classes"]
    assert "npu" not in ms["fp32_f16"]["serving_classes"]
    assert "mcu" not in ms["fp32"]["serving_classes"]
