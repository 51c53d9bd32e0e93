"""Link model: validated per-direction delay/jitter/loss/rate specs, links and topologies.

Conventions (see docs/links.md):

* ``up`` is the direction from a link's ``src`` to its ``dst`` (the client's request path:
  the client sits at ``src`` and connects to the service at ``dst``); ``down`` is the reply path.
* ``delay_ms``/``jitter_ms`` are ONE-WAY figures per direction, as in tc netem. The round trip a
  client sees is the sum of one ``up`` and one ``down`` draw (their convolution).
* ``rtt_range_ms: [lo, hi]`` expresses the teaching simulator's "RTT uniform over the integers
  lo..hi, both ends included" exactly: the whole round-trip draw is put on ``up`` (integer
  uniform, ``integer_ms``) and ``down`` gets zero delay, so each request message sees one draw.
* distributions: ``uniform`` = U[delay-jitter, delay+jitter] (jitter <= delay);
  ``normal`` = N(delay, jitter) clipped at 0; ``pareto`` = netem's table: delay +
  jitter * 4/3 * (X - 1.5), X ~ Pareto(alpha=3, xm=1), capped at delay + 4 * jitter, clipped at 0.
* loss: TCP hides loss, so a lost chunk is modelled as a retransmission-timeout penalty of
  ``loss_rto_ms`` added to that chunk's delay with probability ``loss_pct``/100 (see proxy).
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

Distribution = Literal["uniform", "normal", "pareto"]
DISTRIBUTIONS: tuple[str, ...] = ("uniform", "normal", "pareto")
MAX_DELAY_MS = 60_000.0
MAX_RATE_MBIT = 100_000.0
PARETO_ALPHA = 3.0
PARETO_CAP_SIGMAS = 32767 / 8192  # netem's distribution table is clipped at 32767 / NETEM_DIST_SCALE
MAX_POLL_US = 10_000.0
_DIRECTION_KEYS = ("delay_ms", "jitter_ms", "distribution", "integer_ms", "loss_pct",
                   "loss_rto_ms", "rate_mbit")


def _within(name: str, value: float, lo: float, hi: float) -> float:
    if not (lo <= value <= hi) or math.isnan(value):
        raise ValueError(f"{name} must be within {lo:g}..{hi:g}, got {value:g}")
    return value


def _shown(value: Any) -> str:
    """A value for an error message: JSON spellings, huge integers by their size only."""
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int) and abs(value) >= 10**15:
        return f"an integer of {len(str(abs(value))) if value.bit_length() < 10_000 else 'over 3000'} digits"
    if isinstance(value, float):
        return f"{value:g}"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _plain_number(name: str, value: Any, allowed: str) -> Any:
    """Refuse what JSON/YAML would otherwise coerce into a number silently: booleans
    (``true`` is not 1 ms) and integers too large for a float."""
    if isinstance(value, bool) or (isinstance(value, int) and abs(value) >= 10**15):
        raise ValueError(f"{name} must be a number within {allowed}, got {_shown(value)}")
    return value


class DirectionSpec(BaseModel):
    """One direction of a link: one-way delay distribution, loss and bandwidth."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    distribution: Distribution = "uniform"
    integer_ms: bool = Field(
        default=False,
        description="uniform only: draw integers in [delay-jitter, delay+jitter], both ends included",
    )
    loss_pct: float = 0.0
    loss_rto_ms: float = 200.0
    rate_mbit: float | None = None

    @field_validator("delay_ms", "jitter_ms", "loss_rto_ms", "loss_pct", "rate_mbit",
                     mode="before")
    @classmethod
    def _no_bool(cls, v: Any, info: Any) -> Any:
        allowed = {"loss_pct": "0..100", "rate_mbit": f"0.001..{MAX_RATE_MBIT:g} (or null)"}
        return _plain_number(info.field_name, v,
                             allowed.get(info.field_name, f"0..{MAX_DELAY_MS:g}"))

    @field_validator("delay_ms", "jitter_ms", "loss_rto_ms")
    @classmethod
    def _ms_range(cls, v: float, info: Any) -> float:
        return _within(info.field_name, v, 0.0, MAX_DELAY_MS)

    @field_validator("loss_pct")
    @classmethod
    def _loss_range(cls, v: float) -> float:
        return _within("loss_pct", v, 0.0, 100.0)

    @field_validator("rate_mbit")
    @classmethod
    def _rate_range(cls, v: float | None) -> float | None:
        if v is None:
            return v
        if not (0.001 <= v <= MAX_RATE_MBIT):
            raise ValueError(f"rate_mbit must be within 0.001..{MAX_RATE_MBIT:g} (or null), got {v:g}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DirectionSpec:
        if self.distribution == "uniform" and self.jitter_ms > self.delay_ms:
            raise ValueError(
                f"jitter_ms must be within 0..delay_ms ({self.delay_ms:g}) for a uniform "
                f"distribution, got {self.jitter_ms:g}"
            )
        if self.integer_ms:
            if self.distribution != "uniform":
                raise ValueError(f"integer_ms needs distribution uniform, got {self.distribution}")
            lo, hi = self.delay_ms - self.jitter_ms, self.delay_ms + self.jitter_ms
            if lo != round(lo) or hi != round(hi):
                raise ValueError(
                    f"integer_ms needs integer ends delay_ms±jitter_ms, got {lo:g}..{hi:g}"
                )
        return self

    # ---- derived properties -------------------------------------------------------------
    @property
    def is_fixed(self) -> bool:
        """True when every draw is the same value (no jitter, no loss)."""
        return self.jitter_ms == 0 and self.loss_pct == 0

    @property
    def is_zero(self) -> bool:
        return self.delay_ms == 0 and self.is_fixed

    @property
    def loss_ratio(self) -> float:
        return self.loss_pct / 100.0

    @property
    def rate_bytes_per_s(self) -> float | None:
        return None if self.rate_mbit is None else self.rate_mbit * 1e6 / 8

    @property
    def pareto_cap_ms(self) -> float:
        return self.delay_ms + PARETO_CAP_SIGMAS * self.jitter_ms

    # ---- sampling (proxy: one Python draw per chunk; probe: vectorised) ---------------
    def sample_ms(self, rng: random.Random) -> float:
        """One one-way delay draw in ms, including the loss penalty."""
        d = self.sample_base_ms(rng)
        if self.loss_pct and rng.random() < self.loss_ratio:
            d += self.loss_rto_ms
        return d

    def sample_base_ms(self, rng: random.Random) -> float:
        """One draw of the delay law without the loss penalty."""
        if self.jitter_ms == 0:
            return self.delay_ms
        if self.distribution == "uniform":
            if self.integer_ms:
                lo = round(self.delay_ms - self.jitter_ms)
                return float(rng.randint(lo, round(self.delay_ms + self.jitter_ms)))
            return rng.uniform(self.delay_ms - self.jitter_ms, self.delay_ms + self.jitter_ms)
        if self.distribution == "normal":
            return max(0.0, rng.gauss(self.delay_ms, self.jitter_ms))
        x = rng.paretovariate(PARETO_ALPHA)
        v = self.delay_ms + self.jitter_ms * (4.0 / 3.0) * (x - 1.5)
        return max(0.0, min(v, self.pareto_cap_ms))

    def sample_array(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` one-way delay draws in ms (numpy), same law as :meth:`sample_ms`."""
        if self.jitter_ms == 0:
            d = np.full(n, self.delay_ms)
        elif self.distribution == "uniform":
            lo, hi = self.delay_ms - self.jitter_ms, self.delay_ms + self.jitter_ms
            if self.integer_ms:
                d = rng.integers(round(lo), round(hi) + 1, size=n).astype(float)
            else:
                d = rng.uniform(lo, hi, size=n)
        elif self.distribution == "normal":
            d = np.maximum(0.0, rng.normal(self.delay_ms, self.jitter_ms, size=n))
        else:
            x = rng.pareto(PARETO_ALPHA, size=n) + 1.0  # numpy's pareto is Lomax (x_m = 1, shifted)
            d = self.delay_ms + self.jitter_ms * (4.0 / 3.0) * (x - 1.5)
            d = np.clip(d, 0.0, self.pareto_cap_ms)
        if self.loss_pct:
            d = d + np.where(rng.random(n) < self.loss_ratio, self.loss_rto_ms, 0.0)
        return d

    # ---- law (for the fidelity probe) ---------------------------------------------------
    def _base_cdf(self, x: np.ndarray) -> np.ndarray:
        from scipy import stats  # lazy: keeps `edgebed` start-up fast
        x = np.asarray(x, dtype=float)
        if self.jitter_ms == 0:
            return (x >= self.delay_ms).astype(float)
        if self.distribution == "uniform":
            lo, hi = self.delay_ms - self.jitter_ms, self.delay_ms + self.jitter_ms
            if self.integer_ms:
                k = np.floor(x + 1e-9)
                return np.clip((k - lo + 1) / (hi - lo + 1), 0.0, 1.0)
            return np.clip((x - lo) / (hi - lo), 0.0, 1.0)
        if self.distribution == "normal":
            f = stats.norm.cdf(x, self.delay_ms, self.jitter_ms)
            return np.where(x < 0, 0.0, f)
        scale = self.jitter_ms * 4.0 / 3.0
        loc = self.delay_ms - 2.0 * self.jitter_ms  # delay + scale * (X - 1.5) = loc + scale * X
        f = stats.pareto.cdf(x, PARETO_ALPHA, loc=loc, scale=scale)
        f = np.where(x >= self.pareto_cap_ms, 1.0, f)
        return np.where(x < 0, 0.0, f)

    def cdf(self, x: np.ndarray) -> np.ndarray:
        """CDF of one one-way delay draw (ms), loss penalty included."""
        f = self._base_cdf(x)
        if self.loss_pct:
            f = (1 - self.loss_ratio) * f + self.loss_ratio * self._base_cdf(
                np.asarray(x, dtype=float) - self.loss_rto_ms
            )
        return f

    def mean_ms(self) -> float:
        """Configured mean one-way delay in ms (clipping and loss penalty included)."""
        from scipy import integrate, stats
        if self.jitter_ms == 0 or self.distribution == "uniform":
            base = self.delay_ms
        elif self.distribution == "normal":
            z = self.delay_ms / self.jitter_ms
            base = self.delay_ms * stats.norm.cdf(z) + self.jitter_ms * stats.norm.pdf(z)
        else:
            cap = self.pareto_cap_ms
            base = float(integrate.quad(lambda t: 1.0 - float(self._base_cdf(np.array(t))),
                                        0.0, cap, limit=200)[0])
        return base + self.loss_ratio * self.loss_rto_ms


ZERO = DirectionSpec()


def _as_direction(value: Any) -> DirectionSpec:
    return value if isinstance(value, DirectionSpec) else DirectionSpec.model_validate(value)


class LinkSpec(BaseModel):
    """A link between two named endpoints, with one :class:`DirectionSpec` per direction.

    Shorthand keys at the top level (``delay_ms``, ``jitter_ms``, ``distribution``, ``loss_pct``,
    ``loss_rto_ms``, ``rate_mbit``) apply to both directions; ``rtt_range_ms: [lo, hi]`` sets the
    simulator's integer-uniform RTT on ``up`` and zero delay on ``down``. ``listen``/``target``
    (``host:port``) are where a proxy for this link listens and what it forwards to.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    src: str = "device"
    dst: str = "node"  # a label here; the orchestrator checks it names a node
    up: DirectionSpec = ZERO
    down: DirectionSpec = ZERO
    rtt_range_ms: tuple[int, int] | None = None
    listen: str | None = None
    target: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        shared = {k: data.pop(k) for k in _DIRECTION_KEYS if k in data}
        rtt = data.get("rtt_range_ms")
        if rtt is not None:
            if not isinstance(rtt, list | tuple) or len(rtt) != 2:
                raise ValueError(f"rtt_range_ms must be a pair [lo, hi] of integers within "
                                 f"0..{MAX_DELAY_MS:g}, got {_shown(rtt)}")
            lo, hi = rtt
            for name, v in (("rtt_range_ms[0]", lo), ("rtt_range_ms[1]", hi)):
                # booleans, inf/nan and huge integers first: int(inf) would raise
                if (isinstance(v, bool) or not isinstance(v, int | float)
                        or not (0 <= v <= MAX_DELAY_MS) or float(v) != int(v)):
                    raise ValueError(f"{name} must be an integer within 0..{MAX_DELAY_MS:g}, "
                                     f"got {_shown(v)}")
            if lo > hi:
                raise ValueError(f"rtt_range_ms[1] must be within {lo}..60000 (>= lo), got {hi}")
            if shared.keys() & {"delay_ms", "jitter_ms"}:
                raise ValueError("rtt_range_ms cannot be combined with delay_ms/jitter_ms")
            up = {"delay_ms": (lo + hi) / 2, "jitter_ms": (hi - lo) / 2,
                  "distribution": "uniform", "integer_ms": True}
            rest = {k: v for k, v in shared.items() if k not in ("distribution", "integer_ms")}
            expected = {"up": {**rest, **up}, "down": dict(rest)}
            for d in ("up", "down"):  # a dumped spec (rtt_range_ms + its up/down) round-trips
                given = data.get(d)
                if given is not None and _as_direction(given) != _as_direction(expected[d]):
                    raise ValueError(f"rtt_range_ms cannot be combined with a different {d}")
            data["up"], data["down"] = expected["up"], expected["down"]
            data["rtt_range_ms"] = (int(lo), int(hi))
            return data
        for d in ("up", "down"):
            given = data.get(d)
            if isinstance(given, DirectionSpec):
                given = given.model_dump()
            if shared or given is not None:
                data[d] = {**shared, **(given or {})}
        return data

    @field_validator("listen", "target")
    @classmethod
    def _hostport(cls, v: str | None, info: Any) -> str | None:
        if v is not None:
            parse_hostport(v, key=info.field_name)
        return v

    def rtt_mean_ms(self) -> float:
        return self.up.mean_ms() + self.down.mean_ms()

    def rtt_samples(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` round-trip draws (ms): one up plus one down draw each."""
        return self.up.sample_array(n, rng) + self.down.sample_array(n, rng)

    def rtt_cdf(self, n_mc: int = 400_000, seed: int = 12345) -> Any:
        """CDF callable of the configured round trip (exact when one direction is fixed)."""
        if self.down.is_fixed:
            shift, law = self.down.delay_ms, self.up
        elif self.up.is_fixed:
            shift, law = self.up.delay_ms, self.down
        else:
            draws = np.sort(self.rtt_samples(n_mc, np.random.default_rng(seed)))

            def mc_cdf(x: np.ndarray) -> np.ndarray:
                return np.searchsorted(draws, np.asarray(x, dtype=float), side="right") / n_mc

            return mc_cdf

        def exact_cdf(x: np.ndarray) -> np.ndarray:
            return law.cdf(np.asarray(x, dtype=float) - shift)

        return exact_cdf

    def describe(self) -> str:
        if self.rtt_range_ms is not None:
            return f"RTT uniform integer {self.rtt_range_ms[0]}..{self.rtt_range_ms[1]} ms"
        return f"up {describe_direction(self.up)}; down {describe_direction(self.down)}"


def describe_direction(d: DirectionSpec) -> str:
    parts = [f"{d.delay_ms:g} ms"]
    if d.jitter_ms:
        parts.append(f"±{d.jitter_ms:g} {d.distribution}{' int' if d.integer_ms else ''}")
    if d.loss_pct:
        parts.append(f"loss {d.loss_pct:g}% (rto {d.loss_rto_ms:g} ms)")
    if d.rate_mbit:
        parts.append(f"{d.rate_mbit:g} Mbit/s")
    return " ".join(parts)


class PathSpec(BaseModel):
    """A multi-hop path: a request crosses every link of ``hops`` in order, for real.

    The proxy backend opens one listener per hop (see ``netem.proxy``): ``listen`` (default
    ``127.0.0.1:0``) shapes with the first hop's law and forwards to an internal loopback
    listener shaping with the second hop's, ..., the last forwards to ``target``. Each hop
    shares its link's law, draw stream, counters and cut flag with every other user of that
    link. Checked against the topology's links by :class:`Topology` (declared, chained,
    no cycle).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    hops: tuple[str, ...] = Field(description="link names in order: hop i's dst is hop "
                                              "i+1's src")
    listen: str | None = None
    target: str | None = None

    @field_validator("hops", mode="before")
    @classmethod
    def _hop_list(cls, v: Any) -> Any:
        if isinstance(v, str) or not isinstance(v, list | tuple):
            raise ValueError(f"hops must be a list of link names, got {_shown(v)}")
        if not v:
            raise ValueError("hops must name at least one link, got []")
        return v

    @field_validator("listen", "target")
    @classmethod
    def _hostport(cls, v: str | None, info: Any) -> str | None:
        if v is not None:
            parse_hostport(v, key=info.field_name)
        return v


class PathLaw:
    """The configured law of a path: its hops' laws in order (``(link name, LinkSpec)``).

    A request crosses each hop's ``up`` direction and its answer each hop's ``down``, so the
    path's round trip is the sum of one up and one down draw per hop: the convolution of the
    hops' RTT laws. Mean one-way delay per direction = sum of the hops' means (an
    ``rtt_range_ms`` hop carries its whole round trip on ``up``, so it counts there); RTT mean
    = sum of the hops' RTT means. Has the methods the fidelity probe uses of a
    :class:`LinkSpec` (``rtt_mean_ms``, ``rtt_samples``, ``rtt_cdf``, ``describe``).
    """

    def __init__(self, name: str, hops: Any) -> None:
        items = list(hops.items()) if isinstance(hops, Mapping) else list(hops)
        if not items:
            raise ValueError(f"path {name!r} needs at least one hop")
        self.name = name
        self.hops: tuple[tuple[str, LinkSpec], ...] = tuple(
            (str(h), s if isinstance(s, LinkSpec) else LinkSpec.model_validate(s))
            for h, s in items)

    def __repr__(self) -> str:
        return f"PathLaw({self.name!r}, {[h for h, _ in self.hops]})"

    @property
    def hop_names(self) -> list[str]:
        return [h for h, _ in self.hops]

    @property
    def nodes(self) -> list[str]:
        return [self.hops[0][1].src, *(s.dst for _, s in self.hops)]

    def up_mean_ms(self) -> float:
        """Mean one-way delay of a request along the path (sum of the hops' ``up`` means)."""
        return float(sum(s.up.mean_ms() for _, s in self.hops))

    def down_mean_ms(self) -> float:
        """Mean one-way delay of an answer along the path (sum of the hops' ``down`` means)."""
        return float(sum(s.down.mean_ms() for _, s in self.hops))

    def rtt_mean_ms(self) -> float:
        return float(sum(s.rtt_mean_ms() for _, s in self.hops))

    def rtt_samples(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` round-trip draws (ms): the sum of one up and one down draw of every hop."""
        total = np.zeros(n)
        for _, s in self.hops:
            total = total + s.rtt_samples(n, rng)
        return total

    def rtt_cdf(self, n_mc: int = 400_000, seed: int = 12345) -> Any:
        """CDF callable of the path's round trip: exact when at most one hop direction has a
        random law (a shift of it), else the empirical CDF of ``n_mc`` summed draws."""
        directions = [d for _, s in self.hops for d in (s.up, s.down)]
        random_dirs = [d for d in directions if not d.is_fixed]
        shift = float(sum(d.delay_ms for d in directions if d.is_fixed))
        if len(random_dirs) > 1:
            draws = np.sort(self.rtt_samples(n_mc, np.random.default_rng(seed)))

            def mc_cdf(x: np.ndarray) -> np.ndarray:
                return np.searchsorted(draws, np.asarray(x, dtype=float), side="right") / n_mc

            return mc_cdf
        law = random_dirs[0] if random_dirs else DirectionSpec(delay_ms=0.0)

        def exact_cdf(x: np.ndarray) -> np.ndarray:
            return law.cdf(np.asarray(x, dtype=float) - shift)

        return exact_cdf

    def describe(self) -> str:
        route = " → ".join(self.nodes)
        hops = "; ".join(f"{h}: {s.describe()}" for h, s in self.hops)
        return f"path {route} ({hops})"

    def summary(self) -> dict[str, Any]:
        """JSON-ready configured law: hops, nodes, per-direction and round-trip means."""
        return {"hops": self.hop_names, "nodes": self.nodes,
                "up_mean_ms": self.up_mean_ms(), "down_mean_ms": self.down_mean_ms(),
                "rtt_mean_ms": self.rtt_mean_ms(), "description": self.describe()}


class Topology(BaseModel):
    """Named links between named endpoints (device, mcu, edge, cloud, ...), named multi-hop
    paths over them (:class:`PathSpec`) and a draw seed."""

    model_config = ConfigDict(extra="forbid")

    links: dict[str, LinkSpec] = Field(default_factory=dict)
    paths: dict[str, PathSpec] = Field(
        default_factory=dict,
        description="multi-hop paths: name -> {hops: [link names in order], listen, target}")
    seed: int = 0
    control: str | None = Field(default=None, description="host:port of the proxy control API")
    poll_us: float = Field(
        default=200.0,
        description="proxy backend: the largest busy-poll window (µs) after events before "
                    "sleeping, adapted to the traffic as the kernel's haltpoll does; 0 = sleep at "
                    "once (uvloop when installed, if spin_us is 0 too)")
    spin_us: float = Field(
        default=0.0,
        description="proxy backend: stop sleeping this long (µs) before each timed release and "
                    "poll until it is due (on time despite late timer wake-ups); 0 = sleep on "
                    "a timer with an adaptive lead")

    @field_validator("poll_us", "spin_us", "seed", mode="before")
    @classmethod
    def _no_bool(cls, v: Any, info: Any) -> Any:
        return _plain_number(info.field_name, v, "an integer" if info.field_name == "seed"
                             else f"0..{MAX_POLL_US:g}")

    @field_validator("poll_us", "spin_us")
    @classmethod
    def _poll_range(cls, v: float, info: Any) -> float:
        return _within(info.field_name, v, 0.0, MAX_POLL_US)

    @field_validator("control")
    @classmethod
    def _control(cls, v: str | None) -> str | None:
        if v is not None:
            parse_hostport(v, key="control")
        return v

    @model_validator(mode="after")
    def _paths_check(self) -> Topology:
        problems = [p for name, path in self.paths.items()
                    for p in path_problems(name, path.hops, self.links)]
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def path_law(self, name: str) -> PathLaw:
        """The configured law of path ``name`` (its hops' current specs, in order)."""
        path = self.paths.get(name)
        if path is None:
            raise KeyError(f"unknown path {name!r}; paths: {', '.join(sorted(self.paths)) or '(none)'}")
        return PathLaw(name, [(h, self.links[h]) for h in path.hops])

    def path_links(self) -> set[str]:
        """Links some path crosses."""
        return {h for p in self.paths.values() for h in p.hops}

    def endpoints(self) -> list[str]:
        names: list[str] = []
        for link in self.links.values():
            for e in (link.src, link.dst):
                if e not in names:
                    names.append(e)
        return names

    def between(self, src: str, dst: str) -> tuple[str, LinkSpec]:
        for name, link in self.links.items():
            if link.src == src and link.dst == dst:
                return name, link
        raise KeyError(f"no link from {src!r} to {dst!r}; links: {sorted(self.links)}")


def path_problems(name: str, hops: Any, links: Mapping[str, LinkSpec]) -> list[str]:
    """What is wrong with path ``name`` crossing ``hops`` over ``links``, one message each
    naming the key (``paths.NAME.hops[i]: ...``); empty when the path is sound: at least one
    hop, every hop a declared link, consecutive hops chained (hop i's ``dst`` is hop i+1's
    ``src``), no link or node twice (a cycle), and a name no link has."""
    key = f"paths.{name}"
    known = ", ".join(sorted(links)) or "(none declared)"
    problems = []
    if name in links:
        problems.append(f"{key}: the name is a link's too; paths and links share one name "
                        f"space (addresses, control API, metrics): rename the path")
    if not hops:
        return [*problems, f"{key}.hops: hops must name at least one link, got []"]
    seen_links: dict[str, int] = {}
    nodes: list[str] = []
    for i, hop in enumerate(hops):
        spec = links.get(hop)
        if spec is None:
            problems.append(f"{key}.hops[{i}]: unknown link {hop!r}; links: {known}")
            return problems
        if hop in seen_links:
            problems.append(f"{key}.hops[{i}]: link {hop!r} is hops[{seen_links[hop]}] "
                            f"already; a path crosses each link once (a cycle)")
            return problems
        seen_links[hop] = i
        if i == 0:
            nodes.append(spec.src)
        elif spec.src != nodes[-1]:
            prev = hops[i - 1]
            problems.append(f"{key}.hops[{i}]: link {hop!r} starts at {spec.src!r}, but "
                            f"hops[{i - 1}] ({prev!r}) ends at {nodes[-1]!r}; consecutive hops "
                            f"must chain (hop i's dst = hop i+1's src)")
            return problems
        if spec.dst in nodes:
            route = " → ".join([*nodes, spec.dst])
            problems.append(f"{key}.hops[{i}]: link {hop!r} returns to node {spec.dst!r} "
                            f"({route}): a path visits each node once (a cycle)")
            return problems
        nodes.append(spec.dst)
    return problems


def ks_1samp(samples: np.ndarray, cdf: Any, tol: float = 0.0) -> tuple[float, float]:
    """Kolmogorov–Smirnov statistic and p-value of ``samples`` against ``cdf``.

    Uses the CDF's left limit for D- so that atoms (a fixed delay, netem's pareto cap, the
    integer RTT grid) do not create spurious gaps; the p-value is scipy's exact ``kstwo`` law
    (conservative for laws with atoms). ``tol`` > 0 is a timing tolerance: the empirical CDF
    only counts as off where it leaves the band between ``cdf(x - tol)`` and ``cdf(x + tol)``
    (``sup max(ECDF(x) - F(x + tol), F(x - tol) - ECDF(x-))``), so shifts up to ``tol`` — e.g.
    the sub-ms floor of a real path — are not resolved while shape errors still are.
    """
    from scipy import stats
    x = np.sort(np.asarray(samples, dtype=float))
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    f_right = np.asarray(cdf(x + tol), dtype=float)
    f_left = np.asarray(cdf(x - tol - 1e-7), dtype=float)
    i = np.arange(1, n + 1)
    d = float(max(np.max(i / n - f_right), np.max(f_left - (i - 1) / n), 0.0))
    return d, float(stats.kstwo.sf(d, n))


def parse_hostport(value: str, *, key: str = "address") -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` allowed); raise naming ``key`` otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not (0 <= int(port) <= 65535):
        raise ValueError(f"{key} must be host:port with port 0..65535, got {value!r}")
    return host.strip("[]"), int(port)


def format_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """One line per error: dotted key path, then the message (which names the allowed range)."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in (prefix, *err["loc"]) if p != "")
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}" if loc else msg)
    return "\n".join(lines)


def load_topology(path: str | Path) -> Topology:
    """Read a topology YAML/JSON file (``links:`` mapping, optional ``seed``/``control``).

    A file whose top level has a ``links:`` key nested under ``netem:`` is accepted too.
    Raises ``ValueError`` whose text names each bad key and its allowed range.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not a text file ({exc.reason} at byte {exc.start})") from None
    if isinstance(raw, Mapping) and "netem" in raw and "links" not in raw:
        raw = raw["netem"]
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: the top level must be a mapping with a links: key, got "
                         f"{type(raw).__name__}")
    try:
        return Topology.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(f"{path}:\n{format_validation_error(exc)}") from None
