"""Keras Xception: construction for every weight source, plus model checks used by the build stage.

Weight sources:
  imagenet   Keras' own ImageNet weights (downloaded to and read from Keras' cache)
  reference  the offline reference model (see models/reference.py)
  random     random initialisation, any input size >= 71, any class count (latency work)
  <path>     the user's own .keras / .h5 model (any class count, any input size)
"""
from __future__ import annotations

import os
from pathlib import Path

MIN_SIZE = 71                     # Xception's smallest input (the entry flow's strides)
IMAGENET_SIZE = 299
IMAGENET_CLASSES = 1000
IMAGENET_WEIGHTS_FILE = "xception_weights_tf_dim_ordering_tf_kernels.h5"
# Where keras.applications.Xception fetches its weights from (keras/src/applications/xception.py).
IMAGENET_WEIGHTS_URL = ("https://storage.googleapis.com/tensorflow/keras-applications/"
                        "xception/" + IMAGENET_WEIGHTS_FILE)
REFERENCE_BN_MOMENTUM = 0.9       # with Keras' default 0.99 the moving statistics do not converge


def keras_cache_dir() -> Path:
    """Keras' download cache (KERAS_HOME or ~/.keras), where get_file() keeps ImageNet weights."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def imagenet_weights_path() -> Path:
    return keras_cache_dir() / IMAGENET_WEIGHTS_FILE


def build_xception(input_size: int, num_classes: int, weights_file: Path | None = None,
                   bn_momentum: float | None = None, seed: int = 0):
    """The full Keras Xception, outputting logits (no softmax)."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.Xception(
        include_top=True,
        weights=str(weights_file) if weights_file else None,
        input_shape=(input_size, input_size, 3),
        classes=num_classes,
        classifier_activation=None,
    )
    if bn_momentum is not None:
        for layer in model.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.momentum = bn_momentum
    return model


def strip_softmax(model):
    """Return a model whose output is logits: a final softmax (activation or layer) is removed."""
    import keras

    last = model.layers[-1]
    if isinstance(last, keras.layers.Softmax) or (
            isinstance(last, keras.layers.Activation) and getattr(last.activation, "__name__", "") == "softmax"):
        return keras.Model(model.inputs, last.input, name=model.name)
    if getattr(getattr(last, "activation", None), "__name__", "") == "softmax":
        last.activation = keras.activations.linear
    return model


def describe_input(model) -> tuple:
    """The model's input shape as a tuple (batch dimension included), for checks and messages."""
    if len(model.inputs) != 1:
        return (f"{len(model.inputs)} inputs",)
    return tuple(model.inputs[0].shape)
