"""Run an experiment against running tiers and write its run directory (the notebook API).

``run_experiment(experiment, targets=...)`` generates the workload and schedule from the seeds,
replays it through every policy, serves Prometheus metrics while it runs, and writes
``records.csv`` (row by row), ``summary.csv``, ``run.json`` and ``plots/``. It returns the
records and the summary as DataFrames. ``await arun_experiment(...)`` is the same inside a running
event loop (Jupyter); ``run_experiment`` called from a running loop runs it on a worker thread.

Nothing is lost on the way out: Ctrl-C (or SIGTERM, or cancelling the awaitable) stops the run,
records in-flight requests as ``cancelled`` and every request not yet sent as ``not_sent``, so
records.csv always holds one row per request and policy; run.json says ``"state":
"interrupted"``. run.json is written with ``"state": "running"`` when the run starts, so even a
run killed with SIGKILL leaves a labelled directory (records.csv is flushed row by row).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from orchestrator.calibrate import host_leads_ms
from orchestrator.client import Attempt
from orchestrator.devices import all_requests, build_streams
from orchestrator.energy import EnergyBreakdown, make_energy_model
from orchestrator.executor import Clock, Executor, HttpExecutor, WallClock
from orchestrator.experiment import Experiment, as_experiment
from orchestrator.metrics import OrchestratorMetrics
from orchestrator.policies import LatencyPredictor, make_policy
from orchestrator.records import RecordWriter, make_record, records_frame
from orchestrator.replay import GroupView, Pass, PassStats, normalise_targets, replay
from orchestrator.research_report import write_research
from orchestrator.scenario import AppliedEvent, StackController
from orchestrator.summary import summarize, summarize_groups, write_summary
from orchestrator.workload import EvalSet
from services.tier.classes import DEFAULT_NODES


def node_path_labels(exp: Experiment, group: str | None = None) -> dict[str, str]:
    """Per node ``group`` reaches, the links a request crosses to reach it (``a>b``), or
    ``direct``."""
    paths = exp.group_paths(group)
    return {n: ">".join(paths[n].hops) if n in paths else "direct"
            for n in exp.reachable(group)}


def make_passes(exp: Experiment) -> list[Pass]:
    """One pass per policy, each with fresh state: the policy (bound to every node any group
    reaches), and per device group its view, predictor and energy model (its radio)."""
    labels = exp.policy_labels()
    all_nodes: dict[str, Any] = {}
    for g in reversed(exp.group_names()):  # the first group's round trips win
        all_nodes.update(exp.node_infos(g))
    all_nodes = {n: all_nodes[n] for n in exp.tiers if n in all_nodes}
    classes = {name: str(t.node_class) for name, t in exp.tiers.items()}
    device_ms = exp.device_latency_ms()
    passes = []
    for label, p in zip(labels, exp.policies, strict=True):
        views = {
            g.name: GroupView(
                exp.node_infos(g.name),
                LatencyPredictor(device_ms=device_ms, rtt_ms=exp.rtt_mean_ms(g.name),
                                 ewma_alpha=exp.predictor.ewma_alpha),
                make_energy_model(exp.energy.model, g.energy_params),
                node_path_labels(exp, g.name),
                g.attach,
            )
            for g in exp.groups()
        }
        first = views[exp.default_group()]
        passes.append(Pass(label, make_policy(p.name, p.params, all_nodes), first.energy_model,
                           first.predictor, classes, first.paths, views))
    return passes


# the default nodes on the compose stack's published ports (8101, 8102, 8103)
DEFAULT_TARGETS: dict[str, str] = {
    name: f"http://127.0.0.1:{8101 + i}" for i, name in enumerate(DEFAULT_NODES)
}
FAILED_OUTCOMES_ALL = "every request of every policy failed"


@dataclass
class RunResult:
    records: pd.DataFrame
    summary: pd.DataFrame
    run_dir: Path
    passes: list[PassStats]
    interrupted: bool = False
    metrics_port: int | None = None
    events: list[AppliedEvent] = field(default_factory=list)

    @property
    def all_failed(self) -> bool:
        """True when records exist and not one request was answered."""
        return bool(len(self.records)) and not bool((self.records["outcome"] == "ok").any())

    def failure_summary(self) -> str:
        counts = self.records["outcome"].value_counts()
        errors = self.records.loc[self.records["error"] != "", "error"]
        first = f"; e.g. {errors.iloc[0]}" if len(errors) else ""
        return (f"{FAILED_OUTCOMES_ALL}: "
                + ", ".join(f"{o} {int(c)}" for o, c in counts.items()) + first)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("edgebed", "numpy", "aiohttp", "pandas", "ai-edge-litert", "prometheus-client"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def probe_tiers(targets: dict[str, str], timeout_s: float = 2.0) -> dict[str, Any]:
    """What each target says about itself (``/readyz`` and ``/v1/models``), for run.json."""
    info: dict[str, Any] = {}
    with httpx.Client(timeout=timeout_s, trust_env=False) as client:
        for tier, url in targets.items():
            entry: dict[str, Any] = {"url": url}
            try:
                entry["ready"] = client.get(f"{url}/readyz").status_code == 200
                models = client.get(f"{url}/v1/models")
                if models.status_code == 200:
                    entry["models"] = models.json()
            except httpx.HTTPError as exc:
                entry["ready"] = False
                entry["error"] = f"{type(exc).__name__}: {exc}"[:200]
            info[tier] = entry
    return info


def default_run_dir(name: str, root: str | Path = "runs") -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(root) / f"{stamp}-{name}"


def prepare_run_dir(out_dir: str | Path | None, name: str) -> Path:
    """Create the run directory; raise ValueError naming it when it cannot be written."""
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(name)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"--out {run_dir}: cannot write a run directory there "
                         f"({exc.strerror or exc})") from None
    return run_dir


def _write_json(path: Path, info: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, default=str) + "\n")
    tmp.replace(path)


def write_run_dir(
    run_dir: str | Path,
    records: pd.DataFrame,
    summary: pd.DataFrame,
    run_info: dict[str, Any],
    *,
    plots: bool = True,
) -> Path:
    """Write summary.csv, run.json and plots/ (records.csv is written during the run)."""
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    write_summary(summary, d / "summary.csv")
    _write_json(d / "run.json", run_info)
    if plots and len(records):
        from orchestrator.plots import plot_run  # lazy: matplotlib is slow to import

        plot_run(records, summary, d / "plots", title=str(run_info.get("name", "")))
    return d


_NO_ENERGY = EnergyBreakdown(0.0, 0.0, 0.0)


def fill_hop_times(rows: Sequence[dict[str, Any]], hop_rows: Sequence[tuple[str, list[Any]]],
                   out: Path) -> None:
    """Write ``hops.csv`` (policy, id, route, link, direction, ms: one row per tagged message
    per hop) and set each record's ``hop_ms``: ``{link: [up_ms, down_ms]}`` of its final
    route's attempt, in path order (JSON)."""
    import csv

    per: dict[tuple[str, str], dict[str, list[float]]] = {}
    with out.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["policy", "id", "route", "link", "direction", "ms"])
        for policy, (_, tag, link, direction, ms) in hop_rows:
            rid, _, route = str(tag).partition("/")
            w.writerow([policy, rid, route, link, direction, ms])
            both = per.setdefault((policy, str(tag)), {}).setdefault(link, [0.0, 0.0])
            both[0 if direction == "up" else 1] += float(ms)
    for row in rows:
        if not row.get("route"):
            continue
        by_link = per.get((row["policy"], f"{row['id']}/{row['route']}"))
        if by_link:
            order = [h for h in str(row.get("path", "")).split(">") if h in by_link]
            order += [h for h in by_link if h not in order]
            row["hop_ms"] = json.dumps({h: [round(v, 3) for v in by_link[h]] for h in order},
                                       separators=(",", ":"))


