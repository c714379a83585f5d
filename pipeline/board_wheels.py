"""The runtime wheels a board runs, one set per architecture: the pinned runtimes (LiteRT, ONNX Runtime, TVM,
numpy) and their dependencies at requirements.lock's versions, downloaded once from the package registry into the
cache with their sha256. `make verify`'s emulated aarch64 board installs from this set, and `make provision`
pushes the same files to a real board, so the proof and the deployment are the same bits.
"""
from __future__ import annotations

import hashlib
import json
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError, StageError
from pipeline.host_tools import build_once, run_tool
from pipeline.progress import Progress
from pipeline.versions import tool_versions

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PYTHON = "3.11"                       # the wheels' interpreter: cp311, Debian bookworm's Python (make verify's)
# cloudpickle and psutil: TVM's RPC server (an emulated board for `make tune RPC=`) needs them
RUNTIMES = ("ai-edge-litert", "onnxruntime", "numpy", "apache-tvm", "apache-tvm-ffi", "cloudpickle", "psutil")
PLATFORMS = {
    "aarch64": ("manylinux_2_27_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"),
    "x86_64": ("manylinux_2_27_x86_64", "manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"),
}
SET_FILE = "wheels.json"


@dataclass(frozen=True)
class WheelSet:
    folder: Path
    arch: str
    wheels: tuple[dict, ...]          # {file, sha256, bytes, unpacked_bytes}, by file name
    installer: dict                   # pip's own wheel, run from the file on the board (it needs no pip)

    @property
    def id(self) -> str:
        """Names the set by its bytes: the same files give the same id on any machine."""
        text = "".join(f"{w['file']} {w['sha256']}\n" for w in self.wheels)
        return f"{self.arch}-cp{PYTHON.replace('.', '')}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    @property
    def pins(self) -> list[str]:
        return [f"{w['file'].split('-')[0]}=={w['file'].split('-')[1]}" for w in self.wheels]

    def glibc(self) -> tuple[int, int]:
        """The newest glibc any wheel's manylinux tag asks for (manylinux2014 is 2.17)."""
        need = (2, 17)
        for w in self.wheels:
            for major, minor in re.findall(r"manylinux_(\d+)_(\d+)_", w["file"]):
                need = max(need, (int(major), int(minor)))
        return need

    def bytes_needed(self) -> int:
        """Disk the board needs: the wheels pushed, and what they unpack to."""
        return sum(w["bytes"] + w["unpacked_bytes"] for w in self.wheels) + self.installer["bytes"]


def pins(arch: str) -> list[str]:
    if arch not in PLATFORMS:
        raise ConfigError(f"no runtime wheels for architecture {arch!r}; known: {', '.join(PLATFORMS)}")
    versions = tool_versions()
    return [f"{w}=={versions[w]}" for w in RUNTIMES]


def _folder(cache_dir: Path, arch: str) -> Path:
    key = hashlib.sha256((" ".join(pins(arch) + list(PLATFORMS[arch]) + [_pip_version()]) + LOCK.read_text())
                         .encode()).hexdigest()
    return cache_dir / "wheels" / f"{arch}-cp{PYTHON.replace('.', '')}-{key[:16]}"


def _describe(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        unpacked = sum(i.file_size for i in z.infolist())
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size,
            "unpacked_bytes": unpacked}


def _load(folder: Path, arch: str) -> WheelSet:
    data = json.loads((folder / SET_FILE).read_text())
    return WheelSet(folder, arch, tuple(data["wheels"]), data["installer"])


def cached_wheels(cache_dir: Path, arch: str) -> WheelSet | None:
    folder = _folder(cache_dir, arch)
    return _load(folder, arch) if (folder / ".complete").is_file() else None


def ensure_wheels(cache_dir: Path, arch: str, progress: Progress) -> WheelSet:
    """The set for ``arch``, downloaded once (binary wheels only, requirements.lock's versions as constraints)."""
    folder = _folder(cache_dir, arch)
    wanted = pins(arch)
    pip_version = _pip_version()

    def build(root: Path, scratch: Path) -> str:
        progress.log(f"downloading the {arch} runtime wheels for CPython {PYTHON}: {' '.join(wanted)} "
                     f"(once, cached in {folder})")
        command = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                   "--only-binary=:all:", "--python-version", PYTHON, "--implementation", "cp",
                   *[a for p in PLATFORMS[arch] for a in ("--platform", p)], "-c", str(LOCK), "--dest", str(root),
                   *wanted]
        try:
            run_tool(command, f"{arch} runtime wheels: pip download")
        except StageError as err:     # once seen: the registry sent a file whose sha256 was not its own
            progress.warn(f"{err}; downloading once more")
            run_tool(command, f"{arch} runtime wheels: pip download (second try)")
        run_tool([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                  "--only-binary=:all:", "--dest", str(scratch), f"pip=={pip_version}"], "pip's wheel: pip download")
        (root / "installer").mkdir()
        downloaded = next(scratch.glob("pip-*.whl"))
        installer = downloaded.rename(root / "installer" / downloaded.name)
        wheels = [_describe(p) for p in sorted(root.glob("*.whl"))]
        data = {"arch": arch, "python": PYTHON, "pins": wanted,
                "wheels": wheels, "installer": _describe(root / "installer" / installer.name)}
        (root / SET_FILE).write_text(json.dumps(data, indent=1) + "\n")
        return " ".join(wanted)

    return _load(build_once(folder, build), arch)


def _pip_version() -> str:
    from importlib import metadata

    return metadata.version("pip")
