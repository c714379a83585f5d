"""Runs stages through the stage cache: hashes the inputs, keys the run, reuses or produces the entry, and turns
any failure into one line (full traceback under OUT/logs/). Must hold: a refused write is a StorageError naming
the cache folder and the bytes needed; nothing a failed stage wrote is ever reused.
"""
from __future__ import annotations

import dataclasses
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from benchmarks.errors import STORAGE_ERRNOS
from pipeline.cache import CacheEntry, StageCache, sha256_file, sha256_tree, stage_key
from pipeline.datasets import folder_images
from pipeline.errors import PipelineError, StageError, storage_error
from pipeline.progress import Progress


@dataclass
class StageRun:
    stage: str
    label: str
    key: str
    cached: bool


class StageRunner:
    """One per command: ``stage()`` runs a stage module (pipeline/stages/) with its config and input files."""

    def __init__(self, cache_dir: Path, versions: dict, progress: Progress, logs_dir: Path, owner: str,
                 cache_need: Callable[["StageRunner"], int] = lambda runner: 0):
        self.cache = StageCache(cache_dir)
        self.versions, self.progress, self.logs_dir, self.owner = versions, progress, Path(logs_dir), owner
        self.cache_need = cache_need          # bytes this command may write to the cache (for a full-disk error)
        self.hashes: dict[Path, str] = {}
        self.runs: list[StageRun] = []
        self.entries: dict[str, CacheEntry] = {}     # by label, the entries this command used

    def file_hash(self, path: Path) -> str:
        if path not in self.hashes:
            self.hashes[path] = (sha256_tree(path, folder_images(path, "image")) if path.is_dir()
                                 else sha256_file(path))
        return self.hashes[path]

    def stage(self, module, config, inputs: dict[str, Path], label: str) -> CacheEntry:
        hashes = {name: self.file_hash(path) for name, path in inputs.items()}
        tools = {t: self.versions.get(t, "absent") for t in ("python",) + module.TOOLS}
        key = stage_key(module.NAME, module.VERSION, hashes, dataclasses.asdict(config), tools)
        entry, damage = self.cache.verified(module.NAME, key)
        if damage:
            self.progress.warn(f"[{label}] the cached result in {self.cache.root} is damaged ({damage}); rebuilding it")
        cached = entry is not None
        if cached:
            self.progress.log(f"[{label}] cached")
        else:
            self.progress.log(f"[{label}] running")
            try:
                entry = self.cache.produce(module.NAME, key,
                                           lambda out: module.run(inputs, config, out, self.progress))
            except (PipelineError, KeyboardInterrupt):
                raise
            except Exception as exc:
                refused = storage_cause(exc)
                if refused is not None:
                    raise storage_error(refused, f"the {label} stage's result", self.cache.root,
                                        self.cache_need(self), "free space there, or give another CACHE_DIR=") from None
                raise StageError(self.failure(label, getattr(config, "file_name", ""), exc)) from exc
        for name, digest in entry.files.items():
            self.hashes[entry.file(name)] = digest
        self.runs.append(StageRun(module.NAME, label, key, cached))
        self.entries[label] = entry
        return entry

    def failure(self, label: str, artifact: str, exc: Exception) -> str:
        """One line for a failed step, with its full traceback written under OUT/logs/."""
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        log = self.logs_dir / f"{self.owner}-{label.replace(' ', '_').replace('/', '_')}.log"
        log.write_text("".join(traceback.format_exception(exc)))
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        what = f" ({artifact})" if artifact else ""
        return (f"stage {label}{what} failed for target {self.owner}: {type(exc).__name__}: {first} "
                f"(full log: {log})")


def storage_cause(exc: BaseException) -> OSError | None:
    """The OSError a full, read-only or forbidden folder raised, if that is what ``exc`` is or was caused by
    (TensorFlow and Keras re-raise a refused write as their own errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
