"""Fidelity probe: measure a link's achieved round trip and compare it with the configured law.

Works against any ``host:port`` (a proxy link, or a peer shaped by tc netem, e.g. in a VM):

* ``python -m netem.probe serve --bind 0.0.0.0:7007`` — TCP echo server (echoes every byte).
* ``python -m netem.probe rtt --target HOST:PORT --n 500 --rtt-range-ms 30 120`` (or
  ``--delay-ms/--jitter-ms/--distribution/--loss-pct`` for the up direction and
  ``--down-delay-ms ...``, or ``--link-config FILE --link NAME``) — sends N small messages one
  at a time per connection and times each echo; prints a table, ``--json FILE`` writes the report.
* ``python -m netem.probe throughput --target HOST:PORT --bytes 250000`` — bulk echo transfer,
  reports the achieved rate in Mbit/s.
* ``--mode http --path /healthz`` probes an HTTP server (keep-alive GETs) instead of an echo
  server; ``--baseline-target HOST:PORT`` measures the same request sent directly (no link), at
  the link's pace (see :func:`paced_baseline_ms`), and subtracts its median from every RTT, so
  only the link's part is compared.

Report (:func:`fidelity_report`): configured vs achieved mean/p5/p50/p95/std (ms), the
Kolmogorov–Smirnov statistic and p-value of the achieved RTTs against the configured round-trip
law (up ⊕ down, scipy.stats) with a timing tolerance ``ks_tolerance_ms`` (default ±0.5 ms, half
the simulator's 1 ms unit: the empirical CDF counts as off only outside the band between the
configured CDF shifted by ±0.5 ms — see :func:`netem.spec.ks_1samp` — so the sub-ms floor every
real path adds, process wake-ups and the loopback stack, does not make a fixed delay "reject",
while shape errors still do), the raw continuous KS too, and pass/fail flags against the
acceptance tolerances (mean within max(0.5 ms, 2 %), KS p >= 0.01).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from netem.spec import LinkSpec, ks_1samp, load_topology, parse_hostport

DEFAULT_PAYLOAD_BYTES = 64
MEAN_TOL_ABS_MS = 0.5
MEAN_TOL_REL = 0.02
KS_ALPHA = 0.01
MEAN_SE_FACTOR = 3.3  # the mean check can tell only when the tolerance spans this many SEs


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    _nodelay(writer)
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def start_echo_server(host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    """A TCP echo server in the running loop (``server.sockets[0].getsockname()``)."""
    return await asyncio.start_server(_echo, host, port, reuse_address=True)


async def _one_conn_rtts(host: str, port: int, n: int, *, mode: str, payload_bytes: int,
                         path: str, warmup: int, timeout_s: float, gap_s: float) -> list[float]:
    reader, writer = await asyncio.open_connection(host, port)
    _nodelay(writer)
    if mode == "http":
        msg = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edgebed-probe\r\n\r\n".encode()
    else:
        msg = b"p" * payload_bytes
    out: list[float] = []
    try:
        for i in range(n + warmup):
            t0 = time.perf_counter_ns()
            writer.write(msg)
            if mode == "http":
                await asyncio.wait_for(_read_http_response(reader), timeout_s)
            else:
                await asyncio.wait_for(reader.readexactly(len(msg)), timeout_s)
            dt = (time.perf_counter_ns() - t0) / 1e6
            if i >= warmup:
                out.append(dt)
            if gap_s > 0:
                await asyncio.sleep(gap_s)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return out


async def _read_http_response(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)


async def measure_rtts(target: str, n: int = 500, *, mode: str = "echo", concurrency: int = 1,
                       payload_bytes: int = DEFAULT_PAYLOAD_BYTES, path: str = "/healthz",
                       warmup: int = 3, timeout_s: float = 30.0, gap_ms: float = 0.0) -> np.ndarray:
    """N round-trip times in ms to ``target`` (host:port), over ``concurrency`` connections,
    each sending one message at a time (so probes never queue behind each other).

    ``gap_ms``: idle time (untimed) between a reply and the next message on a connection."""
    if mode not in ("echo", "http"):
        raise ValueError(f"mode must be one of echo, http, got {mode!r}")
    host, port = parse_hostport(target, key="target")
    concurrency = max(1, min(concurrency, n))
    shares = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    parts = await asyncio.gather(*(
        _one_conn_rtts(host, port, k, mode=mode, payload_bytes=payload_bytes, path=path,
                       warmup=warmup, timeout_s=timeout_s, gap_s=gap_ms / 1e3) for k in shares))
    return np.array([x for p in parts for x in p])


async def measure_throughput(target: str, n_bytes: int = 250_000, *,
                             chunk_bytes: int = 16384, timeout_s: float = 120.0) -> dict[str, float]:
    """Send ``n_bytes`` through an echo path and time the echoed stream.

    ``rate_mbit`` = bytes after the first read / (last read - first read): the steady rate the
    bottleneck delivered; ``goodput_mbit`` = all bytes / total time (includes the first RTT).
    """
    host, port = parse_hostport(target, key="target")
    reader, writer = await asyncio.open_connection(host, port)
    _nodelay(writer)
    payload = bytes(range(256)) * (chunk_bytes // 256 + 1)

    async def send() -> None:
        left = n_bytes
        while left > 0:
            k = min(left, chunk_bytes)
            writer.write(payload[:k])
            await writer.drain()
            left -= k

    t0 = time.perf_counter()
    sender = asyncio.create_task(send())
    got = 0
    first_t = first_len = 0.0
    last_t = t0
    try:
        async with asyncio.timeout(timeout_s):
            while got < n_bytes:
                data = await reader.read(65536)
                if not data:
                    raise ConnectionError(f"echo closed after {got} of {n_bytes} bytes")
                now = time.perf_counter()
                if got == 0:
                    first_t, first_len = now, len(data)
                got += len(data)
                last_t = now
        await sender
    finally:
        sender.cancel()
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    steady = (got - first_len) * 8 / 1e6 / (last_t - first_t) if last_t > first_t else float("nan")
    return {"bytes": float(got), "duration_s": last_t - t0, "rate_mbit": steady,
            "goodput_mbit": got * 8 / 1e6 / (last_t - t0)}


def _stats(x: np.ndarray) -> dict[str, float]:
    return {"mean_ms": float(np.mean(x)), "p5_ms": float(np.percentile(x, 5)),
            "p50_ms": float(np.percentile(x, 50)), "p95_ms": float(np.percentile(x, 95)),
            "std_ms": float(np.std(x, ddof=1)) if len(x) > 1 else 0.0,
            "min_ms": float(np.min(x)), "max_ms": float(np.max(x))}


def fidelity_report(samples_ms: np.ndarray, link: LinkSpec, *, name: str = "link",
                    baseline_ms: float | None = None, ks_tolerance_ms: float = 0.5,
                    seed: int = 7) -> dict[str, Any]:
    """Configured vs achieved round trip for one link (JSON-ready dict)."""
    raw = np.asarray(samples_ms, dtype=float)
    x = raw - baseline_ms if baseline_ms else raw
    cfg_draws = link.rtt_samples(200_000, np.random.default_rng(seed))
    configured = _stats(cfg_draws)
    configured["mean_ms"] = link.rtt_mean_ms()  # exact (analytic) mean
    achieved = _stats(x)
    cdf = link.rtt_cdf()
    d, p = ks_1samp(x, cdf, tol=ks_tolerance_ms)
    d_raw, p_raw = ks_1samp(x, cdf)
    tol = max(MEAN_TOL_ABS_MS, MEAN_TOL_REL * configured["mean_ms"])
    err = achieved["mean_ms"] - configured["mean_ms"]
    se = achieved["std_ms"] / np.sqrt(len(x)) if len(x) else float("nan")
    return {
        "link": name,
        "n": len(x),
        "configured_law": link.describe(),
        "configured": configured,
        "achieved": achieved,
        "baseline_ms": baseline_ms,
        "mean_error_ms": err,
        "mean_se_ms": se,
        "mean_tolerance_ms": tol,
        "mean_ok": bool(abs(err) <= tol),
        # whether n can tell: a faithful link's mean lands within the tolerance unless the
        # tolerance is under ~3.3 standard errors of the mean (then a miss may be sampling)
        "mean_conclusive": bool(MEAN_SE_FACTOR * se <= tol),
        "ks_tolerance_ms": ks_tolerance_ms,
        "ks_statistic": d,
        "ks_pvalue": p,
        "ks_ok": bool(p >= KS_ALPHA),
        "ks_raw_statistic": d_raw,
        "ks_raw_pvalue": p_raw,
    }


def format_table(reports: list[dict[str, Any]]) -> str:
    """A plain-text table: one row per link, configured / achieved."""
    head = (f"{'link':<16} {'n':>5} {'mean cfg/ach ms':>17} {'p5 cfg/ach':>13} "
            f"{'p50 cfg/ach':>13} {'p95 cfg/ach':>13} {'std cfg/ach':>13} {'KS D':>6} "
            f"{'KS p':>6} {'ok':>3}")
    rows = [head, "-" * len(head)]
    inconclusive = False
    for r in reports:
        c, a = r["configured"], r["achieved"]

        def pair(key: str, c: dict[str, float] = c, a: dict[str, float] = a) -> str:
            return f"{c[key]:.2f}/{a[key]:.2f}"

        ok = "yes" if r["mean_ok"] and r["ks_ok"] else "NO"
        if ok == "NO" and r["ks_ok"] and not r.get("mean_conclusive", True):
            ok, inconclusive = "n?", True
        rows.append(f"{r['link']:<16} {r['n']:>5} {pair('mean_ms'):>17} {pair('p5_ms'):>13} "
                    f"{pair('p50_ms'):>13} {pair('p95_ms'):>13} {pair('std_ms'):>13} "
                    f"{r['ks_statistic']:>6.3f} {r['ks_pvalue']:>6.3f} {ok:>3}")
    if inconclusive:
        rows.append(f"n?: the mean misses its tolerance, but with this many probes "
                    f"{MEAN_SE_FACTOR:g} standard errors exceed the tolerance (sampling can explain "
                    f"it); the KS test does not reject. Probe more to decide.")
    return "\n".join(rows)


BASELINE_MAX_GAP_MS = 100.0


def baseline_gap_ms(link: LinkSpec) -> float:
    """Idle time between baseline probes: the link's median RTT, at most BASELINE_MAX_GAP_MS."""
    median = float(np.median(link.rtt_samples(20_000, np.random.default_rng(0))))
    return min(max(median, 0.0), BASELINE_MAX_GAP_MS)


