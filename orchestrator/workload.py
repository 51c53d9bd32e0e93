"""Build the request workload: the simulator's generator plus real images and LM prompts.

Each random dimension has its own seed (``Seeds``): which requests are CV/LM, easy/hard and
their deadlines (``workload``), which evaluation image each CV request carries (``images``),
which prompt each LM request carries (``prompts``), LM correctness draws (``lm_quality``), the
arrival schedule (``arrivals``), link draws (``links``) and the emulated LM's confidence draws
(``lm_confidence``: one seed per LM request, mixed with the route by the client).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.paths import eval_set_path

SEED_DIMENSIONS: tuple[str, ...] = (
    "workload",
    "arrivals",
    "images",
    "prompts",
    "lm_quality",
    "links",
    "lm_confidence",
)

LM_PROMPTS: tuple[str, ...] = (
    "Summarise the sensor readings from the last hour.",
    "Which digit did the camera most likely see, and why?",
    "Explain in one paragraph why the edge node offloaded this request.",
    "Write a short status report for the maintenance team.",
    "List three causes of a sudden rise in inference latency.",
    "Translate the alarm message into plain language for the operator.",
    "Describe the trade-off between accuracy and energy on a microcontroller.",
    "Draft a reply to the user asking when the device will be back online.",
)


class Seeds(BaseModel):
    """One seed per random dimension; ``Seeds.from_base(s)`` derives all of them from one."""

    model_config = ConfigDict(extra="forbid")

    workload: int = Field(default=0, ge=0)
    arrivals: int = Field(default=1, ge=0)
    images: int = Field(default=2, ge=0)
    prompts: int = Field(default=3, ge=0)
    lm_quality: int = Field(default=4, ge=0)
    links: int = Field(default=5, ge=0)
    lm_confidence: int = Field(default=6, ge=0)

    @classmethod
    def from_base(cls, base: int) -> Seeds:
        if base < 0:
            raise ValueError(f"seed must be >= 0, got {base}")
        children = np.random.SeedSequence(base).spawn(len(SEED_DIMENSIONS))
        values = {
            dim: int(c.generate_state(1)[0])
            for dim, c in zip(SEED_DIMENSIONS, children, strict=True)
        }
        return cls(**values)


class WorkloadSpec(BaseModel):
    """The simulator's generator parameters (same names and defaults) plus LM token budgets."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=10, ge=1, le=1_000_000)
    easy_ratio: float = Field(default=0.6, ge=0.0, le=1.0, allow_inf_nan=False)
    deadline_lo_ms: int = Field(default=20, ge=1, le=86_400_000)
    deadline_hi_ms: int = Field(default=120, ge=1, le=86_400_000)
    lm_ratio: float = Field(default=0.2, ge=0.0, le=1.0, allow_inf_nan=False)
    lm_long_ratio: float = Field(default=0.4, ge=0.0, le=1.0, allow_inf_nan=False)
    lm_deadline_extra_lo_ms: int = Field(default=2000, ge=0, le=86_400_000)
    lm_deadline_extra_hi_ms: int = Field(default=13000, ge=0, le=86_400_000)
    short_max_tokens: int = Field(default=32, ge=1, le=4096)
    long_max_tokens: int = Field(default=128, ge=1, le=4096)

    @model_validator(mode="after")
    def _ranges(self) -> WorkloadSpec:
        if self.deadline_hi_ms < self.deadline_lo_ms:
            raise ValueError(
                f"deadline_hi_ms must be >= deadline_lo_ms ({self.deadline_lo_ms}), "
                f"got {self.deadline_hi_ms}"
            )
        if self.lm_deadline_extra_hi_ms < self.lm_deadline_extra_lo_ms:
            raise ValueError(
                f"lm_deadline_extra_hi_ms must be >= lm_deadline_extra_lo_ms "
                f"({self.lm_deadline_extra_lo_ms}), got {self.lm_deadline_extra_hi_ms}"
            )
        if self.long_max_tokens < self.short_max_tokens:
            raise ValueError(
                f"long_max_tokens must be >= short_max_tokens ({self.short_max_tokens}), "
                f"got {self.long_max_tokens}"
            )
        return self


