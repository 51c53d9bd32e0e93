"""Turn an experiment into a running local stack (tiers, links, Prometheus on loopback) and back.

``up`` is the one place where the experiment's topology is applied: it starts every tier as a
server process, gates on ``/readyz``, starts the links in front of them, then Prometheus (when
its binary is present) scraping all of them, and records every PID in the state file as it
goes. If anything fails, whatever was started is stopped before the error propagates. ``down``
stops exactly the recorded processes, also when some of them already died.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.experiment import Experiment
from orchestrator.stack import links as stack_links
from orchestrator.stack import prometheus as prom
from orchestrator.stack import tiers as stack_tiers
from orchestrator.stack.procs import (  # noqa: F401  (StartError re-exported)
    ProcessRecord,
    StartError,
    is_running,
    spawn,
    stop,
    wait_ready,
)
from orchestrator.stack.state import StackState, load_state, remove_state

LOOPBACK = "127.0.0.1"
Log = Callable[[str], None]


class StackError(RuntimeError):
    """The stack could not be started (already running, a process failed, ...)."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _quiet(_: str) -> None:
    pass


def running_processes(state: StackState) -> list[ProcessRecord]:
    return [p for p in state.processes if is_running(p)]


def up(
    exp: Experiment,
    state_dir: Path,
    *,
    experiment_path: str | None = None,
    prometheus: str = "auto",
    prometheus_binary: str | None = None,
    scrape_interval_s: float = prom.DEFAULT_SCRAPE_INTERVAL_S,
    link_backend: str | None = None,
    ready_timeout_s: float = 120.0,
    python: str = sys.executable,
    log: Log = _quiet,
) -> StackState:
    """Start the stack described by ``exp``; return its state (also saved under ``state_dir``).

    ``prometheus``: ``auto`` (start it when the binary is found), ``on`` (required), ``off``.
    """
    state_dir = Path(state_dir).resolve()
    old = load_state(state_dir)
    if old is not None:
        alive = running_processes(old)
        if alive:
            names = ", ".join(f"{p.name} (pid {p.pid})" for p in alive)
            raise StackError(
                f"a stack is already running from {old.path()}: {names}; run `edgebed down` first"
            )
        remove_state(state_dir)
    if prometheus not in ("auto", "on", "off"):
        raise ValueError(f"prometheus must be one of auto, on, off; got {prometheus!r}")
    binary = prom.find_binary(prometheus_binary) if prometheus != "off" else None
    if prometheus == "on" and binary is None:
        raise StackError(
            "prometheus=on but no `prometheus` binary found (apt-get install prometheus)"
        )

    state = StackState(
        state_dir=str(state_dir),
        experiment_path=experiment_path,
        scrape_interval_s=scrape_interval_s,
    )
    logs = state_dir / "logs"
    t0 = time.monotonic()
    try:
        # Every port is chosen up front, so tiers, the link proxy and Prometheus start together
        # (Python start-up dominates on a small machine); then each is gated on readiness.
        tiers = _spawn_tiers(exp, state, logs, python)
        backend = link_backend or exp.link_backend
        plan = _spawn_links(exp, state, logs, python, backend)
        state.orchestrator_metrics_port = free_port()
        state.save()
        prom_rec = None
        if binary is not None:
            prom_rec = _spawn_prometheus(state, binary, logs)
        elif prometheus == "off":
            state.prometheus_note = "not started (--prometheus off)"
        else:
            state.prometheus_note = "not started: no `prometheus` binary on PATH"
        state.save()
        for rec in tiers:
            waited = wait_ready(rec, ready_timeout_s)
            log(f"{rec.name:<14} ready at {rec.url} (pid {rec.pid}, {waited:.1f} s)")
        for rec in state.processes:
            if rec.kind == "link":
                waited = wait_ready(rec, ready_timeout_s)
                log(f"{rec.name:<14} ready at {rec.url} (pid {rec.pid}, {waited:.1f} s)")
        log(f"link backend   {plan.backend}: {plan.reason}")
        for link in plan.links:
            log(f"  {link.name:<14} {link.describe()}, listening at {link.listen_url}")
        for path in plan.paths:
            log(f"  {path.name:<14} {path.describe()}, listening at {path.listen_url}")
        if prom_rec is not None:
            waited = wait_ready(prom_rec, ready_timeout_s)
            state.prometheus_url = prom_rec.url
            log(f"{'prometheus':<14} ready at {prom_rec.url} (pid {prom_rec.pid}, {waited:.1f} s)")
        state.save()
        log(f"stack ready in {time.monotonic() - t0:.1f} s")
    except BaseException:
        log("start-up failed; stopping what was started")
        _stop_all(state, log)
        remove_state(state_dir)
        raise
    return state


