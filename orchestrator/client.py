"""One HTTP attempt against a tier (``/v1/infer`` binary body, ``/v1/generate``), as an ``Attempt``.

Every failure mode (connection refused, timeout, 503, other HTTP status, dropped connection)
becomes an ``Attempt`` with its ``outcome``; nothing raises out of ``run_attempt``.

The replay client is aiohttp: on the project's 2-core VM an async httpx request costs 1.2-2.5 ms
more than the same request through aiohttp (httpcore + anyio per-request overhead), and every
microsecond of client overhead lands in the recorded latency (``bench/bench_replay.py``).
aiohttp sends a small request's head and body in one write, so an emulated link sees one chunk
(one delay draw) per request, as the simulator draws one RTT per request.
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any

import aiohttp
from yarl import URL

from orchestrator.profiles import split_route
from orchestrator.workload import Request

OUTCOMES: tuple[str, ...] = (
    "ok",  # answered (HTTP 200)
    "abandoned",  # the request budget ran out while waiting: the client gave up on it
    "not_sent",  # never sent: the budget was spent before this attempt, or the run stopped first
    "refused",  # connection refused: nothing listens at the target (a dead tier, direct)
    "disconnected",  # the connection closed before an answer (a tier that died, or a dead tier
    # behind a link proxy, which accepts the connection before it knows)
    "overloaded",  # HTTP 503: the tier's queue was full
    "http_error",  # any other HTTP status
    "error",  # anything else (a malformed answer, a policy bug)
    "cancelled",  # in flight when the run was interrupted
)
SENT_OUTCOMES = tuple(o for o in OUTCOMES if o != "not_sent")


@dataclass
class Attempt:
    """What one attempt on one route cost and returned (times in ms, energy in mJ)."""

    route: str
    outcome: str = "error"
    node_class: str = ""  # the hardware class of the route's node ("" = the node's name)
    status_code: int = 0
    start_ms: float = 0.0  # when the attempt was sent, relative to the request's intended send
    latency_ms: float = 0.0  # wall time of this attempt alone (send → answer or failure)
    service_ms: float = 0.0  # time inside the tier (its timing.service_ms / total)
    queue_ms: float = 0.0  # tier queue
    device_ms: float = 0.0  # emulated device time (profile mode) or real compute (real mode)
    compute_ms: float = 0.0  # real LiteRT compute on this host
    network_ms: float = 0.0  # latency_ms - service_ms: link + HTTP + client overhead
    prediction: int = -1
    confidence: float = float("nan")
    quality: float = float("nan")
    tokens: int = 0
    queue_depth: int = -1  # the tier's queue when it answered (its ``load``), -1 unknown
    in_service: int = -1
    host_lead_ms: float = 0.0  # the tier's hold ended this early for this host's overhead
    remote_energy_mj: float = 0.0  # energy the tier reports for this request
    tier_simulator_mj: float = float("nan")
    bytes_tx: int = 0
    bytes_rx: int = 0
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def sent(self) -> bool:
        return self.outcome != "not_sent"

    @property
    def tier(self) -> str:
        return self.route.split("/", 1)[0]

    @property
    def hw_class(self) -> str:
        """The node's hardware class (its name when the experiment named no class)."""
        return self.node_class or self.tier

    @property
    def model(self) -> str:
        return self.route.split("/", 1)[1]

    def brief(self) -> dict[str, Any]:
        """Compact form kept in records.csv's ``attempts_json`` column."""
        out: dict[str, Any] = {}
        for f in _BRIEF_FIELDS:
            v = getattr(self, f)
            out[f] = (None if v != v else round(v, 4)) if isinstance(v, float) else v
        return out


_BRIEF_FIELDS = tuple(f.name for f in fields(Attempt))


def make_session(max_connections: int) -> aiohttp.ClientSession:
    """One pooled session for all tiers: no proxies from the environment, no cookie jar,
    keep-alive shorter than the servers' (uvicorn: 5 s) so an idle connection is never reused
    just as the server closes it."""
    connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0,
                                     keepalive_timeout=2.0, enable_cleanup_closed=False)
    return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar(),
                                 trust_env=False, auto_decompress=False,
                                 timeout=aiohttp.ClientTimeout(total=30.0))


@lru_cache(maxsize=256)
def _endpoint_url(base_url: str, kind: str, model: str) -> URL:
    """Parsed once per (tier, endpoint, model)."""
    base = base_url.rstrip("/")
    if kind == "cv":
        return URL(f"{base}/v1/infer").with_query(model=model)
    return URL(f"{base}/v1/generate")


def lm_seed_for(request: Request, route: str) -> int:
    """The seed of the emulated LM's confidence draw for ``request`` on ``route``: the same for
    every policy (common random numbers), independent between routes, as the simulator draws
    a fresh confidence per attempt."""
    return (request.lm_seed * 1_000_003 + zlib.crc32(route.encode())) % 2**53  # JSON-exact


