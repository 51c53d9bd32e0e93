"""``edgebed demo`` and experiment runs on the local stack: up, replay through every policy, down.

The stack is always stopped, also on an error, Ctrl-C or SIGTERM. When Prometheus runs, the
orchestrator's metrics server stays up after the replay until Prometheus has scraped the final
values, so the Prometheus totals equal the run's records.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from orchestrator.stack import manager
from orchestrator.stack.schema import Experiment
from orchestrator.stack.state import StackState

DEFAULT_EXPERIMENT = Path("experiments") / "seed.yaml"


def default_experiment_path() -> Path:
    """``experiments/seed.yaml`` in the working directory, else in the source checkout."""
    local = Path.cwd() / DEFAULT_EXPERIMENT
    if local.exists():
        return local
    return Path(__file__).resolve().parents[2] / DEFAULT_EXPERIMENT


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt for the block, so cleanup code runs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class StackRun:
    result: Any  # orchestrator.experiment.RunResult
    state: StackState
    scraped_unix: float | None  # Prometheus's scrape of the final orchestrator metrics
    up_s: float
    run_s: float


def run_on_stack(
    exp: Experiment,
    state: StackState,
    out_dir: Path | None,
    *,
    n: int | None = None,
    policies: list[str] | None = None,
    progress: bool = True,
    plots: bool = True,
    wait_scrape: bool = True,
    fidelity_probes: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[Any, float | None]:
    """Replay ``exp`` against a running stack; return (RunResult, final scrape time or None).

    ``fidelity_probes`` > 0 first measures every link with that many probes (run.json
    ``link_fidelity``).
    """
    from orchestrator.experiment import config_from_experiment, run_experiment
    from orchestrator.metrics import OrchestratorMetrics

    targets = {tier.upper(): url for tier, url in state.target_urls.items()}
    cfg = config_from_experiment(exp, targets)
    updates: dict[str, Any] = {"replay": cfg.replay.model_copy(update={"progress": progress})}
    if n is not None:
        updates["workload"] = cfg.workload.model_copy(update={"n": n})
    if policies:
        updates["policies"] = [p for p in cfg.policies if p.name in policies]
    cfg = cfg.model_copy(update=updates)
    metrics = OrchestratorMetrics()
    if state.orchestrator_metrics_port:
        metrics.serve(state.orchestrator_metrics_port)
    run_info = {
        "stack": {
            "kind": "local (edgebed up)",
            "experiment_file": state.experiment_path,
            "tier_urls": state.tier_urls,
            "target_urls": state.target_urls,
            "prometheus_url": state.prometheus_url,
        },
        "link_backend": {"backend": state.link_backend, "reason": state.link_backend_reason},
        "links": {name: spec.describe() for name, spec in exp.links.items()},
    }
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
        result = run_experiment(cfg, out_dir, run_info=run_info, plots=plots, metrics=metrics)
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
    log: Callable[[str], None] = print,
) -> int:
    """Up, run every policy of ``config``, print the summary and where outputs are, down."""
    from orchestrator.commands import format_summary
    from orchestrator.stack.schema import ExperimentError, load_experiment

    try:
        exp = load_experiment(config)
    except ExperimentError as exc:
        print(f"edgebed demo: {exc}", file=sys.stderr)
        return 2
    t0 = time.monotonic()
    code = 0
    with sigterm_as_interrupt():
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
                n=n,
                progress=progress,
                plots=plots,
                fidelity_probes=fidelity_probes,
                log=log,
            )
            print()
            print(format_summary(result.summary))
            print()
            print(f"run directory: {result.run_dir}  (records.csv, summary.csv, run.json)")
            print(f"plots:         {result.run_dir / 'plots'}")
            print("device time, energy and the LLM are emulated (see run.json 'emulated')")
            if result.interrupted:
                print("interrupted: the records so far were kept", file=sys.stderr)
                code = 130
        except KeyboardInterrupt:
            print("\ninterrupted", file=sys.stderr)
            code = 130
        except (manager.StackError, manager.StartError) as exc:
            print(f"edgebed demo: {exc}", file=sys.stderr)
            code = 1
        finally:
            with contextlib.suppress(KeyboardInterrupt):
                manager.down(state_dir, log=_quiet)
    log(f"stack stopped; demo took {time.monotonic() - t0:.1f} s")
    return code


def _quiet(_: str) -> None:
    pass
