"""``POST /v1/infer``: classify one 28×28 image (JSON or 784 raw bytes)."""

from __future__ import annotations

from fastapi import APIRouter
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response

from services.tier.disconnect import ClientGone, DisconnectWatch
from services.tier.errors import ApiError
from services.tier.inputs import (
    BINARY_TYPES,
    IMAGE_PIXELS,
    decode_binary,
    decode_json,
    media_type,
)
from services.tier.intake import arrival_s
from services.tier.leads import HOST_LEAD_HEADER, HOST_LEAD_PARAMETER, parse_host_lead_ms
from services.tier.params import TOP_K_PARAMETER, top_k, top_k_param
from services.tier.responses import GONE_STATUS, SentTimedResponse, send_observer
from services.tier.runtime import TierRuntime
from services.tier.schemas import ERRORS, InferRequest, InferResponse

router = APIRouter(prefix="/v1", tags=["inference"])

# Query and header are read by hand and documented here: FastAPI's per-request parameter
# solving costs more than the LiteRT invoke (see bench/bench_tier.py).
_BODY_DOC = {
    "parameters": [
        {
            "name": "model",
            "in": "query",
            "required": False,
            "description": "model (required with a binary body)",
            "schema": {"type": "string", "maxLength": 64},
        },
        {
            "name": "x-request-id",
            "in": "header",
            "required": False,
            "schema": {"type": "string", "maxLength": 128},
        },
        HOST_LEAD_PARAMETER,
        TOP_K_PARAMETER,
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": InferRequest.model_json_schema()},
            "application/octet-stream": {
                "schema": {
                    "type": "string",
                    "format": "binary",
                    "minLength": IMAGE_PIXELS,
                    "maxLength": IMAGE_PIXELS,
                    "description": "784 raw bytes: 28×28 uint8, row-major; model in ?model=",
                }
            },
        },
    },
}


@router.post(
    "/infer",
    response_model=InferResponse,
    responses=ERRORS,
    openapi_extra=_BODY_DOC,
    summary="classify one 28×28 image with a served LiteRT model",
)
async def infer(request: Request) -> Response:
    t_arrive = arrival_s(request.scope)
    runtime: TierRuntime = request.app.state.runtime
    model = request.query_params.get("model")
    x_request_id = request.headers.get("x-request-id")
    name = model or "unknown"
    watch: DisconnectWatch | None = None
    try:
        if model is not None and len(model) > 64:
            raise ApiError(422, "model", "model: at most 64 characters")
        if x_request_id is not None and len(x_request_id) > 128:
            raise ApiError(422, "x-request-id", "x-request-id: at most 128 characters")
        host_lead_ms = parse_host_lead_ms(request.headers.get(HOST_LEAD_HEADER))
        k = top_k_param(request.query_params.get("top_k"))
        body = await request.body()  # at most max_body_bytes (RequestIntake)
        kind = media_type(request)
        if kind in BINARY_TYPES:
            inp = decode_binary(body, model, x_request_id)
        elif kind in ("", "application/json") or kind.endswith("+json"):
            inp = decode_json(body, model)
        else:
            raise ApiError(
                415,
                "content-type",
                f"content-type: {kind!r} not supported; use application/json or "
                "application/octet-stream",
            )
        name = inp.model
        watch = DisconnectWatch(request.receive)
        result, hold_end = await runtime.infer(
            inp.model, inp.image, inp.request_id or x_request_id, t_arrive,
            watch=watch, host_lead_ms=host_lead_ms,
        )  # fmt: skip
    except ClientGone:
        return Response(status_code=GONE_STATUS)  # nobody is listening (counted as abandoned)
    except ApiError as exc:
        if exc.status_code not in (404, 503):
            runtime.metrics.count(name, "client_error")
        raise
    except Exception:
        runtime.metrics.count(name, "server_error")
        raise
    finally:
        if watch is not None:
            watch.close()
    if k is not None:
        result["top_k"] = top_k(result["probabilities"], k)
    return SentTimedResponse(to_json(result), send_observer(runtime, hold_end))
