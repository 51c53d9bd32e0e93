"""The teaching simulator's constants (tier latencies, energy factors, RTT ranges, quality tables).

These are the defaults for predicted latency, the ``simulator`` energy model and the
simulator-comparison tests. They describe the simulator; the testbed measures the real thing.
"""

from __future__ import annotations

TIERS: tuple[str, ...] = ("MCU", "EDGE", "CLOUD")
CV_MODELS: tuple[str, ...] = ("tinycnn", "int8", "fp32")
LM_MODELS: tuple[str, ...] = ("slm", "llm")

# Model latency on each tier in ms (simulator table). The cloud LLM uses CLOUD "slm" as base.
SIM_LATENCY_MS: dict[str, dict[str, float]] = {
    "MCU": {"fp32": 80.0, "int8": 25.0, "tinycnn": 7.0, "slm": 12000.0},
    "EDGE": {"fp32": 22.0, "int8": 10.0, "tinycnn": 4.0, "slm": 4000.0},
    "CLOUD": {"fp32": 12.0, "int8": 12.0, "tinycnn": 12.0, "slm": 1500.0, "llm": 1500.0},
}
SIM_ENERGY_FACTOR: dict[str, float] = {"MCU": 1.0, "EDGE": 1.4, "CLOUD": 1.9}
SIM_RTT_RANGE_MS: dict[str, tuple[int, int]] = {"MCU": (0, 0), "EDGE": (5, 15), "CLOUD": (30, 120)}
SIM_ENERGY_MJ_PER_MS = 0.02
# LM requests add a per-length overhead on top of the base (cloud vs on-device tiers).
SIM_LM_EXTRA_MS: dict[str, dict[str, float]] = {
    "CLOUD": {"short": 5.0, "long": 10.0},
    "EDGE": {"short": 8.0, "long": 20.0},
    "MCU": {"short": 8.0, "long": 20.0},
}
SIM_CV_ACCURACY: dict[str, dict[str, float]] = {
    "easy": {"fp32": 0.92, "int8": 0.88, "tinycnn": 0.80},
    "hard": {"fp32": 0.86, "int8": 0.80, "tinycnn": 0.70},
}
SIM_LM_QUALITY: dict[str, dict[str, float]] = {
    "short": {"slm": 0.70, "llm": 0.90},
    "long": {"slm": 0.60, "llm": 0.92},
}


def split_route(route: str) -> tuple[str, str]:
    """``"EDGE/fp32"`` → ``("EDGE", "fp32")``; raises ValueError naming the route otherwise."""
    tier, sep, model = route.partition("/")
    tier = tier.upper()
    if not sep or tier not in TIERS or model not in (*CV_MODELS, *LM_MODELS):
        raise ValueError(
            f"route must be TIER/model with TIER in {list(TIERS)} and model in "
            f"{[*CV_MODELS, *LM_MODELS]}, got {route!r}"
        )
    return tier, model


def sim_model_latency_ms(tier: str, model: str, length: str | None = None) -> float:
    """The simulator's model latency for a route (LM: base + per-length overhead)."""
    base_model = "slm" if model == "llm" else model
    base = SIM_LATENCY_MS[tier][base_model]
    if model in LM_MODELS and length:
        base += SIM_LM_EXTRA_MS[tier][length]
    return base


def sim_mean_rtt_ms(tier: str) -> float:
    lo, hi = SIM_RTT_RANGE_MS[tier]
    return (lo + hi) / 2.0
