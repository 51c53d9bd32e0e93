"""Run chains of LiteRT segment models and move cut tensors between them (no TensorFlow).

A *segment* is a LiteRT model converted from a Keras sub-model: it maps the tensor at one cut
to the tensor at the next (and, in a multi-exit network, also to that exit's probabilities).
Running segments 1..k is the *head* of a split at cut k, running k+1..n its *tail*; stopping
after the segment that carries exit k is an early exit. Between two segments the cut tensor
travels as :class:`CutTensor`: raw bytes plus dtype, shape, scale and zero point. When the
receiving segment's input quantization equals the sender's output quantization (all committed
segments), the bytes are used as they are; otherwise they are requantized (and
:attr:`Chain.requantized_cuts` says where).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ai_edge_litert.interpreter import Interpreter

from models.runtime import median_invoke_time_us

PROBABILITIES = "probabilities"
FEATURES = "features"


@dataclass(frozen=True)
class TensorMeta:
    """What a receiver needs besides the bytes: dtype, shape, and (int8) scale and zero point."""

    dtype: str
    shape: tuple[int, ...]
    scale: float = 0.0
    zero_point: int = 0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    @property
    def quantized(self) -> bool:
        return np.dtype(self.dtype) in (np.dtype(np.int8), np.dtype(np.uint8))

    def same_encoding(self, other: TensorMeta) -> bool:
        """True when bytes in ``self``'s encoding mean the same numbers in ``other``'s."""
        return (np.dtype(self.dtype) == np.dtype(other.dtype)
                and int(np.prod(self.shape)) == int(np.prod(other.shape))
                and (not self.quantized
                     or (self.scale == other.scale and self.zero_point == other.zero_point)))

    def as_dict(self) -> dict:
        return {"dtype": self.dtype, "shape": list(self.shape), "scale": self.scale,
                "zero_point": self.zero_point, "bytes": self.nbytes}

    @classmethod
    def from_dict(cls, d: dict) -> TensorMeta:
        """The inverse of :meth:`as_dict` (e.g. a segment's ``input`` in the manifest)."""
        return cls(str(d["dtype"]), tuple(int(v) for v in d["shape"]), float(d.get("scale", 0.0)),
                   int(d.get("zero_point", 0)))

    @classmethod
    def from_details(cls, d: dict) -> TensorMeta:
        scale, zero = d["quantization"]
        return cls(np.dtype(d["dtype"]).name, tuple(int(v) for v in d["shape"]), float(scale),
                   int(zero))


@dataclass(frozen=True)
class CutTensor:
    """A tensor at a cut, as it would cross a link: ``data`` bytes described by ``meta``."""

    data: bytes
    meta: TensorMeta

    @classmethod
    def of(cls, array: np.ndarray, meta: TensorMeta) -> CutTensor:
        arr = np.ascontiguousarray(array, dtype=meta.dtype)
        if arr.size != int(np.prod(meta.shape)):
            raise ValueError(f"tensor of {arr.size} values does not match shape {meta.shape}")
        return cls(arr.tobytes(), meta)

    def array(self) -> np.ndarray:
        return np.frombuffer(self.data, dtype=self.meta.dtype).reshape(self.meta.shape)

    def real(self) -> np.ndarray:
        """The real values (dequantized for int8)."""
        arr = self.array()
        if self.meta.quantized:
            return (arr.astype(np.float64) - self.meta.zero_point) * self.meta.scale
        return arr.astype(np.float64)

    def encoded_for(self, meta: TensorMeta) -> np.ndarray:
        """The tensor in ``meta``'s encoding: as is when they agree, else requantized/cast."""
        if self.meta.same_encoding(meta):
            return self.array().reshape(meta.shape)
        real = self.real()
        if meta.quantized:
            info = np.iinfo(meta.dtype)
            q = np.round(real / meta.scale + meta.zero_point)
            return np.clip(q, info.min, info.max).astype(meta.dtype).reshape(meta.shape)
        return real.astype(meta.dtype).reshape(meta.shape)


def image_tensor(image: np.ndarray, meta: TensorMeta) -> np.ndarray:
    """A uint8 image (any H×W, 0–255) as a first segment's input, scaled like :mod:`models.runtime`."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8:
        raise ValueError(f"image must be uint8 (0–255), got {arr.dtype}")
    x01 = arr.astype(np.float32) / np.float32(255.0)
    if meta.quantized:
        info = np.iinfo(meta.dtype)
        q = np.round(x01 / meta.scale + meta.zero_point)  # as models.runtime scales
        return np.clip(q, info.min, info.max).astype(meta.dtype).reshape(meta.shape)
    return x01.astype(meta.dtype).reshape(meta.shape)


def probabilities_of(raw: np.ndarray, meta: TensorMeta) -> np.ndarray:
    """A probability output as float64 summing to 1 (int8 softmax is dequantized, renormalised)."""
    probs = CutTensor.of(raw, meta).real().reshape(-1)
    total = probs.sum()
    return probs / total if total > 0 else np.full(probs.shape, 1.0 / probs.size)


class Segment:
    """One LiteRT segment model: one input, one or two outputs (``features``, ``probabilities``).

    The output a SOFTMAX op produces is ``probabilities``; the other one is ``features`` (the
    tensor at the next cut). Not thread-safe beyond its lock: give each worker its own instance.
    """

    def __init__(self, path: str | Path, *, num_threads: int = 1) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._interp = Interpreter(model_path=str(self.path), num_threads=num_threads)
        self._interp.allocate_tensors()
        inp = self._interp.get_input_details()
        if len(inp) != 1:
            raise ValueError(f"{self.path}: a segment has one input, found {len(inp)}")
        self._in_index = inp[0]["index"]
        self.input = TensorMeta.from_details(inp[0])
        self.outputs: dict[str, TensorMeta] = {}
        self._out_index: dict[str, int] = {}
        outs = self._interp.get_output_details()
        producers = {int(o): op["op_name"] for op in self._interp._get_ops_details()
                     if op["op_name"] != "DELEGATE" for o in op["outputs"]}
        for d in outs:
            key = PROBABILITIES if producers.get(int(d["index"])) == "SOFTMAX" else FEATURES
            if key in self.outputs:
                raise ValueError(f"{self.path}: two outputs are {key!r}")
            self.outputs[key] = TensorMeta.from_details(d)
            self._out_index[key] = d["index"]

    @property
    def features(self) -> TensorMeta | None:
        return self.outputs.get(FEATURES)

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Invoke on an input already in this segment's encoding; raw outputs by name."""
        with self._lock:
            self._interp.set_tensor(self._in_index, x.reshape(self.input.shape))
            self._interp.invoke()
            return {k: self._interp.get_tensor(i).copy() for k, i in self._out_index.items()}

    def invoke_only(self, x: np.ndarray) -> None:
        with self._lock:
            self._interp.set_tensor(self._in_index, x.reshape(self.input.shape))
            self._interp.invoke()

    def median_invoke_us(self, x: np.ndarray, n: int = 300) -> float:
        """Median wall time of one invoke on input ``x`` (after 20 warm-up invokes), in µs."""
        return median_invoke_time_us(lambda: self.invoke_only(x), n)


class Chain:
    """Segments run one after another; the cut between segment k and k+1 is cut k."""

    def __init__(self, paths: Sequence[str | Path], *, num_threads: int = 1) -> None:
        if not paths:
            raise ValueError("a chain needs at least one segment")
        self.segments = [Segment(p, num_threads=num_threads) for p in paths]
        for k, (a, b) in enumerate(zip(self.segments, self.segments[1:], strict=False), 1):
            if a.features is None:
                raise ValueError(f"segment {k} ({a.path.name}) has no features output to pass on")
            if int(np.prod(a.features.shape)) != int(np.prod(b.input.shape)):
                raise ValueError(f"cut {k}: {a.path.name} gives {a.features.shape}, "
                                 f"{b.path.name} takes {b.input.shape}")

    @property
    def requantized_cuts(self) -> list[int]:
        """Cuts whose sender and receiver quantize the tensor differently (1-based)."""
        return [k for k, (a, b) in enumerate(zip(self.segments, self.segments[1:], strict=False), 1)
                if a.features is not None and not a.features.same_encoding(b.input)]

    def head(self, image: np.ndarray, cut: int) -> CutTensor:
        """Segments 1..``cut`` on a uint8 image: the tensor at the cut, ready to send."""
        x = image_tensor(image, self.segments[0].input)
        out: dict[str, np.ndarray] = {}
        for k, seg in enumerate(self.segments[:cut]):
            if k:
                prev = self.segments[k - 1].features
                assert prev is not None
                x = CutTensor.of(out[FEATURES], prev).encoded_for(seg.input)
            out = seg.run(x)
        meta = self.segments[cut - 1].features
        if meta is None:
            raise ValueError(f"segment {cut} has no features output: no cut after it")
        return CutTensor.of(out[FEATURES], meta)

    def tail(self, tensor: CutTensor, cut: int, until: int | None = None) -> np.ndarray:
        """Segments ``cut``+1..``until`` (default: the last) on a received cut tensor; the last
        one's probabilities (float64, sums to 1)."""
        last = len(self.segments) if until is None else until
        x = tensor.encoded_for(self.segments[cut].input)
        out: dict[str, np.ndarray] = {}
        for k in range(cut, last):
            seg = self.segments[k]
            if k > cut:
                prev = self.segments[k - 1].features
                assert prev is not None
                x = CutTensor.of(out[FEATURES], prev).encoded_for(seg.input)
            out = seg.run(x)
        seg = self.segments[last - 1]
        if PROBABILITIES not in out:
            raise ValueError(f"segment {last} ({seg.path.name}) has no probabilities output")
        return probabilities_of(out[PROBABILITIES], seg.outputs[PROBABILITIES])

    def probabilities(self, image: np.ndarray, until: int | None = None) -> np.ndarray:
        """The whole chain (or segments 1..``until``: an early exit) on a uint8 image."""
        last = len(self.segments) if until is None else until
        seg = self.segments[0]
        out = seg.run(image_tensor(image, seg.input))
        if last == 1:
            return probabilities_of(out[PROBABILITIES], seg.outputs[PROBABILITIES])
        return self.tail(CutTensor.of(out[FEATURES], seg.outputs[FEATURES]), 1, last)

    def exits(self, image: np.ndarray) -> list[np.ndarray]:
        """Every exit's probabilities in one pass (segments without an exit give none)."""
        seg = self.segments[0]
        x = image_tensor(image, seg.input)
        found = []
        out: dict[str, np.ndarray] = {}
        for k, seg in enumerate(self.segments):
            if k:
                prev = self.segments[k - 1].features
                assert prev is not None
                x = CutTensor.of(out[FEATURES], prev).encoded_for(seg.input)
            out = seg.run(x)
            if PROBABILITIES in out:
                found.append(probabilities_of(out[PROBABILITIES], seg.outputs[PROBABILITIES]))
        return found
