"""The tier HTTP API's bad-input corpus: everything a client can get wrong, answered 4xx in the
one edgebed error shape (``{"detail", "field", "errors"}``) naming the field, never a 5xx.

Framing and size cases are sent as raw HTTP/1.1 (httpx would refuse to send them or would
send the whole body before reading the answer): oversized bodies are refused from their
``Content-Length`` or as soon as a chunked body passes ``max_body_bytes``, before the rest
arrives, so a 100 MB body never reaches the tier's memory.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from tierhttp import BINARY, Answer, connect, exchange, read_answer, request_bytes

from services.tier.process import TierProcess

LIMIT = 262_144  # the default max_body_bytes
LEAD = "x-edgebed-host-lead-ms"


def check_error(answer: Answer | httpx.Response, status: int, field: str, needle: str = "") -> dict:
    """The shared error shape, the status and the field; ``needle`` in the detail."""
    code = answer.status_code
    body = json.loads(answer.body if isinstance(answer, Answer) else answer.content)
    report = f"{code} {body}"
    assert code == status, report
    assert set(body) == {"detail", "field", "errors"}, report
    assert body["field"] == field, report
    assert body["errors"] and all(set(e) == {"field", "msg"} for e in body["errors"]), report
    assert body["errors"][0]["field"] == field, report
    assert field.split("[")[0] in body["detail"] and needle in body["detail"], report
    return body


# --- headers and fields (httpx) ---

BAD_LEADS = ["abc", "-1", "10.5", "11", "nan", "inf", "-inf", "", "1e400", "0x5", "1_0", "5 ms"]


@pytest.mark.parametrize("value", BAD_LEADS)
@pytest.mark.parametrize("route", ["infer", "generate", "stream"])
def test_bad_host_lead_header(value: str, route: str, real_tiers: dict[str, TierProcess]) -> None:
    url = real_tiers["edge"].url
    headers = {LEAD: value}
    if route == "infer":
        r = httpx.post(f"{url}/v1/infer?model=int8", content=bytes(784),
                       headers={**BINARY, **headers})  # fmt: skip
    else:
        body = {"model": "slm", "max_tokens": 2, "stream": route == "stream"}
        r = httpx.post(f"{url}/v1/generate", json=body, headers=headers)
    check_error(r, 422, LEAD, "0..10")


@pytest.mark.parametrize("value", ["0", "0.0", "10", "2.5", "1e-3", "+3"])
def test_good_host_lead_header(value: str, real_tiers: dict[str, TierProcess]) -> None:
    url = real_tiers["edge"].url
    r = httpx.post(f"{url}/v1/generate", json={"model": "slm", "max_tokens": 2},
                   headers={LEAD: value})  # fmt: skip
    assert r.status_code == 200, r.text
    # the fixture's LM takes ~2 ms: the lead is capped at half of it
    assert 0.0 <= r.json()["timing"]["host_lead_ms"] <= min(float(value), 1.01)


@pytest.mark.parametrize("seed", [-1, 2**53, 2**63, 1.5, "x", [1], {"a": 1}])
def test_bad_seed(seed: Any, real_tiers: dict[str, TierProcess]) -> None:
    r = httpx.post(f"{real_tiers['edge'].url}/v1/generate", json={"model": "slm", "seed": seed})
    check_error(r, 422, "seed")


def test_every_validation_problem_is_listed(real_tiers: dict[str, TierProcess]) -> None:
    r = httpx.post(f"{real_tiers['edge'].url}/v1/generate",
                   json={"model": 3, "max_tokens": 0, "length": "medium"})  # fmt: skip
    body = check_error(r, 422, "model")
    assert [e["field"] for e in body["errors"]] == ["model", "max_tokens", "length"], body


def test_unknown_path_and_method(real_tiers: dict[str, TierProcess]) -> None:
    url = real_tiers["edge"].url
    body = check_error(httpx.get(f"{url}/v2/infer"), 404, "path", "/v2/infer")
    assert "/v1/infer" in body["detail"] and "/v1/status" in body["detail"], body
    r = httpx.get(f"{url}/v1/infer")
    check_error(r, 405, "method", "allowed: POST")
    assert r.headers["allow"] == "POST"
    check_error(httpx.delete(f"{url}/v1/status"), 405, "method", "GET")
    check_error(httpx.put(f"{url}/v1/generate", json={}), 405, "method")


# --- framing and size (raw HTTP) ---

ROUTES = {
    "infer": ("/v1/infer?model=int8", "application/octet-stream"),
    "generate": ("/v1/generate", "application/json"),
}


@pytest.mark.parametrize("route", ["infer", "generate"])
@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "0x10"])
def test_content_length_not_a_byte_count(
    route: str, value: str, real_tiers: dict[str, TierProcess]
) -> None:
    url = real_tiers["edge"].url
    path, ctype = ROUTES[route]
    data = request_bytes(url, "POST", path, b"{}", {"Content-Type": ctype}, content_length=value)
    check_error(exchange(url, data, timeout_s=10.0), 400, "content-length")


def test_bad_chunk_framing(real_tiers: dict[str, TierProcess]) -> None:
    url = real_tiers["edge"].url
    data = request_bytes(url, "POST", "/v1/generate", b"zz\r\n{}\r\n0\r\n\r\n",
                         {"Content-Type": "application/json"}, chunked=True)  # fmt: skip
    check_error(exchange(url, data, timeout_s=10.0), 400, "body", "chunk")


@pytest.mark.parametrize("route", ["infer", "generate"])
def test_deep_json_is_400(route: str, real_tiers: dict[str, TierProcess]) -> None:
    url = real_tiers["edge"].url
    path, _ = ROUTES[route]
    deep = b"[" * 100_000 + b"]" * 100_000
    doc = b'{"model": "int8", "image": ' + deep + b"}" if route == "infer" else (
        b'{"model": "slm", "prompt": ' + deep + b"}")  # fmt: skip
    data = request_bytes(url, "POST", path.split("?")[0], doc, {"Content-Type": "application/json"})
    check_error(exchange(url, data, timeout_s=10.0), 400, "body", "JSON nested too deeply")


@pytest.mark.parametrize("route", ["infer", "generate", "status", "metrics"])
def test_declared_oversize_is_refused_before_the_body(
    route: str, real_tiers: dict[str, TierProcess]
) -> None:
    """Only the head and 1 KiB of a declared 100 MB body are sent: the 413 must come anyway."""
    url = real_tiers["edge"].url
    method, path, ctype = {
        "infer": ("POST", *ROUTES["infer"]),
        "generate": ("POST", *ROUTES["generate"]),
        "status": ("GET", "/v1/status", "application/json"),
        "metrics": ("GET", "/metrics", "text/plain"),
    }[route]
    head = request_bytes(url, method, path, b"", {"Content-Type": ctype},
                         content_length=str(100_000_000))  # fmt: skip
    with connect(url, timeout_s=10.0) as s:
        s.sendall(head + b"{" + b" " * 1023)
        check_error(read_answer(s), 413, "body", f"limit of {LIMIT} bytes")


def _send_chunked(s: socket.socket, url: str, path: str, ctype: str, chunks: int) -> None:
    s.sendall(request_bytes(url, "POST", path, b"", {"Content-Type": ctype}, chunked=True))
    piece = b"[" + b"0," * 32_000 + b"0]"  # 64 KiB of JSON-ish bytes
    for _ in range(chunks):
        s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))


@pytest.mark.parametrize("route", ["infer", "generate"])
def test_chunked_oversize_is_refused_while_reading(
    route: str, real_tiers: dict[str, TierProcess]
) -> None:
    """Six 64 KiB chunks (384 KiB) and no final chunk: the 413 comes without the body's end."""
    url = real_tiers["edge"].url
    path, ctype = ROUTES[route]
    with connect(url, timeout_s=10.0) as s:
        _send_chunked(s, url, path, ctype, chunks=6)
        check_error(read_answer(s), 413, "body", f"limit of {LIMIT} bytes")


