"""Run a committed ``.tflite`` model with LiteRT (``ai-edge-litert``): input scaling, quantization, softmax.

One :class:`LiteRTModel` wraps one interpreter. LiteRT interpreters are not thread-safe, so
every call takes the instance's lock; give each worker its own instance for parallelism.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
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


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max()
    e = np.exp(z)
    return e / e.sum()


class LiteRTModel:
    """A loaded LiteRT model classifying 28×28 digits."""

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
        self.output_quant = tuple(float(v) for v in out["quantization"])
        self.outputs_probabilities = True  # models end in softmax; kept for clarity

    @property
    def quantized(self) -> bool:
        return self.input_dtype in (np.dtype(np.int8), np.dtype(np.uint8))

    def _prepare(self, image01: np.ndarray) -> np.ndarray:
        x = image01.reshape(self.input_shape)
        if self.quantized:
            scale, zero = self.input_quant
            info = np.iinfo(self.input_dtype)
            q = np.round(x / scale + zero)
            return np.clip(q, info.min, info.max).astype(self.input_dtype)
        return x.astype(self.input_dtype)

    def _dequantize(self, raw: np.ndarray) -> np.ndarray:
        out = raw.reshape(-1).astype(np.float64)
        if self.output_dtype in (np.dtype(np.int8), np.dtype(np.uint8)):
            scale, zero = self.output_quant
            out = (out - zero) * scale
        return out

    def probabilities(self, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Class probabilities for one image (uint8 0–255 or float 0–1) and the compute time."""
        x = self._prepare(to_unit_float(image)[0])
        with self._lock:
            t0 = time.perf_counter()
            self._interp.set_tensor(self._in_index, x)
            self._interp.invoke()
            raw = self._interp.get_tensor(self._out_index).copy()
            elapsed = time.perf_counter() - t0
        probs = self._dequantize(raw)
        total = probs.sum()
        # Dequantized int8 softmax output sums to ~1; renormalise (and fall back to a softmax
        # if a model ever emits logits) so confidence is a proper max-probability.
        if total <= 0 or np.any(probs < -1e-6):
            probs = _softmax(probs)
        else:
            probs = np.clip(probs, 0.0, None) / total if total > 0 else probs
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
        return self._prepare(to_unit_float(image)[0])