async def paced_baseline_ms(target: str, link: LinkSpec, n: int = 200, *, mode: str = "echo",
                            concurrency: int = 1, path: str = "/healthz") -> float:
    """Median round trip of the unshaped path, probed at the shaped link's pace.

    Behind a link every endpoint sleeps for about one configured RTT between messages, and a
    process (or a VM's vCPU) woken from idle answers later than a busy one: on the project's
    2-core VM that costs ~0.1-0.2 ms per wake-up. Back-to-back baseline probes would keep the
    endpoints busy, hide that cost and charge it to the link. So each baseline connection idles
    for the link's median RTT (at most ``BASELINE_MAX_GAP_MS``; the median, so a lossy
    zero-delay link, idle only on its rare timeouts, is probed back to back) between probes, at
    the same concurrency as the shaped probes.
    """
    gap_ms = baseline_gap_ms(link)
    await measure_rtts(target, min(n, 20), mode=mode, path=path)  # connect, warm the path
    b = await measure_rtts(target, n, mode=mode, concurrency=concurrency, path=path,
                           gap_ms=gap_ms)
    return float(np.median(b))


async def probe_link(target: str, link: LinkSpec, *, name: str = "link", n: int = 500,
                     mode: str = "echo", concurrency: int = 1, path: str = "/healthz",
                     baseline_target: str | None = None, baseline_n: int = 200,
                     ks_tolerance_ms: float = 0.5) -> dict[str, Any]:
    """Measure ``target`` and build its :func:`fidelity_report` (optionally baseline-corrected,
    see :func:`paced_baseline_ms`)."""
    baseline = None
    if baseline_target:
        baseline = await paced_baseline_ms(baseline_target, link, baseline_n, mode=mode,
                                           concurrency=concurrency, path=path)
    samples = await measure_rtts(target, n, mode=mode, concurrency=concurrency, path=path)
    return fidelity_report(samples, link, name=name, baseline_ms=baseline,
                           ks_tolerance_ms=ks_tolerance_ms)


