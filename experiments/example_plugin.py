"""An example plug-in (``plugins: [example_plugin]`` in experiments/plugin-example.yaml).

A plug-in is any Python module: importing it registers policies, arrival processes or energy
models under the names experiment files use. edgebed imports the modules listed under
``plugins:`` (looked up on the Python path, then next to the experiment file) or given with
``--plugin MODULE`` before it validates the experiment.
"""

from __future__ import annotations

from typing import Any

from orchestrator.client import Attempt
from orchestrator.energy import DeviceEnergy, EnergyBreakdown, register_energy_model
from orchestrator.policies import Policy, PolicyContext, register_policy
from orchestrator.workload import Request


@register_policy("edge_first")
class EdgeFirst(Policy):
    """Try the edge; accept when confident, else the cloud (LM: edge SLM, else cloud LLM)."""

    def __init__(self, threshold: float = 0.9) -> None:
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"threshold must be within 0..1, got {threshold}")
        self.threshold = float(threshold)
        self.cv_routes = ["edge/int8", "cloud/fp32"]
        self.lm_routes = ["edge/slm", "cloud/llm"]

    async def decide(self, request: Request, ctx: PolicyContext) -> Attempt:
        first, second = self.cv_routes if request.kind == "cv" else self.lm_routes
        a = await ctx.attempt(first)
        if a.ok and a.confidence >= self.threshold:
            return a
        return await ctx.attempt(second)


@register_energy_model("radio_only")
class RadioOnly:
    """The device energy model without the MCU's compute energy: only the radio counts."""

    name = "radio_only"

    def __init__(self, **params: Any) -> None:
        self._device = DeviceEnergy(**params)

    def account(self, attempts: list[Attempt], accepted: Attempt | None) -> EnergyBreakdown:
        remote = [a for a in attempts if a.tier != self._device.radio.local_tier]
        b = self._device.account(remote, accepted)
        return EnergyBreakdown(b.device_energy_mj, b.remote_energy_mj, b.sim_energy_mj)
