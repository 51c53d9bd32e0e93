"""Benchmark replay across many devices: send precision, aggregate rate, and devices on virtual time.

1. Send lag: ``--devices`` devices (default 10), each open-loop Poisson at ``--rate-per-device``
   req/s (default 100) for ``--duration-s`` s, against zero-work nodes (real tiers, device_time
   real: each answer only runs the ~15 µs LiteRT tinycnn invoke). Every device has its own
   seeded stream; the orchestrator merges them into one send loop. Target: p99 send lag
   <= 2 ms.
2. Aggregate rate: constant arrivals split over the devices at rising aggregate rates; a rate
   is sustained when >= 99 % are answered, the pass ends within 5 % of its schedule and p99
   send lag stays <= 5 ms (the criterion of ``bench/bench_replay.py``). Target: >= 2,000
   req/s.
3. Virtual time: the same device streams and policies through a simulated executor on
   ``VirtualTimeLoop`` (no HTTP), to separate the orchestrator's own cost per request from
   the HTTP path's.
4. The local stack at scale (``edgebed up`` + a run): ``--stack-nodes`` nodes (10: four edges,
   two each of cloud, gpu, npu) and ``--stack-devices`` devices (100, in four cells, one per
   edge, each behind its own access link; backhauls to the cloud site), two policies. Prints
   the stack's start time, RSS per node, the run's records and outcomes.

    python bench/bench_devices.py [--devices 10] [--nodes 2] [--quick] [--no-stack]

One orchestrator process, ``--nodes`` node processes on the same 2-core machine: the figures
say what one host does with client and servers sharing its cores. ``--node-kind tier`` (the
default) runs real tier processes; ``--node-kind responder`` runs a minimal asyncio HTTP
responder per node instead (it answers every request with a real tier's answer, captured at
start), which costs the shared cores far less per request: the figure is then the
orchestrator's own ceiling, not the host's. The output says which.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from orchestrator.client import Attempt  # noqa: E402
from orchestrator.executor import LoopClock, VirtualTimeLoop  # noqa: E402
from orchestrator.experiment import parse_experiment  # noqa: E402
from orchestrator.run import arun_experiment, run_experiment  # noqa: E402
from services.tier.process import start_tier  # noqa: E402


def experiment(devices: int, nodes: int, process: str, rate_per_device: float,
               n_per_device: int, concurrency: int) -> Any:
    tiers = {f"edge-{i}": {"class": "edge", "device_time": "real"} for i in range(nodes)}
    return parse_experiment({
        "name": f"bench-devices-{process}",
        "seeds": 1,
        "tiers": tiers,
        "devices": {"bench": {"count": devices,
                              "arrival": {"process": process,
                                          "params": {"rate_rps": rate_per_device}}}},
        "workload": {"n": n_per_device, "lm_ratio": 0},
        # least_loaded spreads over every edge node by reported load
        "policies": [{"name": "least_loaded", "params": {"cv_model": "tinycnn"}}],
        "replay": {"concurrency": concurrency, "progress": False, "host_lead": "off"},
    })


def one_pass(urls: dict[str, str], exp: Any, out: Path) -> dict[str, float]:
    t0 = time.perf_counter()
    result = run_experiment(exp, out, targets=urls, plots=False, probe=False)
    rec = result.records
    lag = rec["send_lag_ms"].to_numpy()
    return {
        "n": len(rec),
        "ok_pct": 100.0 * float((rec["outcome"] == "ok").mean()),
        "lag_p50_ms": float(np.percentile(lag, 50)),
        "lag_p99_ms": float(np.percentile(lag, 99)),
        "lag_max_ms": float(lag.max()),
        "latency_p50_ms": float(rec["latency_ms"].median()),
        "scheduled_s": float(rec["schedule_s"].max()),
        "pass_s": float(result.passes[0].duration_s) if result.passes else float("nan"),
        "wall_s": time.perf_counter() - t0,
        "devices": int(rec["device"].nunique()),
        "nodes": int(rec["node"].nunique()),
    }


class ZeroExecutor:
    """Answers every attempt at once (no HTTP, no hold): what is left is the orchestrator."""

    async def __aenter__(self) -> ZeroExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def knows(self, group: str, node: str) -> bool:
        return True

    async def attempt(self, route: str, request: Any, *, group: str, timeout_s: float,
                      t_intended: float, host_lead_ms: float = 0.0) -> Attempt:
        await asyncio.sleep(0)
        return Attempt(route=route, outcome="ok", prediction=request.label, confidence=0.9,
                       queue_depth=0, in_service=1)


class _Responder(asyncio.Protocol):
    """HTTP/1.1 keep-alive: every request (head + content-length body) gets ``answer``."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].lower()
            i = head.find(b"content-length:")
            length = int(head[i + 15:].split(b"\r\n", 1)[0]) if i >= 0 else 0
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            assert self.transport is not None
            self.transport.write(self.answer)


