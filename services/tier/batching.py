"""Dynamic batching of one model (class ``gpu``), as NVIDIA Triton's dynamic batcher does.

Requests of a batching model wait in the model's batcher (FIFO). A batch **forms** when
``max_batch`` requests wait (at the arrival of the one that fills it) or when the oldest waiting
request has waited ``max_queue_delay_ms`` (Triton's ``max_queue_delay_microseconds``); it then
waits for a model instance, i.e. a device slot (``concurrency`` = instances = batches in flight),
in the node's FIFO with every other request. It **starts** at ``max(formed, the slot's nominal
free time)``, and takes every waiting request that had arrived by then, up to ``max_batch``
(requests that came while it waited for an instance join it, as in Triton). A batch of k takes
``base_ms + per_item_ms × k`` (+ the model's jitter draw) of device time; all its requests
complete together. Real inference still runs for every image: one LiteRT invoke per request, on
the instance of the batch's slot (interpreters are not thread-safe; a slot serves one batch at a
time).

Times are nominal, as for unbatched requests (:mod:`services.tier.device`): formation and start
are computed from arrival stamps and nominal slot times, so a timer that fires late (the event
loop's timers have 1 ms granularity) does not lengthen a request's device time or wait. The
hold of a batch ends early by the learned send lead plus the smallest host lead its requests
asked for (one hold per batch).

Waiting requests count against ``queue_limit`` (503 + Retry-After when full) and in the queue
depth; a batch holds one device slot (``in_service`` counts slots). With ``on_disconnect:
abort`` a request whose client goes away leaves the batcher while its batch has not started;
once started, a batch runs to its end (its answer then goes nowhere, counted ``finished``).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from services.tier.config import BatchingConfig
from services.tier.leads import NO_LEADS, Leads

if TYPE_CHECKING:
    from services.tier.runtime import TierRuntime


@dataclass(frozen=True)
class BatchResult:
    """What one request of a finished batch gets back."""

    probs: np.ndarray
    compute_s: float  # this request's own LiteRT time
    size: int  # requests in its batch
    formed_s: float  # when its batch formed (nominal)
    start_s: float  # when its batch started service (nominal)
    target_ms: float  # the batch's drawn device time (real mode: its real compute)
    emulated_s: float  # the batch's device time (hold + leads; real mode: compute)
    leads: Leads
    t_end: float | None  # when the batch's hold ended (profile), for the send lead


@dataclass(eq=False)
class Pending:
    """A request waiting in a batcher."""

    image: np.ndarray
    t_arrive: float
    host_lead_ms: float
    fut: asyncio.Future[BatchResult] = field(repr=False)


class ModelBatcher:
    """The dynamic batcher of one model on one node; lives on the event loop thread."""

    def __init__(self, runtime: TierRuntime, model: str, cfg: BatchingConfig) -> None:
        self.runtime = runtime
        self.model = model
        self.cfg = cfg
        m = runtime.cfg.models[model]
        self.profile = m.device_time == "profile"
        # expected device time per waiting request (full batches; 0 in real mode), for
        # Retry-After
        self.per_request_s = (
            cfg.batch_ms(cfg.max_batch) / cfg.max_batch / 1000.0 if self.profile else 0.0
        )
        self.queue: deque[Pending] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._batches: set[asyncio.Task[None]] = set()

    # --- requests ---

    def submit(self, image: np.ndarray, t_arrive: float, host_lead_ms: float) -> Pending:
        """Queue a request (the caller checked ``queue_limit``); await ``.fut`` for its result."""
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run_guarded())
        p = Pending(image, t_arrive, host_lead_ms, asyncio.get_running_loop().create_future())
        self.queue.append(p)
        self._count(+1)
        self._wake.set()
        return p

    def withdraw(self, p: Pending) -> bool:
        """Take a request out before its batch starts (True); False once it is in a batch."""
        try:
            self.queue.remove(p)
        except ValueError:
            return False
        self._count(-1)
        p.fut.cancel()
        self._wake.set()
        return True

    def _count(self, n: int) -> None:
        slots = self.runtime.slots
        slots.pending += n
        slots.pending_s = max(0.0, slots.pending_s + n * self.per_request_s)
        self.runtime.metrics.queue_depth_t.set(slots.waiting)

    # --- forming batches ---

    def _formed_at(self, now_s: float) -> float | None:
        """When the waiting requests' batch formed (nominal), or None while it has not: the
        arrival of the request that filled it, or the oldest arrival + the queue delay."""
        q = self.queue
        deadline = q[0].t_arrive + self.cfg.max_queue_delay_ms / 1000.0
        if len(q) >= self.cfg.max_batch:
            filled = max(p.t_arrive for p in list(q)[: self.cfg.max_batch])
            return min(deadline, filled)
        return deadline if now_s >= deadline else None

    async def _run_guarded(self) -> None:
        """:meth:`_run`; should it ever fail, the waiting requests fail with it (a 500 each, not
        a hang) and the next request starts a new batcher task."""
        try:
            await self._run()
        except Exception as exc:
            while self.queue:
                p = self.queue.popleft()
                self._count(-1)
                if not p.fut.done():
                    p.fut.set_exception(exc)
            raise

    async def _run(self) -> None:
        slots = self.runtime.slots
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            formed = self._formed_at(time.perf_counter())
            if formed is None:
                deadline = self.queue[0].t_arrive + self.cfg.max_queue_delay_ms / 1000.0
                self._wake.clear()
                try:
                    await asyncio.wait_for(
                        self._wake.wait(), max(0.0, deadline - time.perf_counter())
                    )
                except TimeoutError:
                    pass
                continue
            # a model instance: a device slot, in FIFO with the node's other requests
            grant = slots.try_acquire()
            if grant is None:
                fut = slots.enqueue(0.0, counted=False)
                try:
                    grant = await fut
                except asyncio.CancelledError:
                    slots.withdraw(fut)
                    raise
            slot, free_at = grant
            start = max(formed, free_at)
            batch: list[Pending] = []
            while self.queue and len(batch) < self.cfg.max_batch:
                if self.queue[0].t_arrive > start:
                    break
                batch.append(self.queue.popleft())
            if not batch:  # every request left meanwhile: pass the slot on unused
                slots.release(slot, free_at)
                continue
            self._count(-len(batch))
            target_ms = self._target_ms(len(batch))
            slots.expect_end(slot, start + target_ms / 1000.0)
            self.runtime.metrics.in_service_t.set(slots.in_service)
            task = asyncio.ensure_future(self._serve(batch, slot, formed, start, target_ms))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)

    def _target_ms(self, size: int) -> float:
        target = self.cfg.batch_ms(size)
        jitter = self.runtime.cfg.models[self.model].jitter
        if jitter is not None:
            target += jitter.sample_ms(self.runtime.rng)
        return max(0.0, target)

    # --- serving a batch ---

    def _compute(self, slot: int, images: list[np.ndarray]) -> list[tuple[np.ndarray, float]]:
        instance = self.runtime.instances[slot][self.model]
        return [instance.probabilities(img) for img in images]

    async def _serve(
        self, batch: list[Pending], slot: int, formed: float, start: float, target_ms: float
    ) -> None:
        rt = self.runtime
        nominal_end: float | None = None
        try:
            images = [p.image for p in batch]
            if rt.compute_executor is None:
                outputs = self._compute(slot, images)
            else:
                outputs = await asyncio.get_running_loop().run_in_executor(
                    rt.compute_executor, self._compute, slot, images
                )
            t_end: float | None = None
            leads = NO_LEADS
            if self.profile:
                end = start + target_ms / 1000.0
                host_lead_ms = min(p.host_lead_ms for p in batch)
                leads = rt.leads(target_ms / 1000.0, host_lead_ms, end)
                t_end = await rt.hold(end - leads.total_s)
                nominal_end = end
                emulated_s = (t_end or end) - start + leads.total_s
            else:
                emulated_s = sum(cs for _, cs in outputs)
                target_ms = emulated_s * 1000.0
        except BaseException as exc:
            rt.release_slot(slot, nominal_end)
            for p in batch:
                if not p.fut.done():
                    p.fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError(exc))
            if not isinstance(exc, Exception):
                raise
            return
        rt.release_slot(slot, nominal_end)
        rt.metrics.batch_size[self.model].observe(len(batch))
        for p, (probs, compute_s) in zip(batch, outputs, strict=True):
            if not p.fut.done():
                p.fut.set_result(BatchResult(
                    probs, compute_s, len(batch), formed, start, target_ms, emulated_s, leads,
                    t_end,
                ))  # fmt: skip

    def close(self) -> None:
        for task in (self._task, *self._batches):
            if task is not None and not task.done():
                task.cancel()
        for p in self.queue:
            if not p.fut.done():
                p.fut.cancel()
