"""uvicorn's httptools HTTP/1.1 protocol, answering requests it cannot parse (a ``Content-Length``
that is not a byte count, broken chunked framing, …) in the tier's JSON error shape naming the
offending part, instead of uvicorn's plain-text "Invalid HTTP request received."."""

from __future__ import annotations

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.tier.errors import json_error

# llhttp's reason (lower case) → the field the error names, first match wins
_FIELDS = (
    ("content-length", "content-length"),
    ("transfer-encoding", "transfer-encoding"),
    ("chunk", "body"),
    ("method", "method"),
    ("url", "path"),
    ("header", "headers"),
    ("version", "http-version"),
)


def parse_error_field(reason: str) -> str:
    """The request part a parser error message is about (``request`` when unclear)."""
    low = reason.lower()
    return next((field for needle, field in _FIELDS if needle in low), "request")


class TierHttpToolsProtocol(HttpToolsProtocol):
    """Same protocol; only the answer to unparseable requests differs (400, JSON, closes)."""

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError as exc:
            reason = str(exc) or "malformed request"
            self.logger.warning("Invalid HTTP request received: %s", reason)
            if self.cycle is not None and self.cycle.response_started:
                self.transport.close()  # mid-answer: no room for a second status line
                return
            self.send_json_400(parse_error_field(reason), reason)

    def send_json_400(self, field: str, reason: str) -> None:
        start, body = json_error(400, field, f"{field}: invalid HTTP/1.1 request ({reason})")
        head = [b"HTTP/1.1 400 Bad Request\r\n"]
        for name, value in [*self.server_state.default_headers, *start["headers"]]:
            head += [name, b": ", value, b"\r\n"]
        head += [b"connection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        self.transport.close()
