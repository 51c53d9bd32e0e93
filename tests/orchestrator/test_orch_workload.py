"""Workload generator and arrival processes: simulator defaults, determinism, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator.arrivals import ARRIVALS, make_schedule
from orchestrator.workload import SEED_DIMENSIONS, EvalSet, Seeds, WorkloadSpec, generate_workload


@pytest.fixture(scope="module")
def eval_set() -> EvalSet:
    """A small stand-in evaluation set with recognisable pixels (the real one is 2,000 each)."""
    n = 50
    easy = np.stack([np.full((28, 28), i, np.uint8) for i in range(n)])
    hard = np.stack([np.full((28, 28), 100 + i, np.uint8) for i in range(n)])
    labels = np.arange(n) % 10
    return EvalSet(easy, labels, hard, (labels + 1) % 10)


def test_defaults_match_the_simulator() -> None:
    spec = WorkloadSpec()
    assert (spec.n, spec.easy_ratio, spec.deadline_lo_ms, spec.deadline_hi_ms, spec.lm_ratio) == (
        10,
        0.6,
        20,
        120,
        0.2,
    )
    assert spec.lm_long_ratio == 0.4
    assert (spec.lm_deadline_extra_lo_ms, spec.lm_deadline_extra_hi_ms) == (2000, 13000)


def test_mix_and_deadline_ranges(eval_set: EvalSet) -> None:
    spec = WorkloadSpec(n=20_000)
    reqs = generate_workload(spec, Seeds(), eval_set)
    kinds = np.array([r.kind for r in reqs])
    lm = [r for r in reqs if r.kind == "lm"]
    cv = [r for r in reqs if r.kind == "cv"]
    lm_share = (kinds == "lm").mean()
    long_share = np.mean([r.length == "long" for r in lm])
    easy_share = np.mean([r.difficulty == "easy" for r in cv])
    # binomial sd at n=20000 is ~0.003 (lm) and ~0.008 (long): 4 sd tolerances
    assert abs(lm_share - 0.2) < 0.012, f"lm share configured 0.2, measured {lm_share:.4f}"
    assert abs(long_share - 0.4) < 0.03, f"long share configured 0.4, measured {long_share:.4f}"
    assert abs(easy_share - 0.6) < 0.015, f"easy share configured 0.6, measured {easy_share:.4f}"
    cv_d = np.array([r.deadline_ms for r in cv])
    lm_d = np.array([r.deadline_ms for r in lm])
    assert cv_d.min() == 20 and cv_d.max() == 120, (cv_d.min(), cv_d.max())
    assert lm_d.min() >= 2020 and lm_d.max() <= 13120, (lm_d.min(), lm_d.max())
    assert {r.max_tokens for r in lm} == {spec.short_max_tokens, spec.long_max_tokens}


def test_images_carry_their_labels(eval_set: EvalSet) -> None:
    reqs = generate_workload(WorkloadSpec(n=300, lm_ratio=0), Seeds(), eval_set)
    for r in reqs:
        assert len(r.image) == 784
        pixel = r.image[0]
        if r.difficulty == "easy":
            assert pixel == r.image_index and r.label == eval_set.easy_labels[r.image_index]
        else:
            assert pixel == 100 + r.image_index
            assert r.label == eval_set.hard_labels[r.image_index]


def test_same_seeds_same_workload_and_schedule(eval_set: EvalSet) -> None:
    spec = WorkloadSpec(n=500)
    seeds = Seeds.from_base(42)
    a = generate_workload(spec, seeds, eval_set)
    b = generate_workload(spec, Seeds.from_base(42), eval_set)
    assert a == b
    for name, params in [("poisson", {"rate_rps": 50}), ("bursty", {}), ("constant", {})]:
        s1 = make_schedule(name, 500, seeds.arrivals, params)
        s2 = make_schedule(name, 500, seeds.arrivals, params)
        assert s1 is not None and np.array_equal(s1, s2), name


def test_seed_dimensions_are_independent(eval_set: EvalSet) -> None:
    spec = WorkloadSpec(n=300)
    base = generate_workload(spec, Seeds(), eval_set)
    other_images = generate_workload(spec, Seeds(images=99), eval_set)
    # changing the image seed keeps the request mix and deadlines, changes the images
    assert [(r.kind, r.difficulty, r.length, r.deadline_ms) for r in base] == [
        (r.kind, r.difficulty, r.length, r.deadline_ms) for r in other_images
    ]
    assert [r.image_index for r in base] != [r.image_index for r in other_images]
    other_mix = generate_workload(spec, Seeds(workload=99), eval_set)
    assert [r.kind for r in base] != [r.kind for r in other_mix]
    seeds = Seeds.from_base(7)
    assert len(set(seeds.model_dump().values())) == len(SEED_DIMENSIONS)


def test_bad_spec_names_the_field() -> None:
    with pytest.raises(ValueError, match="deadline_hi_ms must be >= deadline_lo_ms"):
        WorkloadSpec(deadline_lo_ms=100, deadline_hi_ms=50)
    with pytest.raises(ValueError, match="easy_ratio"):
        WorkloadSpec(easy_ratio=1.5)


def test_arrival_processes() -> None:
    assert set(ARRIVALS) >= {"serial", "constant", "poisson", "bursty", "trace"}
    assert make_schedule("serial", 10, 0) is None
    const = make_schedule("constant", 5, 0, {"rate_rps": 10})
    assert const is not None and np.allclose(const, [0, 0.1, 0.2, 0.3, 0.4])
    pois = make_schedule("poisson", 20_000, 3, {"rate_rps": 100})
    assert pois is not None
    rate = (len(pois) - 1) / pois[-1]
    assert abs(rate - 100) < 3, f"poisson configured 100 req/s, measured {rate:.2f}"
    gaps = np.diff(pois)
    cv = gaps.std() / gaps.mean()
    assert abs(cv - 1) < 0.05, f"exponential gaps should have CV 1, measured {cv:.3f}"
    burst = make_schedule("bursty", 2000, 3, {"on_rate_rps": 100, "on_s": 1, "off_s": 4})
    assert burst is not None and np.all(np.diff(burst) >= 0)
    phase = np.mod(burst, 5.0)
    assert np.all(phase <= 1.0 + 1e-9), "bursty sent during an off window"
    with pytest.raises(ValueError, match=r"rate_rps must be within 0\.\.1e\+06 \(exclusive 0\)"):
        make_schedule("poisson", 10, 0, {"rate_rps": 0})
    with pytest.raises(ValueError, match=r"arrival\.process must be one of"):
        make_schedule("nope", 10, 0)
    with pytest.raises(ValueError, match=r"rate: not a parameter of arrival process 'constant'; "
                                         r"allowed: rate_rps"):
        make_schedule("constant", 10, 0, {"rate": 3})
    for bad in (float("inf"), float("nan"), True, "3"):
        with pytest.raises(ValueError, match="off_s must be a"):
            make_schedule("bursty", 10, 0, {"off_s": bad})


def test_trace_arrivals(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "trace.csv"
    path.write_text("t_s,other\n10.5,x\n10.0,y\n11.25,z\n")
    sched = make_schedule("trace", 3, 0, {"path": str(path)})
    assert sched is not None and np.allclose(sched, [0.0, 0.5, 1.25])
    looped = make_schedule("trace", 7, 0, {"path": str(path), "loop": True})
    assert looped is not None and len(looped) == 7 and np.all(np.diff(looped) > 0)
    with pytest.raises(ValueError, match="the trace has 3 rows, the workload needs n=5"):
        make_schedule("trace", 5, 0, {"path": str(path)})
    with pytest.raises(ValueError, match=r"column: 'when' not in the trace's columns"):
        make_schedule("trace", 3, 0, {"path": str(path), "column": "when"})
    with pytest.raises(ValueError, match="path: not a file"):
        make_schedule("trace", 3, 0, {"path": str(tmp_path)})
