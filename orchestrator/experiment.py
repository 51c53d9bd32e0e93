"""Run an experiment against running tiers and write its run directory (the notebook API).

``run_experiment(config)`` generates the workload and schedule from the seeds, replays it
through every policy, serves Prometheus metrics while it runs, and writes ``records.csv``
(row by row), ``summary.csv``, ``run.json`` and ``plots/``. It returns the records and the
summary as DataFrames. Ctrl-C stops the run and still writes everything recorded so far.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, field_validator

from orchestrator.arrivals import make_schedule
from orchestrator.client import Attempt
from orchestrator.energy import make_energy_model
from orchestrator.metrics import OrchestratorMetrics
from orchestrator.policies import LatencyPredictor, Policy, make_policy
from orchestrator.profiles import SIM_LATENCY_MS, SIM_RTT_RANGE_MS
from orchestrator.records import RecordWriter, records_frame
from orchestrator.replay import PassStats, ReplaySettings, normalise_targets, replay
from orchestrator.summary import summarize, write_summary
from orchestrator.workload import EvalSet, Seeds, WorkloadSpec, generate_workload

DEFAULT_POLICIES: tuple[str, ...] = (
    "always_local",
    "always_edge",
    "always_cloud",
    "confidence",
    "latency_aware",
    "hybrid",
)
DEFAULT_TARGETS: dict[str, str] = {
    "MCU": "http://127.0.0.1:8101",
    "EDGE": "http://127.0.0.1:8102",
    "CLOUD": "http://127.0.0.1:8103",
}


class NamedSpec(BaseModel):
    """A registry entry by name with parameters (policy, arrival process, energy model)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class RunConfig(BaseModel):
    """Everything a run needs besides running tiers: workload, schedule, policies, targets."""

    model_config = ConfigDict(extra="forbid")

    name: str = "run"
    seeds: Seeds = Field(default_factory=lambda: Seeds())
    workload: WorkloadSpec = Field(default_factory=lambda: WorkloadSpec())
    arrival: NamedSpec = Field(default_factory=lambda: NamedSpec(name="serial"))
    policies: list[NamedSpec] = Field(
        default_factory=lambda: [NamedSpec(name=p) for p in DEFAULT_POLICIES], min_length=1
    )
    energy: NamedSpec = Field(default_factory=lambda: NamedSpec(name="device"))
    targets: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_TARGETS))
    # what latency-aware policies predict with: device latency per tier/model and mean RTT
    device_latency_ms: dict[str, dict[str, float]] = Field(
        default_factory=lambda: {t: dict(m) for t, m in SIM_LATENCY_MS.items()}
    )
    rtt_ms: dict[str, float] = Field(
        default_factory=lambda: {t: (lo + hi) / 2 for t, (lo, hi) in SIM_RTT_RANGE_MS.items()}
    )
    ewma_alpha: float = Field(default=0.2, ge=0, le=1)
    replay: ReplaySettings = Field(default_factory=lambda: ReplaySettings())
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535
    )  # None: no server; 0: any free port
    metrics_addr: str = "127.0.0.1"

    @field_validator("seeds", mode="before")
    @classmethod
    def _seed_shorthand(cls, v: Any) -> Any:
        return Seeds.from_base(v) if isinstance(v, int) else v

    @field_validator("policies", mode="before")
    @classmethod
    def _policy_shorthand(cls, v: Any) -> Any:
        return [{"name": p} if isinstance(p, str) else p for p in v]

    @field_validator("targets")
    @classmethod
    def _targets(cls, v: dict[str, str]) -> dict[str, str]:
        return normalise_targets(v)


def config_from_experiment(exp: Any, targets: dict[str, str] | None = None) -> RunConfig:
    """Turn a validated experiment file (``orchestrator.stack.schema.Experiment``) into a RunConfig.

    Predictions use the tiers' configured device latencies (the simulator's table where a tier
    leaves one unset) and the configured mean RTT of each ``device`` link
    (``Experiment.device_latency_ms()`` / ``rtt_mean_ms()``).
    """
    device = {t: dict(m) for t, m in SIM_LATENCY_MS.items()}
    for tier, row in exp.device_latency_ms().items():
        device.setdefault(tier, {}).update(row)
    rtt = {t: 0.0 for t in SIM_LATENCY_MS}
    rtt.update(exp.rtt_mean_ms())
    return RunConfig(
        name=exp.name,
        seeds=exp.seeds,
        workload=exp.workload,
        arrival=NamedSpec(name=exp.arrival.process, params=dict(exp.arrival.params)),
        policies=[NamedSpec(name=p.name, params=dict(p.params)) for p in exp.policies],
        energy=NamedSpec(name=exp.energy.model, params=dict(exp.energy.params)),
        targets=targets or dict(DEFAULT_TARGETS),
        device_latency_ms=device,
        rtt_ms=rtt,
    )


