"""Policy decisions (scripted attempt results), the latency predictor and the energy models."""

from __future__ import annotations

import asyncio
import time

import pytest

from orchestrator.client import Attempt
from orchestrator.energy import ENERGY_MODELS, RadioModel, make_energy_model
from orchestrator.policies import (
    POLICIES,
    LatencyPredictor,
    Policy,
    PolicyContext,
    make_policy,
    register_policy,
)
from orchestrator.workload import Request

CV = Request(id=1, kind="cv", deadline_ms=80, difficulty="hard", label=3, image=bytes(784))
LM = Request(id=2, kind="lm", deadline_ms=5000, length="short", prompt="hi", max_tokens=32)


def run_policy(
    policy: Policy,
    request: Request,
    answers: dict[str, tuple[str, float, float]],
    predictor: LatencyPredictor | None = None,
) -> tuple[Attempt, list[str]]:
    """Run ``policy`` with scripted answers {route: (outcome, confidence, latency_ms)}."""

    async def attempt_fn(route: str) -> Attempt:
        outcome, conf, lat = answers[route]
        return Attempt(route=route, outcome=outcome, confidence=conf, latency_ms=lat, prediction=3)

    ctx = PolicyContext(request, attempt_fn, predictor or LatencyPredictor(), time.perf_counter())
    accepted = asyncio.run(policy.decide(request, ctx))
    return accepted, [a.route for a in ctx.attempts]


def test_registry_has_the_six_policies() -> None:
    assert set(POLICIES) >= {
        "always_local",
        "always_edge",
        "always_cloud",
        "confidence",
        "latency_aware",
        "hybrid",
    }


def test_defaults_are_the_simulators() -> None:
    assert make_policy("always_local").routes() == ["mcu/tinycnn", "mcu/slm"]
    assert make_policy("always_cloud").routes() == ["cloud/fp32", "cloud/llm"]
    conf = make_policy("confidence")
    assert conf.threshold == 0.78  # type: ignore[attr-defined]
    # routes keep their class selectors; each request resolves them from its device
    assert conf.cv_routes == ["@mcu/int8", "@edge/fp32", "@cloud/fp32"]  # type: ignore[attr-defined]
    assert conf.routes()[:3] == ["mcu/int8", "edge/fp32", "cloud/fp32"]
    la = make_policy("latency_aware")
    assert la.margin == 0.9  # type: ignore[attr-defined]
    assert la.routes()[:3] == ["mcu/tinycnn", "edge/tinycnn", "cloud/fp32"]
    hy = make_policy("hybrid")
    assert (hy.threshold, hy.margin) == (0.8, 0.85)  # type: ignore[attr-defined]


def test_confidence_worked_example() -> None:
    """The simulator's worked example: mcu/int8 at 0.70 rejected, edge/fp32 at 0.82 accepted."""
    answers = {
        "mcu/int8": ("ok", 0.70, 25.0),
        "edge/fp32": ("ok", 0.82, 35.0),
        "cloud/fp32": ("ok", 0.99, 90.0),
    }
    accepted, tried = run_policy(make_policy("confidence"), CV, answers)
    assert tried == ["mcu/int8", "edge/fp32"] and accepted.route == "edge/fp32"


def test_confidence_escalates_past_a_dead_tier() -> None:
    answers = {
        "mcu/int8": ("ok", 0.5, 25.0),
        "edge/fp32": ("refused", float("nan"), 1.0),
        "cloud/fp32": ("ok", 0.6, 90.0),
    }
    accepted, tried = run_policy(make_policy("confidence"), CV, answers)
    assert tried == ["mcu/int8", "edge/fp32", "cloud/fp32"] and accepted.route == "cloud/fp32"


def test_latency_aware_decides_on_prediction() -> None:
    answers = {r: ("ok", 0.5, 1.0) for r in ("mcu/tinycnn", "edge/tinycnn", "cloud/fp32")}
    pred = LatencyPredictor(ewma_alpha=0)
    # mcu/tinycnn predicted 7 ms ≤ 0.9 × 80: runs locally, nothing else is tried
    _, tried = run_policy(make_policy("latency_aware"), CV, answers, pred)
    assert tried == ["mcu/tinycnn"]
    # a slow MCU profile (100 ms) and EDGE 4 + 10 ms: goes straight to EDGE without trying MCU
    slow = LatencyPredictor(
        device_ms={"mcu": {"tinycnn": 100.0}, "edge": {"tinycnn": 4.0}}, ewma_alpha=0
    )
    _, tried = run_policy(make_policy("latency_aware"), CV, answers, slow)
    assert tried == ["edge/tinycnn"]
    tight = Request(id=3, kind="cv", deadline_ms=5, difficulty="easy", label=1, image=bytes(784))
    _, tried = run_policy(make_policy("latency_aware"), tight, answers, slow)
    assert tried == ["cloud/fp32"]


