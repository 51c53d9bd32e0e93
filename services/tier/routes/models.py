"""``GET /v1/models``: what the tier serves and its device profile."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends

from services.tier.deps import get_runtime
from services.tier.runtime import TierRuntime
from services.tier.schemas import ModelsResponse

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelsResponse, summary="served models and device profile")
async def list_models(runtime: Annotated[TierRuntime, Depends(get_runtime)]) -> ModelsResponse:
    cfg = runtime.cfg
    return ModelsResponse.model_validate(
        {
            "tier": cfg.tier,
            "class": cfg.node_class,
            "concurrency": cfg.concurrency,
            "queue_limit": cfg.queue_limit,
            "memory_bytes": cfg.memory_bytes,
            "energy_model": cfg.energy_model,
            "energy_factor": cfg.energy_factor,
            "on_disconnect": cfg.on_disconnect,
            "realtime_holds": runtime.realtime_holds,
            "models": list(runtime.model_info.values()),
            "chains": [chain.info() for chain in runtime.chains.values()],
        }
    )
