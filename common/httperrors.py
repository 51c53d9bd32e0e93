"""The one JSON shape of every edgebed HTTP error (tiers, link control API, and what comes next).

Every 4xx/5xx answer of an edgebed server has the body::

    {"detail": "<one line naming the field and what is allowed>",
     "field": "<dotted path of the first bad field, or null>",
     "errors": [{"field": "<dotted path or null>", "msg": "<message>"}, ...]}

``detail`` is for people, ``field``/``errors`` for programs; ``errors`` always lists at least
one entry (the same as ``detail`` when there is only one problem).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any


def error_body(
    field: str | None, message: str, errors: Iterable[Mapping[str, Any]] | None = None
) -> dict[str, Any]:
    """The error document; ``message`` should already name ``field`` (``loss_pct: must ...``)."""
    listed = [{"field": e.get("field"), "msg": str(e.get("msg", ""))} for e in errors or ()]
    if not listed:
        listed = [{"field": field, "msg": message}]
    return {"detail": message, "field": field, "errors": listed}


def error_bytes(
    field: str | None, message: str, errors: Iterable[Mapping[str, Any]] | None = None
) -> bytes:
    return json.dumps(error_body(field, message, errors)).encode()


def pydantic_errors(errors: Iterable[Mapping[str, Any]], prefix: str = "") -> list[dict[str, Any]]:
    """pydantic's ``exc.errors()`` as ``[{"field", "msg"}]`` with dotted paths (``a.b[0]``)."""
    out = []
    for err in errors:
        path = ""
        for part in (*([prefix] if prefix else []), *err.get("loc", ())):
            if isinstance(part, str) and part.startswith("function-"):
                continue
            path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
        out.append({"field": path or None,
                    "msg": str(err.get("msg", "")).removeprefix("Value error, ")})
    return out
