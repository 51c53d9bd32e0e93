"""Rebuild a committed LiteRT CNN as Keras blocks, so that it can be cut into segment models.

LiteRT has no API to cut a ``.tflite`` file; what can be cut is a Keras model. The committed
``fp32`` and ``int8`` CNNs were trained in a process whose Keras weights were not kept, and
training is reproducible bit for bit only with the same thread count, so retraining would give
a *different* model. Instead this module reads the committed file back:

- ``fp32``: the float weights are copied exactly; every block is a plain Keras layer.
- ``int8``: the int8 weights are dequantized (``q × scale``, which the converter quantizes back
  to the same integers), and every activation the committed graph quantizes is pinned to the
  committed scale and zero point with a fixed-range fake-quant (``min = (−128 − zp)·s``,
  ``max = (127 − zp)·s``). The converter then emits exactly the committed quantization at every
  tensor, so a head ending at a cut and a tail starting there share the cut's scale and zero
  point, and the raw int8 cut tensor passes between them unchanged.

:func:`blocks_from_tflite` returns the blocks (one per cut) and :func:`check_rebuild` proves
that the rebuilt whole model gives bit-identical outputs to the committed file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The cuts of the two CNNs: the layer whose output each segment ends with. "pool2" includes the
# flatten (same bytes), "classifier" is the last Dense + softmax (the model's output).
CUTS = ("conv1", "pool1", "conv2", "pool2", "dense", "classifier")


@dataclass
class LayerParams:
    """One CONV_2D or FULLY_CONNECTED op of a committed file, as float Keras weights."""

    op: str  # "CONV_2D" | "FULLY_CONNECTED"
    kernel: np.ndarray  # Keras layout: HWIO for conv, (in, out) for dense
    bias: np.ndarray
    padding: str = "valid"
    out_range: tuple[float, float] | None = None  # int8: the committed output's real range


@dataclass
class CommittedCNN:
    """What :func:`read_tflite` finds in a committed CNN file."""

    quantized: bool
    layers: list[LayerParams] = field(default_factory=list)
    input_range: tuple[float, float] | None = None  # int8: the image's real range


def _real_range(scale: float, zero_point: int) -> tuple[float, float]:
    """The real interval an int8 tensor with this (scale, zero point) covers."""
    return (-128 - zero_point) * scale, (127 - zero_point) * scale


def read_tflite(path: Path) -> CommittedCNN:
    """Weights (and, for int8, every quantized tensor's range) of a committed CNN file."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    interp.allocate_tensors()
    details = {d["index"]: d for d in interp.get_tensor_details()}
    inp = interp.get_input_details()[0]
    quantized = np.dtype(inp["dtype"]) == np.int8
    out = CommittedCNN(quantized=quantized)
    if quantized:
        out.input_range = _real_range(*inp["quantization"])
    for op in interp._get_ops_details():  # the only way to read a graph's structure
        name = op["op_name"]
        if name not in ("CONV_2D", "FULLY_CONNECTED"):
            continue
        _, w_idx, b_idx = (int(i) for i in op["inputs"])
        y_idx = int(op["outputs"][0])
        w = interp.get_tensor(w_idx)
        b = interp.get_tensor(b_idx)
        if quantized:
            w_scale = details[w_idx]["quantization_parameters"]["scales"].astype(np.float32)
            b_scale = details[b_idx]["quantization_parameters"]["scales"].astype(np.float64)
            w = w.astype(np.float32) * w_scale.reshape([-1] + [1] * (w.ndim - 1))
            b = (b.astype(np.float64) * b_scale).astype(np.float32)
        rng = _real_range(*details[y_idx]["quantization"]) if quantized else None
        if name == "CONV_2D":
            x_shape = details[int(op["inputs"][0])]["shape"]
            y_shape = details[y_idx]["shape"]
            padding = "same" if int(x_shape[1]) == int(y_shape[1]) else "valid"
            out.layers.append(LayerParams(name, np.transpose(w, (1, 2, 3, 0)), b, padding, rng))
        else:
            out.layers.append(LayerParams(name, np.ascontiguousarray(w.T), b, out_range=rng))
    if len(out.layers) != 4:
        raise ValueError(f"{path}: expected a CNN of 2 convolutions and 2 dense layers, "
                         f"found {[p.op for p in out.layers]}")
    return out


def fake_quant_layer(lo: float, hi: float, name: str | None = None):  # -> keras.layers.Layer
    """A layer pinning its input to the int8 grid of [lo, hi] (the converter reads the range)."""
    import tensorflow as tf
    from tensorflow import keras

    class FixedRangeQuant(keras.layers.Layer):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            self.lo, self.hi = float(lo), float(hi)

        def call(self, x):
            return tf.quantization.fake_quant_with_min_max_args(
                x, min=self.lo, max=self.hi, num_bits=8, narrow_range=False)

    return FixedRangeQuant(name=name)


@dataclass
class Block:
    """The layers from one cut to the next, and the real range of its int8 input/output."""

    name: str
    input_shape: tuple[int, ...]
    layers: list[Any]
    in_range: tuple[float, float] | None = None
    out_range: tuple[float, float] | None = None


def blocks_from_tflite(path: Path, *, pin_ranges: bool = True) -> list[Block]:
    """The committed CNN at ``path`` as one Keras block per cut (see :data:`CUTS`).

    ``pin_ranges=False`` builds the float blocks of an int8 file (dequantized weights, no
    fixed ranges): what post-training calibration would start from.
    """
    from tensorflow.keras import layers

    cnn = read_tflite(path)
    conv1, conv2, dense, final = cnn.layers

    def conv(p: LayerParams, name: str):
        layer = layers.Conv2D(p.kernel.shape[3], p.kernel.shape[:2], padding=p.padding,
                              activation="relu", name=name)
        return layer, p

    def fc(p: LayerParams, name: str, activation: str | None):
        return layers.Dense(p.kernel.shape[1], activation=activation, name=name), p

    c1, _ = conv(conv1, "conv1")
    c2, _ = conv(conv2, "conv2")
    d1, _ = fc(dense, "dense", "relu")
    d2, _ = fc(final, "logits", None)
    pinned = cnn.quantized and pin_ranges

    def pin(p_range: tuple[float, float] | None, name: str) -> list[Any]:
        return [fake_quant_layer(*p_range, name=name)] if pinned and p_range else []

    # Shapes at each cut follow from the committed kernels and paddings.
    h1 = 28 if conv1.padding == "same" else 26
    p1 = h1 // 2
    h2 = p1 if conv2.padding == "same" else p1 - 2
    p2 = h2 // 2
    f1, f2 = conv1.kernel.shape[3], conv2.kernel.shape[3]
    r_img, r1, r2, r3, r4 = (cnn.input_range, conv1.out_range, conv2.out_range,
                             dense.out_range, final.out_range)
    blocks = [
        Block("conv1", (28, 28), [*pin(r_img, "in_image"), layers.Reshape((28, 28, 1)), c1,
                                  *pin(r1, "q_conv1")], r_img, r1),
        Block("pool1", (h1, h1, f1), [*pin(r1, "in_conv1"), layers.MaxPooling2D(name="pool1")],
              r1, r1),
        Block("conv2", (p1, p1, f1), [*pin(r1, "in_pool1"), c2, *pin(r2, "q_conv2")], r1, r2),
        Block("pool2", (h2, h2, f2), [*pin(r2, "in_conv2"), layers.MaxPooling2D(name="pool2"),
                                      layers.Flatten(name="flatten")], r2, r2),
        Block("dense", (p2 * p2 * f2,), [*pin(r2, "in_pool2"), d1, *pin(r3, "q_dense")], r2, r3),
        Block("classifier", (dense.kernel.shape[1],),
              [*pin(r3, "in_dense"), d2, *pin(r4, "q_logits"),
               layers.Softmax(name="probabilities")], r3, None),
    ]
    # Build every layer once (on its block's input shape), then set the committed weights.
    import tensorflow as tf

    for b in blocks:
        x = tf.zeros((1, *b.input_shape), tf.float32)
        for layer in b.layers:
            x = layer(x)
    for layer, p in ((c1, conv1), (c2, conv2), (d1, dense), (d2, final)):
        layer.set_weights([p.kernel, p.bias])
    return blocks


def segment_model(blocks: list[Block], first: int, last: int, name: str):  # -> keras.Model
    """Blocks ``first..last`` (inclusive, 0-based) as one Keras model sharing their layers."""
    from tensorflow import keras

    inp = keras.Input(shape=blocks[first].input_shape, name="x" if first else "image")
    x = inp
    for b in blocks[first : last + 1]:
        for layer in b.layers:
            x = layer(x)
    return keras.Model(inp, x, name=name)


def whole_model(blocks: list[Block], name: str):  # -> keras.Model
    return segment_model(blocks, 0, len(blocks) - 1, name)
