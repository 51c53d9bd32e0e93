"""Hardware classes of tier nodes: what a node *is*, apart from what it is *called*.

A node has a name (its config key ``tier``, e.g. ``edge-2``: reported in every answer and metric
label) and a hardware class (its config key ``class``, e.g. ``edge``) from this registry. The class
gives the node its defaults — the class defaults file ``services/<class>/tier.yaml`` and the
teaching simulator's tables in :mod:`services.tier.simulator` — and its rules: whether its
models may use dynamic batching, whether it runs only full-integer INT8 models, whether it may
serve the emulated language models.

This module, the class defaults files and the simulator's tables are the only places where the
class names are spelled out.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import yaml

SERVICES_DIR = Path(__file__).resolve().parents[1]
DEFAULTS_FILE = "tier.yaml"
INT8_DTYPES = ("int8", "uint8")


class NodeClassError(ValueError):
    """An unknown class, or a class defaults file that cannot be read; the message names the key
    ``class`` and the allowed values."""


@dataclass(frozen=True)
class NodeClass:
    """One hardware class and its rules (its numbers are in its defaults file)."""

    name: str
    summary: str
    batching: bool = False  # models may set ``batching`` (Triton-style dynamic batching)
    int8_only: bool = False  # serves only full-integer INT8 vision models
    lm: bool = True  # may serve the emulated SLM/LLM
    cpus: float = 1.0  # CPU share of the node's container in the compose stack (``cpus:``)

    @property
    def defaults_path(self) -> Path:
        return SERVICES_DIR / self.name / DEFAULTS_FILE

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "batching": self.batching,
                "int8_only": self.int8_only, "lm": self.lm}  # fmt: skip


CLASSES: dict[str, NodeClass] = {
    c.name: c
    for c in (
        NodeClass("mcu", "microcontroller (the teaching simulator's MCU row)", cpus=0.25),
        NodeClass("edge", "edge SoC (the teaching simulator's EDGE row)", cpus=1.0),
        NodeClass("cloud", "edge server / cloud node (the teaching simulator's CLOUD row)",
                  cpus=2.0),
        NodeClass(
            "gpu",
            "datacenter GPU (NVIDIA T4-like) with Triton-style dynamic batching",
            batching=True,
            cpus=2.0,
        ),
        NodeClass(
            "npu",
            "Edge-TPU-like accelerator (Google Coral): full-integer INT8 models only",
            int8_only=True,
            lm=False,
            cpus=0.5,
        ),
    )
}


# The teaching simulator's escalation order: on the device, at the edge, in the cloud. The
# built-in policies' default routes name these classes (``@mcu/tinycnn``), never a node.
ESCALATION_LADDER: tuple[str, str, str] = ("mcu", "edge", "cloud")
DEFAULT_NODES: tuple[str, ...] = ESCALATION_LADDER  # an experiment without ``tiers:`` has these


def class_names() -> list[str]:
    """The registered class names, in registry order."""
    return list(CLASSES)


def allowed_text() -> str:
    return ", ".join(CLASSES)


def node_class(name: Any) -> NodeClass:
    """The class called ``name``; raises NodeClassError naming ``class`` and the allowed values."""
    if isinstance(name, str) and name in CLASSES:
        return CLASSES[name]
    raise NodeClassError(f"class: must be one of {allowed_text()}, got {name!r}")


def batching_classes() -> list[str]:
    return [c.name for c in CLASSES.values() if c.batching]


def lm_classes() -> list[str]:
    return [c.name for c in CLASSES.values() if c.lm]


def class_defaults(name: str) -> dict[str, Any]:
    """The class's default node config (its ``services/<class>/tier.yaml``), without a node name:
    ``class`` is set, ``tier`` removed. A fresh copy: callers may change it."""
    cls = node_class(name)
    data = copy.deepcopy(_read_defaults(str(cls.defaults_path)))
    data.pop("tier", None)
    data["class"] = cls.name
    return data


@cache
def _read_defaults(path: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise NodeClassError(f"class: defaults file {path} cannot be read: {exc}") from exc
    if not isinstance(data, dict):
        raise NodeClassError(f"class: defaults file {path}: expected a mapping at the top level")
    return data


# --- INT8-only classes: which model files are full-integer INT8 ---


def manifest_dtypes(models_dir: Path) -> dict[str, tuple[str, str]]:
    """``{file name: (input dtype, output dtype)}`` from ``models_dir/manifest.json`` (empty when
    there is none): the committed models' precision, known without loading them."""
    path = Path(models_dir) / "manifest.json"
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return {}
    return _manifest_dtypes(str(path), stamp)


@lru_cache(maxsize=8)
def _manifest_dtypes(path: str, _stamp: int) -> dict[str, tuple[str, str]]:
    try:
        doc = json.loads(Path(path).read_text())
        out = {}
        for entry in doc.get("models", {}).values():
            name = Path(str(entry["file"])).name
            out[name] = (str(entry["input"]["dtype"]), str(entry["output"]["dtype"]))
        return out
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def is_full_integer(dtypes: tuple[str, str]) -> bool:
    return all(d in INT8_DTYPES for d in dtypes)


def file_dtypes(path: Path) -> tuple[str, str]:
    """(input dtype, output dtype) of a LiteRT model file, read from the file itself."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    return np.dtype(inp["dtype"]).name, np.dtype(out["dtype"]).name


def int8_model_names(models_dir: Path) -> list[str]:
    """Model names (file stems) the manifest lists as full-integer INT8, e.g. int8, tinycnn."""
    return sorted(Path(f).stem for f, d in manifest_dtypes(models_dir).items()
                  if is_full_integer(d))  # fmt: skip