def _register(state: StackState, rec: ProcessRecord) -> None:
    state.processes.append(rec)
    state.save()


def _spawn_tiers(
    exp: Experiment, state: StackState, logs: Path, python: str
) -> list[ProcessRecord]:
    config_dir = Path(state.state_dir) / "tiers"
    started: list[ProcessRecord] = []
    for name in exp.tiers:
        port = free_port()
        config_path = stack_tiers.write_tier_config(exp, name, config_dir)
        argv = stack_tiers.tier_argv(python, name, config_path, port)
        url = f"http://{LOOPBACK}:{port}"
        rec = spawn(
            f"tier-{name}", "tier", argv, logs / f"tier-{name}.log", url=url, ready_path="/readyz"
        )
        _register(state, rec)
        state.tier_urls[name] = url
        started.append(rec)
    return started


def _spawn_links(
    exp: Experiment, state: StackState, logs: Path, python: str, backend: str
) -> stack_links.LinkPlan:
    ports = [free_port() for _ in range(stack_links.ports_needed(exp))]
    plan = stack_links.plan_links(exp, state.tier_urls, backend, ports)
    state.link_backend = plan.backend
    state.link_backend_reason = plan.reason
    state.target_urls = plan.targets(state.tier_urls)
    state.group_target_urls = plan.group_targets(state.tier_urls)
    if plan.backend == "proxy" and (plan.links or plan.paths):
        config = stack_links.write_topology(
            plan, exp.seeds.links, Path(state.state_dir) / "links.yaml"
        )
        token = stack_links.write_token(Path(state.state_dir) / "link-token")
        state.link_token_file = str(token)
        rec = spawn(
            "links",
            "link",
            stack_links.proxy_argv(python, config, token),
            logs / "links.log",
            url=plan.control_url,
            ready_path="/healthz",
        )
        _register(state, rec)
        assert plan.control_url is not None
        state.link_control_urls["links"] = plan.control_url
    return plan


def scrape_instances(state: StackState, job: str) -> list[str]:
    """``host:port`` of each target of ``job`` in this stack's Prometheus config."""
    for j in prometheus_jobs(state):
        if j.job_name == job:
            return [t.address for t in j.targets]
    return []


def prometheus_jobs(state: StackState) -> list[prom.ScrapeJob]:
    """What the stack's Prometheus scrapes: tiers, link proxies, the orchestrator's metrics."""

    def addr(url: str) -> str:
        return url.split("://", 1)[-1].rstrip("/")

    jobs = [
        prom.ScrapeJob(
            "edgebed-tiers",
            tuple(prom.ScrapeTarget(addr(u), {"tier": t}) for t, u in state.tier_urls.items()),
        )
    ]
    if state.link_control_urls:
        jobs.append(
            prom.ScrapeJob(
                "edgebed-links",
                tuple(prom.ScrapeTarget(addr(u)) for u in state.link_control_urls.values()),
            )
        )
    if state.orchestrator_metrics_port:
        jobs.append(
            prom.ScrapeJob(
                "edgebed-orchestrator",
                (prom.ScrapeTarget(f"{LOOPBACK}:{state.orchestrator_metrics_port}"),),
            )
        )
    return jobs


