"""How much earlier than its device time a profile hold ends: the tier's learned send lead plus
the host lead a client asks for (``x-edgebed-host-lead-ms``), within their caps.

The answer of a profile request should reach the client one device time after the device
started on it. Two things the emulated device does not have add to that: the tier's own
response path (hold end → answer on the socket: the *send lead*, learned per tier) and the
testbed's HTTP path outside the tier (client, loopback, uvicorn parsing, process wake-ups:
the *host lead*, measured by the orchestrator on the direct path and sent with each request).
A hold ends their sum early; the sum is at most half the device time, and the hold never ends
before the request's real compute has finished.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from services.tier.errors import ApiError

HOST_LEAD_HEADER = "x-edgebed-host-lead-ms"
MAX_HOST_LEAD_MS = 10.0
SEND_LEAD_GAIN = 0.1  # EWMA gain of the learned send lead
MAX_SEND_LEAD_S = 0.001
_NUMBER = re.compile(r"^\+?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")

# The header as an OpenAPI parameter (the routes read it by hand, with parse_host_lead_ms).
HOST_LEAD_PARAMETER = {
    "name": HOST_LEAD_HEADER,
    "in": "header",
    "required": False,
    "description": "profile mode: end the hold this much earlier (ms, 0–10) to absorb the "
    "testbed's own HTTP path, measured by the orchestrator; reported as timing.host_lead_ms",
    "schema": {"type": "number", "minimum": 0, "maximum": MAX_HOST_LEAD_MS},
}


def parse_host_lead_ms(value: str | None) -> float:
    """The ``x-edgebed-host-lead-ms`` header (absent: 0); anything but a number within
    0..10 is a 422 naming the header."""
    if value is None:
        return 0.0
    text = value.strip()
    ms = float(text) if _NUMBER.fullmatch(text) else math.nan
    if not 0.0 <= ms <= MAX_HOST_LEAD_MS:  # also refuses NaN
        raise ApiError(
            422, HOST_LEAD_HEADER,
            f"{HOST_LEAD_HEADER}: must be a number of milliseconds within "
            f"0..{MAX_HOST_LEAD_MS:g}, got {value[:32]!r}",
        )  # fmt: skip
    return ms


@dataclass(frozen=True)
class Leads:
    """The leads one hold applied (seconds)."""

    send_s: float = 0.0
    host_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.send_s + self.host_s


NO_LEADS = Leads()


def plan_leads(target_s: float, send_lead_s: float, host_lead_s: float, room_s: float) -> Leads:
    """The leads a hold of ``target_s`` device time applies: the send lead first (at most
    ``MAX_SEND_LEAD_S``), then the host lead; together at most half of ``target_s`` and at
    most ``room_s`` (the time from now, the real compute being done, to the nominal end)."""
    cap = max(0.0, min(target_s / 2.0, room_s))
    send_s = min(max(send_lead_s, 0.0), MAX_SEND_LEAD_S, cap)
    host_s = min(max(host_lead_s, 0.0), cap - send_s)
    return Leads(send_s, max(0.0, host_s))
