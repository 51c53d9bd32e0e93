"""``edgebed compose render``: a compose file for any experiment topology (no engine needed).

The committed docker-compose.yml is the render of experiments/seed.yaml, byte for byte; other
topologies (the hierarchy, two edges, three cells with a GPU, a synthetic one with a GPU and an
NPU node) render to files
the Compose Specification schema and Debian's docker-compose 1.29 accept, with one service per
node whose command line gives the node exactly the config the local stack (``edgebed up``) gives
it.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from orchestrator.cli import main as edgebed
from orchestrator.experiment import Experiment, load_experiment
from orchestrator.stack import tiers as stack_tiers
from orchestrator.stack.render import (
    TIER_ALIAS,
    RenderError,
    render_compose,
    render_text,
)
from services.tier import cli as tier_cli
from services.tier.classes import node_class
from services.tier.config import TierConfigError, load_tier_config

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
SCHEMA = json.loads((HERE / "compose-spec.schema.json").read_text())
DEFAULT = re.compile(r"^\$\{EDGEBED_EXPERIMENT:-(?P<path>[^}]+)\}$")

# Every class but the default three, a node reached over two hops, a node behind an NPU-only
# path, a null removal in a section (edge-2 serves no int8): what a compose file must carry.
SYNTHETIC = """\
name: synthetic
seeds: 3
tiers:
  mcu: {}
  edge-2: {class: edge, concurrency: 3, models: {int8: null}}
  gpu-1: {class: gpu, queue_limit: 40}
  npu_1: {class: npu}
links:
  device-mcu: {src: device, dst: mcu, rtt_range_ms: [0, 0]}
  device-edge-2: {src: device, dst: edge-2, rtt_range_ms: [2, 4]}
  edge-2-gpu-1: {src: edge-2, dst: gpu-1, rtt_range_ms: [10, 20]}
  device-npu_1: {src: device, dst: npu_1, rtt_range_ms: [1, 3]}
workload: {n: 5, lm_ratio: 0}
policies: [nearest, least_loaded]
"""


def schema_errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(doc)]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory holding the synthetic experiment under experiments/."""
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "synthetic.yaml").write_text(SYNTHETIC)
    return tmp_path


def test_committed_compose_file_is_the_render_of_the_seed_experiment() -> None:
    exp = load_experiment(REPO / "experiments" / "seed.yaml")
    want = render_text(exp, "experiments/seed.yaml")
    assert (REPO / "docker-compose.yml").read_text() == want, (
        "docker-compose.yml is not the render of experiments/seed.yaml: run "
        "`edgebed compose render --out docker-compose.yml`")


def test_cli_renders_to_stdout_and_to_a_file(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str],
                                             tmp_path: Path) -> None:
    monkeypatch.chdir(REPO)
    assert edgebed(["compose", "render"]) == 0  # default: experiments/seed.yaml, to stdout
    assert capsys.readouterr().out == (REPO / "docker-compose.yml").read_text()
    out = tmp_path / "hier.yml"
    assert edgebed(["compose", "render", "--config", "experiments/hierarchical.yaml",
                    "--out", str(out), "--project-dir", str(REPO)]) == 0
    err = capsys.readouterr().err
    assert "nodes mcu (mcu), edge-1 (edge), regional (edge), cloud (cloud)" in err
    exp = load_experiment(REPO / "experiments" / "hierarchical.yaml")
    assert out.read_text() == render_text(exp, "experiments/hierarchical.yaml")


def _experiments(project: Path) -> list[tuple[Experiment, Path, str]]:
    return [
        (load_experiment(REPO / "experiments" / "hierarchical.yaml"), REPO,
         "experiments/hierarchical.yaml"),
        (load_experiment(REPO / "experiments" / "two-edges.yaml"), REPO,
         "experiments/two-edges.yaml"),
        (load_experiment(REPO / "experiments" / "multi-edge.yaml"), REPO,
         "experiments/multi-edge.yaml"),
        (load_experiment(project / "experiments" / "synthetic.yaml"), project,
         "experiments/synthetic.yaml"),
    ]


