"""The user's own model, as Keras sees it: a small net trained briefly on real photos (scikit-learn's and
matplotlib's bundled ones, no download) in class-name folders, with its preprocessing inside (a leading
Rescaling, raw 0..255 pixels, saved as .keras) and outside ([-1, 1], saved as .h5), at a non-square input.

Our float top-1 must equal Keras' own evaluation of the same model on the same images read by Keras'
image_dataset_from_directory; labels and class names come from the folders by Keras' rule; the Rescaling model is
fed raw pixels without being told; fed the wrong pixels, the float model is flagged and the gate fails; a
preprocessing layer we cannot read is one line asking for PREPROCESS=."""
from __future__ import annotations

import re

import numpy as np
import pytest

from benchmarks import gate
from pipeline.compiler import CompileOptions, compile_target
from pipeline.errors import InputError
from pipeline.progress import Progress
from tests.conftest import ROOT, write_target

HEIGHT, WIDTH = 40, 48                       # non-square, far below Xception's 71
CLASSES = ["china", "flower", "hopper"]      # sorted: the ids Keras gives the folders
EPOCHS = 3          # short of perfect: a top-1 below 100% shows more when the figures must agree


def _photos():
    from PIL import Image
    import matplotlib
    import sklearn.datasets

    images = sklearn.datasets.load_sample_images()
    hopper = np.asarray(Image.open(f"{matplotlib.get_data_path()}/sample_data/grace_hopper.jpg").convert("RGB"))
    return dict(zip(CLASSES, [*images.images, hopper]))


def _crops(folder, photos, n, seed):
    """n random crops per photo as PNG files of random sizes, so that Keras and we both resize them."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name, photo in photos.items():
        (folder / name).mkdir(parents=True)
        h, w = photo.shape[:2]
        for i in range(n):
            ch = int(rng.integers(h // 5, h // 2))
            cw = int(ch * WIDTH / HEIGHT)
            top, left = int(rng.integers(0, h - ch)), int(rng.integers(0, w - cw))
            crop = Image.fromarray(photo[top:top + ch, left:left + cw])
            size = (int(rng.integers(WIDTH // 2, WIDTH * 3)), int(rng.integers(HEIGHT // 2, HEIGHT * 3)))
            crop.resize(size, Image.BILINEAR).save(folder / name / f"{i}.png")
    return folder


def _train(path, train_dir, rescaling: bool):
    import keras

    keras.utils.set_random_seed(3)
    data = keras.utils.image_dataset_from_directory(train_dir, image_size=(HEIGHT, WIDTH), batch_size=16, seed=0)
    inp = keras.Input((HEIGHT, WIDTH, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1, name="to_unit_range")(inp) if rescaling else inp
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inp, keras.layers.Dense(len(CLASSES), activation="softmax")(x))
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    if not rescaling:
        data = data.map(lambda images, labels: (images / 127.5 - 1, labels))
    model.fit(data, epochs=EPOCHS, verbose=0)
    model.save(path)
    return path


def _keras_top1(model_path, eval_dir, rescaling: bool) -> float:
    """Keras' own evaluation: image_dataset_from_directory's labels, the model's own preprocessing."""
    import keras

    model = keras.saving.load_model(model_path, compile=False)
    data = keras.utils.image_dataset_from_directory(eval_dir, image_size=(HEIGHT, WIDTH), shuffle=False,
                                                    batch_size=64)
    assert data.class_names == CLASSES
    hits = total = 0
    for images, labels in data:
        x = images if rescaling else images / 127.5 - 1
        hits += int(np.sum(np.argmax(model.predict(x, verbose=0), axis=1) == labels.numpy()))
        total += len(labels)
    return hits / total


@pytest.fixture(scope="module")
def photos(tmp_path_factory, stage_cache):
    root = tmp_path_factory.mktemp("photos")
    pictures = _photos()
    train, evaluation = _crops(root / "train", pictures, 30, 1), _crops(root / "eval", pictures, 20, 2)
    models = {"rescaling": _train(root / "tl_rescaling.keras", train, True),
              "outside": _train(root / "tl_outside.h5", train, False)}
    targets = write_target(root / "targets", "photo", ["tflite-fp32", "tflite-int8"])

    def build(model: str, out: str, **options):
        return compile_target(CompileOptions(target="photo", weights=str(models[model]), calib_dir=train, calib_n=30,
                                             eval_dir=evaluation, out_dir=root / out, cache_dir=stage_cache,
                                             targets_dir=targets, **options), Progress(quiet=True))
    return {"root": root, "eval": evaluation, "models": models, "build": build}


