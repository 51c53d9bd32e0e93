"""Main of the compose stack's orchestrator container: links up, one experiment run, metrics kept.

Once every node's container answers ``/readyz`` it:

1. chooses the link backend (``EDGEBED_LINK_BACKEND``: ``auto`` picks ``tc`` when the kernel
   offers ``sch_netem``, the container may use it and every node is one link away, ``proxy``
   otherwise) and applies the experiment's links with the local stack's plan
   (``orchestrator.stack.links``: one link proxy, multi-hop paths chained) or with tc netem on
   this container's interface, one class per node address;
2. measures each node's link or path (fidelity probe) and publishes it;
3. replays the experiment through its policies (``orchestrator.run.run_experiment``), writing
   the run directory under ``/runs`` and serving Prometheus metrics on port 9100;
4. waits until Prometheus has scraped the final values, hands the run directory to the owner of
   ``/runs``, and keeps serving metrics (and the links) until stopped, so dashboards stay
   filled. ``EDGEBED_EXIT_AFTER_RUN=1`` exits instead.

Everything it decides (backend and why, link laws, fidelity, node URLs, topology) goes into
run.json. The compose file (``edgebed compose render``) names the nodes in ``EDGEBED_TARGETS``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from orchestrator.stack.compose import compose_targets, hostport, one_hop_links, resolve_backend

LINK_BACKENDS = ("auto", "tc", "proxy", "none")


@dataclass(frozen=True)
class Settings:
    """The container's settings, from its environment (see docker-compose.yml)."""

    experiment: Path = Path("experiments/seed.yaml")
    n: int | None = None
    link_backend: str = "auto"
    # NODE=URL,...; None: every node of the experiment at its compose service (named after it)
    targets: str | None = None
    prometheus_url: str | None = "http://prometheus:9090"
    runs_dir: Path = Path("/runs")
    metrics_port: int = 9100
    links_control_port: int = 9101
    links_first_port: int = 9111
    fidelity_probes: int = 60
    ready_timeout_s: float = 300.0
    exit_after_run: bool = False
    dev: str = "eth0"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        def get(key: str) -> str | None:
            value = env.get(key, "").strip()
            return value or None

        kw: dict[str, Any] = {}
        if v := get("EDGEBED_EXPERIMENT"):
            kw["experiment"] = Path(v)
        if v := get("EDGEBED_N"):
            kw["n"] = _int("EDGEBED_N", v, 1)
        if v := get("EDGEBED_LINK_BACKEND"):
            if v not in LINK_BACKENDS:
                raise ValueError(f"EDGEBED_LINK_BACKEND must be one of {LINK_BACKENDS}, got {v!r}")
            kw["link_backend"] = v
        if v := get("EDGEBED_TARGETS"):
            kw["targets"] = v
        if "EDGEBED_PROMETHEUS_URL" in env:
            kw["prometheus_url"] = get("EDGEBED_PROMETHEUS_URL")
        if v := get("EDGEBED_RUNS_DIR"):
            kw["runs_dir"] = Path(v)
        if v := get("EDGEBED_FIDELITY_PROBES"):
            kw["fidelity_probes"] = _int("EDGEBED_FIDELITY_PROBES", v, 0)
        if v := get("EDGEBED_READY_TIMEOUT_S"):
            kw["ready_timeout_s"] = float(_int("EDGEBED_READY_TIMEOUT_S", v, 1))
        if v := get("EDGEBED_EXIT_AFTER_RUN"):
            kw["exit_after_run"] = v.lower() in ("1", "true", "yes")
        if v := get("EDGEBED_LINK_DEV"):
            kw["dev"] = v
        return cls(**kw)


def _int(key: str, value: str, lo: int) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{key} must be an integer >= {lo}, got {value!r}") from None
    if n < lo:
        raise ValueError(f"{key} must be an integer >= {lo}, got {n}")
    return n


def log(msg: str) -> None:
    print(f"[orchestrator] {msg}", flush=True)


# ---- link backend choice ------------------------------------------------------------------


Runner = Callable[[list[str]], subprocess.CompletedProcess]


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, check=False)


def netem_probe_argvs(dev: str = "lo") -> tuple[list[str], list[str]]:
    """tc commands that add then remove a netem qdisc: the capability test (pure)."""
    return (
        ["tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", "1ms"],
        ["tc", "qdisc", "del", "dev", dev, "root"],
    )


