"""Train, quantize and evaluate the three tier models; write ``models/`` and the evaluation set.

Models (names follow the teaching simulator):

- ``fp32``    — a CNN for the edge and cloud tiers, served as float32 TFLite;
- ``int8``    — the teaching lab's CNN (Conv 8@3×3 → pool → Conv 8@3×3 → pool → Dense 32 →
  Dense 10), full-integer post-training quantization, int8 input and output;
- ``tinycnn`` — an MCU-class CNN, full-integer INT8, well under half of ``int8``'s file.

Seeded and reproducible (``keras.utils.set_random_seed`` + op determinism). Run with
``edgebed models train --mnist PATH`` (needs the ``train`` extra). The research models cut from
and built beside these (segments, multi-exit, variants, multi-scale) come from
:mod:`models.training.research` (``edgebed models research``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.corrupt import CORRUPTION_VERSION, corrupt
from models.paths import data_dir, models_dir
from models.training.mnist import load_mnist

EVAL_PER_SET = 2000
HARD_SEVERITY = 0.85
REPRESENTATIVE_SAMPLES = 500


@dataclass(frozen=True)
class TrainConfig:
    epochs: int
    batch_size: int
    learning_rate: float
    validation_split: float
    augment_fraction: float  # share of training images given a mild corruption (0: none)
    lr_schedule: str  # "constant" or "cosine" (decay to 0 over all steps)
    quantization: str  # "float32" or "int8"


CONFIGS: dict[str, TrainConfig] = {
    "fp32": TrainConfig(epochs=8, batch_size=256, learning_rate=2e-3, validation_split=0.1,
                        augment_fraction=0.3, lr_schedule="cosine", quantization="float32"),
    "int8": TrainConfig(epochs=15, batch_size=256, learning_rate=3e-3, validation_split=0.1,
                        augment_fraction=0.0, lr_schedule="cosine", quantization="int8"),
    "tinycnn": TrainConfig(epochs=15, batch_size=256, learning_rate=4e-3, validation_split=0.1,
                           augment_fraction=0.0, lr_schedule="cosine", quantization="int8"),
}


def build_model(name: str):  # -> keras.Model
    from tensorflow import keras
    from tensorflow.keras import layers

    inp = keras.Input(shape=(28, 28), name="image")
    x = layers.Reshape((28, 28, 1))(inp)
    if name == "int8":  # the teaching lab's CNN, ~7.4 k parameters
        x = layers.Conv2D(8, 3, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(8, 3, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Flatten()(x)
        x = layers.Dense(32, activation="relu")(x)
    elif name == "tinycnn":  # MCU-class: strided convolutions, no hidden dense layer
        x = layers.Conv2D(4, 3, strides=2, activation="relu")(x)
        x = layers.Conv2D(8, 3, strides=2, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Flatten()(x)
    elif name == "fp32":  # cloud/edge CNN
        x = layers.Conv2D(32, 3, activation="relu", padding="same")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Conv2D(64, 3, activation="relu")(x)
        x = layers.MaxPooling2D()(x)
        x = layers.Flatten()(x)
        x = layers.Dropout(0.3)(x)
        x = layers.Dense(128, activation="relu")(x)
        x = layers.Dropout(0.3)(x)
    else:
        raise ValueError(f"unknown model {name!r}; allowed: {sorted(CONFIGS)}")
    out = layers.Dense(10, activation="softmax", name="probabilities")(x)
    return keras.Model(inp, out, name=name)


def _augment(x: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Mild corruption (severity 0.5, its own seed) of a seeded ``fraction`` of the images."""
    rng = np.random.default_rng(seed)
    pick = rng.random(len(x)) < fraction
    out = x.copy()
    out[pick] = corrupt(x[pick], seed=seed + 17, indices=np.flatnonzero(pick), severity=0.5)
    return out


