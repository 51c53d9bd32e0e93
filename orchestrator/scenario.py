"""Scenario timelines: timed faults and changes applied during each policy pass.

An experiment's ``scenario:`` lists events (``orchestrator.experiment.ScenarioEvent``), each at
``at_s`` seconds from the start of a pass: change a link, cut it and heal it, kill, pause,
resume or restart a node, step the arrival rate. Rate steps are folded into the arrival schedule
before the pass (``arrivals.warp_schedule``); the others are applied by a
:class:`StackController` (the local stack's is ``orchestrator.stack.control``), which also puts
everything back before the next pass, so every policy meets the same timeline. Each request
records the scenario phase it was sent in (the ``phase`` of the last event before its send).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from orchestrator.arrivals import warp_schedule
from orchestrator.experiment import ScenarioEvent

START_PHASE = "start"


class StackController(Protocol):
    """What a scenario needs from the stack the run is on."""

    def apply(self, event: ScenarioEvent) -> str:
        """Apply one event (blocking is fine: it runs on a worker thread); return a note;
        raise to report a failure."""
        ...

    def reset(self) -> list[str]:
        """Restore the configured state (links as configured, every node running)."""
        ...


@dataclass
class AppliedEvent:
    policy: str
    at_s: float  # planned, from the pass start
    applied_s: float  # when it took effect, from the pass start (nan: not reached)
    action: str
    target: str
    phase: str
    ok: bool
    note: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def rate_steps(events: Sequence[ScenarioEvent]) -> list[tuple[float, float]]:
    return [(ev.at_s, float(ev.rate_factor)) for ev in events
            if ev.action == "arrival_rate" and ev.rate_factor is not None]


def apply_rate_steps(schedule: np.ndarray | None,
                     events: Sequence[ScenarioEvent]) -> np.ndarray | None:
    """The arrival schedule with the scenario's rate steps applied (serial: unchanged)."""
    if schedule is None:
        return None
    return warp_schedule(schedule, rate_steps(events))


def phase_at(t_s: float, events: Sequence[ScenarioEvent]) -> str:
    """The scenario phase at ``t_s`` from the pass start ("" without a scenario)."""
    if not events:
        return ""
    phase = START_PHASE
    for ev in sorted(events, key=lambda e: e.at_s):
        if ev.at_s > t_s:
            break
        if ev.phase:
            phase = ev.phase
    return phase


def describe(ev: ScenarioEvent) -> str:
    what = {"link": f"set link {ev.link}: {ev.set}", "link_down": f"cut link {ev.link}",
            "link_up": f"heal link {ev.link}", "arrival_rate": f"arrival rate × {ev.rate_factor}"}
    return what.get(ev.action, f"{ev.action} node {ev.node}")


async def run_timeline(
    events: Sequence[ScenarioEvent],
    controller: StackController | None,
    *,
    policy: str,
    t0: float,
    log: list[AppliedEvent],
    on_event: Callable[[AppliedEvent], None] | None = None,
    now: Callable[[], float] = time.perf_counter,
) -> None:
    """Apply ``events`` at ``t0 + at_s`` (on the ``now`` clock), appending to ``log``.

    Cancel it at the end of the pass: events not reached are logged as such by the caller
    (:func:`log_unreached`)."""
    loop = asyncio.get_running_loop()
    for ev in sorted(events, key=lambda e: e.at_s):
        delay = t0 + ev.at_s - now()
        if delay > 0:
            await asyncio.sleep(delay)
        applied = now() - t0
        if ev.action == "arrival_rate":
            ok, note = True, "folded into the arrival schedule"
        elif controller is None:
            ok, note = False, "no stack controller: this run cannot act on nodes and links"
        else:
            try:
                note = await loop.run_in_executor(None, controller.apply, ev)
                ok = True
            except Exception as exc:  # a failed action is recorded, the run goes on
                ok, note = False, f"{type(exc).__name__}: {exc}"
        entry = AppliedEvent(policy, ev.at_s, applied, ev.action, ev.target, ev.phase or "",
                             ok, note)
        log.append(entry)
        if on_event is not None:
            on_event(entry)


def log_unreached(events: Sequence[ScenarioEvent], policy: str,
                  log: list[AppliedEvent]) -> None:
    """Add the events of ``policy``'s pass that the pass ended before reaching."""
    done = {(e.at_s, e.action, e.target) for e in log if e.policy == policy}
    for ev in sorted(events, key=lambda e: e.at_s):
        if (ev.at_s, ev.action, ev.target) not in done:
            log.append(AppliedEvent(policy, ev.at_s, float("nan"), ev.action, ev.target,
                                    ev.phase or "", False, "not reached: the pass ended first"))
