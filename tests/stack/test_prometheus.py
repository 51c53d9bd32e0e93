"""A real Prometheus scrapes tiers, links and orchestrator in a run; totals equal records.csv."""

from __future__ import annotations

import json
import time

import httpx
import pytest
from stack_testutil import processes_mentioning, quick_experiment

from orchestrator.experiment import load_experiment
from orchestrator.records import read_records
from orchestrator.stack import manager
from orchestrator.stack import prometheus as prom
from orchestrator.stack.demo import run_on_stack

pytestmark = pytest.mark.slow
SCRAPE_INTERVAL_S = 1.0


def promql(url: str, query: str, at_unix: float | None = None) -> list[dict]:
    """Instant query (at ``at_unix`` if given: the orchestrator's metrics server is stopped
    after the run, so its final values are read at the time of its final scrape)."""
    params = {"query": query}
    if at_unix is not None:
        params["time"] = f"{at_unix:.3f}"
    r = httpx.get(f"{url}/api/v1/query", params=params, timeout=10, trust_env=False)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


def by_label(result: list[dict], label: str) -> dict[str, float]:
    return {s["metric"].get(label, ""): float(s["value"][1]) for s in result}


@pytest.fixture(scope="module")
def prometheus_run(tmp_path_factory: pytest.TempPathFactory):
    if prom.find_binary() is None:
        pytest.skip("no `prometheus` binary on PATH (apt-get install prometheus; CI installs it)")
    tmp = tmp_path_factory.mktemp("prom")
    state_dir = tmp / "state"
    exp = load_experiment(quick_experiment(tmp, n=30))
    state = manager.up(exp, state_dir, prometheus="on", scrape_interval_s=SCRAPE_INTERVAL_S)
    try:
        t_start = time.time()
        result, scraped = run_on_stack(
            exp, state, tmp / "run", progress=False, plots=False, log=print
        )
        t_end = time.time()
        # the tiers' final counters must be scraped too (the orchestrator's were waited for)
        for job in ("edgebed-tiers", "edgebed-links"):
            manager.wait_for_scrape(
                state.prometheus_url, job, t_end, instances=manager.scrape_instances(state, job)
            )
        yield state, result, scraped, (t_start, t_end)
    finally:
        manager.down(state_dir)
        left = processes_mentioning(str(state_dir))
        assert not left, left


def test_every_target_is_scraped(prometheus_run) -> None:
    state, _, scraped, _ = prometheus_run
    up = promql(state.prometheus_url, "up", scraped)
    jobs = {(s["metric"]["job"], s["metric"].get("tier", "")): s["value"][1] for s in up}
    assert jobs == {
        ("edgebed-tiers", "mcu"): "1",
        ("edgebed-tiers", "edge"): "1",
        ("edgebed-tiers", "cloud"): "1",
        ("edgebed-links", ""): "1",
        ("edgebed-orchestrator", ""): "1",
    }, jobs


def test_orchestrator_metrics_were_scraped_after_the_run(prometheus_run) -> None:
    _, _, scraped, (_, t_end) = prometheus_run
    assert scraped is not None, "run_on_stack did not wait for a final scrape"
    assert scraped >= t_end - 2 * SCRAPE_INTERVAL_S


def test_totals_agree_with_records_csv(prometheus_run) -> None:
    state, result, scraped, _ = prometheus_run
    records = read_records(result.run_dir / "records.csv")
    assert len(records) == 30 * 6
    url = state.prometheus_url

    requests = by_label(
        promql(url, "sum by (policy) (edgebed_orchestrator_requests_total)", scraped), "policy"
    )
    expect_requests = records.groupby("policy").size().astype(float).to_dict()
    assert requests == expect_requests, f"prometheus {requests} vs records {expect_requests}"

    met = by_label(
        promql(url, "sum by (policy) (edgebed_orchestrator_deadline_met_total)", scraped), "policy"
    )
    expect_met = records.groupby("policy").deadline_met.sum().astype(float).to_dict()
    assert met == expect_met, f"prometheus {met} vs records {expect_met}"
    assert sum(expect_met.values()) > 0, "no deadline met at all: the check would be vacuous"

    energy_j = by_label(
        promql(url, 'sum by (policy) (edgebed_orchestrator_energy_joules_total{scope="device"})',
               scraped), "policy"
    )
    expect_j = (records.device_energy_mj.clip(lower=0).groupby(records.policy).sum() / 1e3).to_dict()
    assert set(energy_j) == set(expect_j)
    for policy, joules in expect_j.items():
        assert joules > 0, policy
        rel = abs(energy_j[policy] - joules) / joules
        assert rel <= 1e-6, f"{policy}: prometheus {energy_j[policy]!r} J vs records {joules!r} J"


def test_tier_request_counters_agree_with_attempts(prometheus_run) -> None:
    """Every attempt in records.csv that reached a tier was counted by that tier's /metrics."""
    state, result, _, _ = prometheus_run
    records = read_records(result.run_dir / "records.csv")
    expect: dict[str, float] = {}
    for raw in records.attempts_json:
        for attempt in json.loads(raw):
            tier = attempt["route"].split("/")[0].lower()
            expect[tier] = expect.get(tier, 0.0) + 1
    got = by_label(promql(state.prometheus_url, "sum by (tier) (edgebed_requests_total)"), "tier")
    assert got == expect, f"tiers counted {got}, records hold attempts {expect}"


def test_link_proxy_carried_the_traffic(prometheus_run) -> None:
    state, *_ = prometheus_run
    conns = by_label(
        promql(state.prometheus_url, "sum by (link) (edgebed_link_connections_total)"), "link"
    )
    for link in ("device-mcu", "device-edge", "device-cloud"):
        assert conns.get(link, 0) >= 1, conns
