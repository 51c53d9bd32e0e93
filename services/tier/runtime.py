"""The tier's device: loaded LiteRT models and chain segments per worker slot, admission,
device-time holds, energy.

Routes call :meth:`TierRuntime.infer`, :meth:`TierRuntime.run_chain`,
:meth:`TierRuntime.generate` and (streams) :meth:`TierRuntime.admit` +
:meth:`TierRuntime.stream_lines`; everything that makes the tier behave like its device
(queueing, emulated latency, leads, client disconnects, energy) happens here. Vision models and
chains share one path through it: :meth:`TierRuntime.serve`.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry

from models.chain import CutTensor
from models.paths import models_dir as default_models_dir
from models.runtime import LiteRTModel
from services.tier import energy, lm
from services.tier.batching import BatchResult, ModelBatcher, Pending
from services.tier.chains import ChainRun, ExitRule, ServedChain, answers_with_probabilities
from services.tier.config import TierConfig
from services.tier.device import DeviceSlots, QueueFull, hold_until, try_realtime_thread
from services.tier.disconnect import Action, ClientGone, DisconnectWatch
from services.tier.errors import ApiError
from services.tier.leads import MAX_SEND_LEAD_S, NO_LEADS, SEND_LEAD_GAIN, Leads, plan_leads
from services.tier.metrics import TierMetrics

STREAM_CHUNK_MS = 5.0  # tokens closer together than this go out in one NDJSON line
T = TypeVar("T")


@dataclass(frozen=True)
class Admission:
    """A request that holds a device slot: which one, and when its service (nominally) started.

    ``start_s`` is ``max(arrival in the handler, the slot's nominal free time)``: a free slot
    serves from arrival; a slot handed over serves from the previous request's nominal end."""

    model: str
    slot: int
    start_s: float
    t_arrive: float

    @property
    def queue_s(self) -> float:
        return self.start_s - self.t_arrive


@dataclass(frozen=True)
class Served(Generic[T]):
    """A request served on a device slot (:meth:`TierRuntime.serve`): what its real compute
    returned, and its accounting as reported in an answer."""

    value: T
    timing: dict[str, float]  # queue_ms, compute_ms, emulated_ms, target_ms, leads, service_ms
    energy: dict[str, float | str]
    profile: bool  # device time was emulated
    t_end: float | None  # when its hold ended (profile mode), for the send lead


@dataclass(frozen=True)
class ChainResult:
    """A finished ``/v1/chain`` request: its answer, which is the JSON body when the run ended
    at an exit that answers (``tensor`` None), else describes ``tensor``, the tensor at the
    run's last cut (the binary body; the answer goes in a header)."""

    answer: dict[str, Any]
    tensor: CutTensor | None
    t_end: float | None


class TierRuntime:
    """One tier's state. Create with a validated config; call :meth:`load` before serving."""

    def __init__(
        self,
        cfg: TierConfig,
        *,
        models_dir: Path | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.cfg = cfg
        self.models_dir = Path(models_dir) if models_dir else default_models_dir()
        # Fail fast (before serving) on missing files and on the memory budget.
        self.model_bytes = cfg.check_memory(self.models_dir)
        cfg.check_files(self.models_dir)  # e.g. a float model on an INT8-only class
        self.chains = {
            name: ServedChain(name, c, cfg.chain_spec(name, self.models_dir), self.models_dir)
            for name, c in cfg.chains.items()
        }
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.metrics = TierMetrics(
            self.registry, cfg.tier, [*cfg.served_models, *self.chains],
            list(energy.ENERGY_MODELS), batched_models=cfg.batched_models,
            node_class=str(cfg.node_class),
            chains={name: (list(ch.held), ch.exits_held) for name, ch in self.chains.items()},
        )  # fmt: skip
        self.metrics.memory_budget.labels(cfg.tier).set(cfg.memory_bytes)
        self.metrics.concurrency.labels(cfg.tier).set(cfg.concurrency)
        self.metrics.queue_limit.labels(cfg.tier).set(cfg.queue_limit)
        for name, size in self.model_bytes.items():
            self.metrics.model_bytes.labels(cfg.tier, name).set(size)
        self.slots = DeviceSlots(cfg.concurrency, cfg.queue_limit)
        self.rng = np.random.default_rng(cfg.jitter_seed)  # device-time jitter draws
        # LM confidence draws of requests without a seed: a stream of its own, so LM traffic
        # does not shift the jitter sequence
        self.lm_rng = np.random.default_rng(np.random.SeedSequence(cfg.jitter_seed, spawn_key=(1,)))
        # the device time a vision request is expected to take (Retry-After estimates)
        self.expected_device_s = {name: _expected_device_s(cfg, name) for name in cfg.models}
        self.instances: list[dict[str, LiteRTModel]] = []
        self.model_info: dict[str, dict[str, Any]] = {}
        self.executor: ThreadPoolExecutor | None = None
        self.compute_executor: ThreadPoolExecutor | None = None
        self.ready = False
        self.realtime_holds = False
        self.send_lead_s = 0.0  # EWMA of hold end -> answer written (see observe_send)
        self._holds: set[threading.Event] = set()  # stop events of the holds under way
        self._closing = False
        # dynamic batchers (class gpu): one per model with ``batching``
        self.batchers: dict[str, ModelBatcher] = {
            name: ModelBatcher(self, name, m.batching)
            for name, m in cfg.models.items()
            if m.batching is not None
        }

    # --- lifecycle ---

    def load(self) -> None:
        """Load one LiteRT interpreter per model, held chain segment and worker slot (they are
        not thread-safe)."""
        self.instances = [
            {
                name: LiteRTModel(self.models_dir / str(m.file))
                for name, m in self.cfg.models.items()
            }
            for _ in range(self.cfg.concurrency)
        ]
        for chain in self.chains.values():
            chain.load(self.cfg.concurrency)
        for name, m in self.cfg.models.items():
            first = self.instances[0][name] if self.instances else None
            self.model_info[name] = {
                "name": name,
                "kind": "vision",
                "file": str(m.file),
                "bytes": self.model_bytes[name],
                "dtype": first.input_dtype.name if first else None,
                "device_time": m.device_time,
                "latency_ms": m.latency_ms,
                "jitter": m.jitter.model_dump() if m.jitter else None,
                "batching": m.batching.model_dump() if m.batching else None,
                "emulated": m.device_time == "profile",
            }
        for name, lmc in self.cfg.lm.items():
            self.model_info[name] = {
                "name": name,
                "kind": "lm",
                "file": None,
                "bytes": 0,
                "dtype": None,
                "device_time": "profile",
                "latency_ms": lmc.ttft_ms,
                "ttft_ms": lmc.ttft_ms,
                "tpot_ms": lmc.tpot_ms,
                "quality_short": lmc.quality_short,
                "quality_long": lmc.quality_long,
                "jitter": None,
                "emulated": True,
            }
        # One thread per device slot: it sleeps through the emulated device time. A hold that
        # is stopped (client gone, shutdown) wakes its thread at once via its own event.
        init = try_realtime_thread if self.cfg.realtime_holds else None
        self.executor = ThreadPoolExecutor(
            self.cfg.concurrency, thread_name_prefix="device", initializer=init
        )
        if self.cfg.offload_compute:
            self.compute_executor = ThreadPoolExecutor(
                self.cfg.concurrency, thread_name_prefix="litert"
            )
        if self.cfg.realtime_holds:  # whether the (first) thread got real-time priority
            self.realtime_holds = self.executor.submit(_is_realtime).result()
        self.ready = True
        self.metrics.ready.labels(self.cfg.tier).set(1)

    def close(self) -> None:
        self._closing = True
        for stop in list(self._holds):  # end device holds still running
            stop.set()
        for batcher in self.batchers.values():
            batcher.close()
        self.ready = False
        self.metrics.ready.labels(self.cfg.tier).set(0)
        for pool in (self.executor, self.compute_executor):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self.executor = self.compute_executor = None

    # --- load, admission, release ---

    def current_load(self) -> dict[str, int]:
        """The device's occupancy now: requests waiting for a slot, requests holding one."""
        return {
            "queue_depth": self.slots.waiting,
            "in_service": self.slots.in_service,
            "concurrency": self.cfg.concurrency,
            "queue_limit": self.cfg.queue_limit,
        }

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: the remaining device time of the requests in
        service plus that of the waiting requests' own models, over the concurrency (≥ 1)."""
        return self.slots.retry_after_s(time.perf_counter())

    async def admit(
        self, model: str, device_s: float, t_arrive: float, watch: DisconnectWatch | None
    ) -> Admission:
        """Take a device slot for a request expecting ``device_s`` of device time, waiting in
        FIFO order if none is free. Raises ApiError 503 (+ Retry-After) when the queue is full
        and ClientGone when the client leaves the queue with ``on_disconnect: abort``.
        The caller must :meth:`release` the admission."""
        grant = self.slots.try_acquire(device_s)
        if grant is None:
            try:
                fut = self.slots.enqueue(device_s)
            except QueueFull:
                raise self._queue_full(model) from None
            self.metrics.queue_depth_t.set(self.slots.waiting)
            try:
                if (
                    watch is not None
                    and not await watch.first(fut)
                    and self.cfg.on_disconnect == "abort"
                ):
                    self.slots.withdraw(fut)
                    raise self._abandon(model, "aborted")
                grant = await fut
            except asyncio.CancelledError:
                self.slots.withdraw(fut)
                raise
            finally:
                self.metrics.queue_depth_t.set(self.slots.waiting)
        slot, free_at = grant
        start_s = max(t_arrive, free_at)
        self.slots.expect_end(slot, start_s + device_s)
        self.metrics.in_service_t.set(self.slots.in_service)
        return Admission(model, slot, start_s, t_arrive)

    def release(self, adm: Admission, nominal_end_s: float | None) -> None:
        """Give the slot back; the next request starts service at ``nominal_end_s`` (None:
        now, for a request that stopped early)."""
        self.release_slot(adm.slot, nominal_end_s)

    def release_slot(self, slot: int, nominal_end_s: float | None) -> None:
        self.slots.release(slot, nominal_end_s)
        self.metrics.in_service_t.set(self.slots.in_service)
        self.metrics.queue_depth_t.set(self.slots.waiting)

    def _abandon(self, model: str, action: Action) -> ClientGone:
        self.metrics.abandoned[(model, action)].inc()
        return ClientGone(action)

    # --- device-time holds ---

    async def hold(self, deadline_s: float, watch: DisconnectWatch | None = None) -> float | None:
        """Wait (off the event loop) until ``deadline_s``; returns the release time. Returns
        None, having stopped the hold at once, when the client goes away meanwhile and
        ``on_disconnect`` is ``abort`` (with ``finish`` the hold runs to its end)."""
        now = time.perf_counter()
        if deadline_s <= now or self._closing:
            return now
        stop = threading.Event()
        self._holds.add(stop)
        try:
            fut = asyncio.get_running_loop().run_in_executor(
                self.executor, hold_until, deadline_s, stop
            )
            if watch is not None:
                if not watch.gone:
                    await watch.first(fut)
                if watch.gone and not fut.done() and self.cfg.on_disconnect == "abort":
                    stop.set()  # wakes the thread now: the next hold need not wait for it
                    return None
            return await fut
        except asyncio.CancelledError:
            stop.set()
            raise
        finally:
            self._holds.discard(stop)

    def leads(self, target_s: float, host_lead_ms: float, nominal_end_s: float) -> Leads:
        """The send and host leads of a hold ending nominally at ``nominal_end_s`` (see
        :mod:`services.tier.leads`); called once the request's compute is done."""
        room_s = nominal_end_s - time.perf_counter()
        return plan_leads(target_s, self.send_lead_s, host_lead_ms / 1000.0, room_s)

    def observe_send(self, send_s: float) -> None:
        """Learn the send lead from one answer: ``send_s`` from its hold's end to its body
        written to the transport (called by the routes once the response is sent)."""
        send_s = min(max(send_s, 0.0), MAX_SEND_LEAD_S)
        self.send_lead_s += SEND_LEAD_GAIN * (send_s - self.send_lead_s)

    def device_target_ms(self, model: str) -> float:
        m = self.cfg.models[model]
        target = float(m.latency_ms or 0.0)
        if m.jitter is not None:
            target += m.jitter.sample_ms(self.rng)
        return max(0.0, target)

    # --- inference ---

    def check_model(self, model: str, kind: str) -> None:
        table = self.cfg.models if kind == "vision" else self.cfg.lm
        if model not in table:
            self.metrics.count(model, "not_found")
            served = ", ".join(table) or "none"
            other = "vision" if kind == "lm" else "language"
            hint = f" ({model} is a {other} model here)" if model in self.cfg.served_models else ""
            raise ApiError(
                404, "model", f"model: {model!r} is not served by tier {self.cfg.tier}{hint}; "
                f"{kind} models here: {served}",
            )  # fmt: skip

    async def infer(
        self,
        model: str,
        image: np.ndarray,
        request_id: str | None,
        t_arrive: float,
        *,
        watch: DisconnectWatch | None = None,
        host_lead_ms: float = 0.0,
    ) -> tuple[dict[str, Any], float | None]:
        """Classify one image on this tier, holding it for the device time in profile mode.

        Returns the answer and, in profile mode, when its hold ended (for :meth:`observe_send`).
        Raises ClientGone when the client went away (see ``on_disconnect``).
        """
        self.check_model(model, "vision")
        if model in self.batchers:
            return await self.infer_batched(
                model, image, request_id, t_arrive, watch=watch, host_lead_ms=host_lead_ms
            )
        served = await self.serve(
            model,
            lambda slot: self.instances[slot][model].probabilities(image),
            expected_s=self.expected_device_s[model],
            profile=self.cfg.models[model].device_time == "profile",
            target_ms=lambda _: self.device_target_ms(model),
            t_arrive=t_arrive, watch=watch, host_lead_ms=host_lead_ms,
        )  # fmt: skip
        probs = served.value
        idx = int(np.argmax(probs))
        return {
            "tier": self.cfg.tier,
            "model": model,
            "request_id": request_id or uuid.uuid4().hex,
            "prediction": idx,
            "confidence": float(probs[idx]),
            "probabilities": probs.tolist(),
            "timing": served.timing,
            "energy": served.energy,
            "load": self.current_load(),
            "emulated": {"device_time": served.profile, "energy": True, "lm": False},
        }, served.t_end

    async def serve(
        self,
        name: str,
        compute: Callable[[int], tuple[T, float]],
        *,
        expected_s: float,
        profile: bool,
        target_ms: Callable[[T], float],
        t_arrive: float,
        watch: DisconnectWatch | None,
        host_lead_ms: float,
    ) -> Served[T]:
        """One request on the device: admitted to a slot (FIFO; 503 when the queue is full)
        expecting ``expected_s`` of device time, its real compute ``compute(slot)`` →
        ``(value, seconds)``, then in profile mode held until ``target_ms(value)`` after its
        start of service (less the leads); the slot released at the nominal end, the request
        accounted under ``name`` (histograms, energy, an ``ok``). Raises ClientGone when the
        client went away (see ``on_disconnect``)."""
        adm = await self.admit(name, expected_s, t_arrive, watch)
        t_end: float | None = None
        leads = NO_LEADS
        nominal_end: float | None = None
        try:
            if self.compute_executor is None:
                value, compute_s = compute(adm.slot)
            else:
                value, compute_s = await asyncio.get_running_loop().run_in_executor(
                    self.compute_executor, compute, adm.slot
                )
            if profile:
                target = target_ms(value)
                end_s = adm.start_s + target / 1000.0
                self.slots.expect_end(adm.slot, end_s)
                leads = self.leads(target / 1000.0, host_lead_ms, end_s)
                t_end = await self.hold(end_s - leads.total_s, watch)
                if t_end is None:
                    raise self._abandon(name, "aborted")
                nominal_end = end_s
                emulated_s = t_end - adm.start_s + leads.total_s
            else:
                target = compute_s * 1000.0
                emulated_s = compute_s
        finally:
            self.release(adm, nominal_end)
        if watch is not None and watch.gone:
            raise self._abandon(name, "finished")
        service_s = time.perf_counter() - t_arrive
        queue_ms = adm.queue_s * 1000.0
        emulated_ms = emulated_s * 1000.0
        e = energy.estimate(self.cfg, emulated_ms, queue_ms)
        self.metrics.observe(
            name,
            queue_s=adm.queue_s,
            compute_s=compute_s,
            emulated_s=emulated_s,
            service_s=service_s,
            energy_mj={"power": float(e["power_mj"]), "simulator": float(e["simulator_mj"])},
        )
        self.metrics.count(name, "ok")
        timing = {
            "queue_ms": queue_ms,
            "compute_ms": compute_s * 1000.0,
            "emulated_ms": emulated_ms,
            "target_ms": target,
            "send_lead_ms": leads.send_s * 1000.0,
            "host_lead_ms": leads.host_s * 1000.0,
            "service_ms": service_s * 1000.0,
        }
        return Served(value, timing, e, profile, t_end)

    # --- research chains ---

    def check_chain(self, name: str) -> ServedChain:
        """The served chain ``name``; ApiError 404 naming ``chain`` and the served ones."""
        chain = self.chains.get(name)
        if chain is None:
            self.metrics.count(name, "not_found")
            raise ApiError(
                404, "chain", f"chain: {name!r} is not served by tier {self.cfg.tier}; chains "
                f"here: {', '.join(self.chains) or 'none'}",
            )  # fmt: skip
        return chain

    async def run_chain(
        self,
        name: str,
        source: np.ndarray | CutTensor,
        start: int,
        stop: int,
        rule: ExitRule,
        output: str,
        request_id: str | None,
        t_arrive: float,
        *,
        bytes_in: int,
        watch: DisconnectWatch | None = None,
        host_lead_ms: float = 0.0,
    ) -> ChainResult:
        """Segments start+1..stop of chain ``name`` (already validated: :meth:`check_chain`,
        ``ServedChain.check_range``) on a uint8 image (start 0) or the tensor at cut ``start``,
        through the same admission, holds, leads and accounting as :meth:`infer`. The device
        time is held for the segments actually run (an exit that passes ``rule`` ends the run).
        Raises ClientGone when the client went away (see ``on_disconnect``)."""
        chain = self.chains[name]
        served: Served[ChainRun] = await self.serve(
            name,
            lambda slot: chain.run(slot, source, start, stop, rule),
            expected_s=chain.expected_s(start, stop),
            profile=chain.profile,
            target_ms=lambda run: chain.target_ms(run, self.rng),
            t_arrive=t_arrive, watch=watch, host_lead_ms=host_lead_ms,
        )  # fmt: skip
        run = served.value
        for k, _ in run.ran:
            self.metrics.chain_segment[(name, k)].inc()
        self.metrics.tensor_bytes[(name, "in")].inc(bytes_in)
        answered = answers_with_probabilities(run, rule, output, chain.n)
        tensor = None if answered else run.features
        assert answered or tensor is not None, "validated on arrival: a tensor answer has a cut"
        bytes_out = len(tensor.data) if tensor is not None else 0
        if answered:
            self.metrics.chain_exit[(name, run.last)].inc()
        else:
            self.metrics.tensor_bytes[(name, "out")].inc(bytes_out)
        answer: dict[str, Any] = {
            "tier": self.cfg.tier,
            "chain": name,
            "request_id": request_id or uuid.uuid4().hex,
        }
        if answered and run.probs is not None:
            idx = int(np.argmax(run.probs))
            answer.update(prediction=idx, confidence=float(run.probs[idx]),
                          probabilities=run.probs.tolist(), exit=run.last)  # fmt: skip
        else:
            answer["cut"] = run.last
        answer.update({
            "exits": list(run.exits),
            "segments": chain.segment_times(run, served.timing["target_ms"]),
            "timing": served.timing,
            "energy": served.energy,
            "load": self.current_load(),
            "emulated": {"device_time": served.profile, "energy": True, "lm": False,
                         "segment_shares": served.profile},
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        })  # fmt: skip
        return ChainResult(answer, tensor, served.t_end)

    def _queue_full(self, model: str) -> ApiError:
        self.metrics.count(model, "queue_full")
        return ApiError(
            503,
            "model",
            f"tier {self.cfg.tier} is busy: {self.slots.waiting} requests already wait "
            f"(queue_limit {self.cfg.queue_limit}); retry later",
            headers={"Retry-After": str(self.retry_after_s())},
        )

    async def infer_batched(
        self,
        model: str,
        image: np.ndarray,
        request_id: str | None,
        t_arrive: float,
        *,
        watch: DisconnectWatch | None = None,
        host_lead_ms: float = 0.0,
    ) -> tuple[dict[str, Any], float | None]:
        """:meth:`infer` for a model with dynamic batching (:mod:`services.tier.batching`)."""
        batcher = self.batchers[model]
        if self.slots.full():
            raise self._queue_full(model)
        pending: Pending = batcher.submit(image, t_arrive, host_lead_ms)
        try:
            if (
                watch is not None
                and not await watch.first(pending.fut)
                and self.cfg.on_disconnect == "abort"
                and batcher.withdraw(pending)
            ):
                raise self._abandon(model, "aborted")
            res: BatchResult = await pending.fut
        except asyncio.CancelledError:
            batcher.withdraw(pending)
            raise
        if watch is not None and watch.gone:
            raise self._abandon(model, "finished")
        service_s = time.perf_counter() - t_arrive
        queue_s = max(0.0, res.start_s - t_arrive)
        queue_ms = queue_s * 1000.0
        emulated_ms = res.emulated_s * 1000.0
        # the batch's active energy is shared by its requests
        e = energy.estimate(self.cfg, emulated_ms / res.size, queue_ms)
        self.metrics.observe(
            model,
            queue_s=queue_s,
            compute_s=res.compute_s,
            emulated_s=res.emulated_s,
            service_s=service_s,
            energy_mj={"power": float(e["power_mj"]), "simulator": float(e["simulator_mj"])},
        )
        self.metrics.count(model, "ok")
        idx = int(np.argmax(res.probs))
        return {
            "tier": self.cfg.tier,
            "model": model,
            "request_id": request_id or uuid.uuid4().hex,
            "prediction": idx,
            "confidence": float(res.probs[idx]),
            "probabilities": res.probs.tolist(),
            "timing": {
                "queue_ms": queue_ms,
                "compute_ms": res.compute_s * 1000.0,
                "emulated_ms": emulated_ms,
                "target_ms": res.target_ms,
                "send_lead_ms": res.leads.send_s * 1000.0,
                "host_lead_ms": res.leads.host_s * 1000.0,
                "service_ms": service_s * 1000.0,
                "batch_size": res.size,
                "batch_wait_ms": max(0.0, res.formed_s - t_arrive) * 1000.0,
            },
            "energy": e,
            "load": self.current_load(),
            "emulated": {"device_time": batcher.profile, "energy": True, "lm": False},
        }, res.t_end

    # --- emulated language models ---

    def lm_result(
        self,
        p: lm.LMPlan,
        words: list[str],
        request_id: str | None,
        adm: Admission,
        held_s: float,
        leads: Leads,
        seed: int | None,
    ) -> dict[str, Any]:
        """Account one finished LM request (metrics, energy), draw its confidence and build its
        answer; ``held_s`` is the device time (including the leads the hold ended early by).
        Called after the slot was released (``load`` is what a new request would find)."""
        model = adm.model
        service_s = time.perf_counter() - adm.t_arrive
        queue_ms = adm.queue_s * 1000.0
        total_ms = held_s * 1000.0
        e = energy.estimate(self.cfg, total_ms, queue_ms)
        self.metrics.observe(
            model,
            queue_s=adm.queue_s,
            compute_s=0.0,
            emulated_s=held_s,
            service_s=service_s,
            energy_mj={"power": float(e["power_mj"]), "simulator": float(e["simulator_mj"])},
        )
        self.metrics.tokens[model].inc(p.tokens)
        self.metrics.count(model, "ok")
        rng = self.lm_rng if seed is None else lm.request_rng(seed, model)
        return {
            "tier": self.cfg.tier,
            "model": model,
            "request_id": request_id or uuid.uuid4().hex,
            "text": " ".join(words),
            "tokens": p.tokens,
            "length": p.length,
            "quality": p.quality,
            "confidence": lm.confidence(p.quality, rng),
            "timing": {
                "queue_ms": queue_ms,
                "ttft_ms": p.ttft_ms,
                "total_ms": total_ms,
                "target_ms": p.total_ms,
                "send_lead_ms": leads.send_s * 1000.0,
                "host_lead_ms": leads.host_s * 1000.0,
                "service_ms": service_s * 1000.0,
            },
            "energy": e,
            "load": self.current_load(),
            "emulated": {"device_time": True, "energy": True, "lm": True},
        }

    async def generate(
        self,
        model: str,
        p: lm.LMPlan,
        request_id: str | None,
        t_arrive: float,
        *,
        prompt: str = "",
        seed: int | None = None,
        watch: DisconnectWatch | None = None,
        host_lead_ms: float = 0.0,
    ) -> tuple[dict[str, Any], float]:
        """Emulated LM answer, holding a device slot for ttft + (tokens - 1) × tpot; returns
        the answer and when its hold ended (for :meth:`observe_send`). Raises ClientGone when
        the client went away (see ``on_disconnect``)."""
        words = lm.generate_tokens(model, prompt, p.tokens)
        adm = await self.admit(model, p.total_ms / 1000.0, t_arrive, watch)
        nominal_end: float | None = None
        try:
            end_s = adm.start_s + p.total_ms / 1000.0
            leads = self.leads(p.total_ms / 1000.0, host_lead_ms, end_s)
            t_end = await self.hold(end_s - leads.total_s, watch)
            if t_end is None:
                raise self._abandon(model, "aborted")
            nominal_end = end_s
        finally:
            self.release(adm, nominal_end)
        if watch is not None and watch.gone:
            raise self._abandon(model, "finished")
        held_s = t_end - adm.start_s + leads.total_s
        return self.lm_result(p, words, request_id, adm, held_s, leads, seed), t_end

    async def stream_lines(
        self,
        adm: Admission,
        p: lm.LMPlan,
        words: list[str],
        request_id: str | None,
        *,
        seed: int | None,
        watch: DisconnectWatch,
        host_lead_ms: float = 0.0,
    ) -> AsyncIterator[bytes]:
        """The NDJSON lines of an admitted streaming request, each held until its emulated
        token time (ending ``host_lead_ms`` early), then the final answer with ``done``.

        Owns ``adm``: releases the slot when done. A client that goes away (``watch``) is
        handled as ``on_disconnect`` says: ``finish`` holds the slot to the nominal end,
        ``abort`` frees it at once; either way no more lines come and it is counted."""
        target_s = p.total_ms / 1000.0
        end_s = adm.start_s + target_s
        leads = plan_leads(target_s, 0.0, host_lead_ms / 1000.0, target_s)
        times_ms = lm.token_times_ms(p)
        released = False
        try:
            i = 0
            t_end = adm.start_s
            while i < p.tokens:
                j = int(np.searchsorted(times_ms, times_ms[i] + STREAM_CHUNK_MS, side="right"))
                t_ms = float(times_ms[j - 1])
                t = await self.hold(adm.start_s + t_ms / 1000.0 - leads.total_s, watch)
                if t is None or watch.gone:
                    if self.cfg.on_disconnect == "abort":
                        released = True
                        self.release(adm, None)
                        self._abandon(adm.model, "aborted")
                    else:  # the device finishes the answer nobody reads
                        await self.hold(end_s - leads.total_s)
                        released = True
                        self.release(adm, end_s)
                        self._abandon(adm.model, "finished")
                    return
                chunk = {"tokens": words[i:j], "index": i, "t_ms": t_ms}
                yield (json.dumps(chunk) + "\n").encode()
                i = j
                t_end = t
            released = True
            self.release(adm, end_s)
        finally:
            if not released:
                self.release(adm, None)
        held_s = t_end - adm.start_s + leads.total_s
        result = self.lm_result(p, words, request_id, adm, held_s, leads, seed)
        yield (json.dumps({**result, "done": True}) + "\n").encode()


def _expected_device_s(cfg: TierConfig, model: str) -> float:
    """Mean device time of a vision request: latency + the jitter's mean (profile), else 0 (real
    mode: host compute, tens of microseconds)."""
    m = cfg.models[model]
    if m.device_time != "profile":
        return 0.0
    jitter_ms = m.jitter.expected_ms() if m.jitter is not None else 0.0
    return max(0.0, float(m.latency_ms or 0.0) + jitter_ms) / 1000.0


def _is_realtime() -> bool:
    try:
        return os.sched_getscheduler(0) == os.SCHED_FIFO
    except (AttributeError, OSError):
        return False
