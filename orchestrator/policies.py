"""Routing policies (registry keyed by config name) and the latency predictor they consult.

A policy is a class with an async ``decide(request, ctx)``: it calls ``await ctx.attempt(route)``
for every route it wants to try (each attempt really runs over HTTP; its time and energy count)
and returns the attempt it accepts. ``ctx.predict_ms(route)`` gives the predicted latency of a
route (tier profile + link RTT, optionally corrected online by an EWMA of what was observed) and
``ctx.remaining_ms()`` the deadline budget left.

A route is ``node/model`` (``edge-2/fp32``), ``@class/model`` (``@edge/fp32``: the nearest node
of class edge that serves the model, seen from the requesting device, by configured round
trip; ties by name) or ``@access/model`` (the device group's access node, ``attach``).
Selectors are resolved per request against the requesting device's view of the topology
(``ctx.nodes``: the nodes its group reaches, with their round trips from it), so one policy
serves every device group; :func:`make_policy` binds a policy to a view for validation. The
built-in policies name classes only, never nodes. Add a policy::

    @register_policy("edge_first")
    class EdgeFirst(Policy):
        def __init__(self, threshold: float = 0.9) -> None:
            self.threshold = threshold

        async def decide(self, request, ctx):
            first = await ctx.attempt("edge/int8" if request.kind == "cv" else "edge/slm")
            if first.ok and first.confidence >= self.threshold:
                return first
            return await ctx.attempt("cloud/fp32" if request.kind == "cv" else "cloud/llm")
"""

from __future__ import annotations

import inspect
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from orchestrator.client import Attempt
from orchestrator.profiles import (
    LM_MODELS,
    SIM_LATENCY_MS,
    SIM_LM_EXTRA_MS,
    SIM_RTT_RANGE_MS,
    TIERS,
    parse_route,
    sim_model_latency_ms,
    split_route,
)
from orchestrator.workload import Request
from services.tier import simulator
from services.tier.classes import ESCALATION_LADDER, class_names

LOCAL, EDGE, CLOUD = (f"@{c}" for c in ESCALATION_LADDER)  # class selectors, not node names
ACCESS = "@access"  # the device group's access node


@dataclass(frozen=True)
class NodeInfo:
    """What a policy may know about a node before sending: its class, the configured mean round
    trip from the device, its device slots and the models it serves (empty: unknown)."""

    name: str
    node_class: str
    rtt_ms: float = 0.0
    concurrency: int = 1
    models: tuple[str, ...] = ()  # vision and LM models and chains (empty: unknown)
    rate_mbit: float | None = None  # the slowest configured link rate on the path, up (None: none)
    down_rate_mbit: float | None = None  # ... and down, towards the device
    active_w: float = 0.0  # the node's configured active power (its class profile)


def default_nodes() -> dict[str, NodeInfo]:
    """The nodes of an experiment without ``tiers:``: one per default class, named after it."""
    return {
        c: NodeInfo(c, c, sum(SIM_RTT_RANGE_MS.get(c, (0, 0))) / 2.0,
                    models=tuple(simulator.MODEL_LATENCY_MS.get(c, {})))
        for c in TIERS
    }


def resolve_route(route: str, nodes: Mapping[str, NodeInfo],
                  access: str | None = None) -> tuple[str, str | None]:
    """``(node/model, None)`` for a route or a selector that resolves against ``nodes`` (one
    device group's view; ``access`` its access node), else ``(route, why)``."""
    node, model = parse_route(route)
    if not node.startswith("@"):
        return f"{node}/{model}", None
    if node == ACCESS:
        if access is None:
            return route, (f"route {route}: the device group declares no access node "
                           "(devices.<group>.attach)")
        return f"{access}/{model}", None
    wanted = node[1:]
    if wanted not in class_names():
        return route, (f"route {route}: {wanted!r} is not a class or 'access'; classes: "
                       f"{', '.join(class_names())}")
    fits = [n for n in nodes.values()
            if n.node_class == wanted and (not n.models or model in n.models)]
    if not fits:
        have = ", ".join(f"{n.name} ({n.node_class})" for n in nodes.values()) or "none"
        return route, f"route {route}: no node of class {wanted} serves {model} (nodes: {have})"
    best = min(fits, key=lambda n: (n.rtt_ms, n.name))
    return f"{best.name}/{model}", None


