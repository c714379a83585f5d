"""opencl_runtime: our TVM OpenCL device runtime (pipeline/native/opencl_runtime.cc) built for a board's architecture,
linked against that architecture's libtvm_runtime / libtvm_ffi and the OpenCL ICD loader by soname (through a
stub here; the vendor's driver on the board). Outputs: libtvm_runtime_opencl.so, opencl_runtime.json.
Details: docs/gpu.md and docs/internals.md (module notes).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from pipeline.errors import StageError
from pipeline.host_tools import run_tool
from pipeline.progress import Progress
from pipeline.tvm.library import elf_info

NAME = "opencl_runtime"
VERSION = 3
TOOLS = ("apache-tvm", "apache-tvm-ffi")
FILE_NAME = "libtvm_runtime_opencl.so"
SOURCE = Path(__file__).resolve().parent.parent / "native" / "opencl_runtime.cc"
# what TVM looks up: the device API, the loader of the OpenCL module in a library; ours: the proof it ran
REGISTERS = ("device_api.opencl", "ffi.Module.load_from_bytes.opencl", "xception_edge.opencl.stats")
NEEDED = ("libtvm_runtime.so", "libtvm_ffi.so", "libOpenCL.so.1")


@dataclass(frozen=True)
class Config:
    arch: str                 # aarch64 | x86_64
    compiler: str             # the C++ compiler command for that architecture (Debian bookworm's g++ 12)
    compiler_version: str     # its --version line: part of the cache key, recorded beside the library


def run(inputs: Mapping[str, Path], config: Config, out: Path, progress: Progress) -> None:
    import tvm
    import tvm_ffi

    source = inputs["source"]
    includes = [Path(tvm.__file__).parent / "include", Path(tvm_ffi.__file__).parent / "include"]
    stub_dir = out / ".stub"
    stub_dir.mkdir()
    _opencl_stub(source.read_text(), config.compiler, stub_dir)
    library = out / FILE_NAME
    progress.log(f"  building {FILE_NAME} for {config.arch} with {config.compiler}")
    cmd = [config.compiler, "-std=c++17", "-O2", "-shared", "-fPIC", "-o", str(library), str(source),
           *[f"-I{d}" for d in includes], f"-L{inputs['libtvm_runtime'].parent}", f"-L{inputs['libtvm_ffi'].parent}",
           f"-L{stub_dir}", "-ltvm_runtime", "-ltvm_ffi", "-lOpenCL"]
    _compile(cmd, "the OpenCL runtime")
    for stub in stub_dir.iterdir():
        stub.unlink()
    stub_dir.rmdir()

    info = elf_info(library)
    blob = library.read_bytes()
    missing = [n for n in NEEDED if n not in info["needed"]]
    unregistered = [r for r in REGISTERS if r.encode() not in blob]
    if info["arch"] != config.arch or missing or unregistered:
        raise StageError(f"{FILE_NAME} for {config.arch} came out wrong: {info['arch']} ELF, missing libraries "
                         f"{missing or 'none'}, unregistered functions {unregistered or 'none'}")
    versions = sorted(set(re.findall(rb"(GLIBC(?:XX)?_[0-9.]+)\x00", blob)), key=_version_key)
    (out / "opencl_runtime.json").write_text(json.dumps({
        "file": FILE_NAME, "arch": info["arch"], "compiler": config.compiler,
        "compiler_version": config.compiler_version, "needed": info["needed"],
        "registers": list(REGISTERS),
        "needs_glibc": max((v.decode() for v in versions if v.startswith(b"GLIBC_")), key=_version_key, default=None),
        "needs_libstdcxx": max((v.decode() for v in versions if v.startswith(b"GLIBCXX_")), key=_version_key,
                               default=None),
    }, indent=1) + "\n")


def _opencl_stub(source: str, compiler: str, folder: Path) -> None:
    """A libOpenCL.so.1 that defines the OpenCL functions the runtime calls, to link against: the library then
    needs the real ICD loader by its soname, for the board's architecture, without installing it here."""
    functions = sorted(set(re.findall(r"\b(cl[A-Z]\w+)\s*\(", source)))
    stub = folder / "stub.c"
    stub.write_text("".join(f"void {f}(void) {{}}\n" for f in functions))
    c_compiler = compiler.replace("g++", "gcc") if compiler.endswith("g++") else compiler
    _compile([c_compiler, "-shared", "-fPIC", "-o", str(folder / "libOpenCL.so.1"), "-Wl,-soname,libOpenCL.so.1",
              str(stub)], "the OpenCL link stub")
    (folder / "libOpenCL.so").symlink_to("libOpenCL.so.1")


def _compile(cmd: list[str], what: str) -> None:
    run_tool(cmd, f"compiling {what}", pick="error")


def _version_key(version) -> tuple[int, ...]:
    text = version.decode() if isinstance(version, bytes) else version
    return tuple(int(p) for p in text.split("_")[-1].split(".") if p.isdigit())
