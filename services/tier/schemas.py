"""Request and response shapes of the tier API, as pydantic models (they document the OpenAPI)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.tier.inputs import IMAGE_PIXELS, IMAGE_SIDE

MAX_PROMPT_CHARS = 8192
MAX_TOKENS = 4096
MAX_SEED = 2**53 - 1  # JSON-safe integers (exact as doubles)

_PIXEL: Any = {"type": "number", "minimum": 0, "maximum": 255}


class InferRequest(BaseModel):
    """JSON body of ``POST /v1/infer`` (the binary form is 784 raw bytes, model in the query)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=64, description="served model, e.g. int8")
    image: list[float] | list[list[float]] = Field(
        description=(
            "784 numbers or 28 rows of 28 numbers. 0–1 floats, or 0–255 when any value exceeds 1 "
            "or scale is 'uint8'"
        ),
        json_schema_extra={
            "anyOf": [
                {"type": "array", "items": _PIXEL,
                 "minItems": IMAGE_PIXELS, "maxItems": IMAGE_PIXELS},
                {"type": "array", "minItems": IMAGE_SIDE, "maxItems": IMAGE_SIDE,
                 "items": {"type": "array", "items": _PIXEL,
                           "minItems": IMAGE_SIDE, "maxItems": IMAGE_SIDE}},
            ]
        },
    )  # fmt: skip
    request_id: str | None = Field(None, max_length=128)
    scale: Literal["auto", "uint8"] = "auto"


class Energy(BaseModel):
    energy_mj: float = Field(description="estimate of the tier's energy_model (emulated)")
    model: str = Field(description="energy model behind energy_mj: power | simulator")
    power_mj: float = Field(description="active_w × device ms + idle_w × queue ms")
    simulator_mj: float = Field(description="energy factor × (queue + device ms) × 0.02")


class Emulated(BaseModel):
    device_time: bool = Field(description="device time was emulated (profile mode)")
    energy: bool = True
    lm: bool = Field(description="the answer comes from the LM stub")


_QUEUE_DOC = (
    "wait from the request's arrival in the handler to the start of its service: 0 when a slot "
    "was free, else the previous request's nominal end (its start + device time; the device's "
    "own queueing, not shortened by leads)"
)
_HOST_LEAD_DOC = (
    "the hold ended this much earlier to absorb the testbed's own HTTP path, as asked by the "
    "x-edgebed-host-lead-ms header and applied (the send and host leads together are at most "
    "half the device time and never end the hold before the real compute finished)"
)


class InferTiming(BaseModel):
    queue_ms: float = Field(ge=0, description=_QUEUE_DOC)
    compute_ms: float = Field(description="real LiteRT compute on this host")
    emulated_ms: float = Field(
        description="device time: from the start of service to the end of the hold plus "
        "send_lead_ms and host_lead_ms, i.e. the nominal device time target_ms that a client "
        "should observe (profile); real compute (real)")
    target_ms: float = Field(description="device time drawn from the profile (latency + jitter)")
    send_lead_ms: float = Field(
        0.0, description="the hold ended this early to cover the tier's own response path "
        "(learned; 0 in real mode)")
    host_lead_ms: float = Field(0.0, ge=0, le=10, description=_HOST_LEAD_DOC)
    service_ms: float = Field(description="all time inside the server")
    batch_size: int | None = Field(
        None, ge=1, description="models with dynamic batching (class gpu) only: requests in "
        "this request's batch; its device time (target_ms, emulated_ms) is the batch's")
    batch_wait_ms: float | None = Field(
        None, ge=0, description="models with dynamic batching only: wait from arrival until "
        "the batch formed (max_batch requests waiting, or the oldest waited max_queue_delay_ms; "
        "0 for a request that joined a formed batch); queue_ms includes it and the wait for a "
        "model instance")


class Load(BaseModel):
    """The tier's occupancy, sampled when the answer was built: after this request released
    its device slot, i.e. what a request arriving at that moment would find."""

    queue_depth: int = Field(ge=0, description="requests waiting for a device slot")
    in_service: int = Field(ge=0, description="requests holding a device slot")
    concurrency: int = Field(ge=1, description="device slots")
    queue_limit: int = Field(ge=0, description="requests allowed to wait; beyond it 503")


class TopK(BaseModel):
    """The k most probable classes (query ``top_k``), highest first."""

    indices: list[int] = Field(description="class indices, most probable first")
    values: list[float] = Field(description="their probabilities")


class InferResponse(BaseModel):
    tier: str
    model: str
    request_id: str
    prediction: int = Field(ge=0)
    confidence: float = Field(ge=0, le=1)
    probabilities: list[float]
    top_k: TopK | None = Field(None, description="only when asked for with ?top_k=k")
    timing: InferTiming
    energy: Energy
    load: Load
    emulated: Emulated


