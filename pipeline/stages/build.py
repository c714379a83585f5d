"""build: the Keras model (logits out), its description, and float reference outputs on the eval set.

Outputs: model.keras, model.json (its description, the preprocessing its artifacts take and why, the eval set's
class names and a sanity verdict on the float model's outputs), eval.npz (inputs preprocessed as the artifacts
take them, labels when known, class names, float reference logits and probabilities).
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
VERSION = 2
TOOLS = ("tensorflow", "keras", "numpy", "pillow", "scikit-learn")
SOURCES = ("imagenet", "reference", "random", "file")


@dataclass(frozen=True)
class Config:
    source: str                   # one of SOURCES
    eval: ImageSource
    eval_n: int = 0               # 0 = the whole eval source
    input_size: int = 0           # random weights only
    input_hw: tuple[int, ...] = ()    # INPUT_SIZE=HxW: the size a model without a fixed one is compiled at
    num_classes: int = 0          # random weights only
    seed: int = 0
    labels_known: bool = False    # digits labels mean something only for the reference model
    preprocess: str = ""          # PREPROCESS= as given; "" = decided from the model (models/preprocessing.py)
    resize: str = ""              # RESIZE=; "": keras for a user's model (as Keras reads its images), else bilinear
    crop: str = ""                # CROP=; "": none for a user's model, else center
    class_names: tuple[str, ...] = ()   # LABELS=: the model's class names, in its output order


def run(inputs: Mapping[str, Path], config: Config, out: Path, progress: Progress) -> None:
    from benchmarks.metrics import softmax

    model = _load(inputs.get("model"), config, progress)
    model = _fixed_size(model, inputs.get("model"), config, progress)
    shape = _check_input(model, inputs.get("model"))
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise InputError(f"model output must be one tensor of shape (batch, classes); got "
                         f"{[tuple(o.shape) for o in model.outputs]}")
    from models.xception import strip_softmax
    model = strip_softmax(model)
    height, width = shape[1], shape[2]
    num_classes = int(model.outputs[0].shape[-1])

    prep, why = _preprocessing(model, inputs.get("model"), config)
    pixels, labels, names, class_names = load_images(config.eval, inputs.get("eval_images"), height, width,
                                                     config.eval_n, config.seed, progress, "eval", prep.resize,
                                                     prep.crop, config.class_names)
    if not config.labels_known and config.eval.kind == "digits":
        labels = None
    if labels is not None and (labels.max() >= num_classes or len(class_names) > num_classes):
        found = len(class_names) or int(labels.max()) + 1
        raise InputError(f"the eval folder has {found} classes ({', '.join(class_names[:6]) or 'ids up to ' + str(found - 1)}"
                         f"{', ...' if len(class_names) > 6 else ''}) but the model has {num_classes} outputs; give "
                         f"EVAL= the classes the model was trained on, or LABELS= its class names in order")
    x = prep.apply(pixels)
    progress.log(f"  float reference on {len(x)} eval images")
    logits = model.predict(x, batch_size=16, verbose=0).astype(np.float32)
    sanity = float_sanity(logits, labels, num_classes, config.source, class_names)

    model.save(out / "model.keras")
    arrays = {"inputs": x, "logits": logits, "probs": softmax(logits)}
    if labels is not None:
        arrays["labels"] = labels
    if class_names:
        arrays["class_names"] = np.array(class_names)
    np.savez(out / "eval.npz", **arrays)
    info = {
        "input_shape": [1, height, width, 3],
        "num_classes": num_classes,
        "source": config.source,
        "outputs": "logits",
        "parameters": int(model.count_params()),
        "preprocess": prep.to_dict() | {"why": why},
        "eval": {"source": config.eval.describe(), "n": len(x), "labels": labels is not None,
                 "names": names, "sanity": sanity},
    }
    if class_names:
        info["eval"]["class_names"] = class_names
    if labels is not None:
        info["eval"]["float_top1"] = float(np.mean(np.argmax(logits, axis=1) == labels))
    (out / "model.json").write_text(json.dumps(info, indent=1))


def _preprocessing(model, path: Path | None, config: Config):
    """The Preprocess the artifacts take, and why: PREPROCESS= when given; for a user's model with a Rescaling
    at its input, raw pixels; with another preprocessing step there (Normalization, a Lambda, an op), one line
    asking for PREPROCESS=; otherwise Xception's own."""
    from models.preprocessing import ACCEPTED, leading_preprocessing, parse_preprocess

    user = config.source == "file"
    resize, crop = config.resize or ("keras" if user else "bilinear"), config.crop or ("none" if user else "center")
    try:
        chosen = parse_preprocess(config.preprocess or "xception", resize, crop)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    leading = leading_preprocessing(model) if config.source == "file" else None
    if config.preprocess:
        note = (f"; the model's first layer {leading[1]} ({leading[2]}) also preprocesses what it is given"
                if leading else "")
        return chosen, f"PREPROCESS={config.preprocess} as given{note}"
    if leading is None:
        return chosen, ("Xception's own, [-1, 1] (the model has no preprocessing layer at its input; give "
                        "PREPROCESS= if it was trained on other pixels)")
    kind, name, detail = leading
    if kind == "Rescaling":
        return (parse_preprocess("raw", resize, crop),
                f"raw 0..255 pixels: the model's first layer {name} is {detail}, so it scales its input itself "
                f"(PREPROCESS=raw, read from the model)")
    raise InputError(f"{path or 'the model'}: its first layer {name} ({detail}) preprocesses the input in a way "
                     f"this tool cannot read; say what pixels the model takes with PREPROCESS=: {ACCEPTED}")


