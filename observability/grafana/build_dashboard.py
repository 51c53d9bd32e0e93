"""Generate the Grafana dashboard ``dashboards/edgebed.json`` from the panel list below.

    python observability/grafana/build_dashboard.py          # rewrite the JSON
    python observability/grafana/build_dashboard.py --check  # exit 1 if the JSON is stale

Panels read the metrics the tiers (``edgebed_*``), the link proxy (``edgebed_link_*``) and the
orchestrator (``edgebed_orchestrator_*``) export; ``$run`` and ``$policy`` are template
variables (the run comes from ``edgebed_orchestrator_run_info``). tests/compose evaluates every
query here against a real Prometheus after an end-to-end run and requires data for each.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "edgebed-prometheus"}
OUT = Path(__file__).resolve().parent / "dashboards" / "edgebed.json"

# Orchestrator series of the selected run(s): each orchestrator process serves one run at a time.
RUN = ' * on(instance) group_left() max by (instance) (edgebed_orchestrator_run_info{run=~"$run"})'
POL = 'policy=~"$policy"'


def orch(metric: str, extra: str = "") -> str:
    """``metric`` of the selected policies, restricted to the selected run."""
    sel = POL + (f", {extra}" if extra else "")
    return f"({metric}{{{sel}}}{RUN})"


def quantile(q: float) -> str:
    bucket = orch("edgebed_orchestrator_request_latency_seconds_bucket")
    return f"1000 * histogram_quantile({q}, sum by (policy, le) ({bucket}))"


# (title, panel type, unit, [(expr, legend)], description, instant?)
Panel = tuple[str, str, str, list[tuple[str, str]], str, bool]

POLICY_PANELS: list[Panel] = [
    (
        "Accuracy vs deadlines met, per policy",
        "bargauge", "percent",
        [
            ("100 * sum by (policy) " + orch("edgebed_orchestrator_correct_total")
             + " / sum by (policy) " + orch("edgebed_orchestrator_requests_total"),
             "{{policy}} accuracy"),
            ("100 * sum by (policy) " + orch("edgebed_orchestrator_deadline_met_total")
             + " / sum by (policy) " + orch("edgebed_orchestrator_requests_total"),
             "{{policy}} deadlines met"),
        ],
        "Share of requests answered correctly (real model outputs; LM quality is drawn) and "
        "share answered within their deadline, over the whole run.",
        True,
    ),
    (
        "Mean energy per request (emulated, mJ): device battery vs whole system",
        "bargauge", "none",
        [("1000 * sum by (policy) " + orch("edgebed_orchestrator_energy_joules_total",
                                            'scope="device"')
          + " / sum by (policy) " + orch("edgebed_orchestrator_requests_total"),
          "{{policy}} device"),
         ("1000 * sum by (policy) " + orch("edgebed_orchestrator_energy_joules_total",
                                           'scope="system"')
          + " / sum by (policy) " + orch("edgebed_orchestrator_requests_total"),
          "{{policy}} system")],
        "Device: what the device's battery pays (radio, its own compute). System: the device "
        "plus every tier the request touched. Both modelled, not measured.",
        True,
    ),
    (
        "Latency percentiles per policy (ms)",
        "bargauge", "ms",
        [(quantile(0.5), "{{policy}} p50"), (quantile(0.95), "{{policy}} p95"),
         (quantile(0.99), "{{policy}} p99")],
        "From intended send time to accepted answer, whole run (histogram buckets).",
        True,
    ),
    (
        "Route mix per policy (answered requests)",
        "bargauge", "none",
        [("sum by (policy, route) " + orch("edgebed_orchestrator_requests_total", 'outcome="ok"')
          + " > 0", "{{policy}} → {{route}}")],
        "Where each policy's answers finally came from (TIER/model).",
        True,
    ),
    (
        "Request outcomes per policy",
        "bargauge", "none",
        [("sum by (policy, outcome) " + orch("edgebed_orchestrator_requests_total"),
          "{{policy}} {{outcome}}")],
        "ok, or why a request got no answer (timeouts, refused, queue full).",
        True,
    ),
    (
        "Finished requests per second, per policy",
        "timeseries", "reqps",
        [("sum by (policy) (rate(edgebed_orchestrator_requests_total{" + POL
          + "}[$__rate_interval])" + RUN + ")", "{{policy}}")],
        "Replay progress over time.",
        False,
    ),
]

TIER_PANELS: list[Panel] = [
    (
        "Tier queue depth",
        "timeseries", "none",
        [("max by (tier) (edgebed_queue_depth)", "{{tier}}")],
        "Requests waiting for a free device slot (503 + Retry-After beyond the queue limit).",
        False,
    ),
    (
        "Tier load (busy share of device slots)",
        "timeseries", "percentunit",
        [("sum by (tier) (rate(edgebed_service_seconds_sum[$__rate_interval]))"
          " / max by (tier) (edgebed_tier_concurrency)", "{{tier}}")],
        "Seconds of service per second divided by the tier's concurrency.",
        False,
    ),
    (
        "Tier requests per second by model",
        "timeseries", "reqps",
        [("sum by (tier, model) (rate(edgebed_requests_total[$__rate_interval]))",
          "{{tier}}/{{model}}")],
        "All outcomes.",
        False,
    ),
    (
        "Tier time per request: real compute vs emulated device time (mean, ms)",
        "timeseries", "ms",
        [("1000 * sum by (tier) (rate(edgebed_compute_seconds_sum[$__rate_interval]))"
          " / sum by (tier) (rate(edgebed_compute_seconds_count[$__rate_interval]))",
          "{{tier}} compute (real LiteRT)"),
         ("1000 * sum by (tier) (rate(edgebed_emulated_seconds_sum[$__rate_interval]))"
          " / sum by (tier) (rate(edgebed_emulated_seconds_count[$__rate_interval]))",
          "{{tier}} device time (emulated)")],
        "compute: LiteRT on this host; device time: what the tier held the request for.",
        False,
    ),
    (
        "Tier energy (emulated, J)",
        "bargauge", "none",
        [("sum by (tier, energy_model) (edgebed_energy_joules_total)",
          "{{tier}} ({{energy_model}})")],
        "Cumulative energy the tiers charged to answered requests, per energy model.",
        True,
    ),
]

LINK_PANELS: list[Panel] = [
    (
        "Link fidelity: mean RTT configured vs achieved (ms)",
        "bargauge", "ms",
        [('1000 * edgebed_link_fidelity_rtt_seconds{stat="mean"}', "{{link}} {{kind}}")],
        "From the fidelity probe run before the replay (HTTP round trips through each link, "
        "direct round trip subtracted).",
        True,
    ),
    (
        "Link fidelity: KS p-value (achieved vs configured RTT law)",
        "bargauge", "none",
        [("edgebed_link_fidelity_ks_pvalue", "{{link}}")],
        "Kolmogorov–Smirnov test at 1 ms resolution; p ≥ 0.01 passes.",
        True,
    ),
    (
        "Link backend in force",
        "stat", "none",
        [('max by (link_backend) (edgebed_orchestrator_run_info{run=~"$run"})',
          "{{link_backend}}")],
        "tc netem where the kernel has sch_netem, the userspace link proxy otherwise.",
        True,
    ),
]


def _panel(pid: int, panel: Panel, x: int, y: int, w: int, h: int) -> dict[str, Any]:
    title, kind, unit, targets, description, instant = panel
    out: dict[str, Any] = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": w, "h": h},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                "instant": instant,
                "range": not instant,
            }
            for i, (expr, legend) in enumerate(targets)
        ],
    }
    if kind == "bargauge":
        out["options"] = {"orientation": "horizontal", "displayMode": "basic",
                          "reduceOptions": {"calcs": ["lastNotNull"], "values": False}}
    if kind == "stat":
        out["options"] = {"textMode": "name", "reduceOptions": {"calcs": ["lastNotNull"]}}
    return out


def _row(pid: int, title: str, y: int) -> dict[str, Any]:
    return {"id": pid, "type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name, "label": label, "type": "query", "datasource": DATASOURCE,
        "query": {"query": query, "refId": f"{name}-values"}, "definition": query,
        "refresh": 2, "includeAll": True, "allValue": ".*", "multi": True, "sort": 1,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
    }


# Every scenario event (link change, node kill/pause/restart, rate step) as a marker on every
# time-series panel.
SCENARIO_ANNOTATION_EXPR = (
    "sum by (policy, action, target, result) "
    "(changes(edgebed_orchestrator_scenario_events_total[1m])) > 0"
)
ANNOTATIONS: list[dict[str, Any]] = [
    {
        "name": "scenario events",
        "datasource": DATASOURCE,
        "enable": True,
        "iconColor": "red",
        "expr": SCENARIO_ANNOTATION_EXPR,
        "step": "5s",
        "titleFormat": "{{action}} {{target}}",
        "textFormat": "pass {{policy}}: {{result}}",
        "tagKeys": "action,policy",
        "useValueForTime": False,
    },
]


def build() -> dict[str, Any]:
    panels: list[dict[str, Any]] = []
    pid, y = 1, 0
    for title, group in (("Policies (orchestrator)", POLICY_PANELS),
                         ("Tiers", TIER_PANELS), ("Links", LINK_PANELS)):
        panels.append(_row(pid, title, y))
        pid, y = pid + 1, y + 1
        for i, panel in enumerate(group):
            x = 0 if i % 2 == 0 else 12
            panels.append(_panel(pid, panel, x, y, 12, 8))
            pid += 1
            if i % 2 == 1 or i == len(group) - 1:
                y += 8
    return {
        "uid": "edgebed",
        "title": "edgebed",
        "description": "Policies (accuracy, deadlines, energy, latency, routes), tier queues "
        "and load, link fidelity. Device time, energy and the LLM are emulated.",
        "tags": ["edgebed"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "5s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": [
            _variable("run", "run", "label_values(edgebed_orchestrator_run_info, run)"),
            _variable("policy", "policy",
                      "label_values(edgebed_orchestrator_requests_total, policy)"),
        ]},
        "annotations": {"list": ANNOTATIONS},
        "panels": panels,
    }


def render() -> str:
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the JSON file is stale")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
