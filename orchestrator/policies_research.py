"""Policies whose routes are several stages: early exit, split computing, variant parallelism.

A stage is one attempt on one node running part of a chain (``client.ChainOp`` → the tier's
``POST /v1/chain``): the cut tensor one stage returns is the body of the next, so it really
crosses the links between them (its bytes meet the links' rate limits). Every stage is recorded
as an attempt (time, bytes, energy, exit, probabilities); what the policy chose (cut, exit
threshold, variants asked and answered) is the record's ``decision``.

- ``early_exit`` (BranchyNet-style): the multi-exit CNN runs on the device, stopping at the first
  exit whose confidence passes the threshold; if none does by ``local_stop``, the remainder (the
  cut tensor) or the input goes to the server.
- ``split`` (Neurosurgeon-style): head segments on the device, the tensor over the link, tail on
  the server; the cut is fixed or chosen per request from predicted device time, tensor bytes ÷
  the link's rate, the round trip and the server's time, for latency or device energy.
- ``variant_parallel``: the request fans out to several variant models on several nodes, each
  answering its top-k; the answers that arrive by the deadline are merged by a weighted sum (a
  dead node lowers accuracy, it loses no record).

Device time (profile mode) and energy are emulated by the tiers and the energy model; inference,
tensors and bytes on the links are real.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence

from models.catalog import ChainSpec, chain_spec
from orchestrator.client import Attempt, ChainOp
from orchestrator.policies import (
    EDGE,
    LOCAL,
    NodeInfo,
    Policy,
    PolicyContext,
    _check_unit,
    register_policy,
    resolve_route,
)
from orchestrator.profiles import split_route
from orchestrator.workload import Request

CRITERIA = ("confidence", "entropy")
# HTTP head and answer bytes around a stage's tensor before any was observed (measured on the
# loopback stack: ~260 B request head, ~700-900 B JSON answer); learned per route afterwards
PRIOR_OVERHEAD_TX = 300.0
PRIOR_OVERHEAD_RX = 900.0
OVERHEAD_GAIN = 0.2


def _chain(key: str, name: str, kind: str | None = None) -> ChainSpec:
    try:
        spec = chain_spec(name)
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from None
    if kind is not None and spec.kind != kind:
        raise ValueError(f"{key}: {name} is not a {kind} chain; this policy needs "
                         f"{kind}-fp32 or {kind}-int8")
    return spec


def _selector(key: str, value: str) -> str:
    value = str(value)
    if not value or "/" in value:
        raise ValueError(f"{key} must be a node or selector without a model (e.g. @mcu, "
                         f"@access, edge-1), got {value!r}")
    return value


def _not_cv(request: Request, ctx: PolicyContext) -> Attempt | None:
    """These policies classify images; an LM request is refused without sending."""
    if request.kind == "cv":
        return None
    return Attempt(route=f"none/{request.kind}", outcome="error",
                   error="this policy serves image requests only (workload.lm_ratio: 0)")


class _Staged(Policy):
    """Base: a device (head) selector and a server (tail) selector serving ``chain``."""

    chain: ChainSpec

    def __init__(self, chain: str, device: str, server: str, kind: str) -> None:
        self.chain = _chain("chain", chain, kind)
        self.device = _selector("device", device)
        self.server = _selector("server", server)
        self.cv_routes = [f"{self.device}/{self.chain.name}", f"{self.server}/{self.chain.name}"]
        self.lm_routes: list[str] = []

    async def decide(self, request: Request, ctx: PolicyContext) -> Attempt:
        raise NotImplementedError


@register_policy("early_exit")
class EarlyExit(_Staged):
    """Run the multi-exit chain on ``device`` up to segment ``local_stop``, answering at the first
    exit whose ``criterion`` passes ``threshold``; otherwise ``escalate``: ``remainder`` sends
    the cut tensor to ``server`` for the remaining segments, ``input`` sends the image to
    ``server`` (``server_model``, default the whole chain), ``none`` answers with the device's
    last exit (``local_stop`` must then be the last segment)."""

    def __init__(self, threshold: float = 0.9, chain: str = "exit-int8",
                 criterion: str = "confidence", local_stop: int | None = None,
                 escalate: str = "remainder", device: str = LOCAL, server: str = EDGE,
                 server_model: str | None = None) -> None:
        super().__init__(chain, device, server, "exit")
        self.threshold = _check_unit("threshold", threshold)
        if criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {list(CRITERIA)}, got {criterion!r}")
        self.criterion = criterion
        n = self.chain.n
        if escalate not in ("remainder", "input", "none"):
            raise ValueError("escalate must be one of ['remainder', 'input', 'none'], "
                             f"got {escalate!r}")
        self.escalate = escalate
        lo, hi = {"none": (n, n), "remainder": (1, n - 1)}.get(escalate, (1, n))
        stop = hi if local_stop is None else local_stop
        if isinstance(stop, bool) or not isinstance(stop, int) or not lo <= stop <= hi:
            why = {"none": " with escalate: none (nothing runs the remaining segments)",
                   "remainder": f" with escalate: remainder (segment {n} is the last: no "
                                "remainder)"}.get(escalate, "")
            raise ValueError(f"local_stop must be within {lo}..{hi}{why}; the exits of "
                             f"{self.chain.name}: {self.chain.exits()}; got {local_stop!r}")
        self.local_stop = stop
        self.server_model = server_model
        if escalate == "input" and server_model is not None:
            self.cv_routes[1] = f"{self.server}/{server_model}"
        if escalate == "none":
            self.cv_routes = self.cv_routes[:1]

    async def decide(self, request: Request, ctx: PolicyContext) -> Attempt:
        refused = _not_cv(request, ctx)
        if refused is not None:
            return refused
        ctx.decision.update(threshold=f"{self.threshold:g}", local_stop=self.local_stop)
        # with a threshold the tier answers at the first exit that passes, else (before the
        # chain's end) with the tensor at local_stop
        head = await ctx.attempt(self.cv_routes[0], op=ChainOp(
            0, self.local_stop, self.threshold, self.criterion))
        if head.ok and head.tensor is None:
            ctx.decision["exit"] = head.exit
            return head
        if self.escalate == "none":
            return head
        if self.escalate == "remainder" and head.ok:
            tail = await ctx.attempt(self.cv_routes[1], op=ChainOp(self.local_stop),
                                     tensor=head.tensor)
        elif self.server_model is not None:
            tail = await ctx.attempt(self.cv_routes[1])
        else:  # the input (or, the device failing, the image) to the server's whole chain
            tail = await ctx.attempt(f"{self.server}/{self.chain.name}", op=ChainOp(0))
        ctx.decision["escalated"] = "remainder" if head.ok and self.escalate == "remainder" \
            else "input"
        if tail.ok and tail.exit > 0:
            ctx.decision["exit"] = tail.exit
        return tail


@register_policy("split")
class Split(_Staged):
    """Head segments 1..k of ``chain`` on ``device``, the cut tensor over the link, segments
    k+1..n on ``server``. ``cut``: a fixed k in 0..n (0: all on the server, n: all on the
    device), or ``auto``: per request, the k with the least predicted ``objective``
    (``latency`` or device ``energy``) among ``cuts`` (default all), Neurosurgeon-style:

        latency(k) = device_ms × share(1..k) + [k < n] (rtt + bytes_up(k) ÷ rate +
                     bytes_down ÷ rate + server_ms × share(k+1..n))
        energy(k)  = device active power × device time + radio (tx, rx, wait) for the stage

    ``device_ms``/``server_ms``: the nodes' configured chain latency; ``share``: each segment's
    share of the chain's measured invoke time (manifest); ``bytes_up(k)``: the tensor at cut k
    (the image at 0) plus the request head; ``rate``: ``bandwidth_mbit`` if given, else the
    group's configured bottleneck rate to the server (unlimited: serialization ignored); head
    and answer overheads are learned from the attempts."""

    def __init__(self, cut: int | str = "auto", chain: str = "split-int8",
                 objective: str = "latency", device: str = LOCAL, server: str = EDGE,
                 cuts: Sequence[int] | None = None, bandwidth_mbit: float | None = None) -> None:
        super().__init__(chain, device, server, "split")
        n = self.chain.n
        if cut != "auto":
            if isinstance(cut, bool) or not isinstance(cut, int) or not 0 <= cut <= n:
                raise ValueError(f"cut must be 'auto' or a cut index within 0..{n} (the cuts of "
                                 f"{self.chain.name}; 0: all on the server, {n}: all on the "
                                 f"device), got {cut!r}")
        self.cut = cut
        if objective not in ("latency", "energy"):
            raise ValueError(f"objective must be one of ['latency', 'energy'], got {objective!r}")
        self.objective = objective
        allowed = list(range(n + 1))
        self.cuts = list(cuts) if cuts is not None else allowed
        bad = [c for c in self.cuts if c not in allowed]
        if not self.cuts or bad:
            raise ValueError(f"cuts must list cut indices within 0..{n}, got {list(self.cuts)}")
        if bandwidth_mbit is not None and not 0 < float(bandwidth_mbit) <= 1e5:
            raise ValueError(f"bandwidth_mbit must be within 0..100000 (exclusive 0), got "
                             f"{bandwidth_mbit}")
        self.bandwidth_mbit = None if bandwidth_mbit is None else float(bandwidth_mbit)
        self.overhead: dict[str, list[float]] = {}  # node -> [tx, rx] bytes around the tensor

    # --- prediction ---

    def _chain_ms(self, ctx: PolicyContext, route: str) -> float:
        return ctx.predictor.device_ms.get(route.split("/", 1)[0], {}).get(self.chain.name, 0.0)

    def predict(self, k: int, ctx: PolicyContext) -> dict[str, float]:
        """Predicted latency (ms) and device energy (mJ) of cut ``k`` for this request."""
        n = self.chain.n
        dev_route, srv_route = ctx.resolve(self.cv_routes[0]), ctx.resolve(self.cv_routes[1])
        dev_node, srv_node = dev_route.split("/", 1)[0], srv_route.split("/", 1)[0]
        dev_info = ctx.nodes.get(dev_node, NodeInfo(dev_node, ""))
        srv_info = ctx.nodes.get(srv_node, NodeInfo(srv_node, ""))
        dev_ms = self._chain_ms(ctx, dev_route) * self.chain.share(1, k) if k > 0 else 0.0
        latency, tx_s, rx_s = dev_ms + (dev_info.rtt_ms if k > 0 else 0.0), 0.0, 0.0
        if k < n:
            tx_over, rx_over = self.overhead.get(srv_node, [PRIOR_OVERHEAD_TX, PRIOR_OVERHEAD_RX])
            up_rate = self.bandwidth_mbit or srv_info.rate_mbit
            down_rate = self.bandwidth_mbit or srv_info.down_rate_mbit
            if up_rate:
                tx_s = (self.chain.cut_bytes(k) + tx_over) * 8 / (up_rate * 1e6)
            if down_rate:
                rx_s = (self.chain.cut_bytes(n) + rx_over) * 8 / (down_rate * 1e6)
            srv_ms = self._chain_ms(ctx, srv_route) * self.chain.share(k + 1, n)
            latency += srv_info.rtt_ms + (tx_s + rx_s) * 1e3 + srv_ms
        energy = dev_info.active_w * dev_ms  # W × ms = mJ
        radio = ctx.radio
        if k < n and radio is not None:
            net_s = latency / 1e3 - dev_ms / 1e3
            tx_r = (self.chain.cut_bytes(k) + PRIOR_OVERHEAD_TX) * 8 / (radio.uplink_kbps * 1e3)
            rx_r = (self.chain.cut_bytes(n) + PRIOR_OVERHEAD_RX) * 8 / (radio.downlink_kbps * 1e3)
            energy += (radio.tx_power_mw * tx_r + radio.rx_power_mw * rx_r
                       + radio.wait_power_mw * max(0.0, net_s - tx_r - rx_r))
        return {"latency_ms": latency, "energy_mj": energy}

    def choose(self, ctx: PolicyContext) -> int:
        if self.cut != "auto":
            return int(self.cut)
        key = "latency_ms" if self.objective == "latency" else "energy_mj"
        return min(self.cuts, key=lambda k: (self.predict(k, ctx)[key], -k))

    def _learn(self, a: Attempt) -> None:
        if not a.ok or a.bytes_tx <= 0:
            return
        tx = a.bytes_tx - a.tensor_in_bytes
        rx = a.bytes_rx - a.tensor_out_bytes
        old = self.overhead.setdefault(a.tier, [PRIOR_OVERHEAD_TX, PRIOR_OVERHEAD_RX])
        old[0] += OVERHEAD_GAIN * (tx - old[0])
        old[1] += OVERHEAD_GAIN * (rx - old[1])

    async def decide(self, request: Request, ctx: PolicyContext) -> Attempt:
        refused = _not_cv(request, ctx)
        if refused is not None:
            return refused
        k, n = self.choose(ctx), self.chain.n
        ctx.decision["cut"] = k
        if self.cut == "auto":
            ctx.decision["predicted_ms"] = f"{self.predict(k, ctx)['latency_ms']:.2f}"
        if k == 0:
            a = await ctx.attempt(self.cv_routes[1], op=ChainOp(0))
        elif k == n:
            a = await ctx.attempt(self.cv_routes[0], op=ChainOp(0))
        else:
            head = await ctx.attempt(self.cv_routes[0], op=ChainOp(0, k))
            if not head.ok or head.tensor is None:
                return head
            a = await ctx.attempt(self.cv_routes[1], op=ChainOp(k), tensor=head.tensor)
        self._learn(a)
        return a


@register_policy("variant_parallel")
class VariantParallel(Policy):
    """Fan the image out to the first ``k`` of ``variants`` (routes ``node/model``, each a
    complete classifier), each answering its ``top_k`` classes; at ``answer_at`` × the deadline
    (or when all answered) merge what arrived: score(c) = Σ weight_i × p_i(c) over the answers
    that list c, the prediction is the best score and the confidence its share of the summed
    scores. Late or failed variants are recorded and left out of the merge."""

    def __init__(self, variants: Sequence[str], k: int | None = None, top_k: int = 3,
                 weights: Sequence[float] | None = None, answer_at: float = 0.9) -> None:
        from orchestrator.policies import _check_routes

        self.variants = _check_routes("variants", list(variants))
        n = len(self.variants)
        self.k = n if k is None else k
        if isinstance(self.k, bool) or not isinstance(self.k, int) or not 1 <= self.k <= n:
            raise ValueError(f"k must be within 1..{n} (the variants listed), got {k!r}")
        if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= 10:
            raise ValueError(f"top_k must be within 1..10 (the classes), got {top_k!r}")
        self.top_k = top_k
        w = [1.0] * n if weights is None else [float(x) for x in weights]
        if len(w) != n or any(not math.isfinite(x) or x < 0 for x in w) or sum(w) <= 0:
            raise ValueError(f"weights must list {n} non-negative numbers (one per variant) "
                             f"with a positive sum, got {weights!r}")
        self.weights = w
        if not 0 < float(answer_at) <= 1:
            raise ValueError(f"answer_at must be within 0..1 (exclusive 0): the share of the "
                             f"deadline to wait for answers, got {answer_at}")
        self.answer_at = float(answer_at)
        self.cv_routes = self.variants[: self.k]
        self.lm_routes: list[str] = []

    def bind(self, nodes: Mapping[str, NodeInfo]) -> None:
        super().bind(nodes)
        for route in self.cv_routes:
            if route.startswith("@"):
                continue
            _, why = resolve_route(route, nodes)
            if why:
                self.unresolved[route] = why

    @staticmethod
    def merge(answers: Sequence[tuple[float, Attempt]]) -> tuple[int, float, list[float]]:
        """(prediction, confidence, scores) of the weighted top-k merge."""
        scores = [0.0] * 10
        for w, a in answers:
            idx = a.topk or tuple(range(len(a.probs)))
            for i, v in zip(idx, a.probs, strict=True):
                scores[i] += w * v
        total = sum(scores)
        best = max(range(10), key=lambda c: (scores[c], -c))
        return best, (scores[best] / total if total > 0 else 0.0), scores

    async def decide(self, request: Request, ctx: PolicyContext) -> Attempt:
        refused = _not_cv(request, ctx)
        if refused is not None:
            return refused
        t0 = ctx.elapsed_ms()
        wait_ms = max(0.0, ctx.remaining_ms() * self.answer_at)
        runs = await asyncio.gather(*(ctx.attempt(r, timeout_ms=wait_ms, top_k=self.top_k)
                                      for r in self.cv_routes))
        got = [(w, a) for w, a in zip(self.weights, runs, strict=False) if a.ok and a.probs]
        ctx.decision.update(variants=len(runs), answered=len(got))
        if not got:
            return next((a for a in runs if a.sent), runs[-1])
        pred, conf, scores = self.merge(got)
        models = "+".join(split_route(a.route)[1] for _, a in got)
        merged = Attempt(route=f"ensemble/{models}", outcome="ok", node_class="ensemble",
                         start_ms=t0, latency_ms=ctx.elapsed_ms() - t0, prediction=pred,
                         confidence=conf,
                         probs=tuple(round(s / (sum(scores) or 1.0), 4) for s in scores))
        merged.device_ms = max(a.device_ms for _, a in got)
        return merged
