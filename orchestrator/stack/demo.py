"""``edgebed demo`` and experiment runs on the local stack: up, replay through every policy, down.

The stack is always stopped, also on an error, Ctrl-C or SIGTERM. When Prometheus runs, the
orchestrator's metrics server stays up after the replay until Prometheus has scraped the final
values, so the Prometheus totals equal the run's records.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestrator.experiment import Experiment
from orchestrator.stack import manager
from orchestrator.stack.state import StackState, StateError

DEFAULT_EXPERIMENT = Path("experiments") / "seed.yaml"


def default_experiment_path() -> Path:
    """``experiments/seed.yaml`` in the working directory, else in the source checkout."""
    local = Path.cwd() / DEFAULT_EXPERIMENT
    if local.exists():
        return local
    return Path(__file__).resolve().parents[2] / DEFAULT_EXPERIMENT


def link_views(state: StackState) -> dict[str, Any]:
    """The running links as the proxy's control API reports them (run.json ``links_at_end``)."""
    import httpx

    control = state.link_control_urls.get("links")
    if not control:
        return {}
    try:
        return dict(httpx.get(f"{control}/v1/links", timeout=5, trust_env=False).json()["links"])
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def link_counters(state: StackState) -> dict[str, Any]:
    """Chunks forwarded, messages (one delay draw each) and delay drawn so far, per link and
    direction (the proxy's counters): recorded at every pass start so each pass's draws can be
    recovered."""
    from netem.counters import CHUNKS, DRAWN, MESSAGES, parse_link_counters

    control = state.link_control_urls.get("links")
    if not control:
        return {}
    import httpx

    text = httpx.get(f"{control}/metrics", timeout=5, trust_env=False).text
    out: dict[str, Any] = {}
    for link in state_links(state):
        per = parse_link_counters(text, link)
        out[link] = {d: {"chunks": v.get(CHUNKS, 0.0), "messages": v.get(MESSAGES, 0.0),
                         "drawn_s": v.get(DRAWN, 0.0)}
                     for d, v in per.items()}
    return out


class HopReader:
    """New rows of the link proxy's per-hop log (``GET /v1/hops``) at each call: ``[seq, tag,
    link, direction, ms]``, each row once (blocking; an empty list without a proxy)."""

    def __init__(self, control_url: str | None) -> None:
        self.control_url = control_url
        self.after = 0

    def __call__(self) -> list[list[Any]]:
        if not self.control_url:
            return []
        import httpx

        rows: list[list[Any]] = []
        with httpx.Client(timeout=10, trust_env=False) as client:
            while True:
                got = client.get(f"{self.control_url}/v1/hops",
                                 params={"after": self.after}).json()
                rows += got["hops"]
                if got["next"] == self.after or not got["hops"]:
                    return rows
                self.after = got["next"]


def state_links(state: StackState) -> list[str]:
    """The link names the stack's proxy serves (from its topology file)."""
    import yaml

    path = Path(state.state_dir) / "links.yaml"
    if not path.exists():
        return []
    return sorted((yaml.safe_load(path.read_text()) or {}).get("links", {}))


def stack_run_info(exp: Experiment, state: StackState, kind: str) -> dict[str, Any]:
    """What run.json says about the stack a run used: URLs, link backend, configured links."""
    return {
        "stack": {
            "kind": kind,
            "experiment_file": state.experiment_path,
            "tier_urls": state.tier_urls,
            "target_urls": state.target_urls,
            "group_target_urls": state.group_target_urls,
            "link_control_urls": state.link_control_urls,
            "prometheus_url": state.prometheus_url,
        },
        "link_backend": {"backend": state.link_backend, "reason": state.link_backend_reason},
        "links": {name: spec.describe() for name, spec in exp.links.items()},
        "topology": topology_info(exp),
    }


