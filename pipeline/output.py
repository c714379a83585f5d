"""The output folder build/<target>/: a per-target lock and an atomic swap into place."""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from pathlib import Path

from benchmarks.files import write_text_atomic
from pipeline.errors import BusyError, InputError, storage_error


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` if needed and prove a file can be written there, or one clear error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise (storage_error(exc, "the output", folder, remedy="choose another with OUT=dir")
               or InputError(f"output folder {folder} is not writable: {exc.strerror or exc}; "
                             f"choose another with OUT=dir")) from None


class TargetLock:
    """An exclusive, non-blocking lock on build/.<target>.lock; released when the process dies."""

    def __init__(self, folder: Path, target: str):
        self.path = folder / f".{target}.lock"
        self.target = target
        self.fh = None

    def __enter__(self) -> "TargetLock":
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.seek(0)
            holder = self.fh.read().strip() or "another process"
            self.fh.close()
            raise BusyError(f"target {self.target} is being compiled by {holder} (lock {self.path}); "
                            f"wait for it to finish, or use another OUT=dir") from None
        self.fh.seek(0)
        self.fh.truncate()
        self.fh.write(f"pid {os.getpid()}")
        self.fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        self.fh.truncate(0)
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def staging_dir(folder: Path, target: str) -> Path:
    """A fresh private folder next to build/<target>/ in which the new output is assembled."""
    for old in [*folder.glob(f".{target}.staging-*"), *folder.glob(f".{target}.old-*")]:
        shutil.rmtree(old, ignore_errors=True)        # left by a killed run (we hold the lock)
    path = folder / f".{target}.staging-{os.getpid()}"
    path.mkdir()
    return path


def publish(staging: Path, final: Path) -> None:
    """Swap ``staging`` into ``final``: the old output is moved aside first, then removed."""
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
