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
    # the .env settings reach the file: ports, experiment default
    assert cfg["services"]["edge"]["ports"] == ["127.0.0.1:8102:8000/tcp"]
    assert cfg["services"]["edge"]["command"][6] == "experiments/seed.yaml"


@pytest.mark.skipif(shutil.which("docker-compose") is None,
                    reason="docker-compose (Debian's 1.29) not installed: apt-get install "
                    "docker-compose")
def test_docker_compose_1_29_merges_the_tc_overlay() -> None:
    res = subprocess.run(["docker-compose", "-f", "docker-compose.yml", "-f",
                          "docker-compose.tc.yml", "config"], cwd=REPO, capture_output=True,
                         text=True, env={"PATH": "/usr/bin:/bin"}, check=False)
    assert res.returncode == 0, res.stderr
    orch = yaml.safe_load(res.stdout)["services"]["orchestrator"]
    assert "NET_ADMIN" in orch["cap_add"] and orch["cap_drop"] == ["ALL"]
    assert orch["environment"]["EDGEBED_LINK_BACKEND"] == "tc"


def test_tiers_have_health_checks_on_readyz_and_loopback_ports() -> None:
    doc = compose_doc()
    for tier in ("mcu", "edge", "cloud"):
        svc = doc["services"][tier]
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
        cmd = svc["command"]
        assert cmd[cmd.index("--tier") + 1] == tier
        assert cmd[cmd.index("--experiment") + 1] == "${EDGEBED_EXPERIMENT:-experiments/seed.yaml}"
        for port in svc["ports"]:
            assert port.startswith("127.0.0.1:"), port
    for port in doc["services"]["orchestrator"]["ports"] + doc["services"]["prometheus"]["ports"]:
        assert port.startswith("127.0.0.1:"), port
    deps = doc["services"]["orchestrator"]["depends_on"]
    assert all(deps[t]["condition"] == "service_healthy" for t in ("mcu", "edge", "cloud"))


def test_orchestrator_keeps_least_privilege_and_the_tc_overlay_adds_only_net_admin() -> None:
    orch = compose_doc()["services"]["orchestrator"]
    assert orch["cap_drop"] == ["ALL"]
    assert orch["cap_add"] == ["CHOWN", "DAC_OVERRIDE", "FOWNER"]
    assert orch["security_opt"] == ["no-new-privileges:true"] and orch["read_only"] is True
    assert orch["environment"]["EDGEBED_TARGETS"] == (
        "${EDGEBED_TARGETS:-mcu=http://mcu:8000,edge=http://edge:8000,cloud=http://cloud:8000}")
    overlay = yaml.safe_load((REPO / "docker-compose.tc.yml").read_text())
    tc = overlay["services"]["orchestrator"]
    assert set(tc["cap_add"]) - set(orch["cap_add"]) == {"NET_ADMIN"}
    assert tc["environment"] == {"EDGEBED_LINK_BACKEND": "tc"}


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
    """The tiers by DNS discovery of the alias every rendered node carries (any topology), the
    links and the orchestrator at their fixed addresses."""
    from orchestrator.stack.render import TIER_ALIAS, TIER_PORT

    cfg = yaml.safe_load((REPO / "observability" / "prometheus" / "compose.yml").read_text())
    jobs = {job["job_name"]: job for job in cfg["scrape_configs"]}
    assert set(jobs) == {"edgebed-tiers", "edgebed-links", "edgebed-orchestrator"}
    assert jobs["edgebed-tiers"]["dns_sd_configs"] == [
        {"names": [TIER_ALIAS], "type": "A", "port": TIER_PORT, "refresh_interval": "5s"}]
    targets = {t for job in cfg["scrape_configs"] for sc in job.get("static_configs", [])
               for t in sc["targets"]}
    assert targets == {"orchestrator:9100", "orchestrator:9101"}
    services = compose_doc()["services"]
    nodes = [n for n, svc in services.items() if "org.edgebed.node" in svc.get("labels", {})]
    assert nodes == ["mcu", "edge", "cloud"]
    for n in nodes:
        assert services[n]["networks"]["default"]["aliases"] == [TIER_ALIAS]


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


# ---- the orchestrator container's topology: the rendered nodes, tc or the proxy's plan ------


def _exp(name: str):
    from orchestrator.experiment import load_experiment

    return load_experiment(REPO / "experiments" / name)


def test_targets_default_to_the_experiment_nodes_and_must_cover_them() -> None:
    from orchestrator.stack.compose import compose_targets

    exp = _exp("hierarchical.yaml")
    assert compose_targets(exp, None) == {n: f"http://{n}:8000" for n in exp.tiers}
    seed_targets = "mcu=http://mcu:8000,edge=http://edge:8000,cloud=http://cloud:8000"
    with pytest.raises(ValueError, match=r"EDGEBED_TARGETS: .*NODE in mcu/edge-1/regional/cloud"
                       r".*edgebed compose render --config"):
        compose_targets(exp, seed_targets)  # a compose file rendered for seed.yaml
    with pytest.raises(ValueError, match=r"no URL for node\(s\) edge-1, regional of"):
        compose_targets(exp, "mcu=http://mcu:8000,cloud=http://cloud:8000")


