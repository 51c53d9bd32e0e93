"""Userspace link proxy: asyncio TCP forwarders that impose a :class:`LinkSpec`, with a control API.

Per connection and per direction (``up`` = client -> target, ``down`` = target -> client), each
chunk read from one socket is released to the other at::

    ready   = arrival + draw            # draw from the direction's delay law (netem.spec), one
                                        # per message: a chunk that arrives within
                                        # MESSAGE_GAP_S of the previous one (an HTTP head and
                                        # its body, a rate-limited chunk's segments) shares its
                                        # draw, so a message split in two does not pay the
                                        # larger of two draws
    release = max(previous release, ready) + len(chunk) / rate   # never reordered; rate: FIFO
                                                                  # serialiser (token bucket with
                                                                  # no burst), chunks split to
                                                                  # segments of >= 1 ms / 1448 B
Loss: TCP hides loss from applications, so a "lost" chunk is delivered late: with probability
``loss_pct``/100 per chunk its draw gets ``loss_rto_ms`` (default 200 ms, Linux's minimum RTO)
added, and — as with TCP's in-order delivery — later chunks wait behind it.

A chunk's ``arrival`` is the kernel's receive timestamp of its bytes (``SO_TIMESTAMPNS``, read
with ``recvmsg`` by :class:`_StampedReader`), as netem stamps a packet when it is queued: a
proxy that wakes late to read a chunk still releases it on time. Where the kernel gives no
stamp, arrival is when the proxy read it. Releases are timed by a ``timerfd`` in the event loop
(:class:`LoopTimer`): asyncio's own timers round to whole milliseconds. For tight timing tails
on a busy host run the subprocess with ``--realtime`` (SCHED_FIFO, needs root), as netem's
kernel timers effectively are.

Run N links in one process::

    links = await serve_links(topology, control="127.0.0.1:0")   # netem.spec.Topology
    links.address("device-edge")  # -> ("127.0.0.1", 40123)
    await links.close()

Multi-hop paths (``topology.paths``, :class:`netem.spec.PathSpec`): a path [L1, ..., Lk] gets
k chained listeners in the same set: its public ``listen`` shapes with L1's
:class:`LinkRuntime` and forwards to an internal loopback listener (port 0) shaping with L2's,
..., the last forwards to the path's ``target``. Each hop's listener *shares* the link's
runtime (law, per-direction RNG stream, counters, cut flag), so a change to L2 changes every
path through L2 at once and L2's counters count everything that crosses it. Delays add up hop
by hop for real: hop 2 stamps a chunk's arrival when hop 1 released it.

or as a subprocess: ``python -m netem.proxy --config links.yaml`` (prints one JSON line with the
bound addresses once listening; stops cleanly on SIGTERM/SIGINT). Control API (JSON):
``GET /v1/links``, ``GET|PUT /v1/links/{name}``, ``PUT /v1/links/{name}/fidelity``,
``GET /v1/paths``, ``GET /v1/paths/{name}``, ``PUT /v1/paths/{name}/fidelity``,
``GET /healthz``, ``GET /metrics``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import heapq
import itertools
import json
import os
import random
import selectors
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import CollectorRegistry
from pydantic import ValidationError

from netem.auth import read_token_file
from netem.control import ChangeError, create_control_app, link_view, merge_spec
from netem.metrics import LinkMetrics
from netem.sched import PollingEpollSelector, polling_loop_factory, set_realtime
from netem.spec import (
    DirectionSpec,
    LinkSpec,
    PathLaw,
    PathSpec,
    Topology,
    load_topology,
    parse_hostport,
)

__all__ = ["LinkProxySet", "create_control_app", "link_view", "merge_spec", "proxy_subprocess",
           "serve_links"]

HIGH_WATER_BYTES = 4 * 1024 * 1024
LOW_WATER_BYTES = 1024 * 1024
MIN_SEGMENT_BYTES = 1448
MESSAGE_GAP_S = 0.002  # chunks closer than this belong to one message: one delay draw
HOP_LOG_MAX = 200_000  # most recent tagged messages kept for GET /v1/hops
TAG_HEADER = b"\r\nx-edgebed-attempt:"  # the orchestrator's attempt tag in a request head
TAG_SCAN_BYTES = 4096
EARLY_S = 20e-6  # release a chunk this close to its time without another timer round
MAX_LEAD_S = 300e-6  # at most this much wake-up lag is compensated
LEAD_GAIN = 0.05
READ_BYTES = 256 * 1024  # per recvmsg, as asyncio's transports read
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; SCM_TIMESTAMPNS is the same
_CMSG_SPACE = socket.CMSG_SPACE(16) if hasattr(socket, "CMSG_SPACE") else 0
KERNEL_STAMPS = bool(_CMSG_SPACE) and sys.platform.startswith("linux")  # recvmsg + SO_TIMESTAMPNS


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class LoopTimer:
    """Calls ``cb()`` in the event loop at ``time.monotonic()`` instants, µs-precise.

    asyncio's (and uvloop's) own timers round to whole milliseconds. On Linux this arms a
    ``timerfd`` (CLOCK_MONOTONIC, absolute, no timer slack) watched by the loop's selector; on
    other systems it falls back to a thread sleeping on a condition variable that hands due
    callbacks to the loop (``call_soon_threadsafe``).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._armed: float | None = None
        self.lead_s = 0.0  # EWMA of how late wake-ups are; releases happen this much earlier
        self._fd = -1
        self._libc: Any = None
        self._dispatching = False  # inside _on_timerfd's release loop
        self._after: list[Callable[[], None]] = []  # deferred to the end of that loop
        self._thread: threading.Thread | None = None
        self._cond = threading.Condition()
        self._stop = False
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(None, use_errno=True)
                fd = libc.timerfd_create(1, os.O_NONBLOCK | os.O_CLOEXEC)  # CLOCK_MONOTONIC
                if fd >= 0:
                    self._libc, self._fd = libc, fd
                    loop.add_reader(fd, self._on_timerfd)
        selector = getattr(loop, "_selector", None)
        self.spinning = (self._fd >= 0 and isinstance(selector, PollingEpollSelector)
                         and selector.spin_s > 0)
        if self.spinning and selector is not None:  # polls up to each release: no lead to learn
            selector.set_deadline_source(self._fd, self._next_deadline)
        if self._fd < 0:
            self._thread = threading.Thread(target=self._thread_run, daemon=True,
                                            name="edgebed-link-timer")
            self._thread.start()

    @property
    def kind(self) -> str:
        if self.spinning:
            return "timerfd+spin"
        return "timerfd" if self._fd >= 0 else "thread"

    def _next_deadline(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def call_at(self, when: float, cb: Callable[[], None]) -> None:
        """Call ``cb`` at ``when``, armed ``lead_s`` early to cancel the typical wake-up lag."""
        when -= self.lead_s
        if self._fd >= 0:
            heapq.heappush(self._heap, (when, next(self._seq), cb))
            if self._armed is None or when < self._armed:
                self._arm(when)
            return
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), cb))
            if self._heap[0][0] == when:
                self._cond.notify()

    def after_dispatch(self, cb: Callable[[], None]) -> None:
        """Call ``cb`` once the due releases of the current timer wake-up are written and
        their lateness sampled (now, outside a wake-up), so work it triggers (the next hop of a
        path reading what a release wrote) neither delays other due releases nor inflates the
        learned lead."""
        if self._dispatching:
            self._after.append(cb)
        else:
            cb()

    def _arm(self, when: float) -> None:
        ns = max(1, int(when * 1e9))
        spec = _Itimerspec(_Timespec(0, 0), _Timespec(ns // 1_000_000_000, ns % 1_000_000_000))
        self._libc.timerfd_settime(self._fd, 1, ctypes.byref(spec), None)  # TFD_TIMER_ABSTIME
        self._armed = when

    def _on_timerfd(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            os.read(self._fd, 8)
        armed, self._armed = self._armed, None
        now = time.monotonic()
        first = True
        self._dispatching = True
        try:
            while self._heap and self._heap[0][0] <= now + EARLY_S:
                _, _, cb = heapq.heappop(self._heap)
                cb()
                now = time.monotonic()
                if first and armed is not None and not self.spinning:
                    # lateness of the first callback's work (the release's write), relative to
                    # the armed instant: the wake-up lag plus the loop's dispatch, cancelled
                    # next time
                    late = min(max(now - armed, 0.0), MAX_LEAD_S)
                    self.lead_s += LEAD_GAIN * (late - self.lead_s)
                first = False
        finally:
            self._dispatching = False
        if self._heap:
            self._arm(self._heap[0][0])
        after, self._after = self._after, []
        for cb in after:
            cb()

    def _thread_run(self) -> None:
        with self._cond:
            while not self._stop:
                if not self._heap:
                    self._cond.wait()
                    continue
                delta = self._heap[0][0] - time.monotonic()
                if delta > 0:
                    self._cond.wait(delta)
                    continue
                _, _, cb = heapq.heappop(self._heap)
                with contextlib.suppress(RuntimeError):  # loop already closed
                    self.loop.call_soon_threadsafe(cb)

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
        if self._thread is not None:
            with self._cond:
                self._stop = True
                self._cond.notify()
            self._thread.join(timeout=2)


class LinkRuntime:
    """One configured link: its current spec (changeable at runtime), RNGs and metrics."""

    def __init__(self, name: str, spec: LinkSpec, metrics: LinkMetrics, seed: int) -> None:
        self.name = name
        self.spec = spec
        self.metrics = metrics
        base = zlib.crc32(name.encode())
        self.rng = {"up": random.Random(seed * 1_000_003 + base * 2),
                    "down": random.Random(seed * 1_000_003 + base * 2 + 1)}
        self.address: tuple[str, int] | None = None  # its own listener (listen/target), if any
        self.server: asyncio.base_events.Server | None = None
        self.connections: set[_Connection] = set()  # all crossing it: own and path listeners
        self.paths: list[str] = []  # paths with this link as a hop
        self.cut = False  # a partition: nothing is released until the link is healed
        metrics.init_link(name, spec)

    def set_cut(self, cut: bool) -> None:
        """Cut (partition) or heal the link. While cut, chunks are held where they are, as
        TCP keeps unacknowledged data while a path is down; on healing each waits out the rest
        of its own delay (if any) and everything flows again, in order."""
        was, self.cut = self.cut, bool(cut)
        if was and not self.cut:
            for conn in list(self.connections):
                for pipe in (conn.up, conn.down):
                    if pipe.queue:
                        pipe._wake()

    def direction(self, d: str) -> DirectionSpec:
        return self.spec.up if d == "up" else self.spec.down

    def set_spec(self, spec: LinkSpec) -> None:
        self.spec = spec
        self.metrics.set_configured(self.name, spec)


@dataclass
class _Listener:
    """One TCP listener: shapes with ``link``'s runtime and forwards to ``target``."""

    key: str  # the config key it serves, for errors: links.NAME or paths.NAME.hops[i]
    link: LinkRuntime
    target: str  # host:port
    internal: bool = False  # a path's later hop: only the previous hop's listener dials it
    dials_internal: bool = False  # its target is the next hop's internal listener
    server: asyncio.base_events.Server | None = None
    address: tuple[str, int] | None = None


class PathRuntime:
    """One multi-hop path: its spec, its hops' (shared) link runtimes and its chained
    listeners, ``listeners[0]`` the public one."""

    def __init__(self, name: str, spec: PathSpec, hops: list[LinkRuntime]) -> None:
        self.name = name
        self.spec = spec
        self.hops = hops
        self.listeners: list[_Listener] = []

    @property
    def address(self) -> tuple[str, int] | None:
        return self.listeners[0].address if self.listeners else None

    def law(self) -> PathLaw:
        """The configured law now (the hops' current specs)."""
        return PathLaw(self.name, [(h.name, h.spec) for h in self.hops])


def _hostport_text(addr: tuple[str, int]) -> str:
    host = f"[{addr[0]}]" if ":" in addr[0] else addr[0]
    return f"{host}:{addr[1]}"


def request_tag(data: bytes) -> str | None:
    """The ``x-edgebed-attempt`` header's value when ``data`` starts an HTTP request head that
    carries one (the orchestrator tags each attempt ``<request id>/<route>``), else None."""
    head = data[:TAG_SCAN_BYTES]
    i = head.lower().find(TAG_HEADER)
    if i < 0:
        return None
    j = head.find(b"\r\n", i + len(TAG_HEADER))
    value = head[i + len(TAG_HEADER): j if j >= 0 else len(head)].strip()
    try:
        return value.decode("ascii")[:200] or None
    except UnicodeDecodeError:
        return None


class HopRecord:
    """One tagged message crossing one hop: from the kernel's arrival stamp of its first byte
    to the write of its last byte (the drawn delay, rate shaping, and this proxy's own
    lateness)."""

    __slots__ = ("arrival", "direction", "done", "link", "seq", "tag")

    def __init__(self, seq: int, tag: str, link: str, direction: str, arrival: float) -> None:
        self.seq, self.tag, self.link, self.direction = seq, tag, link, direction
        self.arrival = arrival
        self.done = float("nan")

    def as_row(self) -> list[Any]:
        return [self.seq, self.tag, self.link, self.direction,
                round((self.done - self.arrival) * 1e3, 4)]


class _Pipe:
    """One direction of one connection: delays, shapes and forwards chunks in order."""

    def __init__(self, conn: _Connection, direction: str) -> None:
        self.conn = conn
        self.direction = direction
        self.link = conn.link
        m = conn.link.metrics
        self.m_bytes = m.bytes.labels(self.link.name, direction)
        self.m_chunks = m.chunks.labels(self.link.name, direction)
        self.m_drops = m.drops.labels(self.link.name, direction)
        self.m_drawn = m.drawn.labels(self.link.name, direction)
        self.m_messages = m.messages.labels(self.link.name, direction)
        self.m_delay = m.delay.labels(self.link.name, direction)
        self.queue: collections.deque[tuple[float, bytes, float, HopRecord | None]] = \
            collections.deque()
        self.hop: HopRecord | None = None  # the tagged message being received
        self.queued_bytes = 0
        self.last_release = 0.0
        self.last_arrival = -1.0  # when the previous chunk arrived, and the draw it got
        self.last_draw_ms = 0.0
        self.armed_for: float | None = None
        self.src: _Side | None = None  # the side this direction reads from
        self.dst: asyncio.Transport | None = None
        self.dst_side: _Side | None = None  # the side owning ``dst``
        self.finish: str | None = None  # "eof" or "close" once the source is done
        self.paused_src = False
        self.pending: list[bytes] = []  # released before the destination connected
        self.eof_sent = False  # the source's EOF was passed on (write_eof) to the destination

    def _hop_record(self, data: bytes, arrival: float) -> HopRecord | None:
        """A hop record for a message that starts with ``data``: requests carry their attempt
        tag; an answer belongs to the last request tagged on this connection."""
        if self.direction == "up":
            tag = request_tag(data)
            self.conn.tag = tag
        else:
            tag = self.conn.tag
        if tag is None:
            return None
        return self.conn.proxy.log_hop(tag, self.link.name, self.direction, arrival)

    def _write(self, data: bytes) -> None:
        if self.dst is None:
            self.pending.append(data)
        elif not self.dst.is_closing():
            self.dst.write(data)

    def _hand_over(self) -> None:
        """After writing to a socket whose other end is a listener of this same proxy (the
        next hop of a path, or on the way back the previous one), read that end now.

        On loopback a write has reached the peer socket (and its kernel arrival stamp is
        taken) when ``send`` returns; reading it at once, instead of in the event loop's next
        iteration, saves each chained hop a pass through the selector. The peer hop still
        reads it from its own socket with its own stamp and shapes it with its own law: only
        the wait for the next loop iteration goes."""
        side = self.dst_side
        peer = side.peer if side is not None else None
        if peer is None or peer.reader is None or self.dst is None:
            return
        if self.dst.get_write_buffer_size():
            return  # not all of it reached the socket: the loop reads it when it does
        timer = self.conn.proxy.timer
        if timer is not None:
            timer.after_dispatch(peer.reader.read_ready)
        else:
            peer.reader.read_ready()

    def attach(self, side: _Side) -> None:
        """Set the destination and flush anything released before it existed."""
        assert side.transport is not None
        self.dst = dst = side.transport
        self.dst_side = side
        for data in self.pending:
            dst.write(data)
        self.pending.clear()
        if not self.queue:
            self._maybe_finish()

    def feed(self, data: bytes, arrival: float | None = None) -> None:
        """Queue ``data`` read from the source; ``arrival`` (``time.monotonic()``) is when its
        bytes reached the proxy's socket (the kernel's stamp), else now."""
        spec = self.link.direction(self.direction)
        now = time.monotonic() if arrival is None else arrival
        n = len(data)
        self.m_bytes.inc(n)
        new_message = now - self.last_arrival >= MESSAGE_GAP_S
        if new_message:
            self.hop = self._hop_record(data, now)
        if not self.queue and spec.is_zero and spec.rate_mbit is None and not self.link.cut:
            self.last_arrival = now
            self.m_chunks.inc()
            self.m_delay.observe(0.0)
            self._write(data)
            if self.hop is not None:
                self.hop.done = time.monotonic()
            self._hand_over()
            return
        rng = self.link.rng[self.direction]
        rate = spec.rate_bytes_per_s
        seg = n if rate is None else max(MIN_SEGMENT_BYTES, int(rate * 0.001))
        if new_message:  # a new message: a new draw
            self.last_draw_ms = spec.sample_base_ms(rng)
            self.m_messages.inc()
            self.m_drawn.inc(self.last_draw_ms / 1000.0)
        self.last_arrival = now
        for off in range(0, n, seg):
            part = data[off:off + seg] if seg < n else data
            draw_ms = self.last_draw_ms
            if spec.loss_pct and rng.random() < spec.loss_ratio:
                draw_ms += spec.loss_rto_ms
                self.m_drops.inc()
                self.m_drawn.inc(spec.loss_rto_ms / 1000.0)
            release = max(now + draw_ms / 1000.0, self.last_release)
            if rate is not None:
                release += len(part) / rate
            self.last_release = release
            self.queue.append((release, part, now, self.hop))
            self.queued_bytes += len(part)
            self.m_chunks.inc()
        if self.queued_bytes > HIGH_WATER_BYTES and self.src is not None and not self.paused_src:
            self.paused_src = True
            self.src.pause_reading()
        if self.queue[0][0] <= time.monotonic() + EARLY_S:
            self._wake()  # already due (a zero draw, or a read later than the draw): no timer
        else:
            self._arm()

    def _arm(self) -> None:
        if not self.queue:
            return
        head = self.queue[0][0]
        if self.armed_for is not None and self.armed_for <= head:
            return
        self.armed_for = head
        timer = self.conn.proxy.timer
        assert timer is not None
        timer.call_at(head - EARLY_S, self._wake)

    def _wake(self) -> None:
        self.armed_for = None
        if self.link.cut:
            return  # held until LinkRuntime.set_cut(False) wakes this pipe again
        timer = self.conn.proxy.timer
        now = time.monotonic()
        horizon = now + EARLY_S + (timer.lead_s if timer is not None else 0.0)
        wrote = False
        while self.queue and self.queue[0][0] <= horizon:
            _, part, arrival, hop = self.queue.popleft()
            self.queued_bytes -= len(part)
            self.m_delay.observe(max(0.0, now - arrival))
            self._write(part)
            if hop is not None:
                hop.done = time.monotonic()
            wrote = True
        if self.paused_src and self.queued_bytes < LOW_WATER_BYTES and self.src is not None:
            self.paused_src = False
            self.src.resume_reading()
        if self.queue:
            self._arm()
        else:
            self._maybe_finish()
        if wrote:
            self._hand_over()

    def end(self, how: str) -> None:
        self.finish = how
        if not self.queue:
            self._maybe_finish()

    def _maybe_finish(self) -> None:
        if self.finish is None or self.dst is None or self.dst.is_closing():
            return
        if self.finish == "eof" and self.dst.can_write_eof():
            self.dst.write_eof()
            self.eof_sent = True
            other = self.conn.down if self is self.conn.up else self.conn.up
            if other.eof_sent:  # both directions ended: nothing more can cross, close both
                self.conn.close()  # sockets (else they stayed open until the proxy stopped)
        else:
            self.dst.close()


class _StampedReader:
    """Reads one side's socket with ``recvmsg`` to get each chunk's kernel receive timestamp.

    The side's transport keeps the socket for writing and closing but never reads it (it stays
    paused); this reader watches a duplicate of the socket's descriptor in the event loop, so
    the loop's one-reader-per-fd rule holds. EOF and errors are handed to the side as the
    transport would have done.
    """

    def __init__(self, side: _Side, sock: socket.socket) -> None:
        self.side = side
        self.loop = asyncio.get_running_loop()
        self.sock = socket.socket(fileno=os.dup(sock.fileno()))
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.paused = True
        self.done = False  # EOF seen, failed or closed

    @classmethod
    def attach(cls, side: _Side, sock: socket.socket | None) -> _StampedReader | None:
        """A reader for ``sock`` where the platform has recvmsg and SO_TIMESTAMPNS, else None."""
        if sock is None or not KERNEL_STAMPS:
            return None
        try:
            return cls(side, sock)
        except OSError:
            return None

    def pause(self) -> None:
        if not self.paused and not self.done:
            self.loop.remove_reader(self.sock.fileno())
        self.paused = True

    def resume(self) -> None:
        if self.paused and not self.done:
            self.loop.add_reader(self.sock.fileno(), self._on_readable)
        self.paused = False

    def close(self) -> None:
        if not self.done:
            self.pause()
            self.done = True
        if self.sock.fileno() >= 0:
            self.sock.close()

    def read_ready(self) -> None:
        """Read now what the socket holds, as the event loop would when it reports it
        readable (a hand-over from the hop writing to it; nothing happens if nothing is there
        or reading is paused)."""
        if not self.paused and not self.done:
            self._on_readable()

    def _on_readable(self) -> None:
        try:
            data, anc, _, _ = self.sock.recvmsg(READ_BYTES, _CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by the peer, ...
            self.close()
            if self.side.transport is not None:
                self.side.transport.abort()  # connection_lost follows, as for a read error
            return
        if not data:
            self.close()
            self.side.eof_received()
            return
        self.side.data_received(data, _arrival(anc))


def _arrival(anc: list[tuple[int, int, bytes]]) -> float | None:
    """The ``time.monotonic()`` instant of a chunk's SCM_TIMESTAMPNS stamp (CLOCK_REALTIME),
    or None without one; never later than now nor more than 1 s earlier (clock steps)."""
    for level, kind, payload in anc:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            sec, nsec = struct.unpack_from("qq", payload)
            now = time.monotonic()
            stamped = sec + nsec * 1e-9 - (time.time() - now)
            return min(now, max(stamped, now - 1.0))
    return None


class _Side(asyncio.Protocol):
    """One socket of a proxied connection (``client``: accepted, ``target``: dialled)."""

    def __init__(self, conn: _Connection, name: str) -> None:
        self.conn = conn
        self.name = name  # "client" or "target"
        self.transport: asyncio.Transport | None = None
        self.reader: _StampedReader | None = None
        self.peer: _Side | None = None  # this proxy's side at the other end of its socket
        self.peer_key: tuple[Any, ...] | None = None  # while waiting for that side to appear

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass
        sock = transport.get_extra_info("socket")
        with contextlib.suppress(OSError):
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.conn.proxy.stamps:
            self.reader = _StampedReader.attach(self, sock)
            if self.reader is not None:
                transport.pause_reading()  # type: ignore[attr-defined]  # the reader reads
        self.conn.made(self)

    def pause_reading(self) -> None:
        if self.reader is not None:
            self.reader.pause()
        elif self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.reader is not None:
            self.reader.resume()
        elif self.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    def data_received(self, data: bytes, arrival: float | None = None) -> None:
        (self.conn.up if self.name == "client" else self.conn.down).feed(data, arrival)

    def eof_received(self) -> bool:
        (self.conn.up if self.name == "client" else self.conn.down).end("eof")
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.reader is not None:
            self.reader.close()
        self.conn.proxy.unpair(self)
        self.conn.lost(self)

    def pause_writing(self) -> None:  # our transport is full: stop reading the other side
        other = self.conn.target if self.name == "client" else self.conn.client
        if other is not None:
            other.pause_reading()

    def resume_writing(self) -> None:
        other = self.conn.target if self.name == "client" else self.conn.client
        if other is not None:
            other.resume_reading()


class _Connection:
    def __init__(self, proxy: LinkProxySet, link: LinkRuntime, target: str, *,
                 internal: bool = False, dials_internal: bool = False) -> None:
        self.proxy = proxy
        self.link = link
        self.target_address = target  # host:port: the link's target or a path's next hop
        self.internal = internal  # accepted by a path's internal listener (hop 2, 3, ...)
        self.dials_internal = dials_internal  # its target is the next hop's internal listener
        self.loop = asyncio.get_running_loop()
        self.client: _Side | None = None
        self.target: _Side | None = None
        self.up = _Pipe(self, "up")
        self.down = _Pipe(self, "down")
        self.closed = False
        self.tag: str | None = None  # the attempt tag of the last request on this connection

    def client_protocol(self) -> _Side:
        self.client = _Side(self, "client")
        return self.client

    def target_protocol(self) -> _Side:
        self.target = _Side(self, "target")
        return self.target

    def made(self, side: _Side) -> None:
        if side is self.client:
            assert side.transport is not None
            side.pause_reading()  # until the target is connected
            self.link.connections.add(self)
            self.link.metrics.connections.labels(self.link.name).inc()
            self.link.metrics.open_connections.labels(self.link.name).inc()
            self.up.src = side
            self.down.attach(side)
            if self.internal:  # the previous hop's dialled side is the other end
                self.proxy.pair(side, side.transport.get_extra_info("peername"))
            self.proxy.spawn(self._connect())
        else:
            assert side.transport is not None and self.client is not None
            self.down.src = side
            self.up.attach(side)
            if self.dials_internal:  # the next hop's accepted side is the other end
                self.proxy.pair(side, side.transport.get_extra_info("sockname"))
            if self.closed or self.client.transport is None or self.client.transport.is_closing():
                side.transport.close()  # the client left while we were connecting
                return
            side.resume_reading()
            self.client.resume_reading()

    async def _connect(self) -> None:
        host, port = parse_hostport(self.target_address, key="target")
        try:
            await self.loop.create_connection(self.target_protocol, host, port)
        except OSError:
            self.link.metrics.connect_errors.labels(self.link.name).inc()
            if self.client is not None and self.client.transport is not None:
                self.client.transport.close()

    def lost(self, side: _Side) -> None:
        if side is self.client:
            self.up.end("close")
            if not self.closed:
                self.closed = True
                self.link.connections.discard(self)
                self.link.metrics.open_connections.labels(self.link.name).dec()
        else:
            self.down.end("close")

    def close(self) -> None:
        """Close both sockets once their buffered bytes are written."""
        for side in (self.client, self.target):
            if side is not None and side.transport is not None:
                side.transport.close()

    def abort(self) -> None:
        for side in (self.client, self.target):
            if side is not None and side.transport is not None:
                side.transport.abort()


class ListenError(OSError):
    """A link's or the control API's address cannot be bound; the message names which."""


def _why(exc: OSError) -> str:
    return os.strerror(exc.errno) if exc.errno else str(exc)


class LinkProxySet:
    """Proxies for several links in one event loop, plus the optional control API server."""

    def __init__(self, topology: Topology, *, registry: CollectorRegistry | None = None,
                 stamps: bool = True, token: str | None = None) -> None:
        self.topology = topology
        self.stamps = stamps  # anchor delays at the kernel's receive timestamps (Linux)
        self.token = token  # the control API's PUTs need "Authorization: Bearer <token>"
        self.metrics = LinkMetrics(registry)
        self.links: dict[str, LinkRuntime] = {
            name: LinkRuntime(name, spec, self.metrics, topology.seed)
            for name, spec in topology.links.items()
        }
        self.paths: dict[str, PathRuntime] = {}
        for name, path in topology.paths.items():  # Topology checked the hops exist and chain
            hops = [self.links[h] for h in path.hops]
            self.paths[name] = PathRuntime(name, path, hops)
            for h in hops:
                h.paths.append(name)
        self.listeners: list[_Listener] = []
        self.timer: LoopTimer | None = None
        self.control_address: tuple[str, int] | None = None
        self._uvicorn: uvicorn.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unpaired: dict[Any, _Side] = {}  # loopback address -> side awaiting its peer
        self.hop_log: collections.deque[HopRecord] = collections.deque(maxlen=HOP_LOG_MAX)
        self._hop_seq = 0

    def log_hop(self, tag: str, link: str, direction: str, arrival: float) -> HopRecord:
        """Start the record of a tagged message crossing ``link`` (``GET /v1/hops``)."""
        self._hop_seq += 1
        rec = HopRecord(self._hop_seq, tag, link, direction, arrival)
        self.hop_log.append(rec)
        return rec

    def hops_after(self, seq: int, limit: int) -> tuple[list[list[Any]], int]:
        """Finished hop records with a sequence number above ``seq`` (at most ``limit``), and
        the sequence number to ask after next time."""
        out: list[list[Any]] = []
        last = seq
        for rec in self.hop_log:
            if rec.seq <= seq:
                continue
            if rec.done != rec.done:  # not written out yet: stop here, ask again later
                break
            out.append(rec.as_row())
            last = rec.seq
            if len(out) >= limit:
                break
        return out, last

    def pair(self, side: _Side, address: Any) -> None:
        """Record that ``side``'s socket is one end of the loopback connection ``address``
        (the dialling end's local address) between two chained hops of a path; once both ends
        are known each is the other's ``peer`` (see :meth:`_Pipe._hand_over`)."""
        if not isinstance(address, tuple):
            return
        key = tuple(address[:2])
        other = self._unpaired.pop(key, None)
        if other is None or other.name == side.name:  # (a stale entry: replaced)
            if other is not None:
                other.peer_key = None
            self._unpaired[key] = side
            side.peer_key = key
        else:  # one dialled ("target") end, one accepted ("client") end
            side.peer, other.peer = other, side
            other.peer_key = None

    def unpair(self, side: _Side) -> None:
        key = side.peer_key
        if key is not None and self._unpaired.get(key) is side:
            del self._unpaired[key]
        side.peer_key = None
        if side.peer is not None:
            side.peer.peer = None
            side.peer = None

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def address(self, name: str) -> tuple[str, int]:
        """Where link or path ``name`` listens (a path: its public listener, the first hop)."""
        if name in self.paths:
            addr = self.paths[name].address
            what = "path"
        elif name in self.links:
            addr = self.links[name].address
            what = "link"
        else:
            raise KeyError(f"unknown link or path {name!r}; links: "
                           f"{', '.join(sorted(self.links)) or '(none)'}; paths: "
                           f"{', '.join(sorted(self.paths)) or '(none)'}")
        if addr is None:
            used = f" (it has no listen/target of its own; only paths cross it: " \
                   f"{', '.join(self.links[name].paths)})" if what == "link" and \
                self.links[name].paths else ""
            raise KeyError(f"{what} {name!r} is not listening{used}")
        return addr

    def url(self, name: str) -> str:
        host, port = self.address(name)
        return f"http://{host}:{port}"

    @property
    def control_url(self) -> str | None:
        if self.control_address is None:
            return None
        return f"http://{self.control_address[0]}:{self.control_address[1]}"

    async def _listen(self, listener: _Listener, listen: str) -> None:
        loop = asyncio.get_running_loop()
        host, port = parse_hostport(listen, key="listen")

        def factory() -> asyncio.Protocol:
            return _Connection(self, listener.link, listener.target, internal=listener.internal,
                               dials_internal=listener.dials_internal).client_protocol()

        try:
            server = await loop.create_server(factory, host, port, reuse_address=True)
        except OSError as exc:
            raise ListenError(f"{listener.key}: cannot listen on {host}:{port}: "
                              f"{_why(exc)}") from None
        listener.server = server
        sockname = server.sockets[0].getsockname()
        listener.address = (sockname[0], sockname[1])
        self.listeners.append(listener)

    async def start(self, control: str | None = None) -> None:
        self.timer = LoopTimer(asyncio.get_running_loop())
        for link in self.links.values():
            if link.spec.target is None:
                if link.paths and link.spec.listen is None:
                    continue  # only crossed by paths: no listener of its own
                raise ValueError(f"links.{link.name}.target must be host:port, got None"
                                 + (" (a link only paths cross needs no listen either)"
                                    if link.paths else ""))
            listener = _Listener(f"links.{link.name}.listen", link, link.spec.target)
            await self._listen(listener, link.spec.listen or "127.0.0.1:0")
            link.server, link.address = listener.server, listener.address
        for path in self.paths.values():
            if path.spec.target is None:
                raise ValueError(f"paths.{path.name}.target must be host:port, got None")
            # bind from the last hop back: each hop forwards to the next one's address
            chain: list[_Listener] = []
            target = path.spec.target
            for i in range(len(path.hops) - 1, -1, -1):
                key = (f"paths.{path.name}.listen" if i == 0 else
                       f"paths.{path.name}.hops[{i}] (internal listener)")
                listener = _Listener(key, path.hops[i], target, internal=i > 0,
                                     dials_internal=i < len(path.hops) - 1)
                await self._listen(listener, (path.spec.listen or "127.0.0.1:0") if i == 0
                                   else "127.0.0.1:0")
                assert listener.address is not None
                target = _hostport_text(listener.address)
                chain.insert(0, listener)
            path.listeners = chain
        if control is not None:
            await self._start_control(control)

    async def _start_control(self, control: str) -> None:
        host, port = parse_hostport(control, key="control")
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        except OSError as exc:
            sock.close()
            raise ListenError(f"control: cannot listen on {host}:{port}: {_why(exc)}") from None
        self.control_address = (host, sock.getsockname()[1])
        config = uvicorn.Config(create_control_app(self, self.token), log_level="warning",
                                lifespan="off", access_log=False)
        self._uvicorn = uvicorn.Server(config)
        self.spawn(self._uvicorn.serve(sockets=[sock]))
        for _ in range(500):
            if self._uvicorn.started:
                return
            await asyncio.sleep(0.01)
        raise RuntimeError("control API did not start within 5 s")

    def update(self, name: str, changes: Mapping[str, Any]) -> LinkSpec:
        """Merge ``changes`` into link ``name``'s spec (``cut``: partition or heal it);
        raises ValidationError/ChangeError/KeyError."""
        link = self.links[name]
        changes = dict(changes)
        cut = changes.pop("cut", None)
        if cut is not None and not isinstance(cut, bool):
            raise ChangeError("cut", f"cut must be true or false, got {cut!r}")
        spec = merge_spec(link.spec, changes) if changes else link.spec
        link.set_spec(spec)
        if cut is not None:
            link.set_cut(cut)
        return link.spec

    async def close(self) -> None:
        for listener in self.listeners:
            if listener.server is not None:
                listener.server.close()
        for link in self.links.values():
            for conn in list(link.connections):
                conn.abort()
        for listener in self.listeners:
            if listener.server is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(listener.server.wait_closed(), 2)
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self.timer is not None:
            self.timer.close()

    async def __aenter__(self) -> LinkProxySet:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def serve_links(topology: Topology | Mapping[str, LinkSpec | Mapping[str, Any]], *,
                      control: str | None = None, seed: int | None = None,
                      registry: CollectorRegistry | None = None,
                      stamps: bool = True, token: str | None = None,
                      paths: Mapping[str, PathSpec | Mapping[str, Any]] | None = None,
                      ) -> LinkProxySet:
    """Start one proxy per link (each link needs ``target``, unless only paths cross it;
    ``listen`` defaults to ``127.0.0.1:0``) and the chained listeners of every path in the
    running loop, plus the control API when ``control`` (host:port, port 0 = any) or
    ``topology.control`` is set. ``topology`` may be a mapping of links, then ``paths`` (a
    mapping of :class:`netem.spec.PathSpec`) gives its paths. ``stamps``: anchor each
    chunk's delay at the kernel's receive timestamp (else at the time the proxy read it).
    ``token``: the control API's PUTs need ``Authorization: Bearer <token>`` (GETs stay open).
    Close with ``await result.close()``."""
    if not isinstance(topology, Topology):
        topology = Topology.model_validate({"links": dict(topology), "seed": seed or 0,
                                            "paths": dict(paths or {})})
    else:
        if paths is not None:
            topology = Topology.model_validate({**topology.model_dump(), "paths": dict(paths)})
        if seed is not None:
            topology = topology.model_copy(update={"seed": seed})
    proxies = LinkProxySet(topology, registry=registry, stamps=stamps, token=token)
    try:
        await proxies.start(control or topology.control)
    except BaseException:
        await proxies.close()
        raise
    return proxies


def ready_line(proxies: LinkProxySet, **extra: Any) -> str:
    """The JSON line the subprocess prints once listening."""
    return json.dumps({
        "ready": True,
        "pid": os.getpid(),
        "control": proxies.control_url,
        "timer": proxies.timer.kind if proxies.timer is not None else None,
        "arrival": "kernel receive timestamps" if proxies.stamps and KERNEL_STAMPS
                   else "read time",
        "control_auth": "bearer token" if proxies.token else "none",
        **extra,
        "links": {n: _hostport_text(lk.address) for n, lk in proxies.links.items()
                  if lk.address is not None},
        "paths": {n: _hostport_text(p.address) for n, p in proxies.paths.items()
                  if p.address is not None},
    })


async def _main_async(topology: Topology, control: str | None, stamps: bool = True,
                      token: str | None = None, **extra: Any) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def request_stop(*_: object) -> None:
        loop.call_soon_threadsafe(stop.set)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, request_stop)
    proxies = await serve_links(topology, control=control, stamps=stamps, token=token)
    print(ready_line(proxies, **extra), flush=True)
    try:
        await stop.wait()
    finally:
        await proxies.close()


def _run(coro: Any, poll_us: float = 0.0, spin_us: float = 0.0) -> Any:
    """Run the proxy's loop: a busy-polling epoll loop when ``poll_us`` > 0 on Linux (see
    :class:`netem.sched.PollingEpollSelector`), else uvloop when installed, else asyncio's."""
    if (poll_us > 0 or spin_us > 0) and hasattr(selectors, "EpollSelector"):
        with asyncio.Runner(loop_factory=polling_loop_factory(poll_us, spin_us)) as runner:
            return runner.run(coro)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


@contextlib.contextmanager
def proxy_subprocess(
    links: Mapping[str, Mapping[str, Any]], *, seed: int = 1, control: bool = True,
    realtime: bool = False, token_file: str | Path | None = None,
    paths: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[dict[str, Any]]:
    """Run ``python -m netem.proxy`` for ``links`` ({name: LinkSpec fields with ``target``})
    and ``paths`` ({name: PathSpec fields}); yields its ready line (``links``/``paths``: name →
    host:port, ``control``) plus ``process``; the proxy is always terminated and waited for
    afterwards. ``token_file``: ``--token-file``."""
    import yaml

    doc: dict[str, Any] = {"links": {n: dict(v) for n, v in links.items()}, "seed": seed}
    if paths:
        doc["paths"] = {n: {k: list(v) if k == "hops" else v for k, v in dict(p).items()}
                        for n, p in paths.items()}
    if control:
        doc["control"] = "127.0.0.1:0"
    fd, path = tempfile.mkstemp(prefix="edgebed-links-", suffix=".yaml")
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(doc, fh)
    repo = Path(__file__).resolve().parents[1]
    argv = [sys.executable, "-m", "netem.proxy", "--config", path]
    if realtime:
        argv.append("--realtime")
    if token_file is not None:
        argv += ["--token-file", str(token_file)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise RuntimeError(f"link proxy did not start: {err[-2000:]}")
        ready = json.loads(line)
        ready["process"] = proc
        yield ready
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        for f in (proc.stdout, proc.stderr):
            if f:
                f.close()
        Path(path).unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    from netem.cli import add_proxy_arguments

    parser = argparse.ArgumentParser(prog="python -m netem.proxy",
                                     description="Run one userspace link proxy per link.")
    add_proxy_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Serve the links of ``args.config`` until SIGTERM/SIGINT (options: ``add_proxy_arguments``);
    a bad file, token file or address is one line on stderr naming it, and exit status 2."""
    try:
        topology = load_topology(args.config)
        token = read_token_file(args.token_file, private=True) if args.token_file else None
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.seed is not None:
        topology = topology.model_copy(update={"seed": args.seed})
    for key in ("poll_us", "spin_us"):
        if getattr(args, key) is None:
            continue
        try:
            topology = Topology.model_validate({**topology.model_dump(), key: getattr(args, key)})
        except ValidationError as exc:
            msg = exc.errors()[0]["msg"].removeprefix("Value error, ")
            print(f"error: --{key.replace('_', '-')}: {msg}", file=sys.stderr)
            return 2
    extra: dict[str, Any] = {"realtime": set_realtime() if args.realtime else "off",
                             "poll_us": topology.poll_us, "spin_us": topology.spin_us}
    try:
        _run(_main_async(topology, args.control, args.stamps, token, **extra), topology.poll_us,
             topology.spin_us)
    except (ValueError, OSError) as exc:  # a target/listen/control key, a busy port
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
