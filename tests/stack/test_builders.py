"""Pure builders of the local stack: Prometheus config and argv, link plan, tier command line."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from orchestrator.experiment import load_experiment
from orchestrator.stack import links as stack_links
from orchestrator.stack import prometheus as prom
from orchestrator.stack import tiers as stack_tiers
from orchestrator.stack.manager import prometheus_jobs, scrape_instances
from orchestrator.stack.state import StackState

REPO = Path(__file__).resolve().parents[2]
SEED = REPO / "experiments" / "seed.yaml"


def test_prometheus_config_scrapes_every_job_with_labels() -> None:
    jobs = [
        prom.ScrapeJob("edgebed-tiers", (prom.ScrapeTarget("127.0.0.1:9001", {"tier": "mcu"}),)),
        prom.ScrapeJob("edgebed-orchestrator", (prom.ScrapeTarget("127.0.0.1:9009"),)),
    ]
    cfg = yaml.safe_load(prom.dump_config(prom.build_config(jobs, scrape_interval_s=1.0)))
    assert cfg["global"]["scrape_interval"] == "1s"
    assert cfg["global"]["scrape_timeout"] == "1s"
    by_job = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert by_job["edgebed-tiers"]["static_configs"] == [
        {"targets": ["127.0.0.1:9001"], "labels": {"tier": "mcu"}}
    ]
    assert by_job["edgebed-orchestrator"]["static_configs"] == [{"targets": ["127.0.0.1:9009"]}]
    assert prom.build_config(jobs, 0.25)["global"]["scrape_interval"] == "250ms"
    with pytest.raises(ValueError, match="scrape_interval_s must be > 0"):
        prom.build_config(jobs, 0)


def test_prometheus_argv_has_its_own_data_dir_and_loopback_listen() -> None:
    argv = prom.build_argv("prometheus", Path("/s/p.yml"), Path("/s/data"), "127.0.0.1:9090")
    assert argv[0] == "prometheus"
    assert "--config.file=/s/p.yml" in argv
    assert "--storage.tsdb.path=/s/data" in argv
    assert "--web.listen-address=127.0.0.1:9090" in argv


def test_stack_jobs_cover_tiers_links_and_orchestrator() -> None:
    state = StackState(
        state_dir="/x",
        tier_urls={"mcu": "http://127.0.0.1:1", "edge": "http://127.0.0.1:2"},
        link_control_urls={"links": "http://127.0.0.1:3"},
        orchestrator_metrics_port=4,
    )
    jobs = {j.job_name: j for j in prometheus_jobs(state)}
    assert [(t.address, t.labels) for t in jobs["edgebed-tiers"].targets] == [
        ("127.0.0.1:1", {"tier": "mcu"}),
        ("127.0.0.1:2", {"tier": "edge"}),
    ]
    assert scrape_instances(state, "edgebed-links") == ["127.0.0.1:3"]
    assert scrape_instances(state, "edgebed-orchestrator") == ["127.0.0.1:4"]


def test_link_plan_puts_a_proxy_in_front_of_every_tier() -> None:
    exp = load_experiment(SEED)
    tier_urls = {t: f"http://127.0.0.1:{8100 + i}" for i, t in enumerate(exp.tiers)}
    plan = stack_links.plan_links(exp, tier_urls, "proxy", [9001, 9002, 9003, 9004])
    assert plan.backend == "proxy"
    assert plan.control == "127.0.0.1:9004"
    assert {pl.name: (pl.spec.listen, pl.spec.target) for pl in plan.links} == {
        "device-mcu": ("127.0.0.1:9001", "127.0.0.1:8100"),
        "device-edge": ("127.0.0.1:9002", "127.0.0.1:8101"),
        "device-cloud": ("127.0.0.1:9003", "127.0.0.1:8102"),
    }
    assert plan.targets(tier_urls) == {
        "mcu": "http://127.0.0.1:9001",
        "edge": "http://127.0.0.1:9002",
        "cloud": "http://127.0.0.1:9003",
    }
    # the proxy's topology file reproduces each link's law exactly
    from netem.spec import Topology

    doc = plan.topology_document(seed=5)
    topo = Topology.model_validate(doc)
    assert topo.seed == 5 and topo.control == "127.0.0.1:9004"
    for name, spec in exp.links.items():
        assert topo.links[name].up == spec.up and topo.links[name].down == spec.down


@pytest.mark.parametrize("backend", ["auto", "tc"])
def test_kernel_backends_fall_back_to_the_proxy_with_a_reason(backend: str) -> None:
    exp = load_experiment(SEED)
    plan = stack_links.plan_links(exp, {t: "http://127.0.0.1:1" for t in exp.tiers}, backend,
                                  [2, 3, 4, 5])
    assert plan.backend == "proxy"
    assert f"link_backend {backend} asked" in plan.reason and "compose" in plan.reason


def test_no_links_means_direct_targets() -> None:
    exp = load_experiment(SEED)
    urls = {t: f"http://127.0.0.1:{i}" for i, t in enumerate(exp.tiers)}
    plan = stack_links.plan_links(exp, urls, "none", [1, 2, 3, 4])
    assert plan.backend == "none" and not plan.links
    assert plan.targets(urls) == urls


def test_tier_config_file_keeps_the_sections_removals(tmp_path: Path) -> None:
    exp = load_experiment(REPO / "experiments" / "poisson-queueing.yaml")
    path = stack_tiers.write_tier_config(exp, "mcu", tmp_path)
    written = yaml.safe_load(path.read_text())
    assert written["tier"] == "mcu"
    assert written["lm"] == {"slm": None}, "a null must reach the tier to remove the built-in slm"
    from services.tier.config import load_tier_config

    cfg = load_tier_config("mcu", path, use_env=False)
    assert cfg.served_models == exp.tiers["mcu"].served_models == ["tinycnn", "int8"]
    argv = stack_tiers.tier_argv("python3", "mcu", path, 8123)
    assert argv[:4] == ["python3", "-m", "services.tier", "--tier"]
    assert argv[argv.index("--config") + 1] == str(path)
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert argv[argv.index("--port") + 1] == "8123"
