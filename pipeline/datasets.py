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
                seed: int, progress: Progress, what: str) -> tuple[np.ndarray, np.ndarray | None, list[str]]:
    """uint8 pixels (N, H, W, 3), labels or None, and a name per image.

    Folder images are taken in a seeded shuffled order up to ``limit`` (0 = all); unreadable files
    are reported by name and skipped. Labels come from integer-named parent folders (``3/x.png``).
    """
    if source.kind == "digits":
        pixels, labels = digits.load_split(source.split, height, width)
        if limit:
            pixels, labels = pixels[:limit], labels[:limit]
        return pixels, labels, [f"digits-{source.split}-{i}" for i in range(len(labels))]
    files = folder_images(folder, what)
    order = np.random.default_rng(seed).permutation(len(files))
    wanted = limit or len(files)
    pixels, names, skipped = [], [], 0
    with progress.bar(f"reading {what} images", min(wanted, len(files))) as bar:
        for i in order:
            if len(pixels) >= wanted:
                break
            path = files[i]
            try:
                pixels.append(load_image(path, height, width))
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
    parents = [Path(n).parts[0] if len(Path(n).parts) > 1 else "" for n in names]
    if all(p.isdigit() for p in parents):
        labels = np.array([int(p) for p in parents], dtype=np.int64)
    return np.stack(pixels), labels, names
