import numpy as np
import pytest
from PIL import Image

from models import digits
from models.preprocessing import find_images, load_image, preprocess
from pipeline.datasets import ImageSource, folder_images, load_images
from pipeline.errors import InputError
from pipeline.progress import Progress


def make_folder(root):
    (root / "3" / "deep").mkdir(parents=True)
    (root / "7").mkdir()
    Image.new("L", (40, 20), 128).save(root / "3" / "gray.png")                  # grayscale
    Image.new("RGBA", (20, 20), (255, 0, 0, 0)).save(root / "7" / "alpha.PNG")  # RGBA, upper case
    Image.new("RGB", (30, 30), (0, 255, 0)).save(root / "3" / "deep" / "c.jpg")
    (root / "7" / "broken.jpeg").write_bytes(b"not a jpeg")
    (root / "notes.txt").write_text("ignored")
    return root


def test_find_images_any_depth_any_case(tmp_path):
    names = sorted(p.name for p in find_images(make_folder(tmp_path)))
    assert names == ["alpha.PNG", "broken.jpeg", "c.jpg", "gray.png"]


def test_load_image_converts_to_rgb_at_size(tmp_path):
    make_folder(tmp_path)
    gray = load_image(tmp_path / "3" / "gray.png", 16, 16)
    assert gray.shape == (16, 16, 3) and gray.dtype == np.uint8 and (gray == 128).all()
    alpha = load_image(tmp_path / "7" / "alpha.PNG", 8, 8)
    assert alpha.shape == (8, 8, 3) and (alpha == 255).all()     # transparent -> white background


def test_unreadable_files_are_named_and_skipped(tmp_path, capsys):
    make_folder(tmp_path)
    (tmp_path / "notes.txt").unlink()
    pixels, labels, names, classes = load_images(ImageSource("folder", folder=str(tmp_path)), tmp_path, 16, 16, 0,
                                                 0, Progress(), "eval")
    assert pixels.shape == (3, 16, 16, 3)
    assert "broken.jpeg" in capsys.readouterr().err
    assert sorted(labels.tolist()) == [3, 3, 7] and classes == []      # from integer-named parent folders


def _class_folders(root, layout: dict[str, int]):
    for folder, count in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(root / folder / f"{i}.png")
    return root


def _eval(root, **kwargs):
    return load_images(ImageSource("folder", folder=str(root)), root, 8, 8, 0, 0, Progress(quiet=True), "eval",
                       **kwargs)


def test_class_name_folders_are_labels_in_keras_order(tmp_path):
    """Sorted folder names are class ids, as image_dataset_from_directory reads them (an empty folder counts)."""
    _class_folders(tmp_path, {"rocket": 2, "cat": 1, "coffee": 3, "zebra": 0})
    _, labels, names, classes = _eval(tmp_path)
    assert classes == ["cat", "coffee", "rocket", "zebra"]
    assert {n: int(l) for n, l in zip(names, labels)} == {"cat/0.png": 0, "coffee/0.png": 1, "coffee/1.png": 1,
                                                          "coffee/2.png": 1, "rocket/0.png": 2, "rocket/1.png": 2}


def test_labels_file_gives_the_models_order(tmp_path):
    _class_folders(tmp_path, {"rocket": 1, "cat": 1})
    _, labels, names, classes = _eval(tmp_path, class_names=("rocket", "dog", "cat"))
    assert classes == ["rocket", "dog", "cat"] and {n: int(l) for n, l in zip(names, labels)} == {
        "rocket/0.png": 0, "cat/0.png": 2}
    with pytest.raises(InputError, match=r"class folder rocket/ is not in LABELS= \(cat, dog\)"):
        _eval(tmp_path, class_names=("cat", "dog"))


@pytest.mark.parametrize("layout,message", [
    ({"3": 1, "cat": 1}, r"mixes integer-named class folders \(3/\) with named ones \(cat/\)"),
    ({"cat": 1, ".": 1}, r"has images at its top \(0.png\) beside class folders"),
])
def test_a_mixed_tree_is_one_line(tmp_path, layout, message):
    _class_folders(tmp_path, layout)
    with pytest.raises(InputError, match=message):
        _eval(tmp_path)
    assert _eval(tmp_path, labelled=False)[1] is None              # calibration reads no labels: any tree


def test_limit_takes_a_deterministic_subset(tmp_path):
    make_folder(tmp_path)
    src = ImageSource("folder", folder=str(tmp_path))
    a = load_images(src, tmp_path, 8, 8, 2, 0, Progress(quiet=True), "calibration", labelled=False)[2]
    b = load_images(src, tmp_path, 8, 8, 2, 0, Progress(quiet=True), "calibration", labelled=False)[2]
    assert a == b and len(a) == 2


def test_empty_folder_is_an_error(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match=r"holds no images; accepted: \.jpg, \.jpeg, \.png at any depth"):
        folder_images(tmp_path, "CALIB=")


def test_missing_folder_is_an_error(tmp_path):
    with pytest.raises(InputError, match="does not exist or is not a folder"):
        folder_images(tmp_path / "nope", "CALIB=")


def test_all_unreadable_is_an_error(tmp_path):
    (tmp_path / "a.png").write_bytes(b"junk")
    (tmp_path / "b.jpg").write_bytes(b"")
    with pytest.raises(InputError, match=r"none of its 2 image files could be read"):
        load_images(ImageSource("folder", folder=str(tmp_path)), tmp_path, 8, 8, 0, 0, Progress(quiet=True),
                    "calibration")


def test_digits_splits_are_disjoint_fixed_and_complete():
    idx = digits.split_indices()
    sets = [set(idx[s].tolist()) for s in digits.SPLITS]
    assert all(not (a & b) for i, a in enumerate(sets) for b in sets[i + 1:])
    assert sum(map(len, sets)) == 1797
    assert all((idx[s] == digits.split_indices()[s]).all() for s in digits.SPLITS)
    pixels, labels = digits.load_split("calib", 71, 71)
    assert pixels.shape == (digits.CALIB_SIZE, 71, 71, 3) and set(labels.tolist()) == set(range(10))


def test_preprocess_range():
    x = preprocess(np.array([0, 255], dtype=np.uint8))
    assert x.dtype == np.float32 and x.tolist() == [-1.0, 1.0]
