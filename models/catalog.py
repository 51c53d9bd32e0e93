"""The research chains and variants as the manifest describes them (no LiteRT, no TensorFlow).

A *chain* is a network served segment by segment (``models.chain``): ``split-fp32`` and
``split-int8`` are the committed CNNs cut after every block (``research.segments``), ``exit-fp32``
and ``exit-int8`` the three-exit CNN (``research.multi_exit``). Orchestrator policies plan with
these figures (the bytes of the tensor at every cut, each segment's share of the chain's
measured invoke time) before anything is sent; tiers serve the same files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from models.paths import manifest_path

IMAGE_BYTES = 784  # a 28×28 uint8 image: what crosses a link at cut 0
CHAIN_SOURCES = {  # chain name -> (manifest section, entry)
    "split-fp32": ("segments", "fp32"),
    "split-int8": ("segments", "int8"),
    "exit-fp32": ("multi_exit", "fp32"),
    "exit-int8": ("multi_exit", "int8"),
}


@dataclass(frozen=True)
class SegmentSpec:
    index: int  # 1-based
    name: str
    file: str  # relative to the models directory
    input: dict[str, Any]  # TensorMeta.as_dict()
    features: dict[str, Any] | None  # the tensor at the cut after this segment
    probabilities: dict[str, Any] | None  # an exit
    median_invoke_us: float
    share: float  # of the chain's summed invoke time: the emulated device-time ratio

    @property
    def has_exit(self) -> bool:
        return self.probabilities is not None


@dataclass(frozen=True)
class ChainSpec:
    name: str
    base: str  # the whole model's dtype family: "fp32" | "int8"
    kind: str  # "split" | "exit"
    segments: tuple[SegmentSpec, ...]

    @property
    def n(self) -> int:
        return len(self.segments)

    def cut_bytes(self, cut: int) -> int:
        """Bytes of the tensor at ``cut`` (0: the raw image, n: the probabilities)."""
        if cut == 0:
            return IMAGE_BYTES
        seg = self.segments[cut - 1]
        meta = seg.features if cut < self.n else seg.probabilities
        assert meta is not None
        return int(meta["bytes"])

    def share(self, first: int, last: int) -> float:
        """Device-time share of segments ``first``..``last`` (1-based, inclusive)."""
        return sum(s.share for s in self.segments[first - 1:last])

    def exits(self) -> list[int]:
        return [s.index for s in self.segments if s.has_exit]


@cache
def _manifest(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def chain_names() -> list[str]:
    return list(CHAIN_SOURCES)


def chain_spec(name: str, path: Path | None = None) -> ChainSpec:
    """The chain ``name`` from the manifest; ValueError naming the allowed chains otherwise."""
    if name not in CHAIN_SOURCES:
        raise ValueError(f"chain must be one of {chain_names()}, got {name!r}")
    section, entry = CHAIN_SOURCES[name]
    doc = _manifest(path or manifest_path())
    try:
        segs = doc["research"][section][entry]["segments"]
    except KeyError:
        raise ValueError(f"chain {name}: the manifest has no research.{section}.{entry}") from None
    total = sum(float(s["median_invoke_us"]) for s in segs) or 1.0
    specs = tuple(
        SegmentSpec(i, s["name"], s["file"].removeprefix("models/"), s["input"],
                    s.get("features"), s.get("probabilities"), float(s["median_invoke_us"]),
                    float(s["median_invoke_us"]) / total)
        for i, s in enumerate(segs, 1))
    return ChainSpec(name, entry, "split" if section == "segments" else "exit", specs)


def served_names(path: Path | None = None) -> list[str]:
    """Names a route may use beyond the base models: the chains, the variants and the
    multi-scale versions of the manifest's research section."""
    research = _manifest(path or manifest_path()).get("research", {})
    return [*chain_names(), *research.get("variants", {}), *research.get("multiscale", {})]


def variant_names(path: Path | None = None) -> list[str]:
    return list(_manifest(path or manifest_path()).get("research", {}).get("variants", {}))


def variant_entry(name: str, path: Path | None = None) -> dict[str, Any]:
    variants = _manifest(path or manifest_path()).get("research", {}).get("variants", {})
    if name not in variants:
        raise ValueError(f"variant must be one of {list(variants)}, got {name!r}")
    return variants[name]
