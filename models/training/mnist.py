"""Load MNIST from a local copy (four IDX ``.gz`` files or a Keras ``mnist.npz``) or Keras' download."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "y_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "y_test": "t10k-labels-idx1-ubyte.gz",
}


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if (magic >> 8) != 0x08:  # unsigned byte
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    return arr.reshape(dims)


def load_mnist(source: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test) as uint8 images (n, 28, 28) and int labels.

    ``source``: a folder holding the four IDX files (``.gz`` or not), a Keras ``mnist.npz``,
    or ``None`` for ``keras.datasets.mnist.load_data()`` (needs the internet).
    """
    if source is None:
        from tensorflow import keras  # train extra only

        (x_tr, y_tr), (x_te, y_te) = keras.datasets.mnist.load_data()
        return x_tr, y_tr, x_te, y_te
    path = Path(source)
    if path.is_file() and path.suffix == ".npz":
        with np.load(path) as z:
            return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
    if path.is_dir():
        arrays = {}
        for key, name in IDX_FILES.items():
            candidates = [path / name, path / name.removesuffix(".gz")]
            found = next((c for c in candidates if c.exists()), None)
            if found is None:
                raise FileNotFoundError(f"MNIST folder {path} lacks {name} (or its uncompressed form)")
            arrays[key] = _read_idx(found)
        return arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"]
    raise FileNotFoundError(f"--mnist {path}: expected a folder of IDX files or a mnist.npz")
