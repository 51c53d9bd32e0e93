"""Decode and validate one 28×28 image from a JSON or a binary (784 raw bytes) request body, or a
cut tensor (``application/x-edgebed-tensor``: raw bytes framed by ``x-edgebed-*`` headers).

Every rejection raises :class:`ApiError` naming the field (``image[3][5]``, ``body``, ``model``,
``x-edgebed-shape``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import Request

from models.chain import CutTensor, TensorMeta
from services.tier.errors import ApiError

IMAGE_SIDE = 28
IMAGE_PIXELS = IMAGE_SIDE * IMAGE_SIDE
BINARY_TYPES = ("application/octet-stream",)
TENSOR_TYPE = "application/x-edgebed-tensor"
DTYPE_HEADER = "x-edgebed-dtype"
SHAPE_HEADER = "x-edgebed-shape"
SCALE_HEADER = "x-edgebed-scale"
ZERO_POINT_HEADER = "x-edgebed-zero-point"
MAX_DIMS = 8
_DIM = re.compile(r"^\s*\d{1,9}\s*$")
_ZERO_POINT = re.compile(r"^\s*[+-]?\d{1,4}\s*$")
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


def decode_image_bytes(body: bytes) -> np.ndarray:
    """A binary body as a 28×28 uint8 image (422 ``body`` unless it is 784 bytes)."""
    if len(body) != IMAGE_PIXELS:
        raise ApiError(
            422,
            "body",
            f"body: expected {IMAGE_PIXELS} bytes (28×28 uint8, row-major), got {len(body)}",
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(IMAGE_SIDE, IMAGE_SIDE)


def decode_binary(body: bytes, query_model: str | None, request_id: str | None) -> InferInput:
    if query_model is None:
        raise ApiError(
            422, "model", "model: query parameter required with a binary body (?model=int8)"
        )
    image = decode_image_bytes(body)
    if request_id is not None and len(request_id) > 128:
        raise ApiError(422, "x-request-id", "x-request-id: at most 128 characters")
    return InferInput(query_model, image, request_id)


def decode_tensor(body: bytes, headers: Mapping[str, str], expected: TensorMeta,
                  receiver: str) -> CutTensor:
    """A cut tensor body framed by ``x-edgebed-dtype``, ``x-edgebed-shape`` and, for int8 and
    uint8, ``x-edgebed-scale`` and ``x-edgebed-zero-point``, checked against ``expected`` (the
    input of ``receiver``, e.g. ``segment 4``): the same dtype, as many values, a body of that
    many bytes. Scale and zero point may differ (the tensor is requantized on use)."""
    want_shape = ",".join(str(d) for d in expected.shape)
    count = int(np.prod(expected.shape))
    dtype = headers.get(DTYPE_HEADER)
    if dtype is None or dtype.strip().lower() != expected.dtype:
        got = "none" if dtype is None else repr(dtype[:32])
        raise ApiError(422, DTYPE_HEADER, f"{DTYPE_HEADER}: must be {expected.dtype} (the input "
                       f"of {receiver}), got {got}")  # fmt: skip
    text = headers.get(SHAPE_HEADER)
    dims = text.split(",") if text is not None else []
    shape = tuple(int(d) for d in dims) if 0 < len(dims) <= MAX_DIMS and all(
        _DIM.fullmatch(d) for d in dims) else None
    if shape is None or math.prod(shape) != count:
        got = "none" if text is None else repr(text[:64])
        raise ApiError(422, SHAPE_HEADER, f"{SHAPE_HEADER}: must be comma-separated dimensions "
                       f"of {count} values, e.g. {want_shape} (the input of {receiver}), got "
                       f"{got}")  # fmt: skip
    scale, zero_point = 0.0, 0
    if expected.quantized:
        scale = _scale(headers.get(SCALE_HEADER), receiver, expected)
        zero_point = _zero_point(headers.get(ZERO_POINT_HEADER), receiver, expected)
    meta = TensorMeta(expected.dtype, shape, scale, zero_point)
    if len(body) != meta.nbytes:
        raise ApiError(422, "body", f"body: expected {meta.nbytes} bytes ({count} × "
                       f"{expected.dtype}, the input of {receiver}), got {len(body)}")  # fmt: skip
    return CutTensor(body, meta)


def _scale(text: str | None, receiver: str, expected: TensorMeta) -> float:
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        got = "none" if text is None else repr(text[:32])
        raise ApiError(422, SCALE_HEADER, f"{SCALE_HEADER}: required for {expected.dtype}: a "
                       f"positive number (the input of {receiver} has {expected.scale!r}), got "
                       f"{got}")  # fmt: skip
    return value


def _zero_point(text: str | None, receiver: str, expected: TensorMeta) -> int:
    info = np.iinfo(expected.dtype)
    value = int(text) if text is not None and _ZERO_POINT.fullmatch(text) else None
    if value is None or not info.min <= value <= info.max:
        got = "none" if text is None else repr(text[:32])
        raise ApiError(422, ZERO_POINT_HEADER, f"{ZERO_POINT_HEADER}: required for "
                       f"{expected.dtype}: an integer within {info.min}..{info.max} (the input "
                       f"of {receiver} has {expected.zero_point}), got {got}")  # fmt: skip
    return value


def tensor_headers(meta: TensorMeta) -> dict[str, str]:
    """The framing headers of a tensor answer (the inverse of :func:`decode_tensor`)."""
    return {DTYPE_HEADER: meta.dtype, SHAPE_HEADER: ",".join(str(d) for d in meta.shape),
            SCALE_HEADER: repr(float(meta.scale)), ZERO_POINT_HEADER: str(int(meta.zero_point))}