class ChainExit(BaseModel):
    """An exit (a segment's probabilities) evaluated during a /v1/chain run."""

    segment: int = Field(ge=1, description="1-based segment index")
    confidence: float = Field(ge=0, le=1, description="its top probability")
    entropy: float = Field(ge=0, description="its entropy over ln(10) (0: certain, 1: uniform)")
    passed: bool | None = Field(
        description="met the threshold by the criterion (null without a threshold)")


class ChainSegmentRun(BaseModel):
    index: int = Field(ge=1, description="1-based segment index")
    name: str
    device_ms: float = Field(
        description="its part of the device time: the run's device time split by the emulated "
        "per-segment ratio (profile mode), its real compute (real mode)")
    compute_ms: float = Field(description="real LiteRT time of this segment on this host")


class ChainEmulated(Emulated):
    segment_shares: bool = Field(
        description="each segment's device_ms is the chain's device time split by the ratio of "
        "the manifest's measured invoke times (profile mode)")


class ChainTiming(BaseModel):
    queue_ms: float = Field(ge=0, description=_QUEUE_DOC)
    compute_ms: float = Field(description="real LiteRT compute of the segments run")
    emulated_ms: float = Field(
        description="device time of the segments run: the chain's latency_ms × their share "
        "(+ jitter × that share), measured as for /v1/infer (profile); real compute (real)")
    target_ms: float = Field(description="device time drawn for the segments run")
    send_lead_ms: float = 0.0
    host_lead_ms: float = Field(0.0, ge=0, le=10, description=_HOST_LEAD_DOC)
    service_ms: float = Field(description="all time inside the server")


_CHAIN_FIELDS_DOC = {
    "exits": "every exit evaluated, in order",
    "segments": "the segments run on this node, in order",
    "bytes_in": "tensor bytes received (a raw image: 784)",
    "bytes_out": "tensor bytes sent (0 for a JSON answer)",
}


class ChainResponse(BaseModel):
    """``POST /v1/chain`` answered by an exit (JSON)."""

    tier: str
    chain: str
    request_id: str
    prediction: int = Field(ge=0)
    confidence: float = Field(ge=0, le=1)
    probabilities: list[float] = Field(description="the answering exit's probabilities")
    top_k: TopK | None = Field(None, description="only when asked for with ?top_k=k")
    exit: int = Field(ge=1, description="the 1-based segment whose probabilities answered")
    exits: list[ChainExit] = Field(description=_CHAIN_FIELDS_DOC["exits"])
    segments: list[ChainSegmentRun] = Field(description=_CHAIN_FIELDS_DOC["segments"])
    timing: ChainTiming
    energy: Energy
    load: Load
    emulated: ChainEmulated
    bytes_in: int = Field(ge=0, description=_CHAIN_FIELDS_DOC["bytes_in"])
    bytes_out: int = Field(ge=0, description=_CHAIN_FIELDS_DOC["bytes_out"])


class ChainTensorAnswer(BaseModel):
    """The ``x-edgebed-answer`` header of a tensor answer of ``POST /v1/chain`` (compact JSON)."""

    tier: str
    chain: str
    request_id: str
    cut: int = Field(ge=1, description="the cut of the tensor in the body (the last segment run)")
    exits: list[ChainExit] = Field(description=_CHAIN_FIELDS_DOC["exits"])
    segments: list[ChainSegmentRun] = Field(description=_CHAIN_FIELDS_DOC["segments"])
    timing: ChainTiming
    energy: Energy
    load: Load
    emulated: ChainEmulated
    bytes_in: int = Field(ge=0, description=_CHAIN_FIELDS_DOC["bytes_in"])
    bytes_out: int = Field(ge=0, description=_CHAIN_FIELDS_DOC["bytes_out"])


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(max_length=64, description="slm or llm (whichever the tier serves)")
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    length: Literal["short", "long"] | None = Field(
        None, description="the simulator's LM request class; sets tokens and quality"
    )
    stream: bool = Field(False, description="answer NDJSON lines, one per token chunk")
    request_id: str | None = Field(None, max_length=128)
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED,
        description="makes the emulated confidence draw deterministic for (seed, model); "
        "without it the tier's own generator (seeded from jitter_seed) draws",
    )  # fmt: skip