@dataclass(frozen=True)
class Request:
    """One request of the workload (the same for every policy)."""

    id: int
    kind: str  # "cv" | "lm"
    deadline_ms: int
    difficulty: str = ""  # cv: "easy" | "hard"
    image_index: int = -1  # index into the easy/hard array of the evaluation set
    label: int = -1
    image: bytes = b""  # 784 raw uint8 bytes, row-major
    length: str = ""  # lm: "short" | "long"
    prompt: str = ""
    max_tokens: int = 0
    lm_draw: float = float("nan")  # uniform [0,1) draw deciding LM correctness (quality > draw)
    lm_seed: int = 0  # seed of the emulated LM's confidence draws (``client.lm_seed_for``)
    device: str = ""  # the device that sends it (``orchestrator.devices``)
    group: str = ""  # that device's group


@dataclass(frozen=True)
class EvalSet:
    easy_images: np.ndarray
    easy_labels: np.ndarray
    hard_images: np.ndarray
    hard_labels: np.ndarray

    def pick(self, difficulty: str) -> tuple[np.ndarray, np.ndarray]:
        if difficulty == "easy":
            return self.easy_images, self.easy_labels
        return self.hard_images, self.hard_labels


@lru_cache(maxsize=4)
def load_eval_set(path: str | None = None) -> EvalSet:
    """Load the committed evaluation set (easy = clean, hard = corrupted MNIST digits)."""
    p = Path(path) if path else eval_set_path()
    if not p.exists():
        raise FileNotFoundError(f"evaluation set not found: {p} (set EDGEBED_DATA_DIR)")
    with np.load(p) as z:
        arrays = {
            k: np.asarray(z[k])
            for k in ("easy_images", "easy_labels", "hard_images", "hard_labels")
        }
    for key in ("easy_images", "hard_images"):
        arr = arrays[key]
        if arr.dtype != np.uint8 or arr.shape[1:] != (28, 28):
            raise ValueError(f"{key} must be uint8 (n, 28, 28), got {arr.dtype} {arr.shape}")
    return EvalSet(**arrays)


def generate_kinds(spec: WorkloadSpec, seed: int) -> list[tuple[str, str, int]]:
    """The simulator's draw per request: (kind, difficulty-or-length, deadline_ms)."""
    rng = np.random.default_rng(seed)
    out: list[tuple[str, str, int]] = []
    lo, hi = spec.deadline_lo_ms, spec.deadline_hi_ms
    for _ in range(spec.n):
        if rng.random() < spec.lm_ratio:
            length = "long" if rng.random() < spec.lm_long_ratio else "short"
            deadline = int(
                rng.integers(
                    lo + spec.lm_deadline_extra_lo_ms, hi + spec.lm_deadline_extra_hi_ms + 1
                )
            )
            out.append(("lm", length, deadline))
        else:
            difficulty = "easy" if rng.random() < spec.easy_ratio else "hard"
            out.append(("cv", difficulty, int(rng.integers(lo, hi + 1))))
    return out


def generate_workload(
    spec: WorkloadSpec, seeds: Seeds, eval_set: EvalSet | None = None
) -> list[Request]:
    """Requests with real images (CV) and prompts (LM); same spec + seeds → same workload."""
    kinds = generate_kinds(spec, seeds.workload)
    need_images = any(k == "cv" for k, _, _ in kinds)
    data = eval_set if eval_set is not None else (load_eval_set() if need_images else None)
    img_rng = np.random.default_rng(seeds.images)
    prompt_rng = np.random.default_rng(seeds.prompts)
    quality_rng = np.random.default_rng(seeds.lm_quality)
    confidence_rng = np.random.default_rng(seeds.lm_confidence)
    requests: list[Request] = []
    for i, (kind, sub, deadline_ms) in enumerate(kinds):
        if kind == "cv":
            assert data is not None
            images, labels = data.pick(sub)
            idx = int(img_rng.integers(0, len(images)))
            requests.append(
                Request(
                    id=i,
                    kind="cv",
                    deadline_ms=deadline_ms,
                    difficulty=sub,
                    image_index=idx,
                    label=int(labels[idx]),
                    image=np.ascontiguousarray(images[idx]).tobytes(),
                )
            )
        else:
            prompt = LM_PROMPTS[int(prompt_rng.integers(0, len(LM_PROMPTS)))]
            max_tokens = spec.long_max_tokens if sub == "long" else spec.short_max_tokens
            requests.append(
                Request(
                    id=i,
                    kind="lm",
                    deadline_ms=deadline_ms,
                    length=sub,
                    prompt=prompt,
                    max_tokens=max_tokens,
                    lm_draw=float(quality_rng.random()),
                    lm_seed=int(confidence_rng.integers(0, 2**53)),
                )
            )
    return requests