def topology_info(exp: Experiment) -> dict[str, Any]:
    """The topology a run used: each node's class and its path from the first device group
    (``nodes``, as before groups existed), every group's paths (``groups``) and devices."""
    def paths_of(group: str) -> dict[str, Any]:
        paths = exp.group_paths(group)
        return {n: {"path": list(paths[n].hops) if n in paths else "direct",
                    "rtt_mean_ms": paths[n].rtt_mean_ms if n in paths else 0.0,
                    "path_declared": bool(paths[n].declared) if n in paths else False}
                for n in exp.reachable(group)}

    first = paths_of(exp.default_group())
    return {
        "nodes": {n: {"class": t.node_class, **first.get(n, {"path": "unreachable"})}
                  for n, t in exp.tiers.items()},
        "groups": {g.name: {"count": g.count, "class": g.device_class, "attach": g.attach,
                            "paths": paths_of(g.name)} for g in exp.groups()},
    }


def run_on_stack(
    exp: Experiment,
    state: StackState,
    out_dir: Path | None,
    *,
    progress: bool = True,
    plots: bool = True,
    wait_scrape: bool = True,
    fidelity_probes: int = 0,
    kind: str = "local (edgebed up)",
    log: Callable[[str], None] = print,
) -> tuple[Any, float | None]:
    """Replay ``exp`` against a running stack; return (RunResult, final scrape time or None).

    The one run session of the local stack (``edgebed demo`` and ``edgebed run`` against
    ``edgebed up``): requests go through the links, the host overhead is calibrated on the
    direct URLs, the scenario acts on the stack's processes and links, metrics are served on
    the port the stack's Prometheus scrapes and kept up until it has the final values.
    ``fidelity_probes`` > 0 first measures every link with that many probes (run.json
    ``link_fidelity``).
    """
    from orchestrator.metrics import OrchestratorMetrics
    from orchestrator.run import run_experiment
    from orchestrator.stack.control import LocalStackController

    if not progress:
        exp = exp.with_overrides({"replay.progress": False}, "no progress bar")
    metrics = OrchestratorMetrics()
    if state.orchestrator_metrics_port:
        metrics.serve(state.orchestrator_metrics_port)
    run_info = stack_run_info(exp, state, kind)
    run_info["links_at_start"] = link_views(state)
    if fidelity_probes > 0 and state.link_backend == "proxy":
        from netem.probe import format_table
        from orchestrator.stack.fidelity import probe_stack_links

        try:
            reports = probe_stack_links(exp, state, n=fidelity_probes)
        except Exception as exc:  # a failed probe must not cost the run; it is recorded
            reports = []
            run_info["link_fidelity_error"] = f"{type(exc).__name__}: {exc}"
            log(
                f"warning: link fidelity probe failed ({type(exc).__name__}: {exc}); "
                "continuing without it"
            )
        run_info["link_fidelity"] = reports
        if reports:
            log(
                f"link fidelity ({fidelity_probes} HTTP probes per link, direct baseline "
                "subtracted):\n" + format_table(reports)
            )
    scraped = None
    try:
        result = run_experiment(
            exp, out_dir, targets=state.target_urls, direct_targets=state.tier_urls,
            group_targets=state.group_target_urls, controller=LocalStackController(exp, state), run_info=run_info, plots=plots,
            metrics=metrics, log=log, observe=lambda: link_counters(state),
            hops=HopReader(state.link_control_urls.get("links")),
        )
        _record_links_at_end(result.run_dir, state)
        if wait_scrape and state.prometheus_url and state.orchestrator_metrics_port:
            # keep /metrics up until Prometheus has collected the final values
            after = time.time()
            log("waiting for Prometheus to scrape the final orchestrator metrics ...")
            try:
                job = "edgebed-orchestrator"
                scraped = manager.wait_for_scrape(
                    state.prometheus_url,
                    job,
                    after,
                    timeout_s=max(30.0, 10 * state.scrape_interval_s),
                    instances=manager.scrape_instances(state, job),
                )
            except TimeoutError as exc:
                log(f"warning: {exc}")
    finally:
        metrics.stop()
    return result, scraped


def _record_links_at_end(run_dir: Path, state: StackState) -> None:
    """Add the links as they were at the end to run.json, and whether they differ from the
    start (a change made at run time with ``edgebed link set`` shows here)."""
    import json

    path = Path(run_dir) / "run.json"
    info = json.loads(path.read_text())
    end = link_views(state)
    info["links_at_end"] = end
    start = info.get("links_at_start") or {}
    changed = sorted(n for n, v in end.items() if isinstance(v, dict) and isinstance(
        start.get(n), dict) and v.get("spec") != start[n].get("spec"))
    info["links_changed_during_run"] = changed
    path.write_text(json.dumps(info, indent=2, default=str) + "\n")


