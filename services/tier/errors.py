"""Client-facing errors: one exception type and the handlers that answer every tier error in the
shared edgebed shape (``common.httperrors.error_body``: ``{"detail", "field", "errors"}``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from common.httperrors import error_bytes

ErrorItems = Sequence[Mapping[str, Any]]


class ApiError(Exception):
    """An error answered as ``{"detail": message, "field": field, "errors": [...]}`` with
    ``status_code``; ``errors`` lists every problem when there are several."""

    def __init__(
        self,
        status_code: int,
        field: str | None,
        message: str,
        headers: dict[str, str] | None = None,
        errors: ErrorItems | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.field = field
        self.message = message
        self.headers = headers or {}
        self.errors = errors


def error_response(
    status_code: int,
    field: str | None,
    message: str,
    headers: dict[str, str] | None = None,
    errors: ErrorItems | None = None,
) -> Response:
    return Response(
        error_bytes(field, message, errors),
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
    return error_response(exc.status_code, exc.field, exc.message, exc.headers, exc.errors)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors()) or [{"loc": ("body",), "msg": "invalid request", "type": ""}]
    first: Any = errors[0]
    if first.get("type") == "json_invalid":
        reason = first.get("ctx", {}).get("error", first["msg"])
        return error_response(400, "body", f"body: malformed JSON: {reason}")
    items = []
    for err in errors:
        field = _loc_to_field(err.get("loc", ("body",)))
        if err.get("type") == "model_attributes_type":
            field = "body"
        items.append({"field": field, "msg": f"{field}: {err.get('msg', 'invalid')}"})
    return error_response(422, items[0]["field"], items[0]["msg"], errors=items)


def _paths(request: Request) -> list[str]:
    """The API's paths, from its (cached) OpenAPI document."""
    openapi = getattr(request.app, "openapi", None)
    return sorted(openapi().get("paths", {})) if callable(openapi) else []


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    path, method = request.url.path, request.method
    if exc.status_code == 404:
        message = f"path: {path} not found; paths: {', '.join(_paths(request))}"
        return error_response(404, "path", message, headers)
    if exc.status_code == 405:
        allowed = headers.get("Allow") or headers.get("allow") or ""
        message = f"method: {method} not allowed on {path}; allowed: {allowed}"
        return error_response(405, "method", message, headers)
    if exc.status_code == 400:  # FastAPI could not read the JSON body
        cause = exc.__cause__
        if isinstance(cause, RecursionError):
            return error_response(400, "body", "body: JSON nested too deeply")
        if isinstance(cause, UnicodeDecodeError):
            return error_response(400, "body", f"body: JSON must be UTF-8 text ({cause.reason})")
        return error_response(400, "body", f"body: {exc.detail}")
    return error_response(exc.status_code, None, str(exc.detail), headers)


async def _server_error(_: Request, exc: Exception) -> Response:
    return error_response(500, None, f"internal error ({type(exc).__name__}); see the tier's log")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _server_error)


def json_error(status_code: int, field: str | None, message: str) -> tuple[dict[str, Any], bytes]:
    """An error as ASGI ``http.response.start`` message and body, for code below the app's
    exception handlers (middleware, the HTTP protocol)."""
    body = error_bytes(field, message)
    start = {
        "type": "http.response.start",
        "status": status_code,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
    return start, body

