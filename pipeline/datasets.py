"""Where calibration and evaluation images come from: the digits splits or a folder of images."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from models import digits
from models.preprocessing import find_images, load_image
from pipeline.errors import InputError
from pipeline.progress import Progress


@dataclass(frozen=True)
class ImageSource:
    kind: str            # "digits" (a fixed split of scikit-learn's digits) or "folder"
    split: str = ""      # digits split: calib | test
    folder: str = ""     # folder path (for messages; its files are the stage's hashed inputs)

    def describe(self) -> str:
        return f"digits {self.split} split" if self.kind == "digits" else f"folder {self.folder}"


def folder_images(folder: Path, what: str) -> list[Path]:
    """Image files of a user folder, or one clear error when there are none."""
    if not folder.is_dir():
        raise InputError(f"{what} folder {folder} does not exist or is not a folder; "
                         f"give a folder of .jpg/.jpeg/.png images (any depth)")
    files = find_images(folder)
    if not files:
        raise InputError(f"{what} folder {folder} holds no images; accepted: .jpg, .jpeg, .png at any depth")
    return files


def load_images(source: ImageSource, folder: Path | None, height: int, width: int, limit: int,
                seed: int, progress: Progress, what: str, resize: str = "bilinear", crop: str = "center",
                class_names: tuple[str, ...] = (), labelled: bool = True
                ) -> tuple[np.ndarray, np.ndarray | None, list[str], list[str]]:
    """uint8 pixels (N, H, W, 3), labels or None, a name per image, and the class names (empty: none).

    Folder images are taken in a seeded shuffled order up to ``limit`` (0 = all); unreadable files
    are reported by name and skipped. Labels come from the first-level folders, as Keras'
    ``image_dataset_from_directory`` reads them (``folder_labels``); ``labelled=False`` (calibration) reads none.
    """
    if source.kind == "digits":
        pixels, labels = digits.load_split(source.split, height, width)
        if limit:
            pixels, labels = pixels[:limit], labels[:limit]
        return pixels, labels, [f"digits-{source.split}-{i}" for i in range(len(labels))], []
    files = folder_images(folder, what)
    label_of, names_of_classes = folder_labels(folder, files, what, class_names) if labelled else (None, [])
    order = np.random.default_rng(seed).permutation(len(files))
    wanted = limit or len(files)
    pixels, names, skipped = [], [], 0
    with progress.bar(f"reading {what} images", min(wanted, len(files))) as bar:
        for i in order:
            if len(pixels) >= wanted:
                break
            path = files[i]
            try:
                pixels.append(load_image(path, height, width, resize, crop))
            except (OSError, ValueError, SyntaxError) as exc:
                skipped += 1
                progress.warn(f"skipping unreadable {what} image {path}: {exc}")
                continue
            names.append(str(path.relative_to(folder)))
            bar.update()
    if not pixels:
        raise InputError(f"{what} folder {folder}: none of its {len(files)} image files could be read "
                         f"(accepted: readable .jpg, .jpeg, .png)")
    labels = None
    if label_of is not None:
        labels = np.array([label_of[Path(n).parts[0]] for n in names], dtype=np.int64)
    return np.stack(pixels), labels, names, names_of_classes


def folder_labels(folder: Path, files: list[Path], what: str,
                  class_names: tuple[str, ...] = ()) -> tuple[dict[str, int] | None, list[str]]:
    """{first-level folder: label} and the class names, by Keras' rule, or (None, []) for an unlabelled folder.

    - every image directly in ``folder``: no labels;
    - integer-named folders (``3/x.png``): that integer is the label (no names);
    - named folders (``cat/x.png``): with ``class_names`` (LABELS=, the model's order), a folder's label is its
      place in that list; otherwise the sorted folder names are the classes, ids 0, 1, ... in that order, as
      ``image_dataset_from_directory`` does (every sub-folder counts, even one without images).
    A tree that mixes the two, or images at the top beside class folders, is one clear line.
    """
    tops = {p.relative_to(folder).parts[0] if len(p.relative_to(folder).parts) > 1 else "" for p in files}
    if tops == {""}:
        return None, []
    if "" in tops:
        loose = next(p for p in files if len(p.relative_to(folder).parts) == 1)
        raise InputError(f"{what} folder {folder} has images at its top ({loose.name}) beside class folders; put "
                         f"every image in a class folder (cat/x.jpg, or 3/x.jpg), or none")
    folders = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    numeric = [f for f in folders if f.isdigit()]
    if numeric and len(numeric) != len(folders):
        named = next(f for f in folders if not f.isdigit())
        raise InputError(f"{what} folder {folder} mixes integer-named class folders ({numeric[0]}/) with named ones "
                         f"({named}/); use one kind: class ids (0/, 1/, ...) or class names (cat/, dog/, ...)")
    if class_names:
        unknown = [f for f in folders if f not in class_names]
        if unknown:
            raise InputError(f"{what} folder {folder}: class folder {unknown[0]}/ is not in LABELS= "
                             f"({', '.join(class_names[:8])}{', ...' if len(class_names) > 8 else ''})")
        return {f: class_names.index(f) for f in folders}, list(class_names)
    if numeric:
        return {f: int(f) for f in folders}, []
    return {f: i for i, f in enumerate(folders)}, folders
