"""``edgebed up``, ``down``, ``status`` and ``demo``: the local stack from the command line;
``edgebed compose render``: a compose file for an experiment's topology."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from orchestrator.stack.state import default_state_dir


def _add_state_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the stack keeps its state file, logs and Prometheus data "
        "(default $EDGEBED_STATE_DIR or ./.edgebed)",
    )


def add_plugin_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this Python module first (it registers policies, arrival processes or "
        "energy models); repeatable. An experiment file can list them under plugins:",
    )


def _add_stack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        help="experiment YAML file (default experiments/seed.yaml)",
    )
    p.add_argument(
        "--prometheus",
        choices=("auto", "on", "off"),
        default="auto",
        help="start a Prometheus server: auto = when the `prometheus` binary is on PATH",
    )
    p.add_argument(
        "--scrape-interval-s", type=_scrape_interval, default=None,
        help="Prometheus scrape interval (0.1..60 s)"
    )
    add_plugin_option(p)
    _add_state_dir(p)


def _scrape_interval(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not 0.1 <= v <= 60:
        raise argparse.ArgumentTypeError(f"must be within 0.1..60 s, got {text}")
    return v


def _state_dir(args: argparse.Namespace) -> Path:
    return (args.state_dir or default_state_dir()).resolve()


def _config(args: argparse.Namespace) -> Path:
    from orchestrator.stack.demo import default_experiment_path

    return args.config if args.config is not None else default_experiment_path()


def _load(args: argparse.Namespace, command: str) -> Any:
    """The experiment of ``--config`` with ``--plugin`` modules imported first; None after
    printing the config errors as ``edgebed <command>: ...``."""
    from orchestrator.experiment import ExperimentError, import_plugins, load_experiment

    config = _config(args)
    try:
        problems = import_plugins(args.plugin, "--plugin")
        if problems:
            raise ExperimentError(str(config), problems)
        return load_experiment(config)
    except ExperimentError as exc:
        print(f"edgebed {command}: {exc}", file=sys.stderr)
        return None


def _up(args: argparse.Namespace) -> int:
    from orchestrator.stack import manager
    from orchestrator.stack.state import StateError

    config = _config(args)
    exp = _load(args, "up")
    if exp is None:
        return 2
    try:
        state = manager.up(
            exp,
            _state_dir(args),
            experiment_path=str(config),
            prometheus=args.prometheus,
            scrape_interval_s=args.scrape_interval_s or 5.0,
            log=print,
        )
    except KeyboardInterrupt:
        print("interrupted; everything started was stopped", file=sys.stderr)
        return 130
    except (manager.StackError, manager.StartError, StateError) as exc:
        print(f"edgebed up: {exc}", file=sys.stderr)
        return 1
    if state.prometheus_url is None:
        print(f"prometheus     {state.prometheus_note}")
    extra = f" --state-dir {args.state_dir}" if args.state_dir else ""
    print(f"\nstack up (state {state.path()}). Run an experiment against it (through its links,")
    print("with its Prometheus scraping the run's metrics):")
    print(f"  edgebed run --config {config}{extra}")
    print("request URLs (through the emulated links):")
    for tier, url in state.target_urls.items():
        print(f"  {tier:<8} {url}")
    print(f"stop it with: edgebed down{extra}")
    return 0


def _down(args: argparse.Namespace) -> int:
    from orchestrator.stack import manager
    from orchestrator.stack.state import StateError

    try:
        manager.down(_state_dir(args), log=print)
    except (manager.StackError, StateError) as exc:
        print(f"edgebed down: {exc}", file=sys.stderr)
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    from orchestrator.stack import manager
    from orchestrator.stack.state import StateError

    try:
        state, rows = manager.status(_state_dir(args))
    except StateError as exc:
        print(f"edgebed status: {exc}", file=sys.stderr)
        return 1
    if state is None:
        print(f"no stack recorded in {_state_dir(args)}")
        return 1
    if args.json:
        print(json.dumps({"state": state.model_dump(), "processes": rows}, indent=2))
    else:
        for r in rows:
            alive = "running" if r["alive"] else "DEAD"
            ready = {True: "ready", False: "not ready", None: ""}[r["ready"]]
            url = r["url"] or ""
            if r["name"].startswith("tier-"):
                url += "  (direct: bypasses the emulated link)"
            print(f"{r['name']:<14} pid {r['pid']:<8} {alive:<8} {ready:<10} {url}")
        print(f"link backend   {state.link_backend}: {state.link_backend_reason}")
        print("request URLs through the emulated links (use these):")
        for tier, url in state.target_urls.items():
            print(f"  {tier:<12} {url}")
        print(f"prometheus     {state.prometheus_url or state.prometheus_note}")
    return 0 if all(r["alive"] for r in rows) else 1


def _demo(args: argparse.Namespace) -> int:
    from orchestrator.stack.demo import demo

    return demo(
        _config(args),
        _state_dir(args),
        out_dir=args.out,
        n=args.n,
        prometheus=args.prometheus,
        scrape_interval_s=args.scrape_interval_s or 1.0,
        progress=not args.no_progress,
        plots=not args.no_plots,
        fidelity_probes=args.fidelity_probes,
        plugins=tuple(args.plugin),
    )


def _compose_render(args: argparse.Namespace) -> int:
    from orchestrator.stack.render import RenderError, experiment_path_in, render_text

    config = _config(args)
    exp = _load(args, "compose render")
    if exp is None:
        return 2
    project = args.project_dir or (args.out.parent if args.out is not None else Path.cwd())
    try:
        text = render_text(exp, experiment_path_in(project, config))
    except RenderError as exc:
        print(f"edgebed compose render: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        args.out.write_text(text)
    except OSError as exc:
        print(f"edgebed compose render: --out {args.out}: {exc.strerror}", file=sys.stderr)
        return 1
    nodes = ", ".join(f"{n} ({t.node_class})" for n, t in exp.tiers.items())
    print(f"wrote {args.out}: nodes {nodes}; run it with docker compose -f {args.out} up --build",
          file=sys.stderr)
    return 0


def _register_compose(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    compose = subparsers.add_parser(
        "compose",
        help="the Docker Compose stack: render a compose file for an experiment's topology",
        description="Docker Compose files for edgebed (docs/compose.md).",
    )
    actions = compose.add_subparsers(dest="compose_command", metavar="ACTION")
    compose.set_defaults(func=lambda args: (compose.print_help(), 2)[1])
    render = actions.add_parser(
        "render",
        help="write a docker compose file for the experiment's nodes",
        description="Write a docker compose file for the experiment's topology: one tier "
        "service per node (its class's defaults with the experiment's tiers.NAME section, as "
        "`edgebed up` gives it), the orchestrator (links, run), Prometheus and Grafana "
        "(profile). The committed docker-compose.yml is this for experiments/seed.yaml. The "
        "experiment is validated first; the file runs from the project directory (the "
        "checkout), whose experiments/ holds the experiment.",
    )
    render.add_argument(
        "--config", type=Path, default=None,
        help="experiment YAML file under the project's experiments/ (default "
        "experiments/seed.yaml)",
    )
    render.add_argument("--out", type=Path, default=None,
                        help="write the compose file here (default: standard output)")
    render.add_argument(
        "--project-dir", type=Path, default=None,
        help="where docker compose runs (build context, ./experiments, ./runs); default: the "
        "--out file's directory, else the working directory",
    )
    add_plugin_option(render)
    render.set_defaults(func=_compose_render)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    _register_compose(subparsers)
    up = subparsers.add_parser(
        "up",
        help="start the local stack (tiers, links, Prometheus) on loopback, no Docker",
        description="Start the experiment's tiers as server processes on loopback (gated on "
        "/readyz), its links (userspace link proxy) and, when the binary is present, a "
        "Prometheus server scraping them. PIDs are recorded for `edgebed down`.",
    )
    _add_stack_options(up)
    up.set_defaults(func=_up)

    down = subparsers.add_parser("down", help="stop exactly what `edgebed up` started")
    _add_state_dir(down)
    down.set_defaults(func=_down)

    status = subparsers.add_parser("status", help="show the local stack's processes")
    _add_state_dir(status)
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(func=_status)

    demo = subparsers.add_parser(
        "demo",
        help="up, run the default experiment through every policy, print the summary, down",
    )
    _add_stack_options(demo)
    demo.add_argument("--n", type=int, default=None, help="requests (overrides workload.n)")
    demo.add_argument("--out", type=Path, default=None, help="run directory (default runs/...)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    demo.add_argument(
        "--fidelity-probes",
        type=_probes,
        default=60,
        help="HTTP probes per link for the link-fidelity report before the run (0: skip)",
    )
    demo.set_defaults(func=_demo)


def _probes(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= v <= 100_000:
        raise argparse.ArgumentTypeError(f"must be within 0..100000, got {v}")
    return v
