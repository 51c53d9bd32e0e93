"""What the compose stack's orchestrator container decides about its topology (pure).

The container (``docker/compose_entrypoint.py``) finds the nodes the compose file was rendered
for (``EDGEBED_TARGETS``, ``orchestrator/stack/render.py``), checks them against the experiment,
and picks how to emulate the links: the local stack's plan (``orchestrator.stack.links``: one
link proxy, multi-hop paths chained) or tc netem on its own interface, which shapes per
destination address and so serves only nodes one link away.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from orchestrator.experiment import Experiment
from orchestrator.stack.render import TIER_PORT


def compose_targets(exp: Experiment, text: str | None) -> dict[str, str]:
    """The URL of every node of ``exp``: from ``text`` (``EDGEBED_TARGETS``, ``NODE=URL,...``),
    else each node at its compose service. Raises ValueError naming the nodes that disagree
    and the cure."""
    from orchestrator.commands import parse_targets

    if text is None:
        return {n: f"http://{n}:{TIER_PORT}" for n in exp.tiers}
    fix = ("a compose file serves the nodes of the experiment it was rendered from: render one "
           f"for this experiment (edgebed compose render --config {exp.source} --out FILE)")
    try:
        urls = parse_targets(text, list(exp.tiers))
    except ValueError as exc:
        raise ValueError(f"EDGEBED_TARGETS: {exc}; {fix}") from None
    missing = [n for n in exp.tiers if n not in urls]
    if missing:
        raise ValueError(f"EDGEBED_TARGETS has no URL for node(s) {', '.join(missing)} of "
                         f"{exp.source}; {fix}")
    return urls


def tc_refusal(exp: Experiment, tier_urls: Mapping[str, str]) -> str | None:
    """Why tc netem cannot emulate this topology, or None. tc shapes this container's interface
    once per destination address: one link per node, from one source. It cannot chain the hops
    of a path (a node several hops away) nor tell device groups apart (several groups with
    links: their requests all leave this container)."""
    paths = {k: p for k, p in exp.all_paths().items() if k[1] in tier_urls}
    far = {k: p for k, p in paths.items() if len(p.hops) > 1}
    sources = sorted({group for group, _ in paths})
    why = []
    if far:
        why.append("cannot chain a path's hops: " + ", ".join(
            f"{n} is {len(p.hops)} hops away from {g} ({' → '.join(p.hops)})"
            for (g, n), p in sorted(far.items())))
    if len(sources) > 1:
        why.append(f"cannot tell device groups apart ({', '.join(sources)} have links)")
    if not why:
        return None
    return ("tc netem shapes this container's interface once per destination address, one "
            "link per node from one source, and " + "; and ".join(why))


def resolve_backend(requested: str, choice: Mapping[str, Any], exp: Experiment,
                    tier_urls: Mapping[str, str]) -> tuple[str, str]:
    """(backend, reason): the container's choice (``backend``, ``reason``) checked against the
    topology (:func:`tc_refusal`): what tc cannot emulate is an error when tc was asked for,
    else the userspace proxy (which chains every hop and serves each group its own listeners)
    with the reason."""
    backend, reason = str(choice["backend"]), str(choice["reason"])
    refusal = tc_refusal(exp, tier_urls) if backend == "tc" else None
    if refusal is None:
        return backend, reason
    if requested == "tc":
        raise ValueError(f"EDGEBED_LINK_BACKEND=tc: {refusal}; use auto or proxy (the userspace "
                         "link proxy does both)")
    return "proxy", f"{reason}; but {refusal}: using the userspace link proxy, which does"


def one_hop_links(exp: Experiment, tier_urls: Mapping[str, str]) -> dict[str, tuple[str, Any]]:
    """link name -> (node, spec) for each node one link from the (only) device group: what tc
    applies."""
    return {p.hops[0]: (n, exp.links[p.hops[0]]) for n, p in exp.node_paths().items()
            if len(p.hops) == 1 and n in tier_urls}


def hostport(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
