"""Liveness, readiness and load probes."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from services.tier.deps import get_runtime
from services.tier.runtime import TierRuntime
from services.tier.schemas import Health, Readiness, Status

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="process is alive")
async def healthz(runtime: Annotated[TierRuntime, Depends(get_runtime)]) -> Health:
    return Health(status="ok", tier=runtime.cfg.tier)


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "models not loaded yet"}},
    summary="200 once every model is loaded",
)
async def readyz(runtime: Annotated[TierRuntime, Depends(get_runtime)]) -> JSONResponse:
    body = Readiness(ready=runtime.ready, tier=runtime.cfg.tier, models=runtime.cfg.served_models)
    return JSONResponse(body.model_dump(), status_code=200 if runtime.ready else 503)


@router.get(
    "/v1/status",
    response_model=Status,
    summary="the tier's load now (queue depth, requests in service) and readiness",
)
async def status(request: Request) -> Response:
    # Also mounted as a plain Starlette route (app.py): polled often, so no dependency solving.
    runtime: TierRuntime = request.app.state.runtime
    body = {"tier": runtime.cfg.tier, "class": runtime.cfg.node_class, "ready": runtime.ready,
            **runtime.current_load()}  # fmt: skip
    return JSONResponse(body)
