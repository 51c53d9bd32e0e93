"""Training-pipeline smoke test: a small subset through the real TensorFlow pipeline (train extra)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from models.chain import Chain
from models.evaluate import load_eval_set
from models.research import model_path
from models.runtime import LiteRTModel

pytestmark = pytest.mark.train

# One TensorFlow thread, as the research pipeline itself uses (and the CI host wants a core free).
TF_ENV = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1",
          "TF_CPP_MIN_LOG_LEVEL": "2"}


def _run(args: list[str], timeout: int, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **TF_ENV, **(env or {})})


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    pytest.importorskip("tensorflow", reason="needs the 'train' extra (TensorFlow)")
    tmp_path = tmp_path_factory.mktemp("train")
    # A Keras-format mnist.npz built from the committed evaluation set: no download, no ../shared.
    ev = load_eval_set()
    x_train = np.concatenate([ev["easy_images"][:1600], ev["hard_images"][:1600]])
    y_train = np.concatenate([ev["easy_labels"][:1600], ev["hard_labels"][:1600]])
    x_test, y_test = ev["easy_images"][1600:], ev["easy_labels"][1600:]
    npz = tmp_path / "mnist.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    out, data_out = tmp_path / "models", tmp_path / "data"
    proc = _run(["models", "train", "--mnist", str(npz), "--out", str(out), "--data-out",
                 str(data_out), "--epochs-scale", "0.25"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"npz": npz, "out": out, "data": data_out}


def test_pipeline_on_small_subset(trained: dict[str, Path]) -> None:
    out = trained["out"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["models"]) == {"fp32", "int8", "tinycnn"}
    m = LiteRTModel(out / "int8.tflite")
    assert m.input_dtype == np.int8 and m.output_dtype == np.int8
    with np.load(trained["npz"]) as z:
        x_test, y_test = z["x_test"], z["y_test"]
    pred = m.predict_batch(x_test)
    acc = float((pred == y_test).mean())
    assert acc > 0.5, f"int8 accuracy {acc:.3f} on {len(y_test)} held-out images (chance is 0.1)"


def test_research_pipeline_on_small_subset(trained: dict[str, Path]) -> None:
    """Segments of the freshly trained CNNs are exact, every part is written, and
    `edgebed models eval --check` reproduces every figure the pipeline wrote."""
    out, data = trained["out"], trained["data"]
    proc = _run(["models", "research", "--mnist", str(trained["npz"]), "--out", str(out),
                 "--data-out", str(data), "--epochs-scale", "0.1"], timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    research = json.loads((out / "manifest.json").read_text())["research"]
    assert set(research["segments"]) == {"fp32", "int8"}
    assert len(research["variants"]) >= 4 and len(research["multiscale"]) >= 5
    ev = load_eval_set(data / "mnist_eval.npz")
    for name, entry in research["segments"].items():
        assert entry["rebuilt_whole_identical_outputs"]["rows_differing"] == 0
        chain = Chain([model_path(out, s["file"]) for s in entry["segments"]])
        whole = LiteRTModel(out / f"{name}.tflite")
        for img in ev["hard_images"][:30]:
            want = whole.probabilities(img)[0]
            for cut in range(1, len(entry["segments"])):
                assert np.array_equal(chain.tail(chain.head(img, cut), cut), want), (name, cut)
        assert all(c["mismatches_vs_whole"] == 0 for c in entry["cuts"]), name
    check = _run(["models", "eval", "--check", "--json"], timeout=600,
                 env={"EDGEBED_MODELS_DIR": str(out), "EDGEBED_DATA_DIR": str(data)})
    assert check.returncode == 0, check.stdout[-3000:] + check.stderr[-3000:]
    assert json.loads(check.stdout)["problems"] == []
