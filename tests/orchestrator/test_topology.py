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


# ----------------------------------------------------------------------------- device groups
def cells_doc(**extra: object) -> dict:
    return {
        "name": "cells",
        "tiers": {"edge-1": {"class": "edge"}, "edge-2": {"class": "edge"}, "cloud": {}},
        "devices": {"cam": {"count": 3, "attach": "edge-1"},
                    "tag": {"count": 2, "attach": "edge-2", "workload": {"n": 4}}},
        "links": {
            "cam-up": {"src": "cam", "dst": "edge-1", "rtt_range_ms": [2, 4]},
            "tag-up": {"src": "tag", "dst": "edge-2", "rtt_range_ms": [10, 14]},
            "bh-1": {"src": "edge-1", "dst": "cloud", "rtt_range_ms": [20, 40]},
            "bh-2": {"src": "edge-2", "dst": "cloud", "rtt_range_ms": [30, 50]},
        },
        "workload": {"lm_ratio": 0},
        "policies": ["always_edge", "always_cloud",
                     {"name": "always_edge", "params": {"cv_route": "@access/int8"}}],
        **extra,
    }


def problems_of(doc: dict) -> list[str]:
    from orchestrator.experiment import ExperimentError

    try:
        parse_experiment(doc, "cells.yaml")
    except ExperimentError as exc:
        return exc.problems
    return []


def test_each_group_has_its_own_paths_and_view() -> None:
    exp = parse_experiment(cells_doc(), "cells.yaml")
    assert exp.n_devices() == 5
    assert [g.device_ids() for g in exp.groups()] == [["cam-0", "cam-1", "cam-2"],
                                                        ["tag-0", "tag-1"]]
    assert exp.group_paths("cam")["cloud"].hops == ("cam-up", "bh-1")
    assert exp.group_paths("tag")["cloud"].hops == ("tag-up", "bh-2")
    assert exp.group_paths("tag")["cloud"].name == "path-tag-cloud"
    assert sorted(exp.reachable("cam")) == ["cloud", "edge-1"]
    assert exp.rtt_mean_ms("tag") == {"edge-2": 12.0, "cloud": 52.0}
    assert exp.groups()[1].workload.n == 4 and exp.groups()[0].workload.n == 10


def test_one_device_keeps_the_experiments_seeds() -> None:
    """No groups declared: one device named 'device' with exactly the experiment's seeds, so
    the seed experiment replays what it did before groups existed."""
    from orchestrator.devices import build_streams
    from orchestrator.experiment import device_seeds
    from orchestrator.workload import generate_workload

    exp = parse_experiment({"workload": {"n": 20}, "seeds": 3})
    (stream,) = build_streams(exp)
    before = generate_workload(exp.workload, exp.seeds)
    assert [(r.id, r.kind, r.deadline_ms, r.image_index) for r in stream.requests] == \
        [(r.id, r.kind, r.deadline_ms, r.image_index) for r in before]
    assert stream.device == "device" and stream.schedule is None
    assert device_seeds(exp.seeds, 0) == exp.seeds and device_seeds(exp.seeds, 1) != exp.seeds


def test_device_group_bad_input_names_the_key() -> None:
    doc = cells_doc()
    doc["devices"]["cam"]["count"] = 0
    assert problems_of(doc) == ["devices.cam.count: must be within 1..100000, got 0"]
    assert problems_of(cells_doc(max_devices=4)) == [
        "devices: 5 devices (cam: 3, tag: 2) exceed max_devices (4); lower a count or raise "
        "max_devices (at most 100000)"]
    doc = cells_doc()
    doc["devices"]["cam"]["class"] = "tpu"
    assert problems_of(doc) == [
        "devices.cam.class: must be one of ['mcu', 'edge', 'cloud', 'gpu', 'npu'], got 'tpu'"]
    doc = cells_doc()
    doc["devices"]["cloud"] = {"count": 1}
    assert problems_of(doc)[0].startswith("devices.cloud: 'cloud' is also a node")
    doc = cells_doc()
    doc["devices"]["cam"]["attach"] = "cloud"
    assert problems_of(doc) == ["devices.cam.attach: no link from cam to cloud (declare one "
                                "under links with src: cam, dst: cloud)"]
    doc = cells_doc()
    doc["links"]["back"] = {"src": "edge-1", "dst": "cam"}
    assert any(p.startswith("links.back: dst must be a node; 'cam' is a device group")
               for p in problems_of(doc))
    doc = cells_doc()
    doc["devices"]["lost"] = {"count": 2}
    assert problems_of(doc) == [
        "devices.lost: its devices reach no node: no link starts at 'lost' and every node is "
        "reached through links from other groups; add a link with src: lost"]


def test_a_group_without_a_path_to_a_serving_node_is_named() -> None:
    doc = cells_doc()
    doc["tiers"]["mcu-1"] = {"class": "mcu"}
    doc["links"]["cam-mcu"] = {"src": "cam", "dst": "mcu-1"}
    doc["policies"] = ["always_local"]
    # cam reaches the mcu, tag does not: the error names the group and what it reaches
    assert problems_of(doc) == [
        "policies[0] (always_local) for devices.tag: route @mcu/tinycnn: no node of class mcu "
        "serves tinycnn (nodes: edge-2 (edge), cloud (cloud))"]


def test_gpu_batch_of_zero_is_refused() -> None:
    doc = cells_doc()
    doc["tiers"]["gpu-1"] = {"class": "gpu", "models": {"fp32": {"batching": {"max_batch": 0}}}}
    assert problems_of(doc) == ["tiers.gpu-1.models.fp32.batching.max_batch: must be within "
                                "1..1024, got 0"]


def test_a_cycle_in_a_declared_path_is_refused() -> None:
    doc = cells_doc()
    doc["links"]["loop"] = {"src": "cloud", "dst": "edge-1", "rtt_range_ms": [1, 1]}
    doc["paths"] = {"edge-1": ["cam-up", "bh-1", "loop"]}
    assert problems_of(doc) == ["paths.edge-1[2]: link loop returns to 'edge-1': a path may "
                                "not visit a node twice (cycle)"]