# ---- command line (also used by ``edgebed link probe|echo``) -------------------------------

def add_law_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configured link (what to compare with)")
    g.add_argument("--link-config", help="topology YAML; with --link NAME")
    g.add_argument("--link", default=None, help="link name in --link-config")
    g.add_argument("--rtt-range-ms", nargs=2, type=int, metavar=("LO", "HI"))
    g.add_argument("--delay-ms", type=float, help="up one-way delay (ms)")
    g.add_argument("--jitter-ms", type=float)
    g.add_argument("--distribution", choices=("uniform", "normal", "pareto"))
    g.add_argument("--loss-pct", type=float)
    g.add_argument("--loss-rto-ms", type=float)
    g.add_argument("--down-delay-ms", type=float)
    g.add_argument("--down-jitter-ms", type=float)
    g.add_argument("--down-distribution", choices=("uniform", "normal", "pareto"))


def link_from_args(args: argparse.Namespace) -> tuple[str, LinkSpec]:
    """The configured link named by the probe's arguments."""
    if args.link_config:
        topo = load_topology(args.link_config)
        if not args.link or args.link not in topo.links:
            raise ValueError(f"--link must be one of {sorted(topo.links)}, got {args.link!r}")
        return args.link, topo.links[args.link]
    if args.rtt_range_ms:
        return args.link or "link", LinkSpec.model_validate(
            {"rtt_range_ms": list(args.rtt_range_ms)})
    up = {k: getattr(args, k) for k in ("delay_ms", "jitter_ms", "distribution", "loss_pct",
                                         "loss_rto_ms") if getattr(args, k) is not None}
    down = {k.removeprefix("down_"): getattr(args, k)
            for k in ("down_delay_ms", "down_jitter_ms", "down_distribution")
            if getattr(args, k) is not None}
    return args.link or "link", LinkSpec.model_validate({"up": up, "down": down})


