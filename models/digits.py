"""scikit-learn's bundled UCI handwritten digits as RGB images of any size, with fixed splits.

1,797 real 8x8 grayscale scans in 10 classes ship inside scikit-learn, so this works offline.
The splits are disjoint and fixed by a seed: train (for the reference model), calib (the default
calibration set) and test (the default evaluation set).
"""
from __future__ import annotations

import numpy as np

SPLIT_SEED = 20240601
TEST_SIZE = 360
CALIB_SIZE = 200
SPLITS = ("train", "calib", "test")
NUM_CLASSES = 10


def split_indices(seed: int = SPLIT_SEED) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    n = len(load_digits().target)
    order = np.random.default_rng(seed).permutation(n)
    return {
        "test": np.sort(order[:TEST_SIZE]),
        "calib": np.sort(order[TEST_SIZE:TEST_SIZE + CALIB_SIZE]),
        "train": np.sort(order[TEST_SIZE + CALIB_SIZE:]),
    }


def load_split(split: str, height: int, width: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 pixels (N, height, width, 3), int64 labels (N,)) for one split."""
    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; valid: {', '.join(SPLITS)}")
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    idx = split_indices(seed)[split]
    # The scans hold 0..16 (ink is high); scale to 0..255 and upsample like a photo would be.
    small = np.clip(digits.images[idx] * (255.0 / 16.0), 0, 255).astype(np.uint8)
    out = np.empty((len(idx), height, width, 3), dtype=np.uint8)
    for i, img in enumerate(small):
        big = Image.fromarray(img, mode="L").resize((width, height), Image.BILINEAR)
        out[i] = np.asarray(big)[..., None]
    return out, digits.target[idx].astype(np.int64)
