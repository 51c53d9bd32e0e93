"""Prometheus metrics of one tier app, on the app's own ``CollectorRegistry``.

Names start with ``edgebed_``, use base units, and every (tier, model, outcome) and (tier,
model, action) label set is created at start-up so a dashboard sees zeros before the first
request. A served chain (``/v1/chain``) counts in the per-model metrics with its name as
``model``, and has its own per-segment, per-exit and tensor-byte counters.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

OUTCOMES = ("ok", "client_error", "not_found", "queue_full", "server_error")
ABANDON_ACTIONS = ("finished", "aborted")  # what the tier did with a request its client left
UNKNOWN_MODEL = "unknown"
TIME_BUCKETS_S = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03,
    0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 128, 256, 512, 1024)
TENSOR_DIRECTIONS = ("in", "out")


class TierMetrics:
    """All metric objects of one tier, with children pre-bound per model for cheap updates."""

    def __init__(
        self,
        registry: CollectorRegistry,
        tier: str,
        models: list[str],
        energy_models: list[str],
        *,
        batched_models: list[str] | None = None,
        node_class: str | None = None,
        chains: dict[str, tuple[list[int], list[int]]] | None = None,
    ) -> None:
        """``models``: every name requests are counted under (vision and LM models, chains);
        ``chains``: per served chain, the 1-based segments it holds and those with an exit."""
        self.registry = registry
        self.tier = tier
        self.requests = Counter(
            "edgebed_requests", "Requests answered by the tier, by model and outcome",
            ["tier", "model", "outcome"], registry=registry,
        )  # fmt: skip
        self.queue_s = Histogram(
            "edgebed_queue_seconds",
            "Wait for a device slot: arrival to the (nominal) start of service",
            ["tier", "model"],
            buckets=TIME_BUCKETS_S,
            registry=registry,
        )
        self.compute_s = Histogram(
            "edgebed_compute_seconds",
            "Real LiteRT compute time on this host",
            ["tier", "model"],
            buckets=TIME_BUCKETS_S,
            registry=registry,
        )
        self.emulated_s = Histogram(
            "edgebed_emulated_seconds",
            "Device time the request was held for (emulated in profile mode)",
            ["tier", "model"],
            buckets=TIME_BUCKETS_S,
            registry=registry,
        )
        self.service_s = Histogram(
            "edgebed_service_seconds",
            "Time inside the server per answered request",
            ["tier", "model"],
            buckets=TIME_BUCKETS_S,
            registry=registry,
        )
        self.energy_j = Counter(
            "edgebed_energy_joules", "Emulated energy of answered requests, per energy model",
            ["tier", "model", "energy_model"], registry=registry,
        )  # fmt: skip
        self.lm_tokens = Counter(
            "edgebed_lm_tokens",
            "Emulated LM tokens generated",
            ["tier", "model"],
            registry=registry,
        )
        self.abandoned_total = Counter(
            "edgebed_tier_abandoned",
            "Requests whose client disconnected while they waited or were held, by what the "
            "tier did (on_disconnect: finished = served to the end, aborted = slot freed at once)",
            ["tier", "model", "action"],
            registry=registry,
        )
        self.queue_depth = Gauge(
            "edgebed_queue_depth", "Requests waiting for a device slot", ["tier"], registry=registry
        )
        self.in_service = Gauge(
            "edgebed_in_service", "Requests holding a device slot", ["tier"], registry=registry
        )
        self.ready = Gauge(
            "edgebed_tier_ready", "1 once models are loaded", ["tier"], registry=registry
        )
        self.model_bytes = Gauge(
            "edgebed_model_bytes",
            "Size of each served model file",
            ["tier", "model"],
            registry=registry,
        )
        self.memory_budget = Gauge(
            "edgebed_tier_memory_budget_bytes", "Configured model memory budget", ["tier"],
            registry=registry,
        )  # fmt: skip
        self.concurrency = Gauge(
            "edgebed_tier_concurrency", "Configured device slots", ["tier"], registry=registry
        )
        self.queue_limit = Gauge(
            "edgebed_tier_queue_limit", "Configured wait-queue bound", ["tier"], registry=registry
        )
        self.batch_sizes = Histogram(
            "edgebed_tier_batch_size",
            "Requests per executed batch of a model with dynamic batching (class gpu)",
            ["tier", "model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=registry,
        )
        self.class_info = Gauge(
            "edgebed_tier_class_info", "1 for the node's hardware class", ["tier", "class"],
            registry=registry,
        )  # fmt: skip
        if node_class is not None:
            self.class_info.labels(tier, node_class).set(1)
        self.chain_segments_total = Counter(
            "edgebed_tier_chain_segments",
            "Chain segments run (POST /v1/chain), by chain and 1-based segment index",
            ["tier", "chain", "segment"], registry=registry,
        )  # fmt: skip
        self.exits_total = Counter(
            "edgebed_tier_exits",
            "Chain answers by the 1-based segment whose exit (probabilities) answered",
            ["tier", "chain", "exit"], registry=registry,
        )  # fmt: skip
        self.tensor_bytes_total = Counter(
            "edgebed_tier_tensor_bytes",
            "Cut-tensor bytes of /v1/chain received (in; a raw image counts 784) and sent (out)",
            ["tier", "chain", "direction"], registry=registry,
        )  # fmt: skip

        self.queue_depth_t = self.queue_depth.labels(tier)
        self.in_service_t = self.in_service.labels(tier)
        self.ready.labels(tier).set(0)
        self.req: dict[tuple[str, str], Counter] = {}
        for m in [*models, UNKNOWN_MODEL]:
            for o in OUTCOMES:
                self.req[(m, o)] = self.requests.labels(tier, m, o)
        self.per_model = {
            m: (
                self.queue_s.labels(tier, m),
                self.compute_s.labels(tier, m),
                self.emulated_s.labels(tier, m),
                self.service_s.labels(tier, m),
            )
            for m in models
        }
        self.energy = {
            (m, e): self.energy_j.labels(tier, m, e) for m in models for e in energy_models
        }
        self.tokens = {m: self.lm_tokens.labels(tier, m) for m in models}
        self.batch_size = {m: self.batch_sizes.labels(tier, m) for m in batched_models or ()}
        self.abandoned = {
            (m, a): self.abandoned_total.labels(tier, m, a) for m in models for a in ABANDON_ACTIONS
        }
        chains = chains or {}
        self.chain_segment = {
            (c, k): self.chain_segments_total.labels(tier, c, str(k))
            for c, (held, _) in chains.items() for k in held
        }  # fmt: skip
        self.chain_exit = {
            (c, k): self.exits_total.labels(tier, c, str(k))
            for c, (_, exits) in chains.items() for k in exits
        }  # fmt: skip
        self.tensor_bytes = {
            (c, d): self.tensor_bytes_total.labels(tier, c, d)
            for c in chains for d in TENSOR_DIRECTIONS
        }  # fmt: skip

    def count(self, model: str, outcome: str) -> None:
        key = (model, outcome) if (model, outcome) in self.req else (UNKNOWN_MODEL, outcome)
        self.req[key].inc()

    def observe(
        self,
        model: str,
        *,
        queue_s: float,
        compute_s: float,
        emulated_s: float,
        service_s: float,
        energy_mj: dict[str, float],
    ) -> None:
        q, c, e, s = self.per_model[model]
        q.observe(queue_s)
        c.observe(compute_s)
        e.observe(emulated_s)
        s.observe(service_s)
        for name, mj in energy_mj.items():
            self.energy[(model, name)].inc(mj / 1000.0)
