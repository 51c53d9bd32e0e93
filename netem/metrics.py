"""Prometheus metrics of the link proxy and the fidelity probe, created per registry."""

from __future__ import annotations

import math
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from netem.spec import LinkSpec

DIRECTIONS = ("up", "down")
DELAY_BUCKETS_S = (0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
                   2.0, 5.0)
FIDELITY_STATS = ("mean", "p5", "p50", "p95", "std")


class LinkMetrics:
    """All ``edgebed_link_*`` series for one registry (labels pre-initialised per link)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.bytes = Counter("edgebed_link_bytes_total", "Bytes forwarded by the link proxy",
                             ["link", "direction"], registry=r)
        self.chunks = Counter("edgebed_link_chunks_total",
                              "Chunks (reads, split to segments when rate-limited) forwarded",
                              ["link", "direction"], registry=r)
        self.messages = Counter("edgebed_link_messages_total",
                                "Messages (chunks closer than 2 ms to the previous one share a "
                                "message) that drew a delay", ["link", "direction"], registry=r)
        self.drops = Counter("edgebed_link_drops_total",
                             "Emulated losses: chunks that paid the RTO penalty",
                             ["link", "direction"], registry=r)
        self.drawn = Counter("edgebed_link_drawn_delay_seconds_total",
                             "Sum of the delays drawn from the configured law per message "
                             "(loss penalties per chunk included; before queueing and timer "
                             "error)",
                             ["link", "direction"], registry=r)
        self.delay = Histogram("edgebed_link_delay_seconds",
                               "Delay applied per chunk (arrival to release, queueing included)",
                               ["link", "direction"], buckets=DELAY_BUCKETS_S, registry=r)
        self.connections = Counter("edgebed_link_connections_total",
                                   "Client connections accepted", ["link"], registry=r)
        self.open_connections = Gauge("edgebed_link_open_connections",
                                      "Client connections open", ["link"], registry=r)
        self.connect_errors = Counter("edgebed_link_connect_errors_total",
                                      "Failures to reach the link's target", ["link"], registry=r)
        self.cfg_delay = Gauge("edgebed_link_configured_delay_seconds",
                               "Configured mean one-way delay (loss penalty included)",
                               ["link", "direction"], registry=r)
        self.cfg_jitter = Gauge("edgebed_link_configured_jitter_seconds",
                                "Configured jitter parameter", ["link", "direction"], registry=r)
        self.cfg_loss = Gauge("edgebed_link_configured_loss_ratio", "Configured loss (0..1)",
                              ["link", "direction"], registry=r)
        self.cfg_rate = Gauge("edgebed_link_configured_rate_bytes_per_second",
                              "Configured rate (0 = unlimited)", ["link", "direction"],
                              registry=r)
        self.fid_rtt = Gauge("edgebed_link_fidelity_rtt_seconds",
                             "Round trip from the last fidelity probe: configured vs achieved",
                             ["link", "kind", "stat"], registry=r)
        self.fid_ks = Gauge("edgebed_link_fidelity_ks_statistic",
                            "Kolmogorov-Smirnov statistic, achieved vs configured RTT",
                            ["link"], registry=r)
        self.fid_p = Gauge("edgebed_link_fidelity_ks_pvalue", "KS p-value", ["link"], registry=r)
        self.fid_n = Gauge("edgebed_link_fidelity_probes", "Probes in the last fidelity report",
                           ["link"], registry=r)

    def init_link(self, name: str, spec: LinkSpec) -> None:
        for d in DIRECTIONS:
            for m in (self.bytes, self.chunks, self.messages, self.drops, self.drawn,
                      self.delay):
                m.labels(name, d)
        self.connections.labels(name)
        self.open_connections.labels(name)
        self.connect_errors.labels(name)
        self.set_configured(name, spec)

    def set_configured(self, name: str, spec: LinkSpec) -> None:
        for d in DIRECTIONS:
            ds = spec.up if d == "up" else spec.down
            self.cfg_delay.labels(name, d).set(ds.mean_ms() / 1000)
            self.cfg_jitter.labels(name, d).set(ds.jitter_ms / 1000)
            self.cfg_loss.labels(name, d).set(ds.loss_ratio)
            self.cfg_rate.labels(name, d).set(ds.rate_bytes_per_s or 0)

    def set_fidelity(self, name: str, report: dict[str, Any]) -> None:
        """Publish a probe report (:func:`netem.probe.fidelity_report` dict) as gauges; raises
        ``ValueError`` naming the first bad field (:func:`fidelity_values`), nothing set then."""
        values = fidelity_values(report)
        for (kind, stat), v in values["rtt"].items():
            self.fid_rtt.labels(name, kind, stat).set(v / 1000)
        self.fid_ks.labels(name).set(values["ks_statistic"])
        self.fid_p.labels(name).set(values["ks_pvalue"])
        self.fid_n.labels(name).set(values["n"])


def _number(field: str, v: Any, lo: float = -math.inf, hi: float = math.inf) -> float:
    """A finite JSON number within lo..hi (null = no value: NaN); booleans are not numbers."""
    if v is None:
        return math.nan
    if isinstance(v, bool) or not isinstance(v, int | float) or (
            isinstance(v, int) and abs(v) >= 10**15) or not math.isfinite(v) or not lo <= v <= hi:
        allowed = "a finite number" + ("" if math.isinf(lo) else f" within {lo:g}..{hi:g}")
        shown = type(v).__name__ if not isinstance(v, int | float) or isinstance(v, bool) \
            or abs(v) >= 10**15 else f"{v:g}"
        raise ValueError(f"{field} must be {allowed} or null, got {shown}")
    return float(v)


def fidelity_values(report: Any) -> dict[str, Any]:
    """The gauge values of a fidelity report, checked: ``configured``/``achieved`` objects of
    ``{stat}_ms`` numbers, ``ks_statistic``/``ks_pvalue`` within 0..1, ``n`` a count."""
    if not isinstance(report, dict):
        raise ValueError(f"body must be a fidelity report object, got {type(report).__name__}")
    rtt: dict[tuple[str, str], float] = {}
    for kind in ("configured", "achieved"):
        part = report.get(kind, {})
        if part is None:
            continue
        if not isinstance(part, dict):
            raise ValueError(f"{kind} must be an object of {{stat}}_ms numbers, got "
                             f"{type(part).__name__}")
        for stat in FIDELITY_STATS:
            if part.get(f"{stat}_ms") is not None:
                rtt[(kind, stat)] = _number(f"{kind}.{stat}_ms", part[f"{stat}_ms"])
    n = _number("n", report.get("n", 0), 0, 1e12)
    if not math.isnan(n) and n != int(n):
        raise ValueError(f"n must be a count (an integer within 0..1e+12), got {n:g}")
    return {"rtt": rtt, "n": n,
            "ks_statistic": _number("ks_statistic", report.get("ks_statistic"), 0, 1),
            "ks_pvalue": _number("ks_pvalue", report.get("ks_pvalue"), 0, 1)}
