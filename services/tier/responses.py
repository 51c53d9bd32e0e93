"""A JSON response that reports when its body was handed to the server (profile holds' send lead)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

if TYPE_CHECKING:
    from services.tier.runtime import TierRuntime


class SentTimedResponse(Response):
    """JSON bytes; after the body is written, ``on_sent(time.perf_counter())`` is called.

    The tier ends a profile hold early by the time its answers typically take from the end of
    the hold to the socket (``TierRuntime.observe_send``); this is where that time is measured.
    """

    media_type = "application/json"

    def __init__(self, content: bytes, on_sent: Callable[[float], None] | None = None) -> None:
        super().__init__(content)
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
