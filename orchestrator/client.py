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
    # a stage of a chain (``/v1/chain``): which segments ran, the exit taken, tensor bytes
    stage: str = ""  # the op asked for (``ChainOp.label``: "0:3", "0:3 exit>=0.9"), "" for /v1/infer
    exit: int = -1  # the segment whose exit answered (-1: none, or not a chain)
    cut: int = -1  # the cut of the tensor returned (-1: an answer, not a tensor)
    exits: str = ""  # every exit evaluated, "segment:confidence" joined by ","
    tensor_in_bytes: int = 0  # tensor (or image) bytes in the request body
    tensor_out_bytes: int = 0  # tensor bytes in the answer body
    probs: tuple[float, ...] = ()  # the answer's probability vector (4 decimals), or top-k values
    topk: tuple[int, ...] = ()  # class indices of ``probs`` when the tier answered top-k only
    tensor: Any = None  # the returned cut tensor (models.chain.CutTensor), not recorded

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
            if f in _CHAIN_FIELDS and v == _CHAIN_DEFAULTS[f]:
                continue  # an /v1/infer attempt's brief stays as it was
            out[f] = (None if v != v else round(v, 4)) if isinstance(v, float) else v
        return out

    def probability_vector(self) -> list[float] | None:
        """The answer's 10 class probabilities (top-k answers: the missing classes share what
        is left evenly), or None without an answer."""
        if not self.probs:
            return None
        if not self.topk:
            return list(self.probs)
        rest = max(0.0, 1.0 - sum(self.probs)) / max(1, 10 - len(self.topk))
        vec = [rest] * 10
        for i, v in zip(self.topk, self.probs, strict=True):
            vec[i] = v
        return vec


_BRIEF_FIELDS = tuple(f.name for f in fields(Attempt) if f.name != "tensor")
_CHAIN_FIELDS = ("stage", "exit", "cut", "exits", "tensor_in_bytes", "tensor_out_bytes", "probs",
                 "topk")
_CHAIN_DEFAULTS = {f.name: f.default for f in fields(Attempt) if f.name in _CHAIN_FIELDS}


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
    if kind == "chain":
        return URL(f"{base}/v1/chain")
    return URL(f"{base}/v1/generate")


@dataclass(frozen=True)
class ChainOp:
    """One stage of a chain on one node (``POST /v1/chain``, docs/api.md): run segments
    ``start``+1..``stop`` on the tensor at cut ``start`` (0: the request's image), stopping at
    the first exit that passes ``threshold`` when one is given; ``top_k`` asks for the k best
    classes only. ``stop`` None: to the chain's end."""

    start: int = 0
    stop: int | None = None
    threshold: float | None = None
    criterion: str = "confidence"
    output: str = "auto"
    top_k: int | None = None

    def query(self, chain: str) -> dict[str, str]:
        q = {"chain": chain, "start": str(self.start)}
        if self.stop is not None:
            q["stop"] = str(self.stop)
        if self.threshold is not None:
            q["threshold"] = repr(float(self.threshold))
            q["criterion"] = self.criterion
        if self.output != "auto":
            q["output"] = self.output
        if self.top_k is not None:
            q["top_k"] = str(self.top_k)
        return q

    @property
    def label(self) -> str:
        out = f"{self.start}:{'' if self.stop is None else self.stop}"
        if self.threshold is not None:
            out += f" exit>={self.threshold:g}" if self.criterion == "confidence" \
                else f" entropy<={self.threshold:g}"
        return out


TENSOR_TYPE = "application/x-edgebed-tensor"
ANSWER_HEADER = "x-edgebed-answer"


def tensor_headers(tensor: Any) -> dict[str, str]:
    """The framing of a cut tensor (``models.chain.CutTensor``) on the wire."""
    meta = tensor.meta
    return {"content-type": TENSOR_TYPE, "x-edgebed-dtype": meta.dtype,
            "x-edgebed-shape": ",".join(str(d) for d in meta.shape),
            "x-edgebed-scale": repr(float(meta.scale)),
            "x-edgebed-zero-point": str(int(meta.zero_point))}


def read_tensor(headers: Any, body: bytes) -> Any:
    """A cut tensor from an answer's framing headers and body (ValueError if malformed)."""
    from models.chain import CutTensor, TensorMeta

    shape = tuple(int(d) for d in headers["x-edgebed-shape"].split(","))
    meta = TensorMeta(headers["x-edgebed-dtype"], shape,
                      float(headers.get("x-edgebed-scale", 0.0)),
                      int(headers.get("x-edgebed-zero-point", 0)))
    if len(body) != meta.nbytes:
        raise ValueError(f"tensor answer of {len(body)} bytes, its headers say {meta.nbytes}")
    return CutTensor(body, meta)