@pytest.mark.parametrize("model", ["rescaling", "outside"])
def test_float_top1_is_keras_own_evaluation_with_class_names_from_the_folders(photos, model):
    manifest = photos["build"](model, f"out-{model}").manifest
    ev = manifest["eval"]
    assert ev["labels"] and ev["class_names"] == CLASSES and ev["n"] == 60
    keras_top1 = _keras_top1(photos["models"][model], photos["eval"], model == "rescaling")
    # the same images resized as image_dataset_from_directory resizes them (RESIZE=keras CROP=none, the defaults
    # for a user's model): the same figure, up to float rounding in the resize deciding at most one image
    assert abs(ev["float_top1"] - keras_top1) <= 1 / 60 + 1e-9, (ev["float_top1"], keras_top1)
    prep = manifest["model"]["preprocess"]
    assert (prep["resize"], prep["crop"]) == ("keras", "none")
    assert prep["name"] == ("raw" if model == "rescaling" else "xception")
    if model == "rescaling":                               # read from the model, and said
        assert "to_unit_range is Rescaling(scale=0.00784314, offset=-1)" in prep["why"]
    assert ev["sanity"]["status"] == "ok", ev["sanity"]
    assert manifest["model"]["input_shape"] == [1, HEIGHT, WIDTH, 3]


def test_the_wrong_pixels_are_flagged_and_the_gate_fails(photos, capsys):
    """The Rescaling model fed [-1, 1] (as if it were Xception's own) sees an almost constant image: its answers
    are one class, int8 agrees with them perfectly, and that must never pass."""
    result = photos["build"]("rescaling", "out-wrong", preprocess="xception")
    sanity = result.manifest["eval"]["sanity"]
    assert sanity["status"] == "suspect" and "answers class" in sanity["why"], sanity
    build = photos["root"] / "out-wrong" / "photo"
    gates = photos["root"] / "gates.toml"
    gates.write_text((ROOT / "benchmarks" / "gates.toml").read_text())
    args = ["--gates", str(gates), "--baselines", str(photos["root"] / "baselines")]
    assert gate.main([str(build), *args, "--write-baseline", "wrong pixels"]) == 0
    capsys.readouterr()
    assert gate.main([str(build), *args]) == 1
    out = capsys.readouterr().out
    assert re.search(r"FAILED: float model: outputs_meaningful FAILED: the float model answers class \w+ for", out)


def test_a_preprocessing_layer_we_cannot_read_asks_for_preprocess(photos, tmp_path):
    import keras

    inp = keras.Input((HEIGHT, WIDTH, 3))
    norm = keras.layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[3600.0] * 3, name="norm")(inp)
    out = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(norm))
    path = tmp_path / "normalized.keras"
    keras.Model(inp, out).save(path)
    photos["models"]["normalized"] = path
    with pytest.raises(InputError, match=r"its first layer norm \(Normalization\) preprocesses the input in a way "
                                         r"this tool cannot read; say what pixels the model takes with PREPROCESS="):
        photos["build"]("normalized", "out-norm")
    manifest = photos["build"]("normalized", "out-norm", preprocess="raw").manifest     # told: it compiles
    assert manifest["model"]["preprocess"]["name"] == "raw"


def _conv_net(inputs, outputs: int = 1):
    import keras

    x = keras.layers.Conv2D(4, 3)(inputs[0])
    x = keras.layers.GlobalAveragePooling2D()(x)
    heads = [keras.layers.Dense(3)(x) for _ in range(outputs)]
    return keras.Model(inputs if len(inputs) > 1 else inputs[0], heads if outputs > 1 else heads[0])


def test_a_model_of_any_size_is_compiled_at_input_size(photos, tmp_path, cli):
    """A model without a fixed height and width needs INPUT_SIZE=HxW (one line without it) and is compiled at
    that size; several inputs or several outputs are one line."""
    import keras

    free = tmp_path / "any_size.keras"
    _conv_net([keras.Input((None, None, 3))]).save(free)
    targets = photos["root"] / "targets"
    common = ["compile", "--target", "photo", "--targets-dir", targets, "--weights", free, "--eval", photos["eval"],
              "--calib-n", "10", "--out", tmp_path / "out", "--quiet"]
    code, _, err = cli(*common)
    assert code == 2 and re.search(r"has no fixed height/width; give the size to compile it at with INPUT_SIZE=HxW",
                                   err), err
    code, out, err = cli(*common, "--input-size", f"{HEIGHT}x{WIDTH}", "--crop", "none")
    assert code == 0, err
    import json
    manifest = json.loads((tmp_path / "out" / "photo" / "manifest.json").read_text())
    assert manifest["model"]["input_shape"] == [1, HEIGHT, WIDTH, 3]
    for model, message in (
            (_conv_net([keras.Input((HEIGHT, WIDTH, 3)), keras.Input((HEIGHT, WIDTH, 3))]), r"not an image batch"),
            (_conv_net([keras.Input((HEIGHT, WIDTH, 3))], outputs=2), r"model output must be one tensor")):
        path = tmp_path / "several.keras"
        model.save(path)
        code, _, err = cli(*common[:6], path, *common[7:])
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and re.search(message, errors[0]), err