def _serve_responder(port: int, answer: bytes) -> None:
    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _Responder(answer), "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(run())


def captured_answer(url: str) -> bytes:
    """A real tier's full HTTP answer to one tinycnn request, as the responders send it."""
    import httpx

    r = httpx.post(f"{url}/v1/infer", params={"model": "tinycnn"}, content=bytes(784),
                   headers={"content-type": "application/octet-stream"}, trust_env=False)
    r.raise_for_status()
    body = r.content
    return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


def start_responders(n: int, answer: bytes, stack: contextlib.ExitStack) -> dict[str, str]:
    urls = {}
    for i in range(n):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = multiprocessing.Process(target=_serve_responder, args=(port, answer), daemon=True)
        proc.start()
        stack.callback(proc.terminate)
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.1):
                break
            time.sleep(0.05)
        urls[f"edge-{i}"] = f"http://127.0.0.1:{port}"
    return urls


def scale_experiment(n_devices: int, per_device: int) -> Any:
    """Four cells of devices, each behind its own edge; a cloud site with two clouds, two GPUs
    and two NPUs behind 20-40 ms backhauls (10 nodes)."""
    edges = [f"edge-{i}" for i in range(1, 5)]
    site = ["cloud-1", "cloud-2", "gpu-1", "gpu-2", "npu-1", "npu-2"]
    tiers: dict[str, Any] = {e: {"class": "edge", "device_time": "profile"} for e in edges}
    tiers.update({n: {"class": n.split("-")[0]} for n in site})
    links: dict[str, Any] = {}
    devices: dict[str, Any] = {}
    for i, edge in enumerate(edges, 1):
        count = n_devices // 4 + (1 if i <= n_devices % 4 else 0)
        devices[f"cell-{i}"] = {"count": count, "attach": edge,
                                "arrival": {"process": "poisson", "params": {"rate_rps": 2}}}
        links[f"cell-{i}-up"] = {"src": f"cell-{i}", "dst": edge, "rtt_range_ms": [2, 6]}
        links[f"{edge}-site"] = {"src": edge, "dst": "cloud-1", "rtt_range_ms": [20, 40]}
    for n in site[1:]:
        links[f"site-{n}"] = {"src": "cloud-1", "dst": n, "rtt_range_ms": [1, 1]}
    return parse_experiment({
        "name": "bench-stack-scale", "seeds": 5, "tiers": tiers, "devices": devices,
        "links": links, "workload": {"n": per_device, "lm_ratio": 0},
        "policies": ["least_loaded", {"name": "nearest", "params": {"node_class": "npu",
                                                                   "cv_model": "int8"}}],
        "replay": {"concurrency": 256, "progress": False}})


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def stack_scale(n_devices: int, per_device: int) -> None:
    from orchestrator.stack import manager
    from orchestrator.stack.demo import run_on_stack

    exp = scale_experiment(n_devices, per_device)
    with tempfile.TemporaryDirectory(prefix="bench-stack-") as d:
        state_dir = Path(d) / "state"
        t0 = time.perf_counter()
        state = manager.up(exp, state_dir, prometheus="off")
        up_s = time.perf_counter() - t0
        try:
            tiers = [p for p in state.processes if p.kind == "tier"]
            links = [p for p in state.processes if p.kind == "link"]
            result, _ = run_on_stack(exp, state, Path(d) / "run", progress=False, plots=False,
                                     log=lambda _: None)
            rss = {p.name: rss_mib(p.pid) for p in tiers}
            proxy_rss = sum(rss_mib(p.pid) for p in links)
        finally:
            manager.down(state_dir)
    rec = result.records
    print(f"\n[4] local stack: {len(exp.tiers)} nodes, {exp.n_devices()} devices in "
          f"{len(exp.devices)} cells, {len(exp.links)} links; up in {up_s:.1f} s")
    print("    RSS per node after the run (MiB): "
          + ", ".join(f"{n} {v:.0f}" for n, v in rss.items())
          + f"; mean {np.mean(list(rss.values())):.1f}, link proxy {proxy_rss:.0f}")
    print(f"    {len(rec)} records ({rec['device'].nunique()} devices x {per_device} x "
          f"{rec['policy'].nunique()} policies), outcomes "
          f"{rec['outcome'].value_counts().to_dict()}, passes "
          + ", ".join(f"{p.policy} {p.duration_s:.1f} s" for p in result.passes)
          + "; per policy deadline met "
          + ", ".join(f"{k} {v:.1f} %" for k, v in
                      (rec.groupby('policy')['deadline_met'].mean() * 100).items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--devices", type=int, default=10)
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--rate-per-device", type=float, default=100.0)
    p.add_argument("--duration-s", type=float, default=20.0)
    p.add_argument("--start-rate-rps", type=float, default=1000.0)
    p.add_argument("--step-rps", type=float, default=250.0, help="rate increment per step")
    p.add_argument("--max-rate-rps", type=float, default=4000.0)
    p.add_argument("--step-duration-s", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=512)
    p.add_argument("--node-kind", choices=("tier", "responder"), default="tier",
                   help="real tier processes, or minimal responders (the orchestrator's ceiling)")
    p.add_argument("--quick", action="store_true", help="5 s lag pass, two rate steps")
    p.add_argument("--no-stack", action="store_true", help="skip [4], the local stack at scale")
    p.add_argument("--stack-devices", type=int, default=100)
    p.add_argument("--stack-per-device", type=int, default=10)
    args = p.parse_args(argv)
    if args.quick:
        args.duration_s, args.max_rate_rps = 5.0, args.start_rate_rps + args.step_rps

    overrides = {"concurrency": 8, "queue_limit": 4096}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-devices-")))
        if args.node_kind == "tier":
            tiers = [stack.enter_context(start_tier(f"edge-{i}", node_class="edge",
                                                    device_time="real",
                                                    config_overrides=overrides))
                     for i in range(args.nodes)]
            urls = {f"edge-{i}": t.url for i, t in enumerate(tiers)}
            kind = "real tier processes (class edge, device_time real, tinycnn)"
        else:
            with start_tier("edge", device_time="real") as tier:
                answer = captured_answer(tier.url)
            urls = start_responders(args.nodes, answer, stack)
            kind = ("minimal asyncio responders, one process each, answering a real tier's "
                    "captured answer")
        print(f"{args.nodes} zero-work nodes: {kind}; {args.devices} devices; host load "
              f"average {os.getloadavg()[0]:.2f}")

        n = max(1, int(args.rate_per_device * args.duration_s))
        exp = experiment(args.devices, args.nodes, "poisson", args.rate_per_device, n,
                         args.concurrency)
        r = one_pass(urls, exp, tmp / "lag")
        verdict = "PASS" if r["lag_p99_ms"] <= 2.0 else "FAIL"
        print(f"\n[1] {args.devices} devices x Poisson {args.rate_per_device:g} req/s for "
              f"{args.duration_s:g} s ({r['n']} requests, {r['devices']} devices, "
              f"{r['nodes']} nodes): send lag p50 {r['lag_p50_ms']:.3f} ms, p99 "
              f"{r['lag_p99_ms']:.3f} ms, max {r['lag_max_ms']:.2f} ms (target p99 <= 2 ms: "
              f"{verdict}); answered {r['ok_pct']:.1f} %, latency p50 "
              f"{r['latency_p50_ms']:.2f} ms")

        print(f"\n[2] aggregate constant rate over {args.devices} devices:")
        print(f"{'rate':>8} {'n':>6} {'ok%':>6} {'lag p50':>8} {'lag p99':>8} {'lat p50':>8} "
              f"{'sched s':>8} {'pass s':>7}  sustained")
        best, rate, k = 0.0, args.start_rate_rps, 0
        while rate <= args.max_rate_rps:
            k += 1
            per = rate / args.devices
            exp = experiment(args.devices, args.nodes, "constant", per,
                             max(1, int(per * args.step_duration_s)), args.concurrency)
            r = one_pass(urls, exp, tmp / f"c{k}")
            ok = (r["ok_pct"] >= 99.0 and r["pass_s"] <= r["scheduled_s"] * 1.05 + 0.05
                  and r["lag_p99_ms"] <= 5.0)
            print(f"{rate:8.0f} {r['n']:6d} {r['ok_pct']:6.1f} {r['lag_p50_ms']:8.3f} "
                  f"{r['lag_p99_ms']:8.3f} {r['latency_p50_ms']:8.2f} {r['scheduled_s']:8.2f} "
                  f"{r['pass_s']:7.2f}  {'yes' if ok else 'no'}")
            if not ok:
                break
            best = rate
            rate += args.step_rps
        verdict = "PASS" if best >= 2000 else "FAIL"
        print(f"\nhighest sustained aggregate rate: {best:.0f} req/s over {args.devices} "
              f"devices and {args.nodes} nodes ({args.node_kind}s; target >= 2000: {verdict})")

    n_virtual = 20_000
    exp = experiment(args.devices, args.nodes, "constant", 100.0, n_virtual // args.devices,
                     args.concurrency)
    t0 = time.perf_counter()
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        with tempfile.TemporaryDirectory(prefix="bench-devices-v-") as d:
            res = runner.run(arun_experiment(exp, d, executor=ZeroExecutor(), clock=LoopClock(),
                                             probe=False, plots=False))
    wall = time.perf_counter() - t0
    print(f"\n[3] virtual time, no HTTP: {len(res.records)} requests of {args.devices} devices "
          f"in {wall:.2f} s wall = {len(res.records) / wall:,.0f} req/s of orchestrator work "
          f"(workload, policy, records, CSV) per core")
    if not args.no_stack:
        stack_scale(args.stack_devices, args.stack_per_device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