def lm_seed_for(request: Request, route: str) -> int:
    """The seed of the emulated LM's confidence draw for ``request`` on ``route``: the same for
    every policy (common random numbers), independent between routes, as the simulator draws
    a fresh confidence per attempt."""
    return (request.lm_seed * 1_000_003 + zlib.crc32(route.encode())) % 2**53  # JSON-exact


def build_http_request(
    route: str, request: Request, host_lead_ms: float = 0.0, op: ChainOp | None = None,
    tensor: Any = None,
) -> tuple[str, dict[str, str], bytes]:
    """``(kind, headers, body)`` of the HTTP request for ``route`` (pure); with ``op`` a chain
    stage carrying the request's image (``op.start`` 0) or ``tensor``."""
    _, model = split_route(route)
    # x-edgebed-attempt tags the attempt for the link proxy's per-hop log (GET /v1/hops)
    tag = f"{request.id}/{route}" + (f"[{op.start}:{op.stop or ''}]" if op is not None else "")
    headers = {"x-request-id": str(request.id), "x-edgebed-attempt": tag}
    if host_lead_ms > 0:
        headers["x-edgebed-host-lead-ms"] = f"{host_lead_ms:.4f}"
    if op is not None:
        if op.start == 0:
            return "chain", {**headers, "content-type": "application/octet-stream"}, request.image
        if tensor is None:
            raise ValueError(f"stage {op.label} of {route} starts at cut {op.start}: no tensor")
        return "chain", {**headers, **tensor_headers(tensor)}, tensor.data
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
    top = payload.get("top_k")
    if isinstance(top, dict) and "indices" in top:
        attempt.topk = tuple(int(i) for i in top["indices"])
        attempt.probs = tuple(round(float(v), 4) for v in top["values"])
    elif isinstance(payload.get("probabilities"), list):
        attempt.probs = tuple(round(float(v), 4) for v in payload["probabilities"])
    if "exit" in payload and payload["exit"] is not None:
        attempt.exit = int(payload["exit"])
    if "cut" in payload and payload["cut"] is not None:
        attempt.cut = int(payload["cut"])
    if isinstance(payload.get("exits"), list):
        attempt.exits = ",".join(f"{int(e['segment'])}:{float(e['confidence']):.4f}"
                                 for e in payload["exits"])
    if "bytes_in" in payload:
        attempt.tensor_in_bytes = int(payload["bytes_in"])
    if "bytes_out" in payload:
        attempt.tensor_out_bytes = int(payload["bytes_out"])


async def run_attempt(
    client: aiohttp.ClientSession,
    base_url: str,
    route: str,
    request: Request,
    *,
    timeout_s: float,
    t_intended: float,
    host_lead_ms: float = 0.0,
    op: ChainOp | None = None,
    tensor: Any = None,
    top_k: int | None = None,
) -> Attempt:
    """Send one attempt and classify what happened; never raises (except cancellation).

    ``timeout_s`` is what is left of the request's budget; when nothing is left the attempt is
    not sent (outcome ``not_sent``), when it runs out while waiting the client gives up
    (``abandoned``; what the tier does with the work is its ``on_disconnect`` setting)."""
    attempt = Attempt(route=route, stage=op.label if op is not None else "")
    t0 = time.perf_counter()
    attempt.start_ms = (t0 - t_intended) * 1e3
    if timeout_s <= 0:
        attempt.outcome = "not_sent"
        attempt.error = "request budget spent before this attempt"
        return attempt
    try:
        kind, headers, body = build_http_request(route, request, host_lead_ms, op, tensor)
        url = _endpoint_url(base_url, kind, split_route(route)[1])
        if op is not None:
            url = url.with_query(op.query(split_route(route)[1]))
        elif top_k is not None and kind == "cv":
            url = url.update_query(top_k=str(top_k))
        async with client.post(url, data=body, headers=headers,
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            content = await resp.read()
        attempt.status_code = resp.status
        sent = resp.request_info
        attempt.bytes_tx = _head_bytes(f"POST {sent.url.raw_path_qs} HTTP/1.1\r\n",
                                       sent.headers) + len(body)
        attempt.bytes_rx = _head_bytes(f"HTTP/1.1 {resp.status} {resp.reason}\r\n",
                                       resp.headers) + len(content)
        if resp.status == 200 and resp.content_type == TENSOR_TYPE:
            parse_answer(attempt, json.loads(resp.headers[ANSWER_HEADER]))
            attempt.tensor = read_tensor(resp.headers, content)
            attempt.outcome = "ok"
        elif resp.status == 200:
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