def test_every_topology_renders_a_valid_file_with_one_service_per_node(project: Path) -> None:
    for exp, _, rel in _experiments(project):
        doc = render_compose(exp, rel)
        assert schema_errors(doc) == [], rel
        services = doc["services"]
        nodes = [n for n, s in services.items() if "org.edgebed.node" in s.get("labels", {})]
        assert nodes == list(exp.tiers), rel  # one service per node, named after it, in order
        assert set(services) == {*exp.tiers, "orchestrator", "prometheus", "grafana"}
        ports = []
        for i, (name, tier) in enumerate(exp.tiers.items()):
            svc = services[name]
            cls = str(tier.node_class)
            assert svc["labels"] == {"org.edgebed.node": name, "org.edgebed.class": cls}
            cmd = svc["command"]
            assert cmd[cmd.index("--tier") + 1] == name
            assert DEFAULT.match(cmd[cmd.index("--experiment") + 1])["path"] == rel
            assert svc["image"] == services[nodes[0]]["image"]  # one tier image for all nodes
            var = re.sub(r"[^A-Z0-9]", "_", name.upper())
            assert svc["ports"] == [f"127.0.0.1:${{EDGEBED_{var}_PORT:-{8101 + i}}}:8000"]
            assert svc["cpus"] == f"${{EDGEBED_{var}_CPUS:-{node_class(cls).cpus!r}}}"
            assert svc["networks"]["default"]["aliases"] == [TIER_ALIAS]
            assert "/readyz" in " ".join(svc["healthcheck"]["test"])
            ports += svc["ports"]
        assert len(set(ports)) == len(ports)
        orch = services["orchestrator"]
        assert {n: d["condition"] for n, d in orch["depends_on"].items() if n in exp.tiers} == \
            dict.fromkeys(exp.tiers, "service_healthy")
        targets = ",".join(f"{n}=http://{n}:8000" for n in exp.tiers)
        assert orch["environment"]["EDGEBED_TARGETS"] == f"${{EDGEBED_TARGETS:-{targets}}}"
        assert orch["environment"]["EDGEBED_EXPERIMENT"] == f"${{EDGEBED_EXPERIMENT:-{rel}}}"
        assert orch["cap_drop"] == ["ALL"] and "NET_ADMIN" not in orch["cap_add"]
        # the text is the document, with comments
        text = render_text(exp, rel)
        assert yaml.safe_load(text) == json.loads(json.dumps(doc))
        assert f"# node {nodes[-1]} (class " in text


