"""Replay every device's requests through one policy after another (asyncio).

Each device (``orchestrator.devices``) has its own stream: its requests and, open loop, their
intended send times. Open-loop streams of all devices are merged into one send loop; each
request's latency is measured from its intended send, so client-side lateness (a full
concurrency window, a slow event loop) shows up as latency instead of hiding it. A ``serial``
stream runs closed loop, like the simulator: its device sends the next request when the
previous one finished (devices run side by side). Attempts go through an executor and time
comes from a clock (``orchestrator.executor``: HTTP and the wall clock today; a simulated
executor on virtual time runs the same code). Every request ends as exactly one record,
whatever happened to it (refused, abandoned, 503, dropped connection, a policy bug, Ctrl-C
while in flight: outcome ``cancelled``). Records are handed to subscribers (CSV writer, metrics, progress bar) as they
finish. A scenario timeline runs beside each pass (``orchestrator.scenario``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import os
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tqdm import tqdm

from orchestrator.client import Attempt
from orchestrator.devices import DeviceStream
from orchestrator.energy import EnergyModel
from orchestrator.executor import Clock, Executor, WallClock
from orchestrator.experiment import ReplaySettings, ScenarioEvent
from orchestrator.policies import LatencyPredictor, NodeInfo, Policy, PolicyContext
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


@contextlib.contextmanager
def steady_gc(gen0_threshold: int = 50_000) -> Iterator[None]:
    """Keep the cyclic garbage collector from stalling sends during a pass.

    A full collection walks every tracked object: with the records, attempts and requests of
    a few thousand requests in memory it took 40-100 ms on the 2-core VM, and every send due
    meanwhile went out that late (send lag p99 42 ms at 1,250 req/s, 77 ms at 2,000). Before a
    pass everything alive is collected once and frozen (``gc.freeze``: left out of later
    collections), and young collections run every ``gen0_threshold`` allocations instead of
    700; the frozen objects are released to the collector after the pass
    (``bench/bench_devices.py``: p99 1.2 ms at 2,000 req/s with this)."""
    old = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(gen0_threshold, old[1], old[2])
    try:
        yield
    finally:
        gc.set_threshold(*old)
        gc.unfreeze()


@dataclass
class GroupView:
    """What one device group sees in a pass: the nodes it reaches (round trips from it), its
    access node, its own predictor (per-route EWMAs: latency differs per group), its energy
    model (its radio) and the path label per node (``a>b``, or ``direct``)."""

    nodes: dict[str, NodeInfo]
    predictor: LatencyPredictor
    energy_model: EnergyModel
    paths: dict[str, str] = field(default_factory=dict)
    access: str | None = None


@dataclass
class Pass:
    """One policy pass: its label, the policy and the per-pass state it starts from; ``views``
    per device group (a group without a view uses ``energy_model``, ``predictor`` and
    ``node_paths``)."""

    label: str
    policy: Policy
    energy_model: EnergyModel
    predictor: LatencyPredictor
    node_classes: dict[str, str] = field(default_factory=dict)  # node name -> hardware class
    node_paths: dict[str, str] = field(default_factory=dict)  # node -> "link>link" | "direct"
    views: dict[str, GroupView] = field(default_factory=dict)

    def view(self, group: str) -> GroupView:
        if group not in self.views:
            self.views[group] = GroupView(dict(self.policy.nodes) if hasattr(self.policy, "nodes")
                                          else {}, self.predictor, self.energy_model,
                                          dict(self.node_paths))
        return self.views[group]


BeforePass = Callable[[str], Awaitable[dict[str, float]]]


def _merged_sends(streams: Sequence[DeviceStream]) -> list[tuple[float, int, int]]:
    """(offset_s, stream index, request index) of every open-loop request, in send order
    (ties: the earlier device first)."""
    per = [[(float(off), si, ri) for ri, off in enumerate(st.schedule)]
           for si, st in enumerate(streams) if st.schedule is not None]
    return list(heapq.merge(*per))


async def replay_policy(
    streams: Sequence[DeviceStream],
    run: Pass,
    *,
    executor: Executor,
    settings: ReplaySettings,
    clock: Clock | None = None,
    sinks: Sequence[RecordSink] = (),
    t_origin: float | None = None,
    host_leads: dict[str, float] | None = None,
    scenario: Sequence[ScenarioEvent] = (),
    controller: StackController | None = None,
    event_log: list[AppliedEvent] | None = None,
    on_event: Callable[[AppliedEvent], None] | None = None,
    stats: PassStats | None = None,
) -> PassStats:
    """One pass of every device's stream through ``run.policy``; returns send statistics."""
    clock = clock or WallClock(settings.spin_s)
    leads = {k.lower(): v for k, v in (host_leads or {}).items()}
    label = run.label
    n_requests = sum(len(st.requests) for st in streams)
    stats = stats or PassStats(policy=label, n_planned=n_requests)
    sem = asyncio.Semaphore(settings.concurrency)
    origin = clock.now() if t_origin is None else t_origin
    events = event_log if event_log is not None else []

    def emit(row: dict[str, Any], attempts: Sequence[Attempt]) -> None:
        stats.n_recorded += 1
        stats.recorded_ids.add(row["id"])
        stats.send_lag_ms.append(row["send_lag_ms"])
        for sink in sinks:
            sink(row, attempts)

    async def one(stream: DeviceStream, req: Request, t_intended: float, schedule_s: float,
                  t_pass: float) -> None:
        budget_end = t_intended + settings.request_budget(req.deadline_ms)
        view = run.view(stream.group)

        async def attempt_fn(route: str, timeout_ms: float | None = None,
                             **stage: Any) -> Attempt:
            node = route.split("/", 1)[0]
            node_class = run.node_classes.get(node, "")
            if not executor.knows(stream.group, node):
                return Attempt(route=route, outcome="error", node_class=node_class,
                               error=f"no target for node {node} from device group "
                                     f"{stream.group}")
            end = budget_end if timeout_ms is None else min(budget_end,
                                                              clock.now() + timeout_ms / 1e3)
            attempt = await executor.attempt(
                route, req, group=stream.group, timeout_s=end - clock.now(),
                t_intended=t_intended, host_lead_ms=leads.get(node, 0.0), **stage)
            attempt.node_class = node_class
            return attempt

        ctx = PolicyContext(req, attempt_fn, view.predictor, t_intended, nodes=view.nodes,
                            access=view.access, clock=clock.now,
                            radio=getattr(view.energy_model, "radio", None))
        accepted: Attempt | None = None
        outcome: str | None = None
        error = ""
        t_send = t_intended
        try:
            async with sem:
                t_send = clock.now()
                accepted = await run.policy.decide(req, ctx)
        except asyncio.CancelledError:
            outcome, error = "cancelled", "the run was stopped while this request was in flight"
            raise
        except Exception as exc:  # a policy bug must not lose the record
            outcome, error = "error", f"policy {label}: {type(exc).__name__}: {exc}"
        finally:
            elapsed_ms = (clock.now() - t_intended) * 1e3
            energy = view.energy_model.account(ctx.attempts, accepted)
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
                paths=view.paths,
                decision=ctx.decision,
            )
            if error:
                row["error"] = error
            emit(row, ctx.attempts)

    async def closed_loop(stream: DeviceStream, t0: float) -> None:
        for req in stream.requests:  # the simulator's "one after another"
            now = clock.now()
            await one(stream, req, now, now - t0, now - t0)

    async def open_loop(t0: float) -> None:
        for offset_s, si, ri in _merged_sends(streams):
            t_intended = t0 + offset_s
            await clock.sleep_until(t_intended)
            task = asyncio.create_task(one(streams[si], streams[si].requests[ri], t_intended,
                                           offset_s, offset_s))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    tasks: set[asyncio.Task[None]] = set()
    t0 = clock.now() + settings.start_lead_s
    stats.started_s = t0 - origin
    timeline = None
    if scenario:
        timeline = asyncio.create_task(run_timeline(
            scenario, controller, policy=label, t0=t0, log=events, on_event=on_event,
            now=clock.now))
    try:
        await clock.sleep_until(t0)
        for st in streams:
            if st.schedule is None:
                task = asyncio.create_task(closed_loop(st, t0))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        await open_loop(t0)
        while tasks:
            await asyncio.gather(*list(tasks))
    except asyncio.CancelledError:
        stats.interrupted = True
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        stats.duration_s = clock.now() - t0
        if timeline is not None:
            timeline.cancel()
            await asyncio.gather(timeline, return_exceptions=True)
            log_unreached(scenario, label, events)
    return stats


