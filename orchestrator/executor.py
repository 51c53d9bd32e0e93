"""The two seams replay runs through: an executor (how an attempt reaches a node) and a clock.

Replay (``orchestrator.replay``) never touches HTTP or the wall clock itself. It asks an
:class:`Executor` to run one attempt of a request on a route for a device group, and a
:class:`Clock` what time it is and to wait until a send time. Today's pair is
:class:`HttpExecutor` (aiohttp against the tiers' URLs, through each group's links) and
:class:`WallClock` (``time.perf_counter`` with a short yield-spin before each send). A simulated
executor and :class:`LoopClock` under a :class:`VirtualTimeLoop` run the same workload,
policies, records and summary in virtual time: the loop's clock jumps to the next timer
whenever nothing is ready, so a replay of minutes takes milliseconds
(``tests/orchestrator/test_executor.py`` runs the seed experiment that way).
"""

from __future__ import annotations

import asyncio
import selectors
import time
from collections.abc import Mapping
from typing import Any, Protocol

import aiohttp

from orchestrator.client import Attempt, make_session, run_attempt
from orchestrator.workload import Request


class Clock(Protocol):
    """Seconds on one monotonic axis; ``sleep_until`` returns at (or just after) ``t``."""

    def now(self) -> float: ...

    async def sleep_until(self, t: float) -> None: ...


class WallClock:
    """The host's clock: ``time.perf_counter``; the last ``spin_s`` before a send time
    yield-spins (``asyncio.sleep(0)``) for sub-millisecond send precision."""

    def __init__(self, spin_s: float = 0.002) -> None:
        self.spin_s = spin_s

    def now(self) -> float:
        return time.perf_counter()

    async def sleep_until(self, t: float) -> None:
        delay = t - time.perf_counter() - self.spin_s
        if delay > 0:
            await asyncio.sleep(delay)
        while time.perf_counter() < t:
            await asyncio.sleep(0)


class LoopClock:
    """The running event loop's clock (``loop.time()``): virtual under
    :class:`VirtualTimeLoop`, the loop's monotonic clock otherwise."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep_until(self, t: float) -> None:
        delay = t - self.now()
        if delay > 0:
            await asyncio.sleep(delay)


class _JumpingSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """Polls without waiting; a wait for the next timer advances the loop's virtual clock
    instead. A wait with no timer at all (``None``) blocks for real: only I/O or another
    thread (``run_in_executor``) can wake the loop then."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            return super().select(None)
        events = super().select(0)
        if not events and timeout > 0:
            self._loop.advance(timeout)
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on virtual time: ``time()`` starts at 0 and moves only when every task
    waits for a timer, straight to the earliest one. For simulated executors: real network
    I/O under it would see timeouts expire at once."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self._virtual_now

    def advance(self, seconds: float) -> None:
        self._virtual_now += seconds


class Executor(Protocol):
    """Runs one attempt of ``request`` on ``route`` (``node/model``) for a device of ``group``;
    never raises for a failed attempt (the outcome says what happened)."""

    async def __aenter__(self) -> Executor: ...

    async def __aexit__(self, *exc: object) -> None: ...

    def knows(self, group: str, node: str) -> bool: ...

    async def attempt(self, route: str, request: Request, *, group: str, timeout_s: float,
                      t_intended: float, host_lead_ms: float = 0.0,
                      **stage: Any) -> Attempt:
        """``stage`` (only when a policy asks for one): ``op`` (a ``ChainOp``: the attempt is a
        chain stage), ``tensor`` (the cut tensor it carries), ``top_k``."""
        ...


class HttpExecutor:
    """Attempts over HTTP (``orchestrator.client``): one pooled aiohttp session; each device
    group sends to its own URLs (``group_targets[group][node]``: the listeners of the group's
    links and paths), falling back to ``targets[node]``."""

    def __init__(self, targets: Mapping[str, str],
                 group_targets: Mapping[str, Mapping[str, str]] | None = None,
                 concurrency: int = 32) -> None:
        self.targets = dict(targets)
        self.group_targets = {g: dict(t) for g, t in (group_targets or {}).items()}
        n_urls = len(set(self.targets.values())
                     | {u for t in self.group_targets.values() for u in t.values()})
        self._limit = concurrency * max(1, n_urls) + 8
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> HttpExecutor:
        self._session = make_session(self._limit)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def url(self, group: str, node: str) -> str | None:
        return self.group_targets.get(group, {}).get(node) or self.targets.get(node)

    def knows(self, group: str, node: str) -> bool:
        return self.url(group, node) is not None

    async def attempt(self, route: str, request: Request, *, group: str, timeout_s: float,
                      t_intended: float, host_lead_ms: float = 0.0,
                      **stage: Any) -> Attempt:
        node = route.split("/", 1)[0]
        url = self.url(group, node)
        if url is None:
            return Attempt(route=route, outcome="error",
                           error=f"no target URL for node {node} from group {group}")
        assert self._session is not None, "HttpExecutor used outside 'async with'"
        return await run_attempt(self._session, url, route, request, timeout_s=timeout_s,
                                 t_intended=t_intended, host_lead_ms=host_lead_ms, **stage)
