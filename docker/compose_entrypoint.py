"""Main of the compose stack's orchestrator container: links up, one experiment run, metrics kept.

Once the tier containers answer ``/readyz`` it:

1. chooses the link backend (``EDGEBED_LINK_BACKEND``: ``auto`` picks ``tc`` when the kernel
   offers ``sch_netem`` and the container may use it, ``proxy`` otherwise) and applies the
   experiment's ``device → tier`` links: tc netem on this container's interface with one class
   per tier address, or the userspace link proxy (``python -m netem.proxy``) on loopback;
2. measures each link's round trip (fidelity probe) and publishes it;
3. replays the experiment through its policies (``orchestrator.experiment.run_experiment``),
   writing the run directory under ``/runs`` and serving Prometheus metrics on port 9100;
4. waits until Prometheus has scraped the final values, hands the run directory to the owner of
   ``/runs``, and keeps serving metrics (and the links) until stopped, so dashboards stay
   filled. ``EDGEBED_EXIT_AFTER_RUN=1`` exits instead.

Everything it decides (backend and why, link laws, fidelity, tier URLs) goes into run.json.
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
import yaml

from netem.auth import auth_headers, read_token_file
from services.tier.classes import DEFAULT_NODES

LINK_BACKENDS = ("auto", "tc", "proxy", "none")


@dataclass(frozen=True)
class Settings:
    """The container's settings, from its environment (see docker-compose.yml)."""

    experiment: Path = Path("experiments/seed.yaml")
    n: int | None = None
    link_backend: str = "auto"
    # the compose services of the default nodes, each named after its node
    targets: str = ",".join(f"{n}=http://{n}:8000" for n in DEFAULT_NODES)
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


def device_links(exp: Any, tier_urls: Mapping[str, str]) -> dict[str, Any]:
    """The experiment's links from the device (this container) to a tier we have a URL for.

    Raises ValueError for an experiment whose nodes are reached through multi-hop paths: the
    compose stack does not chain link proxies yet (the local stack does; see docs/compose.md).
    """
    far = {n: p for n, p in exp.node_paths().items() if len(p.hops) > 1 and n in tier_urls}
    if far:
        raise ValueError(
            "the compose stack reaches nodes over one link only; "
            + ", ".join(f"{n} is {len(p.hops)} hops away ({' → '.join(p.hops)})"
                        for n, p in sorted(far.items()))
            + ": run this experiment on the local stack (edgebed demo --config ...)")
    return {
        name: spec
        for name, spec in exp.links.items()
        if spec.src == "device" and spec.dst in tier_urls
    }


