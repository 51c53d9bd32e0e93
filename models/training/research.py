"""Build the research models and their manifest section (needs the ``train`` extra).

Four parts, each seeded and written under ``models/``:

- ``segments``   — the committed ``fp32`` and ``int8`` CNNs cut after every layer block
  (conv1, pool1, conv2, pool2, dense), one LiteRT model per segment, converted from Keras
  sub-models of the committed graph (:mod:`models.training.rebuild`). A split at cut k runs
  segments 1..k as the head and k+1..n as the tail. For ``int8`` the same cut is also built the
  usual way (tails calibrated on the heads' outputs) to measure what that would cost.
- ``multi_exit`` — a CNN with three exits trained jointly (one loss per exit), exported as three
  chained segments (fp32 and full-integer INT8): leaving at exit k runs segments 1..k only.
- ``variants``   — five full-integer INT8 classifiers differing in input resolution, width and
  seed (variant parallelism); each returns the full probability vector.
- ``multiscale`` — the fp32 CNN as full-integer INT8, dynamic-range INT8, float16 and pruned.

Run with ``edgebed models research --mnist PATH``; figures are computed by
:func:`models.research.research_figures`, the same code ``edgebed models eval`` runs.
TensorFlow runs on one thread: training is reproducible bit for bit only at a fixed thread
count.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from models.paths import data_dir, models_dir
from models.research import merge, research_figures, resize_images
from models.training.mnist import load_mnist
from models.training.pipeline import REPRESENTATIVE_SAMPLES, _augment, sha256

PARTS = ("segments", "multi_exit", "variants", "multiscale")
RESEARCH_FORMAT = 1
TF_THREADS = 1


@dataclass(frozen=True)
class FitConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    validation_split: float = 0.1
    augment_fraction: float = 0.3  # share of training images given a mild corruption


@dataclass(frozen=True)
class VariantSpec:
    name: str
    resolution: int  # input is resolution × resolution uint8 (area-resized from 28 × 28)
    width: int  # filters of the first convolution (the second has twice as many)
    dense: int  # units of the hidden dense layer
    seed_offset: int  # trained with seed + seed_offset


VARIANTS = (
    VariantSpec("v14w8", 14, 8, 32, 101),
    VariantSpec("v14w16", 14, 16, 64, 102),
    VariantSpec("v20w16", 20, 16, 64, 103),
    VariantSpec("v28w16", 28, 16, 64, 104),
    VariantSpec("v28w32", 28, 32, 64, 105),
)
VARIANT_FIT = FitConfig(epochs=6, batch_size=128, learning_rate=3e-3)
MULTI_EXIT_FIT = FitConfig(epochs=8, batch_size=128, learning_rate=3e-3)
MULTI_EXIT_LOSS_WEIGHTS = (1.0, 1.0, 1.0)
MULTI_EXIT_SEED_OFFSET = 200
# Magnitude pruning of the fp32 CNN: share of each kernel set to zero (smallest |w| first),
# then a short fine-tune that keeps the zeros.
PRUNE_SPARSITY = {"conv2": 0.5, "dense": 0.9}
PRUNE_FIT = FitConfig(epochs=2, batch_size=256, learning_rate=2e-4)
PRUNE_SEED_OFFSET = 300


# --- TensorFlow set-up and conversion ---


def set_threads() -> None:
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(TF_THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(TF_THREADS)
    except RuntimeError:  # TensorFlow already started (e.g. after `models train` in-process)
        print("warning: TensorFlow already initialised; thread count unchanged")
    tf.config.experimental.enable_op_determinism()


def to_tflite(model, mode: str, representative: np.ndarray | None = None) -> bytes:
    """Convert a Keras model. ``mode``: ``float32``; ``pinned`` (int8 from fixed fake-quant
    ranges in the graph); ``int8`` (full-integer, calibrated on ``representative``);
    ``dynamic`` (int8 weights, float activations); ``float16``; ``sparse`` (float32, pruned
    kernels stored in a sparse format where that is smaller)."""
    import tensorflow as tf

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode in ("pinned", "int8"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.inference_input_type = tf.int8
        conv.inference_output_type = tf.int8
        if mode == "int8":
            if representative is None:
                raise ValueError("int8 conversion needs representative data")
            rep = representative.astype(np.float32)

            def rep_gen():
                for i in range(len(rep)):
                    yield [rep[i : i + 1]]

            conv.representative_dataset = rep_gen
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif mode == "dynamic":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif mode == "sparse":
        conv.optimizations = [tf.lite.Optimize.EXPERIMENTAL_SPARSITY]
    elif mode != "float32":
        raise ValueError(f"unknown conversion mode {mode!r}")
    return conv.convert()


def _compile(model, fit: FitConfig, n_train: int, epochs: int, loss: Any = None,
             loss_weights: Any = None) -> None:
    from tensorflow import keras

    steps = epochs * int(np.ceil(n_train * (1 - fit.validation_split) / fit.batch_size))
    lr = keras.optimizers.schedules.CosineDecay(fit.learning_rate, decay_steps=max(1, steps))
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss=loss or "sparse_categorical_crossentropy", loss_weights=loss_weights,
                  metrics=None if loss_weights else ["accuracy"])


def _epochs(fit: FitConfig, scale: float) -> int:
    return max(1, round(fit.epochs * scale))


def _write(path: Path, blob: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return path


def _rel(path: Path, root: Path) -> str:
    return "models/" + path.relative_to(root).as_posix()


# --- segments of the committed CNNs ---


def build_segments(name: str, out: Path) -> dict[str, Any]:
    """Cut the committed ``name`` CNN into one segment per block; check the rebuild first."""
    from models.training.rebuild import blocks_from_tflite, segment_model, whole_model

    whole_path = out / f"{name}.tflite"
    quantized = name != "fp32"
    blocks = blocks_from_tflite(whole_path)
    mode = "pinned" if quantized else "float32"
    rebuilt = to_tflite(whole_model(blocks, name), mode)
    entry: dict[str, Any] = {
        "whole": _rel(whole_path, out),
        "method": ("Keras blocks rebuilt from the committed file: dequantized int8 weights and "
                   "every activation pinned to the committed scale/zero point (fixed-range "
                   "fake-quant), each segment converted on its own" if quantized else
                   "Keras blocks with the committed float weights, each segment converted on "
                   "its own"),
        "rebuilt_whole_identical_outputs": None,  # filled by check_rebuilt()
        "_rebuilt_blob": rebuilt,
        "segments": [],
    }
    for k, b in enumerate(blocks):
        blob = to_tflite(segment_model(blocks, k, k, f"{name}_{b.name}"), mode)
        path = _write(out / "segments" / f"{name}_s{k + 1}_{b.name}.tflite", blob)
        entry["segments"].append({"name": b.name, "file": _rel(path, out)})
    return entry


def _raw_outputs(blob_or_path: bytes | Path, images: np.ndarray) -> np.ndarray:
    """Raw output tensor of a whole CNN for each uint8 image (no dequantization)."""
    from ai_edge_litert.interpreter import Interpreter

    from models.chain import TensorMeta, image_tensor

    interp = (Interpreter(model_content=blob_or_path) if isinstance(blob_or_path, bytes)
              else Interpreter(model_path=str(blob_or_path)))
    interp.allocate_tensors()
    i, o = interp.get_input_details()[0], interp.get_output_details()[0]
    meta = TensorMeta.from_details(i)
    outs = []
    for img in images:
        interp.set_tensor(i["index"], image_tensor(img, meta))
        interp.invoke()
        outs.append(interp.get_tensor(o["index"]).reshape(-1).copy())
    return np.stack(outs)


def check_rebuilt(entry: dict[str, Any], out: Path, images: np.ndarray) -> None:
    """The rebuilt whole must give the committed file's raw outputs on every evaluation image."""
    blob = entry.pop("_rebuilt_blob")
    a = _raw_outputs(blob, images)
    b = _raw_outputs(out / entry["whole"].removeprefix("models/"), images)
    rows = int((a != b).any(axis=1).sum())
    entry["rebuilt_whole_identical_outputs"] = {"images": len(images), "rows_differing": rows}
    if rows:
        raise SystemExit(f"{entry['whole']}: the rebuilt Keras model differs from the committed "
                         f"file on {rows} of {len(images)} images; segments would not be exact")


