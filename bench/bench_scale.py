"""Node-side scale: memory per tier node, of the link proxy and the orchestrator, and how many
nodes fit in a memory budget.

    python bench/bench_scale.py [--nodes 10] [--quick] [--budget-gib 8] [--json FILE]

Starts N real tier nodes, cycling through the hardware classes of the registry
(``services/tier/classes.py``: mcu, edge, cloud, gpu, npu), the way ``edgebed up`` does: an
experiment file with those nodes and one link device -> node each, every node's config written
by ``orchestrator.stack.tiers.write_tier_config`` and started with the stack's own command
line (``tier_argv``: ``python -m services.tier ...``) in its own session
(``orchestrator.stack.procs.spawn``), gated on ``/readyz``; the link proxy with the stack's
topology document (``plan_links`` / ``write_topology`` / ``proxy_argv``: one listener per
node); Prometheus with the stack's scrape config when its binary is installed. Every vision
model of every node answers a few real ``POST /v1/infer`` requests (real MNIST digits) through
its link, and every LM model one ``/v1/generate`` (not with ``--quick``), so models are loaded
and warm; then a small replay (``edgebed run --targets``: two policies, the proxy's listeners)
runs as its own process for the orchestrator's peak RSS.

Memory is read from ``/proc/<pid>/smaps_rollup`` (summed over the process group of each
started process): RSS, PSS (shared pages divided among their sharers) and USS
(Private_Clean + Private_Dirty: what the process alone holds), plus the peak RSS
(``VmHWM``). Without ``--quick`` the same nodes are started a second time through
``services.tier.process.start_tier`` (what tests and benchmarks use; the compose tier image runs
the same ``python -m services.tier``) for comparison. Until 2026-12-07 the stack started nodes
through ``python -m orchestrator.cli serve``, which imports every command's modules: ~130 MiB
RSS per node against ~84 MiB now.

Fit (printed with its terms): budget B (8 GiB), fixed = orchestrator peak RSS + Prometheus
allowance (max(measured, --prometheus-allowance-mib)) + the proxy's base; per node = node
memory + the proxy's memory per listener (measured with 1 and N listeners):

    conservative (nothing shared):  floor((B - fixed) / (max node RSS + proxy per listener))
    sharing-aware (PSS/USS):        floor((B - fixed - S) / (mean node USS + proxy per listener))

where S = max over nodes of (RSS - USS): the pages a node shares (interpreter, libraries,
model files: the same for every node) counted once. The whole run takes 1-2 minutes on a 2-core machine; every process
it started is stopped at the end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import yaml  # noqa: E402

from services.tier.classes import class_names  # noqa: E402

MIB = 1024 * 1024
GIB = 1024 * MIB
LOOPBACK = "127.0.0.1"
PY = sys.executable


# ----------------------------------------------------------------------------------- memory

def _group_pids(pid: int) -> list[int]:
    """``pid`` and every live process in its process group (the stack starts each process in a
    session of its own; a tier that forked workers would have them there)."""
    out = [pid]
    try:
        pgid = os.getpgid(pid)
    except OSError:
        return out
    if pgid != pid:
        return out
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pid:
            continue
        try:
            raw = (entry / "stat").read_text()
        except OSError:
            continue
        rest = raw[raw.rindex(")") + 2:].split()
        if rest[0] not in ("Z", "X") and int(rest[2]) == pgid:
            out.append(int(entry.name))
    return out


def _rollup(pid: int) -> dict[str, int]:
    """Bytes per field of /proc/<pid>/smaps_rollup, plus VmHWM (peak RSS) from status."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        parts = rest.split()
        if parts and parts[0].isdigit():
            out[key.strip()] = int(parts[0]) * 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            out["VmHWM"] = int(line.split()[1]) * 1024
    return out


