"""Arrival processes: tiny pure functions ``(n, seed, **params) -> send offsets in seconds``.

``serial`` returns ``None``: the simulator's closed loop (the next request leaves when the
previous one finished). Every other process returns an open-loop schedule, the intended send
time of each request relative to the start of the pass; replay measures latency from it.
Register a new process with ``@register_arrival("name")``.
"""

from __future__ import annotations

import csv
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


def _positive(name: str, value: float) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
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
    on = _positive("on_s", on_s)
    off = float(off_s)
    if off < 0:
        raise ValueError(f"off_s must be >= 0, got {off}")
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
        raise ValueError(f"arrivals.path: trace file not found: {path}")
    with p.open(newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or column not in reader.fieldnames:
            raise ValueError(
                f"arrivals.column: {column!r} not in trace columns {reader.fieldnames}"
            )
        times = np.array([float(row[column]) for row in reader], dtype=float)
    if len(times) == 0:
        raise ValueError(f"arrivals.path: trace {path} has no rows")
    times = np.sort(times) - times.min()
    if len(times) < n:
        if not loop:
            raise ValueError(f"arrivals.path: trace has {len(times)} rows, workload needs n={n}")
        period = times[-1] + (np.diff(times).mean() if len(times) > 1 else 1.0)
        reps = int(np.ceil(n / len(times)))
        times = np.concatenate([times + k * period for k in range(reps)])
    return times[:n]


def make_schedule(
    name: str, n: int, seed: int, params: dict[str, Any] | None = None
) -> np.ndarray | None:
    """Look up an arrival process by name and build the schedule (validating the name)."""
    if name not in ARRIVALS:
        raise ValueError(f"arrivals.process must be one of {sorted(ARRIVALS)}, got {name!r}")
    try:
        return ARRIVALS[name](n, seed, **(params or {}))
    except TypeError as exc:
        raise ValueError(f"arrivals.params for {name!r}: {exc}") from exc