def test_hundred_megabytes_never_reach_memory(tier_factory: Callable[..., TierProcess]) -> None:
    """The brief's case: a 100 MB /v1/generate body grew the tier from 127 to 429 MB RSS
    before a 422. Now the 413 comes from the Content-Length; the client may still send it all
    (the server discards it) and the tier's memory does not grow with it."""
    tp = tier_factory("edge", device_time="real")
    size = 100 * 2**20
    rss_before = tp.rss_bytes() or 0
    head = request_bytes(tp.url, "POST", "/v1/generate", b"",
                         {"Content-Type": "application/json"},
                         content_length=str(size))  # fmt: skip
    sent = [0]
    with connect(tp.url, timeout_s=30.0) as s:
        s.sendall(head)

        def pump() -> None:
            piece = b" " * 2**20
            try:
                for _ in range(size // len(piece)):
                    s.sendall(piece)
                    sent[0] += len(piece)
            except OSError:
                pass

        sender = threading.Thread(target=pump, daemon=True)
        sender.start()
        answer = read_answer(s)
        sender.join(60.0)
    time.sleep(0.2)
    rss_after = tp.rss_bytes() or 0
    check_error(answer, 413, "body")
    grown_mb = (rss_after - rss_before) / 2**20
    print(f"100 MB body: {sent[0] / 2**20:.0f} MiB sent; tier RSS {rss_before / 2**20:.0f} -> "
          f"{rss_after / 2**20:.0f} MiB")
    assert grown_mb < 30.0, f"tier RSS grew by {grown_mb:.0f} MiB"
    # the connection's tier is still fine
    assert httpx.get(f"{tp.url}/v1/status").json()["ready"] is True
