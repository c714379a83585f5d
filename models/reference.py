"""The offline reference model: the full Keras Xception trained on scikit-learn's digits.

Deterministic recipe (fixed seeds, fixed split, op determinism), 71x71 RGB, 10 classes. Built on
first use (3 to 6 minutes on 2 cores) and cached in a folder outside the repository; re-use
only reads the cached files.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

RECIPE_VERSION = 1
MODEL_FILE = "xception_digits.keras"
INFO_FILE = "reference.json"


@dataclass(frozen=True)
class Recipe:
    input_size: int = 71
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-3
    bn_momentum: float = 0.9
    seed: int = 0
    version: int = RECIPE_VERSION


def reference_model_file(folder: Path) -> Path | None:
    """The cached reference model in ``folder`` if it is complete, else None."""
    model, info = folder / MODEL_FILE, folder / INFO_FILE
    if model.is_file() and info.is_file():
        try:
            if json.loads(info.read_text()).get("recipe") == asdict(Recipe()):
                return model
        except (OSError, ValueError):
            return None
    return None


def ensure_reference(folder: Path, log: Callable[[str], None], verbose: int = 2) -> Path:
    """Return the reference model file, training it into ``folder`` first if needed."""
    found = reference_model_file(folder)
    if found:
        return found
    folder.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=folder))
    try:
        info = train(Recipe(), tmp / MODEL_FILE, log, verbose)
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2))
        for name in (MODEL_FILE, INFO_FILE):          # the info file last: it marks completeness
            os.replace(tmp / name, folder / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder / MODEL_FILE


def train(recipe: Recipe, out_file: Path, log: Callable[[str], None], verbose: int) -> dict:
    import numpy as np
    import tensorflow as tf
    import keras

    from models import digits
    from models.preprocessing import preprocess
    from models.xception import build_xception

    log(f"training the reference Xception on scikit-learn digits ({recipe.input_size}x{recipe.input_size}, "
        f"{recipe.epochs} epochs; 3 to 6 minutes on 2 cores, done once)")
    started = time.monotonic()
    tf.config.experimental.enable_op_determinism()
    size = recipe.input_size
    x_train, y_train = digits.load_split("train", size, size)
    x_test, y_test = digits.load_split("test", size, size)
    model = build_xception(size, digits.NUM_CLASSES, bn_momentum=recipe.bn_momentum, seed=recipe.seed)
    steps = recipe.epochs * -(-len(y_train) // recipe.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(recipe.learning_rate, decay_steps=steps)
    model.compile(optimizer=keras.optimizers.Adam(schedule),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(preprocess(x_train), y_train, batch_size=recipe.batch_size, epochs=recipe.epochs,
              shuffle=True, verbose=verbose)
    logits = model.predict(preprocess(x_test), batch_size=64, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y_test))
    # Save the weights in an uncompiled twin: no optimizer state (3x smaller file).
    clean = build_xception(size, digits.NUM_CLASSES, seed=recipe.seed)
    clean.set_weights(model.get_weights())
    clean.save(out_file)
    seconds = time.monotonic() - started
    log(f"reference model trained in {seconds:.0f} s: float test accuracy {accuracy * 100:.1f}% "
        f"on {len(y_test)} held-out digits")
    return {"recipe": asdict(recipe), "test_accuracy": accuracy, "train_seconds": round(seconds, 1),
            "splits": {"train": len(y_train), "test": len(y_test)},
            "versions": {"tensorflow": tf.__version__, "keras": keras.__version__}}
