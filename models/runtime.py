"""Run a committed ``.tflite`` model with LiteRT (``ai-edge-litert``): input scaling, resizing,
quantization, softmax.

One :class:`LiteRTModel` wraps one interpreter. LiteRT interpreters are not thread-safe, so
every call takes the instance's lock; give each worker its own instance for parallelism. A model
whose input resolution is not 28×28 (the research variants: 14×14, 20×20) gets each 28×28 image
area-averaged to its resolution first (:func:`resize_images`, exact integer arithmetic for uint8
images: the same the variants were trained and evaluated with).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

IMAGE_SHAPE = (28, 28)


@dataclass(frozen=True)
class Prediction:
    prediction: int
    confidence: float
    probabilities: np.ndarray  # float64, shape (10,), sums to 1
    compute_s: float  # wall time of set_tensor + invoke + get_tensor on this host


def to_unit_float(images: np.ndarray) -> np.ndarray:
    """Images as float32 in [0, 1], shape (n, 28, 28). uint8 input is divided by 255."""
    arr = np.asarray(images)
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / np.float32(255.0)
    else:
        arr = arr.astype(np.float32)
    if arr.shape == IMAGE_SHAPE or arr.shape == (784,):
        arr = arr.reshape(1, *IMAGE_SHAPE)
    return arr.reshape(-1, *IMAGE_SHAPE)


@cache
def _area_weights(size: int, source: int) -> np.ndarray:
    """Integer overlap of output pixel i's interval with input pixel j's, in units of 1/size
    (computed once per pair of sizes; read-only)."""
    w = np.zeros((size, source), dtype=np.int64)
    for i in range(size):
        lo, hi = i * source, (i + 1) * source  # output pixel i covers [lo, hi) / size
        for j in range(source):
            w[i, j] = max(0, min(hi, (j + 1) * size) - max(lo, j * size))
    w.flags.writeable = False
    return w


def _area_sums(images: np.ndarray, size: int) -> tuple[np.ndarray, int]:
    """``(sums, den)``: each output pixel's area-weighted sum of the (n, H, H) input, and the
    divisor that makes it the area mean (H²)."""
    source = images.shape[-1]
    w = _area_weights(size, source)
    dtype = np.int64 if images.dtype.kind in "iu" else np.float64
    return w @ images.astype(dtype) @ w.T, source * source


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """Area-average uint8 images (n, H, H) to (n, size, size), in exact integer arithmetic.

    Output pixel = the mean of the input area it covers, rounded half up: the same on every
    machine, so the variants' figures reproduce bit for bit.
    """
    arr = np.asarray(images, dtype=np.uint8)
    single = arr.ndim == 2
    arr = arr[None] if single else arr
    if size == arr.shape[-1]:
        return arr[0] if single else arr
    num, den = _area_sums(arr, size)
    out = ((2 * num + den) // (2 * den)).astype(np.uint8)
    return out[0] if single else out


def _resize_unit_float(image: np.ndarray, size: int) -> np.ndarray:
    """One float image (H, H) area-averaged to (size, size), not rounded."""
    num, den = _area_sums(image[None], size)
    return (num[0] / den).astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max()
    e = np.exp(z)
    return e / e.sum()


class LiteRTModel:
    """A loaded LiteRT model classifying 28×28 digits (at its own input resolution)."""

    def __init__(self, path: str | Path, *, num_threads: int = 1) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._interp = Interpreter(model_path=str(self.path), num_threads=num_threads)
        self._interp.allocate_tensors()
        inp = self._interp.get_input_details()[0]
        out = self._interp.get_output_details()[0]
        self._in_index = inp["index"]
        self._out_index = out["index"]
        self.input_dtype = np.dtype(inp["dtype"])
        self.output_dtype = np.dtype(out["dtype"])
        self.input_shape = tuple(int(d) for d in inp["shape"])
        self.input_quant = tuple(float(v) for v in inp["quantization"])  # (scale, zero_point)
        self.resolution = self.input_shape[1]  # (1, H, W[, 1]): square images of side H
        self.output_quant = tuple(float(v) for v in out["quantization"])
        # uint8 pixels are the served path (binary bodies, the evaluation set): map each of the
        # 256 values once through the same scaling/quantization as float input.
        self._uint8_lut = self._prepare_flat(np.arange(256, dtype=np.float32) / np.float32(255.0))

    @property
    def quantized(self) -> bool:
        return self.input_dtype in (np.dtype(np.int8), np.dtype(np.uint8))

    def _prepare_flat(self, x01: np.ndarray) -> np.ndarray:
        if self.quantized:
            scale, zero = self.input_quant
            info = np.iinfo(self.input_dtype)
            q = np.round(x01 / scale + zero)
            return np.clip(q, info.min, info.max).astype(self.input_dtype)
        return x01.astype(self.input_dtype)

    def _input_tensor(self, image: np.ndarray) -> np.ndarray:
        """The input tensor for one uint8 (0–255) or float (0–1) image: 28×28, area-averaged
        to the model's resolution when that differs, or already at the model's resolution."""
        arr = np.asarray(image)
        side = self.resolution
        if arr.size != side * side:
            arr = arr.reshape(IMAGE_SHAPE)
            arr = (resize_images(arr, side) if arr.dtype == np.uint8
                   else _resize_unit_float(arr.astype(np.float32), side))
        if arr.dtype == np.uint8:
            return self._uint8_lut[arr.reshape(self.input_shape)]
        return self._prepare_flat(arr.astype(np.float32).reshape(self.input_shape))

    def _dequantize(self, raw: np.ndarray) -> np.ndarray:
        out = raw.reshape(-1).astype(np.float64)
        if self.output_dtype in (np.dtype(np.int8), np.dtype(np.uint8)):
            scale, zero = self.output_quant
            out = (out - zero) * scale
        return out

    def probabilities(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Class probabilities for one image (uint8 0–255 or float 0–1) and the compute time."""
        x = self._input_tensor(image)
        with self._lock:
            t0 = time.perf_counter()
            self._interp.set_tensor(self._in_index, x)
            self._interp.invoke()
            raw = self._interp.get_tensor(self._out_index).copy()
            elapsed = time.perf_counter() - t0
        probs = self._dequantize(raw)
        # Dequantized int8 softmax output sums to ~1: renormalise so confidence is a proper
        # max-probability (and fall back to a softmax should a model ever emit logits).
        total = probs.sum()
        if total > 0 and probs.min() >= 0:
            probs /= total
        else:
            probs = _softmax(probs)
        return probs, elapsed

    def predict(self, image: np.ndarray) -> Prediction:
        probs, elapsed = self.probabilities(image)
        idx = int(np.argmax(probs))
        return Prediction(idx, float(probs[idx]), probs, elapsed)

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        """Predicted class for each image, one invoke per image (the served path)."""
        return np.array([self.predict(img).prediction for img in np.asarray(images)], dtype=np.int64)

    def invoke_only(self, x: np.ndarray) -> None:
        """Invoke on an already-prepared input tensor (benchmarks)."""
        with self._lock:
            self._interp.set_tensor(self._in_index, x)
            self._interp.invoke()

    def prepared(self, image: np.ndarray) -> np.ndarray:
        """The input tensor LiteRT receives for ``image`` (uint8 0–255 or float 0–1)."""
        return self._input_tensor(image)


def median_invoke_time_us(invoke: Callable[[], object], n: int, warmup: int = 20) -> float:
    """Median wall time of ``invoke()`` over ``n`` calls after ``warmup`` calls, in µs (one
    decimal): how the manifest's invoke times are measured."""
    for _ in range(warmup):
        invoke()
    samples = []
    for _ in range(n):
        t0 = time.perf_counter_ns()
        invoke()
        samples.append(time.perf_counter_ns() - t0)
    return round(float(np.median(samples)) / 1000.0, 1)