def test_tc_serves_one_hop_links_and_multi_hop_paths_fall_back_to_the_proxy() -> None:
    from orchestrator.stack.compose import one_hop_links, resolve_backend

    tc_ok = {"backend": "tc", "reason": "kernel has sch_netem"}
    seed, hier = _exp("seed.yaml"), _exp("hierarchical.yaml")
    seed_urls = {n: f"http://{n}:8000" for n in seed.tiers}
    hier_urls = {n: f"http://{n}:8000" for n in hier.tiers}
    assert resolve_backend("auto", tc_ok, seed, seed_urls) == ("tc", "kernel has sch_netem")
    assert {k: v[0] for k, v in one_hop_links(seed, seed_urls).items()} == {
        "device-mcu": "mcu", "device-edge": "edge", "device-cloud": "cloud"}
    backend, reason = resolve_backend("auto", tc_ok, hier, hier_urls)
    assert backend == "proxy"
    assert ("cloud is 3 hops away from device (device-edge-1 → edge-1-regional → "
            "regional-cloud)") in reason
    assert "regional is 2 hops away" in reason and reason.startswith("kernel has sch_netem; but")
    with pytest.raises(ValueError, match=r"EDGEBED_LINK_BACKEND=tc: tc netem .* cannot chain"):
        resolve_backend("tc", tc_ok, hier, hier_urls)
    proxy = {"backend": "proxy", "reason": "no sch_netem"}
    assert resolve_backend("auto", proxy, hier, hier_urls) == ("proxy", "no sch_netem")
    # device groups: their requests all leave this container, tc cannot tell them apart
    cells = _exp("multi-edge.yaml")
    cell_urls = {n: f"http://{n}:8000" for n in cells.tiers}
    backend, reason = resolve_backend("auto", tc_ok, cells, cell_urls)
    assert backend == "proxy"
    assert "cannot tell device groups apart (cell-1, cell-2, cell-3 have links)" in reason


def test_tc_applies_one_class_per_node_address(monkeypatch: pytest.MonkeyPatch) -> None:
    from netem import tc

    applied: list[tuple] = []
    monkeypatch.setattr(tc, "apply", lambda links, dev, peer_ips: applied.append(
        (sorted(links), dev, peer_ips)))
    addresses = {"mcu": "172.30.0.2", "edge": "172.30.0.3", "cloud": "172.30.0.4"}
    monkeypatch.setattr(entry.socket, "gethostbyname", addresses.__getitem__)
    exp = _exp("seed.yaml")
    tiers = {n: f"http://{n}:8000" for n in exp.tiers}
    links = entry.start_links(entry.Settings(), exp, tiers, "tc", "test", REPO / "unused")
    assert applied == [(["device-cloud", "device-edge", "device-mcu"], "eth0",
                        {"device-mcu": "172.30.0.2", "device-edge": "172.30.0.3",
                         "device-cloud": "172.30.0.4"})]
    assert links.targets == tiers  # tc shapes the interface: requests go to the nodes directly


def _free_block(n: int) -> int:
    import socket

    for base in range(23100, 60000, 97):
        try:
            socks = []
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("0.0.0.0", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def test_proxy_plan_chains_multi_hop_paths_with_the_local_stacks_plan(tmp_path: Path) -> None:
    """A real link proxy started as the container does, for experiments/hierarchical.yaml: the
    device's one-hop nodes get their link's listener, regional and the cloud a chained path."""
    exp = _exp("hierarchical.yaml")
    base = _free_block(10)
    settings = entry.Settings(links_control_port=base, links_first_port=base + 1)
    tiers = {n: f"http://{n}:8000" for n in exp.tiers}
    links = entry.start_links(settings, exp, tiers, "proxy", "test", tmp_path)
    try:
        assert links.targets == {"mcu": f"http://127.0.0.1:{base + 1}",
                                 "edge-1": f"http://127.0.0.1:{base + 2}",
                                 "regional": f"http://127.0.0.1:{base + 3}",
                                 "cloud": f"http://127.0.0.1:{base + 4}"}
        control = links.state.link_control_urls["links"]
        assert control == f"http://127.0.0.1:{base}"
        import httpx

        paths = httpx.get(f"{control}/v1/paths", timeout=5, trust_env=False).json()
        text = json.dumps(paths)
        assert "path-cloud" in text and "path-regional" in text, paths
        doc = yaml.safe_load((tmp_path / "links.yaml").read_text())
        assert doc["paths"]["path-cloud"]["hops"] == ["device-edge-1", "edge-1-regional",
                                                      "regional-cloud"]
        assert doc["paths"]["path-cloud"]["target"] == "cloud:8000"
        assert doc["control"] == f"0.0.0.0:{base}"
        assert (tmp_path / "link-token").stat().st_mode & 0o777 == 0o600
        assert "path-cloud" in links.laws
    finally:
        links.close()
    assert links.proc is not None and links.proc.poll() is not None