def hostport(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"


def proxy_topology(
    links: Mapping[str, Any], tier_urls: Mapping[str, str], first_port: int, control_port: int,
    seed: int,
) -> dict[str, Any]:
    """The ``netem.proxy --config`` document: one loopback listener per link (pure)."""
    doc_links = {}
    for i, (name, spec) in enumerate(sorted(links.items())):
        filled = spec.model_copy(
            update={
                "listen": f"127.0.0.1:{first_port + i}",
                "target": hostport(tier_urls[spec.dst]),
            }
        )
        # rtt_range_ms is shorthand already expanded into up/down: the proxy takes one form
        doc_links[name] = filled.model_dump(mode="json", exclude_none=True,
                                            exclude={"rtt_range_ms"})
    return {"links": doc_links, "seed": seed, "control": f"0.0.0.0:{control_port}"}


class TcApplyError(RuntimeError):
    """netem was available but shaping the interface failed."""


@dataclass
class Links:
    backend: str
    reason: str
    targets: dict[str, str]  # tier -> URL the replay uses
    laws: dict[str, str] = field(default_factory=dict)
    probe_targets: dict[str, str] = field(default_factory=dict)  # link -> host:port to probe
    baseline_targets: dict[str, str] = field(default_factory=dict)  # link -> direct host:port
    proc: subprocess.Popen | None = None
    control_url: str | None = None
    dev: str | None = None
    token_file: str | None = None  # the link control API's token (proxy backend)

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
    links = device_links(exp, tier_urls)
    laws = {name: spec.describe() for name, spec in links.items()}
    if backend == "none" or not links:
        why = reason if links else "the experiment declares no device links"
        return Links("none", why, dict(tier_urls), laws)
    seed = int(exp.seeds.links)
    if backend == "tc":
        from netem import tc

        peer_ips = {
            name: socket.gethostbyname(urlsplit(tier_urls[spec.dst]).hostname or "")
            for name, spec in links.items()
        }
        try:
            tc.apply(links, settings.dev, peer_ips=peer_ips)
        except (RuntimeError, OSError) as exc:  # e.g. no ifb device for ingress shaping
            tc.clear(settings.dev)
            raise TcApplyError(str(exc)) from exc
        probe = {n: hostport(tier_urls[s.dst]) for n, s in links.items()}
        return Links("tc", reason, dict(tier_urls), laws, probe, {}, dev=settings.dev)
    doc = proxy_topology(links, tier_urls, settings.links_first_port,
                         settings.links_control_port, seed)
    state_dir.mkdir(parents=True, exist_ok=True)
    config = state_dir / "links.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    from orchestrator.stack.links import write_token

    # The control API listens inside the compose network and is published on the host's
    # loopback: reading is open, changes need this token
    # (docker compose exec orchestrator cat /tmp/edgebed/link-token).
    token = write_token(state_dir / "link-token")
    proc = subprocess.Popen(
        [sys.executable, "-m", "netem.proxy", "--config", str(config), "--token-file", str(token)],
        stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.strip():
        proc.wait(5)
        raise RuntimeError(f"link proxy exited ({proc.returncode}) before it was ready")
    threading.Thread(target=_drain, args=(proc,), daemon=True).start()
    control = f"http://127.0.0.1:{settings.links_control_port}"
    targets = dict(tier_urls)
    probe, baseline = {}, {}
    for name, spec in doc["links"].items():
        tier = links[name].dst
        targets[tier] = f"http://{spec['listen']}"
        probe[name] = spec["listen"]
        baseline[name] = spec["target"]
    return Links("proxy", reason, targets, laws, probe, baseline, proc, control,
                 token_file=str(token))


def _drain(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        print(f"[links] {line.rstrip()}", flush=True)


def probe_fidelity(links: Links, exp: Any, n: int) -> dict[str, Any]:
    """RTT of each link measured with HTTP GET /healthz through it (netem.probe.probe_link:
    direct baseline subtracted, the proxy's drawn delays as the mean's reference)."""
    import asyncio

    from netem.probe import probe_link

    reports: dict[str, Any] = {}
    if n <= 0:
        return reports
    headers = auth_headers(read_token_file(links.token_file) if links.token_file else None)
    for name, target in links.probe_targets.items():
        try:
            # one link at a time: concurrent probes would queue behind each other on a tier
            report = asyncio.run(probe_link(
                target, exp.links[name], name=name, n=n, mode="http", path="/healthz",
                baseline_target=links.baseline_targets.get(name), baseline_n=min(n, 50),
                control_url=links.control_url))
        except Exception as exc:  # a probe failure must not stop the run; it is recorded
            reports[name] = {"link": name, "error": f"{type(exc).__name__}: {exc}"}
            continue
        reports[name] = report
        if links.control_url:
            with contextlib.suppress(httpx.HTTPError):
                httpx.put(f"{links.control_url}/v1/links/{name}/fidelity", headers=headers,
                          json=json.loads(json.dumps(report, default=float)), timeout=5)
    return reports


# ---- tiers, run, hand-over --------------------------------------------------------------


def parse_targets(text: str, nodes: list[str] | None = None) -> dict[str, str]:
    from orchestrator.commands import parse_targets as parse

    return parse(text, nodes)


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
    from orchestrator.stack.manager import wait_for_scrape

    exp = load_experiment(settings.experiment)
    overrides: dict[str, Any] = {"replay.progress": False}
    if settings.n is not None:
        overrides["workload.n"] = settings.n
    exp = exp.with_overrides(overrides, "container settings")
    tier_urls = parse_targets(settings.targets, list(exp.tiers))
    log(f"experiment {exp.name!r} from {settings.experiment}; waiting for tiers")
    wait_ready(tier_urls, settings.ready_timeout_s)

    choice = choose_backend(settings.link_backend)
    backend, reason = choice["backend"], choice["reason"]
    log(f"link backend {backend}: {reason}")
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    run_name = f"{stamp}-{exp.name}"
    run_dir = settings.runs_dir / run_name
    try:
        links = start_links(settings, exp, tier_urls, backend, reason, Path("/tmp/edgebed"))
    except TcApplyError as exc:
        if settings.link_backend == "tc":
            raise
        reason = f"{reason}; but applying tc failed ({exc}): using the userspace proxy instead"
        log(f"link backend proxy: {reason}")
        links = start_links(settings, exp, tier_urls, "proxy", reason, Path("/tmp/edgebed"))
    stop = threading.Event()
    # during the run SIGTERM/SIGINT stop it with everything recorded (orchestrator.cli); after
    # it, they just end the wait below
    install_stop_handlers()
    metrics = OrchestratorMetrics()
    try:
        for name, law in links.laws.items():
            log(f"  link {name}: {law} ({links.backend})")
        fidelity = probe_fidelity(links, exp, settings.fidelity_probes)
        for name, rep in fidelity.items():
            if "error" in rep:
                log(f"  fidelity {name}: probe failed: {rep['error']}")
            else:
                log(f"  fidelity {name}: mean RTT configured {rep['configured']['mean_ms']:.1f} ms,"
                    f" achieved {rep['achieved']['mean_ms']:.1f} ms (n={rep['n']})")
        if links.backend == "tc" and fidelity:
            from netem.metrics import LinkMetrics

            lm = LinkMetrics(metrics.registry)
            for name, rep in fidelity.items():
                if "error" not in rep:
                    lm.set_fidelity(name, rep)
        info = Gauge("edgebed_orchestrator_run_info", "The run this orchestrator serves (1)",
                     ["run", "experiment", "link_backend"], registry=metrics.registry)
        info.labels(run_name, exp.name, links.backend).set(1)
        metrics.serve(settings.metrics_port, "0.0.0.0")

        run_info = {
            "stack": {"kind": "compose", "experiment_file": str(settings.experiment),
                      "tier_urls": tier_urls, "target_urls": links.targets,
                      "prometheus_url": settings.prometheus_url, "run": run_name},
            "link_backend": {**choice, "backend": links.backend, "reason": links.reason},
            "links": links.laws,
            "link_fidelity": fidelity,
        }
        log(f"replaying {exp.workload.n} requests through {len(exp.policies)} policies")
        result = run_experiment(exp, run_dir, targets=links.targets, direct_targets=tier_urls,
                                run_info=run_info, metrics=metrics)
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
