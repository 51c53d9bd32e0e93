"""Arrival processes: tiny pure functions ``(n, seed, **params) -> send offsets in seconds``.

``serial`` returns ``None``: the simulator's closed loop (the next request leaves when the
previous one finished). Every other process returns an open-loop schedule, the intended send
time of each request relative to the start of the pass; replay measures latency from it.
Register a new process with ``@register_arrival("name")``.
"""

from __future__ import annotations

import csv
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ArrivalFn = Callable[..., "np.ndarray | None"]
ARRIVALS: dict[str, ArrivalFn] = {}


def register_arrival(name: str) -> Callable[[ArrivalFn], ArrivalFn]:
    def deco(fn: ArrivalFn) -> ArrivalFn:
        ARRIVALS[name] = fn
        return fn

    return deco


MAX_RATE_RPS = 1e6
MAX_PERIOD_S = 7 * 24 * 3600.0


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value}")
    return value


def _positive(name: str, value: Any, hi: float = MAX_RATE_RPS) -> float:
    value = _number(name, value)
    if not 0 < value <= hi:
        raise ValueError(f"{name} must be within 0..{hi:g} (exclusive 0), got {value:g}")
    return value


@register_arrival("serial")
def serial(n: int, seed: int = 0) -> None:
    """Closed loop: no schedule; each request is sent when the previous one finished."""
    return None


@register_arrival("constant")
def constant(n: int, seed: int = 0, *, rate_rps: float = 10.0) -> np.ndarray:
    """Evenly spaced sends at ``rate_rps`` (first at t=0)."""
    rate = _positive("rate_rps", rate_rps)
    return np.arange(n, dtype=float) / rate


@register_arrival("poisson")
def poisson(n: int, seed: int = 0, *, rate_rps: float = 10.0) -> np.ndarray:
    """Poisson process: exponential gaps with mean ``1/rate_rps`` (first at t=0)."""
    rate = _positive("rate_rps", rate_rps)
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=n)
    gaps[0] = 0.0
    return np.cumsum(gaps)


@register_arrival("bursty")
def bursty(
    n: int, seed: int = 0, *, on_rate_rps: float = 50.0, on_s: float = 1.0, off_s: float = 2.0
) -> np.ndarray:
    """On/off source: Poisson at ``on_rate_rps`` during ``on_s`` windows, silent for ``off_s``."""
    rate = _positive("on_rate_rps", on_rate_rps)
    on = _positive("on_s", on_s, MAX_PERIOD_S)
    off = _number("off_s", off_s)
    if not 0 <= off <= MAX_PERIOD_S:
        raise ValueError(f"off_s must be within 0..{MAX_PERIOD_S:g}, got {off:g}")
    rng = np.random.default_rng(seed)
    # Generate in "on time", then map on-time t to wall time by inserting the off gaps.
    gaps = rng.exponential(1.0 / rate, size=n)
    gaps[0] = 0.0
    on_time = np.cumsum(gaps)
    return on_time + np.floor(on_time / on) * off


@register_arrival("trace")
def trace(
    n: int, seed: int = 0, *, path: str, column: str = "t_s", loop: bool = False
) -> np.ndarray:
    """Send times (seconds) read from column ``column`` of a CSV file, rebased to start at 0."""
    p = Path(path)
    if not p.exists():
        raise ValueError(f"path: trace file not found: {path}")
    if not p.is_file():
        raise ValueError(f"path: not a file (a directory?): {path}")
    with p.open(newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ValueError(
                f"column: {column!r} not in the trace's columns {reader.fieldnames}"
            )
        values = []
        for line, row in enumerate(reader, start=2):
            try:
                values.append(float(row[column]))
            except (TypeError, ValueError):
                raise ValueError(f"path: {path} line {line}: {column} must be a number of "
                                 f"seconds, got {row[column]!r}") from None
        times = np.array(values, dtype=float)
    if len(times) == 0:
        raise ValueError(f"path: trace {path} has no rows")
    if not np.all(np.isfinite(times)):
        raise ValueError(f"path: trace {path} holds a non-finite time in column {column}")
    times = np.sort(times) - times.min()
    if len(times) < n:
        if not loop:
            raise ValueError(f"path: the trace has {len(times)} rows, the workload needs n={n} "
                             "(set loop: true to repeat it)")
        period = times[-1] + (np.diff(times).mean() if len(times) > 1 else 1.0)
        reps = int(np.ceil(n / len(times)))
        times = np.concatenate([times + k * period for k in range(reps)])
    return times[:n]


def make_schedule(
    name: str, n: int, seed: int, params: dict[str, Any] | None = None
) -> np.ndarray | None:
    """Look up an arrival process by name and build the schedule (validating the name)."""
    if name not in ARRIVALS:
        raise ValueError(f"arrival.process must be one of {sorted(ARRIVALS)}, got {name!r}")
    fn = ARRIVALS[name]
    allowed = [p.name for p in list(inspect.signature(fn).parameters.values())[2:]
               if p.kind is not p.VAR_KEYWORD]
    required = [p.name for p in list(inspect.signature(fn).parameters.values())[2:]
                if p.default is p.empty and p.kind is not p.VAR_KEYWORD]
    params = dict(params or {})
    for key in params:
        if key not in allowed:
            raise ValueError(f"{key}: not a parameter of arrival process {name!r}; allowed: "
                             f"{', '.join(allowed) or '(none)'}")
    for key in required:
        if key not in params:
            raise ValueError(f"{key}: required by arrival process {name!r}")
    return fn(n, seed, **params)


def warp_schedule(schedule: np.ndarray, steps: list[tuple[float, float]]) -> np.ndarray:
    """The schedule with the arrival rate multiplied by ``factor`` from ``at_s`` on, for each
    ``(at_s, factor)`` of ``steps`` (a scenario's rate steps; factors are relative to the base
    process). The base process runs on its own clock; a rate factor f makes its time pass f
    times faster from the step on, so any process (constant, Poisson, bursty, a trace) keeps its
    shape and only its pace changes."""
    if not steps:
        return schedule
    knots = sorted(steps)
    out = np.empty_like(schedule, dtype=float)
    # piecewise-linear map from base time u to wall time t: dt = du / factor
    u_knots, t_knots, factors = [0.0], [0.0], [1.0]
    for at_s, factor in knots:
        # the step is at wall time at_s; find the base time that maps to it
        u_at = u_knots[-1] + (at_s - t_knots[-1]) * factors[-1]
        if at_s < t_knots[-1]:
            continue
        u_knots.append(u_at)
        t_knots.append(at_s)
        factors.append(factor)
    for i, u in enumerate(np.asarray(schedule, dtype=float)):
        k = int(np.searchsorted(u_knots, u, side="right")) - 1
        out[i] = t_knots[k] + (u - u_knots[k]) / factors[k]
    return out