def memory(pid: int, group: bool = True) -> dict[str, Any]:
    """RSS, PSS, USS and peak RSS of ``pid`` (and its process group), in bytes."""
    tot = {"rss": 0, "pss": 0, "uss": 0, "peak_rss": 0, "swap": 0}
    pids = _group_pids(pid) if group else [pid]
    counted = 0
    for p in pids:
        try:
            r = _rollup(p)
        except OSError:
            continue
        counted += 1
        tot["rss"] += r.get("Rss", 0)
        tot["pss"] += r.get("Pss", 0)
        tot["uss"] += r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)
        tot["peak_rss"] += r.get("VmHWM", 0)
        tot["swap"] += r.get("Swap", 0)
    return {**tot, "processes": counted}


# ------------------------------------------------------------------------------- processes

class Cleanup:
    """Everything started, stopped in reverse order exactly once (finally, Ctrl-C, SIGTERM)."""

    def __init__(self) -> None:
        self._stops: list[tuple[str, Callable[[], Any]]] = []
        self._lock = threading.Lock()

    def add(self, what: str, stop: Callable[[], Any]) -> None:
        with self._lock:
            self._stops.append((what, stop))

    def run(self) -> None:
        with self._lock:
            stops, self._stops = self._stops, []
        for what, stop in reversed(stops):
            try:
                stop()
            except Exception as exc:  # keep stopping the others
                print(f"  (stopping {what}: {type(exc).__name__}: {exc})", file=sys.stderr)


def node_plan(n: int) -> list[tuple[str, str]]:
    """(node name, class) for ``n`` nodes, cycling through the class registry."""
    classes = class_names()
    counts: dict[str, int] = {}
    plan = []
    for i in range(n):
        cls = classes[i % len(classes)]
        counts[cls] = counts.get(cls, 0) + 1
        plan.append((f"{cls}-{counts[cls]}", cls))
    return plan


