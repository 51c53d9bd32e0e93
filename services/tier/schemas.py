"""Request and response shapes of the tier API, as pydantic models (they document the OpenAPI)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from services.tier.inputs import IMAGE_PIXELS, IMAGE_SIDE

MAX_PROMPT_CHARS = 8192
MAX_TOKENS = 4096

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


class InferTiming(BaseModel):
    queue_ms: float = Field(description="real wait for a free device slot")
    compute_ms: float = Field(description="real LiteRT compute on this host")
    emulated_ms: float = Field(
        description="device time: from the start of service (arrival, or the slot hand-over "
        "after a wait) to the end of the hold plus send_lead_ms (profile); real compute (real)")
    target_ms: float = Field(description="device time drawn from the profile (latency + jitter)")
    send_lead_ms: float = Field(
        0.0, description="the hold ended this early to cover the tier's own response path "
        "(learned; 0 in real mode)")
    service_ms: float = Field(description="all time inside the server")


class InferResponse(BaseModel):
    tier: str
    model: str
    request_id: str
    prediction: int = Field(ge=0)
    confidence: float = Field(ge=0, le=1)
    probabilities: list[float]
    timing: InferTiming
    energy: Energy
    emulated: Emulated


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


class GenerateTiming(BaseModel):
    queue_ms: float
    ttft_ms: float = Field(description="emulated time to first token")
    total_ms: float = Field(description="device time, start of service to last token "
                            "(measured hold + send_lead_ms)")
    target_ms: float = Field(description="ttft + (tokens - 1) × tpot from the profile")
    send_lead_ms: float = Field(0.0, description="the hold ended this early to cover the "
                                "tier's own response path (learned)")
    service_ms: float


class GenerateResponse(BaseModel):
    tier: str
    model: str
    request_id: str
    text: str = Field(description="deterministic placeholder text (emulated LM)")
    tokens: int
    length: Literal["short", "long"]
    quality: float = Field(description="the simulator's quality value for this model and length")
    timing: GenerateTiming
    energy: Energy
    emulated: Emulated


class ErrorResponse(BaseModel):
    detail: str
    field: str | None = Field(description="the offending field, e.g. image[3][5], model, body")


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
    emulated: bool


class ModelsResponse(BaseModel):
    tier: str
    concurrency: int
    queue_limit: int
    memory_bytes: int
    energy_model: str
    energy_factor: float
    realtime_holds: bool = Field(description="device-hold threads run with SCHED_FIFO priority")
    models: list[ModelInfo]


class Health(BaseModel):
    status: Literal["ok"]
    tier: str


class Readiness(BaseModel):
    ready: bool
    tier: str
    models: list[str]


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": desc}
    for code, desc in {
        400: "malformed body",
        404: "model not served by this tier",
        413: "body too large",
        415: "unsupported content type",
        422: "invalid field (named in 'field')",
        503: "queue full (Retry-After) or not ready",
    }.items()
}