class LatencyPredictor:
    """Predicted latency per route: device profile + link RTT, EWMA-corrected when alpha > 0."""

    def __init__(
        self,
        *,
        device_ms: dict[str, dict[str, float]] | None = None,
        rtt_ms: dict[str, float] | None = None,
        ewma_alpha: float = 0.2,
    ) -> None:
        if not 0.0 <= ewma_alpha <= 1.0:
            raise ValueError(f"predictor.ewma_alpha must be within 0..1, got {ewma_alpha}")
        self.device_ms = device_ms or SIM_LATENCY_MS
        self.rtt_ms = (
            rtt_ms
            if rtt_ms is not None
            else {t: (lo + hi) / 2 for t, (lo, hi) in SIM_RTT_RANGE_MS.items()}
        )
        self.ewma_alpha = ewma_alpha
        self._observed: dict[tuple[str, str], float] = {}

    def prior_ms(self, route: str, length: str = "") -> float:
        """Device profile latency (+ the simulator's LM length overhead) + mean link RTT."""
        tier, model = split_route(route)
        table = self.device_ms.get(tier, {})
        base_model = "slm" if model == "llm" and "llm" not in table else model
        if base_model in table:
            device = table[base_model]
            if model in LM_MODELS and length:
                device += SIM_LM_EXTRA_MS.get(tier, {}).get(length, 0.0)
        else:
            device = sim_model_latency_ms(tier, model, length or None)
        return device + self.rtt_ms.get(tier, 0.0)

    def predict_ms(self, route: str, length: str = "") -> float:
        key = (route, length)
        return self._observed.get(key, self.prior_ms(route, length))

    def observe(self, route: str, length: str, latency_ms: float) -> None:
        if self.ewma_alpha <= 0:
            return
        key = (route, length)
        prev = self._observed.get(key, self.prior_ms(route, length))
        self._observed[key] = (1 - self.ewma_alpha) * prev + self.ewma_alpha * latency_ms


AttemptFn = Callable[..., Awaitable[Attempt]]


def _wall_clock() -> float:
    import time

    return time.perf_counter()


class PolicyContext:
    """What a policy sees while handling one request: the request, the requesting device
    (``device``, ``group``), its view of the nodes (``nodes``: what its group reaches, with
    the round trips from it; ``access``: its access node), the predictor and the clock."""

    def __init__(
        self,
        request: Request,
        attempt_fn: AttemptFn,
        predictor: LatencyPredictor,
        t_intended: float,
        *,
        nodes: Mapping[str, NodeInfo] | None = None,
        access: str | None = None,
        clock: Callable[[], float] = _wall_clock,
        radio: Any = None,
    ) -> None:
        self.request = request
        self._attempt_fn = attempt_fn
        self.predictor = predictor
        self.t_intended = t_intended
        self.nodes: Mapping[str, NodeInfo] = nodes if nodes is not None else default_nodes()
        self.access = access
        self.radio = radio  # the device group's radio (energy.RadioModel), when it has one
        self.device = request.device
        self.group = request.group
        self._now = clock
        self.attempts: list[Attempt] = []
        # what the policy chose beyond routes (a cut, an exit threshold, the variants asked):
        # recorded as the record's ``decision`` (key=value joined by ";")
        self.decision: dict[str, Any] = {}

    def resolve(self, route: str) -> str:
        """``node/model`` for a route or selector, from this request's device; raises
        ValueError when a selector names no node this device reaches."""
        resolved, why = resolve_route(route, self.nodes, self.access)
        if why:
            raise ValueError(why)
        return "/".join(split_route(resolved))  # one spelling: node names in lower case

    async def attempt(self, route: str, *, timeout_ms: float | None = None,
                      **stage: Any) -> Attempt:
        """Run one attempt on ``route`` (a selector is resolved first). ``timeout_ms`` bounds
        this attempt below the request's budget (a fan-out answering at the deadline);
        ``stage`` makes it a chain stage: ``op`` (``client.ChainOp``), ``tensor`` (the cut
        tensor to send), ``top_k``."""
        route = self.resolve(route)
        if timeout_ms is None and not stage:
            a = await self._attempt_fn(route)
        else:
            a = await self._attempt_fn(route, timeout_ms=timeout_ms, **stage)
        self.attempts.append(a)
        if a.ok and not stage:  # a stage is part of a route: its time is not the route's
            self.predictor.observe(route, self.request.length, a.latency_ms)
        return a

    def predict_ms(self, route: str) -> float:
        return self.predictor.predict_ms(self.resolve(route), self.request.length)

    def elapsed_ms(self) -> float:
        return (self._now() - self.t_intended) * 1e3

    def remaining_ms(self) -> float:
        return self.request.deadline_ms - self.elapsed_ms()


