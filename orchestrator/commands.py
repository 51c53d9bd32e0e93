"""``edgebed run``: replay an experiment file's workload through its policies against live tiers.

With a local stack running (``edgebed up``, found through its state file) and no ``--targets``,
the run is the stack's own session (``orchestrator.stack.demo.run_on_stack``): requests cross
the stack's links, the scenario acts on its processes, the host overhead is calibrated on its
direct URLs, the link backend and fidelity go to run.json, and the metrics stay up until the
stack's Prometheus has scraped the final values. With ``--targets`` it runs against any tiers.

Exit codes: 0 done; 1 every request of every policy failed (the reason is printed), or the
stack is unusable; 2 bad configuration or arguments (the message names the key); 130 stopped by
Ctrl-C or SIGTERM (everything recorded so far, and every request not sent, is in the run
directory).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas  # noqa: F401  (runs need it; a slim install without it lists `run` as unavailable)

from orchestrator.policies import POLICIES


def parse_targets(text: str, nodes: Sequence[str] | None = None) -> dict[str, str]:
    """``mcu=URL,edge=URL`` → {"mcu": URL, ...}; raises ValueError naming the bad part.
    ``nodes``: the experiment's node names (default: the three default nodes)."""
    from orchestrator.experiment import TIER_NAMES

    known = list(nodes) if nodes is not None else list(TIER_NAMES)
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        tier, sep, url = part.partition("=")
        tier = tier.strip().lower()
        if not sep or tier not in known:
            raise ValueError(
                f"--targets: expected NODE=URL with NODE in {'/'.join(known)}, got {part!r}"
            )
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"--targets: {tier} must be an http(s) URL, got {url!r}")
        out[tier] = url.rstrip("/")
    return out


def _overrides(args: argparse.Namespace, exp: Any) -> dict[str, Any]:
    updates: dict[str, Any] = {}
    if args.n is not None:
        updates["workload.n"] = args.n
    if args.concurrency is not None:
        updates["replay.concurrency"] = args.concurrency
    if args.no_progress:
        updates["replay.progress"] = False
    if args.realtime:
        updates["replay.realtime"] = True
    if args.policy:
        by_name = {p.name: p.model_dump() for p in exp.policies}
        chosen = []
        for name in args.policy:
            if name not in POLICIES:
                raise ValueError(f"--policy must be one of {sorted(POLICIES)}, got {name!r}")
            chosen.append(by_name.get(name, {"name": name}))
        updates["policies"] = chosen
    return updates


def _run(args: argparse.Namespace) -> int:
    from orchestrator.experiment import ExperimentError, import_plugins, load_experiment
    from orchestrator.run import DEFAULT_TARGETS, prepare_run_dir, run_experiment
    from orchestrator.stack.state import StateError, default_state_dir, load_state

    try:
        problems = import_plugins(args.plugin, "--plugin")
        if problems:
            raise ExperimentError(str(args.config), problems)
        exp = load_experiment(args.config)
        exp = exp.with_overrides(_overrides(args, exp), "command-line options")
        targets = parse_targets(args.targets, list(exp.tiers)) if args.targets else None
        if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
            raise ValueError(f"--metrics-port must be within 0..65535, got {args.metrics_port}")
        out = prepare_run_dir(args.out, exp.name)
    except (ExperimentError, ValueError) as exc:
        print(f"edgebed run: {exc}", file=sys.stderr)
        return 2

    state = None
    if targets is None:
        state_dir = (args.state_dir or default_state_dir()).resolve()
        try:
            state = load_state(state_dir)
        except StateError as exc:
            print(f"edgebed run: {exc}", file=sys.stderr)
            return 1
    if state is not None:
        from orchestrator.stack.demo import run_on_stack
        from orchestrator.stack.manager import running_processes

        dead = [p.name for p in state.processes if p not in running_processes(state)]
        if dead:
            print(f"edgebed run: the stack in {state.path()} has dead processes ({', '.join(dead)})"
                  "; run `edgebed down` and `edgebed up` again, or pass --targets",
                  file=sys.stderr)
            return 1
        if args.metrics_port is not None:
            print("edgebed run: --metrics-port is ignored: the stack's Prometheus scrapes port "
                  f"{state.orchestrator_metrics_port}", file=sys.stderr)
        result, _ = run_on_stack(exp, state, out, plots=not args.no_plots,
                                 progress=not args.no_progress, kind="local (edgebed up)")
    else:
        if exp.scenario and any(e.action != "arrival_rate" for e in exp.scenario):
            print("edgebed run: scenario: node and link actions need a stack this command "
                  "controls; start one with `edgebed up` and leave out --targets",
                  file=sys.stderr)
            return 2
        urls = targets or dict(DEFAULT_TARGETS)
        run_info = {
            "stack": {"kind": "edgebed run (tiers and links managed elsewhere)",
                      "experiment_file": str(args.config), "target_urls": urls},
            "link_backend": {"backend": "not managed by edgebed run",
                             "configured_links": {n: s.describe() for n, s in exp.links.items()}},
        }
        result = run_experiment(exp, out, targets=urls, run_info=run_info,
                                plots=not args.no_plots, metrics_port=args.metrics_port)
    from orchestrator.research_report import format_research
    from orchestrator.summary import format_summary

    print(format_summary(result.summary))
    decisions = format_research(result.records)
    if decisions:
        print(decisions)
    print(f"\nrun directory: {result.run_dir}")
    if result.interrupted:
        print("interrupted: records so far were kept; requests not sent are recorded as "
              "not_sent", file=sys.stderr)
        return 130
    if result.all_failed:
        print(f"edgebed run: {result.failure_summary()}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from orchestrator.stack.cli import add_plugin_option

    p = subparsers.add_parser(
        "run",
        help="replay an experiment's workload through its policies against running tiers",
        description="Replay the workload of an experiment file through its routing policies "
        "against tiers that already run: the local stack of `edgebed up` (default, through its "
        "links) or any tiers given with --targets; write a run directory (records.csv, "
        "summary.csv, run.json, plots/).",
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
        help="tier URLs, e.g. mcu=http://127.0.0.1:8101,edge=...,cloud=...; without it the "
        "running local stack (edgebed up) is used, else 127.0.0.1:8101/8102/8103",
    )
    p.add_argument("--concurrency", type=int, default=None,
                   help="max requests in flight (overrides replay.concurrency)")
    p.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="with --targets: serve the orchestrator's Prometheus metrics on this port",
    )
    p.add_argument("--state-dir", type=Path, default=None,
                   help="the local stack's state directory (default $EDGEBED_STATE_DIR or "
                   "./.edgebed)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="run the replay loop under SCHED_FIFO (root) for precise send times",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    add_plugin_option(p)
    p.set_defaults(func=_run)
