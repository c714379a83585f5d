"""What git tracks: no symbolic link that leaves the checkout (a committed `.venv -> /work/main/.venv` broke a
clean clone's CI in 3 s), and nothing from the folders the build and the virtual environment write."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
WRITTEN = (".venv", "build", ".cache", ".make", ".pytest_cache")


def _tracked() -> list[tuple[str, str]]:
    """(mode, path) of every tracked file; skipped outside a git checkout (an unpacked source archive)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    out = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-s", "-z"], capture_output=True, check=True).stdout
    rows = [entry.decode().split("\t", 1) for entry in out.split(b"\0") if entry]
    return [(meta.split()[0], path) for meta, path in rows]


def test_no_tracked_link_leaves_the_checkout():
    leaving = []
    for mode, path in _tracked():
        if mode != "120000":
            continue
        target = os.readlink(ROOT / path) if (ROOT / path).is_symlink() else ""
        resolved = (ROOT / path).parent.joinpath(target).resolve()
        if os.path.isabs(target) or not resolved.is_relative_to(ROOT):
            leaving.append(f"{path} -> {target}")
    assert not leaving, f"tracked links that point outside the checkout: {leaving}"


def test_nothing_tracked_under_written_folders():
    written = [path for _, path in _tracked() if path.split("/")[0] in WRITTEN]
    assert not written, f"tracked files in folders the tools write: {written[:10]}"
