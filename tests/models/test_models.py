"""The committed models, manifest and evaluation set: integrity, acceptance figures, LiteRT-only eval."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np
import pytest

from models.corrupt import corrupt
from models.evaluate import MODEL_NAMES, load_eval_set, load_manifest
from models.paths import eval_set_path, models_dir
from models.runtime import LiteRTModel


@pytest.fixture(scope="module")
def manifest() -> dict:
    return load_manifest()


def test_manifest_describes_committed_files(manifest: dict) -> None:
    for name in MODEL_NAMES:
        entry = manifest["models"][name]
        path = models_dir() / f"{name}.tflite"
        assert entry["file"] == f"models/{name}.tflite"
        assert entry["bytes"] == path.stat().st_size
        assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        for key in ("parameters", "median_invoke_us", "training", "input", "output"):
            assert key in entry, f"{name}: manifest lacks {key}"
        assert entry["training"]["seed"] == manifest["seed"]
    assert manifest["eval_set"]["sha256"] == hashlib.sha256(eval_set_path().read_bytes()).hexdigest()


def test_eval_set_shape_and_labels() -> None:
    ev = load_eval_set()
    for split in ("easy", "hard"):
        imgs, labels = ev[f"{split}_images"], ev[f"{split}_labels"]
        assert imgs.shape == (2000, 28, 28) and imgs.dtype == np.uint8
        assert labels.shape == (2000,) and set(np.unique(labels)) == set(range(10))
    # disjoint source images: no digit is both an easy and a hard request
    assert not set(ev["easy_source_index"]) & set(ev["hard_source_index"])


def test_quantization_of_each_model() -> None:
    fp32 = LiteRTModel(models_dir() / "fp32.tflite")
    assert fp32.input_dtype == np.float32 and fp32.output_dtype == np.float32
    for name in ("int8", "tinycnn"):
        m = LiteRTModel(models_dir() / f"{name}.tflite")
        assert m.input_dtype == np.int8, name
        assert m.output_dtype == np.int8, name
        assert m.input_quant[0] > 0


def test_acceptance_figures(manifest: dict) -> None:
    m = manifest["models"]
    easy = {n: m[n]["accuracy_easy_pct"] for n in MODEL_NAMES}
    hard = {n: m[n]["accuracy_hard_pct"] for n in MODEL_NAMES}
    assert easy["fp32"] >= 99.0, easy
    assert easy["int8"] >= 98.0, easy
    assert easy["tinycnn"] >= 95.0, easy
    assert m["tinycnn"]["bytes"] * 2 <= m["int8"]["bytes"], (m["tinycnn"]["bytes"], m["int8"]["bytes"])
    for n in MODEL_NAMES:
        assert easy[n] - hard[n] >= 8.0, f"{n}: easy {easy[n]} hard {hard[n]}"
    assert hard["fp32"] - hard["int8"] >= 2.0, hard
    assert hard["int8"] - hard["tinycnn"] >= 2.0, hard


def test_eval_command_reproduces_manifest_without_tensorflow() -> None:
    # Importing TensorFlow anywhere in this process would raise: the eval path must not need it.
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"
        "from orchestrator.cli import main\n"
        "sys.exit(main(['models', 'eval', '--check', '--json']))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["problems"] == []
    manifest = load_manifest()
    for row in report["models"]:
        want = manifest["models"][row["model"]]
        assert row["accuracy_easy_pct"] == want["accuracy_easy_pct"]
        assert row["accuracy_hard_pct"] == want["accuracy_hard_pct"]
    # The research models' figures were recomputed too (and agreed: problems is empty).
    research, want_r = report["research"], manifest["research"]
    for part in ("segments", "multi_exit", "variants", "multiscale"):
        assert research[part], f"eval did not recompute research.{part}"
    for name, entry in want_r["segments"].items():
        got = [(c["correct_easy"], c["correct_hard"]) for c in research["segments"][name]["cuts"]]
        assert got == [(c["correct_easy"], c["correct_hard"]) for c in entry["cuts"]], name
    for name, entry in want_r["variants"].items():
        assert research["variants"][name]["accuracy_hard_pct"] == entry["accuracy_hard_pct"], name
    for name, entry in want_r["multiscale"].items():
        assert research["multiscale"][name]["accuracy_hard_pct"] == entry["accuracy_hard_pct"], name
    for p in ("fp32", "int8"):
        got_exits = [e["correct_hard"] for e in research["multi_exit"][p]["exits"]]
        assert got_exits == [e["correct_hard"] for e in want_r["multi_exit"][p]["exits"]], p


def test_hard_images_are_harder_and_confidence_lower() -> None:
    ev = load_eval_set()
    m = LiteRTModel(models_dir() / "int8.tflite")
    conf_easy = np.mean([m.predict(x).confidence for x in ev["easy_images"][:300]])
    conf_hard = np.mean([m.predict(x).confidence for x in ev["hard_images"][:300]])
    assert conf_hard < conf_easy - 0.05, (conf_easy, conf_hard)


def test_corruption_is_seeded_and_order_independent() -> None:
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(6, 28, 28), dtype=np.uint8)
    a = corrupt(imgs, seed=5)
    b = corrupt(imgs[::-1], seed=5, indices=np.arange(6)[::-1])[::-1]
    assert np.array_equal(a, b)
    assert not np.array_equal(a, corrupt(imgs, seed=6))
    assert not np.array_equal(a, imgs)


def test_float_and_uint8_inputs_agree() -> None:
    ev = load_eval_set()
    m = LiteRTModel(models_dir() / "int8.tflite")
    for img in ev["easy_images"][:50]:
        assert m.predict(img).prediction == m.predict(img.astype(np.float32) / 255.0).prediction