def add_rtt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", required=True, help="host:port to probe (echo or HTTP server)")
    p.add_argument("--n", type=int, default=500, help="number of probes (default 500)")
    p.add_argument("--concurrency", type=int, default=1, help="parallel probe connections")
    p.add_argument("--mode", choices=("echo", "http"), default="echo")
    p.add_argument("--path", default="/healthz", help="HTTP path for --mode http")
    p.add_argument("--baseline-target", default=None,
                   help="host:port reaching the same server without the link: probed at the "
                        "link's pace (idle one mean RTT between probes), median subtracted")
    p.add_argument("--ks-tolerance-ms", type=float, default=0.5,
                   help="timing tolerance of the KS test (default 0.5 ms; 0 = raw KS)")
    p.add_argument("--json", default=None, help="write the report to this file")
    p.add_argument("--report-to", default=None,
                   help="proxy control URL: publish the report as Prometheus gauges")
    add_law_arguments(p)


def run_rtt(args: argparse.Namespace) -> int:
    try:
        name, link = link_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = asyncio.run(probe_link(
        args.target, link, name=name, n=args.n, mode=args.mode, concurrency=args.concurrency,
        path=args.path, baseline_target=args.baseline_target,
        ks_tolerance_ms=args.ks_tolerance_ms))
    print(format_table([report]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.report_to:
        import httpx

        httpx.put(f"{args.report_to.rstrip('/')}/v1/links/{name}/fidelity", json=report,
                  timeout=10).raise_for_status()
    return 0 if report["mean_ok"] and report["ks_ok"] else 1


def run_serve(args: argparse.Namespace) -> int:
    host, port = parse_hostport(args.bind, key="bind")

    async def main() -> None:
        server = await start_echo_server(host, port)
        addr = server.sockets[0].getsockname()
        print(json.dumps({"ready": True, "echo": f"{addr[0]}:{addr[1]}"}), flush=True)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


def run_throughput(args: argparse.Namespace) -> int:
    res = asyncio.run(measure_throughput(args.target, args.bytes))
    print(json.dumps(res))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m netem.probe", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve", help="run a TCP echo server")
    s.add_argument("--bind", default="127.0.0.1:7007")
    s.set_defaults(func=run_serve)
    r = sub.add_parser("rtt", help="probe round trips and compare with a configured link")
    add_rtt_arguments(r)
    r.set_defaults(func=run_rtt)
    t = sub.add_parser("throughput", help="measure bulk echo throughput (Mbit/s)")
    t.add_argument("--target", required=True)
    t.add_argument("--bytes", type=int, default=250_000)
    t.set_defaults(func=run_throughput)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