def ptq_cut_check(out: Path, representative: np.ndarray, images: np.ndarray) -> dict[str, Any]:
    """The int8 CNN cut the usual way: head and tail post-training quantized apart, the tail
    calibrated on the head's float outputs. Counts how its head∘tail differs from a whole model
    calibrated the same way (the effect of quantizing the cut twice) and from the committed
    file (the effect of recalibrating at all)."""
    from models.chain import TensorMeta, image_tensor
    from models.training.rebuild import blocks_from_tflite, segment_model, whole_model

    blocks = blocks_from_tflite(out / "int8.tflite", pin_ranges=False)
    rep = representative.astype(np.float32) / 255.0
    whole = _raw_outputs(to_tflite(whole_model(blocks, "w"), "int8", rep), images)
    committed = _raw_outputs(out / "int8.tflite", images)
    from ai_edge_litert.interpreter import Interpreter

    cuts = []
    for k in range(1, len(blocks)):
        head = segment_model(blocks, 0, k - 1, "head")
        tail = segment_model(blocks, k, len(blocks) - 1, "tail")
        h = Interpreter(model_content=to_tflite(head, "int8", rep))
        t = Interpreter(model_content=to_tflite(tail, "int8", head.predict(rep, verbose=0)))
        h.allocate_tensors()
        t.allocate_tensors()
        hi, ho = h.get_input_details()[0], h.get_output_details()[0]
        ti, to = t.get_input_details()[0], t.get_output_details()[0]
        h_meta, h_out, t_in = (TensorMeta.from_details(d) for d in (hi, ho, ti))
        raw = []
        for img in images:
            h.set_tensor(hi["index"], image_tensor(img, h_meta))
            h.invoke()
            t.set_tensor(ti["index"], h.get_tensor(ho["index"]).reshape(t_in.shape))
            t.invoke()
            raw.append(t.get_tensor(to["index"]).reshape(-1).copy())
        r = np.stack(raw)
        cuts.append({
            "after": blocks[k - 1].name,
            "head_output_scale": h_out.scale, "tail_input_scale": t_in.scale,
            "scale_ulps_apart": int(abs(int(np.float32(h_out.scale).view(np.int32))
                                        - int(np.float32(t_in.scale).view(np.int32)))),
            "zero_points": [h_out.zero_point, t_in.zero_point],
            "rows_differing_vs_ptq_whole": int((r != whole).any(axis=1).sum()),
            "mismatches_vs_ptq_whole": int((r.argmax(1) != whole.argmax(1)).sum()),
            "mismatches_vs_committed": int((r.argmax(1) != committed.argmax(1)).sum()),
        })
    return {
        "images": len(images),
        "what": "int8 head and tail quantized apart (tail calibrated on the head's float "
                "outputs, raw int8 passed at the cut); not committed",
        "ptq_whole_vs_committed": {
            "rows_differing": int((whole != committed).any(axis=1).sum()),
            "mismatches": int((whole.argmax(1) != committed.argmax(1)).sum())},
        "cuts": cuts,
    }


