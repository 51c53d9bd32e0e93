"""Static checks of the compose stack: compose file, images' inputs, Prometheus and Grafana config.

No Docker engine needed (the end-to-end run is test_compose_e2e.py).
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
COMPOSE = REPO / "docker-compose.yml"


def load_module(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


entry = load_module(REPO / "docker" / "compose_entrypoint.py", "compose_entrypoint")
dashboard = load_module(REPO / "observability" / "grafana" / "build_dashboard.py",
                        "build_dashboard")


def compose_doc() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


# ---- compose file --------------------------------------------------------------------------


def test_compose_file_matches_compose_specification_schema() -> None:
    schema = json.loads((HERE / "compose-spec.schema.json").read_text())
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(compose_doc())]
    assert errors == []


def test_schema_rejects_a_misspelt_key() -> None:
    """The validator really checks: a typo in a service key is reported."""
    schema = json.loads((HERE / "compose-spec.schema.json").read_text())
    doc = compose_doc()
    doc["services"]["mcu"]["cpu"] = 1
    errors = list(jsonschema.Draft7Validator(schema).iter_errors(doc))
    assert any("cpu" in e.message for e in errors), [e.message for e in errors]


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose (Debian's 1.29) not installed: apt-get install "
                    "docker-compose")
def test_docker_compose_1_29_accepts_the_file() -> None:
    res = subprocess.run(["docker-compose", "--profile", "grafana", "config"], cwd=REPO,
                         capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                         check=False)
    assert res.returncode == 0, res.stderr
    cfg = yaml.safe_load(res.stdout)
    assert set(cfg["services"]) == {"mcu", "edge", "cloud", "orchestrator", "prometheus",
                                    "grafana"}
    # slower tiers get less CPU
    cpus = {t: float(cfg["services"][t]["cpus"]) for t in ("mcu", "edge", "cloud")}
    assert cpus["mcu"] < cpus["edge"] < cpus["cloud"], cpus


def test_tiers_have_health_checks_on_readyz_and_loopback_ports() -> None:
    doc = compose_doc()
    for tier in ("mcu", "edge", "cloud"):
        svc = doc["services"][tier]
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
        assert svc["build"]["args"]["TIER"] == tier
        for port in svc["ports"]:
            assert port.startswith("127.0.0.1:"), port
    deps = doc["services"]["orchestrator"]["depends_on"]
    assert all(deps[t]["condition"] == "service_healthy" for t in ("mcu", "edge", "cloud"))


def test_grafana_is_in_a_profile_enabled_by_dotenv() -> None:
    assert compose_doc()["services"]["grafana"]["profiles"] == ["grafana"]
    env = dict(line.split("=", 1) for line in (REPO / ".env").read_text().splitlines()
               if line and not line.startswith("#"))
    assert env["COMPOSE_PROFILES"] == "grafana"


# ---- images --------------------------------------------------------------------------------


def _requirement_name(req: str) -> str:
    return re.split(r"[\[<>=!~;\s]", req, maxsplit=1)[0].lower()


def test_tier_requirements_are_a_subset_of_the_package_dependencies() -> None:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    by_name = {_requirement_name(d): d for d in deps}
    reqs = [line.strip() for line in (REPO / "docker" / "requirements-tier.txt").read_text()
            .splitlines() if line.strip() and not line.startswith("#")]
    for req in reqs:
        assert _requirement_name(req) in by_name, f"{req} is not a dependency in pyproject.toml"
        assert req == by_name[_requirement_name(req)], f"bounds differ: {req} vs pyproject"
    names = {_requirement_name(r) for r in reqs}
    assert not names & {"tensorflow", "tensorflow-cpu", "scipy", "pandas", "matplotlib"}


def test_tier_dockerfile_is_slim_and_non_root() -> None:
    text = (REPO / "docker" / "tier.Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.11-slim" in text
    assert re.search(r"^USER edgebed$", text, re.M)
    assert "HEALTHCHECK" in text and "/readyz" in text
    assert "certs/" in text  # CA drop-in


def test_dockerignore_keeps_engine_state_and_venvs_out_of_the_context() -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    for needed in (".edgebed", ".venv", ".git", "runs"):
        assert needed in lines


# ---- Prometheus and Grafana ----------------------------------------------------------------


@pytest.mark.skipif(shutil.which("promtool") is None,
                    reason="promtool not installed (apt-get install prometheus)")
def test_prometheus_compose_config_is_valid() -> None:
    res = subprocess.run(["promtool", "check", "config",
                          str(REPO / "observability" / "prometheus" / "compose.yml")],
                         capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr


def test_prometheus_scrapes_every_compose_service_that_serves_metrics() -> None:
    cfg = yaml.safe_load((REPO / "observability" / "prometheus" / "compose.yml").read_text())
    targets = {t for job in cfg["scrape_configs"] for sc in job["static_configs"]
               for t in sc["targets"]}
    assert targets == {"mcu:8000", "edge:8000", "cloud:8000", "orchestrator:9100",
                       "orchestrator:9101"}
    jobs = {job["job_name"] for job in cfg["scrape_configs"]}
    assert jobs == {"edgebed-tiers", "edgebed-links", "edgebed-orchestrator"}


def test_dashboard_json_is_generated_from_build_dashboard() -> None:
    assert dashboard.main(["--check"]) == 0


def test_dashboard_panels_cover_the_issue_and_use_the_provisioned_datasource() -> None:
    board = json.loads((REPO / "observability" / "grafana" / "dashboards" /
                        "edgebed.json").read_text())
    ds = yaml.safe_load((REPO / "observability" / "grafana" / "provisioning" / "datasources" /
                         "prometheus.yml").read_text())["datasources"][0]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    titles = " | ".join(p["title"].lower() for p in panels)
    for topic in ("accuracy", "deadline", "energy", "percentile", "route mix", "queue depth",
                  "load", "fidelity"):
        assert topic in titles, f"no panel about {topic!r}: {titles}"
    for p in panels:
        assert p["datasource"]["uid"] == ds["uid"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
    variables = {v["name"] for v in board["templating"]["list"]}
    assert variables == {"run", "policy"}


# ---- orchestrator container logic (pure parts) ---------------------------------------------


class FakeRun:
    """Records tc argv lists and answers like tc would."""

    def __init__(self, returncode: int, stderr: str = "") -> None:
        self.returncode, self.stderr = returncode, stderr
        self.calls: list[list[str]] = []

    def __call__(self, argv: list[str]) -> subprocess.CompletedProcess:
        self.calls.append(argv)
        rc = self.returncode if argv[2] == "add" else 0
        return subprocess.CompletedProcess(argv, rc, "", self.stderr if rc else "")


@pytest.fixture
def with_tc(monkeypatch: pytest.MonkeyPatch) -> None:
    """A root process with tc/ip installed (what the orchestrator container is)."""
    monkeypatch.setattr(entry.shutil, "which", lambda name: f"/sbin/{name}")
    monkeypatch.setattr(entry.os, "geteuid", lambda: 0)


def test_auto_backend_uses_tc_netem_when_the_kernel_has_it(with_tc: None) -> None:
    run = FakeRun(0)
    choice = entry.choose_backend("auto", run)
    assert choice["backend"] == "tc", choice["reason"]
    assert run.calls == list(entry.netem_probe_argvs())  # added, then removed again


def test_auto_backend_falls_back_to_the_proxy_without_netem(with_tc: None) -> None:
    run = FakeRun(2, "Error: Specified qdisc kind is unknown.")
    choice = entry.choose_backend("auto", run)
    assert choice["backend"] == "proxy"
    assert "sch_netem" in choice["reason"] and "qdisc kind is unknown" in choice["reason"]
    assert run.calls == [entry.netem_probe_argvs()[0]]  # nothing to remove


def test_auto_backend_reports_a_missing_capability(with_tc: None) -> None:
    choice = entry.choose_backend("auto", FakeRun(2, "RTNETLINK answers: Operation not permitted"))
    assert choice["backend"] == "proxy" and "Operation not permitted" in choice["reason"]


def test_tc_backend_requested_but_unavailable_is_an_error(with_tc: None) -> None:
    with pytest.raises(RuntimeError, match="tc requested but unusable"):
        entry.choose_backend("tc", FakeRun(2, "Error: Specified qdisc kind is unknown."))


def test_backend_none_and_proxy_need_no_probe(with_tc: None) -> None:
    run = FakeRun(0)
    assert entry.choose_backend("none", run)["backend"] == "none"
    assert entry.choose_backend("proxy", run)["backend"] == "proxy"


def test_settings_from_env_name_the_bad_key() -> None:
    with pytest.raises(ValueError, match="EDGEBED_LINK_BACKEND must be one of"):
        entry.Settings.from_env({"EDGEBED_LINK_BACKEND": "netem"})
    with pytest.raises(ValueError, match="EDGEBED_N must be an integer >= 1, got 0"):
        entry.Settings.from_env({"EDGEBED_N": "0"})
    s = entry.Settings.from_env({"EDGEBED_N": "7", "EDGEBED_EXIT_AFTER_RUN": "1",
                                 "EDGEBED_PROMETHEUS_URL": ""})
    assert (s.n, s.exit_after_run, s.prometheus_url) == (7, True, None)


def test_proxy_topology_is_a_valid_netem_topology() -> None:
    from netem.spec import Topology
    from orchestrator.experiment import load_experiment

    exp = load_experiment(REPO / "experiments" / "seed.yaml")
    tiers = {"mcu": "http://mcu:8000", "edge": "http://edge:8000", "cloud": "http://cloud:8000"}
    links = entry.device_links(exp, tiers)
    doc = entry.proxy_topology(links, tiers, 9111, 9101, seed=5)
    topo = Topology.model_validate(doc)
    assert {name: (s.listen, s.target) for name, s in topo.links.items()} == {
        "device-cloud": ("127.0.0.1:9111", "cloud:8000"),
        "device-edge": ("127.0.0.1:9112", "edge:8000"),
        "device-mcu": ("127.0.0.1:9113", "mcu:8000"),
    }
    assert doc["control"] == "0.0.0.0:9101"


def test_tc_shaping_failure_is_reported_and_leaves_the_interface_clean(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """netem present but e.g. no ifb device: start_links raises TcApplyError after clearing."""
    from netem import tc
    from orchestrator.experiment import load_experiment

    cleared: list[str] = []

    def failing_apply(*args: object, **kwargs: object) -> None:
        raise RuntimeError("ip link add ifb-eth0 type ifb failed (2): Operation not supported")

    monkeypatch.setattr(tc, "apply", failing_apply)
    monkeypatch.setattr(tc, "clear", lambda dev, **kw: cleared.append(dev))
    monkeypatch.setattr(entry.socket, "gethostbyname", lambda host: "172.30.0.9")
    exp = load_experiment(REPO / "experiments" / "seed.yaml")
    tiers = {"mcu": "http://mcu:8000", "edge": "http://edge:8000", "cloud": "http://cloud:8000"}
    with pytest.raises(entry.TcApplyError, match="Operation not supported"):
        entry.start_links(entry.Settings(), exp, tiers, "tc", "test", REPO / "unused")
    assert cleared == ["eth0"]


def test_multi_hop_paths_are_refused_with_the_reason() -> None:
    """The compose entrypoint forwards over one link per node; a hierarchy must not silently
    reach its far nodes directly."""
    from orchestrator.experiment import load_experiment

    exp = load_experiment(REPO / "experiments" / "hierarchical.yaml")
    tiers = {n: f"http://{n}:8000" for n in exp.tiers}
    with pytest.raises(ValueError, match=r"cloud is 3 hops away \(device-edge-1 → edge-1-regional"):
        entry.device_links(exp, tiers)
