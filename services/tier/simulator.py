"""The teaching simulator's per-tier constants, used as the tier configs' defaults.

Values come from the simulator's table (model latency per tier in ms, energy factor, LM
quality and the LM's short/long additions). Nothing here is measured; it is the reference the
testbed reproduces by default.
"""

from __future__ import annotations

# Device latency (ms) per tier and model in the simulator. The cloud LLM uses the CLOUD "slm"
# column (1500 ms) as its base.
MODEL_LATENCY_MS: dict[str, dict[str, float]] = {
    "mcu": {"fp32": 80.0, "int8": 25.0, "tinycnn": 7.0, "slm": 12000.0},
    "edge": {"fp32": 22.0, "int8": 10.0, "tinycnn": 4.0, "slm": 4000.0},
    "cloud": {"fp32": 12.0, "int8": 12.0, "tinycnn": 12.0, "slm": 1500.0, "llm": 1500.0},
}

ENERGY_FACTOR: dict[str, float] = {"mcu": 1.0, "edge": 1.4, "cloud": 1.9}

# Round trip (ms) from the device to each tier: uniform integers in [lo, hi] per request.
RTT_RANGE_MS: dict[str, tuple[int, int]] = {"mcu": (0, 0), "edge": (5, 15), "cloud": (30, 120)}

# Simulator energy formula: energy_mj = energy factor × latency_ms × SIMULATOR_MJ_PER_MS.
SIMULATOR_MJ_PER_MS = 0.02

# LM requests add this to the base latency (ms), by length: (short, long).
LM_EXTRA_MS: dict[str, tuple[float, float]] = {
    "mcu": (8.0, 20.0),
    "edge": (8.0, 20.0),
    "cloud": (5.0, 10.0),
}

# LM quality by model and length.
LM_QUALITY: dict[str, dict[str, float]] = {
    "slm": {"short": 0.70, "long": 0.60},
    "llm": {"short": 0.90, "long": 0.92},
}

# Token counts the testbed assigns to the simulator's "short" and "long" LM requests.
LM_SHORT_TOKENS = 32
LM_LONG_TOKENS = 128

VISION_MODELS = ("tinycnn", "int8", "fp32")
LM_MODELS = ("slm", "llm")


def lm_token_profile(tier: str, model: str) -> tuple[float, float]:
    """(ttft_ms, tpot_ms) such that ttft + (tokens - 1) × tpot equals the simulator's total latency
    for a short (``LM_SHORT_TOKENS``) and a long (``LM_LONG_TOKENS``) request on this tier."""
    base = MODEL_LATENCY_MS[tier]["llm" if model == "llm" else "slm"]
    short_extra, long_extra = LM_EXTRA_MS[tier]
    tpot_ms = (long_extra - short_extra) / (LM_LONG_TOKENS - LM_SHORT_TOKENS)
    ttft_ms = base + short_extra - (LM_SHORT_TOKENS - 1) * tpot_ms
    return ttft_ms, tpot_ms


def simulator_lm_total_ms(tier: str, model: str, length: str) -> float:
    """The simulator's latency (without RTT) for an LM request of ``length`` on ``tier``."""
    base = MODEL_LATENCY_MS[tier]["llm" if model == "llm" else "slm"]
    short_extra, long_extra = LM_EXTRA_MS[tier]
    return base + (long_extra if length == "long" else short_extra)