# --- multi-exit CNN ---


def multi_exit_layers() -> dict[str, Any]:
    from tensorflow.keras import layers

    return {
        "reshape": layers.Reshape((28, 28, 1)),
        "conv1": layers.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        "pool1": layers.MaxPooling2D(name="pool1"),
        "exit1_pool": layers.MaxPooling2D(name="exit1_pool"),
        "exit1_flat": layers.Flatten(name="exit1_flat"),
        "exit1": layers.Dense(10, name="exit1"),
        "conv2": layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        "pool2": layers.MaxPooling2D(name="pool2"),
        "exit2_flat": layers.Flatten(name="exit2_flat"),
        "exit2": layers.Dense(10, name="exit2"),
        "conv3": layers.Conv2D(64, 3, activation="relu", name="conv3"),
        "pool3": layers.MaxPooling2D(name="pool3"),
        "flat3": layers.Flatten(name="flat3"),
        "dense3": layers.Dense(64, activation="relu", name="dense3"),
        "exit3": layers.Dense(10, name="exit3"),
    }


# The tensors that are int8 in the quantized segments, in order; each gets a fixed range.
MULTI_EXIT_POINTS = ("image", "conv1", "exit1", "conv2", "exit2", "conv3", "dense3", "exit3")
MULTI_EXIT_SHAPES = ((28, 28), (14, 14, 16), (7, 7, 32))


def multi_exit_segment(L: dict[str, Any], k: int, x, q):
    """Segment ``k`` (1..3) on ``x``: (features or None, exit logits). ``q(name, t)`` marks a
    quantization point (identity for float, a fixed-range fake-quant for int8)."""
    if k == 1:
        x = L["reshape"](q("image", x))
        f = L["pool1"](q("conv1", L["conv1"](x)))
        return f, q("exit1", L["exit1"](L["exit1_flat"](L["exit1_pool"](f))))
    if k == 2:
        f = L["pool2"](q("conv2", L["conv2"](q("conv1", x))))
        return f, q("exit2", L["exit2"](L["exit2_flat"](f)))
    x = L["pool3"](q("conv3", L["conv3"](q("conv2", x))))
    return None, q("exit3", L["exit3"](q("dense3", L["dense3"](L["flat3"](x)))))