def build_http_request(
    route: str, request: Request, host_lead_ms: float = 0.0
) -> tuple[str, dict[str, str], bytes]:
    """``(kind, headers, body)`` of the HTTP request for ``route`` (pure)."""
    _, model = split_route(route)
    # x-edgebed-attempt tags the attempt for the link proxy's per-hop log (GET /v1/hops)
    headers = {"x-request-id": str(request.id), "x-edgebed-attempt": f"{request.id}/{route}"}
    if host_lead_ms > 0:
        headers["x-edgebed-host-lead-ms"] = f"{host_lead_ms:.4f}"
    if request.kind == "cv":
        return request.kind, {**headers, "content-type": "application/octet-stream"}, request.image
    body = {
        "model": model,
        "prompt": request.prompt,
        "max_tokens": request.max_tokens,
        "length": request.length or None,
        "request_id": str(request.id),
        "seed": lm_seed_for(request, route),
        "stream": False,
    }
    return request.kind, {**headers, "content-type": "application/json"}, json.dumps(body).encode()


def _head_bytes(first_line: str, headers: Any) -> int:
    return len((first_line + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n")
               .encode())


def parse_answer(attempt: Attempt, payload: dict[str, Any]) -> None:
    """Fill ``attempt`` from a tier's 200 answer (docs/api.md)."""
    timing = payload.get("timing") or {}
    energy = payload.get("energy") or {}
    attempt.queue_ms = float(timing.get("queue_ms", 0.0) or 0.0)
    attempt.compute_ms = float(timing.get("compute_ms", 0.0) or 0.0)
    attempt.device_ms = float(
        timing.get("emulated_ms", timing.get("total_ms", attempt.compute_ms)) or 0.0
    )
    attempt.service_ms = float(timing.get("service_ms", timing.get("total_ms", 0.0)) or 0.0)
    attempt.remote_energy_mj = float(energy.get("energy_mj", 0.0) or 0.0)
    attempt.tier_simulator_mj = float(energy.get("simulator_mj", float("nan")))
    if "prediction" in payload:
        attempt.prediction = int(payload["prediction"])
    if "confidence" in payload and payload["confidence"] is not None:
        attempt.confidence = float(payload["confidence"])
    if "quality" in payload and payload["quality"] is not None:
        attempt.quality = float(payload["quality"])
    load = payload.get("load") or {}
    attempt.queue_depth = int(load.get("queue_depth", -1))
    attempt.in_service = int(load.get("in_service", -1))
    attempt.host_lead_ms = float(timing.get("host_lead_ms", 0.0) or 0.0)
    if "tokens" in payload:
        tokens = payload["tokens"]
        attempt.tokens = int(tokens if isinstance(tokens, int | float) else len(tokens))


async def run_attempt(
    client: aiohttp.ClientSession,
    base_url: str,
    route: str,
    request: Request,
    *,
    timeout_s: float,
    t_intended: float,
    host_lead_ms: float = 0.0,
) -> Attempt:
    """Send one attempt and classify what happened; never raises (except cancellation).

    ``timeout_s`` is what is left of the request's budget; when nothing is left the attempt is
    not sent (outcome ``not_sent``), when it runs out while waiting the client gives up
    (``abandoned``; what the tier does with the work is its ``on_disconnect`` setting)."""
    attempt = Attempt(route=route)
    t0 = time.perf_counter()
    attempt.start_ms = (t0 - t_intended) * 1e3
    if timeout_s <= 0:
        attempt.outcome = "not_sent"
        attempt.error = "request budget spent before this attempt"
        return attempt
    try:
        kind, headers, body = build_http_request(route, request, host_lead_ms)
        url = _endpoint_url(base_url, kind, split_route(route)[1])
        async with client.post(url, data=body, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            content = await resp.read()
        attempt.status_code = resp.status
        sent = resp.request_info
        attempt.bytes_tx = _head_bytes(f"POST {sent.url.raw_path_qs} HTTP/1.1\r\n",
                                       sent.headers) + len(body)
        attempt.bytes_rx = _head_bytes(f"HTTP/1.1 {resp.status} {resp.reason}\r\n",
                                       resp.headers) + len(content)
        if resp.status == 200:
            parse_answer(attempt, json.loads(content))
            attempt.outcome = "ok"
        elif resp.status == 503:
            attempt.outcome = "overloaded"
            attempt.error = content[:200].decode(errors="replace")
        else:
            attempt.outcome = "http_error"
            attempt.error = content[:200].decode(errors="replace")
    except TimeoutError:  # aiohttp's ServerTimeoutError and asyncio's timeout
        attempt.outcome = "abandoned"
        attempt.error = f"request budget ran out after {timeout_s:.3f} s of waiting"
    except aiohttp.ClientConnectorError as exc:
        attempt.outcome = "refused"
        attempt.error = f"connection refused ({exc.host}:{exc.port}): nothing listens there"
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError,
            aiohttp.ClientPayloadError) as exc:
        attempt.outcome = "disconnected"
        attempt.error = ("connection closed before the answer (the tier, or the tier behind "
                         f"this link, is down or died): {type(exc).__name__}")
    except (aiohttp.ClientError, ValueError, KeyError, TypeError) as exc:
        attempt.outcome = "error"
        attempt.error = f"{type(exc).__name__}: {exc}"[:200]
    attempt.latency_ms = (time.perf_counter() - t0) * 1e3
    attempt.network_ms = max(0.0, attempt.latency_ms - attempt.service_ms)
    return attempt