def write_experiment(path: Path, nodes: list[tuple[str, str]], replay_n: int) -> Path:
    classes = {c for _, c in nodes}
    # the built-in policies name the simulator's classes; with all three present, escalate
    policies = (["always_edge", "confidence"] if {"mcu", "edge", "cloud"} <= classes
                else [{"name": "always_edge", "params": {"cv_route": f"{nodes[0][0]}/tinycnn",
                                                          "lm_route": f"{nodes[0][0]}/slm"}}])
    doc = {
        "name": "bench-scale",
        "description": f"{len(nodes)} nodes for bench/bench_scale.py",
        "seeds": 3,
        "tiers": {name: {"class": cls} for name, cls in nodes},
        "links": {f"device-{name}": {"src": "device", "dst": name, "rtt_range_ms": [2, 6]}
                  for name, _ in nodes},
        "workload": {"n": replay_n, "lm_ratio": 0.0},
        "arrival": {"process": "poisson", "params": {"rate_rps": 40}},
        "policies": policies,
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def start_stack_nodes(exp: Any, nodes: list[tuple[str, str]], work: Path,
                      cleanup: Cleanup) -> dict[str, dict[str, Any]]:
    """Each node as ``edgebed up`` starts it: its tiers.<name> config, ``tier_argv``, its own
    session; all spawned first, then each gated on /readyz (as the stack does)."""
    from orchestrator.stack import procs
    from orchestrator.stack import tiers as stack_tiers
    from orchestrator.stack.manager import free_port

    out: dict[str, dict[str, Any]] = {}
    t0 = time.monotonic()
    for name, cls in nodes:
        cfg = stack_tiers.write_tier_config(exp, name, work / "tiers")
        port = free_port()
        argv = stack_tiers.tier_argv(PY, name, cfg, port)
        rec = procs.spawn(f"tier-{name}", "tier", argv, work / "logs" / f"tier-{name}.log",
                          url=f"http://{LOOPBACK}:{port}", ready_path="/readyz", cwd=REPO)
        cleanup.add(f"tier {name}", functools.partial(procs.stop, rec))
        out[name] = {"class": cls, "pid": rec.pid, "url": rec.url, "rec": rec}
    for node in out.values():  # ready_s: from the first spawn to this node's /readyz
        procs.wait_ready(node["rec"], 120.0)
        node["ready_s"] = time.monotonic() - t0
    return out


def start_slim_nodes(nodes: list[tuple[str, str]], configs: dict[str, Path],
                     cleanup: Cleanup) -> dict[str, dict[str, Any]]:
    """The same nodes through ``services.tier.process.start_tier`` (``python -m services.tier``),
    started in parallel threads."""
    from services.tier.process import start_tier

    def one(name: str, cls: str) -> tuple[str, Any, float]:
        t0 = time.monotonic()
        tp = start_tier(name, node_class=cls, config_file=configs[name], ready_timeout_s=120.0)
        cleanup.add(f"slim tier {name}", tp.stop)
        return name, tp, time.monotonic() - t0

    out: dict[str, dict[str, Any]] = {}
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        for name, tp, waited in pool.map(lambda nc: one(*nc), nodes):
            out[name] = {"class": dict(nodes)[name], "pid": tp.pid, "url": tp.url,
                         "ready_s": waited}
    return out


def start_proxy(plan: Any, work: Path, tag: str, cleanup: Cleanup, seed: int = 3,
                only: Iterable[str] | None = None) -> dict[str, Any]:
    """The stack's link proxy: its topology document (optionally only some links), its token,
    its command line; waits for the ready line."""
    from orchestrator.stack import links as stack_links
    from orchestrator.stack.manager import free_port

    doc = plan.topology_document(seed)
    if only is not None:  # a second proxy beside the stack's: its own ports
        keep = set(only)
        doc["links"] = {k: {**v, "listen": f"{LOOPBACK}:0"} for k, v in doc["links"].items()
                        if k in keep}
        doc["control"] = f"{LOOPBACK}:{free_port()}"
    config = work / f"links-{tag}.yaml"
    config.write_text(yaml.safe_dump(doc, sort_keys=False))
    token = stack_links.write_token(work / f"link-token-{tag}")
    argv = stack_links.proxy_argv(PY, config, token)
    proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=open(work / "logs" / f"links-{tag}.log", "wb"),
                            start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    cleanup.add(f"link proxy {tag}", lambda: _stop_popen(proc))
    line = proc.stdout.readline() if proc.stdout else b""
    if not line:
        proc.wait(timeout=10)
        err = (work / "logs" / f"links-{tag}.log").read_text(errors="replace")[-1500:]
        raise RuntimeError(f"link proxy {tag} did not start: {err}")
    ready = json.loads(line)
    return {"pid": proc.pid, "links": ready["links"], "control": ready.get("control"),
            "proc": proc}


def _stop_popen(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    for f in (proc.stdout, proc.stderr):
        if f:
            f.close()


def start_prometheus(tier_urls: dict[str, str], control_url: str | None, work: Path,
                     cleanup: Cleanup) -> dict[str, Any] | None:
    """Prometheus with the stack's scrape config (tiers, link proxy) when its binary is here."""
    from orchestrator.stack import procs
    from orchestrator.stack import prometheus as prom
    from orchestrator.stack.manager import free_port

    binary = prom.find_binary(None)
    if binary is None:
        return None

    def addr(url: str) -> str:
        return url.split("://", 1)[-1].rstrip("/")

    jobs = [prom.ScrapeJob("edgebed-tiers", tuple(prom.ScrapeTarget(addr(u), {"tier": t})
                                                  for t, u in tier_urls.items()))]
    if control_url:
        jobs.append(prom.ScrapeJob("edgebed-links", (prom.ScrapeTarget(addr(control_url)),)))
    pdir = work / "prometheus"
    pdir.mkdir(parents=True, exist_ok=True)
    config = pdir / "prometheus.yml"
    config.write_text(prom.dump_config(prom.build_config(jobs, prom.DEFAULT_SCRAPE_INTERVAL_S)))
    port = free_port()
    argv = prom.build_argv(binary, config, pdir / "data", f"{LOOPBACK}:{port}")
    rec = procs.spawn("prometheus", "prometheus", argv, work / "logs" / "prometheus.log",
                      url=f"http://{LOOPBACK}:{port}", ready_path="/-/ready")
    cleanup.add("prometheus", lambda: procs.stop(rec))
    procs.wait_ready(rec, 60.0)
    return {"pid": rec.pid, "url": rec.url, "started": time.monotonic(),
            "interval_s": prom.DEFAULT_SCRAPE_INTERVAL_S}


# --------------------------------------------------------------------------------- traffic

async def warm(urls: dict[str, str], lm: bool, per_model: int) -> dict[str, dict[str, int]]:
    """Per node: GET /v1/models, ``per_model`` real POST /v1/infer per vision model, and (``lm``)
    one /v1/generate per LM model, every node at once. Returns the answers' status counts."""
    data = np.load(REPO / "data" / "mnist_eval.npz")
    images = [bytes(np.asarray(img, dtype=np.uint8).reshape(-1)) for img in
              data["easy_images"][:per_model]]
    out: dict[str, dict[str, int]] = {}

    async def node(name: str, url: str, client: httpx.AsyncClient) -> None:
        counts: dict[str, int] = {}
        models = (await client.get(f"{url}/v1/models")).json().get("models", [])
        for m in models:
            if m.get("kind") == "vision":
                for img in images:
                    r = await client.post(f"{url}/v1/infer", params={"model": m["name"]},
                                          content=img,
                                          headers={"content-type": "application/octet-stream"})
                    counts[f"infer {r.status_code}"] = counts.get(f"infer {r.status_code}", 0) + 1
            elif lm and m.get("kind") == "lm":
                r = await client.post(f"{url}/v1/generate",
                                      json={"model": m["name"], "prompt": "scale", "max_tokens": 1})
                counts[f"generate {r.status_code}"] = counts.get(f"generate {r.status_code}", 0) + 1
        out[name] = counts

    async with httpx.AsyncClient(timeout=60.0, trust_env=False) as client:
        await asyncio.gather(*(node(n, u, client) for n, u in urls.items()))
    return out


def replay(exp_path: Path, targets: dict[str, str], work: Path, cleanup: Cleanup,
           timeout_s: float = 90.0) -> dict[str, Any]:
    """``edgebed run --targets`` as its own process; its peak RSS from wait4's rusage."""
    argv = [PY, "-m", "orchestrator.cli", "run", "--config", str(exp_path), "--no-progress",
            "--targets", ",".join(f"{n}={u}" for n, u in targets.items()),
            "--out", str(work / "run")]
    log = open(work / "logs" / "replay.log", "wb")
    proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    cleanup.add("replay", lambda: _stop_popen(proc))
    t0 = time.monotonic()
    peak_pss = 0
    status = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        with contextlib.suppress(OSError):
            peak_pss = max(peak_pss, memory(proc.pid, group=False)["pss"])
        if time.monotonic() - t0 > timeout_s:
            _stop_popen(proc)
            log.close()
            return {"ok": False, "why": f"did not finish in {timeout_s:.0f} s"}
        time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    log.close()
    tail = (work / "logs" / "replay.log").read_text(errors="replace").strip().splitlines()[-3:]
    return {"ok": proc.returncode == 0, "exit": proc.returncode,
            "peak_rss": usage.ru_maxrss * 1024, "peak_pss_sampled": peak_pss,
            "wall_s": time.monotonic() - t0, "tail": tail}


# ---------------------------------------------------------------------------------- report

def fmt_mib(b: float) -> str:
    return f"{b / MIB:8.1f}"


def node_table(title: str, nodes: dict[str, dict[str, Any]]) -> list[str]:
    lines = [f"## {title}",
             "   ready s: from the first spawn until the node answered /readyz",
             f"{'node':<10} {'class':<6} {'pid':>7} {'ready s':>7} {'RSS MiB':>8} {'PSS MiB':>8} "
             f"{'USS MiB':>8} {'peak RSS':>8}"]
    for name, n in nodes.items():
        m = n["mem"]
        lines.append(f"{name:<10} {n['class']:<6} {n['pid']:>7} {n['ready_s']:>7.1f} "
                     f"{fmt_mib(m['rss'])} {fmt_mib(m['pss'])} {fmt_mib(m['uss'])} "
                     f"{fmt_mib(m['peak_rss'])}")
    by_class: dict[str, list[dict[str, int]]] = {}
    for n in nodes.values():
        by_class.setdefault(n["class"], []).append(n["mem"])
    lines.append(f"{'per class (mean)':<17} {'n':>3} {'RSS MiB':>8} {'PSS MiB':>8} {'USS MiB':>8} "
                 f"{'peak RSS':>8}")
    for cls, ms in by_class.items():
        lines.append(f"{cls:<17} {len(ms):>3} "
                     + " ".join(fmt_mib(float(np.mean([m[k] for m in ms])))
                                for k in ("rss", "pss", "uss", "peak_rss")))
    allm = [n["mem"] for n in nodes.values()]
    lines.append(f"{'all nodes':<17} {len(allm):>3} "
                 + " ".join(fmt_mib(float(np.mean([m[k] for m in allm])))
                            for k in ("rss", "pss", "uss", "peak_rss"))
                 + f"   (max RSS {max(m['rss'] for m in allm) / MIB:.1f}, "
                   f"sum RSS {sum(m['rss'] for m in allm) / MIB:.0f}, "
                   f"sum PSS {sum(m['pss'] for m in allm) / MIB:.0f} MiB)")
    return lines


def fit(nodes: dict[str, dict[str, Any]], budget: float, orch: float, prom: float,
        proxy_base: float, proxy_per: float) -> dict[str, Any]:
    mems = [n["mem"] for n in nodes.values()]
    max_rss = max(m["rss"] for m in mems)
    mean_uss = float(np.mean([m["uss"] for m in mems]))
    # the pages a node shares (interpreter, libraries, model files: the same for every node),
    # resident once however many nodes map them
    shared = float(max(m["rss"] - m["uss"] for m in mems))
    fixed = orch + prom + proxy_base
    cons = math.floor((budget - fixed) / (max_rss + proxy_per))
    real = math.floor((budget - fixed - shared) / (mean_uss + proxy_per))
    return {"budget": budget, "orchestrator": orch, "prometheus": prom, "proxy_base": proxy_base,
            "proxy_per_listener": proxy_per, "max_node_rss": max_rss, "mean_node_uss": mean_uss,
            "shared_once": shared, "conservative_nodes": cons, "sharing_aware_nodes": real}


def fit_lines(label: str, f: dict[str, Any]) -> list[str]:
    b, o, p, pb, pp = (f[k] / MIB for k in ("budget", "orchestrator", "prometheus", "proxy_base",
                                             "proxy_per_listener"))
    return [
        f"{label}:",
        f"  conservative (nothing shared): floor(({b:.0f} - {o:.0f} orchestrator - {p:.0f} "
        f"prometheus - {pb:.1f} proxy base) / ({f['max_node_rss'] / MIB:.1f} max node RSS + "
        f"{pp:.2f} proxy per listener)) = {f['conservative_nodes']} nodes",
        f"  sharing-aware (PSS/USS):       floor(({b:.0f} - {o:.0f} - {p:.0f} - {pb:.1f} - "
        f"{f['shared_once'] / MIB:.0f} shared once) / ({f['mean_node_uss'] / MIB:.1f} mean node "
        f"USS + {pp:.2f})) = {f['sharing_aware_nodes']} nodes",
    ]


# ------------------------------------------------------------------------------------ main

def run(args: argparse.Namespace, cleanup: Cleanup, work: Path) -> dict[str, Any]:
    from orchestrator.experiment import load_experiment
    from orchestrator.stack import links as stack_links
    from orchestrator.stack.manager import free_port

    (work / "logs").mkdir(parents=True, exist_ok=True)
    nodes_plan = node_plan(args.nodes)
    exp_path = write_experiment(work / "bench-scale.yaml", nodes_plan, args.replay_n)
    exp = load_experiment(exp_path)
    load = os.getloadavg()
    print(f"# bench_scale  {args.nodes} nodes ({', '.join(f'{n} ({c})' for n, c in nodes_plan)}); "
          f"host load avg {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} CPUs, "
          f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.1f} GiB")
    print("# memory: /proc/<pid>/smaps_rollup, per process group; USS = Private_Clean + "
          "Private_Dirty; peak RSS = VmHWM")
    result: dict[str, Any] = {"nodes_plan": nodes_plan, "load_avg": load}

    t0 = time.monotonic()
    stack = start_stack_nodes(exp, nodes_plan, work, cleanup)
    print(f"stack nodes (edgebed up's command line) ready in {time.monotonic() - t0:.1f} s")
    tier_urls = {n: v["url"] for n, v in stack.items()}
    plan = stack_links.plan_links(exp, tier_urls, "proxy",
                                  [free_port() for _ in range(len(exp.links) + 2)])
    proxy_n = start_proxy(plan, work, "all", cleanup)
    first = next(iter(proxy_n["links"]))
    proxy_1 = start_proxy(plan, work, "one", cleanup, only=[first])
    via = {name: f"http://{proxy_n['links'][f'device-{name}']}" for name in stack}
    prom = None if args.no_prometheus else start_prometheus(tier_urls, proxy_n["control"],
                                                            work, cleanup)
    t1 = time.monotonic()
    counts = asyncio.run(warm(via, lm=not args.quick, per_model=args.requests))
    asyncio.run(warm({"one": f"http://{proxy_1['links'][first]}"}, lm=False,
                     per_model=args.requests))
    bad = {n: c for n, c in counts.items() if any(not k.endswith(" 200") for k in c)}
    print(f"warm-up through the links in {time.monotonic() - t1:.1f} s: "
          f"{sum(sum(c.values()) for c in counts.values())} requests"
          + (f"; NOT 200: {bad}" if bad else ", all 200"))
    orch: dict[str, Any] = {"ok": False, "why": "skipped (--no-replay)"}
    if not args.no_replay:
        orch = replay(exp_path, via, work, cleanup)
        state = ("ok" if orch["ok"] else
                 f"FAILED ({orch.get('why') or orch.get('exit')}: {orch.get('tail')})")
        print(f"replay ({args.replay_n} requests x {len(exp.policies)} policies through the "
              f"links, edgebed run --targets): {state}")
    for n in stack.values():
        n["mem"] = memory(n["pid"])
    px_n, px_1 = memory(proxy_n["pid"]), memory(proxy_1["pid"])
    prom_mem = memory(prom["pid"]) if prom else None
    n_links = len(proxy_n["links"])
    proxy_per = max(0.0, (px_n["rss"] - px_1["rss"]) / max(1, n_links - 1))
    proxy_base = px_1["rss"] - proxy_per

    print()
    for line in node_table(f"Tier nodes as `edgebed up` starts them ({PY.rsplit('/', 1)[-1]} -m "
                           "services.tier via tier_argv), after warm-up and replay", stack):
        print(line)
    print("\n## Other processes")
    print(f"{'process':<36} {'RSS MiB':>8} {'PSS MiB':>8} {'USS MiB':>8} {'peak RSS':>8}")
    others = [(f"link proxy, {n_links} listeners", px_n), ("link proxy, 1 listener", px_1)]
    if prom is not None and prom_mem is not None:
        others.append((f"prometheus ({time.monotonic() - prom['started']:.0f} s, scrape "
                       f"{prom['interval_s']:g} s)", prom_mem))
    for label, m in others:
        print(f"{label:<36} {fmt_mib(m['rss'])} {fmt_mib(m['pss'])} {fmt_mib(m['uss'])} "
              f"{fmt_mib(m['peak_rss'])}")
    if orch.get("ok"):
        print(f"{'orchestrator (edgebed run), peak':<36} {fmt_mib(orch['peak_rss'])} "
              f"{fmt_mib(orch['peak_pss_sampled'])} {'':>8} {fmt_mib(orch['peak_rss'])}"
              f"   (peak RSS from wait4; PSS: highest sampled every 0.1 s)")
    print(f"link proxy per listener: ({px_n['rss'] / MIB:.1f} - {px_1['rss'] / MIB:.1f}) / "
          f"({n_links} - 1) = {proxy_per / MIB:.2f} MiB")

    orch_b = orch["peak_rss"] if orch.get("ok") else args.orchestrator_allowance_mib * MIB
    prom_b = max(prom_mem["rss"] if prom_mem else 0, args.prometheus_allowance_mib * MIB)
    budget = args.budget_gib * GIB
    f_stack = fit(stack, budget, orch_b, prom_b, proxy_base, proxy_per)
    print(f"\n## Nodes that fit in {args.budget_gib:g} GiB (orchestrator: "
          + ("measured peak" if orch.get("ok") else f"allowance {args.orchestrator_allowance_mib}"
             " MiB (replay not measured)")
          + f"; prometheus: max(measured, {args.prometheus_allowance_mib} MiB allowance: its "
            "head grows with run time))")
    for line in fit_lines("nodes started as `edgebed up` does", f_stack):
        print(line)
    result.update({"stack_nodes": {n: {k: v for k, v in d.items() if k != "rec"}
                                   for n, d in stack.items()},
                   "proxy_n": px_n, "proxy_1": px_1, "proxy_listeners": n_links,
                   "prometheus": prom_mem, "orchestrator": orch, "warm_counts": counts,
                   "fit_stack": f_stack})
    cleanup.run()  # stop this set before the next: memory is measured one set at a time

    if not args.quick:
        t2 = time.monotonic()
        configs = {name: work / "tiers" / f"{name}.yaml" for name, _ in nodes_plan}
        slim = start_slim_nodes(nodes_plan, configs, cleanup)
        print(f"\nslim nodes (python -m services.tier, start_tier) ready in "
              f"{time.monotonic() - t2:.1f} s")
        counts_s = asyncio.run(warm({n: v["url"] for n, v in slim.items()}, lm=False,
                                    per_model=args.requests))
        bad = {n: c for n, c in counts_s.items() if any(not k.endswith(" 200") for k in c)}
        if bad:
            print(f"  NOT 200: {bad}")
        for n in slim.values():
            n["mem"] = memory(n["pid"])
        print()
        for line in node_table("Tier nodes started with the tier's own entry point (python -m "
                               "services.tier), after warm-up (direct)", slim):
            print(line)
        f_slim = fit(slim, budget, orch_b, prom_b, proxy_base, proxy_per)
        print()
        for line in fit_lines("nodes started as `python -m services.tier` (same budget and "
                              "fixed terms)", f_slim):
            print(line)
        result.update({"slim_nodes": slim, "fit_slim": f_slim})
        cleanup.run()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", type=int, default=10, help="tier nodes to start (default 10)")
    ap.add_argument("--quick", action="store_true",
                    help="no LM requests, no second (slim entry point) set of nodes")
    ap.add_argument("--requests", type=int, default=3,
                    help="POST /v1/infer per vision model and node (default 3)")
    ap.add_argument("--replay-n", type=int, default=60,
                    help="requests per policy of the orchestrator's replay (default 60)")
    ap.add_argument("--no-replay", action="store_true", help="do not run the replay")
    ap.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    ap.add_argument("--budget-gib", type=float, default=8.0, help="memory budget (default 8)")
    ap.add_argument("--prometheus-allowance-mib", type=float, default=256.0,
                    help="Prometheus allowance when larger than measured (default 256)")
    ap.add_argument("--orchestrator-allowance-mib", type=float, default=512.0,
                    help="orchestrator allowance when the replay is not measured (default 512)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args(argv)
    if args.nodes < 1:
        ap.error("--nodes must be at least 1")

    cleanup = Cleanup()
    work = Path(tempfile.mkdtemp(prefix="edgebed-bench-scale-"))

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.monotonic()
    try:
        result = run(args, cleanup, work)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping everything started", file=sys.stderr)
        return 130
    finally:
        cleanup.run()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n# took {time.monotonic() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
