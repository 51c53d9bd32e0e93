"""``POST /v1/calibrate``: an empty profile request, for measuring the host's HTTP overhead.

The orchestrator sends a few of these on the direct path before each pass
(``orchestrator/calibrate.py``). Each one takes the path of ``/v1/infer`` — the same body size,
the same arrival stamp, a device hold of ``hold_ms`` ended early by the learned send lead, an
answer of the same size — but runs no model, takes no device slot and is not counted as an
inference request, so the tier's request counters still equal the orchestrator's attempts.
latency − ``timing.emulated_ms`` is then what the client, the loopback path, HTTP framing and
process wake-ups add to every request.
"""

from __future__ import annotations

from fastapi import APIRouter
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response

from services.tier.errors import ApiError
from services.tier.intake import arrival_s
from services.tier.responses import SentTimedResponse, send_observer
from services.tier.runtime import TierRuntime
from services.tier.schemas import ERRORS

router = APIRouter(prefix="/v1", tags=["calibration"])
MAX_HOLD_MS = 100.0
_PADDING = [0.1] * 10  # an answer the size of /v1/infer's (ten probabilities)

_DOC = {
    "parameters": [
        {"name": "hold_ms", "in": "query", "required": False,
         "schema": {"type": "number", "minimum": 0, "maximum": MAX_HOLD_MS, "default": 5},
         "description": "emulated device time to hold the request for"},
    ],
    "requestBody": {"required": False, "content": {"application/octet-stream": {
        "schema": {"type": "string", "format": "binary"}}}},
    "responses": {"200": {"description": "timing of the held request",
                          "content": {"application/json": {"schema": {"type": "object"}}}}},
}


def parse_hold_ms(text: str | None) -> float:
    if text is None:
        return 5.0
    try:
        value = float(text)
    except ValueError:
        raise ApiError(422, "hold_ms", f"hold_ms: must be a number of ms within 0..{MAX_HOLD_MS:g}, "
                       f"got {text[:40]!r}") from None
    if not 0.0 <= value <= MAX_HOLD_MS:  # also false for nan
        raise ApiError(422, "hold_ms", f"hold_ms: must be within 0..{MAX_HOLD_MS:g}, got {text[:40]}")
    return value


@router.post("/calibrate", summary="an empty profile request (host overhead calibration)",
             openapi_extra=_DOC, response_class=Response,
             responses={code: ERRORS[code] for code in (400, 413, 422)})
async def calibrate(request: Request) -> Response:
    t_arrive = arrival_s(request.scope)
    runtime: TierRuntime = request.app.state.runtime
    hold_ms = parse_hold_ms(request.query_params.get("hold_ms"))
    await request.body()  # read like /v1/infer's body (at most max_body_bytes)
    end_s = t_arrive + hold_ms / 1000.0
    leads = runtime.leads(hold_ms / 1000.0, 0.0, end_s)
    t_end = await runtime.hold(end_s - leads.total_s)
    held_end = t_end if t_end is not None else end_s
    answer = {
        "tier": runtime.cfg.tier,
        "calibration": True,
        "probabilities": _PADDING,
        "timing": {"emulated_ms": (held_end - t_arrive + leads.total_s) * 1000.0,
                   "target_ms": hold_ms, "send_lead_ms": leads.send_s * 1000.0},
    }
    return SentTimedResponse(to_json(answer), send_observer(runtime, t_end))
