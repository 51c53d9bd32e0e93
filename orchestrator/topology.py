"""Paths through the experiment's topology: how a request from a device group reaches each node.

Links are directed (``src`` → ``dst``; ``up`` is the request direction, ``down`` the reply);
a link starts at a device group (the request sources; ``device`` when the experiment declares
no groups) or at a node, and ends at a node. A node's path from a group is the one the
experiment declares under ``paths.<node>`` when that path starts at the group (a list of link
names; its first link's ``src`` is the group), else the shortest by configured mean round trip
(Dijkstra; ties by fewer hops, then by link names, so the choice is deterministic). A node no
link path from any group reaches is reached directly: no emulated network, as before links
existed (run.json says so).

Pure functions of the experiment's links: the local stack, the compose entrypoint and the
predictor all use the same paths.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from netem.spec import LinkSpec

DEVICE = "device"


@dataclass(frozen=True)
class Path:
    """The links a request from the device crosses to reach ``dst``, in order."""

    dst: str
    hops: tuple[str, ...]
    rtt_mean_ms: float
    declared: bool = False
    source: str = DEVICE  # the device group the path starts at

    @property
    def name(self) -> str:
        """The single link's name for one hop, else ``path-<dst>`` from the default group and
        ``path-<group>-<dst>`` from any other (a proxy listener name)."""
        if len(self.hops) == 1:
            return self.hops[0]
        return f"path-{self.dst}" if self.source == DEVICE else f"path-{self.source}-{self.dst}"

    def describe(self) -> str:
        return " → ".join(self.hops) + f" (mean RTT {self.rtt_mean_ms:g} ms)"


def shortest_paths(links: Mapping[str, LinkSpec], source: str = DEVICE) -> dict[str, Path]:
    """Every node reachable from ``source`` with its shortest path by mean round trip."""
    out: dict[str, Path] = {}
    by_src: dict[str, list[tuple[str, LinkSpec]]] = {}
    for name, spec in sorted(links.items()):
        by_src.setdefault(spec.src, []).append((name, spec))
    heap: list[tuple[float, int, tuple[str, ...], str]] = [(0.0, 0, (), source)]
    done: set[str] = set()
    while heap:
        cost, n_hops, hops, node = heapq.heappop(heap)
        if node in done:
            continue
        done.add(node)
        if hops:
            out[node] = Path(node, hops, cost, source=source)
        for name, spec in by_src.get(node, []):
            if spec.dst not in done and spec.dst != source:
                heapq.heappush(heap, (cost + float(spec.rtt_mean_ms()), n_hops + 1,
                                      (*hops, name), spec.dst))
    return out


def check_declared_path(dst: str, hops: Sequence[str], links: Mapping[str, LinkSpec],
                        source: str = DEVICE) -> list[str]:
    """Problems with ``paths.<dst>`` (empty when it leads from ``source`` to ``dst``)."""
    key = f"paths.{dst}"
    if not hops:
        return [f"{key}: a path needs at least one link"]
    problems = []
    at, seen = source, {source}
    for i, name in enumerate(hops):
        spec = links.get(name)
        if spec is None:
            problems.append(f"{key}[{i}]: unknown link {name!r}; links: "
                            f"{', '.join(sorted(links)) or '(none declared)'}")
            return problems
        if spec.src != at:
            problems.append(f"{key}[{i}]: link {name} starts at {spec.src!r}, but the path is "
                            f"at {at!r} (each hop must start where the previous one ends)")
            return problems
        if spec.dst in seen:
            problems.append(f"{key}[{i}]: link {name} returns to {spec.dst!r}: a path may not "
                            "visit a node twice (cycle)")
            return problems
        at = spec.dst
        seen.add(at)
    if at != dst:
        problems.append(f"{key}: ends at {at!r}, not at {dst!r}")
    return problems


def declared_source(hops: Sequence[str], links: Mapping[str, LinkSpec]) -> str | None:
    """The group a declared path starts at: its first link's ``src`` (None: unknown link)."""
    first = links.get(hops[0]) if hops else None
    return first.src if first is not None else None


def node_paths(links: Mapping[str, LinkSpec], declared: Mapping[str, Sequence[str]],
               source: str = DEVICE) -> dict[str, Path]:
    """Declared paths (those starting at ``source``) over the shortest ones, per destination
    node (a declared path that does not check out is left to :func:`check_declared_path`)."""
    out = shortest_paths(links, source)
    for dst, hops in declared.items():
        if declared_source(hops, links) != source:
            continue
        if check_declared_path(dst, hops, links, source):
            continue
        out[dst] = Path(dst, tuple(hops), sum(float(links[h].rtt_mean_ms()) for h in hops),
                        declared=True, source=source)
    return out