def container_capabilities(run: Runner = _run, dev: str = "lo") -> dict[str, Any]:
    """What this container may do for link emulation, in ``netem.backends`` form.

    The container is its own network namespace, so netem is tried directly on its ``lo``
    (``netem.backends.detect_capabilities`` would need to create a namespace, which a container
    with only CAP_NET_ADMIN cannot).
    """
    caps: dict[str, Any] = {
        "is_root": os.geteuid() == 0,
        "tc": shutil.which("tc") is not None,
        "ip": shutil.which("ip") is not None,
        "netns": True,
        "where": "orchestrator container (its own network namespace)",
        "kernel": os.uname().release,
    }
    if not caps["tc"]:
        return caps
    add, delete = netem_probe_argvs(dev)
    res = run(add)
    if res.returncode == 0:
        run(delete)
        caps["features"] = {"netem": {"ok": True, "detail": "ok"}}
    else:
        detail = f"{' '.join(add)}: {(res.stderr or res.stdout).strip() or res.returncode}"
        caps["features"] = {"netem": {"ok": False, "detail": detail}}
    return caps


def choose_backend(requested: str, run: Runner = _run) -> dict[str, Any]:
    """The link backend for ``requested`` (auto|tc|proxy|none): a JSON-ready dict for run.json
    with ``backend`` and ``reason`` (``netem.backends.select_backend`` does the choosing)."""
    if requested == "none":
        return {"backend": "none", "requested": "none",
                "reason": "link backend none: tiers reached directly, no emulated links"}
    from netem.backends import select_backend

    return select_backend(requested, container_capabilities(run))


# ---- links ------------------------------------------------------------------------------


class TcApplyError(RuntimeError):
    """netem was available but shaping the interface failed."""


@dataclass
class Links:
    """The links in force: the stack's view of them (``orchestrator.stack.state.StackState``:
    tier URLs, URLs through the links, the proxy's control API and token) and what to close."""

    backend: str
    reason: str
    state: Any  # StackState
    laws: dict[str, str] = field(default_factory=dict)
    tc_links: dict[str, tuple[str, Any]] = field(default_factory=dict)  # tc: link -> (node, spec)
    proc: subprocess.Popen | None = None
    dev: str | None = None

    @property
    def targets(self) -> dict[str, str]:
        return dict(self.state.target_urls)

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.backend == "tc" and self.dev:
            from netem import tc

            tc.clear(self.dev)


