"""FastAPI dependencies: the app's tier runtime and config (tests: ``app.dependency_overrides``)."""

from __future__ import annotations

from starlette.requests import Request

from services.tier.config import TierConfig
from services.tier.runtime import TierRuntime


# ``async def``: FastAPI would run a plain ``def`` dependency on a worker thread per request.
async def get_runtime(request: Request) -> TierRuntime:
    return request.app.state.runtime  # type: ignore[no-any-return]


async def get_config(request: Request) -> TierConfig:
    return request.app.state.runtime.cfg  # type: ignore[no-any-return]