def demo(
    config: Path,
    state_dir: Path,
    *,
    out_dir: Path | None = None,
    n: int | None = None,
    prometheus: str = "auto",
    scrape_interval_s: float = 1.0,
    progress: bool = True,
    plots: bool = True,
    fidelity_probes: int = 60,
    plugins: tuple[str, ...] = (),
    log: Callable[[str], None] = print,
) -> int:
    """Up, run every policy of ``config``, print the summary and where outputs are, down."""
    from orchestrator.experiment import ExperimentError, import_plugins, load_experiment
    from orchestrator.research_report import format_research
    from orchestrator.run import prepare_run_dir
    from orchestrator.summary import format_summary

    try:
        problems = import_plugins(list(plugins), "--plugin")
        if problems:
            raise ExperimentError(str(config), problems)
        exp = load_experiment(config)
        if n is not None:
            exp = exp.with_overrides({"workload.n": n}, "--n")
        if out_dir is not None:
            prepare_run_dir(out_dir, exp.name)
    except (ExperimentError, ValueError) as exc:
        print(f"edgebed demo: {exc}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    code = 0
    # SIGINT and SIGTERM arrive here as KeyboardInterrupt (orchestrator.cli.main installs that)
    try:
        log(f"edgebed demo: experiment {exp.name!r} from {config}")
        state = manager.up(
            exp,
            state_dir,
            experiment_path=str(config),
            prometheus=prometheus,
            scrape_interval_s=scrape_interval_s,
            log=log,
        )
        if state.prometheus_url is None:
            log(f"prometheus     {state.prometheus_note}")
        t_up = time.monotonic() - t0
        log(f"stack up in {t_up:.1f} s; replaying {len(exp.policies)} policies")
        result, _ = run_on_stack(
            exp,
            state,
            out_dir,
            progress=progress,
            plots=plots,
            fidelity_probes=fidelity_probes,
            log=log,
        )
        print()
        print(format_summary(result.summary))
        print()
        decisions = format_research(result.records)
        if decisions:
            print(decisions)
            print()
        print(f"run directory: {result.run_dir}  (records.csv, summary.csv, run.json)")
        print(f"plots:         {result.run_dir / 'plots'}")
        print("device time, energy and the LLM are emulated (see run.json 'emulated')")
        if result.interrupted:
            print("interrupted: the records so far were kept", file=sys.stderr)
            code = 130
        elif result.all_failed:
            print(f"edgebed demo: {result.failure_summary()}", file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        code = 130
    except (manager.StackError, manager.StartError, StateError) as exc:
        print(f"edgebed demo: {exc}", file=sys.stderr)
        code = 1
    finally:
        with contextlib.suppress(KeyboardInterrupt, StateError, manager.StackError):
            manager.down(state_dir, log=_quiet)
    log(f"stack stopped; demo took {time.monotonic() - t0:.1f} s")
    return code


def _quiet(_: str) -> None:
    pass


def run_on_running_stack(
    config: str | Path | Experiment,
    out_dir: str | Path | None = None,
    *,
    state_dir: str | Path | None = None,
    **kwargs: Any,
) -> Any:
    """Run an experiment on the local stack that ``edgebed up`` started (notebook API).

    ``config``: an experiment file or :class:`Experiment`. Works inside Jupyter (the run goes
    to a worker thread when an event loop is running). Returns the ``RunResult``
    (``.records``, ``.summary``, ``.run_dir``)."""
    from orchestrator.experiment import as_experiment
    from orchestrator.stack.state import default_state_dir, load_state

    where = Path(state_dir).resolve() if state_dir is not None else default_state_dir()
    state = load_state(where)
    if state is None:
        raise RuntimeError(f"no stack recorded in {where}: start one with `edgebed up`")
    kwargs.setdefault("log", _quiet)
    result, _ = run_on_stack(as_experiment(config), state,
                             Path(out_dir) if out_dir is not None else None, **kwargs)
    return result
