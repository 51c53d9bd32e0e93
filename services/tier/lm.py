"""Emulated SLM/LLM: deterministic text, token timing, quality and confidence from the tier's LM
profile.

Nothing here runs a language model. Timing is ``ttft_ms + (tokens - 1) × tpot_ms`` from the start of
service to the last token, chosen so that the simulator's short/long totals are reproduced; the text
is a deterministic function of (model, prompt, tokens); quality is the simulator's table value; the
confidence is drawn per request as the teaching simulator does (:func:`confidence`).
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

import numpy as np

from services.tier.config import LMConfig

_VOCAB = (
    "edge device model latency token cloud tier quantized inference budget energy deadline "
    "offload route policy signal sensor digit network packet queue memory accuracy confidence "
    "the a of to and in on for with is are was be by at from as this that it"
).split()

# The teaching simulator's LM confidence: N(mean, sd) with mean = BASE + SLOPE × quality,
# clipped to [LOW, HIGH].
CONFIDENCE_BASE = 0.6
CONFIDENCE_SLOPE = 0.3
CONFIDENCE_SD = 0.1
CONFIDENCE_LOW = 0.01
CONFIDENCE_HIGH = 0.999


@dataclass(frozen=True)
class LMPlan:
    length: str  # "short" | "long"
    tokens: int
    ttft_ms: float
    total_ms: float
    quality: float


def plan(cfg: LMConfig, max_tokens: int | None, length: str | None) -> LMPlan:
    """Resolve length and token count, and the emulated timing for one request.

    ``length`` given → tokens default to the profile's short/long count; ``max_tokens`` given
    without ``length`` → "long" when it exceeds the short count.
    """
    if length is None:
        length = "long" if max_tokens is not None and max_tokens > cfg.short_tokens else "short"
    if max_tokens is None:
        max_tokens = cfg.long_tokens if length == "long" else cfg.short_tokens
    ttft_ms = float(cfg.ttft_ms or 0.0)
    tpot_ms = float(cfg.tpot_ms or 0.0)
    total_ms = ttft_ms + (max_tokens - 1) * tpot_ms
    quality = cfg.quality_long if length == "long" else cfg.quality_short
    return LMPlan(length, max_tokens, ttft_ms, total_ms, float(quality or 0.0))


def confidence(quality: float, rng: np.random.Generator) -> float:
    """One emulated answer confidence: N(0.6 + 0.3 × quality, sd 0.1) clipped to [0.01, 0.999]
    (the teaching simulator's law; one draw from ``rng``)."""
    mean = CONFIDENCE_BASE + CONFIDENCE_SLOPE * quality
    return float(np.clip(rng.normal(mean, CONFIDENCE_SD), CONFIDENCE_LOW, CONFIDENCE_HIGH))


def request_rng(seed: int, model: str) -> np.random.Generator:
    """The generator of a request that brings its own ``seed``: the same (seed, model) always
    gives the same draws, on any tier."""
    return np.random.default_rng([seed, zlib.crc32(model.encode())])


def token_times_ms(p: LMPlan) -> np.ndarray:
    """Emulated emission time of each token, relative to the start of service (ms)."""
    if p.tokens == 1:
        return np.array([p.total_ms])
    return np.linspace(p.ttft_ms, p.total_ms, p.tokens)


def generate_tokens(model: str, prompt: str, tokens: int) -> list[str]:
    """Deterministic pseudo-text: the same (model, prompt, tokens) always gives the same words."""
    seed = int.from_bytes(hashlib.sha256(f"{model}\0{prompt}".encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(_VOCAB), size=tokens)
    return [_VOCAB[i] for i in idx]
