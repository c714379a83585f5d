"""The one error hierarchy of the project, with exit codes on the classes. It lives in the device-side package
because the runner travels to boards without ``pipeline/``; ``pipeline.errors`` re-exports it. Every message is
one line naming the value received and what is accepted; the CLI prints ``error: <message>`` and exits with the
class's code. Exit codes: 0 ok; 1 gate failed; 2 bad input; 3 stage failed; 4 missing dependency; 5 busy;
6 the gate judged no accuracy; 7 a folder cannot be written; 130 / 143 interrupted.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

GATE_FAILED = 1
GATE_CHECKED_NOTHING = 6


def first_line(exc: BaseException) -> str:
    """An exception's message as one line for an error message: its first non-blank line, or its type."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class PipelineError(Exception):
    """Base class: the message is one line that names the value received and what is accepted."""
    exit_code = 1


class ConfigError(PipelineError):
    """A target file, gate file or option is malformed or names something unknown."""
    exit_code = 2


class InputError(PipelineError):
    """A user input (model file, image folder, output folder, build folder, board) is missing or unusable."""
    exit_code = 2


class BenchError(InputError):
    """Bad input for the benchmark harness (no manifest, tampered artifact, bad option, unreachable board)."""


class StageError(PipelineError):
    """A stage failed while doing its work; the message says where the full log is."""
    exit_code = 3


class MissingDependencyError(PipelineError):
    """A tool or package the step needs is not installed or not reachable."""
    exit_code = 4


class BusyError(PipelineError):
    """Another process holds the lock on the same output (e.g. two compiles of one target)."""
    exit_code = 5


class StorageError(PipelineError):
    """A folder cannot be written: the disk is full, a quota is reached, permission is denied, it is read-only."""
    exit_code = 7


STORAGE_ERRNOS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                  errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                  errno.EROFS: "read-only file system"}


def megabytes(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e6:.1f} MB"


def free_bytes(folder: Path) -> int | None:
    """Free space for an unprivileged writer on the file system holding ``folder`` (or its nearest parent)."""
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def storage_error(exc: OSError, what: str, folder: Path, need_bytes: int | None = None,
                  remedy: str = "") -> StorageError | None:
    """One line for a write that the storage refused, naming the folder, what was being written and, for a full
    disk, the space free there and about what the step needs; None when ``exc`` is another kind of failure."""
    reason = STORAGE_ERRNOS.get(exc.errno)
    if reason is None:
        return None
    line = f"cannot write {what} in {folder}: {reason}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free = free_bytes(folder)
        sizes = [f"{megabytes(free)} free there" if free is not None else "",
                 f"this step needs about {megabytes(need_bytes)}" if need_bytes else ""]
        line += f" ({'; '.join(s for s in sizes if s)})" if any(sizes) else ""
    return StorageError(f"{line}; {remedy}" if remedy else line)


def os_error_line(exc: OSError) -> PipelineError | None:
    """The last resort of every command line: an OSError no step named becomes one line naming its file (exit 7
    for storage, 2 otherwise); None for an OSError without a file (a bug, shown in full)."""
    path = exc.filename2 or exc.filename
    if not path:
        return None
    path = Path(os.fsdecode(path))
    error = storage_error(exc, path.name, path.parent)
    return error or InputError(f"{path}: {exc.strerror or exc}")


def fail(exc: Exception) -> int:
    """Print a command line's ``error:`` line for ``exc`` (a PipelineError, or an OSError named by its file) and
    return its exit code; an OSError without a file is re-raised."""
    if isinstance(exc, OSError):
        error = os_error_line(exc)
        if error is None:
            raise exc
        exc = error
    print(f"error: {exc}", file=sys.stderr)
    return exc.exit_code
