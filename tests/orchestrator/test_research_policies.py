"""The multi-stage policies' planning and validation (no network: their live runs are in
tests/stack/test_research_live.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.catalog import IMAGE_BYTES, chain_spec
from models.chain import CutTensor, TensorMeta
from orchestrator.client import Attempt, ChainOp, build_http_request, read_tensor, tensor_headers
from orchestrator.energy import RadioModel
from orchestrator.experiment import ExperimentError, load_experiment, parse_experiment
from orchestrator.policies import LatencyPredictor, NodeInfo, PolicyContext, make_policy
from orchestrator.policies_research import Split, VariantParallel
from orchestrator.workload import Request

ROOT = Path(__file__).resolve().parents[2]


def _ctx(rate_mbit: float | None, radio: RadioModel | None = None) -> PolicyContext:
    nodes = {"mcu": NodeInfo("mcu", "mcu", 0.0, 1, ("split-int8",), active_w=0.0235),
             "edge": NodeInfo("edge", "edge", 3.0, 2, ("split-int8",), rate_mbit, rate_mbit)}
    predictor = LatencyPredictor(device_ms={"mcu": {"split-int8": 25.0},
                                            "edge": {"split-int8": 10.0}},
                                 rtt_ms={"mcu": 0.0, "edge": 3.0})
    req = Request(id=0, kind="cv", difficulty="easy", deadline_ms=200, label=1, image=b"\0" * 784)

    async def never(route: str, **kw: object) -> Attempt:
        raise AssertionError("planning only")

    return PolicyContext(req, never, predictor, 0.0, nodes=nodes, radio=radio,
                         clock=lambda: 0.0)


def test_the_chosen_cut_moves_with_bandwidth() -> None:
    """Neurosurgeon's shape from the planner: all on the device at 0.25 Mbit/s, all on the
    server at 20 Mbit/s; the prediction at cut k adds up its own parts."""
    policy = make_policy("split", {"cut": "auto"}, {
        "mcu": NodeInfo("mcu", "mcu", models=("split-int8",)),
        "edge": NodeInfo("edge", "edge", models=("split-int8",))})
    assert isinstance(policy, Split)
    chain = chain_spec("split-int8")
    assert policy.choose(_ctx(0.25)) == chain.n
    assert policy.choose(_ctx(20.0)) == 0
    # cut 3: 25 ms × share(1..3) on the device, RTT 3, bytes both ways at 2 Mbit/s, edge rest
    p = policy.predict(3, _ctx(2.0))["latency_ms"]
    up = (chain.cut_bytes(3) + 300) * 8 / 2e6 * 1e3
    down = (chain.cut_bytes(chain.n) + 900) * 8 / 2e6 * 1e3
    want = 25.0 * chain.share(1, 3) + 3.0 + up + down + 10.0 * chain.share(4, chain.n)
    assert p == pytest.approx(want)
    # the energy objective counts the radio: waiting on a slow link costs the device more than
    # 25 ms of MCU compute at 23.5 mW
    energy = make_policy("split", {"cut": "auto", "objective": "energy"}, policy.nodes)
    assert energy.choose(_ctx(0.25, RadioModel(uplink_kbps=250, downlink_kbps=250))) == chain.n


def test_chain_catalog_matches_the_segments() -> None:
    chain = chain_spec("split-int8")
    assert chain.n == 6 and chain.cut_bytes(0) == IMAGE_BYTES
    assert [chain.cut_bytes(k) for k in range(1, 6)] == [5408, 1352, 968, 200, 32]
    assert chain.share(1, chain.n) == pytest.approx(1.0)
    assert chain_spec("exit-int8").exits() == [1, 2, 3]


def test_variant_merge_sums_weighted_top_k() -> None:
    a = Attempt(route="e1/v14w8", outcome="ok", probs=(0.6, 0.3), topk=(3, 5))
    b = Attempt(route="e2/v28w32", outcome="ok", probs=(0.5, 0.45), topk=(5, 3))
    c = Attempt(route="e3/v20w16", outcome="ok", probs=(0.9, 0.05), topk=(5, 1))
    pred, conf, scores = VariantParallel.merge([(1.0, a), (1.0, b), (1.0, c)])
    assert pred == 5 and scores[5] == pytest.approx(0.3 + 0.5 + 0.9)
    assert conf == pytest.approx(scores[5] / sum(scores))
    pred, _, _ = VariantParallel.merge([(3.0, a), (1.0, b), (0.0, c)])
    assert pred == 3  # the weights decide
    vec = a.probability_vector()
    assert vec is not None and vec[3] == 0.6 and sum(vec) == pytest.approx(1.0)


@pytest.mark.parametrize(("name", "params", "words"), [
    ("split", {"cut": 7}, ["cut", "0..6"]),
    ("split", {"cut": "best"}, ["cut", "auto"]),
    ("split", {"chain": "exit-int8"}, ["chain", "split"]),
    ("split", {"chain": "nope"}, ["chain", "split-int8"]),
    ("split", {"cuts": [0, 9]}, ["cuts", "0..6"]),
    ("split", {"objective": "speed"}, ["objective", "latency"]),
    ("split", {"bandwidth_mbit": 0}, ["bandwidth_mbit"]),
    ("early_exit", {"threshold": 1.5}, ["threshold", "0..1"]),
    ("early_exit", {"local_stop": 4}, ["local_stop", "1..2"]),
    ("early_exit", {"local_stop": 2, "escalate": "none"}, ["local_stop", "3..3"]),
    ("early_exit", {"criterion": "margin"}, ["criterion", "entropy"]),
    ("early_exit", {"escalate": "cloud"}, ["escalate", "remainder"]),
    ("variant_parallel", {"variants": ["edge/v14w8"], "k": 0}, ["k", "1..1"]),
    ("variant_parallel", {"variants": ["edge/v14w8", "edge/v20w16"], "k": 3}, ["k", "1..2"]),
    ("variant_parallel", {"variants": ["edge/v14w8"], "top_k": 0}, ["top_k", "1..10"]),
    ("variant_parallel", {"variants": ["edge/v14w8"], "top_k": 11}, ["top_k", "1..10"]),
    ("variant_parallel", {"variants": ["edge/v14w8"], "weights": [-1]}, ["weights"]),
    ("variant_parallel", {"variants": ["edge/v14w8"], "answer_at": 0}, ["answer_at"]),
])
def test_bad_parameters_name_the_key(name: str, params: dict, words: list[str]) -> None:
    with pytest.raises(ValueError) as err:
        make_policy(name, params)
    for w in words:
        assert w in str(err.value), err.value


def test_experiment_errors_name_the_policy_key() -> None:
    doc = {"tiers": {"mcu": {"chains": {"split-int8": {}}}, "edge": {}},
           "links": {"device-edge": {"src": "device", "dst": "edge", "rtt_range_ms": [1, 2]}},
           "workload": {"n": 2, "lm_ratio": 0},
           "policies": [{"name": "split", "params": {"cut": 9}}]}
    with pytest.raises(ExperimentError) as err:
        parse_experiment(doc)
    assert "policies[0].params (split): cut must be" in str(err.value)
    doc["policies"] = [{"name": "split", "params": {"cut": 2}}]
    with pytest.raises(ExperimentError) as err:  # the edge serves no split-int8
        parse_experiment(doc)
    assert "edge" in str(err.value) and "split-int8" in str(err.value)


@pytest.mark.parametrize("name", ["split", "early-exit", "variants", "variants-kill"])
def test_the_research_experiments_load(name: str) -> None:
    exp = load_experiment(ROOT / "experiments" / f"{name}.yaml")
    assert exp.policies


def test_stage_requests_frame_the_tensor() -> None:
    req = Request(id=7, kind="cv", difficulty="hard", deadline_ms=50, label=2,
                  image=bytes(range(256)) * 3 + bytes(16))
    kind, headers, body = build_http_request("mcu/split-int8", req, op=ChainOp(0, 3))
    assert kind == "chain" and body == req.image
    assert headers["content-type"] == "application/octet-stream"
    meta = TensorMeta("int8", (1, 11, 11, 8), 0.05, -128)
    t = CutTensor.of(np.arange(968) % 100, meta)
    kind, headers, body = build_http_request("edge/split-int8", req, op=ChainOp(3), tensor=t)
    assert body == t.data and headers["x-edgebed-shape"] == "1,11,11,8"
    back = read_tensor(headers, body)
    assert back.meta == meta and back.data == t.data
    with pytest.raises(ValueError, match="968"):
        read_tensor(headers, body[:-1])
    assert tensor_headers(t)["x-edgebed-zero-point"] == "-128"
    assert ChainOp(0, 2, 0.9).query("exit-int8") == {
        "chain": "exit-int8", "start": "0", "stop": "2", "threshold": "0.9",
        "criterion": "confidence"}
    with pytest.raises(ValueError, match="no tensor"):
        build_http_request("edge/split-int8", req, op=ChainOp(3))


def test_a_fan_out_pays_the_radio_wait_once() -> None:
    """Four variants in flight together keep one radio waiting for the longest of them, not
    four times over; attempts one after another are unchanged."""
    from orchestrator.energy import DeviceEnergy, overlap_s

    def remote(start: float, ms: float) -> Attempt:
        return Attempt(route="edge/v14w8", outcome="ok", node_class="edge", start_ms=start,
                       latency_ms=ms)

    model = DeviceEnergy(wait_power_mw=100.0, tx_power_mw=0.0, rx_power_mw=0.0)
    together = [remote(0.0, 20.0) for _ in range(4)]
    after = [remote(20.0 * i, 20.0) for i in range(4)]
    assert model.account(together, None).device_energy_mj == pytest.approx(100.0 * 0.020)
    assert model.account(after, None).device_energy_mj == pytest.approx(4 * 100.0 * 0.020)
    assert overlap_s([remote(0, 10), remote(2, 10), remote(1, 3)]) == pytest.approx(0.011)
