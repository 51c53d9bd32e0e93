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
import struct
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from netem.counters import DIRECTIONS, CounterWindow
from netem.spec import LinkSpec, PathLaw, ks_1samp, load_topology, parse_hostport

RttLaw = LinkSpec | PathLaw  # a link's round-trip law, or a path's (its hops' convolution)

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
                         path: str, warmup: int, timeout_s: float, gap_s: float,
                         warm: Callable[[], Awaitable[None]] | None = None,
                         sizes: dict[str, int] | None = None) -> list[float]:
    reader, writer = await asyncio.open_connection(host, port)
    _nodelay(writer)
    if mode == "http":
        msg = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: edgebed-probe\r\n\r\n".encode()
    else:
        msg = b"p" * payload_bytes
    out: list[float] = []
    try:
        for i in range(n + warmup):
            if i == warmup and warm is not None:
                await warm()  # every connection warm: the counters are read, then timing starts
            t0 = time.perf_counter_ns()
            writer.write(msg)
            if mode == "http":
                got = await asyncio.wait_for(_read_http_response(reader), timeout_s)
            else:
                got = len(await asyncio.wait_for(reader.readexactly(len(msg)), timeout_s))
            if sizes is not None:  # bytes per probe each way (serialization at a rate limit)
                sizes["up"], sizes["down"] = len(msg), max(got, sizes.get("down", 0))
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


async def _read_http_response(reader: asyncio.StreamReader) -> int:
    """Read one response; its size in bytes."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return len(head) + length


async def measure_rtts(target: str, n: int = 500, *, mode: str = "echo", concurrency: int = 1,
                       payload_bytes: int = DEFAULT_PAYLOAD_BYTES, path: str = "/healthz",
                       warmup: int = 3, timeout_s: float = 30.0, gap_ms: float = 0.0,
                       window: CounterWindow | None = None,
                       sizes: dict[str, int] | None = None) -> np.ndarray:
    """N round-trip times in ms to ``target`` (host:port), over ``concurrency`` connections,
    each sending one message at a time (so probes never queue behind each other).

    ``gap_ms``: idle time (untimed) between a reply and the next message on a connection.
    ``window``: the link proxy's counters (:class:`netem.counters.CounterWindow`, built from
    its control URL), read once every connection has finished its ``warmup`` messages and
    again after the last timed probe, so their deltas cover exactly the N timed probes.
    ``sizes`` (a dict) receives the bytes of one probe each way (``up``, ``down``)."""
    if mode not in ("echo", "http"):
        raise ValueError(f"mode must be one of echo, http, got {mode!r}")
    host, port = parse_hostport(target, key="target")
    concurrency = max(1, min(concurrency, n))
    shares = [n // concurrency + (1 if i < n % concurrency else 0) for i in range(concurrency)]
    warm: Callable[[], Awaitable[None]] | None = None
    tasks: list[asyncio.Task[list[float]]] = []
    try:
        async with asyncio.TaskGroup() as tg:
            if window is not None:
                all_warm = asyncio.Barrier(concurrency + 1)
                go = asyncio.Event()

                async def warm() -> None:
                    await all_warm.wait()
                    await go.wait()

                async def open_window() -> None:
                    await all_warm.wait()
                    await window.open()
                    go.set()

                tg.create_task(open_window())
            tasks = [tg.create_task(_one_conn_rtts(
                host, port, k, mode=mode, payload_bytes=payload_bytes, path=path, warmup=warmup,
                timeout_s=timeout_s, gap_s=gap_ms / 1e3, warm=warm, sizes=sizes))
                for k in shares]
    except BaseExceptionGroup as group:  # callers see the first failure itself, as with gather
        raise group.exceptions[0] from None
    if window is not None:
        await window.close()
    return np.array([x for t in tasks for x in t.result()])


SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux


def _stamp_s(anc: list[tuple[int, int, bytes]]) -> float | None:
    """The kernel receive timestamp (CLOCK_REALTIME, s) in a recvmsg's ancillary data."""
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            sec, nsec = struct.unpack_from("qq", payload)
            return sec + nsec * 1e-9
    return None


