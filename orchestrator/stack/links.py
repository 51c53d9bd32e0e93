"""How the local stack applies the experiment's links: a plan (pure) and the proxy's command line.

With the ``proxy`` backend each (device group, node) pair the group reaches through links gets
one listener on a free loopback port: the link itself when the path is one hop (a link from a
group is the group's shared access medium: all its devices cross the same listener, rate
limit and draws), else a netem path (``paths.path-<node>``, ``path-<group>-<node>`` from a
group other than the default one) whose chained listeners cross every hop for real, each hop
sharing its link's law, draws and counters with every other path through it. All links run in one proxy process whose control API
(``/healthz``, ``/metrics``, runtime changes) is on its own port. The orchestrator then talks
to each node through its path (``orchestrator.topology``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from netem.spec import LinkSpec
from orchestrator.experiment import Experiment

LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class PlannedLink:
    name: str
    spec: LinkSpec  # with listen/target filled in
    tier: str  # the tier it leads to
    from_device: bool  # its src is a device group

    @property
    def listen_url(self) -> str:
        return f"http://{self.spec.listen}"

    def describe(self) -> str:
        return f"{self.spec.src}→{self.spec.dst} {self.spec.describe()}"


@dataclass(frozen=True)
class PlannedPath:
    """A multi-hop path from the device to ``tier``: its own listener, chained through ``hops``."""

    name: str
    tier: str
    hops: tuple[str, ...]
    listen: str
    target: str
    rtt_mean_ms: float
    source: str = "device"  # the device group it starts at

    @property
    def listen_url(self) -> str:
        return f"http://{self.listen}"

    def describe(self) -> str:
        return (f"{self.source}→{self.tier} via {' → '.join(self.hops)} "
                f"(mean RTT {self.rtt_mean_ms:g} ms)")


@dataclass
class LinkPlan:
    backend: str  # proxy | none
    reason: str
    links: list[PlannedLink] = field(default_factory=list)
    control: str | None = None  # host:port of the proxy's control API
    paths: list[PlannedPath] = field(default_factory=list)
    hop_links: dict[str, LinkSpec] = field(default_factory=dict)  # crossed only inside paths
    groups: list[str] = field(default_factory=list)  # the device groups, in the file's order

    @property
    def control_url(self) -> str | None:
        return f"http://{self.control}" if self.control else None

    def group_targets(self, tier_urls: dict[str, str]) -> dict[str, dict[str, str]]:
        """Per device group, the URL its devices use for each node they reach through links
        (the link's or the path's listener)."""
        out: dict[str, dict[str, str]] = {}
        for link in self.links:
            if link.from_device:
                out.setdefault(link.spec.src, {})[link.tier] = link.listen_url
        for path in self.paths:
            out.setdefault(path.source, {})[path.tier] = path.listen_url
        return out

    def targets(self, tier_urls: dict[str, str], group: str | None = None) -> dict[str, str]:
        """URL a device of ``group`` (default: the first group planned) uses for each tier:
        through its link or path, else direct."""
        by_group = self.group_targets(tier_urls)
        if group is None:
            group = self.groups[0] if self.groups else "device"
        return {**tier_urls, **by_group.get(group, {})}

    def topology_document(self, seed: int) -> dict:
        """The ``netem.proxy --config`` file: links (with listen/target when the device uses
        them directly), multi-hop paths, seed, control."""
        # up/down carry the full law; rtt_range_ms is only its shorthand
        links = {pl.name: pl.spec.model_dump(mode="json", exclude_none=True,
                                              exclude={"rtt_range_ms"})
                 for pl in self.links}
        for name, spec in self.hop_links.items():
            links[name] = spec.model_dump(mode="json", exclude_none=True,
                                          exclude={"rtt_range_ms", "listen", "target"})
        doc: dict = {"links": dict(sorted(links.items()))}
        if self.paths:
            doc["paths"] = {p.name: {"hops": list(p.hops), "listen": p.listen,
                                     "target": p.target} for p in self.paths}
        doc.update(seed=seed, control=self.control)
        return doc


def _hostport(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def plan_links(
    exp: Experiment, tier_urls: dict[str, str], backend: str, ports: list[int]
) -> LinkPlan:
    """Decide the backend and give each link a listen port (``ports`` supplies free ports)."""
    free = iter(ports)
    if not exp.links:
        return LinkPlan("none", "the experiment declares no links: tiers are reached directly")
    if backend == "none":
        return LinkPlan("none", "link_backend none: links ignored, tiers reached directly")
    if backend == "proxy":
        reason = "userspace link proxy on loopback (requested)"
    else:  # auto | tc
        reason = (
            f"userspace link proxy on loopback (link_backend {backend} asked; the local stack "
            "runs every tier on loopback in this network namespace, where kernel shaping would "
            "hit all loopback traffic — use the compose stack for tc netem)"
        )
    planned: list[PlannedLink] = []
    paths: list[PlannedPath] = []
    groups = exp.group_names()
    for group in groups:  # the experiment's order of groups and nodes: ports follow it
        group_paths = exp.group_paths(group)
        for node in exp.tiers:
            path = group_paths.get(node)
            if path is None or node not in tier_urls:
                continue
            if len(path.hops) == 1:
                name = path.hops[0]
                filled = exp.links[name].model_copy(update={
                    "listen": f"{LOOPBACK}:{next(free)}", "target": _hostport(tier_urls[node])})
                planned.append(PlannedLink(name, filled, node, True))
            else:
                paths.append(PlannedPath(path.name, node, path.hops, f"{LOOPBACK}:{next(free)}",
                                         _hostport(tier_urls[node]), path.rtt_mean_ms, group))
    direct = {pl.name for pl in planned}
    hop_links = {h: exp.links[h] for p in paths for h in p.hops if h not in direct}
    control = f"{LOOPBACK}:{next(free)}"
    return LinkPlan("proxy", reason, planned, control, paths, hop_links, groups)


def ports_needed(exp: Experiment) -> int:
    """Free ports :func:`plan_links` may take: one per (group, node) path, plus control."""
    return len(exp.all_paths()) + 1


def write_topology(plan: LinkPlan, seed: int, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Generated by edgebed (orchestrator/stack/links.py: the link plan)\n"
        + yaml.safe_dump(plan.topology_document(seed), sort_keys=False)
    )
    return path


def proxy_argv(python: str, config_path: Path, token_file: Path | None = None) -> list[str]:
    """Command line of the link proxy process serving every planned link (pure)."""
    argv = [python, "-m", "netem.proxy", "--config", str(config_path)]
    if token_file is not None:
        argv += ["--token-file", str(token_file)]
    return argv


def write_token(path: Path) -> Path:
    """A fresh random token for the link control API, readable by this user only."""
    import secrets

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_urlsafe(32) + "\n")
    os.chmod(path, 0o600)
    return path
