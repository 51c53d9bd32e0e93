"""Query parameters the hot routes read by hand (FastAPI's parameter solving costs more than an
invoke): parsing with 422s naming the parameter and what is allowed, their OpenAPI entries, and
the ``top_k`` part of an answer."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from services.tier.errors import ApiError

MAX_TOP_K = 10  # the classes of an MNIST digit
_INTEGER = re.compile(r"^\s*\+?\d{1,9}\s*$")


def int_param(name: str, text: str | None, low: int, high: int, default: int | None = None,
              why: str = "") -> int | None:
    """An integer within ``low..high`` (absent: ``default``, which must be in range too; None
    without one); ``why`` explains the range in the error."""
    if text is None:
        if default is None:
            return None
        value: int | None = default
        shown = f"{default} (the default)"
    else:
        value = int(text) if _INTEGER.fullmatch(text) else None
        shown = repr(text[:32])
    if value is None or not low <= value <= high:
        raise ApiError(422, name, f"{name}: must be an integer within {low}..{high}{why}, "
                       f"got {shown}")  # fmt: skip
    return value


def unit_param(name: str, text: str | None) -> float | None:
    """A number within 0..1 (absent: None; NaN and infinities are refused)."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # also false for NaN
        raise ApiError(422, name, f"{name}: must be a number within 0..1, got {text[:32]!r}")
    return value


def choice_param(name: str, text: str | None, allowed: Sequence[str], default: str) -> str:
    """One of ``allowed`` (absent: ``default``)."""
    if text is None:
        return default
    if text not in allowed:
        raise ApiError(422, name, f"{name}: must be one of {', '.join(allowed)}, got "
                       f"{text[:32]!r}")  # fmt: skip
    return text


def top_k_param(text: str | None) -> int | None:
    return int_param("top_k", text, 1, MAX_TOP_K)


def top_k(probabilities: Sequence[float] | np.ndarray, k: int) -> dict[str, list[Any]]:
    """The ``k`` most probable classes, highest first (ties: the lower class first)."""
    probs = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-probs, kind="stable")[:k]
    return {"indices": [int(i) for i in order], "values": [float(probs[i]) for i in order]}


TOP_K_PARAMETER = {
    "name": "top_k",
    "in": "query",
    "required": False,
    "description": f"also answer the k most probable classes, highest first (1..{MAX_TOP_K}): "
    "top_k {indices, values}",
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_TOP_K},
}