def _spawn_prometheus(state: StackState, binary: str, logs: Path) -> ProcessRecord:
    pdir = Path(state.state_dir) / "prometheus"
    pdir.mkdir(parents=True, exist_ok=True)
    config_path = pdir / "prometheus.yml"
    config_path.write_text(
        prom.dump_config(prom.build_config(prometheus_jobs(state), state.scrape_interval_s))
    )
    port = free_port()
    argv = prom.build_argv(binary, config_path, pdir / "data", f"{LOOPBACK}:{port}")
    url = f"http://{LOOPBACK}:{port}"
    rec = spawn(
        "prometheus", "prometheus", argv, logs / "prometheus.log", url=url, ready_path="/-/ready"
    )
    _register(state, rec)
    state.prometheus_note = f"config {config_path}"
    return rec


def _stop_all(state: StackState, log: Log) -> list[tuple[str, str]]:
    outcomes = []
    for rec in reversed(state.processes):  # Prometheus, links, then tiers
        outcome = stop(rec)
        outcomes.append((rec.name, outcome))
        log(f"{rec.name:<14} pid {rec.pid}: {outcome}")
    return outcomes


def down(state_dir: Path, log: Log = _quiet) -> list[tuple[str, str]]:
    """Stop every process recorded in ``state_dir``'s state file; return (name, outcome) pairs."""
    state = load_state(Path(state_dir).resolve())
    if state is None:
        log(f"no stack state in {Path(state_dir).resolve()}: nothing to stop")
        return []
    outcomes = _stop_all(state, log)
    left = running_processes(state)
    if left:
        names = ", ".join(f"{p.name} ({p.pid})" for p in left)
        raise StackError(f"still running after down: {names}")
    remove_state(Path(state.state_dir))
    return outcomes


def status(state_dir: Path) -> tuple[StackState | None, list[dict]]:
    """The recorded processes with whether each is alive and (if it serves HTTP) ready."""
    import httpx

    state = load_state(Path(state_dir).resolve())
    if state is None:
        return None, []
    rows = []
    with httpx.Client(timeout=1.0, trust_env=False) as client:
        for rec in state.processes:
            alive = is_running(rec)
            ready = None
            if alive and rec.url and rec.ready_path:
                with contextlib.suppress(httpx.HTTPError):
                    ready = client.get(rec.url.rstrip("/") + rec.ready_path).status_code == 200
            rows.append(
                {
                    "name": rec.name,
                    "pid": rec.pid,
                    "alive": alive,
                    "ready": ready,
                    "url": rec.url,
                    "log": rec.log_path,
                }
            )
    return state, rows


def wait_for_scrape(
    prometheus_url: str,
    job: str,
    after_unix: float,
    timeout_s: float = 30.0,
    instances: Sequence[str] | None = None,
) -> float:
    """Block until Prometheus holds a successful scrape of ``job`` that started after ``after_unix``.

    Returns that scrape's timestamp (the oldest over ``instances``, host:port, when given; the
    data dir outlives a stack, so older instances of a job may still be in the lookback window).
    Used to make sure the final counter values were collected. ``timestamp()`` is applied to
    the bare selector (on an expression it would return the evaluation time).
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    query = f'timestamp(up{{job="{job}"}})'
    last = None
    with httpx.Client(timeout=5.0, trust_env=False) as client:
        while time.monotonic() < deadline:
            stamps = client.get(f"{prometheus_url}/api/v1/query", params={"query": query})
            ups = client.get(
                f"{prometheus_url}/api/v1/query", params={"query": f'up{{job="{job}"}}'}
            )

            def mine(series: list[dict]) -> list[dict]:
                if instances is None:
                    return series
                return [s for s in series if s["metric"].get("instance") in instances]

            ts = [float(s["value"][1]) for s in mine(stamps.json()["data"]["result"])]
            ok = [s["value"][1] == "1" for s in mine(ups.json()["data"]["result"])]
            if ts and ok and all(ok):
                last = min(ts)
                if last > after_unix:
                    return last
            time.sleep(0.1)
    raise TimeoutError(f"Prometheus did not scrape job {job} after {after_unix} (last {last})")
