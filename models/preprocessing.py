"""Image loading and Xception preprocessing (pixels to [-1, 1]).

The same preprocessing is used for calibration, evaluation and the device runner's inputs:
resize the shorter side to the model's size, centre-crop, RGB, then ``x / 127.5 - 1``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB pixels (..., H, W, 3) -> float32 in [-1, 1], as Keras' Xception expects."""
    return pixels.astype(np.float32) / 127.5 - 1.0


def load_image(path: Path, height: int, width: int) -> np.ndarray:
    """Read one JPEG/PNG as uint8 RGB (H, W, 3); grayscale, palette and RGBA are converted.

    Raises OSError (or PIL's subclasses) for an unreadable file.
    """
    from PIL import Image

    with Image.open(path) as img:
        img.load()
        if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            img = Image.alpha_composite(background, rgba)
        rgb = img.convert("RGB")
    return resize_center_crop(rgb, height, width)


def resize_center_crop(img, height: int, width: int) -> np.ndarray:
    """Resize a PIL image so it covers (height, width), then crop the centre."""
    from PIL import Image

    scale = max(height / img.height, width / img.width)
    new_w = max(width, round(img.width * scale))
    new_h = max(height, round(img.height * scale))
    img = img.resize((new_w, new_h), Image.BILINEAR)
    left = (new_w - width) // 2
    top = (new_h - height) // 2
    return np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.uint8)


def find_images(folder: Path) -> list[Path]:
    """Every .jpg/.jpeg/.png (any case) below ``folder``, at any depth, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
