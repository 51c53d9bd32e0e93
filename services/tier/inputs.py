"""Decode and validate one 28×28 image from a JSON or a binary (784 raw bytes) request body.

Every rejection raises :class:`ApiError` naming the field (``image[3][5]``, ``body``, ``model``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from services.tier.errors import ApiError

IMAGE_SIDE = 28
IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE
BINARY_TYPES = ("application/octet-stream",)
JSON_KEYS = {"model", "image", "request_id", "scale"}


@dataclass(frozen=True)
class InferInput:
    model: str
    image: np.ndarray  # uint8 (0–255) or float32 (0–1), shape (28, 28)
    request_id: str | None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _index_name(flat_index: int, two_d: bool) -> str:
    if two_d:
        return f"image[{flat_index // IMAGE_SIDE}][{flat_index % IMAGE_SIDE}]"
    return f"image[{flat_index}]"


def decode_image_values(image: Any, scale: str = "auto") -> np.ndarray:
    """JSON ``image`` (784 numbers or 28 rows of 28) → uint8 or float32 array of shape (28, 28).

    Values are on the 0–255 scale when ``scale`` is ``"uint8"`` or any value exceeds 1;
    otherwise on the 0–1 scale. Integer 0–255 images become uint8 exactly.
    """
    if not isinstance(image, list):
        raise ApiError(
            422, "image", "image: must be a list of 784 numbers or 28 lists of 28 numbers"
        )
    two_d = bool(image) and isinstance(image[0], list)
    try:
        arr = np.asarray(image)
    except (ValueError, TypeError, OverflowError):
        raise ApiError(
            422, "image", "image: must be 784 numbers or 28 rows of 28 numbers (ragged or mixed)"
        ) from None
    if arr.shape not in ((IMAGE_PIXELS,), (IMAGE_SIDE, IMAGE_SIDE)):
        raise ApiError(
            422,
            "image",
            f"image: expected shape [784] or [28][28], got {list(arr.shape)}",
        )
    if arr.dtype.kind not in "iuf" or arr.dtype == np.bool_:
        raise ApiError(422, "image", f"image: values must be numbers, got {arr.dtype.kind!r} data")
    flat = arr.reshape(-1)
    # numpy turns [true, 0, ...] into integers: JSON booleans are not pixel values
    rows = image if two_d else [image]
    for i, value in enumerate(v for row in rows for v in row):
        if isinstance(value, bool):
            name = _index_name(i, two_d)
            raise ApiError(422, name, f"{name}: must be a number, got {str(value).lower()}")
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(flat)
        if bad.any():
            i = int(np.argmax(bad))
            name = _index_name(i, two_d)
            raise ApiError(422, name, f"{name}: must be a finite number, got {flat[i]}")
    low = flat < 0
    if low.any():
        i = int(np.argmax(low))
        name = _index_name(i, two_d)
        raise ApiError(422, name, f"{name}: must be within 0..255, got {flat[i]}")
    high = flat > 255
    if high.any():
        i = int(np.argmax(high))
        name = _index_name(i, two_d)
        raise ApiError(422, name, f"{name}: must be within 0..255, got {flat[i]}")
    if scale == "uint8" or float(flat.max(initial=0)) > 1.0:
        if arr.dtype.kind in "iu" or bool(np.all(flat == np.round(flat))):
            return flat.astype(np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)
        return (flat.astype(np.float32) / np.float32(255.0)).reshape(IMAGE_SIDE, IMAGE_SIDE)
    return flat.astype(np.float32).reshape(IMAGE_SIDE, IMAGE_SIDE)


def decode_json(body: bytes, query_model: str | None) -> InferInput:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "body", f"body: malformed JSON: {exc}") from None
    except RecursionError:
        raise ApiError(400, "body", "body: JSON nested too deeply") from None
    if not isinstance(doc, dict):
        raise ApiError(422, "body", "body: must be a JSON object with 'model' and 'image'")
    extra = set(doc) - JSON_KEYS
    if extra:
        name = sorted(extra)[0]
        raise ApiError(
            422, name, f"{name}: unknown field (allowed: {', '.join(sorted(JSON_KEYS))})"
        )
    model = doc.get("model", query_model)
    if model is None:
        raise ApiError(422, "model", "model: field required (in the body or ?model=)")
    if not isinstance(model, str):
        raise ApiError(422, "model", "model: must be a string")
    if query_model is not None and query_model != model:
        raise ApiError(
            422, "model", f"model: body says {model!r} but the query says {query_model!r}"
        )
    request_id = doc.get("request_id")
    if request_id is not None and (not isinstance(request_id, str) or len(request_id) > 128):
        raise ApiError(422, "request_id", "request_id: must be a string of at most 128 characters")
    scale = doc.get("scale", "auto")
    if scale not in ("auto", "uint8"):
        raise ApiError(422, "scale", f"scale: must be 'auto' or 'uint8', got {scale!r}")
    if "image" not in doc:
        raise ApiError(422, "image", "image: field required")
    return InferInput(model, decode_image_values(doc["image"], scale), request_id)


def decode_binary(body: bytes, query_model: str | None, request_id: str | None) -> InferInput:
    if query_model is None:
        raise ApiError(
            422, "model", "model: query parameter required with a binary body (?model=int8)"
        )
    if len(body) != IMAGE_PIXELS:
        raise ApiError(
            422,
            "body",
            f"body: expected {IMAGE_PIXELS} bytes (28×28 uint8, row-major), got {len(body)}",
        )
    if request_id is not None and len(request_id) > 128:
        raise ApiError(422, "x-request-id", "x-request-id: at most 128 characters")
    image = np.frombuffer(body, dtype=np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)
    return InferInput(query_model, image, request_id)
