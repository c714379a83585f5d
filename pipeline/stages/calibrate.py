"""calibrate: the representative dataset for post-training quantization.

From a folder of the user's images (CALIB=dir) or the reference calibration split. Output:
calib.npz (``inputs``: float32 (N, H, W, 3), preprocessed as the build stage recorded in model.json) and
calib.json (what was used).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline.datasets import ImageSource, load_images
from pipeline.progress import Progress

NAME = "calibrate"
VERSION = 1
TOOLS = ("numpy", "pillow", "scikit-learn")


@dataclass(frozen=True)
class Config:
    source: ImageSource
    n: int
    seed: int = 0


def run(inputs: Mapping[str, Path], config: Config, out: Path, progress: Progress) -> None:
    from models.preprocessing import preprocess_from_dict

    info = json.loads(inputs["model_info"].read_text())
    _, height, width, _ = info["input_shape"]
    prep = preprocess_from_dict(info["preprocess"])           # what the build stage chose: the artifacts' input
    pixels, _, names, _ = load_images(config.source, inputs.get("images"), height, width, config.n,
                                      config.seed, progress, "calibration", prep.resize, prep.crop, labelled=False)
    if len(pixels) < config.n:
        progress.warn(f"calibration: {config.source.describe()} gave {len(pixels)} images, "
                      f"fewer than CALIB_N={config.n}")
    np.savez(out / "calib.npz", inputs=prep.apply(pixels))
    (out / "calib.json").write_text(json.dumps(
        {"source": config.source.describe(), "n": len(pixels), "images": names}, indent=1))
