"""The teaching simulator's constants (tier latencies, energy factors, RTT ranges, quality tables).

These are the defaults for predicted latency, the ``simulator`` energy model and the
simulator-comparison tests. They describe the simulator; the testbed measures the real thing.
"""

from __future__ import annotations

import re

from models.catalog import served_names
from services.tier import classes as _classes
from services.tier import simulator as _tier_sim

TIERS: tuple[str, ...] = _classes.DEFAULT_NODES
CV_MODELS: tuple[str, ...] = _tier_sim.VISION_MODELS
LM_MODELS: tuple[str, ...] = _tier_sim.LM_MODELS
# the research models a route may name too: chains (split-int8, exit-int8, ...), variants, and
# the multi-scale versions (models/manifest.json, research)
RESEARCH_MODELS: tuple[str, ...] = tuple(n for n in served_names() if n not in CV_MODELS)

# The simulator's per-tier tables live once, in services/tier/simulator.py (the tiers' defaults);
# Model latency on each tier in ms (simulator table). The cloud LLM uses CLOUD "slm" as base.
SIM_LATENCY_MS: dict[str, dict[str, float]] = {
    t: dict(v) for t, v in _tier_sim.MODEL_LATENCY_MS.items()
}
SIM_ENERGY_FACTOR: dict[str, float] = dict(_tier_sim.ENERGY_FACTOR)
SIM_RTT_RANGE_MS: dict[str, tuple[int, int]] = dict(_tier_sim.RTT_RANGE_MS)
SIM_ENERGY_MJ_PER_MS = _tier_sim.SIMULATOR_MJ_PER_MS
# LM requests add a per-length overhead on top of the base (cloud vs on-device tiers).
SIM_LM_EXTRA_MS: dict[str, dict[str, float]] = {
    t: {"short": short, "long": long_} for t, (short, long_) in _tier_sim.LM_EXTRA_MS.items()
}
SIM_CV_ACCURACY: dict[str, dict[str, float]] = {
    "easy": {"fp32": 0.92, "int8": 0.88, "tinycnn": 0.80},
    "hard": {"fp32": 0.86, "int8": 0.80, "tinycnn": 0.70},
}
SIM_LM_QUALITY: dict[str, dict[str, float]] = {
    length: {m: q[length] for m, q in _tier_sim.LM_QUALITY.items()} for length in ("short", "long")
}


NODE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def parse_route(route: str) -> tuple[str, str]:
    """Like :func:`split_route`, but the node part may also be a class selector ``@class``
    (the device's nearest node of that class, resolved by ``orchestrator.policies``)."""
    if isinstance(route, str) and route.startswith("@"):
        node, model = split_route(route[1:])
        return "@" + node, model
    return split_route(route)


def split_route(route: str) -> tuple[str, str]:
    """``"edge/fp32"`` → ``("edge", "fp32")``; raises ValueError naming the route otherwise.

    The node part is a node name (lower case; ``EDGE/fp32`` is read as ``edge/fp32``); whether
    the experiment has that node and it serves the model is checked against the experiment.
    """
    node, sep, model = str(route).partition("/")
    node = node.lower()
    if not sep or not NODE_NAME.match(node) or model not in (*CV_MODELS, *LM_MODELS,
                                                             *RESEARCH_MODELS):
        raise ValueError(
            f"route must be node/model (or @class/model) with a node name (e.g. "
            f"{', '.join(TIERS)}) and model in {[*CV_MODELS, *LM_MODELS]} (or a research "
            f"model: {', '.join(RESEARCH_MODELS)}), got {route!r}"
        )
    return node, model


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