class GenerateTiming(BaseModel):
    queue_ms: float = Field(ge=0, description=_QUEUE_DOC)
    ttft_ms: float = Field(description="emulated time to first token")
    total_ms: float = Field(description="device time, start of service to last token "
                            "(measured hold + send_lead_ms + host_lead_ms)")
    target_ms: float = Field(description="ttft + (tokens - 1) × tpot from the profile")
    send_lead_ms: float = Field(0.0, description="the hold ended this early to cover the "
                                "tier's own response path (learned; 0 for streams)")
    host_lead_ms: float = Field(0.0, ge=0, le=10, description=_HOST_LEAD_DOC)
    service_ms: float


class GenerateResponse(BaseModel):
    tier: str
    model: str
    request_id: str
    text: str = Field(description="deterministic placeholder text (emulated LM)")
    tokens: int
    length: Literal["short", "long"]
    quality: float = Field(description="the simulator's quality value for this model and length")
    confidence: float = Field(
        ge=0.01, le=0.999,
        description="emulated: drawn per request as the teaching simulator does, "
        "N(0.6 + 0.3 × quality, sd 0.1) clipped to [0.01, 0.999]; deterministic for "
        "(seed, model) when the request has a seed",
    )  # fmt: skip
    timing: GenerateTiming
    energy: Energy
    load: Load
    emulated: Emulated


class ErrorItem(BaseModel):
    field: str | None
    msg: str


class ErrorResponse(BaseModel):
    """The error shape of every edgebed HTTP API (``common.httperrors``)."""

    detail: str = Field(description="one line naming the field and what is allowed")
    field: str | None = Field(
        description="the offending field, e.g. image[3][5], model, body, content-length, "
        "x-edgebed-host-lead-ms, path, method")
    errors: list[ErrorItem] = Field(
        min_length=1, description="every problem found (the first is detail/field)")


class ModelInfo(BaseModel):
    name: str
    kind: Literal["vision", "lm"]
    file: str | None
    bytes: int
    dtype: str | None
    device_time: Literal["real", "profile"]
    latency_ms: float | None
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    quality_short: float | None = None
    quality_long: float | None = None
    jitter: dict[str, Any] | None
    batching: dict[str, Any] | None = Field(
        None, description="dynamic batching: max_batch, max_queue_delay_ms, base_ms, per_item_ms")
    emulated: bool


class ChainSegmentInfo(BaseModel):
    index: int = Field(ge=1)
    name: str
    file: str
    input: dict[str, Any] = Field(description="dtype, shape, scale, zero_point, bytes")
    features: dict[str, Any] | None = Field(description="the tensor at the cut after it")
    probabilities: dict[str, Any] | None = Field(description="its exit, if it has one")
    held: bool = Field(description="this node holds (serves) the segment")
    share: float = Field(
        ge=0, le=1, description="its share of the chain's device time (emulated: its measured "
        "median invoke time over the chain's total)")


class ChainInfo(BaseModel):
    name: str
    kind: Literal["split", "exit"]
    base: str = Field(description="the precision of the network: fp32 or int8")
    segments: list[ChainSegmentInfo]
    held: list[int] = Field(description="[first, last]: the segments this node holds")
    latency_ms: float = Field(description="device time of the whole chain (profile mode)")
    jitter: dict[str, Any] | None
    device_time: Literal["real", "profile"]
    emulated: bool


_CLASS_DOC = "the node's hardware class (mcu, edge, cloud, gpu, npu); tier is its name"


class ModelsResponse(BaseModel):
    model_config = ConfigDict(validate_by_alias=True, validate_by_name=True,
                              serialize_by_alias=True)

    tier: str
    node_class: str = Field(alias="class", description=_CLASS_DOC)
    concurrency: int
    queue_limit: int
    memory_bytes: int
    energy_model: str
    energy_factor: float
    on_disconnect: Literal["finish", "abort"] = Field(
        description="what a request whose client disconnects does: finish or abort")
    realtime_holds: bool = Field(description="device-hold threads run with SCHED_FIFO priority")
    models: list[ModelInfo]
    chains: list[ChainInfo] = Field(
        default_factory=list, description="research chains served on /v1/chain")


class Health(BaseModel):
    status: Literal["ok"]
    tier: str


class Readiness(BaseModel):
    ready: bool
    tier: str
    models: list[str]


class Status(Load):
    """``GET /v1/status``: the tier's load now (queue-aware routing reads it) and readiness."""

    model_config = ConfigDict(validate_by_alias=True, validate_by_name=True,
                              serialize_by_alias=True)

    tier: str
    node_class: str = Field(alias="class", description=_CLASS_DOC)
    ready: bool


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        400: "malformed body or HTTP framing (content-length)",
        404: "model (or chain) not served by this tier",
        413: "body too large",
        415: "unsupported content type",
        422: "invalid field (named in 'field')",
        503: "queue full (Retry-After) or not ready",
    }.items()
}
