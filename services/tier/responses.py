"""The tier's own response classes: a JSON answer that reports when its body was handed to the
server (profile holds' send lead) and the NDJSON stream of an admitted LM request."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from services.tier.disconnect import DisconnectWatch

if TYPE_CHECKING:
    from services.tier.runtime import TierRuntime

# Status of the (never delivered) answer to a client that disconnected: nginx's "client closed
# request". Nothing is written: the server drops a response to a closed connection.
GONE_STATUS = 499


class SentTimedResponse(Response):
    """JSON bytes (or another ``media_type``); after the body is written,
    ``on_sent(time.perf_counter())`` is called.

    The tier ends a profile hold early by the time its answers typically take from the end of
    the hold to the socket (``TierRuntime.observe_send``); this is where that time is measured.
    """

    media_type = "application/json"

    def __init__(
        self,
        content: bytes,
        on_sent: Callable[[float], None] | None = None,
        *,
        headers: dict[str, str] | None = None,
        media_type: str | None = None,
    ) -> None:
        super().__init__(content, headers=headers, media_type=media_type)
        self._on_sent = on_sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await super().__call__(scope, receive, send)
        if self._on_sent is not None:
            self._on_sent(time.perf_counter())


def send_observer(runtime: TierRuntime,
                  hold_end_s: float | None) -> Callable[[float], None] | None:
    """The ``on_sent`` callback feeding ``runtime.observe_send`` for a hold that ended at
    ``hold_end_s`` (None: nothing was held, nothing to learn)."""
    if hold_end_s is None:
        return None
    return lambda t_sent: runtime.observe_send(t_sent - hold_end_s)


class NDJSONStream(StreamingResponse):
    """200 ``application/x-ndjson`` sent at once (the request is already admitted), then the
    lines of ``lines`` as they come (``TierRuntime.stream_lines``, which owns the device slot
    and watches the client through ``watch``). A send that fails marks the client gone, so
    the lines' producer follows ``on_disconnect``; the producer is always run to its end."""

    def __init__(self, lines: AsyncIterator[bytes], watch: DisconnectWatch) -> None:
        super().__init__(lines, media_type="application/x-ndjson")
        self._lines = lines
        self._watch = watch

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._send(send, {"type": "http.response.start", "status": self.status_code,
                                    "headers": self.raw_headers})  # fmt: skip
            async for line in self._lines:
                await self._send(send, {"type": "http.response.body", "body": line,
                                        "more_body": True})  # fmt: skip
            self._watch.close()
            await self._send(send, {"type": "http.response.body", "body": b"",
                                    "more_body": False})  # fmt: skip
        finally:
            self._watch.close()
            aclose = getattr(self._lines, "aclose", None)
            if aclose is not None:
                await aclose()  # releases the slot if the stream was cut short

    async def _send(self, send: Send, message: dict[str, object]) -> None:
        if self._watch.gone:
            return
        try:
            await send(message)  # type: ignore[arg-type]
        except OSError:  # ASGI 2.4 servers raise on a closed connection
            self._watch.gone = True
