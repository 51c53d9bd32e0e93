"""Research chains served segment by segment (``POST /v1/chain``): what a node holds, one run.

A chain (``models.catalog``: ``split-fp32``, ``split-int8``, ``exit-fp32``, ``exit-int8``) is a
network cut into LiteRT segments (``models.chain``); segment k maps the tensor at cut k-1 to the
tensor at cut k (cut 0 is the raw image) and, in a multi-exit network, also to its exit's
probabilities. A node holds segments ``first..last`` (config ``chains.<name>.segments``) and runs
a request's segments ``start+1..stop`` of them, stopping early at an exit that passes the
request's threshold. Device time (profile mode) is the chain's ``latency_ms`` times the share of
the segments run: each segment's share is its measured median invoke time in the manifest over
the chain's total (an emulated ratio: the device's own per-layer times are not known).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from models.catalog import ChainSpec
from models.chain import (
    FEATURES,
    PROBABILITIES,
    Chain,
    CutTensor,
    TensorMeta,
    image_tensor,
    probabilities_of,
)
from services.tier.config import ChainConfig, TierConfigError
from services.tier.params import int_param

Criterion = Literal["confidence", "entropy"]
CRITERIA: tuple[str, ...] = ("confidence", "entropy")


@dataclass(frozen=True)
class ExitRule:
    """When an exit answers: ``confidence`` — its top probability is at least ``threshold``;
    ``entropy`` — its entropy over ln(classes) is at most ``threshold``. Without a threshold
    no exit passes (the run goes to ``stop``)."""

    threshold: float | None = None
    criterion: Criterion = "confidence"

    def judge(self, segment: int, probs: np.ndarray) -> dict[str, Any]:
        """The exit of ``segment`` as reported in ``exits``: confidence, normalised entropy and
        whether it passed (None without a threshold)."""
        confidence = float(probs.max())
        p = probs[probs > 0]
        entropy = max(0.0, float(-(p * np.log(p)).sum() / math.log(probs.size)))
        passed: bool | None = None
        if self.threshold is not None:
            passed = (confidence >= self.threshold if self.criterion == "confidence"
                      else entropy <= self.threshold)  # fmt: skip
        return {"segment": segment, "confidence": confidence, "entropy": entropy,
                "passed": passed}  # fmt: skip


@dataclass(frozen=True)
class ChainRun:
    """What one request's segments computed on this node."""

    ran: tuple[tuple[int, float], ...]  # (1-based segment, its real LiteRT seconds), in order
    exits: tuple[dict[str, Any], ...]  # every exit evaluated (:meth:`ExitRule.judge`)
    probs: np.ndarray | None  # the last segment's exit, if it has one
    features: CutTensor | None  # the tensor at the cut after the last segment, if it has one

    @property
    def last(self) -> int:
        return self.ran[-1][0]

    @property
    def passed(self) -> bool:
        return bool(self.exits) and self.exits[-1]["passed"] is True

    @property
    def total_compute_s(self) -> float:
        return sum(s for _, s in self.ran)


