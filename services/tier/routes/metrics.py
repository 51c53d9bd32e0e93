"""``GET /metrics``: the app's own Prometheus registry in text format."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from services.tier.deps import get_runtime
from services.tier.runtime import TierRuntime

router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    summary="Prometheus metrics (edgebed_*)",
)
async def metrics(runtime: Annotated[TierRuntime, Depends(get_runtime)]) -> Response:
    return Response(generate_latest(runtime.registry), media_type=CONTENT_TYPE_LATEST)
