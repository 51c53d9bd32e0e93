"""Paths from the device through the experiment's links (orchestrator/topology.py)."""

from __future__ import annotations

from orchestrator.experiment import parse_experiment
from orchestrator.topology import shortest_paths


def hierarchical_doc(**extra: object) -> dict:
    return {
        "name": "hier",
        "tiers": {"edge-1": {"class": "edge"}, "regional": {"class": "edge"}, "cloud": {}},
        "links": {
            "device-edge-1": {"src": "device", "dst": "edge-1", "rtt_range_ms": [4, 6]},
            "edge-1-regional": {"src": "edge-1", "dst": "regional", "rtt_range_ms": [8, 12]},
            "regional-cloud": {"src": "regional", "dst": "cloud", "rtt_range_ms": [20, 40]},
            "device-cloud": {"src": "device", "dst": "cloud", "rtt_range_ms": [60, 120]},
        },
        "policies": [{"name": "always_cloud"}],
        **extra,
    }


def test_shortest_path_by_mean_rtt_crosses_every_hop() -> None:
    doc = hierarchical_doc()
    del doc["links"]["device-cloud"]  # else it would be unused and rejected (see below)
    exp = parse_experiment(doc, "hier.yaml")
    paths = exp.node_paths()
    assert paths["cloud"].hops == ("device-edge-1", "edge-1-regional", "regional-cloud")
    assert paths["regional"].hops == ("device-edge-1", "edge-1-regional")
    assert exp.rtt_mean_ms() == {"edge-1": 5.0, "regional": 15.0, "cloud": 45.0}
    assert paths["cloud"].name == "path-cloud" and paths["edge-1"].name == "device-edge-1"


def test_a_declared_path_wins_and_an_unused_link_is_named() -> None:
    doc = hierarchical_doc(paths={"cloud": ["device-cloud"]})
    del doc["links"]["regional-cloud"]
    exp = parse_experiment(doc, "hier.yaml")
    assert exp.node_paths()["cloud"].hops == ("device-cloud",)
    assert exp.rtt_mean_ms()["cloud"] == 90.0
    # without the declaration the 3-hop path (45 ms) is shorter and device-cloud is never used
    from orchestrator.experiment import ExperimentError

    try:
        parse_experiment(hierarchical_doc(), "hier.yaml")
    except ExperimentError as exc:
        assert exc.problems == [
            "links.device-cloud: no path from 'device' crosses it (each node is reached by its "
            "declared path or the shortest by mean RTT); remove it or declare a path under paths"
        ], exc.problems
    else:
        raise AssertionError("an uncrossed link must be rejected")


def test_ties_are_broken_deterministically() -> None:
    from netem.spec import LinkSpec

    links = {name: LinkSpec.model_validate(spec)
             for name, spec in hierarchical_doc()["links"].items()}
    links["edge-1-cloud"] = LinkSpec.model_validate(  # 5 + 40 = 45: ties with the 3 hops
        {"src": "edge-1", "dst": "cloud", "rtt_range_ms": [30, 50]})
    a = shortest_paths(links)
    assert a["cloud"].hops == ("device-edge-1", "edge-1-cloud")  # fewer hops wins the tie
    b = shortest_paths(dict(reversed(list(links.items()))))
    assert a == b
