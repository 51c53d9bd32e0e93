"""Prometheus metrics the orchestrator serves during a run (one fresh CollectorRegistry per run).

A recorder subscribed to finished records (like the CSV writer and the progress bar). Energy is
emulated (see ``orchestrator.energy``); it is exported in joules.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from orchestrator.client import OUTCOMES

LATENCY_BUCKETS_S = (
    0.005,
    0.01,
    0.02,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    20.0,
    40.0,
)


class OrchestratorMetrics:
    """Metric objects bound to one registry, labels pre-initialised for the run's policies."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "edgebed_orchestrator_requests",
            "Requests finished, by policy, final route and outcome",
            ["policy", "route", "outcome"],
            registry=r,
        )
        self.attempts = Counter(
            "edgebed_orchestrator_attempts",
            "HTTP attempts sent to tiers",
            ["policy", "route", "outcome"],
            registry=r,
        )
        self.latency = Histogram(
            "edgebed_orchestrator_request_latency_seconds",
            "Latency from intended send to accepted answer",
            ["policy", "type"],
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.send_lag = Histogram(
            "edgebed_orchestrator_send_lag_seconds",
            "Actual minus intended send time",
            ["policy"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.05, 0.1, 1.0),
            registry=r,
        )
        self.deadline_met = Counter(
            "edgebed_orchestrator_deadline_met",
            "Requests answered within their deadline",
            ["policy"],
            registry=r,
        )
        self.correct = Counter(
            "edgebed_orchestrator_correct",
            "Requests answered correctly",
            ["policy"],
            registry=r,
        )
        self.energy = Counter(
            "edgebed_orchestrator_energy_joules",
            "Emulated energy of requests: scope=device (the device's battery) or system (the "
            "device plus every tier)",
            ["policy", "scope"],
            registry=r,
        )
        self.events = Counter(
            "edgebed_orchestrator_scenario_events",
            "Scenario timeline events applied (link changes, node kills/pauses/restarts, rate "
            "steps), by action, target and whether it worked",
            ["policy", "action", "target", "result"],
            registry=r,
        )
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def init_labels(self, policy: str, routes: Iterable[str]) -> None:
        for route in [*routes, "none"]:
            for outcome in OUTCOMES:
                self.requests.labels(policy, route, outcome)
                self.attempts.labels(policy, route, outcome)
        for kind in ("cv", "lm"):
            self.latency.labels(policy, kind)
        self.send_lag.labels(policy)
        self.deadline_met.labels(policy)
        self.correct.labels(policy)
        for scope in ("device", "system"):
            self.energy.labels(policy, scope)

    def observe_record(self, row: dict[str, Any], attempts: Iterable[Any]) -> None:
        policy = row["policy"]
        self.requests.labels(policy, row["route"] or "none", row["outcome"]).inc()
        for a in attempts:
            self.attempts.labels(policy, a.route, a.outcome).inc()
        if row["outcome"] == "ok":
            self.latency.labels(policy, row["type"]).observe(row["latency_ms"] / 1e3)
        self.send_lag.labels(policy).observe(max(0.0, row["send_lag_ms"]) / 1e3)
        if row["deadline_met"]:
            self.deadline_met.labels(policy).inc()
        if row["correct"]:
            self.correct.labels(policy).inc()
        self.energy.labels(policy, "device").inc(max(0.0, row["device_energy_mj"]) / 1e3)
        self.energy.labels(policy, "system").inc(max(0.0, row["system_energy_mj"]) / 1e3)

    def observe_event(self, policy: str, action: str, target: str, ok: bool) -> None:
        self.events.labels(policy, action, target, "ok" if ok else "failed").inc()

    def serve(self, port: int, addr: str = "127.0.0.1") -> int:
        """Serve /metrics on ``addr:port`` (0 = any free port); returns the bound port."""
        self._server, self._thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
