"""The tier's device: loaded LiteRT models per worker slot, admission, device-time holds, energy.

Routes call :meth:`TierRuntime.infer` / :meth:`TierRuntime.generate_plan`; everything that
makes the tier behave like its device (queueing, emulated latency, energy) happens here.
"""

from __future__ import annotations

import asyncio
import math
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from models.paths import models_dir as default_models_dir
from models.runtime import LiteRTModel
from services.tier import energy, lm
from services.tier.config import TierConfig
from services.tier.device import DeviceSlots, QueueFull, hold_until, try_realtime_thread
from services.tier.errors import ApiError
from services.tier.metrics import TierMetrics

# The tier's own response path (hold end -> answer written to the socket: thread hand-off, JSON,
# HTTP framing) is covered by ending profile holds this much early: an EWMA of what it took.
SEND_LEAD_GAIN = 0.1
MAX_SEND_LEAD_S = 0.001  # and never more than half the device time


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
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.metrics = TierMetrics(
            self.registry, cfg.tier, cfg.served_models, list(energy.ENERGY_MODELS)
        )
        self.metrics.memory_budget.labels(cfg.tier).set(cfg.memory_bytes)
        self.metrics.concurrency.labels(cfg.tier).set(cfg.concurrency)
        self.metrics.queue_limit.labels(cfg.tier).set(cfg.queue_limit)
        for name, size in self.model_bytes.items():
            self.metrics.model_bytes.labels(cfg.tier, name).set(size)
        self.slots = DeviceSlots(cfg.concurrency, cfg.queue_limit)
        self.rng = np.random.default_rng(cfg.jitter_seed)
        self.instances: list[dict[str, LiteRTModel]] = []
        self.model_info: dict[str, dict[str, Any]] = {}
        self.executor: ThreadPoolExecutor | None = None
        self.compute_executor: ThreadPoolExecutor | None = None
        self.ready = False
        self.realtime_holds = False
        self.send_lead_s = 0.0  # EWMA of hold end -> answer written (see observe_send)
        self._stop = threading.Event()

    # --- lifecycle ---

    def load(self) -> None:
        """Load one LiteRT interpreter per model and worker slot (they are not thread-safe)."""
        self.instances = [
            {
                name: LiteRTModel(self.models_dir / str(m.file))
                for name, m in self.cfg.models.items()
            }
            for _ in range(self.cfg.concurrency)
        ]
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
        # One thread per device slot: it sleeps through the emulated device time.
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
        self._stop.set()  # end device holds still running
        self.ready = False
        self.metrics.ready.labels(self.cfg.tier).set(0)
        for pool in (self.executor, self.compute_executor):
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
        self.executor = self.compute_executor = None

    # --- admission ---

    def retry_after_s(self) -> int:
        """Seconds a refused client should wait: the current backlog's emulated service time."""
        typical_ms = max(
            [m.latency_ms or 0.0 for m in self.cfg.models.values()]
            + [lm.ttft_ms or 0.0 for lm in self.cfg.lm.values()]
        )
        backlog = (self.slots.waiting + self.slots.in_service) / self.cfg.concurrency
        return max(1, math.ceil(backlog * typical_ms / 1000.0))

    @asynccontextmanager
    async def slot(self, model: str, t_arrive: float):  # type: ignore[no-untyped-def]
        """Hold a device slot for one request; yields (slot, queue_s, start_s).

        ``start_s`` is when the device starts serving the request: its arrival in the handler
        (``t_arrive``) when a slot was free, else the moment a finishing request handed its slot
        over; ``queue_s`` is the real wait for the slot (0 when one was free)."""
        t_enter = time.perf_counter()
        waited = False
        try:
            slot = self.slots.try_acquire()
            if slot is None:
                waited = True
                self.metrics.queue_depth_t.set(self.slots.waiting + 1)
                slot = await self.slots.acquire()
        except QueueFull:
            self.metrics.queue_depth_t.set(self.slots.waiting)
            self.metrics.count(model, "queue_full")
            raise ApiError(
                503,
                "model",
                f"tier {self.cfg.tier} is busy: {self.slots.waiting} requests already wait "
                f"(queue_limit {self.cfg.queue_limit}); retry later",
                headers={"Retry-After": str(self.retry_after_s())},
            ) from None
        finally:
            self.metrics.queue_depth_t.set(self.slots.waiting)
        t_start = time.perf_counter() if waited else min(t_arrive, t_enter)
        self.metrics.in_service_t.set(self.slots.in_service)
        try:
            yield slot, (t_start - t_enter) if waited else 0.0, t_start
        finally:
            self.slots.release(slot)
            self.metrics.in_service_t.set(self.slots.in_service)

    async def hold_device(self, t_start: float, target_ms: float) -> tuple[float, float]:
        """Hold a profile request that started service at ``t_start`` for ``target_ms`` of
        device time, less the send lead (the typical time the answer then takes to reach the
        socket, at most half the device time), so the answer leaves the tier ``target_ms``
        after the device started on it. Returns (hold end, lead used), both in seconds."""
        lead_s = min(self.send_lead_s, MAX_SEND_LEAD_S, target_ms / 2000.0)
        return await self.hold(t_start + target_ms / 1000.0 - lead_s), lead_s

    def observe_send(self, send_s: float) -> None:
        """Learn the send lead from one answer: ``send_s`` from its hold's end to its body
        written to the transport (called by the routes once the response is sent)."""
        send_s = min(max(send_s, 0.0), MAX_SEND_LEAD_S)
        self.send_lead_s += SEND_LEAD_GAIN * (send_s - self.send_lead_s)

    async def hold(self, deadline_s: float) -> float:
        """Wait (off the event loop) until ``deadline_s``; returns the release time."""
        now = time.perf_counter()
        if deadline_s <= now:
            return now
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, hold_until, deadline_s, self._stop)

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
        self, model: str, image: np.ndarray, request_id: str | None, t_arrive: float
    ) -> tuple[dict[str, Any], float | None]:
        """Classify one image on this tier, holding it for the device time in profile mode.

        Returns the answer and, in profile mode, when its hold ended (for :meth:`observe_send`).
        """
        self.check_model(model, "vision")
        profile = self.cfg.models[model].device_time == "profile"
        t_end: float | None = None
        lead_ms = 0.0
        async with self.slot(model, t_arrive) as (slot, queue_s, t_start):
            if self.compute_executor is None:
                probs, compute_s = self.instances[slot][model].probabilities(image)
            else:
                probs, compute_s = await asyncio.get_running_loop().run_in_executor(
                    self.compute_executor, self.instances[slot][model].probabilities, image
                )
            if profile:
                target_ms = self.device_target_ms(model)
                t_end, lead_s = await self.hold_device(t_start, target_ms)
                lead_ms = lead_s * 1000.0
                emulated_s = t_end - t_start + lead_s
            else:
                target_ms = compute_s * 1000.0
                emulated_s = compute_s
        service_s = time.perf_counter() - t_arrive
        queue_ms = queue_s * 1000.0
        emulated_ms = emulated_s * 1000.0
        e = energy.estimate(self.cfg, emulated_ms, queue_ms)
        self.metrics.observe(
            model,
            queue_s=queue_s,
            compute_s=compute_s,
            emulated_s=emulated_s,
            service_s=service_s,
            energy_mj={"power": float(e["power_mj"]), "simulator": float(e["simulator_mj"])},
        )
        self.metrics.count(model, "ok")
        idx = int(np.argmax(probs))
        return {
            "tier": self.cfg.tier,
            "model": model,
            "request_id": request_id or uuid.uuid4().hex,
            "prediction": idx,
            "confidence": float(probs[idx]),
            "probabilities": probs.tolist(),
            "timing": {
                "queue_ms": queue_ms,
                "compute_ms": compute_s * 1000.0,
                "emulated_ms": emulated_ms,
                "target_ms": target_ms,
                "send_lead_ms": lead_ms,
                "service_ms": service_s * 1000.0,
            },
            "energy": e,
            "emulated": {"device_time": profile, "energy": True, "lm": False},
        }, t_end

    # --- emulated language models ---

    def lm_result(
        self,
        model: str,
        p: lm.LMPlan,
        words: list[str],
        request_id: str | None,
        queue_s: float,
        held_s: float,
        t_arrive: float,
        lead_ms: float = 0.0,
    ) -> dict[str, Any]:
        """Account one finished LM request (metrics, energy) and build its answer; ``held_s``
        is the device time (including the send lead the hold ended early by)."""
        service_s = time.perf_counter() - t_arrive
        queue_ms = queue_s * 1000.0
        total_ms = held_s * 1000.0
        e = energy.estimate(self.cfg, total_ms, queue_ms)
        self.metrics.observe(
            model,
            queue_s=queue_s,
            compute_s=0.0,
            emulated_s=held_s,
            service_s=service_s,
            energy_mj={"power": float(e["power_mj"]), "simulator": float(e["simulator_mj"])},
        )
        self.metrics.tokens[model].inc(p.tokens)
        self.metrics.count(model, "ok")
        return {
            "tier": self.cfg.tier,
            "model": model,
            "request_id": request_id or uuid.uuid4().hex,
            "text": " ".join(words),
            "tokens": p.tokens,
            "length": p.length,
            "quality": p.quality,
            "timing": {
                "queue_ms": queue_ms,
                "ttft_ms": p.ttft_ms,
                "total_ms": total_ms,
                "target_ms": p.total_ms,
                "send_lead_ms": lead_ms,
                "service_ms": service_s * 1000.0,
            },
            "energy": e,
            "emulated": {"device_time": True, "energy": True, "lm": True},
        }

    async def generate(
        self,
        model: str,
        prompt: str,
        max_tokens: int | None,
        length: str | None,
        request_id: str | None,
        t_arrive: float,
    ) -> tuple[dict[str, Any], float]:
        """Emulated LM answer, holding a device slot for ttft + (tokens - 1) × tpot; returns
        the answer and when its hold ended (for :meth:`observe_send`)."""
        self.check_model(model, "lm")
        p = lm.plan(self.cfg.lm[model], max_tokens, length)
        words = lm.generate_tokens(model, prompt, p.tokens)
        async with self.slot(model, t_arrive) as (_, queue_s, t_start):
            t_end, lead_s = await self.hold_device(t_start, p.total_ms)
        held_s = t_end - t_start + lead_s
        return self.lm_result(model, p, words, request_id, queue_s, held_s, t_arrive,
                              lead_s * 1000.0), t_end


def _is_realtime() -> bool:
    try:
        return os.sched_getscheduler(0) == os.SCHED_FIFO
    except (AttributeError, OSError):
        return False
