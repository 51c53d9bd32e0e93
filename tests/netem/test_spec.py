"""Link model: validation messages, shorthand, the simulator's integer RTT range, laws."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import stats

from netem.spec import (
    DirectionSpec,
    LinkSpec,
    Topology,
    format_validation_error,
    ks_1samp,
    load_topology,
)


def _err(data: dict) -> str:
    with pytest.raises(ValidationError) as exc:
        LinkSpec.model_validate(data)
    return format_validation_error(exc.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"loss_pct": 140}, "up.loss_pct: loss_pct must be within 0..100, got 140"),
        ({"up": {"delay_ms": -1}}, "up.delay_ms: delay_ms must be within 0..60000, got -1"),
        ({"down": {"rate_mbit": 0}}, "down.rate_mbit: rate_mbit must be within 0.001..100000"),
        ({"up": {"delay_ms": 5, "jitter_ms": 6}},
         "jitter_ms must be within 0..delay_ms (5) for a uniform distribution, got 6"),
        ({"rtt_range_ms": [10, 5]}, "rtt_range_ms[1] must be within 10..60000 (>= lo), got 5"),
        ({"rtt_range_ms": [1.5, 5]}, "rtt_range_ms[0] must be an integer within 0..60000"),
        ({"up": {"distribution": "cauchy"}}, "up.distribution: Input should be 'uniform', 'normal'"),
        ({"up": {"delay_ms": 1, "wobble_ms": 3}}, "up.wobble_ms: Extra inputs are not permitted"),
    ],
)
def test_validation_names_key_and_range(data: dict, expected: str) -> None:
    msg = _err(data)
    assert expected in msg, msg


def test_topology_file_error_names_link_and_key(tmp_path: Path) -> None:
    f = tmp_path / "links.yaml"
    f.write_text("links:\n  device-edge:\n    loss_pct: 140\n")
    with pytest.raises(ValueError, match=r"links\.device-edge\.up\.loss_pct: loss_pct must be "
                                         r"within 0\.\.100, got 140"):
        load_topology(f)


def test_shorthand_applies_to_both_directions_and_direction_overrides() -> None:
    link = LinkSpec.model_validate({"delay_ms": 7, "loss_pct": 1, "down": {"delay_ms": 3}})
    assert (link.up.delay_ms, link.down.delay_ms) == (7, 3)
    assert link.up.loss_pct == link.down.loss_pct == 1
    assert link.rtt_mean_ms() == pytest.approx(7 + 3 + 2 * 0.01 * 200)


def test_rtt_range_is_the_simulators_integer_uniform_exactly() -> None:
    link = LinkSpec.model_validate({"rtt_range_ms": [30, 120]})
    assert link.down.is_zero and link.up.integer_ms
    rng = random.Random(1)
    draws = [link.up.sample_ms(rng) + link.down.sample_ms(rng) for _ in range(91 * 400)]
    values, counts = np.unique(draws, return_counts=True)
    assert values.tolist() == list(range(30, 121))  # integers, both ends included
    chi = stats.chisquare(counts)
    assert chi.pvalue > 1e-3, (counts.min(), counts.max())
    assert link.rtt_mean_ms() == 75.0
    # the same law through the vectorised sampler and the CDF used by the probe
    arr = link.rtt_samples(20_000, np.random.default_rng(2))
    assert set(np.unique(arr)) <= set(range(30, 121))
    d, p = ks_1samp(arr, link.rtt_cdf())
    assert p > 0.01, (d, p)
    # one-point range = fixed RTT
    fixed = LinkSpec.model_validate({"rtt_range_ms": [5, 5]})
    assert fixed.up.sample_ms(rng) == 5 and fixed.rtt_mean_ms() == 5


@pytest.mark.parametrize("dist", ["uniform", "normal", "pareto"])
def test_scalar_and_vector_samplers_and_cdf_agree(dist: str) -> None:
    d = DirectionSpec(delay_ms=20, jitter_ms=6, distribution=dist, loss_pct=5, loss_rto_ms=100)
    rng = random.Random(3)
    scalar = np.array([d.sample_ms(rng) for _ in range(20_000)])
    vector = d.sample_array(20_000, np.random.default_rng(4))
    assert stats.ks_2samp(scalar, vector).pvalue > 0.001
    for xs in (scalar, vector):
        dd, p = ks_1samp(xs, d.cdf)
        assert p > 0.001, (dist, dd, p)
        assert abs(xs.mean() - d.mean_ms()) < 4 * xs.std() / np.sqrt(len(xs))


def test_convolution_of_directions() -> None:
    link = LinkSpec(up=DirectionSpec(delay_ms=25, jitter_ms=10 / 2**0.5, distribution="normal"),
                    down=DirectionSpec(delay_ms=25, jitter_ms=10 / 2**0.5,
                                       distribution="normal"))
    x = link.rtt_samples(50_000, np.random.default_rng(5))
    assert x.std() == pytest.approx(10, rel=0.02)
    ref = stats.norm(50, 10)
    assert ks_1samp(x[:5000], ref.cdf)[1] > 0.01
    assert ks_1samp(x[:5000], link.rtt_cdf())[1] > 0.01


def test_pareto_matches_netems_table() -> None:
    """Our pareto law is netem's: compare with iproute2's pareto.dist when installed."""
    tables = [p for p in (Path("/usr/lib/x86_64-linux-gnu/tc/pareto.dist"),
                          Path("/usr/lib/tc/pareto.dist")) if p.exists()]
    if not tables:
        pytest.skip("iproute2's pareto.dist not installed")
    vals = [int(v) for line in tables[0].read_text().splitlines()
            if not line.startswith("#") for v in line.split()]
    netem_draws = 20 + 5 * np.array(vals) / 8192  # mu + sigma * t / NETEM_DIST_SCALE
    d = DirectionSpec(delay_ms=20, jitter_ms=5, distribution="pareto")
    for q in (1, 10, 50, 90, 98.5):
        at = np.percentile(netem_draws, q)
        assert float(d.cdf(np.array([at]))[0]) == pytest.approx(q / 100, abs=0.005), (q, at)
    assert max(netem_draws) == pytest.approx(d.pareto_cap_ms, abs=1e-3)


def test_ks_handles_atoms() -> None:
    fixed = LinkSpec(up=DirectionSpec(delay_ms=10))
    assert ks_1samp(np.full(100, 10.0), fixed.rtt_cdf()) == (0.0, 1.0)
    assert ks_1samp(np.full(100, 11.0), fixed.rtt_cdf())[1] < 1e-6


def test_topology_helpers() -> None:
    topo = Topology.model_validate({"links": {
        "device-edge": {"src": "device", "dst": "edge", "rtt_range_ms": [5, 15]},
        "edge-cloud": {"src": "edge", "dst": "cloud", "delay_ms": 10}}})
    assert topo.endpoints() == ["device", "edge", "cloud"]
    assert topo.between("edge", "cloud")[0] == "edge-cloud"
    with pytest.raises(KeyError, match="no link from 'mcu' to 'edge'"):
        topo.between("mcu", "edge")
    # a dumped spec re-validates to the same law (what the orchestrator writes for the proxy)
    link = topo.links["device-edge"]
    again = LinkSpec.model_validate(link.model_dump(exclude={"rtt_range_ms"}))
    assert again.up == link.up and again.down == link.down
    assert LinkSpec.model_validate(link.model_dump(mode="json")) == link  # full round trip
    with pytest.raises(ValidationError, match="cannot be combined with a different up"):
        LinkSpec.model_validate({"rtt_range_ms": [5, 15], "up": {"delay_ms": 3}})


def test_topology_poll_us_names_key_and_range() -> None:
    assert Topology().poll_us == 200.0
    with pytest.raises(ValidationError) as exc:
        Topology.model_validate({"poll_us": 20_000})
    assert format_validation_error(exc.value) == "poll_us: poll_us must be within 0..10000, got 20000"


def test_paced_baseline_gap_is_the_links_median_rtt() -> None:
    from netem.probe import BASELINE_MAX_GAP_MS, baseline_gap_ms

    assert baseline_gap_ms(LinkSpec.model_validate({"delay_ms": 5})) == pytest.approx(10.0)
    assert baseline_gap_ms(LinkSpec.model_validate({"loss_pct": 20})) == 0.0  # mostly no wait
    assert baseline_gap_ms(LinkSpec.model_validate({"delay_ms": 500})) == BASELINE_MAX_GAP_MS


def test_fidelity_verdict_says_when_the_sample_is_too_small() -> None:
    """A 2 ms miss of N(50, 10) is 'n?' with 20 probes (3.3 SE > the 1 ms tolerance) and 'NO'
    with 4000 (then the mean can tell); a faithful large sample is 'yes'."""
    from netem.probe import fidelity_report, format_table

    link = LinkSpec.model_validate({"distribution": "normal", "delay_ms": 25,
                                    "jitter_ms": 10 / 2**0.5})
    rng = np.random.default_rng(3)

    def shifted(n: int, shift: float) -> np.ndarray:
        x = rng.normal(50, 10, n)
        return x - x.mean() + 50 + shift  # exact sample mean 50 + shift

    small = fidelity_report(shifted(20, 2.0), link, name="small")
    large = fidelity_report(shifted(4000, 2.0), link, name="large")
    good = fidelity_report(shifted(4000, 0.0), link, name="good")
    assert not small["mean_ok"] and not small["mean_conclusive"] and small["ks_ok"]
    assert not large["mean_ok"] and large["mean_conclusive"]
    assert good["mean_ok"] and good["ks_ok"]
    rows = {line.split()[0]: line.split()[-1] for line in format_table([small, large, good])
            .splitlines()[2:] if line.split()[0] in ("small", "large", "good")}
    assert rows == {"small": "n?", "large": "NO", "good": "yes"}, rows
    assert "Probe more to decide" in format_table([small])


def test_probe_serialization_counts_each_rate_limited_direction() -> None:
    """A probe's bytes at a link's rate: per hop and direction bytes × 8 ÷ rate (ms), none
    without a rate (the fidelity probe subtracts it before judging the delay law)."""
    from netem.probe import serialization_ms
    from netem.spec import LinkSpec, PathLaw

    sizes = {"up": 250, "down": 500}
    assert serialization_ms(LinkSpec(delay_ms=5), sizes) == 0.0
    one = LinkSpec(delay_ms=5, rate_mbit=1)  # both directions 1 Mbit/s = 125 bytes/ms
    assert serialization_ms(one, sizes) == pytest.approx(2.0 + 4.0)
    path = PathLaw("p", {"a": one, "b": LinkSpec(up={"rate_mbit": 2})})
    assert serialization_ms(path, sizes) == pytest.approx(6.0 + 1.0)
