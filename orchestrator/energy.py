"""Energy models (registry keyed by config name): what one request cost, in mJ.

All energy figures are EMULATED: the tiers report modelled energy and the device radio is a
power model, not a measurement. Every record carries three figures:

- ``device_energy_mj``: what the device's battery pays, from the experiment's energy model;
- ``system_energy_mj``: the device plus every tier the request touched (their reported energy);
- ``sim_energy_mj``: the teaching simulator's formula on the accepted attempt,
  ``energy_factor(tier) × latency_ms × 0.02`` (network wait included), for comparison.

Models (``energy.model``; a fresh instance per policy pass, so a stateful model such as a
battery starts every pass full):

- ``device`` (default): attempts on the MCU tier (the device itself) cost the MCU's reported
  compute energy; attempts on a remote tier cost the device radio: transmit ``bytes_tx`` at
  ``uplink_kbps`` drawing ``tx_power_mw``, receive ``bytes_rx`` at ``downlink_kbps`` drawing
  ``rx_power_mw``, and wait the rest of the attempt's wall time drawing ``wait_power_mw``.
  Rejected and failed attempts count too.
- ``simulator``: the device's energy is the simulator's formula (``sim_energy_mj``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.validation import problems
from orchestrator.client import Attempt
from orchestrator.profiles import SIM_ENERGY_FACTOR, SIM_ENERGY_MJ_PER_MS
from services.tier.classes import ESCALATION_LADDER


@dataclass(frozen=True)
class EnergyBreakdown:
    device_energy_mj: float  # what the device's battery pays (the experiment's model)
    remote_energy_mj: float  # reported by the remote tiers the request touched
    sim_energy_mj: float  # simulator formula on the accepted attempt (always computed)

    @property
    def system_energy_mj(self) -> float:
        """Device plus every tier."""
        return self.device_energy_mj + self.remote_energy_mj


class EnergyModel(Protocol):
    name: str

    def account(self, attempts: Sequence[Attempt], accepted: Attempt | None) -> EnergyBreakdown: ...


ENERGY_MODELS: dict[str, Callable[..., EnergyModel]] = {}


def register_energy_model(
    name: str,
) -> Callable[[Callable[..., EnergyModel]], Callable[..., EnergyModel]]:
    def deco(factory: Callable[..., EnergyModel]) -> Callable[..., EnergyModel]:
        ENERGY_MODELS[name] = factory
        return factory

    return deco


def simulator_energy_mj(accepted: Attempt | None) -> float:
    if accepted is None or not accepted.ok:
        return 0.0
    factor = SIM_ENERGY_FACTOR.get(accepted.hw_class)
    if factor is None:  # a class the simulator has no row for (gpu, npu): no simulator figure
        return float("nan")
    return factor * accepted.latency_ms * SIM_ENERGY_MJ_PER_MS


class RadioModel(BaseModel):
    """Device radio power model (defaults: order of magnitude of an ESP32-class Wi-Fi radio)."""

    model_config = ConfigDict(extra="forbid")

    tx_power_mw: float = Field(default=600.0, ge=0, le=1e6, allow_inf_nan=False)
    rx_power_mw: float = Field(default=300.0, ge=0, le=1e6, allow_inf_nan=False)
    wait_power_mw: float = Field(default=100.0, ge=0, le=1e6, allow_inf_nan=False)
    uplink_kbps: float = Field(default=6000.0, gt=0, le=1e9, allow_inf_nan=False)
    downlink_kbps: float = Field(default=6000.0, gt=0, le=1e9, allow_inf_nan=False)
    local_tier: str = ESCALATION_LADDER[0]  # attempts on a node of this class (or name) run on the device
    # itself: no radio


def device_side_mj(attempt: Attempt, radio: RadioModel) -> tuple[float, float]:
    """(device mJ, remote mJ) for one attempt."""
    if radio.local_tier in (attempt.tier, attempt.hw_class):
        return attempt.remote_energy_mj, 0.0
    tx_s = attempt.bytes_tx * 8 / (radio.uplink_kbps * 1e3)
    rx_s = attempt.bytes_rx * 8 / (radio.downlink_kbps * 1e3)
    wait_s = max(0.0, attempt.latency_ms / 1e3 - tx_s - rx_s)
    device = radio.tx_power_mw * tx_s + radio.rx_power_mw * rx_s + radio.wait_power_mw * wait_s
    return device, attempt.remote_energy_mj


def overlap_s(attempts: Sequence[Attempt]) -> float:
    """Seconds by which the attempts' intervals (start, start + latency) overlap: their summed
    length minus the length of their union (0 for attempts one after another)."""
    spans = sorted((a.start_ms, a.start_ms + a.latency_ms) for a in attempts if a.latency_ms > 0)
    total = sum(b - a for a, b in spans)
    union, end = 0.0, float("-inf")
    for a, b in spans:
        if b > end:
            union += b - max(a, end)
            end = b
    return max(0.0, total - union) / 1e3


@register_energy_model("device")
class DeviceEnergy:
    name = "device"
    params_model = RadioModel

    def __init__(self, **params: Any) -> None:
        self.radio = RadioModel(**params)

    def account(self, attempts: Sequence[Attempt], accepted: Attempt | None) -> EnergyBreakdown:
        device = remote = 0.0
        for a in attempts:
            d, r = device_side_mj(a, self.radio)
            device += d
            remote += r
        # attempts in flight at the same time (a fan-out) share one radio: its waiting is paid
        # once for the time covered, not once per attempt
        device -= self.radio.wait_power_mw * overlap_s(
            [a for a in attempts if self.radio.local_tier not in (a.tier, a.hw_class)])
        return EnergyBreakdown(device, remote, simulator_energy_mj(accepted))


@register_energy_model("simulator")
class SimulatorEnergy:
    name = "simulator"
    params_model = RadioModel

    def __init__(self, **params: Any) -> None:
        self._device = DeviceEnergy(**params)

    def account(self, attempts: Sequence[Attempt], accepted: Attempt | None) -> EnergyBreakdown:
        b = self._device.account(attempts, accepted)
        return EnergyBreakdown(b.sim_energy_mj, b.remote_energy_mj, b.sim_energy_mj)


def make_energy_model(name: str, params: dict[str, Any] | None = None) -> EnergyModel:
    """A fresh instance of a registered model; bad parameters raise ValueError naming each key
    (``tx_power_mw: must be >= 0, got -1``) and the allowed keys."""
    if name not in ENERGY_MODELS:
        raise ValueError(f"energy.model must be one of {sorted(ENERGY_MODELS)}, got {name!r}")
    factory = ENERGY_MODELS[name]
    try:
        return factory(**(params or {}))
    except ValidationError as exc:
        root = getattr(factory, "params_model", BaseModel)
        raise ValueError("; ".join(problems(exc, root))) from None
    except TypeError as exc:
        raise ValueError(f"parameters of energy model {name!r}: {exc}") from None
