"""``POST /v1/generate``: the emulated SLM/LLM (token timing, deterministic text, quality)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends
from pydantic_core import to_json
from starlette.responses import Response, StreamingResponse

from services.tier import lm
from services.tier.deps import get_runtime
from services.tier.errors import ApiError
from services.tier.responses import SentTimedResponse, send_observer
from services.tier.runtime import TierRuntime
from services.tier.schemas import ERRORS, GenerateRequest, GenerateResponse

router = APIRouter(prefix="/v1", tags=["lm (emulated)"])

STREAM_CHUNK_MS = 5.0  # tokens closer together than this go out in one NDJSON line

_STREAM_DOC = {
    "description": "the answer; with stream=true NDJSON lines {tokens, index, t_ms} then the "
    "final answer with done=true",
    "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
}


@router.post(
    "/generate",
    response_model=GenerateResponse,
    responses={**ERRORS, 200: _STREAM_DOC},
    summary="emulated SLM/LLM answer (simulator timing and quality; placeholder text)",
)
async def generate(
    req: GenerateRequest, runtime: Annotated[TierRuntime, Depends(get_runtime)]
) -> Response:
    t_arrive = time.perf_counter()
    try:
        if req.stream:
            return _stream(req, runtime, t_arrive)
        result, hold_end = await runtime.generate(
            req.model, req.prompt, req.max_tokens, req.length, req.request_id, t_arrive
        )
    except ApiError as exc:
        if exc.status_code not in (404, 503):
            runtime.metrics.count(req.model, "client_error")
        raise
    except Exception:
        runtime.metrics.count(req.model, "server_error")
        raise
    return SentTimedResponse(to_json(result), send_observer(runtime, hold_end))


def _stream(req: GenerateRequest, runtime: TierRuntime, t_arrive: float) -> StreamingResponse:
    runtime.check_model(req.model, "lm")
    slots = runtime.slots
    if not slots.try_acquire_possible() and slots.waiting >= slots.queue_limit:
        runtime.metrics.count(req.model, "queue_full")
        raise ApiError(
            503, "model", f"tier {runtime.cfg.tier} is busy; retry later",
            headers={"Retry-After": str(runtime.retry_after_s())},
        )  # fmt: skip
    p = lm.plan(runtime.cfg.lm[req.model], req.max_tokens, req.length)
    words = lm.generate_tokens(req.model, req.prompt, p.tokens)
    times_ms = lm.token_times_ms(p)

    async def lines() -> AsyncIterator[bytes]:
        async with runtime.slot(req.model, t_arrive) as (_, queue_s, t_start):
            i = 0
            while i < p.tokens:
                j = int(np.searchsorted(times_ms, times_ms[i] + STREAM_CHUNK_MS, side="right"))
                t_ms = float(times_ms[j - 1])
                await runtime.hold(t_start + t_ms / 1000.0)
                chunk = {"tokens": words[i:j], "index": i, "t_ms": t_ms}
                yield (json.dumps(chunk) + "\n").encode()
                i = j
            held_s = time.perf_counter() - t_start
        result = runtime.lm_result(req.model, p, words, req.request_id, queue_s, held_s, t_arrive)
        yield (json.dumps({**result, "done": True}) + "\n").encode()

    return StreamingResponse(lines(), media_type="application/x-ndjson")