def _serve_args(cmd: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    tier_cli.add_arguments(parser)
    assert cmd[:3] == ["python3", "-m", "services.tier"]
    return parser.parse_args(cmd[3:])


def test_each_node_gets_the_config_the_local_stack_gives_it(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The tier CLI with a rendered service's command line (in the project directory, as the
    container's working directory /app) builds the same config as ``edgebed up``'s tier
    process: the class defaults with the experiment's tiers.NAME section."""
    for exp, root, rel in _experiments(project):
        doc = render_compose(exp, rel)
        monkeypatch.chdir(root)
        for name in exp.tiers:
            cmd = [DEFAULT.sub(r"\g<path>", a) for a in doc["services"][name]["command"]]
            got = tier_cli.config_from_args(_serve_args(cmd))
            local = stack_tiers.write_tier_config(exp, name, tmp_path / exp.name)
            want = load_tier_config(name, local)
            assert got.model_dump() == want.model_dump(), (rel, name)
            assert got == exp.tiers[name], (rel, name)  # what the orchestrator predicts with
            assert got.tier == name and got.node_class == exp.tiers[name].node_class
    synthetic = load_experiment(project / "experiments" / "synthetic.yaml")
    assert "int8" not in synthetic.tiers["edge-2"].models  # the null removal reached the node
    assert synthetic.tiers["gpu-1"].queue_limit == 40


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose (Debian's 1.29) not installed: apt-get install "
                    "docker-compose")
def test_docker_compose_1_29_accepts_a_rendered_hierarchy(tmp_path: Path) -> None:
    exp = load_experiment(REPO / "experiments" / "hierarchical.yaml")
    out = tmp_path / "docker-compose.hierarchical.yml"
    out.write_text(render_text(exp, "experiments/hierarchical.yaml"))
    env = {"PATH": "/usr/bin:/bin", "EDGEBED_EDGE_1_PORT": "18200"}
    res = subprocess.run(["docker-compose", "--project-directory", str(REPO), "-f", str(out),
                          "-f", str(REPO / "docker-compose.tc.yml"), "config"],
                         capture_output=True, text=True, env=env, check=False)
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert cfg["services"]["edge-1"]["ports"] == ["127.0.0.1:18200:8000/tcp"]
    assert cfg["services"]["regional"]["ports"] == ["127.0.0.1:8103:8000/tcp"]
    assert cfg["services"]["regional"]["command"][6] == "experiments/hierarchical.yaml"
    assert cfg["services"]["orchestrator"]["environment"]["EDGEBED_TARGETS"] == (
        "mcu=http://mcu:8000,edge-1=http://edge-1:8000,regional=http://regional:8000,"
        "cloud=http://cloud:8000")
    assert "NET_ADMIN" in cfg["services"]["orchestrator"]["cap_add"]


# ---- bad input ---------------------------------------------------------------------------


def test_an_invalid_experiment_prints_its_problems_and_exits_non_zero(
        project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = project / "experiments" / "bad.yaml"
    bad.write_text("tiers:\n  edge-1: {class: tpu}\nlinks:\n"
                   "  a: {src: device, dst: edge-1, delay_ms: -5}\n")
    assert edgebed(["compose", "render", "--config", str(bad),
                    "--project-dir", str(project)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "edgebed compose render: invalid experiment" in captured.err
    assert "tiers.edge-1: class: must be one of mcu, edge, cloud, gpu, npu, got 'tpu'" \
        in captured.err
    assert "links.a.delay_ms: delay_ms must be within 0..60000, got -5" in captured.err
    missing = project / "experiments" / "nope.yaml"
    assert edgebed(["compose", "render", "--config", str(missing)]) == 2
    assert "file not found" in capsys.readouterr().err


def test_node_names_the_stack_uses_itself_are_refused(project: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    clash = project / "experiments" / "clash.yaml"
    clash.write_text("tiers:\n  prometheus: {class: edge}\n  edge_1: {class: edge}\n"
                     "  edge-1: {class: edge}\n  links: {class: mcu}\npolicies: [nearest]\n")
    assert edgebed(["compose", "render", "--config", str(clash),
                    "--project-dir", str(project)]) == 2
    err = capsys.readouterr().err
    assert "tiers.prometheus: the compose stack has its own 'prometheus'" in err
    assert "tiers.edge-1: its variables EDGEBED_EDGE_1_PORT/_CPUS are those of node edge_1" in err
    assert "tiers.links: its host port variable EDGEBED_LINKS_PORT is the stack's own" in err


def test_an_experiment_outside_the_projects_experiments_is_refused(
        project: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    outside = tmp_path / "elsewhere.yaml"
    outside.write_text(SYNTHETIC)
    assert edgebed(["compose", "render", "--config", str(outside),
                    "--project-dir", str(project)]) == 2
    assert "must lie under experiments/ of the project" in capsys.readouterr().err
    exp = load_experiment(outside)
    with pytest.raises(RenderError, match="must lie under experiments/"):
        render_compose(exp, "../elsewhere.yaml")


def test_the_tier_cli_names_a_node_its_experiment_does_not_declare(project: Path) -> None:
    path = str(project / "experiments" / "synthetic.yaml")
    args = _serve_args(["python3", "-m", "services.tier", "--tier", "edge", "--experiment", path])
    with pytest.raises(TierConfigError, match=r"tiers.edge: no such node \(declared: mcu, "
                       r"edge-2, gpu-1, npu_1\); a compose file serves the nodes of the "
                       r"experiment it was rendered from \(edgebed compose render"):
        tier_cli.config_from_args(args)
    args = _serve_args(["python3", "-m", "services.tier", "--tier", "mcu", "--experiment", path,
                        "--config", path])
    with pytest.raises(TierConfigError, match="--experiment and --config: give one of them"):
        tier_cli.config_from_args(args)
    args = _serve_args(["python3", "-m", "services.tier", "--tier", "mcu", "--experiment",
                        str(project / "missing.yaml")])
    with pytest.raises(TierConfigError, match=r"missing\.yaml: cannot read"):
        tier_cli.config_from_args(args)
    # an experiment without tiers: the default nodes with their class defaults
    plain = project / "experiments" / "plain.yaml"
    plain.write_text("name: plain\n")
    args = _serve_args(["python3", "-m", "services.tier", "--tier", "cloud", "--experiment",
                        str(plain)])
    assert tier_cli.config_from_args(args) == load_tier_config("cloud")
    args = _serve_args(["python3", "-m", "services.tier", "--tier", "edge-9", "--experiment",
                        str(plain)])
    with pytest.raises(TierConfigError, match="tiers: not declared, so the nodes are the "
                       "default ones"):
        tier_cli.config_from_args(args)
