"""Client-facing errors: one exception type and handlers that answer JSON naming the bad field."""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response


class ApiError(Exception):
    """An error answered as ``{"detail": message, "field": field}`` with ``status_code``."""

    def __init__(
        self,
        status_code: int,
        field: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.field = field
        self.message = message
        self.headers = headers or {}


def error_response(
    status_code: int, field: str | None, message: str, headers: dict[str, str] | None = None
) -> Response:
    body = {"detail": message, "field": field}
    return Response(
        json.dumps(body).encode(),
        status_code=status_code,
        media_type="application/json",
        headers=headers,
    )


def _loc_to_field(loc: Any) -> str:
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header"):
        parts = parts[1:]
    field = ""
    for p in parts:
        field += f"[{p}]" if isinstance(p, int) else (f".{p}" if field else str(p))
    return field or "body"


async def _api_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status_code, exc.field, exc.message, exc.headers)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first: Any = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": ""}
    field = _loc_to_field(first.get("loc", ("body",)))
    if first.get("type") == "json_invalid":
        return error_response(
            400, "body", f"body: malformed JSON: {first.get('ctx', {}).get('error', first['msg'])}"
        )
    if first.get("type") == "model_attributes_type" or field == "body":
        return error_response(422, "body", f"body: {first['msg']}")
    return error_response(422, field, f"{field}: {first['msg']}")


async def _http_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, None, str(exc.detail), dict(exc.headers or {}))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
