"""Notice a client that went away mid-request (ASGI ``http.disconnect``) while its request waits
for a device slot or is held, concurrently with that wait or hold."""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from starlette.types import Receive

Action = Literal["finished", "aborted"]


class ClientGone(Exception):
    """The client of a request disconnected; ``action`` is what the tier did about it:
    ``finished`` (served it anyway, ``on_disconnect: finish``) or ``aborted``."""

    def __init__(self, action: Action) -> None:
        super().__init__(f"client disconnected; request {action}")
        self.action = action


class DisconnectWatch:
    """Listens on the request's ASGI ``receive`` (after its body was read) for ``http.disconnect``.

    The listening task starts on the first :meth:`first` call, so requests that neither wait
    nor hold (real mode, a free slot) cost nothing. Call :meth:`close` when the request is done.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[None] | None = None
        self.gone = False

    async def _listen(self) -> None:
        try:
            while True:
                message = await self._receive()
                if message["type"] == "http.disconnect":
                    self.gone = True
                    return
        except Exception:  # a server that cannot tell: treat the client as present
            return

    async def first(self, fut: asyncio.Future[Any]) -> bool:
        """Wait until ``fut`` is done (True) or the client has gone (False; ``fut`` is left
        running: the caller decides). Returns at once when the client is known to be gone."""
        if self.gone:
            return fut.done()
        if self._task is None:
            self._task = asyncio.ensure_future(self._listen())
        if not self._task.done():
            await asyncio.wait((fut, self._task), return_when=asyncio.FIRST_COMPLETED)
        if not fut.done() and not self.gone:  # the listener stopped without a disconnect
            await asyncio.wait((fut,))
        return fut.done()

    def close(self) -> None:
        """Stop listening (before the response is sent: uvicorn also reports a completed
        response as ``http.disconnect``)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