def float_sanity(logits: np.ndarray, labels: np.ndarray | None, num_classes: int, source: str,
                 class_names: list[str]) -> dict:
    """Whether the float model's outputs mean anything: int8 agreeing 100% with a model that answers the same
    class for every image is no quality. Suspect when one class takes 90% of the predictions and far more than
    its share of the labels (or, without labels, of the classes), or when top-1 is no better than always
    answering the most common label."""
    n = len(logits)
    if source == "random":
        return {"status": "not checked", "why": "random weights: the outputs mean nothing by construction"}
    if n < 10:
        return {"status": "not checked", "why": f"{n} eval images are too few to judge"}
    predicted = np.argmax(logits, axis=1)
    counts = np.bincount(predicted, minlength=num_classes)
    top = int(np.argmax(counts))
    share = float(counts[top] / n)
    name = class_names[top] if top < len(class_names) else str(top)
    shares = np.bincount(labels, minlength=num_classes) / n if labels is not None else None
    expected = float(shares[top]) if shares is not None else 1 / num_classes
    record = {"majority_class": name, "majority_share": round(share, 4)}
    if share >= 0.9 and share > expected + 0.2:
        return record | {"status": "suspect", "why": f"the float model answers class {name} for {share:.0%} of the "
                                                     f"{n} eval images (its share of the {'labels' if shares is not None else 'classes'}: {expected:.0%})"}
    if labels is not None:
        top1, chance = float(np.mean(predicted == labels)), float(shares.max())
        record |= {"top1": round(top1, 4), "chance": round(chance, 4)}
        if top1 <= max(chance * 1.2, chance + 0.05):
            return record | {"status": "suspect", "why": f"the float model's top-1 is {top1:.1%}, no better than always "
                                                         f"answering the most common label ({chance:.1%})"}
    return record | {"status": "ok", "why": "the float model's predictions vary and beat chance"}


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


def _fixed_size(model, path: Path | None, config: Config, progress: Progress):
    """A model that takes any height and width gets the one INPUT_SIZE= names (said in one line); a model with a
    fixed size keeps it, and an INPUT_SIZE= that differs from it is one line."""
    from models.xception import describe_input

    shape = describe_input(model)
    if len(model.inputs) != 1 or len(shape) != 4:
        return model                                   # _check_input says what is wrong
    if shape[1] is not None and shape[2] is not None:
        if config.input_hw and tuple(config.input_hw) != (shape[1], shape[2]):
            raise InputError(f"{path or 'the model'} takes {shape[1]}x{shape[2]} images; INPUT_SIZE="
                             f"{config.input_hw[0]}x{config.input_hw[1]} is only for a model without a fixed size "
                             f"(leave it out)")
        return model
    if not config.input_hw:
        return model
    import keras

    height, width = config.input_hw
    inp = keras.Input((height, width, shape[3]))
    progress.log(f"  the model takes any height and width; compiled at {height}x{width} (INPUT_SIZE=)")
    return keras.Model(inp, model(inp))


def _check_input(model, path: Path | None) -> tuple:
    from models.xception import describe_input

    shape = describe_input(model)
    name = path or "the model"
    if len(model.inputs) != 1 or len(shape) != 4 or shape[3] != 3:
        raise InputError(f"{name}: input shape {shape} is not an image batch; accepted: one input of "
                         f"rank 4, (batch, height, width, 3) channels-last RGB")
    if shape[1] is None or shape[2] is None:
        raise InputError(f"{name}: input shape {shape} has no fixed height/width; give the size to compile it at "
                         f"with INPUT_SIZE=HxW (e.g. INPUT_SIZE=224x224)")
    return shape