def _fill_unsent(exp_labels: Sequence[str], requests: Sequence[Any], passes: list[PassStats],
                 sink: Callable[[dict[str, Any], Sequence[Attempt]], None]) -> int:
    """Record every request of every pass that was never sent as ``not_sent``; returns how many."""
    done = {p.policy: p.recorded_ids for p in passes}
    n = 0
    for label in exp_labels:
        recorded = done.get(label, set())
        for req in requests:
            if req.id in recorded:
                continue
            row = make_record(request=req, policy=label, attempts=[], accepted=None,
                              energy=_NO_ENERGY, elapsed_ms=math.nan, send_lag_ms=math.nan,
                              intended_send_s=math.nan, actual_send_s=math.nan,
                              outcome="not_sent")
            row["error"] = "the run was stopped before this request was sent"
            sink(row, [])
            n += 1
    return n


async def arun_experiment(
    experiment: Experiment | Mapping[str, Any] | str | Path,
    out_dir: str | Path | None = None,
    *,
    targets: Mapping[str, str] | None = None,
    direct_targets: Mapping[str, str] | None = None,
    controller: StackController | None = None,
    run_info: dict[str, Any] | None = None,
    eval_set: EvalSet | None = None,
    plots: bool = True,
    metrics: OrchestratorMetrics | None = None,
    metrics_port: int | None = None,
    probe: bool = True,
    log: Callable[[str], None] | None = None,
    observe: Callable[[], dict[str, Any]] | None = None,
    group_targets: Mapping[str, Mapping[str, str]] | None = None,
    executor: Executor | None = None,
    clock: Clock | None = None,
    hops: Callable[[], list[list[Any]]] | None = None,
) -> RunResult:
    """Replay the experiment's workload through each policy; write and return the results.

    ``targets``: tier name → URL the requests use (through the links); default
    ``DEFAULT_TARGETS``. ``direct_targets``: the same tiers without links, for the host-overhead
    calibration (``replay.host_lead: auto``). ``controller`` applies the scenario's node and link
    actions. ``run_info`` is merged into run.json. ``metrics`` lets a caller pass its own
    registry/server; else one is served on ``metrics_port`` when given (0 = any free port).
    ``probe=False`` skips asking each target for ``/readyz`` and ``/v1/models`` first.
    ``observe()`` (blocking) is called at the start of every pass and at the end of the run; its
    answers go to run.json (``observed``): the stack records its links' counters there, so each
    pass's link draws can be told apart (``bench/bench_seed_agreement.py`` uses them).
    ``group_targets``: per device group, node name → URL (the listeners of that group's
    links), over ``targets``. ``executor`` and ``clock`` replace the HTTP executor and the wall
    clock (``orchestrator.executor``): a simulated executor on virtual time runs the same
    workload, policies, records and summary. ``hops()`` (blocking) returns the link proxy's
    new per-hop rows (``[seq, tag, link, direction, ms]``, ``GET /v1/hops``); called before each
    pass and at the end, its rows fill ``hops.csv`` and the records' ``hop_ms``.
    """
    exp = as_experiment(experiment)
    urls = normalise_targets({k.lower(): v for k, v in (targets or DEFAULT_TARGETS).items()})
    direct = normalise_targets(dict(direct_targets)) if direct_targets else {}
    node_actions = [e for e in exp.scenario if e.action != "arrival_rate"]
    if node_actions and controller is None:
        raise ValueError("scenario: node and link actions need a stack this run controls "
                         "(edgebed demo, or edgebed run against a stack from edgebed up)")
    groups_urls = {g: normalise_targets(dict(t)) for g, t in (group_targets or {}).items()}
    run_dir = prepare_run_dir(out_dir, exp.name)
    labels = exp.policy_labels()
    streams = build_streams(exp, eval_set)
    requests = all_requests(streams)
    passes = make_passes(exp)
    clock = clock or WallClock(exp.replay.spin_s)
    runner: Executor = (executor if executor is not None
                        else HttpExecutor(urls, groups_urls, exp.replay.concurrency))

    own_metrics = metrics is None
    m = metrics if metrics is not None else OrchestratorMetrics()
    for run in passes:
        m.init_labels(run.label, list(dict.fromkeys(
            r for v in run.views.values() for r in run.policy.resolved_routes(v.nodes, v.access))))
    port = m.serve(metrics_port) if own_metrics and metrics_port is not None else None

    loop = asyncio.get_running_loop()
    started = dt.datetime.now(dt.UTC)
    info: dict[str, Any] = {
        "name": exp.name,
        "state": "running",
        "started_utc": started.isoformat(),
        "experiment_source": exp.source,
        "config": exp.model_dump(mode="json"),
        "seeds": exp.seeds.model_dump(),
        "n_requests": len(requests),
        "policies": labels,
        "targets": urls,
        "group_targets": groups_urls,
        "devices": {g.name: {"count": g.count, "class": g.device_class, "attach": g.attach,
                             "n_per_device": g.workload.n, "arrival": g.arrival.process}
                    for g in exp.groups()},
        "versions": _versions(),
        "tiers": (await loop.run_in_executor(None, probe_tiers, urls)) if probe
        else "not probed",
        "metrics_port": port,
        "emulated": {
            "device_time": "tiers in profile mode hold requests for a modelled device latency",
            "energy": f"device energy model {exp.energy.model!r} and the tiers' power models: "
                      "modelled, not measured",
            "lm": "SLM/LLM endpoints are stubs; LM quality and confidence are drawn from the "
                  "simulator's tables",
        },
        **(run_info or {}),
    }
    _write_json(run_dir / "run.json", info)
    writer = RecordWriter(run_dir / "records.csv")

    def sink(row: dict[str, Any], attempts: Sequence[Attempt]) -> None:
        writer.write(row)
        m.observe_record(row, attempts)

    host_lead_notes: dict[str, str] = {}
    observed: dict[str, Any] = {}
    hop_rows: list[tuple[str, list[Any]]] = []  # (policy, row) of the link proxy's hop log
    hop_state: dict[str, Any] = {"pass": None, "error": None}

    async def drain_hops(next_pass: str | None) -> None:
        """Rows logged since the last call belong to the pass that just ran (none before the
        first pass: calibration and probes carry no attempt tag)."""
        if hops is None:
            return
        try:
            rows = await loop.run_in_executor(None, hops)
        except Exception as exc:  # the hop log is extra: it must not cost the run
            hop_state["error"] = f"{type(exc).__name__}: {exc}"
            rows = []
        if hop_state["pass"] is not None:
            hop_rows.extend((hop_state["pass"], r) for r in rows)
        hop_state["pass"] = next_pass

    async def mark(key: str) -> None:
        if observe is not None:
            try:
                observed[key] = await loop.run_in_executor(None, observe)
            except Exception as exc:  # an observer must not cost the run
                observed[key] = {"error": f"{type(exc).__name__}: {exc}"}

    async def before_pass(label: str) -> dict[str, float]:
        if controller is not None and exp.scenario:
            reset_notes = await loop.run_in_executor(None, controller.reset)
            if reset_notes and log is not None:
                log(f"{label}: scenario reset: " + "; ".join(reset_notes))
        lead = exp.replay.host_lead
        leads: dict[str, float] = {}
        if lead == "auto" and not direct:
            host_lead_notes["all"] = "off: the run does not know the tiers' direct URLs"
        elif lead == "auto":
            leads, notes = await host_leads_ms(direct)
            host_lead_notes.update(notes)
        elif lead != "off":
            leads = {tier: float(lead) for tier in urls}
        await mark(f"start {label}")
        await drain_hops(label)
        return leads

    def on_event(ev: AppliedEvent) -> None:
        m.observe_event(ev.policy, ev.action, ev.target, ev.ok)
        if log is not None:
            state = "ok" if ev.ok else "FAILED"
            log(f"scenario {ev.policy} t={ev.applied_s:.1f}s: {ev.action} {ev.target} "
                f"{state}: {ev.note}")

    passes_done: list[PassStats] = []
    events: list[AppliedEvent] = []
    interrupted = False
    t0 = time.perf_counter()
    try:
        await replay(
            streams, passes, executor=runner, clock=clock, settings=exp.replay, sinks=[sink],
            results=passes_done, before_pass=before_pass, scenario=exp.scenario,
            controller=controller, event_log=events, on_event=on_event,
        )
    except asyncio.CancelledError:
        interrupted = True
    finally:
        await mark("end")
        await drain_hops(None)
        n_unsent = _fill_unsent(labels, requests, passes_done, sink)
        writer.close()
        if hop_rows:
            fill_hop_times(writer.rows, hop_rows, run_dir / "hops.csv")
            writer.rewrite()
        if controller is not None and exp.scenario:
            with contextlib.suppress(Exception):
                await loop.run_in_executor(None, controller.reset)
        if own_metrics:
            m.stop()
    records = records_frame(writer.rows)
    summary = summarize(records)
    if len(exp.groups()) > 1 or any(g.count > 1 for g in exp.groups()):
        write_summary(summarize_groups(records), run_dir / "summary_groups.csv")
    info.update(
        {
            "state": "interrupted" if interrupted else "finished",
            "finished_utc": dt.datetime.now(dt.UTC).isoformat(),
            "duration_s": time.perf_counter() - t0,
            "interrupted": interrupted,
            "n_records": len(records),
            "n_not_sent": n_unsent,
            "host_lead": {"setting": exp.replay.host_lead, "notes": host_lead_notes},
            "passes": [
                {
                    "policy": p.policy,
                    "n_planned": p.n_planned,
                    "n_recorded": p.n_recorded,
                    "duration_s": p.duration_s,
                    "interrupted": p.interrupted,
                    "host_lead_ms": p.host_leads_ms,
                    **p.lag_summary(),
                }
                for p in passes_done
            ],
            "scenario_events": [e.as_dict() for e in events],
            "hop_log": ({"rows": len(hop_rows), "file": "hops.csv"} if hop_rows
                        else {"rows": 0, "note": hop_state["error"] or (
                            "no per-hop log: no link proxy in the path (direct or tc)"
                            if hops is not None else "not collected by this run")}),
            "observed": observed,
        }
    )
    write_run_dir(run_dir, records, summary, info, plots=plots)
    write_research(records, run_dir, plots=plots, title=exp.name)
    return RunResult(records, summary, run_dir, passes_done, interrupted, port, events)


def run_experiment(
    experiment: Experiment | Mapping[str, Any] | str | Path,
    out_dir: str | Path | None = None,
    **kwargs: Any,
) -> RunResult:
    """Blocking form of :func:`arun_experiment`. Ctrl-C ends the run with everything recorded
    (``RunResult.interrupted``). Called while an event loop runs in this thread (a notebook),
    the run goes to a worker thread with its own loop (interrupt the kernel there to stop it)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(arun_experiment(experiment, out_dir, **kwargs))
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="edgebed-run") as pool:
        return pool.submit(
            lambda: asyncio.run(arun_experiment(experiment, out_dir, **kwargs))).result()
