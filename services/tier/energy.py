"""Per-request energy estimates: a registry of named energy models (``power``, ``simulator``).

Every answer reports both; the tier's ``energy_model`` picks which one is ``energy_mj``. Both
are emulated estimates, not measurements.
"""

from __future__ import annotations

from collections.abc import Callable

from services.tier import simulator
from services.tier.config import TierConfig

# An energy model maps (tier config, device busy ms, queue wait ms) to millijoules.
EnergyModel = Callable[[TierConfig, float, float], float]


def power_energy_mj(cfg: TierConfig, busy_ms: float, wait_ms: float) -> float:
    """Active power over the device time plus idle power over the queue wait (W × ms = mJ)."""
    return cfg.power.active_w * busy_ms + cfg.power.idle_w * wait_ms


def simulator_energy_mj(cfg: TierConfig, busy_ms: float, wait_ms: float) -> float:
    """The teaching simulator's formula over the tier-side latency (queue wait + device time).

    The simulator also counts the network round trip; the orchestrator adds that part.
    """
    return float(cfg.energy_factor or 0.0) * (busy_ms + wait_ms) * simulator.SIMULATOR_MJ_PER_MS


ENERGY_MODELS: dict[str, EnergyModel] = {
    "power": power_energy_mj,
    "simulator": simulator_energy_mj,
}


def estimate(cfg: TierConfig, busy_ms: float, wait_ms: float) -> dict[str, float | str]:
    """The response's ``energy`` object: chosen ``energy_mj`` plus every model's value."""
    values = {name: fn(cfg, busy_ms, wait_ms) for name, fn in ENERGY_MODELS.items()}
    return {
        "energy_mj": values[cfg.energy_model],
        "model": cfg.energy_model,
        "power_mj": values["power"],
        "simulator_mj": values["simulator"],
    }