class Policy:
    """Base class: ``decide`` returns the accepted attempt (or the last one tried)."""

    name: str = "policy"
    nodes: dict[str, NodeInfo]
    unresolved: dict[str, str]  # selector -> why it names no node (reported if it is used)

    def bind(self, nodes: Mapping[str, NodeInfo]) -> None:
        """Check the selectors in ``cv_routes``/``lm_routes`` against ``nodes`` (a selector
        that names no node goes to ``unresolved``, reported when the workload needs it). The
        routes keep their selectors: each request resolves them from its own device."""
        self.nodes = dict(nodes)
        self.unresolved = {}
        for attr in ("cv_routes", "lm_routes"):
            for route in getattr(self, attr, []):
                if parse_route(route)[0] == ACCESS:
                    continue  # per device group: checked against each group's attach
                _, why = resolve_route(route, nodes)
                if why:
                    self.unresolved[route] = why

    async def decide(self, request: Request, ctx: PolicyContext) -> Attempt:
        raise NotImplementedError

    def selectors(self) -> list[str]:
        """Routes this policy may use as written (``@class/model`` selectors unresolved)."""
        unresolved = getattr(self, "unresolved", {})
        return [r for attr in ("cv_routes", "lm_routes") for r in getattr(self, attr, [])
                if r not in unresolved]

    def routes(self) -> list[str]:
        """Routes this policy may use, resolved against the bound view (pre-initialises
        metric labels)."""
        return self.resolved_routes()

    def resolved_routes(self, nodes: Mapping[str, NodeInfo] | None = None,
                        access: str | None = None) -> list[str]:
        """:meth:`selectors` resolved against ``nodes`` (default: the bound view); selectors
        that name no node there are left out."""
        out = []
        view = nodes if nodes is not None else getattr(self, "nodes", default_nodes())
        for r in self.selectors():
            resolved, why = resolve_route(r, view, access)
            if not why:
                out.append(resolved)
        return list(dict.fromkeys(out))


POLICIES: dict[str, type[Policy]] = {}


def register_policy(name: str) -> Callable[[type[Policy]], type[Policy]]:
    def deco(cls: type[Policy]) -> type[Policy]:
        cls.name = name
        POLICIES[name] = cls
        return cls

    return deco


def _check_routes(key: str, routes: Sequence[str], n: int | None = None) -> list[str]:
    try:
        routes = ["/".join(parse_route(r)) for r in routes]
    except ValueError as exc:
        raise ValueError(f"{key}: {exc}") from exc
    if not routes or (n is not None and len(routes) != n):
        raise ValueError(f"{key} must list {n or 'at least 1'} route(s), got {routes}")
    return routes


def _check_unit(key: str, value: float) -> float:
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{key} must be within 0..1, got {value}")
    return value


def _check_margin(margin: float) -> float:
    value = float(margin)
    if not 0 < value <= 10:
        raise ValueError(f"margin must be within 0..10 (exclusive 0), got {margin}")
    return value


def _pick(request: Request, cv: list[str], lm: list[str]) -> list[str]:
    return cv if request.kind == "cv" else lm


class _Single(Policy):
    cv_default = f"{LOCAL}/tinycnn"
    lm_default = f"{LOCAL}/slm"

    def __init__(self, cv_route: str | None = None, lm_route: str | None = None) -> None:
        self.cv_routes = _check_routes("cv_route", [cv_route or self.cv_default], 1)
        self.lm_routes = _check_routes("lm_route", [lm_route or self.lm_default], 1)

    async def decide(self, request: Request, ctx: PolicyContext) -> Attempt:
        return await ctx.attempt(_pick(request, self.cv_routes, self.lm_routes)[0])


@register_policy("always_local")
class AlwaysLocal(_Single):
    """CV → mcu/tinycnn; LM → mcu/slm."""


@register_policy("always_edge")
class AlwaysEdge(_Single):
    """CV → edge/fp32; LM → edge/slm (the simulator's suggested extension)."""

    cv_default = f"{EDGE}/fp32"
    lm_default = f"{EDGE}/slm"