class ServedChain:
    """One chain as this node serves it: the manifest's description, the node's config and one
    :class:`models.chain.Chain` of the held segments per device slot (LiteRT interpreters are not
    thread-safe)."""

    def __init__(self, name: str, cfg: ChainConfig, spec: ChainSpec, models_dir: Path) -> None:
        assert cfg.segments is not None and cfg.latency_ms is not None  # filled by TierConfig
        self.name = name
        self.cfg = cfg
        self.spec = spec
        self.first, self.last = cfg.segments
        self.paths = [Path(models_dir) / spec.segments[k - 1].file for k in cfg.held]
        self.latency_ms = float(cfg.latency_ms)
        self.profile = cfg.device_time == "profile"
        self.instances: list[Chain] = []

    @property
    def n(self) -> int:
        return self.spec.n

    @property
    def held(self) -> range:
        return self.cfg.held

    @property
    def exits_held(self) -> list[int]:
        return [k for k in self.spec.exits() if k in self.held]

    def load(self, slots: int) -> None:
        """One chain of the held segments per device slot; the files must match the manifest
        (the framing of every request is checked against it)."""
        self.instances = [Chain(self.paths) for _ in range(slots)]
        for k, seg in zip(self.held, self.instances[0].segments, strict=True):
            want = self.input_meta(k)
            if seg.input != want:
                raise TierConfigError(
                    f"chains.{self.name}: segment {k} ({seg.path.name}) takes {seg.input}, the "
                    f"manifest says {want}; rerun edgebed models research or fix the manifest"
                )

    def input_meta(self, segment: int) -> TensorMeta:
        """The input encoding of ``segment`` (1-based), from the manifest."""
        return TensorMeta.from_dict(self.spec.segments[segment - 1].input)

    # --- a request's range ---

    def parse_range(self, start: str | None, stop: str | None) -> tuple[int, int]:
        """The ``start`` and ``stop`` query parameters (default 0 and the chain's last segment),
        within what this node holds: the input of segment start+1 and every segment up to stop
        (422 naming the parameter and its allowed range)."""
        why = f" for chain {self.name} (this node holds segments {self.first}..{self.last} of " \
              f"{self.n}; a request runs segments start+1..stop)"
        first = int_param("start", start, self.first - 1, self.last - 1, 0, why)
        assert first is not None
        last = int_param("stop", stop, first + 1, self.last, self.n, why)
        assert last is not None
        return first, last

    def has_features(self, segment: int) -> bool:
        return self.spec.segments[segment - 1].features is not None

    # --- device time ---

    def expected_s(self, start: int, stop: int) -> float:
        """Mean device time of segments start+1..stop (admission, Retry-After); 0 in real mode."""
        if not self.profile:
            return 0.0
        jitter_ms = self.cfg.jitter.expected_ms() if self.cfg.jitter is not None else 0.0
        return max(0.0, (self.latency_ms + jitter_ms) * self.spec.share(start + 1, stop)) / 1000.0

    def target_ms(self, run: ChainRun, rng: np.random.Generator) -> float:
        """Device time of a finished run: (latency + a jitter draw) × the share of the segments
        it ran, at least 0."""
        jitter_ms = self.cfg.jitter.sample_ms(rng) if self.cfg.jitter is not None else 0.0
        share = self.spec.share(run.ran[0][0], run.last)
        return max(0.0, (self.latency_ms + jitter_ms) * share)

    def segment_times(self, run: ChainRun, target_ms: float) -> list[dict[str, Any]]:
        """Per segment run: its part of the run's device time (profile: ``target_ms`` split by
        the emulated per-segment ratio; real mode: its own compute) and its real compute."""
        shares = [self.spec.segments[k - 1].share for k, _ in run.ran]
        total = sum(shares)
        out = []
        for (k, compute_s), share in zip(run.ran, shares, strict=True):
            if not self.profile:
                device_ms = compute_s * 1000.0
            else:
                device_ms = target_ms * (share / total if total > 0 else 1.0 / len(shares))
            out.append({"index": k, "name": self.spec.segments[k - 1].name,
                        "device_ms": device_ms, "compute_ms": compute_s * 1000.0})  # fmt: skip
        return out

    # --- the real computation ---

    def run(self, slot: int, source: np.ndarray | CutTensor, start: int, stop: int,
            rule: ExitRule) -> tuple[ChainRun, float]:
        """Segments start+1..stop on slot ``slot``'s interpreters, from a uint8 image (start 0)
        or the tensor at cut ``start``; stops after the first exit ``rule`` passes. Returns the
        run and its real compute time (LiteRT set_tensor + invoke + get_tensor, summed)."""
        segments = self.instances[slot].segments
        first = segments[start + 1 - self.first]
        x = (image_tensor(source, first.input) if isinstance(source, np.ndarray)
             else source.encoded_for(first.input))  # fmt: skip
        times: list[tuple[int, float]] = []
        exits: list[dict[str, Any]] = []
        probs: np.ndarray | None = None
        out: dict[str, np.ndarray] = {}
        for k in range(start + 1, stop + 1):
            seg = segments[k - self.first]
            if times:
                prev = segments[k - 1 - self.first].features
                assert prev is not None
                x = CutTensor.of(out[FEATURES], prev).encoded_for(seg.input)
            t0 = time.perf_counter()
            out = seg.run(x)
            times.append((k, time.perf_counter() - t0))
            probs = None
            if PROBABILITIES in out:
                probs = probabilities_of(out[PROBABILITIES], seg.outputs[PROBABILITIES])
                exits.append(rule.judge(k, probs))
                if exits[-1]["passed"]:
                    break
        last = segments[times[-1][0] - self.first]
        features = None
        if FEATURES in out and last.features is not None:
            features = CutTensor.of(out[FEATURES], last.features)
        run = ChainRun(tuple(times), tuple(exits), probs, features)
        return run, run.total_compute_s

    # --- /v1/models ---

    def info(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.spec.kind,
            "base": self.spec.base,
            "segments": [
                {"index": s.index, "name": s.name, "file": s.file,
                 "input": s.input, "features": s.features, "probabilities": s.probabilities,
                 "held": s.index in self.held, "share": s.share}
                for s in self.spec.segments
            ],
            "held": [self.first, self.last],
            "latency_ms": self.cfg.latency_ms,
            "jitter": self.cfg.jitter.model_dump() if self.cfg.jitter else None,
            "device_time": self.cfg.device_time,
            "emulated": self.profile,
        }


def answers_with_probabilities(run: ChainRun, rule: ExitRule, output: str, n: int) -> bool:
    """Whether a run answers with its last exit's probabilities (JSON) rather than the tensor at
    its last cut: it ended at an exit, and output is ``auto`` and (that exit passed, or it is the
    chain's last segment, or no threshold was given)."""
    return (run.probs is not None and output == "auto"
            and (run.passed or run.last == n or rule.threshold is None))  # fmt: skip

