"""Raw HTTP/1.1 over sockets for tier tests: bursts that reach the server together, requests a
client abandons, bodies with broken framing, answers read line by line."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

BINARY = {"content-type": "application/octet-stream"}


@dataclass
class Answer:
    status_code: int
    headers: dict[str, str]
    body: bytes
    t_done: float = 0.0  # perf_counter when the answer was read

    def json(self) -> Any:
        return json.loads(self.body)

    def lines(self) -> list[Any]:
        return [json.loads(line) for line in self.body.splitlines() if line.strip()]

    def header(self, name: str) -> str | None:
        return {k.lower(): v for k, v in self.headers.items()}.get(name.lower())


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def request_bytes(
    url: str,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    *,
    content_length: str | None = None,
    chunked: bool = False,
) -> bytes:
    """A request (``content_length`` overrides the header, e.g. ``"abc"``; ``chunked``: the
    caller frames ``body`` and may send more chunks later)."""
    host, _ = host_port(url)
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    elif content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    elif body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def json_request(url: str, path: str, doc: Any, headers: dict[str, str] | None = None) -> bytes:
    return request_bytes(url, "POST", path, json.dumps(doc).encode(),
                         {"Content-Type": "application/json", **(headers or {})})  # fmt: skip


def infer_request(url: str, model: str = "int8", headers: dict[str, str] | None = None) -> bytes:
    return request_bytes(url, "POST", f"/v1/infer?model={model}", bytes(784),
                         {"Content-Type": "application/octet-stream", **(headers or {})})  # fmt: skip


def connect(url: str, timeout_s: float = 30.0) -> socket.socket:
    return socket.create_connection(host_port(url), timeout=timeout_s)


def read_answer(sock: socket.socket) -> Answer:
    resp = http.client.HTTPResponse(sock)
    resp.begin()
    body = resp.read()
    return Answer(resp.status, dict(resp.getheaders()), body, time.perf_counter())


def exchange(url: str, data: bytes, timeout_s: float = 30.0) -> Answer:
    """Send ``data`` on a fresh connection and read one answer."""
    with connect(url, timeout_s) as s:
        s.sendall(data)
        return read_answer(s)


def burst(url: str, requests: list[bytes], timeout_s: float = 60.0) -> list[Answer]:
    """Requests that reach the server together: connections are opened first, then the
    complete pre-built requests are written back to back (microseconds apart)."""
    socks = [connect(url, timeout_s) for _ in requests]
    try:
        for s, data in zip(socks, requests, strict=True):
            s.sendall(data)
        return [read_answer(s) for s in socks]
    finally:
        for s in socks:
            s.close()


def abandon(url: str, data: bytes, after_s: float, wait_for: bytes = b"", count: int = 1) -> bytes:
    """Send ``data``, read until ``wait_for`` was received ``count`` times (e.g. a stream's
    head, or its first lines), wait ``after_s`` more, then close the connection without
    reading the rest of the answer. Returns what was read."""
    s = connect(url)
    got = b""
    try:
        s.sendall(data)
        while wait_for and got.count(wait_for) < count:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
        time.sleep(after_s)
    finally:
        s.close()
    return got


@dataclass
class Background:
    """A call running on a thread; ``result()`` joins it and returns its value."""

    fn: Callable[[], Any]
    _value: list[Any] = field(default_factory=list)
    _error: list[BaseException] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value.append(self.fn())
        except BaseException as exc:  # reported by result()
            self._error.append(exc)

    def result(self, timeout_s: float = 60.0) -> Any:
        self._thread.join(timeout_s)
        if self._error:
            raise self._error[0]
        assert self._value, "background call did not finish"
        return self._value[0]


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the tier's /metrics (KeyError if absent)."""
    with connect(url, 10.0) as s:
        s.sendall(request_bytes(url, "GET", "/metrics"))
        text = read_answer(s).body.decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    raise KeyError(f"{name}{labels} not in /metrics")
