"""``POST /v1/generate``: the emulated SLM/LLM (token timing, deterministic text, quality,
confidence)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends
from pydantic_core import to_json
from starlette.requests import Request
from starlette.responses import Response

from services.tier import lm
from services.tier.deps import get_runtime
from services.tier.disconnect import ClientGone, DisconnectWatch
from services.tier.errors import ApiError
from services.tier.leads import HOST_LEAD_HEADER, HOST_LEAD_PARAMETER, parse_host_lead_ms
from services.tier.responses import GONE_STATUS, NDJSONStream, SentTimedResponse, send_observer
from services.tier.runtime import TierRuntime
from services.tier.schemas import ERRORS, GenerateRequest, GenerateResponse

router = APIRouter(prefix="/v1", tags=["lm (emulated)"])

_STREAM_DOC = {
    "description": "the answer; with stream=true NDJSON lines {tokens, index, t_ms} then the "
    "final answer (GenerateResponse) with done=true. A stream is admitted (device slot taken, "
    "or queued for it, or 503) before this status is sent",
    "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
}


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={**ERRORS, 200: _STREAM_DOC},
    openapi_extra={"parameters": [HOST_LEAD_PARAMETER]},
    summary="emulated SLM/LLM answer (simulator timing, quality and confidence; placeholder text)",
)
async def generate(
    req: GenerateRequest, request: Request, runtime: Annotated[TierRuntime, Depends(get_runtime)]
) -> Response:
    # Service starts here, after FastAPI parsed and validated the body: on a fresh process the
    # first parse alone can take longer than a short LM target (the fixtures' 3 ms).
    t_arrive = time.perf_counter()
    watch: DisconnectWatch | None = None
    try:
        host_lead_ms = parse_host_lead_ms(request.headers.get(HOST_LEAD_HEADER))
        runtime.check_model(req.model, "lm")
        p = lm.plan(runtime.cfg.lm[req.model], req.max_tokens, req.length)
        watch = DisconnectWatch(request.receive)
        if req.stream:
            words = lm.generate_tokens(req.model, req.prompt, p.tokens)
            adm = await runtime.admit(req.model, p.total_ms / 1000.0, t_arrive, watch)
            lines = runtime.stream_lines(
                adm, p, words, req.request_id,
                seed=req.seed, watch=watch, host_lead_ms=host_lead_ms,
            )  # fmt: skip
            stream, watch = NDJSONStream(lines, watch), None  # the stream owns the watch now
            return stream
        result, hold_end = await runtime.generate(
            req.model, p, req.request_id, t_arrive,
            prompt=req.prompt, seed=req.seed, watch=watch, host_lead_ms=host_lead_ms,
        )  # fmt: skip
    except ClientGone:
        return Response(status_code=GONE_STATUS)  # nobody is listening (counted as abandoned)
    except ApiError as exc:
        if exc.status_code not in (404, 503):
            runtime.metrics.count(req.model, "client_error")
        raise
    except Exception:
        runtime.metrics.count(req.model, "server_error")
        raise
    finally:
        if watch is not None:
            watch.close()
    return SentTimedResponse(to_json(result), send_observer(runtime, hold_end))
