"""File helpers shared by the device-side runner and the host: hashing, atomic writes, result files."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_text_atomic(path: Path, text: str) -> Path:
    """Write through a temporary file in the same folder and ``os.replace`` it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def results_newest_first(build_dir: Path) -> list[tuple[dict, Path]]:
    """Every benchmark results file of build/<t>/bench/, parsed once, newest ``created`` first."""
    folder = build_dir / "bench"
    runs = [(json.loads(p.read_text()), p) for p in folder.glob("*.json")] if folder.is_dir() else []
    return sorted(runs, key=lambda run: (run[0]["created"], run[1].name), reverse=True)
