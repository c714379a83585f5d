"""Resolve WEIGHTS= into a model source: imagenet, reference, random, or the user's file.

``auto`` takes ImageNet when its weights are in Keras' cache or can be downloaded, otherwise the
offline reference model, announced loudly (and recorded in the manifest by the caller).
"""
from __future__ import annotations

import socket
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from models import reference
from models.xception import IMAGENET_WEIGHTS_URL, MIN_SIZE, imagenet_weights_path
from pipeline.errors import InputError, MissingDependencyError
from pipeline.progress import Progress

WEIGHT_CHOICES = ("auto", "imagenet", "reference", "random")
MODEL_SUFFIXES = (".keras", ".h5")


@dataclass(frozen=True)
class ModelSource:
    kind: str                # imagenet | reference | random | file
    requested: str           # what the user asked for (auto, imagenet, ..., or the path)
    file: Path | None        # the weights / model file (hashed into the build stage's key)
    note: str = ""           # why this source was chosen, for the manifest


def validate_weights(weights: str) -> None:
    if weights in WEIGHT_CHOICES:
        return
    path = Path(weights)
    if path.suffix.lower() not in MODEL_SUFFIXES:
        raise InputError(f"WEIGHTS={weights!r} is neither a weight source nor a model file; accepted: "
                         f"{', '.join(WEIGHT_CHOICES)}, or a path to a .keras / .h5 model")
    if not path.is_file():
        raise InputError(f"model file {path} does not exist (WEIGHTS={weights!r})")


def resolve(weights: str, reference_dir: Path, progress: Progress, download_timeout: float = 3.0) -> ModelSource:
    validate_weights(weights)
    if weights == "random":
        return ModelSource("random", weights, None, "random initialisation (latency work only)")
    if weights == "reference":
        return _reference(weights, reference_dir, progress, "requested")
    if weights not in WEIGHT_CHOICES:
        return ModelSource("file", weights, Path(weights).resolve(), "the user's own model")
    cached = imagenet_weights_path()
    if cached.is_file():
        return ModelSource("imagenet", weights, cached, f"Keras' cache: {cached}")
    reachable, why = _reachable(IMAGENET_WEIGHTS_URL, download_timeout)
    if reachable:
        try:
            return ModelSource("imagenet", weights, _download_imagenet(progress), "downloaded by Keras")
        except OSError as exc:
            why = f"download failed: {exc}"
    if weights == "imagenet":
        raise MissingDependencyError(
            f"ImageNet weights are not available ({why}): place {cached.name} (Keras' Xception weights "
            f"from {IMAGENET_WEIGHTS_URL}) at {cached}, or use WEIGHTS=reference")
    size = reference.Recipe().input_size
    progress.banner([
        "WEIGHTS=auto: ImageNet weights are not available",
        f"  ({why})",
        "Falling back to the OFFLINE REFERENCE MODEL: the full Xception trained on",
        f"scikit-learn's handwritten digits ({size}x{size} RGB, 10 classes).",
        "The manifest records this (model.weights = reference).",
        f"For ImageNet, place {cached.name}",
        f"  in {cached.parent}/ or pass WEIGHTS=imagenet when online.",
    ])
    return _reference(weights, reference_dir, progress, f"fallback: ImageNet weights unavailable ({why})")


def _reference(requested: str, folder: Path, progress: Progress, note: str) -> ModelSource:
    if reference.reference_model_file(folder) is None:
        progress.log(f"reference model not cached in {folder}; building it now")
    verbose = 1 if progress.tty else 2
    return ModelSource("reference", requested, reference.ensure_reference(folder, progress.log, verbose), note)


def _reachable(url: str, timeout: float) -> tuple[bool, str]:
    host = urllib.parse.urlparse(url).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True, ""
    except OSError:
        return False, f"offline: cannot reach {host}"


def _download_imagenet(progress: Progress) -> Path:
    import keras

    progress.log("downloading ImageNet weights for Xception (88 MB) into Keras' cache")
    target = imagenet_weights_path()
    return Path(keras.utils.get_file(target.name, IMAGENET_WEIGHTS_URL, cache_subdir="models",
                                     cache_dir=str(target.parent.parent)))


def check_size(size: int) -> None:
    if size < MIN_SIZE:
        raise InputError(f"INPUT_SIZE={size} is too small for Xception; accepted: {MIN_SIZE} or more")
