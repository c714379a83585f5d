import json

import pytest

from models import reference
from pipeline import sources
from pipeline.errors import InputError, MissingDependencyError
from pipeline.progress import Progress


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(sources, "_reachable", lambda url, timeout: (False, "offline: cannot reach the host"))


def fake_reference(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / reference.MODEL_FILE).write_bytes(b"model")
    (folder / reference.INFO_FILE).write_text(json.dumps({"recipe": reference.asdict(reference.Recipe())}))
    return folder


@pytest.mark.parametrize("weights,message", [
    ("imagenett", r"WEIGHTS='imagenett' is neither a weight source nor a model file; accepted: auto, imagenet"),
    ("model.pt", r"accepted: .*a path to a \.keras / \.h5 model"),
    ("missing.keras", r"model file missing\.keras does not exist"),
])
def test_bad_weights(weights, message):
    with pytest.raises(InputError, match=message):
        sources.validate_weights(weights)


def test_imagenet_offline_names_the_cache_file(offline, tmp_path):
    with pytest.raises(MissingDependencyError, match=r"ImageNet weights are not available \(offline.*place "
                                                     r"xception_weights_tf_dim_ordering_tf_kernels\.h5 .* at .*keras/models"):
        sources.resolve("imagenet", tmp_path / "ref", Progress(quiet=True))


def test_auto_falls_back_to_reference_loudly(offline, tmp_path, capsys):
    folder = fake_reference(tmp_path / "ref")
    source = sources.resolve("auto", folder, Progress(quiet=True))
    assert source.kind == "reference" and source.requested == "auto"
    assert "fallback" in source.note and source.file == folder / reference.MODEL_FILE
    err = capsys.readouterr().err
    assert "OFFLINE REFERENCE MODEL" in err           # loud even with quiet progress


def test_auto_prefers_cached_imagenet(offline, tmp_path):
    from models.xception import imagenet_weights_path

    path = imagenet_weights_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"weights")
    source = sources.resolve("auto", tmp_path / "ref", Progress(quiet=True))
    assert source.kind == "imagenet" and source.file == path


def test_reference_with_wrong_recipe_is_not_reused(tmp_path):
    folder = fake_reference(tmp_path / "ref")
    (folder / reference.INFO_FILE).write_text(json.dumps({"recipe": {"epochs": 1}}))
    assert reference.reference_model_file(folder) is None
