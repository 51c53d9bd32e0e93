"""The tier's request intake, an ASGI middleware in front of every route: it stamps each
request's arrival (the start of its device time when a slot is free) and bounds its body: 413
before reading a body whose ``Content-Length`` exceeds ``max_body_bytes`` and as soon as a
chunked body does, 400 for a ``Content-Length`` that is not a byte count. The body is read
here once, so no route ever holds more than the limit."""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.tier.errors import json_error

ARRIVAL_KEY = "edgebed.t_arrive"  # scope key: time.perf_counter() when the request arrived


def arrival_s(scope: Scope) -> float:
    """When the request arrived (now, for a request that did not pass the intake)."""
    t = scope.get(ARRIVAL_KEY)
    return float(t) if t is not None else time.perf_counter()


class RequestIntake:
    """Wraps the tier app. Bodies within the limit are passed on as one ``http.request``
    message; later ``receive`` calls go to the server (disconnect detection)."""

    def __init__(
        self,
        app: ASGIApp,
        max_body_bytes: int,
        on_refused: Callable[[], None] | None = None,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.on_refused = on_refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope[ARRIVAL_KEY] = time.perf_counter()
        limit = self.max_body_bytes
        lengths = {v.strip() for k, v in scope["headers"] if k.lower() == b"content-length"}
        if lengths:
            value = lengths.pop()
            if lengths or not value.isdigit():
                got = value.decode("latin-1")[:32] if not lengths else "several values"
                await self._refuse(
                    send, 400, "content-length",
                    f"content-length: must be one non-negative integer (bytes), got {got!r}",
                )  # fmt: skip
                return
            if int(value) > limit:
                await self._refuse(send, 413, "body", _too_large(limit, int(value)))
                return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # client gone before its body arrived
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await self._refuse(send, 413, "body", _too_large(limit, None))
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send, status: int, field: str, message: str) -> None:
        if self.on_refused is not None:
            self.on_refused()
        start, body = json_error(status, field, message)
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})


def _too_large(limit: int, declared: int | None) -> str:
    size = f"{declared} bytes" if declared is not None else "more bytes"
    return f"body: {size} exceeds the limit of {limit} bytes (max_body_bytes)"
