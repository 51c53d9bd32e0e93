"""Training-pipeline smoke test: a small subset through the real TensorFlow pipeline (train extra)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.evaluate import load_eval_set
from models.runtime import LiteRTModel

pytestmark = pytest.mark.train


def test_pipeline_on_small_subset(tmp_path: Path) -> None:
    pytest.importorskip("tensorflow", reason="needs the 'train' extra (TensorFlow)")
    # A Keras-format mnist.npz built from the committed evaluation set: no download, no ../shared.
    ev = load_eval_set()
    x_train = np.concatenate([ev["easy_images"][:1600], ev["hard_images"][:1600]])
    y_train = np.concatenate([ev["easy_labels"][:1600], ev["hard_labels"][:1600]])
    x_test, y_test = ev["easy_images"][1600:], ev["easy_labels"][1600:]
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    out, data_out = tmp_path / "models", tmp_path / "data"
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "models", "train", "--mnist", str(npz),
         "--out", str(out), "--data-out", str(data_out), "--epochs-scale", "0.25"],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["models"]) == {"fp32", "int8", "tinycnn"}
    m = LiteRTModel(out / "int8.tflite")
    assert m.input_dtype == np.int8 and m.output_dtype == np.int8
    pred = m.predict_batch(x_test)
    acc = float((pred == y_test).mean())
    assert acc > 0.5, f"int8 accuracy {acc:.3f} on {len(y_test)} held-out images (chance is 0.1)"