def test_hybrid() -> None:
    answers = {
        "mcu/int8": ("ok", 0.9, 25.0),
        "edge/fp32": ("ok", 0.1, 30.0),
        "cloud/fp32": ("ok", 0.9, 80.0),
    }
    accepted, tried = run_policy(make_policy("hybrid"), CV, answers)
    assert tried == ["mcu/int8"]
    answers["mcu/int8"] = ("ok", 0.5, 25.0)
    accepted, tried = run_policy(make_policy("hybrid"), CV, answers)
    assert tried == ["mcu/int8", "edge/fp32"] and accepted.route == "edge/fp32"
    lm = Request(id=4, kind="lm", deadline_ms=4000, length="short", prompt="hi", max_tokens=32)
    accepted, tried = run_policy(
        make_policy("hybrid"),
        lm,
        {
            "mcu/slm": ("ok", 0.81, 12000.0),
            "edge/slm": ("ok", 0.81, 4000.0),
            "cloud/llm": ("ok", 0.87, 1600.0),
        },
    )
    # mcu/slm predicted 12008 ms and edge/slm 4018 ms exceed 0.85 × 4000: straight to the cloud
    assert tried == ["cloud/llm"]


def test_predictor_prior_and_ewma() -> None:
    p = LatencyPredictor(ewma_alpha=0.5)
    assert p.predict_ms("cloud/fp32") == pytest.approx(12 + 75)
    assert p.predict_ms("edge/slm", "long") == pytest.approx(4000 + 20 + 10)
    p.observe("cloud/fp32", "", 187.0)
    assert p.predict_ms("cloud/fp32") == pytest.approx(137.0)
    with pytest.raises(ValueError, match=r"ewma_alpha must be within 0\.\.1"):
        LatencyPredictor(ewma_alpha=2)


def test_bad_policy_config_names_the_key() -> None:
    with pytest.raises(ValueError, match=r"policies\[confidence\]\.params\.thr is not a parameter"):
        make_policy("confidence", {"thr": 0.5})
    with pytest.raises(ValueError, match=r"threshold must be within 0\.\.1, got 1\.5"):
        make_policy("confidence", {"threshold": 1.5})
    with pytest.raises(ValueError, match="route must be node/model"):
        make_policy("confidence", {"cv_routes": ["edge/resnet"]})
    with pytest.raises(ValueError, match="route must be node/model"):
        make_policy("confidence", {"cv_routes": ["edge node/fp32"]})
    # one spelling: node names are lower case
    assert make_policy("confidence", {"cv_routes": ["EDGE/fp32"]}).cv_routes == ["edge/fp32"]
    with pytest.raises(ValueError, match=r"policies\[\]\.name must be one of"):
        make_policy("random")


def test_user_policy_in_a_few_lines() -> None:
    @register_policy("edge_first_test")
    class EdgeFirst(Policy):
        def __init__(self, threshold: float = 0.9) -> None:
            self.threshold = threshold

        async def decide(self, request, ctx):  # type: ignore[no-untyped-def]
            first = await ctx.attempt("edge/int8")
            if first.ok and first.confidence >= self.threshold:
                return first
            return await ctx.attempt("cloud/fp32")

    try:
        pol = make_policy("edge_first_test", {"threshold": 0.95})
        _, tried = run_policy(
            pol, CV, {"edge/int8": ("ok", 0.9, 10.0), "cloud/fp32": ("ok", 0.99, 80.0)}
        )
        assert tried == ["edge/int8", "cloud/fp32"]
    finally:
        POLICIES.pop("edge_first_test", None)


def test_energy_models() -> None:
    assert set(ENERGY_MODELS) >= {"device", "simulator"}
    radio = RadioModel()
    mcu = Attempt(route="mcu/int8", outcome="ok", latency_ms=25.0, remote_energy_mj=2.0)
    edge = Attempt(
        route="edge/fp32",
        outcome="ok",
        latency_ms=35.0,
        remote_energy_mj=5.0,
        bytes_tx=1000,
        bytes_rx=750,
    )
    b = make_energy_model("device").account([mcu, edge], edge)
    tx_s, rx_s = 8000 / 6e6, 6000 / 6e6
    radio_mj = (
        radio.tx_power_mw * tx_s
        + radio.rx_power_mw * rx_s
        + radio.wait_power_mw * (0.035 - tx_s - rx_s)
    )
    assert b.device_energy_mj == pytest.approx(2.0 + radio_mj)
    assert b.remote_energy_mj == pytest.approx(5.0)
    assert b.system_energy_mj == pytest.approx(7.0 + radio_mj)
    # the simulator's formula on the accepted attempt: 1.4 × 35 ms × 0.02 = 0.98 mJ ("~1 mJ")
    assert b.sim_energy_mj == pytest.approx(0.98)
    sim = make_energy_model("simulator").account([mcu, edge], edge)
    assert sim.device_energy_mj == pytest.approx(0.98)
    with pytest.raises(ValueError, match="tx_power_mw"):
        make_energy_model("device", {"tx_power_mw": -1})
