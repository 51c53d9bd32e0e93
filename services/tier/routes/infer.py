"""``POST /v1/infer``: classify one 28×28 image (JSON or 784 raw bytes)."""

from __future__ import annotations

import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query
from starlette.requests import Request
from starlette.responses import Response

from services.tier.deps import get_runtime
from services.tier.errors import ApiError
from services.tier.inputs import (
    BINARY_TYPES,
    IMAGE_PIXELS,
    decode_binary,
    decode_json,
    media_type,
    read_body_limited,
)
from services.tier.runtime import TierRuntime
from services.tier.schemas import ERRORS, InferRequest, InferResponse

router = APIRouter(prefix="/v1", tags=["inference"])

_BODY_DOC = {
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
    }
}


@router.post(
    "/infer",
    response_model=InferResponse,
    responses=ERRORS,
    openapi_extra=_BODY_DOC,
    summary="classify one 28×28 image with a served LiteRT model",
)
async def infer(
    request: Request,
    runtime: Annotated[TierRuntime, Depends(get_runtime)],
    model: Annotated[str | None, Query(max_length=64, description="model (binary bodies)")] = None,
    x_request_id: Annotated[str | None, Header(max_length=128)] = None,
) -> Response:
    t_arrive = time.perf_counter()
    name = model or "unknown"
    try:
        body = await read_body_limited(request, runtime.cfg.max_body_bytes)
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
        result = await runtime.infer(inp.model, inp.image, inp.request_id or x_request_id, t_arrive)
    except ApiError as exc:
        if exc.status_code not in (404, 503):
            runtime.metrics.count(name, "client_error")
        raise
    except Exception:
        runtime.metrics.count(name, "server_error")
        raise
    return Response(json.dumps(result).encode(), media_type="application/json")
