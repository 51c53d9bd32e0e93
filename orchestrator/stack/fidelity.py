"""Measure every device→tier link of a running stack with the ``netem`` fidelity probe.

Each link is probed with keep-alive HTTP GETs of the tier's ``/healthz`` through the link, with
the same request sent directly to the tier as the baseline, so only the link's part of the
round trip is compared with its configured law. The proxy's own counters, read around the
probes, give the delay it drew for exactly those probes, so the mean is judged against that
(the link's own error) rather than against the luck of 60 draws (``netem.probe``). Reports go to run.json, to the terminal, and to
the link proxy's control API (which exports them as Prometheus gauges).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import httpx

from netem.auth import auth_headers, read_token_file
from orchestrator.experiment import Experiment
from orchestrator.stack.state import StackState


def _hostport(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def probe_stack_links(
    exp: Experiment, state: StackState, n: int = 60, concurrency: int = 1,
    timeout_s: float | None = None,
) -> list[dict[str, Any]]:
    """Fidelity report per (device group, node) pair the link proxy serves: the group's link
    to the node, or its multi-hop path (the hops' laws convolved; ``kind: path``).

    Raises ``TimeoutError`` when all probes together take longer than ``timeout_s`` (default:
    45 s for up to three, 15 s more per further link or path).
    """
    from netem.probe import probe_link, probe_path

    jobs: list[tuple[str, Any, str, str]] = []
    seen: set[str] = set()
    for (group, node), route in exp.all_paths().items():
        if node not in state.tier_urls or route.name in seen:
            continue
        via = (state.group_target_urls.get(group, {}).get(node)
               or (state.target_urls.get(node) if group == exp.default_group() else None))
        direct = state.tier_urls[node]
        if not via or via == direct:
            continue
        seen.add(route.name)
        law: Any = (exp.links[route.hops[0]] if len(route.hops) == 1
                    else {h: exp.links[h] for h in route.hops})
        jobs.append((route.name, law, _hostport(via), _hostport(direct)))

    control = state.link_control_urls.get("links")

    async def run() -> list[dict[str, Any]]:
        out = []
        for name, law, via, direct in jobs:  # one at a time: probes do not compete
            kw: dict[str, Any] = dict(
                name=name, n=n, mode="http", concurrency=concurrency, path="/healthz",
                baseline_target=direct, baseline_n=min(n, 50),
                control_url=control,  # the drawn mean: common random numbers for the mean check
            )
            if isinstance(law, dict):
                report = await probe_path(via, law, **kw)
                report["kind"] = "path"
            else:
                report = await probe_link(via, law, **kw)
                report["kind"] = "link"
            out.append(report)
        return out

    if timeout_s is None:
        timeout_s = 45.0 + 15.0 * max(0, len(jobs) - 3)
    reports = asyncio.run(asyncio.wait_for(run(), timeout_s))
    if control:
        headers = auth_headers(read_token_file(state.link_token_file)
                               if state.link_token_file else None)
        with httpx.Client(timeout=5, trust_env=False) as client:
            for r in reports:
                where = "paths" if r.get("kind") == "path" else "links"
                with contextlib.suppress(httpx.HTTPError):
                    client.put(f"{control}/v1/{where}/{r['link']}/fidelity", json=r,
                               headers=headers)
    return reports