def train_one(name: str, x_train: np.ndarray, y_train: np.ndarray, seed: int,
              epochs_scale: float = 1.0):
    from tensorflow import keras

    cfg = CONFIGS[name]
    keras.utils.set_random_seed(seed)
    model = build_model(name)
    epochs = max(1, round(cfg.epochs * epochs_scale))
    lr = cfg.learning_rate
    if cfg.lr_schedule == "cosine":
        steps = epochs * int(np.ceil(len(x_train) * (1 - cfg.validation_split) / cfg.batch_size))
        lr = keras.optimizers.schedules.CosineDecay(cfg.learning_rate, decay_steps=steps)
    model.compile(optimizer=keras.optimizers.Adam(lr),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    x, y = x_train, y_train
    if cfg.augment_fraction > 0:
        x = _augment(x, cfg.augment_fraction, seed)
    xf = x.astype(np.float32) / 255.0
    model.fit(xf, y, epochs=epochs, batch_size=cfg.batch_size,
              validation_split=cfg.validation_split, verbose=2, shuffle=True)
    return model, epochs


def convert(model, name: str, representative: np.ndarray) -> bytes:
    import tensorflow as tf

    cfg = CONFIGS[name]
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if cfg.quantization == "int8":
        rep = representative.astype(np.float32) / 255.0

        def rep_gen():
            for i in range(len(rep)):
                yield [rep[i : i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = rep_gen
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def build_eval_set(x_test: np.ndarray, y_test: np.ndarray, seed: int,
                   severity: float = HARD_SEVERITY) -> dict[str, np.ndarray]:
    """2,000 clean + 2,000 corrupted test images, disjoint, chosen by a seeded permutation."""
    per_set = min(EVAL_PER_SET, len(x_test) // 2)
    perm = np.random.default_rng(seed).permutation(len(x_test))
    easy_idx = np.sort(perm[:per_set])
    hard_idx = np.sort(perm[per_set : 2 * per_set])
    return {
        "easy_images": x_test[easy_idx],
        "easy_labels": y_test[easy_idx].astype(np.uint8),
        "easy_source_index": easy_idx.astype(np.int32),
        "hard_images": corrupt(x_test[hard_idx], seed=seed, indices=hard_idx, severity=severity),
        "hard_labels": y_test[hard_idx].astype(np.uint8),
        "hard_source_index": hard_idx.astype(np.int32),
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(args: argparse.Namespace) -> int:
    from models.evaluate import describe_model, evaluate_model

    if args.eval_only:
        return _rebuild_eval(args, describe_model, evaluate_model)
    import tensorflow as tf

    seed = int(args.seed)
    out = Path(args.out) if args.out else models_dir()
    data_out = Path(args.data_out) if args.data_out else data_dir()
    out.mkdir(parents=True, exist_ok=True)
    data_out.mkdir(parents=True, exist_ok=True)
    tf.config.experimental.enable_op_determinism()

    x_train, y_train, x_test, y_test = load_mnist(args.mnist)
    if args.train_limit:
        sel = np.random.default_rng(seed).permutation(len(x_train))[: args.train_limit]
        x_train, y_train = x_train[sel], y_train[sel]
    eval_set = build_eval_set(x_test, y_test, seed)
    eval_path = data_out / "mnist_eval.npz"
    np.savez_compressed(eval_path, **eval_set)  # type: ignore[arg-type]  # numpy stub: allow_pickle kw
    print(f"wrote {eval_path} ({eval_path.stat().st_size} bytes)")

    representative = x_train[np.random.default_rng(seed + 1).permutation(len(x_train))[:REPRESENTATIVE_SAMPLES]]
    manifest: dict = {
        "format": 1,
        "seed": seed,
        "mnist_source": "local copy" if args.mnist else "keras.datasets.mnist",
        "train_images": len(x_train),
        "eval_set": {
            "file": "data/mnist_eval.npz",
            "sha256": sha256(eval_path),
            "easy": len(eval_set["easy_labels"]),
            "hard": len(eval_set["hard_labels"]),
            "corruption_version": CORRUPTION_VERSION,
            "hard_severity": HARD_SEVERITY,
        },
        "versions": {"tensorflow": tf.__version__, "numpy": np.__version__,
                     "python": platform.python_version()},
        "models": {},
    }
    names = args.only or ["fp32", "int8", "tinycnn"]
    if args.only:  # keep the other models' entries (training is per model, seeded per model)
        manifest["models"] = json.loads((out / "manifest.json").read_text())["models"]
    for name in names:
        t0 = time.time()
        model, epochs = train_one(name, x_train, y_train, seed, args.epochs_scale)
        blob = convert(model, name, representative)
        path = out / f"{name}.tflite"
        path.write_bytes(blob)
        entry = describe_model(path)
        entry.update(evaluate_model(path, eval_set))
        entry["parameters"] = int(model.count_params())
        entry["training"] = {**asdict(CONFIGS[name]), "epochs": epochs, "seed": seed,
                             "representative_samples": REPRESENTATIVE_SAMPLES
                             if CONFIGS[name].quantization == "int8" else 0,
                             "train_seconds": round(time.time() - t0, 1)}
        manifest["models"][name] = entry
        manifest["models"] = {k: manifest["models"][k] for k in ("fp32", "int8", "tinycnn")
                              if k in manifest["models"]}
        print(f"{name}: {entry['bytes']} bytes, easy {entry['accuracy_easy_pct']:.2f} %, "
              f"hard {entry['accuracy_hard_pct']:.2f} %")
    for name, entry in manifest["models"].items():
        if name not in names:  # kept model: refresh its figures on this evaluation set
            entry.update(describe_model(out / f"{name}.tflite"))
            entry.update(evaluate_model(out / f"{name}.tflite", eval_set))
    if (out / "manifest.json").exists():  # keep the research section: `models eval --check`
        old = json.loads((out / "manifest.json").read_text())  # flags it if a cut model changed
        if "research" in old:
            manifest["research"] = old["research"]
            print("kept the manifest's research section; rerun `edgebed models research` "
                  "after retraining fp32 or int8")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    print(f"wrote {out / 'manifest.json'}")
    return 0


def _rebuild_eval(args: argparse.Namespace, describe_model, evaluate_model) -> int:
    """Rewrite the evaluation set and the manifest's figures for already-trained models.

    Training never reads the test set, so this gives the same files a full run would.
    """
    seed = int(args.seed)
    out = Path(args.out) if args.out else models_dir()
    data_out = Path(args.data_out) if args.data_out else data_dir()
    manifest = json.loads((out / "manifest.json").read_text())
    if manifest["seed"] != seed:
        raise SystemExit(f"--seed {seed} differs from the manifest's seed {manifest['seed']}")
    _, _, x_test, y_test = load_mnist(args.mnist)
    eval_set = build_eval_set(x_test, y_test, seed)
    eval_path = data_out / "mnist_eval.npz"
    np.savez_compressed(eval_path, **eval_set)  # type: ignore[arg-type]  # numpy stub: allow_pickle kw
    manifest["eval_set"].update(sha256=sha256(eval_path), corruption_version=CORRUPTION_VERSION,
                                hard_severity=HARD_SEVERITY)
    for name, entry in manifest["models"].items():
        path = out / f"{name}.tflite"
        entry.update(describe_model(path))
        entry.update(evaluate_model(path, eval_set))
        print(f"{name}: easy {entry['accuracy_easy_pct']:.2f} %, hard {entry['accuracy_hard_pct']:.2f} %")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return 0
