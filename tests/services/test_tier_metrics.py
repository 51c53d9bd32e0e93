"""After N requests, /metrics counters equal N per label set (live tier, fresh process)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.tier.process import TierProcess

BINARY = {"content-type": "application/octet-stream"}


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def _get(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_counters_equal_requests_per_label_set(tier_factory: Callable[..., TierProcess]) -> None:
    tp = tier_factory(
        "edge", device_time="real", config_overrides={"lm": {"slm": {"ttft_ms": 1.0}}}
    )
    before = _samples(httpx.get(f"{tp.url}/metrics").text)
    # pre-initialised label sets are visible (at zero) before any request
    for model in ("int8", "fp32", "tinycnn", "slm", "unknown"):
        for outcome in ("ok", "client_error", "not_found", "queue_full", "server_error"):
            assert (
                _get(before, "edgebed_requests_total", tier="edge", model=model, outcome=outcome)
                == 0
            )
    for model in ("int8", "fp32", "tinycnn", "slm"):
        for action in ("finished", "aborted"):
            assert _get(before, "edgebed_tier_abandoned_total", tier="edge", model=model,
                        action=action) == 0  # fmt: skip
    sent = {("int8", "ok"): 37, ("fp32", "ok"): 11, ("tinycnn", "ok"): 5, ("slm", "ok"): 3,
            ("int8", "client_error"): 4, ("unknown", "not_found"): 2}  # fmt: skip
    energy_mj = {"int8": 0.0, "fp32": 0.0, "tinycnn": 0.0, "slm": 0.0}
    with httpx.Client(base_url=tp.url, timeout=10.0) as c:
        for model in ("int8", "fp32", "tinycnn"):
            for _ in range(sent[(model, "ok")]):
                r = c.post(f"/v1/infer?model={model}", content=bytes(784), headers=BINARY)
                energy_mj[model] += r.json()["energy"]["power_mj"]
        for _ in range(sent[("slm", "ok")]):
            r = c.post("/v1/generate", json={"model": "slm", "max_tokens": 4})
            energy_mj["slm"] += r.json()["energy"]["power_mj"]
        for _ in range(sent[("int8", "client_error")]):
            assert (
                c.post("/v1/infer?model=int8", content=bytes(5), headers=BINARY).status_code == 422
            )
        for _ in range(sent[("unknown", "not_found")]):
            assert (
                c.post("/v1/infer?model=vgg", content=bytes(784), headers=BINARY).status_code == 404
            )
        after = _samples(c.get("/metrics").text)
    for (model, outcome), n in sent.items():
        got = _get(after, "edgebed_requests_total", tier="edge", model=model, outcome=outcome)
        assert got == n, (
            f"edgebed_requests_total{{model={model},outcome={outcome}}}: sent {n}, got {got}"
        )
    for model in ("int8", "fp32", "tinycnn", "slm"):
        n = sent[(model, "ok")]
        for hist in ("edgebed_queue_seconds", "edgebed_compute_seconds", "edgebed_emulated_seconds",
                     "edgebed_service_seconds"):  # fmt: skip
            assert _get(after, f"{hist}_count", tier="edge", model=model) == n, (hist, model)
        joules = _get(
            after, "edgebed_energy_joules_total", tier="edge", model=model, energy_model="power"
        )
        assert joules == pytest.approx(energy_mj[model] / 1000.0, rel=1e-9), model
    assert _get(after, "edgebed_lm_tokens_total", tier="edge", model="slm") == 3 * 4
    assert _get(after, "edgebed_tier_ready", tier="edge") == 1
    assert _get(after, "edgebed_queue_depth", tier="edge") == 0
    assert _get(after, "edgebed_tier_concurrency", tier="edge") == 2


def test_app_uses_its_own_registry() -> None:
    """Two apps in one process do not share metrics (no global registry)."""
    from prometheus_client import REGISTRY, CollectorRegistry

    from services.tier.metrics import TierMetrics

    a = TierMetrics(CollectorRegistry(), "mcu", ["int8"], ["power"])
    b = TierMetrics(CollectorRegistry(), "mcu", ["int8"], ["power"])
    a.count("int8", "ok")
    assert (
        a.registry.get_sample_value(
            "edgebed_requests_total", {"tier": "mcu", "model": "int8", "outcome": "ok"}
        )
        == 1
    )
    assert (
        b.registry.get_sample_value(
            "edgebed_requests_total", {"tier": "mcu", "model": "int8", "outcome": "ok"}
        )
        == 0
    )
    assert (
        REGISTRY.get_sample_value(
            "edgebed_requests_total", {"tier": "mcu", "model": "int8", "outcome": "ok"}
        )
        is None
    )