async def replay(
    streams: Sequence[DeviceStream],
    passes: Sequence[Pass],
    *,
    executor: Executor,
    clock: Clock | None = None,
    settings: ReplaySettings | None = None,
    sinks: Sequence[RecordSink] = (),
    results: list[PassStats] | None = None,
    before_pass: BeforePass | None = None,
    scenario: Sequence[ScenarioEvent] = (),
    controller: StackController | None = None,
    event_log: list[AppliedEvent] | None = None,
    on_event: Callable[[AppliedEvent], None] | None = None,
) -> list[PassStats]:
    """Replay every device's stream through each pass in turn.

    ``results`` (when given) receives each pass's statistics as the pass starts, so a caller
    interrupted half-way still holds what was done. ``before_pass(label)`` runs before each pass
    (the stack resets scenario changes and measures the host overhead there) and returns the
    host lead per node (ms). A progress bar per pass when ``settings.progress``. On cancellation
    (Ctrl-C) the passes done so far and the in-flight requests (as ``cancelled``) are already
    recorded.
    """
    settings = settings or ReplaySettings()
    clock = clock or WallClock(settings.spin_s)
    results = results if results is not None else []
    n_requests = sum(len(st.requests) for st in streams)
    origin = clock.now()
    with realtime_priority(settings.realtime) as sched:
        if settings.realtime and not sched.startswith("SCHED_FIFO"):
            print(f"replay: realtime scheduling {sched}", file=sys.stderr)
        async with executor:
            for run in passes:
                leads = await before_pass(run.label) if before_pass is not None else {}
                stats = PassStats(policy=run.label, n_planned=n_requests,
                                  host_leads_ms=dict(leads))
                results.append(stats)
                bar = tqdm(total=n_requests, desc=run.label, unit="req",
                           disable=not settings.progress, leave=True, dynamic_ncols=True)

                def tick(row: dict[str, Any], attempts: Sequence[Attempt],
                         bar: tqdm = bar) -> None:
                    bar.update(1)

                try:
                    with steady_gc():
                        await replay_policy(
                            streams, run, executor=executor, clock=clock, settings=settings,
                            sinks=[*sinks, tick], t_origin=origin, host_leads=leads,
                            scenario=scenario, controller=controller, event_log=event_log,
                            on_event=on_event, stats=stats,
                        )
                finally:
                    bar.close()
    return results

