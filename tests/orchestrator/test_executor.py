"""The executor and clock seam: the same replay, policies, records and summary on virtual time.

A simulated executor (this file: it holds each attempt for the configured device latency plus
the path's mean round trip, on the loop's clock, and answers with the request's label) runs
experiments on :class:`VirtualTimeLoop`. What these tests check is the seam, not a simulator:
replay, policies, records, summary and device streams run unchanged, and virtual time is
exact (a replay of minutes takes a fraction of a second, send lag is zero).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.client import Attempt
from orchestrator.executor import HttpExecutor, LoopClock, VirtualTimeLoop
from orchestrator.experiment import Experiment, load_experiment, parse_experiment
from orchestrator.policies import LatencyPredictor
from orchestrator.run import arun_experiment
from orchestrator.workload import Request

REPO = Path(__file__).resolve().parents[2]


class ProfileExecutor:
    """Answers every attempt after the predictor's prior (device latency + mean RTT from the
    request's group), correct with confidence 0.95 on easy images, 0.5 on hard ones."""

    def __init__(self, exp: Experiment) -> None:
        self.predictors = {g: LatencyPredictor(device_ms=exp.device_latency_ms(),
                                               rtt_ms=exp.rtt_mean_ms(g), ewma_alpha=0)
                           for g in exp.group_names()}
        self.reach = {g: set(exp.reachable(g)) for g in exp.group_names()}
        self.calls: list[tuple[str, str, float]] = []

    async def __aenter__(self) -> ProfileExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def knows(self, group: str, node: str) -> bool:
        return node in self.reach[group]

    async def attempt(self, route: str, request: Request, *, group: str, timeout_s: float,
                      t_intended: float, host_lead_ms: float = 0.0) -> Attempt:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        hold_ms = self.predictors[group].prior_ms(route, request.length)
        await asyncio.sleep(hold_ms / 1e3)
        self.calls.append((group, route, t0))
        easy = request.kind == "lm" or request.difficulty == "easy"
        return Attempt(route=route, outcome="ok", start_ms=(t0 - t_intended) * 1e3,
                       latency_ms=(loop.time() - t0) * 1e3,
                       prediction=request.label, confidence=0.95 if easy else 0.5,
                       quality=0.9 if request.kind == "lm" else float("nan"))


def run_virtual(exp: Experiment, out: Path, executor: Any) -> tuple[Any, float]:
    t0 = time.perf_counter()
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        result = runner.run(arun_experiment(exp, out, executor=executor, clock=LoopClock(),
                                            probe=False, plots=False))
    return result, time.perf_counter() - t0


def test_seed_experiment_runs_on_virtual_time(tmp_path: Path) -> None:
    exp = load_experiment(REPO / "experiments/seed.yaml").with_overrides(
        {"workload.n": 200, "replay.progress": False})
    ex = ProfileExecutor(exp)
    result, wall_s = run_virtual(exp, tmp_path, ex)
    rec = result.records
    assert len(rec) == 200 * 6 and (rec["outcome"] == "ok").all()
    # always_cloud: the cloud's 12 ms + the device-cloud link's mean RTT (30..120 → 75 ms),
    # exactly, because time is virtual
    cloud = rec[(rec["policy"] == "always_cloud") & (rec["type"] == "cv")]
    assert cloud["latency_ms"].to_numpy() == pytest.approx(87.0, abs=1e-6)
    assert (rec["send_lag_ms"] == 0).all()
    # the whole replay (several virtual minutes: the MCU's SLM holds 12 s per LM request) in
    # a few wall seconds
    virtual_s = sum(p.duration_s for p in result.passes)
    assert virtual_s > 60 and wall_s < virtual_s / 10
    assert set(result.summary["policy"]) == set(exp.policy_labels())
    assert (rec["device"] == "device").all() and (rec["group"] == "device").all()


def test_http_executor_is_the_default(tmp_path: Path) -> None:
    """Without an executor the run talks HTTP: a target nobody listens on is refused."""
    exp = parse_experiment({"workload": {"n": 2, "lm_ratio": 0},
                            "policies": ["always_edge"], "replay": {"progress": False}})
    result = asyncio.run(arun_experiment(exp, tmp_path, targets={"edge": "http://127.0.0.1:9"},
                                         probe=False, plots=False))
    assert list(result.records["outcome"]) == ["refused", "refused"]
    assert HttpExecutor({"edge": "http://x"}).knows("device", "edge")


def test_device_groups_each_send_their_own_stream(tmp_path: Path) -> None:
    """Two groups, open loop: every device's requests are recorded under its id, each group
    reaches its own nodes through its own links, and ids are unique across devices."""
    exp = parse_experiment({
        "name": "groups",
        "tiers": {"edge-a": {"class": "edge"}, "edge-b": {"class": "edge"}},
        "devices": {
            "cell-a": {"count": 3, "attach": "edge-a",
                       "arrival": {"process": "poisson", "params": {"rate_rps": 20}}},
            "cell-b": {"count": 2, "attach": "edge-b", "workload": {"n": 4},
                       "arrival": {"process": "constant", "params": {"rate_rps": 10}}},
        },
        "links": {
            "a-up": {"src": "cell-a", "dst": "edge-a", "rtt_range_ms": [4, 6]},
            "b-up": {"src": "cell-b", "dst": "edge-b", "rtt_range_ms": [20, 30]},
        },
        "workload": {"n": 6, "lm_ratio": 0},
        "policies": ["nearest", {"name": "always_edge", "params": {"cv_route": "@access/fp32"}}],
        "replay": {"progress": False},
    })
    ex = ProfileExecutor(exp)
    result, _ = run_virtual(exp, tmp_path, ex)
    rec = result.records
    assert len(rec) == (3 * 6 + 2 * 4) * 2
    assert rec.groupby("policy")["id"].nunique().tolist() == [26, 26]
    per_device = rec[rec["policy"] == "nearest"].groupby("device").size().to_dict()
    assert per_device == {"cell-a-0": 6, "cell-a-1": 6, "cell-a-2": 6, "cell-b-0": 4,
                          "cell-b-1": 4}
    # each group's nearest edge is its own access edge, through its own link
    for group, node, rtt in (("cell-a", "edge-a", 5.0), ("cell-b", "edge-b", 25.0)):
        mine = rec[rec["group"] == group]
        assert set(mine["node"]) == {node}
        assert set(mine["path"]) == {f"{group[-1]}-up"}
        assert mine["latency_ms"].to_numpy() == pytest.approx(22.0 + rtt, abs=1e-6)
    groups = (tmp_path / "summary_groups.csv").read_text().splitlines()
    assert groups[0].startswith("policy,group,n_devices,n,")
    assert len(groups) == 1 + 2 * 2
    # per-device seeds: the three cell-a devices do not send the same schedule
    sends = rec[(rec["policy"] == "nearest") & (rec["group"] == "cell-a")]
    schedules = sends.sort_values("schedule_s").groupby("device")["schedule_s"].apply(tuple)
    assert schedules.nunique() == 3