async def measure_throughput(target: str, n_bytes: int = 250_000, *,
                             chunk_bytes: int = 16384, timeout_s: float = 120.0) -> dict[str, float]:
    """Send ``n_bytes`` through an echo path and time the echoed stream.

    ``rate_mbit`` = bytes after the first read / (arrival of the last byte − arrival of the
    first read's bytes): the steady rate the bottleneck delivered. Arrivals are the kernel's
    receive timestamps (``SO_TIMESTAMPNS``) where available, so a probe process the host
    deschedules before its last read does not stretch the window (on a loaded 2-core VM such
    stalls reach 100-200 ms, several % of a 2 s transfer); ``read_rate_mbit`` is the same
    figure timed at the reads. ``goodput_mbit`` = all bytes / total time (includes the first
    RTT).
    """
    host, port = parse_hostport(target, key="target")
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    anc_space = 0
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        anc_space = socket.CMSG_SPACE(16)
    payload = bytes(range(256)) * (chunk_bytes // 256 + 1)

    async def send() -> None:
        left = n_bytes
        while left > 0:
            k = min(left, chunk_bytes)
            await loop.sock_sendall(sock, payload[:k])
            left -= k

    readable = asyncio.Event()
    got = 0
    first_t = first_len = 0.0
    first_stamp = last_stamp = None
    sender: asyncio.Task[None] | None = None
    try:
        async with asyncio.timeout(timeout_s):
            await loop.sock_connect(sock, addr)
            t0 = last_t = time.perf_counter()
            sender = asyncio.create_task(send())
            loop.add_reader(sock.fileno(), readable.set)
            try:
                while got < n_bytes:
                    await readable.wait()
                    readable.clear()
                    while got < n_bytes:
                        try:
                            data, anc, _, _ = sock.recvmsg(65536, anc_space)
                        except (BlockingIOError, InterruptedError):
                            break
                        if not data:
                            raise ConnectionError(f"echo closed after {got} of {n_bytes} bytes")
                        now = time.perf_counter()
                        stamp = _stamp_s(anc) if anc_space else None
                        if got == 0:
                            first_t, first_len, first_stamp = now, len(data), stamp
                        got += len(data)
                        last_t, last_stamp = now, stamp
            finally:
                loop.remove_reader(sock.fileno())
            await sender
    finally:
        if sender is not None:
            sender.cancel()
        sock.close()
    after_first = (got - first_len) * 8 / 1e6
    read_rate = after_first / (last_t - first_t) if last_t > first_t else float("nan")
    rate = read_rate
    if first_stamp is not None and last_stamp is not None and last_stamp > first_stamp:
        rate = after_first / (last_stamp - first_stamp)
    return {"bytes": float(got), "duration_s": last_t - t0, "rate_mbit": rate,
            "read_rate_mbit": read_rate, "goodput_mbit": got * 8 / 1e6 / (last_t - t0),
            "kernel_stamps": float(first_stamp is not None)}


def _stats(x: np.ndarray) -> dict[str, float]:
    return {"mean_ms": float(np.mean(x)), "p5_ms": float(np.percentile(x, 5)),
            "p50_ms": float(np.percentile(x, 50)), "p95_ms": float(np.percentile(x, 95)),
            "std_ms": float(np.std(x, ddof=1)) if len(x) > 1 else 0.0,
            "min_ms": float(np.min(x)), "max_ms": float(np.max(x))}


CdfFn = Callable[[np.ndarray], np.ndarray]
_CONV_BLOCK = 1_000_000  # law evaluations per block of the convolution (bounds memory)


def convolved_cdf(law_cdf: CdfFn, residuals_ms: np.ndarray) -> CdfFn:
    """CDF of (a draw of ``law_cdf``'s law) + (one of ``residuals_ms``, equally likely): the
    exact convolution of a law with an empirical distribution, ``mean_j F(x - r_j)``."""
    r, counts = np.unique(np.asarray(residuals_ms, dtype=float), return_counts=True)
    weights = counts / counts.sum()

    def cdf(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        flat = x.reshape(-1)
        total = np.zeros(flat.shape)
        step = max(1, _CONV_BLOCK // max(flat.size, 1))
        for i in range(0, len(r), step):
            f = np.asarray(law_cdf(flat[:, None] - r[None, i:i + step]))
            total += f @ weights[i:i + step]
        return total.reshape(x.shape)

    return cdf


KS_BOOT_MAX_REPS = 200  # resolves p down to 1/201, under KS_ALPHA
KS_BOOT_HITS = 10  # sequential Monte Carlo p-value: stop after this many exceedances


def ks_convolved(x: np.ndarray, link: RttLaw, residuals_ms: np.ndarray, *, tol: float,
                 seed: int = 7, max_reps: int = KS_BOOT_MAX_REPS,
                 hits: int = KS_BOOT_HITS) -> tuple[float, float, int]:
    """KS statistic of ``x`` against the configured RTT law convolved with the direct path's
    spread ``residuals_ms`` (baseline RTTs minus their median), with the timing tolerance
    ``tol`` of :func:`netem.spec.ks_1samp`; returns (D, p-value, bootstrap replications).

    The null CDF is estimated from m baseline probes, so D's law is wider than the one-sample
    ``kstwo`` law: for a fixed delay the test *is* a two-sample test of achieved minus
    configured against the baseline's spread. The p-value is a parametric bootstrap of the
    whole procedure under the null: m baseline residuals drawn from the measured ones and
    re-centred on their median (as the real baseline was), n RTTs drawn from configured ⊕
    residual, D of those against their own estimated null. The replications use the plain
    statistic (no tolerance): with the tolerance the test's null is every law within ±``tol``
    of configured ⊕ baseline, and its least favourable member, at the band's edge, has the
    plain statistic's law (as ``kstwo`` was used before; a banded null distribution would sit
    at 0 and make one stray probe outside the band "significant").
    Sequential (Besag & Clifford 1991): it stops after ``hits`` replications reached the
    observed D (p = hits / replications), else runs ``max_reps`` (p = (k + 1) / (max_reps + 1)).
    """
    x = np.asarray(x, dtype=float)
    r = np.asarray(residuals_ms, dtype=float)
    law = link.rtt_cdf()
    d_obs, _ = ks_1samp(x, convolved_cdf(law, r), tol=tol)
    if d_obs <= 0.0:
        return 0.0, 1.0, 0
    rng = np.random.default_rng(seed)
    n, m = len(x), len(r)
    exceed = 0
    for k in range(1, max_reps + 1):
        b = rng.choice(r, m)
        b -= np.median(b)
        xs = link.rtt_samples(n, rng) + rng.choice(r, n)
        d_k, _ = ks_1samp(xs, convolved_cdf(law, b))
        exceed += d_k >= d_obs - 1e-12
        if exceed >= hits:
            return d_obs, exceed / k, k
    return d_obs, (exceed + 1) / (max_reps + 1), max_reps


def drawn_reference(deltas: dict[str, dict[str, float]] | None, link: LinkSpec, n: int, *,
                    error: str | None = None) -> dict[str, Any]:
    """The mean round trip the link drew for exactly ``n`` probes, from the proxy's counter
    deltas (:meth:`netem.counters.CounterWindow.deltas`), when every shaped direction drew
    exactly one delay per probe (one message: ``messages`` = n; with loss also one chunk,
    since loss penalties are drawn per chunk); else why not. Returns ``{"drawn_mean_ms",
    "chunks", "messages", "reason"}`` (``drawn_mean_ms`` None when the counters cannot be
    used)."""
    if deltas is None:
        return {"drawn_mean_ms": None, "chunks": None, "messages": None,
                "reason": error or "no proxy control URL given (control_url=, --control)"}
    chunks = {d: round(deltas[d]["chunks"]) for d in DIRECTIONS}
    messages = {d: round(deltas[d].get("messages", deltas[d]["chunks"])) for d in DIRECTIONS}
    shaped = [d for d in DIRECTIONS
              if not getattr(link, d).is_zero or deltas[d]["drawn_s"] > 0]
    off = [f"{d}: {messages[d]} messages in {chunks[d]} chunks" for d in shaped
           if messages[d] != n or (chunks[d] != n and getattr(link, d).loss_pct)]
    if off:
        return {"drawn_mean_ms": None, "chunks": chunks, "messages": messages, "reason": (
            f"the proxy's counts do not match one message per probe per shaped direction "
            f"({', '.join(off)} for {n} probes: other traffic on the link, a rate limit's "
            f"segments, or, under loss, messages split over several reads)")}
    drawn_ms = 1e3 * sum(deltas[d]["drawn_s"] for d in shaped) / n if n else 0.0
    per = ", ".join(f"{d}: {messages[d]}" for d in shaped) or "no shaped direction"
    return {"drawn_mean_ms": drawn_ms, "chunks": chunks, "messages": messages,
            "reason": f"one message per probe per shaped direction ({per} for {n} probes)"}


def drawn_reference_path(deltas_by_link: Mapping[str, dict[str, dict[str, float]]] | None,
                         law: PathLaw, n: int, *, error: str | None = None,
                         proxy_links: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`drawn_reference` of a path: the sum over its hops of what each hop drew for
    exactly ``n`` probes, when every hop shows one message per probe per shaped direction
    (counters of each hop's link, :meth:`netem.counters.CounterWindow.deltas_by_link`;
    ``proxy_links``: the hops' link names at the proxy, default the law's hop names).
    Returns ``{"drawn_mean_ms", "chunks", "messages", "reason", "by_hop"}`` with ``chunks``
    and ``messages`` keyed by hop."""
    names = list(proxy_links) if proxy_links is not None else law.hop_names
    if deltas_by_link is None:
        return {"drawn_mean_ms": None, "chunks": None, "messages": None, "by_hop": None,
                "reason": error or "no proxy control URL given (control_url=, --control)"}
    by_hop = {hop: drawn_reference(deltas_by_link[link], spec, n)
              for (hop, spec), link in zip(law.hops, names, strict=True)}
    out: dict[str, Any] = {"chunks": {h: r["chunks"] for h, r in by_hop.items()},
                           "messages": {h: r["messages"] for h, r in by_hop.items()},
                           "by_hop": {h: r["drawn_mean_ms"] for h, r in by_hop.items()}}
    off = [f"hop {h}: {r['reason']}" for h, r in by_hop.items() if r["drawn_mean_ms"] is None]
    if off:
        return {**out, "drawn_mean_ms": None, "reason": "; ".join(off)}
    return {**out, "drawn_mean_ms": float(sum(r["drawn_mean_ms"] for r in by_hop.values())),
            "reason": f"one message per probe per shaped direction on every hop "
                      f"({len(by_hop)} hops, {n} probes)"}


def fidelity_report(samples_ms: np.ndarray, link: RttLaw, *, name: str = "link",
                    baseline_ms: float | None = None,
                    baseline_samples_ms: np.ndarray | None = None,
                    drawn: dict[str, Any] | None = None, ks_tolerance_ms: float = 0.5,
                    seed: int = 7, serialization_ms: float = 0.0) -> dict[str, Any]:
    """Configured vs achieved round trip for one link, or one path when ``link`` is a
    :class:`netem.spec.PathLaw` (JSON-ready dict, no NaN; a path's report adds ``hops``,
    ``configured_path`` and ``drawn_by_hop``).

    ``baseline_samples_ms``: the direct path's RTTs (:func:`paced_baseline`); their median is
    subtracted from every sample and the KS null becomes configured ⊕ (baseline − median), the
    law a faithful link yields on this host (``baseline_ms`` is for callers that only have a
    median: then the null is the configured law alone). ``drawn``: :func:`drawn_reference`;
    when it has a drawn mean, the mean is judged against it (common random numbers), else
    against the configured mean. ``serialization_ms``: the time a probe's own bytes take at the
    link's rate limits (:func:`serialization_ms`), a known constant subtracted from every
    sample before the law is judged (the law is the delay; the rate adds bytes ÷ rate).
    """
    raw = np.asarray(samples_ms, dtype=float)
    n = len(raw)
    base = None if baseline_samples_ms is None else np.asarray(baseline_samples_ms, dtype=float)
    if base is not None and len(base):
        baseline_ms = float(np.median(base))
    else:
        base = None
    x = raw - baseline_ms if baseline_ms else raw
    x = x - serialization_ms
    residuals = None if base is None else base - float(np.median(base))
    host_offset = 0.0 if residuals is None else float(np.mean(residuals))
    rng = np.random.default_rng(seed)
    cfg_draws = link.rtt_samples(200_000, rng)
    configured = _stats(cfg_draws)
    configured["mean_ms"] = link.rtt_mean_ms()  # exact (analytic) mean
    achieved = _stats(x)
    null = configured if residuals is None else _stats(cfg_draws + rng.choice(residuals,
                                                                               len(cfg_draws)))
    # KS: the configured law alone (raw), and the verdict's null (convolved with the baseline)
    d_raw, p_raw = ks_1samp(x, link.rtt_cdf(), tol=ks_tolerance_ms)
    if residuals is None:
        d, p, reps = d_raw, p_raw, 0
    else:
        d, p, reps = ks_convolved(x, link, residuals, tol=ks_tolerance_ms, seed=seed)
    # mean: against the mean the link drew for these probes when the proxy's counters say so
    if drawn is None:
        drawn = (drawn_reference_path(None, link, n) if isinstance(link, PathLaw)
                 else drawn_reference(None, link, n))
    drawn_mean = drawn.get("drawn_mean_ms")
    reference = configured["mean_ms"] if drawn_mean is None else float(drawn_mean)
    tol = max(MEAN_TOL_ABS_MS, MEAN_TOL_REL * configured["mean_ms"])
    err = achieved["mean_ms"] - (reference + host_offset)
    if drawn_mean is None:  # sampling of the law and of the host
        se: float | None = achieved["std_ms"] / np.sqrt(n) if n else None
    elif residuals is not None:  # the law's sampling is gone; the host's remains
        se = float(np.std(residuals, ddof=1)) * np.sqrt(1 / max(n, 1) + 1 / len(residuals)) \
            if len(residuals) > 1 else None
    else:
        se = None
    law_se = configured["std_ms"] / np.sqrt(n) if n else 0.0
    return {
        "link": name,
        "n": n,
        "configured_law": link.describe(),
        "configured": configured,
        "achieved": achieved,
        "baseline_ms": baseline_ms,
        # subtracted from every sample: the probe's bytes at the configured rate limits
        "serialization_ms": serialization_ms,
        "baseline": None if base is None else {"n": len(base), **_stats(base)},
        # achieved = RTT - baseline median, so a faithful link's mean is reference + this
        # (mean - median of the direct path: the host's skew)
        "host_offset_ms": host_offset,
        "null_law": link.describe() + ("" if residuals is None else
                                       f" ⊕ direct-path spread ({len(residuals)} probes)"),
        "null": null,
        "mean_reference": "configured" if drawn_mean is None else "drawn",
        "mean_reference_reason": drawn["reason"],
        "drawn_mean_ms": drawn_mean,
        "drawn_chunks": drawn.get("chunks"),
        "drawn_messages": drawn.get("messages"),
        # the luck of these n draws: drawn mean - configured mean, in standard errors of the law
        "drawn_sampling_se_ms": law_se,
        "drawn_sampling_z": (None if drawn_mean is None or law_se == 0
                             else (float(drawn_mean) - configured["mean_ms"]) / law_se),
        "expected_mean_ms": reference + host_offset,
        "mean_error_ms": err,
        "configured_mean_error_ms": achieved["mean_ms"] - configured["mean_ms"] - host_offset,
        "mean_se_ms": se,
        "mean_tolerance_ms": tol,
        "mean_ok": bool(abs(err) <= tol),
        # whether n can tell: a faithful link's mean lands within the tolerance unless the
        # tolerance is under ~3.3 standard errors of the mean (then a miss may be sampling)
        "mean_conclusive": bool(se is None or MEAN_SE_FACTOR * se <= tol),
        "ks_tolerance_ms": ks_tolerance_ms,
        "ks_null": "configured" if residuals is None else "configured+baseline",
        "ks_statistic": d,
        "ks_pvalue": p,
        "ks_pvalue_method": "kstwo" if residuals is None else f"bootstrap, {reps} replications",
        "ks_ok": bool(p >= KS_ALPHA),
        "ks_raw_statistic": d_raw,
        "ks_raw_pvalue": p_raw,
        **({} if not isinstance(link, PathLaw) else {
            "hops": link.hop_names,
            "configured_path": link.summary(),
            "drawn_by_hop": drawn.get("by_hop"),
        }),
    }


def format_table(reports: list[dict[str, Any]]) -> str:
    """A plain-text table: one row per link, configured / achieved, the drawn mean when the
    proxy's counters gave one, and what the verdict is based on (``ref``: the mean's reference,
    drawn or configured; ``KS D``/``p``: against the configured law ⊕ the direct path's spread
    when baseline samples were taken, ``raw D``: against the configured law alone)."""
    head = (f"{'link':<16} {'n':>5} {'mean cfg/drawn/ach':>20} {'p5 cfg/ach':>13} "
            f"{'p50 cfg/ach':>13} {'p95 cfg/ach':>13} {'std cfg/ach':>13} {'raw D':>6} "
            f"{'KS D':>6} {'KS p':>6} {'ref':>5} {'ok':>3}")
    rows = [head, "-" * len(head)]
    notes: list[str] = []
    inconclusive = False
    for r in reports:
        c, a = r["configured"], r["achieved"]

        def pair(key: str, c: dict[str, float] = c, a: dict[str, float] = a) -> str:
            return f"{c[key]:.2f}/{a[key]:.2f}"

        ok = "yes" if r["mean_ok"] and r["ks_ok"] else "NO"
        if ok == "NO" and r["ks_ok"] and not r.get("mean_conclusive", True):
            ok, inconclusive = "n?", True
        drawn = r.get("drawn_mean_ms")
        mean = f"{c['mean_ms']:.2f}/{'-' if drawn is None else f'{drawn:.2f}'}/{a['mean_ms']:.2f}"
        ref = "drawn" if r.get("mean_reference") == "drawn" else "cfg"
        raw_d = r.get("ks_raw_statistic", r["ks_statistic"])
        rows.append(f"{r['link']:<16} {r['n']:>5} {mean:>20} {pair('p5_ms'):>13} "
                    f"{pair('p50_ms'):>13} {pair('p95_ms'):>13} {pair('std_ms'):>13} "
                    f"{raw_d:>6.3f} {r['ks_statistic']:>6.3f} {r['ks_pvalue']:>6.3f} "
                    f"{ref:>5} {ok:>3}")
        reason = r.get("mean_reference_reason", "")
        if ref == "cfg" and reason and not reason.startswith("no proxy control URL"):
            notes.append(f"{r['link']}: mean judged against the configured mean: {reason}")
    rows += notes
    if inconclusive:
        rows.append(f"n?: the mean misses its tolerance, but with this many probes "
                    f"{MEAN_SE_FACTOR:g} standard errors exceed the tolerance (sampling can explain "
                    f"it); the KS test does not reject. Probe more to decide (or give the "
                    f"proxy's control URL: the drawn mean removes the law's sampling).")
    return "\n".join(rows)


BASELINE_MAX_GAP_MS = 100.0


def baseline_gap_ms(link: RttLaw) -> float:
    """Idle time between baseline probes: the link's median RTT, at most BASELINE_MAX_GAP_MS."""
    median = float(np.median(link.rtt_samples(20_000, np.random.default_rng(0))))
    return min(max(median, 0.0), BASELINE_MAX_GAP_MS)


async def paced_baseline(target: str, link: RttLaw, n: int = 200, *, mode: str = "echo",
                         concurrency: int = 1, path: str = "/healthz") -> np.ndarray:
    """Round trips (ms) of the unshaped path, probed at the shaped link's pace.

    Behind a link every endpoint sleeps for about one configured RTT between messages, and a
    process (or a VM's vCPU) woken from idle answers later than a busy one: on the project's
    2-core VM that costs ~0.1-0.2 ms per wake-up. Back-to-back baseline probes would keep the
    endpoints busy, hide that cost and charge it to the link. So each baseline connection idles
    for the link's median RTT (at most ``BASELINE_MAX_GAP_MS``; the median, so a lossy
    zero-delay link, idle only on its rare timeouts, is probed back to back) between probes, at
    the same concurrency as the shaped probes. All samples are returned: their median is
    subtracted from the link's RTTs and their spread is part of the fidelity test's null.
    """
    gap_ms = baseline_gap_ms(link)
    await measure_rtts(target, min(n, 20), mode=mode, path=path)  # connect, warm the path
    return await measure_rtts(target, n, mode=mode, concurrency=concurrency, path=path,
                              gap_ms=gap_ms)


async def paced_baseline_ms(target: str, link: RttLaw, n: int = 200, *, mode: str = "echo",
                            concurrency: int = 1, path: str = "/healthz") -> float:
    """Median of :func:`paced_baseline`."""
    return float(np.median(await paced_baseline(target, link, n, mode=mode,
                                                concurrency=concurrency, path=path)))


def serialization_ms(law: LinkSpec | PathLaw, sizes: Mapping[str, int]) -> float:
    """Milliseconds a probe of ``sizes`` bytes (``up``, ``down``) spends being serialized at
    the rate limits of ``law``'s hops (each hop, each direction: bytes × 8 ÷ rate; 0 without a
    rate). The link proxy releases a message ``bytes ÷ rate`` after its drawn delay, so this
    is what a faithful rate-limited link adds to an idle probe's round trip."""
    hops = [s for _, s in law.hops] if isinstance(law, PathLaw) else [law]
    total = 0.0
    for spec in hops:
        for direction in ("up", "down"):
            rate = getattr(spec, direction).rate_bytes_per_s
            if rate:
                total += sizes.get(direction, 0) / rate * 1e3
    return total


async def probe_link(target: str, link: LinkSpec, *, name: str = "link", n: int = 500,
                     mode: str = "echo", concurrency: int = 1, path: str = "/healthz",
                     baseline_target: str | None = None, baseline_n: int = 200,
                     ks_tolerance_ms: float = 0.5, control_url: str | None = None,
                     proxy_link: str | None = None) -> dict[str, Any]:
    """Measure ``target`` and build its :func:`fidelity_report`: baseline-corrected when
    ``baseline_target`` is given (see :func:`paced_baseline`); with the proxy's ``control_url``
    its counters for link ``proxy_link`` (default ``name``) are read around the timed probes,
    so the mean is judged against what the link drew for them (:func:`drawn_reference`)."""
    base = None
    if baseline_target:
        base = await paced_baseline(baseline_target, link, baseline_n, mode=mode,
                                    concurrency=concurrency, path=path)
    window = None if control_url is None else CounterWindow(control_url, proxy_link or name)
    sizes: dict[str, int] = {}
    samples = await measure_rtts(target, n, mode=mode, concurrency=concurrency, path=path,
                                 window=window, sizes=sizes)
    drawn = None if window is None else drawn_reference(window.deltas(), link, len(samples),
                                                        error=window.error)
    return fidelity_report(samples, link, name=name, baseline_samples_ms=base, drawn=drawn,
                           ks_tolerance_ms=ks_tolerance_ms,
                           serialization_ms=serialization_ms(link, sizes))


async def probe_path(target: str, hops: PathLaw | Mapping[str, LinkSpec] |
                     Sequence[tuple[str, LinkSpec]], *, name: str = "path", n: int = 500,
                     mode: str = "echo", concurrency: int = 1, path: str = "/healthz",
                     baseline_target: str | None = None, baseline_n: int = 200,
                     ks_tolerance_ms: float = 0.5, control_url: str | None = None,
                     proxy_links: Sequence[str] | None = None) -> dict[str, Any]:
    """:func:`probe_link` for a multi-hop path: ``target`` is the path's public listener,
    ``hops`` its hops in order (a :class:`netem.spec.PathLaw`, e.g.
    ``Topology.path_law(name)``, or ``{link name: LinkSpec}``). The configured law is the
    convolution of the hops' RTT laws (KS null: summed draws of every hop ⊕ the direct path's
    spread when ``baseline_target`` is given); with the proxy's ``control_url`` the counters
    of every hop's link (``proxy_links``, default the hop names) are read around the timed
    probes and the mean is judged against the sum of what the hops drew for them
    (:func:`drawn_reference_path`). ``path`` is the HTTP path of ``mode="http"``, as in
    :func:`probe_link`. Report: :func:`fidelity_report`'s keys (``link`` = ``name``) plus
    ``hops``, ``configured_path`` and ``drawn_by_hop``."""
    law = hops if isinstance(hops, PathLaw) else PathLaw(name, hops)
    links = list(proxy_links) if proxy_links is not None else law.hop_names
    if len(links) != len(law.hops):
        raise ValueError(f"proxy_links must name one link per hop ({len(law.hops)}), got "
                         f"{len(links)}")
    base = None
    if baseline_target:
        base = await paced_baseline(baseline_target, law, baseline_n, mode=mode,
                                    concurrency=concurrency, path=path)
    window = None if control_url is None else CounterWindow(control_url, links)
    sizes: dict[str, int] = {}
    samples = await measure_rtts(target, n, mode=mode, concurrency=concurrency, path=path,
                                 window=window, sizes=sizes)
    drawn = None if window is None else drawn_reference_path(
        window.deltas_by_link(), law, len(samples), error=window.error, proxy_links=links)
    return fidelity_report(samples, law, name=name, baseline_samples_ms=base, drawn=drawn,
                           ks_tolerance_ms=ks_tolerance_ms,
                           serialization_ms=serialization_ms(law, sizes))


# ---- command line (also used by ``edgebed link probe|echo``) -------------------------------

def add_law_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("configured link (what to compare with)")
    g.add_argument("--link-config", help="topology YAML; with --link NAME")
    g.add_argument("--link", default=None,
                   help="link name in --link-config (or a path's name: probed as the path)")
    g.add_argument("--rtt-range-ms", nargs=2, type=int, metavar=("LO", "HI"))
    g.add_argument("--delay-ms", type=float, help="up one-way delay (ms)")
    g.add_argument("--jitter-ms", type=float)
    g.add_argument("--distribution", choices=("uniform", "normal", "pareto"))
    g.add_argument("--loss-pct", type=float)
    g.add_argument("--loss-rto-ms", type=float)
    g.add_argument("--down-delay-ms", type=float)
    g.add_argument("--down-jitter-ms", type=float)
    g.add_argument("--down-distribution", choices=("uniform", "normal", "pareto"))


def link_from_args(args: argparse.Namespace) -> tuple[str, RttLaw]:
    """The configured link (or path: a :class:`netem.spec.PathLaw`) named by the probe's
    arguments."""
    if args.link_config:
        topo = load_topology(args.link_config)
        if args.link and args.link in topo.paths:
            return args.link, topo.path_law(args.link)
        if not args.link or args.link not in topo.links:
            raise ValueError(f"--link must be one of {sorted(topo.links)}"
                             + (f" or a path: {sorted(topo.paths)}" if topo.paths else "")
                             + f", got {args.link!r}")
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
    p.add_argument("--token-file", default=None,
                   help="file holding the proxy control API's token (for --report-to)")
    p.add_argument("--control", default=None,
                   help="the link proxy's control URL: read its counters around the timed "
                        "probes and judge the mean against what the link drew for them "
                        "(needs --link: the link's name at the proxy)")
    add_law_arguments(p)


def run_rtt(args: argparse.Namespace) -> int:
    try:
        name, link = link_from_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kw: dict[str, Any] = {"name": name, "n": args.n, "mode": args.mode,
                          "concurrency": args.concurrency, "path": args.path,
                          "baseline_target": args.baseline_target,
                          "ks_tolerance_ms": args.ks_tolerance_ms, "control_url": args.control}
    report = asyncio.run(probe_path(args.target, link, **kw) if isinstance(link, PathLaw)
                         else probe_link(args.target, link, **kw))
    print(format_table([report]))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.report_to:
        import httpx

        from netem.auth import auth_headers, read_token_file

        try:
            token = read_token_file(args.token_file) if args.token_file else None
        except ValueError as exc:
            print(f"error: --token-file: {exc}", file=sys.stderr)
            return 2
        kind = "paths" if isinstance(link, PathLaw) else "links"
        httpx.put(f"{args.report_to.rstrip('/')}/v1/{kind}/{name}/fidelity", json=report,
                  headers=auth_headers(token), timeout=10, trust_env=False).raise_for_status()
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
