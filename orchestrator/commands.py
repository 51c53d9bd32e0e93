"""``edgebed run``: replay an experiment file's workload through its policies against live tiers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from orchestrator.experiment import (
    DEFAULT_TARGETS,
    NamedSpec,
    config_from_experiment,
    run_experiment,
)
from orchestrator.policies import POLICIES

SUMMARY_VIEW = (
    "policy",
    "n",
    "accuracy_pct",
    "cv_accuracy_pct",
    "deadline_met_pct",
    "latency_mean_ms",
    "latency_p95_ms",
    "energy_mean_mj",
    "error_pct",
    "route_mix",
)


def parse_targets(text: str) -> dict[str, str]:
    """``mcu=URL,edge=URL,cloud=URL`` → {"MCU": URL, ...}; raises ValueError naming the bad part."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        tier, sep, url = part.partition("=")
        tier = tier.strip().upper()
        if not sep or tier not in DEFAULT_TARGETS:
            raise ValueError(
                f"--targets: expected TIER=URL with TIER in mcu/edge/cloud, got {part!r}"
            )
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--targets: {tier.lower()} must be an http(s) URL, got {url!r}")
        out[tier] = url.rstrip("/")
    return out


def format_summary(summary: pd.DataFrame) -> str:
    view = summary.loc[:, [c for c in SUMMARY_VIEW if c in summary.columns]]
    with pd.option_context(
        "display.max_columns", None, "display.width", 200, "display.max_colwidth", 60
    ):
        return view.to_string(index=False, float_format=lambda v: f"{v:.1f}")


def _run(args: argparse.Namespace) -> int:
    from orchestrator.stack.schema import ExperimentError, load_experiment

    try:
        exp = load_experiment(args.config)
        targets = dict(DEFAULT_TARGETS)
        if args.targets:
            targets.update(parse_targets(args.targets))
        cfg = config_from_experiment(exp, targets)
        updates: dict[str, Any] = {}
        if args.n is not None:
            if args.n < 1:
                raise ValueError(f"--n must be >= 1, got {args.n}")
            updates["workload"] = cfg.workload.model_copy(update={"n": args.n})
        if args.policy:
            by_name = {p.name: p for p in cfg.policies}
            chosen = []
            for name in args.policy:
                if name not in POLICIES:
                    raise ValueError(f"--policy must be one of {sorted(POLICIES)}, got {name!r}")
                chosen.append(by_name.get(name, NamedSpec(name=name)))
            updates["policies"] = chosen
        replay_updates: dict[str, Any] = {
            "progress": not args.no_progress,
            "realtime": args.realtime,
        }
        if args.concurrency is not None:
            replay_updates["concurrency"] = args.concurrency
        updates["replay"] = cfg.replay.model_copy(update=replay_updates)
        if args.metrics_port is not None:
            updates["metrics_port"] = args.metrics_port
        cfg = cfg.model_copy(update=updates)
    except (ExperimentError, ValueError) as exc:
        print(f"edgebed run: {exc}", file=sys.stderr)
        return 2
    run_info = {
        "stack": {
            "kind": "edgebed run (tiers and links managed elsewhere)",
            "experiment_file": str(args.config),
            "target_urls": cfg.targets,
        },
        "link_backend": {
            "backend": "not managed by edgebed run",
            "configured_links": {n: s.describe() for n, s in exp.links.items()},
        },
    }
    result = run_experiment(cfg, args.out, plots=not args.no_plots, run_info=run_info)
    print(format_summary(result.summary))
    print(f"\nrun directory: {result.run_dir}")
    if result.interrupted:
        print("interrupted: records so far were kept", file=sys.stderr)
        return 130
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "run",
        help="replay an experiment's workload through its policies against running tiers",
        description="Replay the workload of an experiment file through its routing policies "
        "against tiers that already run (local, compose or remote); write a run directory "
        "(records.csv, summary.csv, run.json, plots/).",
    )
    p.add_argument("--config", required=True, type=Path, help="experiment YAML file")
    p.add_argument("--n", type=int, default=None, help="number of requests (overrides workload.n)")
    p.add_argument(
        "--policy",
        action="append",
        metavar="NAME",
        help=f"run only this policy (repeatable); one of {', '.join(sorted(POLICIES))}",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="run directory to write (default runs/<UTC time>-<name>)",
    )
    p.add_argument(
        "--targets",
        default="",
        help="tier URLs, e.g. mcu=http://127.0.0.1:8101,edge=...,cloud=... "
        f"(default {','.join(f'{k.lower()}={v}' for k, v in DEFAULT_TARGETS.items())})",
    )
    p.add_argument("--concurrency", type=int, default=None, help="max requests in flight")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve the orchestrator's Prometheus metrics on this port during the run",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="run the replay loop under SCHED_FIFO (root) for precise send times",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.set_defaults(func=_run)
