"""Where edgebed finds its committed artifacts (models, evaluation set) at run time."""

from __future__ import annotations

import os
from pathlib import Path

_PKG_DIR = Path(__file__).resolve().parent


def models_dir() -> Path:
    """Directory holding ``*.tflite`` and ``manifest.json`` (``EDGEBED_MODELS_DIR`` overrides)."""
    env = os.environ.get("EDGEBED_MODELS_DIR")
    return Path(env) if env else _PKG_DIR


def data_dir() -> Path:
    """Directory holding the committed evaluation set (``EDGEBED_DATA_DIR`` overrides).

    In a source checkout (editable install) this is ``data/`` at the repository root.
    """
    env = os.environ.get("EDGEBED_DATA_DIR")
    return Path(env) if env else _PKG_DIR.parent / "data"


def manifest_path() -> Path:
    return models_dir() / "manifest.json"


def eval_set_path() -> Path:
    return data_dir() / "mnist_eval.npz"