def multi_exit_training_model(L: dict[str, Any]):
    from tensorflow import keras
    from tensorflow.keras import layers

    inp = keras.Input(shape=(28, 28), name="image")
    x, outs = inp, []
    for k in (1, 2, 3):
        x, logits = multi_exit_segment(L, k, x, lambda _n, t: t)
        outs.append(layers.Softmax(name=f"p{k}")(logits))
    return keras.Model(inp, outs, name="multi_exit")


def calibrate_ranges(L: dict[str, Any], rep: np.ndarray) -> dict[str, tuple[float, float]]:
    """Real range of every quantization point over the representative images (min/max with 0
    included, as the converter's calibration does)."""
    from tensorflow import keras

    inp = keras.Input(shape=(28, 28))
    taps: dict[str, Any] = {}

    def tap(name: str, t):
        taps.setdefault(name, t)
        return t

    x = inp
    for k in (1, 2, 3):
        x, _ = multi_exit_segment(L, k, x, tap)
    probe = keras.Model(inp, taps)
    values = probe.predict(rep, batch_size=100, verbose=0)
    return {n: (min(0.0, float(np.min(v))), max(0.0, float(np.max(v))))
            for n, v in values.items()}


def multi_exit_segment_model(L: dict[str, Any], k: int, ranges: dict[str, tuple[float, float]] | None):
    from tensorflow import keras
    from tensorflow.keras import layers

    from models.training.rebuild import fake_quant_layer

    def q(name: str, t):
        return fake_quant_layer(*ranges[name])(t) if ranges else t

    # A fixed batch of 1: with a dynamic batch the int8 converter loses the input of the
    # Flatten's SHAPE op when the flattened tensor is also an output (segment 2).
    inp = keras.Input(shape=MULTI_EXIT_SHAPES[k - 1], batch_size=1, name="image" if k == 1 else "x")
    f, logits = multi_exit_segment(L, k, inp, q)
    probs = layers.Softmax(name="probabilities")(logits)
    return keras.Model(inp, [f, probs] if f is not None else probs, name=f"exit_s{k}")


def build_multi_exit(out: Path, x_train: np.ndarray, y_train: np.ndarray, rep: np.ndarray,
                     seed: int, scale: float) -> dict[str, Any]:
    from tensorflow import keras

    t0 = time.time()
    keras.utils.set_random_seed(seed + MULTI_EXIT_SEED_OFFSET)
    L = multi_exit_layers()
    model = multi_exit_training_model(L)
    epochs = _epochs(MULTI_EXIT_FIT, scale)
    _compile(model, MULTI_EXIT_FIT, len(x_train), epochs,
             loss=["sparse_categorical_crossentropy"] * 3, loss_weights=list(MULTI_EXIT_LOSS_WEIGHTS))
    x = _augment(x_train, MULTI_EXIT_FIT.augment_fraction, seed).astype(np.float32) / 255.0
    model.fit(x, [y_train] * 3, epochs=epochs, batch_size=MULTI_EXIT_FIT.batch_size,
              validation_split=MULTI_EXIT_FIT.validation_split, verbose=2, shuffle=True)
    rep01 = rep.astype(np.float32) / 255.0
    ranges = calibrate_ranges(L, rep01)
    entry: dict[str, Any] = {
        "architecture": "s1: conv 16@3×3 + pool → exit1 (pool, dense 10); s2: conv 32@3×3 + pool "
                        "→ exit2 (dense 10); s3: conv 64@3×3 + pool, dense 64 → exit3 (dense 10)",
        "training": {**asdict(MULTI_EXIT_FIT), "epochs": epochs,
                     "loss_weights": list(MULTI_EXIT_LOSS_WEIGHTS),
                     "seed": seed + MULTI_EXIT_SEED_OFFSET, "parameters": int(model.count_params()),
                     "representative_samples": len(rep), "train_seconds": round(time.time() - t0, 1)},
        "ranges": {n: [round(lo, 6), round(hi, 6)] for n, (lo, hi) in ranges.items()},
    }
    for precision, rng in (("fp32", None), ("int8", ranges)):
        segs = []
        for k in (1, 2, 3):
            blob = to_tflite(multi_exit_segment_model(L, k, rng), "pinned" if rng else "float32")
            path = _write(out / "multiexit" / f"{precision}_s{k}.tflite", blob)
            segs.append({"name": f"s{k}", "file": _rel(path, out)})
        entry[precision] = {"segments": segs}
    return entry


