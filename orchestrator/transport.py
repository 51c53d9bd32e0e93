"""An httpx transport that sends each HTTP/1.1 request in ONE socket write.

httpx (httpcore) writes a request's head and body separately. On an emulated link every
write is a chunk with its own delay draw, so a two-write request would see the larger of two
draws instead of the simulator's one draw per request (and costs an extra syscall). This
transport buffers a connection's writes and flushes them when the client starts reading the
answer, which for HTTP/1.1 request/response is exactly "once per request".
"""

from __future__ import annotations

from typing import Any

import httpcore
import httpx


class _CoalescingStream(httpcore.AsyncNetworkStream):
    def __init__(self, inner: httpcore.AsyncNetworkStream) -> None:
        self._inner = inner
        self._buf = bytearray()

    async def _flush(self, timeout: float | None) -> None:
        if self._buf:
            data = bytes(self._buf)
            self._buf.clear()
            await self._inner.write(data, timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._buf += buffer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._flush(timeout)
        return await self._inner.read(max_bytes, timeout)

    async def aclose(self) -> None:
        self._buf.clear()
        await self._inner.aclose()

    async def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        await self._flush(kwargs.get("timeout"))
        return _CoalescingStream(await self._inner.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class CoalescingBackend(httpcore.AsyncNetworkBackend):
    """httpcore's asyncio (anyio) backend with write coalescing per request."""

    def __init__(self) -> None:
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _CoalescingStream(await self._inner.connect_tcp(*args, **kwargs))

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        return _CoalescingStream(await self._inner.connect_unix_socket(*args, **kwargs))

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def coalescing_transport(limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """An ``httpx.AsyncHTTPTransport`` (no proxies) whose requests go out in one write each."""
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    transport._pool = httpcore.AsyncConnectionPool(
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=CoalescingBackend(),
    )
    return transport
