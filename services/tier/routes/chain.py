"""``POST /v1/chain``: run segments of a research chain on a raw image or a cut tensor.

The body is the tensor at cut ``start`` (0: the 784-byte image); the tier runs segments
``start+1..stop`` it holds, stopping at an exit that passes ``threshold``, and answers JSON (an
exit answered) or the tensor at its last cut (binary, the answer's other fields in the
``x-edgebed-answer`` header) for the next node to continue from. Contract: docs/api.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import numpy as np
from fastapi import APIRouter
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response

from models.chain import CutTensor
from services.tier.chains import CRITERIA, Criterion, ExitRule
from services.tier.disconnect import ClientGone, DisconnectWatch
from services.tier.errors import ApiError
from services.tier.inputs import (
    BINARY_TYPES,
    DTYPE_HEADER,
    IMAGE_PIXELS,
    SCALE_HEADER,
    SHAPE_HEADER,
    TENSOR_TYPE,
    ZERO_POINT_HEADER,
    decode_image_bytes,
    decode_tensor,
    media_type,
    tensor_headers,
)
from services.tier.intake import arrival_s
from services.tier.leads import HOST_LEAD_HEADER, HOST_LEAD_PARAMETER, parse_host_lead_ms
from services.tier.params import (
    TOP_K_PARAMETER,
    choice_param,
    top_k,
    top_k_param,
    unit_param,
)
from services.tier.responses import GONE_STATUS, SentTimedResponse, send_observer
from services.tier.runtime import TierRuntime
from services.tier.schemas import ERRORS, ChainResponse, ChainTensorAnswer

router = APIRouter(prefix="/v1", tags=["chains"])

ANSWER_HEADER = "x-edgebed-answer"
OUTPUTS = ("auto", "tensor")


def _query(name: str, description: str, schema: dict, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "description": description,
            "schema": schema}  # fmt: skip


def _header(name: str, description: str, schema: dict) -> dict:
    return {"name": name, "in": "header", "required": False, "description": description,
            "schema": schema}  # fmt: skip


_TENSOR_HEADERS = {
    DTYPE_HEADER: "dtype of the tensor: int8, uint8 or float32",
    SHAPE_HEADER: "its shape, comma-separated, e.g. 1,13,13,8",
    SCALE_HEADER: "int8/uint8: its quantization scale",
    ZERO_POINT_HEADER: "int8/uint8: its quantization zero point",
}

# Query and headers are read by hand (as /v1/infer's) and documented here.
_DOC = {
    "parameters": [
        _query("chain", "the chain (served chains: GET /v1/models)",
               {"type": "string", "maxLength": 64}, required=True),
        _query("start", "the cut the body is at (0: the raw image); segment start+1 runs first",
               {"type": "integer", "minimum": 0, "default": 0}),
        _query("stop", "the last segment to run (default: the chain's last)",
               {"type": "integer", "minimum": 1}),
        _query("threshold", "early exit: stop at the first exit that passes it "
               "(see criterion)", {"type": "number", "minimum": 0, "maximum": 1}),
        _query("criterion", "confidence: an exit passes when its top probability is >= "
               "threshold; entropy: when its entropy / ln(10) is <= threshold",
               {"type": "string", "enum": list(CRITERIA), "default": "confidence"}),
        _query("output", "auto: JSON when an exit answers, else the tensor at the last cut; "
               "tensor: always the tensor (needs a cut after the last segment run)",
               {"type": "string", "enum": list(OUTPUTS), "default": "auto"}),
        TOP_K_PARAMETER,
        _header("x-request-id", "echoed as request_id", {"type": "string", "maxLength": 128}),
        HOST_LEAD_PARAMETER,
        *(_header(h, f"with a tensor body (start > 0): {d}", {"type": "string",
                                                              "maxLength": 64})
          for h, d in _TENSOR_HEADERS.items()),
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/octet-stream": {"schema": {
                "type": "string", "format": "binary", "minLength": IMAGE_PIXELS,
                "maxLength": IMAGE_PIXELS,
                "description": "start 0: the 784 raw bytes of a 28×28 uint8 image, row-major"}},
            TENSOR_TYPE: {"schema": {
                "type": "string", "format": "binary",
                "description": "start > 0: the tensor at cut start, raw bytes framed by the "
                "x-edgebed-dtype/-shape/-scale/-zero-point headers"}},
        },
    },
    "responses": {
        "200": {
            "description": "JSON when an exit answered, else the tensor at the cut after the "
            "last segment run (headers: its framing and x-edgebed-answer)",
            "headers": {
                ANSWER_HEADER: {
                    "description": "tensor answers: the answer as compact JSON (schema: "
                    f"#/components/schemas/{ChainTensorAnswer.__name__})",
                    "schema": {"type": "string"},
                },
                **{h: {"description": f"tensor answers: {d}", "schema": {"type": "string"}}
                   for h, d in _TENSOR_HEADERS.items()},
            },
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/ChainResponse"}},
                TENSOR_TYPE: {"schema": {"type": "string", "format": "binary"}},
            },
        },
    },
}


@router.post(
    "/chain",
    response_model=ChainResponse,
    responses=ERRORS,
    openapi_extra=_DOC,
    summary="run segments of a research chain (split computing, early exit)",
)
async def chain(request: Request) -> Response:
    t_arrive = arrival_s(request.scope)
    runtime: TierRuntime = request.app.state.runtime
    query = request.query_params
    name = "unknown"  # metric label until the chain is known to be served
    watch: DisconnectWatch | None = None
    try:
        chain_name = query.get("chain")
        if chain_name is None or len(chain_name) > 64:
            raise ApiError(422, "chain", "chain: required, at most 64 characters; chains here: "
                           f"{', '.join(runtime.chains) or 'none'}")  # fmt: skip
        served = runtime.check_chain(chain_name)
        name = chain_name
        start, stop = served.parse_range(query.get("start"), query.get("stop"))
        criterion: Criterion = choice_param(  # type: ignore[assignment]
            "criterion", query.get("criterion"), CRITERIA, "confidence")
        rule = ExitRule(unit_param("threshold", query.get("threshold")), criterion)
        output = choice_param("output", query.get("output"), OUTPUTS, "auto")
        k = top_k_param(query.get("top_k"))
        if output == "tensor" and not served.has_features(stop):
            raise ApiError(422, "output", f"output: tensor needs a cut after segment {stop} of "
                           f"{chain_name}, which has none; use stop < {stop} or output auto")
        x_request_id = request.headers.get("x-request-id")
        if x_request_id is not None and len(x_request_id) > 128:
            raise ApiError(422, "x-request-id", "x-request-id: at most 128 characters")
        host_lead_ms = parse_host_lead_ms(request.headers.get(HOST_LEAD_HEADER))
        body = await request.body()  # at most max_body_bytes (RequestIntake)
        kind = media_type(request)
        source: np.ndarray | CutTensor
        if start == 0:
            if kind not in BINARY_TYPES:
                raise ApiError(415, "content-type", f"content-type: start 0 takes the raw image "
                               f"as application/octet-stream, got {kind[:64]!r}")  # fmt: skip
            source = decode_image_bytes(body)
        else:
            if kind != TENSOR_TYPE:
                raise ApiError(415, "content-type", f"content-type: start {start} takes the "
                               f"tensor at cut {start} as {TENSOR_TYPE}, got {kind[:64]!r}")
            source = decode_tensor(body, request.headers, served.input_meta(start + 1),
                                   f"segment {start + 1} of {chain_name}")  # fmt: skip
        watch = DisconnectWatch(request.receive)
        result = await runtime.run_chain(
            chain_name, source, start, stop, rule, output,
            x_request_id, t_arrive, bytes_in=len(body), watch=watch, host_lead_ms=host_lead_ms,
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
    observer = send_observer(runtime, result.t_end)
    if result.tensor is None:
        answer = result.answer
        if k is not None:
            answer["top_k"] = top_k(answer["probabilities"], k)
        return SentTimedResponse(to_json(answer), observer)
    return tensor_answer(result.tensor, result.answer, observer)


def tensor_answer(tensor: CutTensor, answer: dict[str, Any],
                  observer: Callable[[float], None] | None) -> Response:
    """The binary answer: the tensor's bytes, its framing headers, the answer as a header."""
    headers = {**tensor_headers(tensor.meta),
               ANSWER_HEADER: json.dumps(answer, separators=(",", ":"))}  # fmt: skip
    return SentTimedResponse(tensor.data, observer, headers=headers, media_type=TENSOR_TYPE)