@register_policy("always_cloud")
class AlwaysCloud(_Single):
    """CV → cloud/fp32; LM → cloud/llm."""

    cv_default = f"{CLOUD}/fp32"
    lm_default = f"{CLOUD}/llm"


class _Ladder(Policy):
    cv_default: tuple[str, ...] = (f"{LOCAL}/int8", f"{EDGE}/fp32", f"{CLOUD}/fp32")
    lm_default: tuple[str, ...] = (f"{LOCAL}/slm", f"{EDGE}/slm", f"{CLOUD}/llm")

    def __init__(
        self, cv_routes: Sequence[str] | None = None, lm_routes: Sequence[str] | None = None
    ) -> None:
        self.cv_routes = _check_routes("cv_routes", cv_routes or self.cv_default)
        self.lm_routes = _check_routes("lm_routes", lm_routes or self.lm_default)


@register_policy("confidence")
class ConfidenceThreshold(_Ladder):
    """Escalate MCU → EDGE → CLOUD until confidence ≥ threshold; deadlines ignored.

    A failed attempt (timeout, refused, 503) escalates too; the last route is accepted as is.
    """

    def __init__(self, threshold: float = 0.78, **routes: Any) -> None:
        super().__init__(**routes)
        self.threshold = _check_unit("threshold", threshold)

    async def decide(self, request: Request, ctx: PolicyContext) -> Attempt:
        ladder = _pick(request, self.cv_routes, self.lm_routes)
        a: Attempt | None = None
        for route in ladder:
            a = await ctx.attempt(route)
            if a.ok and a.confidence >= self.threshold:
                return a
        assert a is not None
        return a


@register_policy("latency_aware")
class LatencyAware(_Ladder):
    """Take the first route whose PREDICTED latency ≤ margin × deadline budget left, else the last.

    Confidence is ignored. Unlike the simulator (which checks a latency it could only know
    after running), the choice is made before sending; a failed attempt escalates.
    """

    cv_default = (f"{LOCAL}/tinycnn", f"{EDGE}/tinycnn", f"{CLOUD}/fp32")

    def __init__(self, margin: float = 0.9, **routes: Any) -> None:
        super().__init__(**routes)
        self.margin = _check_margin(margin)

    async def decide(self, request: Request, ctx: PolicyContext) -> Attempt:
        ladder = _pick(request, self.cv_routes, self.lm_routes)
        a: Attempt | None = None
        for i, route in enumerate(ladder):
            last = i == len(ladder) - 1
            if not last and ctx.predict_ms(route) > self.margin * ctx.remaining_ms():
                continue
            a = await ctx.attempt(route)
            if a.ok:
                return a
        if a is None:  # unreachable: the last route always runs
            a = await ctx.attempt(ladder[-1])
        return a


@register_policy("hybrid")
class Hybrid(_Ladder):
    """mcu/int8 if predicted in budget and confidence ≥ threshold; else edge/fp32 if predicted
    in budget; else cloud/fp32 (LM: slm → slm → llm). Failed attempts escalate."""

    def __init__(self, threshold: float = 0.8, margin: float = 0.85, **routes: Any) -> None:
        super().__init__(**routes)
        self.threshold = _check_unit("threshold", threshold)
        self.margin = _check_margin(margin)

    async def decide(self, request: Request, ctx: PolicyContext) -> Attempt:
        ladder = _pick(request, self.cv_routes, self.lm_routes)
        a: Attempt | None = None
        for i, route in enumerate(ladder):
            last = i == len(ladder) - 1
            if not last and ctx.predict_ms(route) > self.margin * ctx.remaining_ms():
                continue
            a = await ctx.attempt(route)
            if not a.ok:
                continue
            if last or i > 0 or a.confidence >= self.threshold:
                return a
        assert a is not None
        return a


