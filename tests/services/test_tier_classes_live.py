"""Node classes over real HTTP: a node named otherwise than its class (edge-2 of class edge),
the npu class (INT8 only, refusing fp32 at start-up), and class in /v1/status, /v1/models and
metrics."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable

import httpx
import pytest
from tierhttp import BINARY, exchange, infer_request, metric, request_bytes

from services.tier.process import TierProcess, TierStartError, start_tier


def _get(url: str, path: str) -> dict:
    return exchange(url, request_bytes(url, "GET", path)).json()


def test_a_node_named_edge_2_of_class_edge(tier_factory: Callable[..., TierProcess]) -> None:
    tp = tier_factory("edge-2", node_class="edge")
    assert _get(tp.url, "/healthz") == {"status": "ok", "tier": "edge-2"}
    status = _get(tp.url, "/v1/status")
    assert (status["tier"], status["class"], status["concurrency"]) == ("edge-2", "edge", 2)
    models = _get(tp.url, "/v1/models")
    assert (models["tier"], models["class"], models["energy_factor"]) == ("edge-2", "edge", 1.4)
    latency = {m["name"]: m["latency_ms"] for m in models["models"]}
    assert latency == {"int8": 10.0, "fp32": 22.0, "tinycnn": 4.0, "slm": latency["slm"]}
    with httpx.Client(base_url=tp.url, timeout=10.0) as c:
        for model, ms in (("int8", 10.0), ("fp32", 22.0), ("tinycnn", 4.0)):
            body = c.post(f"/v1/infer?model={model}", content=bytes(784), headers=BINARY).json()
            assert body["tier"] == "edge-2" and body["model"] == model, body
            assert body["timing"]["target_ms"] == ms, body["timing"]
            assert abs(body["timing"]["emulated_ms"] - ms) < 1.5, body["timing"]
            assert "batch_size" not in body["timing"]  # only batching models report batches
    assert metric(tp.url, "edgebed_requests_total", tier="edge-2", model="int8", outcome="ok") == 1
    assert metric(tp.url, "edgebed_tier_class_info", tier="edge-2", **{"class": "edge"}) == 1
    with pytest.raises(KeyError):
        metric(tp.url, "edgebed_requests_total", tier="edge", model="int8", outcome="ok")


def test_class_from_the_config_file(tier_factory: Callable[..., TierProcess]) -> None:
    tp = tier_factory("regional", config_overrides={"class": "cloud", "lm": None})
    status = _get(tp.url, "/v1/status")
    assert (status["tier"], status["class"], status["concurrency"]) == ("regional", "cloud", 4)
    body = exchange(tp.url, infer_request(tp.url, "fp32")).json()
    assert body["tier"] == "regional" and body["timing"]["target_ms"] == 12.0


def test_npu_serves_int8_models(tier_factory: Callable[..., TierProcess]) -> None:
    tp = tier_factory("npu")
    models = _get(tp.url, "/v1/models")
    assert models["class"] == "npu"
    assert sorted(m["name"] for m in models["models"]) == ["int8", "tinycnn"]
    assert {m["dtype"] for m in models["models"]} == {"int8"}
    for model in ("int8", "tinycnn"):
        body = exchange(tp.url, infer_request(tp.url, model)).json()
        assert body["tier"] == "npu" and 0 <= body["prediction"] <= 9
        assert body["timing"]["target_ms"] == 1.41
        assert abs(body["timing"]["emulated_ms"] - 1.41) < 1.0, body["timing"]
        # Coral: 2 W active
        assert abs(body["energy"]["power_mj"] - 2.0 * body["timing"]["emulated_ms"]
                   - 0.5 * body["timing"]["queue_ms"]) < 1e-9  # fmt: skip
    refused = exchange(tp.url, infer_request(tp.url, "fp32"))
    assert refused.status_code == 404 and refused.json()["field"] == "model"
    lm = exchange(tp.url, request_bytes(tp.url, "POST", "/v1/generate", b'{"model": "slm"}',
                                        {"Content-Type": "application/json"}))  # fmt: skip
    assert lm.status_code == 404, lm.body


@pytest.mark.usefixtures("need_models")
def test_npu_refuses_fp32_before_it_binds() -> None:
    with pytest.raises(TierStartError) as err:
        start_tier("npu", config_overrides={"models": {"fp32": {"latency_ms": 5.0}}},
                   ready_timeout_s=30)  # fmt: skip
    msg = str(err.value)
    assert "exited with code 2" in msg, msg
    assert "models.fp32: class npu runs only full-integer INT8 models; fp32.tflite is float32" \
        in msg and "Allowed models: int8, tinycnn" in msg, msg  # fmt: skip


def test_cli_serves_a_named_node_of_a_class() -> None:
    """``edgebed serve --tier edge-2 --class edge`` (arguments parsed, config built)."""
    from orchestrator.cli import build_parser

    args = build_parser().parse_args(["serve", "--tier", "edge-2", "--class", "edge"])
    assert (args.tier, args.node_class) == ("edge-2", "edge")
    run = [sys.executable, "-m", "services.tier", "--tier", "edge-2"]
    r = subprocess.run([*run, "--class", "gpu", "--config", "/nonexistent.yaml"],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 2 and "config file /nonexistent.yaml" in r.stderr, r.stderr