def policy_labels(specs: Sequence[NamedSpec]) -> list[str]:
    """Record label per policy: its name, or name[params] when a name appears twice."""
    names = [s.name for s in specs]
    out = []
    for s in specs:
        if names.count(s.name) > 1:
            params = ",".join(f"{k}={v}" for k, v in sorted(s.params.items()))
            out.append(f"{s.name}[{params}]")
        else:
            out.append(s.name)
    if len(set(out)) != len(out):
        raise ValueError(f"policies: the same policy with the same params is listed twice: {out}")
    return out


@dataclass
class RunResult:
    records: pd.DataFrame
    summary: pd.DataFrame
    run_dir: Path
    passes: list[PassStats]
    interrupted: bool = False
    metrics_port: int | None = None


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
    (d / "run.json").write_text(json.dumps(run_info, indent=2, default=str) + "\n")
    if plots and len(records):
        from orchestrator.plots import plot_run  # lazy: matplotlib is slow to import

        plot_run(records, summary, d / "plots")
    return d


def run_experiment(
    config: RunConfig | dict[str, Any],
    out_dir: str | Path | None = None,
    *,
    run_info: dict[str, Any] | None = None,
    eval_set: EvalSet | None = None,
    plots: bool = True,
    metrics: OrchestratorMetrics | None = None,
    probe: bool = True,
) -> RunResult:
    """Replay the configured workload through each policy; write and return the results.

    ``run_info`` is merged into run.json (the stack adds the link backend in force and the
    measured link fidelity there). ``metrics`` lets a caller pass its own registry/server.
    ``probe=False`` skips asking each target for ``/readyz`` and ``/v1/models`` before the run
    (then only the workload's requests reach the targets).
    """
    cfg = config if isinstance(config, RunConfig) else RunConfig.model_validate(config)
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(cfg.name)
    run_dir.mkdir(parents=True, exist_ok=True)
    labels = policy_labels(cfg.policies)
    policies: list[tuple[str, Policy]] = [
        (label, make_policy(s.name, s.params))
        for label, s in zip(labels, cfg.policies, strict=True)
    ]
    energy_model = make_energy_model(cfg.energy.name, cfg.energy.params)
    requests = generate_workload(cfg.workload, cfg.seeds, eval_set)
    schedule = make_schedule(
        cfg.arrival.name, len(requests), cfg.seeds.arrivals, cfg.arrival.params
    )

    own_metrics = metrics is None
    m = metrics if metrics is not None else OrchestratorMetrics()
    for label, policy in policies:
        m.init_labels(label, policy.routes())
    port = None
    if own_metrics and cfg.metrics_port is not None:
        port = m.serve(cfg.metrics_port, cfg.metrics_addr)

    started = dt.datetime.now(dt.UTC)
    info: dict[str, Any] = {
        "name": cfg.name,
        "started_utc": started.isoformat(),
        "config": cfg.model_dump(mode="json"),
        "seeds": cfg.seeds.model_dump(),
        "n_requests": len(requests),
        "policies": labels,
        "versions": _versions(),
        "tiers": probe_tiers(cfg.targets) if probe else "not probed",
        "metrics_port": port,
        "emulated": {
            "device_time": "tiers in profile mode hold requests for a modelled device latency",
            "energy": f"energy model {cfg.energy.name!r}: modelled, not measured",
            "lm": "SLM/LLM endpoints are stubs; LM correctness is drawn from their quality",
        },
        **(run_info or {}),
    }
    writer = RecordWriter(run_dir / "records.csv")

    def sink(row: dict[str, Any], attempts: Sequence[Attempt]) -> None:
        writer.write(row)
        m.observe_record(row, attempts)

    passes: list[PassStats] = []
    interrupted = False
    t0 = time.perf_counter()
    try:
        passes = asyncio.run(
            replay(
                requests,
                schedule,
                policies,
                targets=cfg.targets,
                energy_model=energy_model,
                settings=cfg.replay,
                predictor_factory=lambda: LatencyPredictor(
                    device_ms=cfg.device_latency_ms, rtt_ms=cfg.rtt_ms, ewma_alpha=cfg.ewma_alpha
                ),
                sinks=[sink],
            )
        )
    except KeyboardInterrupt:
        interrupted = True
    finally:
        writer.close()
        if own_metrics:
            m.stop()
    records = records_frame(writer.rows)
    summary = summarize(records)
    info.update(
        {
            "finished_utc": dt.datetime.now(dt.UTC).isoformat(),
            "duration_s": time.perf_counter() - t0,
            "interrupted": interrupted,
            "n_records": len(records),
            "passes": [
                {
                    "policy": p.policy,
                    "n_planned": p.n_planned,
                    "n_recorded": p.n_recorded,
                    "duration_s": p.duration_s,
                    **p.lag_summary(),
                }
                for p in passes
            ],
        }
    )
    write_run_dir(run_dir, records, summary, info, plots=plots)
    return RunResult(records, summary, run_dir, passes, interrupted, port)
