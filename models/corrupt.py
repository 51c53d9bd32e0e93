"""Deterministic, seeded corruption of MNIST digits: the "hard" requests.

Each image gets its own generator seeded by ``(seed, index)``, so corrupting image *i* does
not depend on which other images are corrupted or in what order. The recipe combines what
makes real captures hard for small models — rotation, blur, partial occlusion, lowered
contrast and sensor noise — with a strength set by ``severity`` (1.0 is the committed set).
Only numpy and scipy are needed, so the hard set can be regenerated without TensorFlow.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

CORRUPTION_VERSION = 1


def corrupt_image(image: np.ndarray, rng: np.random.Generator, severity: float = 1.0) -> np.ndarray:
    """One corrupted copy of a 28×28 uint8 image (returns uint8)."""
    x = image.astype(np.float32) / 255.0
    # Rotation about the centre.
    angle = rng.uniform(-28.0, 28.0) * severity
    x = ndimage.rotate(x, angle, reshape=False, order=1, mode="constant", cval=0.0)
    # Small translation.
    shift = rng.uniform(-2.0, 2.0, size=2) * severity
    x = ndimage.shift(x, shift, order=1, mode="constant", cval=0.0)
    # Defocus blur.
    if rng.random() < 0.6:
        x = ndimage.gaussian_filter(x, sigma=rng.uniform(0.4, 1.1) * severity)
    # Occlusion: a rectangle erased from the digit's area.
    if rng.random() < 0.6:
        h = int(rng.integers(4, 9))
        w = int(rng.integers(4, 9))
        r = int(rng.integers(5, 23 - h + 1))
        c = int(rng.integers(5, 23 - w + 1))
        x[r : r + h, c : c + w] = 0.0
    # Lower contrast, then sensor noise.
    x = x * rng.uniform(0.55, 1.0)
    x = x + rng.normal(0.0, 0.18 * severity, size=x.shape).astype(np.float32)
    # Salt noise pixels.
    salt = rng.random(x.shape) < 0.03 * severity
    x[salt] = rng.uniform(0.5, 1.0, size=int(salt.sum()))
    return np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)


def corrupt(images: np.ndarray, seed: int, indices: np.ndarray | None = None,
            severity: float = 1.0) -> np.ndarray:
    """Corrupt a stack of uint8 images; ``indices`` (default 0..n-1) key each image's generator."""
    images = np.asarray(images, dtype=np.uint8)
    if indices is None:
        indices = np.arange(len(images))
    out = np.empty_like(images)
    for k, (img, idx) in enumerate(zip(images, indices, strict=True)):
        rng = np.random.default_rng([int(seed), int(idx)])
        out[k] = corrupt_image(img, rng, severity)
    return out
