"""Experiment files: examples validate, the seed is the simulator's setup, bad keys are named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from orchestrator.experiment import ExperimentError, load_experiment, parse_experiment
from orchestrator.policies import make_policy
from orchestrator.profiles import SIM_LATENCY_MS, SIM_RTT_RANGE_MS
from orchestrator.workload import WorkloadSpec

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "experiments" / "seed.yaml"


def seed_doc() -> dict:
    return yaml.safe_load(SEED.read_text())


EXAMPLES = sorted((REPO / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_validates(path: Path) -> None:
    exp = load_experiment(path)
    assert exp.tiers and exp.policies


def test_seed_reproduces_the_simulator_setup() -> None:
    exp = load_experiment(SEED)
    # tiers: the simulator's latency table for every model a tier serves, profile mode
    lat = exp.device_latency_ms()
    for tier, row in lat.items():
        assert exp.tiers[tier.lower()].device_time == "profile"
        for model, ms in row.items():
            sim_model = "slm" if model == "llm" else model
            assert ms == pytest.approx(SIM_LATENCY_MS[tier][sim_model], abs=1e-9), (tier, model)
    assert exp.tiers["mcu"].concurrency == 1
    # links: the simulator's integer-uniform RTT ranges from the device
    for name, link in exp.links.items():
        assert link.src == "device"
        assert link.rtt_range_ms == SIM_RTT_RANGE_MS[link.dst], name
    assert exp.rtt_mean_ms() == {"mcu": 0.0, "edge": 10.0, "cloud": 75.0}
    # workload: the simulator's generator defaults; serial arrivals (no queues)
    defaults = WorkloadSpec()
    for key in ("n", "easy_ratio", "deadline_lo_ms", "deadline_hi_ms", "lm_ratio", "lm_long_ratio"):
        assert getattr(exp.workload, key) == getattr(defaults, key), key
    assert (exp.workload.n, exp.workload.easy_ratio, exp.workload.lm_ratio) == (10, 0.6, 0.2)
    assert exp.arrival.process == "serial"
    # policies: the simulator's five plus always_edge, with its thresholds and margins
    params = {p.name: p.params for p in exp.policies}
    assert set(params) == {
        "always_local", "always_edge", "always_cloud", "confidence", "latency_aware", "hybrid"
    }
    assert params["confidence"] == {"threshold": 0.78}
    assert params["latency_aware"] == {"margin": 0.9}
    assert params["hybrid"] == {"threshold": 0.8, "margin": 0.85}


def test_poisson_example_loads_the_mcu_enough_to_queue() -> None:
    exp = load_experiment(REPO / "experiments" / "poisson-queueing.yaml")
    assert exp.arrival.process == "poisson"
    rate = exp.arrival.params["rate_rps"]
    mcu = exp.tiers["mcu"]
    service_ms = mcu.models["tinycnn"].latency_ms  # always_local's route
    utilisation = rate * service_ms / 1000.0 / mcu.concurrency
    assert 0.7 <= utilisation < 1.0, f"MCU utilisation {utilisation:.2f} (rate {rate}/s)"


def _problems(doc: dict) -> list[str]:
    with pytest.raises(ExperimentError) as info:
        parse_experiment(doc, "test.yaml")
    text = str(info.value)
    assert "test.yaml" in text
    return info.value.problems


def test_unknown_policy_lists_the_known_ones() -> None:
    doc = seed_doc()
    doc["policies"].append("always_clod")
    problems = _problems(doc)
    assert len(problems) == 1, problems
    line = problems[0]
    assert line.startswith("policies[6].name:"), line
    for name in ("always_local", "always_cloud", "confidence", "hybrid", "latency_aware"):
        assert name in line
    assert "'always_clod'" in line


def test_negative_delay_names_the_key_and_range() -> None:
    doc = seed_doc()
    doc["links"]["device-edge"] = {"src": "device", "dst": "edge", "delay_ms": -5}
    problems = _problems(doc)
    assert problems == ["links.device-edge.delay_ms: delay_ms must be within 0..60000, got -5"], (
        problems
    )


def test_missing_tier_referenced_by_a_link_and_a_policy() -> None:
    doc = seed_doc()
    del doc["tiers"]["cloud"]
    problems = _problems(doc)
    text = "\n".join(problems)
    assert ("links.device-cloud.dst: 'cloud' is neither a device group (device) nor a node "
            "declared under tiers") in text
    assert ("policies[2] (always_cloud): route @cloud/fp32: no node of class cloud serves fp32 "
            "(nodes: mcu (mcu), edge (edge))") in text
    assert "declared: edge, mcu" in text


def test_model_not_served_and_policy_params() -> None:
    doc = seed_doc()
    doc["tiers"]["mcu"]["models"] = {"int8": None}  # the MCU no longer serves int8
    doc["policies"][3] = {"name": "confidence", "params": {"threshold": 1.5}}
    problems = _problems(doc)
    text = "\n".join(problems)
    assert "policies[3].params (confidence): threshold must be within 0..1, got 1.5" in text
    assert "policies[5] (hybrid): route @mcu/int8: no node of class mcu serves int8" in text
    # a route naming the node itself is checked against what the node serves
    doc["policies"][5] = {"name": "hybrid", "params": {"cv_routes": ["mcu/int8", "cloud/fp32"]}}
    assert "policies[5] (hybrid): route mcu/int8 needs model 'int8'" in "\n".join(_problems(doc))


BAD_VALUES = [
    (("tiers", "mcu", "concurrency"), 0, "tiers.mcu.concurrency: must be within 1..256, got 0"),
    (("tiers", "edge", "concurency"), 2, "tiers.edge.concurency: unknown key; allowed keys: tier,"),
    (
        ("links", "device-cloud", "loss_pct"),
        140,
        "links.device-cloud.loss_pct: loss_pct must be within 0..100, got 140",
    ),
    (("workload", "easy_ratio"), 1.5, "workload.easy_ratio: must be within 0.0..1.0, got 1.5"),
    (
        ("arrival", "process"),
        "burst",
        "arrival.process: must be one of ['bursty', 'constant', 'poisson', 'serial', 'trace']",
    ),
    # the allowed list also holds plug-in models other tests imported (radio_only)
    (("energy", "model"), "battery", "energy.model: must be one of ['device', "),
    (("link_backend",), "tcp", "link_backend: must be one of 'auto', 'tc', 'proxy' or 'none'"),
    (("colour",), "blue", "colour: unknown key; allowed keys: name,"),
]


@pytest.mark.parametrize(("path", "value", "expect"), BAD_VALUES)
def test_bad_values_name_the_key(path: tuple[str, ...], value: object, expect: str) -> None:
    doc = seed_doc()
    node = doc
    for key in path[:-1]:
        node = node.setdefault(key, {})
    if path[-1] == "loss_pct":
        node.pop("rtt_range_ms", None)
    node[path[-1]] = value
    problems = _problems(doc)
    assert any(p.startswith(expect) for p in problems), f"expected {expect!r} in {problems}"


def test_mcu_cannot_hold_fp32() -> None:
    doc = seed_doc()
    doc["tiers"]["mcu"]["models"] = {"fp32": {"latency_ms": 80}}
    problems = _problems(doc)
    expect = "tiers.mcu.memory_bytes: tier mcu cannot hold its models"
    assert any(p.startswith(expect) for p in problems), problems


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("tiers: [unclosed\n")
    with pytest.raises(ExperimentError, match="not valid YAML"):
        load_experiment(bad)
    with pytest.raises(ExperimentError, match="file not found"):
        load_experiment(tmp_path / "nope.yaml")


def test_trace_path_is_relative_to_the_file(tmp_path: Path) -> None:
    rows = "".join(f"{i * 0.5}\n" for i in range(30))
    (tmp_path / "trace.csv").write_text("t_s\n" + rows)
    doc = seed_doc()
    doc["arrival"] = {"process": "trace", "params": {"path": "trace.csv"}}
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump(doc))
    exp = load_experiment(f)
    assert exp.arrival.params["path"] == str(tmp_path / "trace.csv")


def test_nodes_are_named_apart_from_their_class() -> None:
    """Two edge-class nodes under their own names; each gets the edge class's defaults."""
    doc = {
        "name": "two-edges",
        "tiers": {"edge-1": {"class": "edge"}, "edge-2": {"class": "edge", "concurrency": 1},
                  "cloud": {}},
        "links": {"device-edge-2": {"src": "device", "dst": "edge-2", "rtt_range_ms": [2, 6]}},
        "policies": [{"name": "always_edge",
                      "params": {"cv_route": "EDGE-2/fp32", "lm_route": "edge-1/slm"}}],
    }
    exp = parse_experiment(doc, "two-edges.yaml")
    assert {n: t.node_class for n, t in exp.tiers.items()} == {
        "edge-1": "edge", "edge-2": "edge", "cloud": "cloud"}
    assert exp.tiers["edge-2"].concurrency == 1 and exp.tiers["edge-1"].concurrency == 2
    assert exp.device_latency_ms()["edge-2"]["fp32"] == SIM_LATENCY_MS["edge"]["fp32"]
    assert exp.rtt_mean_ms() == {"edge-1": 0.0, "edge-2": 4.0, "cloud": 0.0}
    assert make_policy("always_edge", exp.policies[0].params).cv_routes == ["edge-2/fp32"]


@pytest.mark.parametrize(("tiers", "expect"), [
    ({"edge-1": {}}, "class"),  # not a class name: the class must be given
    ({"edge-1": {"class": "tpu"}}, "must be one of"),
    ({"Edge 1": {"class": "edge"}}, "node names must be lower case"),
    ({"device": {"class": "edge"}}, "names the default device group"),
])
def test_bad_nodes_name_the_key(tiers: dict[str, Any], expect: str) -> None:
    problems = _problems({"name": "x", "tiers": tiers, "policies": ["always_cloud"]})
    assert any(p.startswith("tiers") and expect in p for p in problems), problems
