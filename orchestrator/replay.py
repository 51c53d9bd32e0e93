"""Replay a workload through one policy after another against tier URLs (asyncio + aiohttp).

Open loop: each request has an intended send time from the arrival schedule and its latency is
measured from that instant, so client-side lateness (a full concurrency window, a slow event
loop) shows up as latency instead of hiding it. ``serial`` schedules run closed loop, like the
simulator. Every request ends as exactly one record, whatever happened to it (refused,
abandoned, 503, dropped connection, a policy bug, Ctrl-C while in flight: outcome
``cancelled``). Records are handed to subscribers (CSV writer, metrics, progress bar) as they
finish. A scenario timeline runs beside each pass (``orchestrator.scenario``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from tqdm import tqdm

from orchestrator.client import Attempt, make_session, run_attempt
from orchestrator.energy import EnergyModel
from orchestrator.experiment import ReplaySettings, ScenarioEvent
from orchestrator.policies import LatencyPredictor, Policy, PolicyContext
from orchestrator.records import make_record
from orchestrator.scenario import (
    AppliedEvent,
    StackController,
    log_unreached,
    phase_at,
    run_timeline,
)
from orchestrator.workload import Request

RecordSink = Callable[[dict[str, Any], Sequence[Attempt]], None]


def normalise_targets(targets: dict[str, str]) -> dict[str, str]:
    """Node names lower-cased (``MCU`` → ``mcu``), URLs without a trailing slash."""
    out = {}
    for tier, url in targets.items():
        if not str(url).startswith(("http://", "https://")):
            raise ValueError(f"targets.{tier} must be an http(s) URL, got {url!r}")
        out[tier.lower()] = str(url).rstrip("/")
    return out


@dataclass
class PassStats:
    policy: str
    n_planned: int
    n_recorded: int = 0
    started_s: float = 0.0
    duration_s: float = 0.0
    send_lag_ms: list[float] = field(default_factory=list)
    interrupted: bool = False
    recorded_ids: set[int] = field(default_factory=set)
    host_leads_ms: dict[str, float] = field(default_factory=dict)

    def lag_summary(self) -> dict[str, float]:
        if not self.send_lag_ms:
            return {}
        lag = np.asarray(self.send_lag_ms)
        return {
            "send_lag_p50_ms": float(np.percentile(lag, 50)),
            "send_lag_p99_ms": float(np.percentile(lag, 99)),
            "send_lag_max_ms": float(lag.max()),
        }


def make_client(concurrency: int, n_tiers: int = 3) -> aiohttp.ClientSession:
    """One pooled aiohttp session for all tiers (see ``orchestrator.client``)."""
    return make_session(concurrency * max(1, n_tiers) + 8)


@contextlib.contextmanager
def realtime_priority(enabled: bool, priority: int = 10) -> Iterator[str]:
    """SCHED_FIFO for the calling thread while inside (needs root); yields what happened."""
    if not enabled:
        yield "off"
        return
    try:
        before = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (PermissionError, OSError, AttributeError) as exc:
        yield f"unavailable: {exc}"
        return
    try:
        yield f"SCHED_FIFO priority {priority}"
    finally:
        os.sched_setscheduler(0, before[0], before[1])


async def _sleep_until(t_target: float, spin_s: float) -> None:
    """Sleep until ``t_target`` (perf_counter); the last ``spin_s`` yield-spins for precision."""
    delay = t_target - time.perf_counter() - spin_s
    if delay > 0:
        await asyncio.sleep(delay)
    while time.perf_counter() < t_target:
        await asyncio.sleep(0)


@dataclass
class Pass:
    """One policy pass: its label, the policy and the per-pass state it starts from."""

    label: str
    policy: Policy
    energy_model: EnergyModel
    predictor: LatencyPredictor
    node_classes: dict[str, str] = field(default_factory=dict)  # node name -> hardware class
    node_paths: dict[str, str] = field(default_factory=dict)  # node -> "link>link" | "direct"


BeforePass = Callable[[str], Awaitable[dict[str, float]]]


async def replay_policy(
    requests: Sequence[Request],
    schedule: np.ndarray | None,
    run: Pass,
    *,
    targets: dict[str, str],
    client: aiohttp.ClientSession,
    settings: ReplaySettings,
    sinks: Sequence[RecordSink] = (),
    t_origin: float | None = None,
    host_leads: dict[str, float] | None = None,
    scenario: Sequence[ScenarioEvent] = (),
    controller: StackController | None = None,
    event_log: list[AppliedEvent] | None = None,
    on_event: Callable[[AppliedEvent], None] | None = None,
    stats: PassStats | None = None,
) -> PassStats:
    """One pass of the workload through ``run.policy``; returns send-time statistics."""
    targets = normalise_targets(targets)
    leads = {k.lower(): v for k, v in (host_leads or {}).items()}
    label = run.label
    stats = stats or PassStats(policy=label, n_planned=len(requests))
    sem = asyncio.Semaphore(settings.concurrency)
    origin = time.perf_counter() if t_origin is None else t_origin
    events = event_log if event_log is not None else []

    def emit(row: dict[str, Any], attempts: Sequence[Attempt]) -> None:
        stats.n_recorded += 1
        stats.recorded_ids.add(row["id"])
        stats.send_lag_ms.append(row["send_lag_ms"])
        for sink in sinks:
            sink(row, attempts)

    async def one(req: Request, t_intended: float, schedule_s: float, t_pass: float) -> None:
        budget_end = t_intended + settings.request_budget(req.deadline_ms)

        async def attempt_fn(route: str) -> Attempt:
            tier = route.split("/", 1)[0]
            if tier not in targets:
                return Attempt(route=route, outcome="error", error=f"no target URL for tier {tier}",
                               node_class=run.node_classes.get(tier, ""))
            attempt = await run_attempt(
                client,
                targets[tier],
                route,
                req,
                timeout_s=budget_end - time.perf_counter(),
                t_intended=t_intended,
                host_lead_ms=leads.get(tier, 0.0),
            )
            attempt.node_class = run.node_classes.get(tier, "")
            return attempt

        ctx = PolicyContext(req, attempt_fn, run.predictor, t_intended)
        accepted: Attempt | None = None
        outcome: str | None = None
        error = ""
        t_send = t_intended
        try:
            async with sem:
                t_send = time.perf_counter()
                accepted = await run.policy.decide(req, ctx)
        except asyncio.CancelledError:
            outcome, error = "cancelled", "the run was stopped while this request was in flight"
            raise
        except Exception as exc:  # a policy bug must not lose the record
            outcome, error = "error", f"policy {label}: {type(exc).__name__}: {exc}"
        finally:
            elapsed_ms = (time.perf_counter() - t_intended) * 1e3
            energy = run.energy_model.account(ctx.attempts, accepted)
            row = make_record(
                request=req,
                policy=label,
                attempts=ctx.attempts,
                accepted=accepted,
                energy=energy,
                elapsed_ms=elapsed_ms,
                send_lag_ms=(t_send - t_intended) * 1e3,
                intended_send_s=t_intended - origin,
                schedule_s=schedule_s,
                actual_send_s=t_send - origin,
                outcome=outcome,
                phase=phase_at(t_pass, scenario),
                paths=run.node_paths,
            )
            if error:
                row["error"] = error
            emit(row, ctx.attempts)

    tasks: set[asyncio.Task[None]] = set()
    t0 = time.perf_counter() + settings.start_lead_s
    stats.started_s = t0 - origin
    timeline = None
    if scenario:
        timeline = asyncio.create_task(run_timeline(
            scenario, controller, policy=label, t0=t0, log=events, on_event=on_event))
    try:
        await _sleep_until(t0, settings.spin_s)
        if schedule is None:  # closed loop: the simulator's "one after another"
            for req in requests:
                now = time.perf_counter()
                await one(req, now, now - t0, now - t0)
        else:
            for req, offset_s in zip(requests, schedule, strict=True):
                t_intended = t0 + float(offset_s)
                await _sleep_until(t_intended, settings.spin_s)
                task = asyncio.create_task(one(req, t_intended, float(offset_s), float(offset_s)))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
    except asyncio.CancelledError:
        stats.interrupted = True
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        stats.duration_s = time.perf_counter() - t0
        if timeline is not None:
            timeline.cancel()
            await asyncio.gather(timeline, return_exceptions=True)
            log_unreached(scenario, label, events)
    return stats


async def replay(
    requests: Sequence[Request],
    schedule: np.ndarray | None,
    passes: Sequence[Pass],
    *,
    targets: dict[str, str],
    settings: ReplaySettings | None = None,
    sinks: Sequence[RecordSink] = (),
    results: list[PassStats] | None = None,
    before_pass: BeforePass | None = None,
    scenario: Sequence[ScenarioEvent] = (),
    controller: StackController | None = None,
    event_log: list[AppliedEvent] | None = None,
    on_event: Callable[[AppliedEvent], None] | None = None,
) -> list[PassStats]:
    """Replay ``requests`` through each pass in turn.

    ``results`` (when given) receives each pass's statistics as the pass starts, so a caller
    interrupted half-way still holds what was done. ``before_pass(label)`` runs before each pass
    (the stack resets scenario changes and measures the host overhead there) and returns the
    host lead per tier (ms). A progress bar per pass when ``settings.progress``. On cancellation
    (Ctrl-C) the passes done so far and the in-flight requests (as ``cancelled``) are already
    recorded.
    """
    settings = settings or ReplaySettings()
    results = results if results is not None else []
    origin = time.perf_counter()
    with realtime_priority(settings.realtime) as sched:
        if settings.realtime and not sched.startswith("SCHED_FIFO"):
            print(f"replay: realtime scheduling {sched}", file=sys.stderr)
        async with make_client(settings.concurrency, len(targets)) as client:
            for run in passes:
                leads = await before_pass(run.label) if before_pass is not None else {}
                stats = PassStats(policy=run.label, n_planned=len(requests),
                                  host_leads_ms=dict(leads))
                results.append(stats)
                bar = tqdm(total=len(requests), desc=run.label, unit="req",
                           disable=not settings.progress, leave=True, dynamic_ncols=True)

                def tick(row: dict[str, Any], attempts: Sequence[Attempt],
                         bar: tqdm = bar) -> None:
                    bar.update(1)

                try:
                    await replay_policy(
                        requests, schedule, run, targets=targets, client=client,
                        settings=settings, sinks=[*sinks, tick], t_origin=origin,
                        host_leads=leads, scenario=scenario, controller=controller,
                        event_log=event_log, on_event=on_event, stats=stats,
                    )
                finally:
                    bar.close()
    return results