# --- variants ---


def variant_model(spec: VariantSpec):
    from tensorflow import keras
    from tensorflow.keras import layers

    r = spec.resolution
    inp = keras.Input(shape=(r, r), name="image")
    x = layers.Reshape((r, r, 1))(inp)
    x = layers.Conv2D(spec.width, 3, padding="same", activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(2 * spec.width, 3, activation="relu")(x)
    x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dense(spec.dense, activation="relu")(x)
    out = layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inp, out, name=spec.name)


def build_variant(spec: VariantSpec, out: Path, x_train: np.ndarray, y_train: np.ndarray,
                  rep: np.ndarray, seed: int, scale: float) -> dict[str, Any]:
    from tensorflow import keras

    t0 = time.time()
    keras.utils.set_random_seed(seed + spec.seed_offset)
    model = variant_model(spec)
    epochs = _epochs(VARIANT_FIT, scale)
    _compile(model, VARIANT_FIT, len(x_train), epochs)
    x = _augment(x_train, VARIANT_FIT.augment_fraction, seed + spec.seed_offset)
    x = resize_images(x, spec.resolution).astype(np.float32) / 255.0
    model.fit(x, y_train, epochs=epochs, batch_size=VARIANT_FIT.batch_size,
              validation_split=VARIANT_FIT.validation_split, verbose=2, shuffle=True)
    rep_r = resize_images(rep, spec.resolution).astype(np.float32) / 255.0
    path = _write(out / "variants" / f"{spec.name}.tflite", to_tflite(model, "int8", rep_r))
    return {"file": _rel(path, out), "resolution": spec.resolution, "width": spec.width,
            "dense": spec.dense, "quantization": "full-integer int8",
            "training": {**asdict(VARIANT_FIT), "epochs": epochs, "seed": seed + spec.seed_offset,
                         "parameters": int(model.count_params()),
                         "representative_samples": len(rep),
                         "train_seconds": round(time.time() - t0, 1)}}


# --- multi-scale versions of the fp32 CNN ---


def prune_masks(model, sparsity: dict[str, float]) -> dict[str, np.ndarray]:
    """Per-layer magnitude masks: the ``sparsity`` share of smallest |w| of each kernel is 0."""
    masks = {}
    for name, share in sparsity.items():
        w = model.get_layer(name).get_weights()[0]
        k = round(share * w.size)
        order = np.argsort(np.abs(w), axis=None, kind="stable")
        mask = np.ones(w.size, dtype=np.float32)
        mask[order[:k]] = 0.0
        masks[name] = mask.reshape(w.shape)
    return masks