def start_links(settings: Settings, exp: Any, tier_urls: dict[str, str],
                backend: str, reason: str, state_dir: Path) -> Links:
    """Apply the experiment's links with ``backend``: the local stack's plan
    (``orchestrator.stack.links.plan_links``: a node one hop away gets its link's listener, a
    farther node a chained path listener) served by one link proxy, or tc netem on this
    container's interface for one-hop links (the caller has checked
    ``orchestrator.stack.compose.resolve_backend``)."""
    from orchestrator.stack import links as stack_links
    from orchestrator.stack.state import StackState

    state = StackState(state_dir=str(state_dir), experiment_path=str(settings.experiment),
                       tier_urls=dict(tier_urls), target_urls=dict(tier_urls),
                       prometheus_url=settings.prometheus_url)
    laws = {name: spec.describe() for name, spec in exp.links.items()}
    if backend == "none" or not exp.links:
        why = reason if exp.links else "the experiment declares no links"
        state.link_backend, state.link_backend_reason = "none", why
        return Links("none", why, state, laws)
    state.link_backend, state.link_backend_reason = backend, reason
    if backend == "tc":
        from netem import tc

        links = one_hop_links(exp, tier_urls)
        peer_ips = {name: socket.gethostbyname(urlsplit(tier_urls[node]).hostname or "")
                    for name, (node, _) in links.items()}
        try:
            tc.apply({name: spec for name, (_, spec) in links.items()}, settings.dev,
                     peer_ips=peer_ips)
        except (RuntimeError, OSError) as exc:  # e.g. no ifb device for ingress shaping
            tc.clear(settings.dev)
            raise TcApplyError(str(exc)) from exc
        return Links("tc", reason, state, laws, tc_links=links, dev=settings.dev)
    # a listener per (device group, node) path in the experiment's order, then the control API
    first = settings.links_first_port
    ports = [*range(first, first + stack_links.ports_needed(exp)), settings.links_control_port]
    plan = stack_links.plan_links(exp, tier_urls, "proxy", ports)
    # the control API listens on the compose network (Prometheus scrapes it, the host reaches
    # it on its loopback): reading is open, changes need the token
    # (docker compose exec orchestrator cat /tmp/edgebed/link-token)
    plan.control = f"0.0.0.0:{settings.links_control_port}"
    config = stack_links.write_topology(plan, int(exp.seeds.links), state_dir / "links.yaml")
    token = stack_links.write_token(state_dir / "link-token")
    proc = subprocess.Popen(stack_links.proxy_argv(sys.executable, config, token),
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.strip():
        proc.wait(5)
        raise RuntimeError(f"link proxy exited ({proc.returncode}) before it was ready")
    threading.Thread(target=_drain, args=(proc,), daemon=True).start()
    state.target_urls = plan.targets(tier_urls)
    state.group_target_urls = plan.group_targets(tier_urls)
    state.link_control_urls = {"links": f"http://127.0.0.1:{settings.links_control_port}"}
    state.link_token_file = str(token)
    laws.update({p.name: p.describe() for p in plan.paths})
    return Links("proxy", reason, state, laws, proc=proc)


def _drain(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        print(f"[links] {line.rstrip()}", flush=True)


def probe_fidelity(links: Links, exp: Any, n: int, timeout_s: float = 600.0) -> list[dict]:
    """RTT through each node's link or path, with HTTP GET /healthz (``netem.probe``): through
    the proxy as the local stack does (``orchestrator.stack.fidelity``: direct baseline
    subtracted, the drawn delays as the mean's reference, reports sent to the proxy's control
    API); with tc per link, on the shaped interface."""
    import asyncio

    from netem.probe import probe_link

    if n <= 0 or links.backend == "none":
        return []
    if links.backend == "proxy":
        from orchestrator.stack.fidelity import probe_stack_links

        return probe_stack_links(exp, links.state, n=n, timeout_s=timeout_s)
    reports = []
    for name, (node, spec) in links.tc_links.items():
        # one link at a time: concurrent probes would queue behind each other on a tier
        try:
            report = asyncio.run(probe_link(hostport(links.state.tier_urls[node]), spec,
                                            name=name, n=n, mode="http", path="/healthz"))
        except Exception as exc:  # a probe failure must not stop the run; it is recorded
            report = {"link": name, "error": f"{type(exc).__name__}: {exc}"}
        reports.append({**report, "kind": "link"})
    return reports


# ---- tiers, run, hand-over --------------------------------------------------------------


def wait_ready(tier_urls: Mapping[str, str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    pending = dict(tier_urls)
    with httpx.Client(timeout=2.0, trust_env=False) as client:
        while pending:
            for tier, url in list(pending.items()):
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(f"{url}/readyz").status_code == 200:
                        log(f"{tier:<6} ready at {url}")
                        del pending[tier]
            if pending and time.monotonic() > deadline:
                raise RuntimeError(f"tiers not ready after {timeout_s:.0f} s: {sorted(pending)}")
            if pending:
                time.sleep(0.5)


def hand_over(path: Path, owner_of: Path) -> None:
    """Give ``path`` (recursively) to the owner of ``owner_of`` (the mounted runs folder)."""
    st = owner_of.stat()
    if st.st_uid == os.geteuid():
        return
    for p in [path, *path.rglob("*")]:
        with contextlib.suppress(OSError):
            os.chown(p, st.st_uid, st.st_gid)


def run(settings: Settings) -> int:
    from prometheus_client import Gauge

    from orchestrator.cli import install_stop_handlers
    from orchestrator.experiment import load_experiment
    from orchestrator.metrics import OrchestratorMetrics
    from orchestrator.run import run_experiment
    from orchestrator.stack.demo import HopReader, link_counters, link_views, stack_run_info
    from orchestrator.stack.manager import wait_for_scrape

    exp = load_experiment(settings.experiment)
    overrides: dict[str, Any] = {"replay.progress": False}
    if settings.n is not None:
        overrides["workload.n"] = settings.n
    exp = exp.with_overrides(overrides, "container settings")
    tier_urls = compose_targets(exp, settings.targets)
    choice = choose_backend(settings.link_backend)
    backend, reason = resolve_backend(settings.link_backend, choice, exp, tier_urls)
    log(f"experiment {exp.name!r} from {settings.experiment}; waiting for nodes "
        f"{', '.join(tier_urls)}")
    wait_ready(tier_urls, settings.ready_timeout_s)

    log(f"link backend {backend}: {reason}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_name = f"{stamp}-{exp.name}"
    run_dir = settings.runs_dir / run_name
    state_dir = Path("/tmp/edgebed")
    try:
        links = start_links(settings, exp, tier_urls, backend, reason, state_dir)
    except TcApplyError as exc:
        if settings.link_backend == "tc":
            raise
        reason = f"{reason}; but applying tc failed ({exc}): using the userspace proxy instead"
        log(f"link backend proxy: {reason}")
        links = start_links(settings, exp, tier_urls, "proxy", reason, state_dir)
    stop = threading.Event()
    # during the run SIGTERM/SIGINT stop it with everything recorded (orchestrator.cli); after
    # it, they just end the wait below
    install_stop_handlers()
    metrics = OrchestratorMetrics()
    try:
        for name, law in links.laws.items():
            log(f"  {name}: {law} ({links.backend})")
        fidelity_error = None
        try:
            fidelity = probe_fidelity(links, exp, settings.fidelity_probes)
        except Exception as exc:  # a failed probe must not cost the run; it is recorded
            fidelity, fidelity_error = [], f"{type(exc).__name__}: {exc}"
            log(f"warning: link fidelity probe failed ({fidelity_error}); continuing without it")
        for rep in fidelity:
            if "error" in rep:
                log(f"  fidelity {rep['link']}: probe failed: {rep['error']}")
            else:
                log(f"  fidelity {rep['link']} ({rep.get('kind', 'link')}): mean RTT configured "
                    f"{rep['configured']['mean_ms']:.1f} ms, achieved "
                    f"{rep['achieved']['mean_ms']:.1f} ms (n={rep['n']})")
        if links.backend == "tc" and fidelity:
            from netem.metrics import LinkMetrics

            lm = LinkMetrics(metrics.registry)
            for rep in fidelity:
                if "error" not in rep:
                    lm.set_fidelity(rep["link"], rep)
        info = Gauge("edgebed_orchestrator_run_info", "The run this orchestrator serves (1)",
                     ["run", "experiment", "link_backend"], registry=metrics.registry)
        info.labels(run_name, exp.name, links.backend).set(1)
        metrics.serve(settings.metrics_port, "0.0.0.0")

        run_info = stack_run_info(exp, links.state, "compose")
        run_info["stack"]["run"] = run_name
        run_info["link_backend"] = {**choice, "backend": links.backend, "reason": links.reason}
        run_info["link_fidelity"] = fidelity
        if fidelity_error:
            run_info["link_fidelity_error"] = fidelity_error
        run_info["links_at_start"] = link_views(links.state)
        observe = (lambda: link_counters(links.state)) if links.backend == "proxy" else None
        log(f"replaying {exp.workload.n} requests through {len(exp.policies)} policies")
        result = run_experiment(exp, run_dir, targets=links.targets, direct_targets=tier_urls,
                                group_targets=links.state.group_target_urls,
                                run_info=run_info, metrics=metrics, observe=observe,
                                hops=HopReader(links.state.link_control_urls.get("links"))
                                if links.backend == "proxy" else None)
        log(f"run directory {run_dir} ({len(result.records)} records)")
        print(result.summary.to_string(index=False), flush=True)
        if settings.prometheus_url:
            try:
                wait_for_scrape(settings.prometheus_url, "edgebed-orchestrator", time.time(),
                                timeout_s=30)
            except (TimeoutError, httpx.HTTPError) as exc:
                log(f"warning: final metrics maybe not scraped: {exc}")
        hand_over(run_dir, settings.runs_dir)
        (run_dir / "DONE").write_text(json.dumps({"run": run_name, "records": len(result.records)}))
        hand_over(run_dir / "DONE", settings.runs_dir)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: stop.set())
        log("run finished; serving metrics until stopped")
        if not settings.exit_after_run:
            stop.wait()
        return 130 if result.interrupted else 0
    finally:
        metrics.stop()
        links.close()


def main() -> int:
    try:
        settings = Settings.from_env(os.environ)
    except ValueError as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return 2
    try:
        return run(settings)
    except Exception as exc:
        print(f"orchestrator: {type(exc).__name__}: {exc}", file=sys.stderr)
        raise


if __name__ == "__main__":
    sys.exit(main())
