"""Content-keyed stage cache with atomic publication.

A key is sha256 over: stage name, stage version, the sha256 of every input file, the stage's
config and the versions of the tools the stage uses. An entry is built in a private temporary
folder and published with one ``os.replace``; a failed or interrupted stage leaves nothing
behind (failures are never cached), and two processes producing the same entry cannot corrupt it.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from benchmarks.files import sha256_file

ENTRY_FILE = ".entry.json"


def sha256_tree(folder: Path, files: list[Path]) -> str:
    """Hash of a set of files below ``folder``: their relative paths and contents."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def stage_key(stage: str, version: int, inputs: Mapping[str, str], config: Mapping[str, Any],
              versions: Mapping[str, str]) -> str:
    payload = {"stage": stage, "version": version, "inputs": dict(inputs), "config": dict(config),
               "versions": dict(versions)}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    path: Path
    files: Mapping[str, str]      # relative path -> sha256, recorded when the entry was made

    def file(self, name: str) -> Path:
        return self.path / name


class StageCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def _dir(self, stage: str, key: str) -> Path:
        return self.root / "stages" / stage / key

    def lookup(self, stage: str, key: str) -> CacheEntry | None:
        folder = self._dir(stage, key)
        try:
            record = json.loads((folder / ENTRY_FILE).read_text())
        except (OSError, ValueError):
            return None
        files = record.get("files", {})
        if record.get("key") != key or not all((folder / name).is_file() for name in files):
            return None
        return CacheEntry(folder, files)

    def verified(self, stage: str, key: str) -> tuple[CacheEntry | None, str]:
        """The entry for ``key`` if it can be trusted, else None and why not ("" = there is none). An entry whose
        file changed since it was made, or a folder without a readable record (a crash, a hand edit), is
        evicted so that the stage can be run again in its place."""
        entry = self.lookup(stage, key)
        if entry is None:
            damage = "its record is missing or unreadable" if self._dir(stage, key).exists() else ""
        else:
            damage = next((f"{name} changed since it was made" for name, digest in entry.files.items()
                           if sha256_file(entry.file(name)) != digest), "")
        if damage:
            self.evict(stage, key)
            return None, damage
        return entry, ""

    def evict(self, stage: str, key: str) -> None:
        folder = self._dir(stage, key)
        if folder.exists():
            trash = folder.with_name(f".evict-{key}-{os.getpid()}")
            os.replace(folder, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def produce(self, stage: str, key: str, work: Callable[[Path], None]) -> CacheEntry:
        """Run ``work(tmpdir)`` and publish tmpdir as the entry for ``key``."""
        final = self._dir(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale(final.parent)
        tmp = final.parent / f".tmp-{key[:16]}-{os.getpid()}-{time.monotonic_ns()}"
        tmp.mkdir()
        try:
            started = time.monotonic()
            work(tmp)
            files = {str(p.relative_to(tmp)): sha256_file(p)
                     for p in sorted(tmp.rglob("*")) if p.is_file()}
            record = {"stage": stage, "key": key, "files": files,
                      "seconds": round(time.monotonic() - started, 2), "created": time.time()}
            (tmp / ENTRY_FILE).write_text(json.dumps(record, indent=1))
            try:
                os.replace(tmp, final)
            except OSError:
                # Another process published the same key first; its entry is equivalent.
                if self.lookup(stage, key) is None:
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        entry = self.lookup(stage, key)
        if entry is None:
            raise OSError(f"cache entry {final} vanished right after it was written")
        return entry

    @staticmethod
    def _remove_stale(folder: Path) -> None:
        """Temporary folders of processes that died (SIGKILL, power loss) are removed."""
        for tmp in folder.glob(".tmp-*"):
            try:
                pid = int(tmp.name.split("-")[2])
            except (IndexError, ValueError):
                continue
            if not _pid_alive(pid):
                shutil.rmtree(tmp, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
