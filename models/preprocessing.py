"""Image loading and preprocessing: what pixels a model takes, as data.

Calibration, evaluation and the device runner's inputs are made the same way: read the image as RGB, resize
(``resize``: bilinear, nearest, bicubic or area) either to cover the model's size and crop the centre
(``crop = "center"``) or straight to the size (``crop = "none"``, what Keras' ``image_dataset_from_directory``
does), then ``(pixel - mean) / std`` per channel, in BGR order for ``imagenet-caffe``. Xception's own is
``x / 127.5 - 1`` ([-1, 1]).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def preprocess(pixels: np.ndarray) -> np.ndarray:
    """uint8 RGB pixels (..., H, W, 3) -> float32 in [-1, 1], as Keras' Xception expects."""
    return pixels.astype(np.float32) / 127.5 - 1.0


# "keras": what Keras' image_dataset_from_directory does (tf.image.resize, bilinear, half-pixel centres, no
# antialiasing, float result); the others are PIL's filters, which antialias when they shrink
RESIZE = ("keras", "bilinear", "nearest", "bicubic", "area")
CROPS = ("center", "none")


@dataclass(frozen=True)
class Preprocess:
    """What a model takes: ``(pixel - mean) / std`` per channel (in BGR order when ``bgr``), after the resize."""
    name: str = "xception"
    mean: tuple[float, float, float] = (127.5, 127.5, 127.5)
    std: tuple[float, float, float] = (127.5, 127.5, 127.5)
    bgr: bool = False
    resize: str = "bilinear"
    crop: str = "center"

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        if self == replace(PRESETS["xception"], resize=self.resize, crop=self.crop):
            return preprocess(pixels)               # the same float32 bytes as every earlier compile
        x = pixels[..., ::-1] if self.bgr else pixels
        return ((x.astype(np.float32) - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)

    def describe(self) -> str:
        order = "BGR" if self.bgr else "RGB"
        fmt = lambda v: ", ".join(f"{x:g}" for x in v)
        return (f"{self.name}: {order} (pixel - [{fmt(self.mean)}]) / [{fmt(self.std)}], {self.resize} resize, "
                f"{'centre crop' if self.crop == 'center' else 'no crop'}")

    def to_dict(self) -> dict:
        return {"name": self.name, "mean": list(self.mean), "std": list(self.std),
                "channels": "bgr" if self.bgr else "rgb", "resize": self.resize, "crop": self.crop}


def preprocess_from_dict(d: dict) -> Preprocess:
    """The inverse of Preprocess.to_dict (model.json, the manifest)."""
    return Preprocess(d["name"], tuple(d["mean"]), tuple(d["std"]), d["channels"] == "bgr", d["resize"], d["crop"])


def leading_preprocessing(model) -> tuple[str, str, str] | None:
    """(kind, layer name, detail) of a preprocessing step at the model's input, or None where the first operation
    is an ordinary layer (a convolution, padding, ...). ``kind`` is Rescaling, Normalization, or the class of an
    operation this tool cannot read (a Lambda, a keras.ops call, a custom layer). A leading Resizing is looked
    past; a nested model is looked into."""
    import keras

    for op in getattr(model, "operations", None) or model.layers:
        if isinstance(op, (keras.layers.InputLayer, keras.layers.Resizing)):
            continue
        if isinstance(op, keras.Model):
            return leading_preprocessing(op)
        if isinstance(op, keras.layers.Rescaling):
            return "Rescaling", op.name, f"Rescaling(scale={op.scale:.6g}, offset={op.offset:.6g})"
        if isinstance(op, keras.layers.Normalization):
            return "Normalization", op.name, "Normalization"
        ordinary = (isinstance(op, keras.layers.Layer) and not isinstance(op, keras.layers.Lambda)
                    and type(op).__module__.startswith("keras.src.layers"))
        return None if ordinary else (type(op).__name__, op.name, type(op).__name__)
    return None


# ImageNet statistics as Keras' preprocess_input applies them: caffe (BGR, mean only) and torch (RGB, 0..1 then
# mean and std), written here in pixel units
PRESETS = {
    "xception": Preprocess("xception"),
    "raw": Preprocess("raw", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "unit": Preprocess("unit", (0.0, 0.0, 0.0), (255.0, 255.0, 255.0)),
    "imagenet-caffe": Preprocess("imagenet-caffe", (103.939, 116.779, 123.68), (1.0, 1.0, 1.0), bgr=True),
    "imagenet-torch": Preprocess("imagenet-torch", (0.485 * 255, 0.456 * 255, 0.406 * 255),
                                 (0.229 * 255, 0.224 * 255, 0.225 * 255)),
}
ACCEPTED = (f"one of {', '.join(PRESETS)}, or \"mean=R,G,B std=R,G,B\" in pixel units (one number is used for "
            f"all three channels)")


def parse_preprocess(text: str, resize: str = "bilinear", crop: str = "center") -> Preprocess:
    """PREPROCESS=, RESIZE=, CROP= as a Preprocess, or ValueError naming what is wrong and what is accepted."""
    if resize not in RESIZE:
        raise ValueError(f"RESIZE={resize!r} is not a resize method; accepted: {', '.join(RESIZE)}")
    if crop not in CROPS:
        raise ValueError(f"CROP={crop!r}; accepted: center (cover the size, crop the centre) or none (resize "
                         f"straight to the size, as Keras' image_dataset_from_directory)")
    text = text.strip()
    if text in PRESETS:
        return replace(PRESETS[text], resize=resize, crop=crop)
    values = {}
    for word in text.split():
        key, _, value = word.partition("=")
        if key not in ("mean", "std") or key in values:
            raise ValueError(f"PREPROCESS={text!r}: {ACCEPTED}")
        try:
            numbers = tuple(float(v) for v in value.split(","))
        except ValueError:
            raise ValueError(f"PREPROCESS={text!r}: {key} must be numbers; {ACCEPTED}") from None
        if len(numbers) not in (1, 3) or (key == "std" and any(v == 0 for v in numbers)):
            raise ValueError(f"PREPROCESS={text!r}: {key} needs 1 or 3 numbers{' (not 0)' if key == 'std' else ''}; "
                             f"{ACCEPTED}")
        values[key] = numbers * 3 if len(numbers) == 1 else numbers
    if "mean" not in values:
        raise ValueError(f"PREPROCESS={text!r}: {ACCEPTED}")
    return Preprocess("custom", values["mean"], values.get("std", (1.0, 1.0, 1.0)), resize=resize, crop=crop)


def load_image(path: Path, height: int, width: int, resize: str = "bilinear", crop: str = "center") -> np.ndarray:
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
    return resize_center_crop(rgb, height, width, resize, crop)


def resize_center_crop(img, height: int, width: int, resize: str = "bilinear", crop: str = "center") -> np.ndarray:
    """Resize a PIL image so it covers (height, width) and crop the centre, or (``crop="none"``) resize it to
    exactly (height, width). uint8 pixels, or float32 for ``resize="keras"`` (as Keras hands them to a model)."""
    from PIL import Image

    if resize == "keras":
        pixels = np.asarray(img, dtype=np.float32)
        if crop == "none":
            return bilinear_like_keras(pixels, height, width)
        scale = max(height / img.height, width / img.width)
        new_h, new_w = max(height, round(img.height * scale)), max(width, round(img.width * scale))
        big = bilinear_like_keras(pixels, new_h, new_w)
        top, left = (new_h - height) // 2, (new_w - width) // 2
        return big[top:top + height, left:left + width]

    method = {"bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "bicubic": Image.BICUBIC,
              "area": Image.BOX}[resize]
    if crop == "none":
        return np.asarray(img.resize((width, height), method), dtype=np.uint8)
    scale = max(height / img.height, width / img.width)
    new_w = max(width, round(img.width * scale))
    new_h = max(height, round(img.height * scale))
    img = img.resize((new_w, new_h), method)
    left = (new_w - width) // 2
    top = (new_h - height) // 2
    return np.asarray(img.crop((left, top, left + width, top + height)), dtype=np.uint8)


def bilinear_like_keras(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """(H, W, C) -> (height, width, C) float32 as tf.image.resize(method="bilinear", antialias=False) computes it:
    half-pixel centres, the two nearest source rows and columns, edges clamped."""
    def axis(out_size: int, in_size: int):
        src = (np.arange(out_size, dtype=np.float64) + 0.5) * (in_size / out_size) - 0.5
        src = np.clip(src, 0, in_size - 1)
        low = np.floor(src).astype(np.int64)
        high = np.minimum(low + 1, in_size - 1)
        return low, high, (src - low).astype(np.float32)

    y0, y1, fy = axis(height, pixels.shape[0])
    x0, x1, fx = axis(width, pixels.shape[1])
    top = pixels[y0][:, x0] * (1 - fx)[None, :, None] + pixels[y0][:, x1] * fx[None, :, None]
    bottom = pixels[y1][:, x0] * (1 - fx)[None, :, None] + pixels[y1][:, x1] * fx[None, :, None]
    return (top * (1 - fy)[:, None, None] + bottom * fy[:, None, None]).astype(np.float32)


def find_images(folder: Path) -> list[Path]:
    """Every .jpg/.jpeg/.png (any case) below ``folder``, at any depth, sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
