"""The research experiments on the local stack for real: split computing over rate-limited
links, early exits on the MCU, variant-parallel ensembles with a node killed mid-run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from stack_testutil import REPO, run_on_local_stack

from models.catalog import chain_spec
from orchestrator.experiment import load_experiment

pytestmark = pytest.mark.slow


def _stages(attempts_json: str) -> list[dict]:
    return json.loads(attempts_json)


def test_split_cut_moves_with_bandwidth_and_the_tensor_crosses_the_link(state_dir: Path) -> None:
    """experiments/split.yaml, 8 requests per rate: every fixed cut sends exactly its tensor's
    bytes to the edge; at 0.25 Mbit/s the tensor's serialization shows in the latency; the cut
    the planner picks is all-local at 0.25 Mbit/s and all-remote at 20 Mbit/s."""
    chain = chain_spec("split-int8")
    exp = load_experiment(REPO / "experiments" / "split.yaml").with_overrides(
        {"workload.n": 8, "policies": [
            {"name": "split", "params": {"cut": k, "device": "@access"}} for k in (0, 1, 5, 6)
        ] + [{"name": "split", "params": {"cut": "auto", "device": "@access"}}]})
    result = run_on_local_stack(exp, state_dir)
    rec = result.records
    assert len(rec) == 5 * 3 * 8 and (rec.outcome == "ok").all(), rec.outcome.value_counts()
    for k in (0, 1, 5, 6):
        mine = rec[rec.decision == f"cut={k}"]  # a fixed cut (auto adds predicted_ms)
        assert len(mine) == 24, (k, len(mine))
        for _, row in mine.iterrows():
            stages = _stages(row.attempts_json)
            if k == 0:
                assert [s["route"].split("/")[0] for s in stages] == ["edge"]
                assert stages[0]["tensor_in_bytes"] == 784
            elif k == chain.n:
                assert len(stages) == 1 and stages[0]["route"].startswith("mcu-")
            else:
                head, tail = stages
                assert head["route"].startswith("mcu-") and tail["route"] == "edge/split-int8"
                assert head["tensor_out_bytes"] == chain.cut_bytes(k) == tail["tensor_in_bytes"]
                assert head["cut"] == k and tail.get("cut", -1) == -1
            assert row.correct == (row.prediction == row.label)
    # the same image answers the same on every cut (head∘tail is the whole model)
    fixed = rec[~rec.decision.str.contains("predicted")]
    pred = fixed.pivot_table(
        index=["group", "id"], columns="decision", values="prediction")
    assert (pred.nunique(axis=1) == 1).all()
    # cut 1 sends 5408 bytes: at 0.25 Mbit/s that alone is > 170 ms one way
    lat = fixed.groupby(["group", "decision"])["latency_ms"].mean()
    assert lat["slow", "cut=1"] > lat["slow", "cut=0"] + 100, lat
    assert lat["fast", "cut=1"] < lat["slow", "cut=1"] - 100, lat
    auto = rec[rec.decision.str.contains("predicted")]
    chosen = auto.groupby("group")["decision"].agg(lambda s: s.str.extract(r"cut=(\d)")[0]
                                                   .astype(int).mode().iloc[0])
    print("chosen cut per group:", chosen.to_dict(), "\nlatency per cut:\n", lat.round(1))
    assert chosen["slow"] == chain.n and chosen["fast"] == 0, chosen.to_dict()
    assert (result.run_dir / "research.csv").is_file()


def test_early_exit_saves_device_time_and_escalates_the_remainder(state_dir: Path) -> None:
    """experiments/early-exit.yaml at two thresholds: answers at exit 1 or 2 come from the MCU
    alone with less device time than exit 3; escalated requests send exactly the 1568-byte
    tensor after segment 2 to the edge, which answers at exit 3."""
    chain = chain_spec("exit-int8")
    exp = load_experiment(REPO / "experiments" / "early-exit.yaml").with_overrides(
        {"workload.n": 30, "policies": [{"name": "early_exit", "params": {"threshold": 0.5}},
                                        {"name": "early_exit", "params": {"threshold": 1.0}}]})
    rec = run_on_local_stack(exp, state_dir).records
    assert len(rec) == 60 and (rec.outcome == "ok").all(), rec.outcome.value_counts()
    low = rec[rec.decision.str.contains("threshold=0.5")]
    early = low[low.exit < 3]
    assert len(early) > 0.6 * len(low)  # most inputs pass 0.5 at exit 1 or 2
    for _, row in early.iterrows():
        (only,) = _stages(row.attempts_json)
        assert only["route"] == "mcu/exit-int8" and only["exit"] == row.exit
    full_ms = 25.0  # the MCU's int8 latency: the whole chain
    e1 = early[early.exit == 1].device_ms
    assert (e1 < full_ms * chain.share(1, 1) + 2).all() and len(e1) > 0
    high = rec[rec.decision.str.contains("threshold=1")]
    esc = high[high.decision.str.contains("escalated=remainder")]
    assert len(esc) >= 3  # int8 exits often give confidence exactly 1: those pass even 1.0
    for _, row in esc.iterrows():
        head, tail = _stages(row.attempts_json)
        assert head["cut"] == 2 and head["tensor_out_bytes"] == chain.cut_bytes(2) == 1568
        assert tail["route"] == "edge/exit-int8" and tail["tensor_in_bytes"] == 1568
        assert tail["exit"] == 3 == row.exit
    # the probability vector of every answered stage is kept
    vec = _stages(esc.iloc[0].attempts_json)[1]["probs"]
    assert len(vec) == 10 and abs(sum(vec) - 1) < 0.01


def test_variant_ensemble_survives_a_killed_node(state_dir: Path) -> None:
    """experiments/variants-kill.yaml, shortened: edge-2 is killed 3 s in; every request keeps
    its record, edge-2's attempts after the kill fail, the ensemble answers with the other
    three variants."""
    exp = load_experiment(REPO / "experiments" / "variants-kill.yaml").with_overrides(
        {"workload.n": 150, "scenario": [
            {"at_s": 3, "action": "kill", "node": "edge-2", "phase": "edge-2-killed"}]})
    result = run_on_local_stack(exp, state_dir)
    rec = result.records
    assert len(rec) == 150 and set(rec.id) == set(range(150))
    after = rec[rec.phase == "edge-2-killed"]
    before = rec[rec.phase != "edge-2-killed"]
    assert len(after) > 30 and len(before) > 30
    assert (rec.outcome == "ok").mean() > 0.95, rec.outcome.value_counts()
    answered = after.decision.str.extract(r"answered=(\d)")[0].astype(float)
    assert (answered <= 3).all() and (answered == 3).mean() > 0.8
    for _, row in after.iterrows():
        e2 = [s for s in _stages(row.attempts_json) if s["route"].startswith("edge-2/")]
        assert len(e2) == 1 and e2[0]["outcome"] in ("refused", "disconnected", "error"), e2
    acc = rec.groupby("phase")["correct"].mean() * 100
    print("accuracy per phase:", acc.round(1).to_dict())
    assert np.isfinite(acc).all()
