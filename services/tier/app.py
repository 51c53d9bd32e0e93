"""``create_app(tier_config)``: the FastAPI app of one tier (a tier is configuration, not code)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.routing import Route

from services.tier.config import TierConfig
from services.tier.errors import install_error_handlers
from services.tier.intake import RequestIntake
from services.tier.metrics import UNKNOWN_MODEL
from services.tier.routes import calibrate, chain, generate, health, infer, metrics, models
from services.tier.runtime import TierRuntime
from services.tier.schemas import ChainTensorAnswer

DESCRIPTION = (
    "One edgebed tier: real LiteRT inference on MNIST digits; device time (profile mode), "
    "energy and the SLM/LLM are **emulated** and labelled so in every answer."
)


def create_app(
    tier_config: TierConfig,
    *,
    models_dir: Path | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the tier app; raises TierConfigError (missing model, memory budget) before serving."""
    runtime = TierRuntime(tier_config, models_dir=models_dir, registry=registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runtime.load()
        try:
            yield
        finally:
            runtime.close()

    app = FastAPI(
        title=f"edgebed tier: {tier_config.tier}",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    # Arrival stamped and bodies bounded (413 / 400 content-length) before any route runs.
    app.add_middleware(
        RequestIntake,
        max_body_bytes=tier_config.max_body_bytes,
        on_refused=lambda: runtime.metrics.count(UNKNOWN_MODEL, "client_error"),
    )
    for router in (health.router, infer.router, chain.router, generate.router, models.router,
                   metrics.router, calibrate.router):
        app.include_router(router)
    # The hot paths: /v1/infer and /v1/chain read their query, headers and body by hand, and
    # /v1/status needs nothing, so they are also mounted as plain Starlette routes ahead of
    # FastAPI's (which stay for the OpenAPI document); this skips FastAPI's per-request
    # dependency solving, ~20 % of a request's CPU.
    app.router.routes.insert(0, Route("/v1/infer", infer.infer, methods=["POST"]))
    app.router.routes.insert(0, Route("/v1/chain", chain.chain, methods=["POST"]))
    app.router.routes.insert(0, Route("/v1/status", health.status, methods=["GET"]))
    app.router.routes.insert(0, Route("/v1/calibrate", calibrate.calibrate, methods=["POST"]))
    _document_served_models(app, tier_config)
    return app


def _document_served_models(app: FastAPI, cfg: TierConfig) -> None:
    """Publish this tier's model and chain names as enums in its OpenAPI (requests outside get
    404)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        doc = build()
        # a tier without vision (or LM) models leaves that schema open: every name is a 404
        # (an empty enum would be a schema nothing satisfies)
        vision, lms = sorted(cfg.models), sorted(cfg.lm)
        op = doc["paths"]["/v1/infer"]["post"]
        if vision:
            for param in op.get("parameters", []):
                if param["name"] == "model":
                    param["schema"] = {"type": "string", "enum": vision}
            body = op["requestBody"]["content"]["application/json"]["schema"]
            body["properties"]["model"]["enum"] = vision
        gen = doc["components"]["schemas"].get("GenerateRequest")
        if gen is not None and lms:
            gen["properties"]["model"]["enum"] = lms
        if cfg.chains:
            for param in doc["paths"]["/v1/chain"]["post"].get("parameters", []):
                if param["name"] == "chain":
                    param["schema"] = {"type": "string", "enum": sorted(cfg.chains)}
        # the x-edgebed-answer header's JSON (its parts are ChainResponse's, already listed)
        answer = ChainTensorAnswer.model_json_schema(ref_template="#/components/schemas/{model}")
        answer.pop("$defs", None)
        doc["components"]["schemas"][ChainTensorAnswer.__name__] = answer
        app.openapi_schema = doc
        return doc

    app.openapi = openapi  # type: ignore[method-assign]