def build_pruned(out: Path, x_train: np.ndarray, y_train: np.ndarray, seed: int,
                 scale: float) -> tuple[Path, dict[str, Any]]:
    from tensorflow import keras

    from models.training.rebuild import blocks_from_tflite, whole_model

    t0 = time.time()
    keras.utils.set_random_seed(seed + PRUNE_SEED_OFFSET)
    model = whole_model(blocks_from_tflite(out / "fp32.tflite"), "fp32_pruned")
    masks = prune_masks(model, PRUNE_SPARSITY)

    def apply_masks() -> None:
        for name, mask in masks.items():
            kernel = model.get_layer(name).kernel
            kernel.assign(kernel * mask)

    class KeepZeros(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            apply_masks()

    apply_masks()
    epochs = _epochs(PRUNE_FIT, scale)
    _compile(model, PRUNE_FIT, len(x_train), epochs)
    x = _augment(x_train, PRUNE_FIT.augment_fraction, seed).astype(np.float32) / 255.0
    model.fit(x, y_train, epochs=epochs, batch_size=PRUNE_FIT.batch_size,
              validation_split=PRUNE_FIT.validation_split, verbose=2, shuffle=True,
              callbacks=[KeepZeros()])
    apply_masks()
    dense = to_tflite(model, "float32")
    sparse = to_tflite(model, "sparse")
    blob, stored = (sparse, "sparse") if len(sparse) < len(dense) else (dense, "dense")
    path = _write(out / "multiscale" / "fp32_pruned.tflite", blob)
    return path, {"scheme": f"magnitude pruning {json.dumps(PRUNE_SPARSITY)} of the committed "
                            f"fp32 weights + {epochs}-epoch fine-tune keeping the zeros; float32, "
                            f"{stored} storage",
                  "pruning": {"sparsity_by_layer": PRUNE_SPARSITY, "storage": stored,
                              "dense_file_bytes": len(dense), "sparse_file_bytes": len(sparse)},
                  "training": {**asdict(PRUNE_FIT), "epochs": epochs,
                               "seed": seed + PRUNE_SEED_OFFSET,
                               "train_seconds": round(time.time() - t0, 1)}}


def build_multiscale(out: Path, x_train: np.ndarray, y_train: np.ndarray, rep: np.ndarray,
                     seed: int, scale: float) -> dict[str, Any]:
    from models.training.rebuild import blocks_from_tflite, whole_model

    model = whole_model(blocks_from_tflite(out / "fp32.tflite"), "fp32")
    rep01 = rep.astype(np.float32) / 255.0
    entries: dict[str, Any] = {"fp32": {"file": "models/fp32.tflite",
                                        "scheme": "float32 (the committed tier model)"}}
    for name, mode, scheme in (
        ("fp32_int8", "int8", f"full-integer int8 (int8 input/output, {len(rep)} calibration images)"),
        ("fp32_dynamic", "dynamic", "dynamic-range int8 (int8 weights, float activations and I/O)"),
        ("fp32_f16", "float16", "float16 weights (dequantized to float32 at load)"),
    ):
        path = _write(out / "multiscale" / f"{name}.tflite", to_tflite(model, mode, rep01))
        entries[name] = {"file": _rel(path, out), "scheme": scheme}
    path, pruned = build_pruned(out, x_train, y_train, seed, scale)
    entries["fp32_pruned"] = {"file": _rel(path, out), **pruned}
    return entries


# --- the command ---


def main(args: argparse.Namespace) -> int:
    set_threads()
    import tensorflow as tf

    from models.evaluate import load_eval_set

    seed = int(args.seed)
    out = Path(args.out) if args.out else models_dir()
    data = Path(args.data_out) if args.data_out else data_dir()
    manifest_file = out / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    if manifest["seed"] != seed:
        raise SystemExit(f"--seed {seed} differs from the manifest's seed {manifest['seed']}")
    eval_path = data / "mnist_eval.npz"
    if sha256(eval_path) != manifest["eval_set"]["sha256"]:
        raise SystemExit(f"{eval_path} is not the manifest's evaluation set")
    eval_set = load_eval_set(eval_path)
    images = np.concatenate([eval_set["easy_images"], eval_set["hard_images"]])

    x_train, y_train, _, _ = load_mnist(args.mnist)
    if args.train_limit:
        sel = np.random.default_rng(seed).permutation(len(x_train))[: args.train_limit]
        x_train, y_train = x_train[sel], y_train[sel]
    # The same representative images as the tier models' INT8 calibration.
    rep = x_train[np.random.default_rng(seed + 1).permutation(len(x_train))[:REPRESENTATIVE_SAMPLES]]
    scale = float(args.epochs_scale)
    parts = args.only or list(PARTS)
    old = manifest.get("research", {})
    research: dict[str, Any] = {
        "format": RESEARCH_FORMAT, "seed": seed, "tf_threads": TF_THREADS,
        "mnist_source": "local copy" if args.mnist else "keras.datasets.mnist",
        "train_images": len(x_train),
        "versions": {"tensorflow": tf.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        **{p: old.get(p, {}) for p in PARTS},
    }
    if "segments" in parts:
        research["segments"] = {}
        for name in ("fp32", "int8"):
            entry = build_segments(name, out)
            check_rebuilt(entry, out, images)
            research["segments"][name] = entry
        research["segments"]["int8"]["ptq_cut_check"] = ptq_cut_check(out, rep, images)
    if "multi_exit" in parts:
        research["multi_exit"] = build_multi_exit(out, x_train, y_train, rep, seed, scale)
    if "variants" in parts:
        research["variants"] = {s.name: build_variant(s, out, x_train, y_train, rep, seed, scale)
                                for s in VARIANTS}
    if "multiscale" in parts:
        research["multiscale"] = build_multiscale(out, x_train, y_train, rep, seed, scale)
    figures = research_figures({p: research[p] for p in parts}, eval_set, out)
    merge(research, figures)
    manifest["research"] = research
    manifest_file.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {manifest_file} (research: {', '.join(parts)})")
    return 0
