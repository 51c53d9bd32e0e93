"""Read the link proxy's own per-link counters (chunks forwarded, delay drawn) from its control API.

The proxy counts, per link and direction, the chunks it forwarded
(``edgebed_link_chunks_total``), the messages that drew a delay
(``edgebed_link_messages_total``) and the sum of the delays it drew for them
(``edgebed_link_drawn_delay_seconds_total``, loss penalties included) on its control API's
``GET /metrics``. Read before and after a run of probes (:class:`CounterWindow`), the deltas
say what the link drew for exactly those probes: common random numbers for the fidelity
probe's mean check (see :func:`netem.probe.drawn_reference`). A window over several links
(a path's hops) reads them all from one scrape.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

DIRECTIONS = ("up", "down")
CHUNKS = "edgebed_link_chunks_total"
DRAWN = "edgebed_link_drawn_delay_seconds_total"
MESSAGES = "edgebed_link_messages_total"


def parse_link_counters(text: str, link: str) -> dict[str, dict[str, float]]:
    """Every sample of ``link`` in a Prometheus exposition, per direction:
    ``{"up": {sample name: value}, "down": {...}}``."""
    out: dict[str, dict[str, float]] = {d: {} for d in DIRECTIONS}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            d = s.labels.get("direction")
            if s.labels.get("link") == link and d in out:
                out[d][s.name] = s.value
    return out


def link_counters(control_url: str, link: str, direction: str = "up") -> dict[str, float]:
    """The proxy's own figures for one link direction (chunks, drawn delay, applied delay
    sum/count), keyed by sample name."""
    text = httpx.get(f"{control_url.rstrip('/')}/metrics", trust_env=False, timeout=10).text
    return parse_link_counters(text, link)[direction]


async def read_link_counters(control_url: str, link: str,
                             timeout_s: float = 5.0) -> dict[str, dict[str, float]]:
    """:func:`parse_link_counters` of the proxy's ``/metrics`` (asyncio); raises
    ``httpx.HTTPError`` when the control API cannot be read and ``KeyError`` when it does not
    know ``link``."""
    return (await read_links_counters(control_url, [link], timeout_s))[link]


async def read_links_counters(control_url: str, links: Sequence[str],
                              timeout_s: float = 5.0) -> dict[str, dict[str, dict[str, float]]]:
    """:func:`parse_link_counters` of every link in ``links`` from one scrape of the proxy's
    ``/metrics``; raises as :func:`read_link_counters`."""
    async with httpx.AsyncClient(timeout=timeout_s, trust_env=False) as client:
        resp = await client.get(f"{control_url.rstrip('/')}/metrics")
        resp.raise_for_status()
    out = {}
    for link in links:
        counters = parse_link_counters(resp.text, link)
        if not any(CHUNKS in counters[d] for d in DIRECTIONS):
            raise KeyError(f"the proxy at {control_url} has no counters for link {link!r}")
        out[link] = counters
    return out


class CounterWindow:
    """A link's (or several links': a path's hops) chunk, message and drawn-delay counters
    read right before and right after a run of probes; :meth:`deltas` is what the (first)
    link forwarded and drew in between, :meth:`deltas_by_link` every link's."""

    def __init__(self, control_url: str, link: str | Sequence[str]) -> None:
        self.control_url = control_url
        self.links = [link] if isinstance(link, str) else list(link)
        if not self.links:
            raise ValueError("a counter window needs at least one link")
        self.link = self.links[0]
        self.before: dict[str, dict[str, dict[str, float]]] | None = None
        self.after: dict[str, dict[str, dict[str, float]]] | None = None
        self.error: str | None = None  # why the counters are unavailable

    async def _read(self) -> dict[str, dict[str, dict[str, float]]] | None:
        try:
            return await read_links_counters(self.control_url, self.links)
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            self.error = (f"cannot read the proxy's counters at {self.control_url}/metrics: "
                          f"{type(exc).__name__}: {exc}")
            return None

    async def open(self) -> None:
        self.before = await self._read()

    async def close(self) -> None:
        if self.before is not None:
            self.after = await self._read()

    def deltas(self, link: str | None = None) -> dict[str, dict[str, float]] | None:
        """``{"up": {"chunks": k, "messages": m, "drawn_s": s}, "down": {...}}`` of ``link``
        (default the first) between open and close, or None (see :attr:`error`)."""
        if self.before is None or self.after is None:
            return None
        link = self.link if link is None else link
        out: dict[str, dict[str, float]] = {}
        for d in DIRECTIONS:
            b, a = self.before[link][d], self.after[link][d]
            out[d] = {"chunks": a.get(CHUNKS, 0.0) - b.get(CHUNKS, 0.0),
                      "messages": a.get(MESSAGES, 0.0) - b.get(MESSAGES, 0.0),
                      "drawn_s": a.get(DRAWN, 0.0) - b.get(DRAWN, 0.0)}
        return out

    def deltas_by_link(self) -> dict[str, dict[str, dict[str, float]]] | None:
        """:meth:`deltas` of every link of the window, or None (see :attr:`error`)."""
        if self.before is None or self.after is None:
            return None
        out = {}
        for link in self.links:
            d = self.deltas(link)
            assert d is not None
            out[link] = d
        return out

    def describe(self) -> dict[str, Any]:
        return {"control_url": self.control_url, "link": self.link, "links": self.links,
                "deltas": self.deltas(), "deltas_by_link": self.deltas_by_link(),
                "error": self.error}
