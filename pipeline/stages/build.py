"""build: the Keras model (logits out), its description, and float reference outputs on the eval set.

Outputs: model.keras, model.json, eval.npz (inputs preprocessed to [-1, 1], labels when known,
float reference logits and probabilities).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline.datasets import ImageSource, load_images
from pipeline.errors import InputError, first_line
from pipeline.progress import Progress

NAME = "build"
VERSION = 1
TOOLS = ("tensorflow", "keras", "numpy", "pillow", "scikit-learn")
SOURCES = ("imagenet", "reference", "random", "file")


@dataclass(frozen=True)
class Config:
    source: str                   # one of SOURCES
    eval: ImageSource
    eval_n: int = 0               # 0 = the whole eval source
    input_size: int = 0           # random weights only
    num_classes: int = 0          # random weights only
    seed: int = 0
    labels_known: bool = False    # digits labels mean something only for the reference model


def run(inputs: Mapping[str, Path], config: Config, out: Path, progress: Progress) -> None:
    from models.preprocessing import preprocess
    from benchmarks.metrics import softmax

    model = _load(inputs.get("model"), config, progress)
    shape = _check_input(model, inputs.get("model"))
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise InputError(f"model output must be one tensor of shape (batch, classes); got "
                         f"{[tuple(o.shape) for o in model.outputs]}")
    from models.xception import strip_softmax
    model = strip_softmax(model)
    height, width = shape[1], shape[2]
    num_classes = int(model.outputs[0].shape[-1])

    pixels, labels, names = load_images(config.eval, inputs.get("eval_images"), height, width,
                                        config.eval_n, config.seed, progress, "eval")
    if not config.labels_known and config.eval.kind == "digits":
        labels = None
    x = preprocess(pixels)
    progress.log(f"  float reference on {len(x)} eval images")
    logits = model.predict(x, batch_size=16, verbose=0).astype(np.float32)

    model.save(out / "model.keras")
    arrays = {"inputs": x, "logits": logits, "probs": softmax(logits)}
    if labels is not None:
        arrays["labels"] = labels
    np.savez(out / "eval.npz", **arrays)
    info = {
        "input_shape": [1, height, width, 3],
        "num_classes": num_classes,
        "source": config.source,
        "outputs": "logits",
        "parameters": int(model.count_params()),
        "eval": {"source": config.eval.describe(), "n": len(x), "labels": labels is not None,
                 "names": names},
    }
    if labels is not None:
        info["eval"]["float_top1"] = float(np.mean(np.argmax(logits, axis=1) == labels))
    (out / "model.json").write_text(json.dumps(info, indent=1))


def _load(path: Path | None, config: Config, progress: Progress):
    from models.xception import IMAGENET_CLASSES, IMAGENET_SIZE, build_xception

    if config.source == "random":
        progress.log(f"  Xception with random weights, {config.input_size}x{config.input_size}, "
                     f"{config.num_classes} classes")
        return build_xception(config.input_size, config.num_classes, seed=config.seed)
    if config.source == "imagenet":
        return build_xception(IMAGENET_SIZE, IMAGENET_CLASSES, weights_file=path)
    import keras

    try:
        return keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a bad file; all mean "unusable"
        raise InputError(f"cannot load model file {path}: {first_line(exc)[:300]} "
                         f"(accepted: a Keras .keras or .h5 model)") from None


def _check_input(model, path: Path | None) -> tuple:
    from models.xception import describe_input

    shape = describe_input(model)
    name = path or "the model"
    if len(model.inputs) != 1 or len(shape) != 4 or shape[3] != 3:
        raise InputError(f"{name}: input shape {shape} is not an image batch; accepted: one input of "
                         f"rank 4, (batch, height, width, 3) channels-last RGB")
    if shape[1] is None or shape[2] is None:
        raise InputError(f"{name}: input shape {shape} has no fixed height/width; save the model with "
                         f"a fixed input size (e.g. Input((299, 299, 3)))")
    return shape