class _ClassSpread(Policy):
    """Base of the policies that pick one node among all nodes of a class."""

    def __init__(self, node_class: str = ESCALATION_LADDER[1], cv_model: str = "fp32",
                 lm_model: str = "slm") -> None:
        if node_class not in class_names():
            raise ValueError(f"node_class must be one of {class_names()}, got {node_class!r}")
        split_route(f"x/{cv_model}")
        split_route(f"x/{lm_model}")
        self.node_class, self.cv_model, self.lm_model = node_class, cv_model, lm_model
        self.cv_routes = [f"@{node_class}/{cv_model}"]
        self.lm_routes = [f"@{node_class}/{lm_model}"]

    def bind(self, nodes: Mapping[str, NodeInfo]) -> None:
        super().bind(nodes)  # reports "no node of the class" through ``unresolved``
        for attr, model in (("cv_routes", self.cv_model), ("lm_routes", self.lm_model)):
            fits = sorted(n.name for n in nodes.values() if n.node_class == self.node_class
                          and (not n.models or model in n.models))
            if fits:
                setattr(self, attr, [f"{n}/{model}" for n in fits])

    def score(self, route: str, request: Request, ctx: PolicyContext) -> float:
        raise NotImplementedError

    def candidates(self, request: Request, ctx: PolicyContext) -> list[str]:
        """This policy's routes to the nodes the requesting device reaches."""
        routes = _pick(request, self.cv_routes, self.lm_routes)
        mine = [r for r in routes if r.split("/", 1)[0] in ctx.nodes]
        return mine or routes  # none reachable: try anyway, the attempt records why

    async def decide(self, request: Request, ctx: PolicyContext) -> Attempt:
        routes = self.candidates(request, ctx)
        best = min(routes, key=lambda r: (self.score(r, request, ctx), r))
        return await ctx.attempt(best)


@register_policy("nearest")
class Nearest(_ClassSpread):
    """Every request to the node of ``node_class`` with the least expected latency without
    load: configured round trip + the node's device time (the predictor's prior)."""

    def score(self, route: str, request: Request, ctx: PolicyContext) -> float:
        return ctx.predictor.prior_ms(route, request.length)


@register_policy("least_loaded")
class LeastLoaded(_ClassSpread):
    """Shortest expected delay across the nodes of ``node_class``: round trip + device time ×
    (1 + waiting ÷ slots), where waiting is the larger of what the node last reported (its
    queue and busy slots, on every answer) and what this policy has in flight there."""

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.in_flight: dict[str, int] = defaultdict(int)
        self.reported: dict[str, int] = {}

    def score(self, route: str, request: Request, ctx: PolicyContext) -> float:
        node = route.split("/", 1)[0]
        info = ctx.nodes.get(node) or self.nodes.get(node, NodeInfo(node, self.node_class))
        device_ms = max(0.0, ctx.predictor.prior_ms(route, request.length) - info.rtt_ms)
        waiting = max(self.reported.get(node, 0), self.in_flight[node])
        return info.rtt_ms + device_ms * (1.0 + waiting / max(1, info.concurrency))

    async def decide(self, request: Request, ctx: PolicyContext) -> Attempt:
        routes = self.candidates(request, ctx)
        best = min(routes, key=lambda r: (self.score(r, request, ctx), r))
        node = best.split("/", 1)[0]
        self.in_flight[node] += 1
        try:
            a = await ctx.attempt(best)
        finally:
            self.in_flight[node] -= 1
        if a.queue_depth >= 0:  # the node's load as it answered, this request excluded
            self.reported[node] = a.queue_depth + max(0, a.in_service - 1)
        return a


def make_policy(name: str, params: dict[str, Any] | None = None,
                nodes: Mapping[str, NodeInfo] | None = None) -> Policy:
    """Instantiate a registered policy bound to ``nodes`` (default: the three default nodes),
    naming the bad key on error."""
    if name not in POLICIES:
        raise ValueError(f"policies[].name must be one of {sorted(POLICIES)}, got {name!r}")
    cls = POLICIES[name]
    params = dict(params or {})
    sig = inspect.signature(cls.__init__)
    accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    allowed = [
        p
        for p in sig.parameters
        if p not in ("self",) and sig.parameters[p].kind is not inspect.Parameter.VAR_KEYWORD
    ]
    if accepts_kwargs:  # what **params passes on to: the nearest base's own parameters
        base_init = next((b.__dict__["__init__"] for b in cls.__mro__[1:]
                          if "__init__" in b.__dict__ and b is not object), None)
        if base_init is not None:
            base_params = inspect.signature(base_init).parameters
            allowed += [p for p, v in base_params.items()
                        if p != "self" and p not in allowed
                        and v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY)]
    for key in params:
        if key not in allowed:
            raise ValueError(
                f"policies[{name}].params.{key} is not a parameter; allowed: {allowed}"
            )
    policy = cls(**params)
    policy.bind(nodes if nodes is not None else default_nodes())
    return policy


# policies with multi-stage routes (early exit, split computing, variant parallelism)
from orchestrator import policies_research  # noqa: E402,F401  (registers them)
