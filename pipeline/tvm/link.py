"""Linking exported TVM libraries.

Every shipped library is linked by one tool chosen on purpose, never by whatever happens to be on the PATH:
``zig:<triple>`` runs ``zig cc -target <triple>`` from the ``ziglang`` wheel that requirements.lock pins, for
native and cross builds alike, so the same inputs give the same bytes on any machine (Debian's cross gcc
installed or not). A target file may name its own linker command instead (``tvm.linker``); it must then exist,
and its ``--version`` line joins the stage's cache key and the manifest. ``native`` (TVM's default: the
system's g++) is only for builds that are never shipped (the host twins make verify compares with)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from importlib import metadata

from pipeline.errors import MissingDependencyError
from pipeline.host_tools import run_tool

ZIG = "zig"             # tvm.linker's default: the pinned zig cc


def zig_spec(arch: str) -> str:
    return f"zig:{arch}-linux-gnu"


def describe(spec: str) -> dict:
    """What links with ``spec``: the tool, its exact version and the command, for the cache key and the manifest.
    A missing tool is one line naming it."""
    if spec == "native":
        return {"tool": "native", "version": "", "command": "g++ (TVM's default, unshipped builds only)"}
    if spec.startswith("zig:"):
        try:
            version = metadata.version("ziglang")
        except metadata.PackageNotFoundError:
            raise MissingDependencyError("TVM libraries are linked with zig (the ziglang package): run `make setup`, "
                                         "which installs the pinned version") from None
        return {"tool": "zig cc", "version": version, "command": f"zig cc -target {spec[4:]}"}
    if shutil.which(spec) is None:
        raise MissingDependencyError(f"tvm.linker = {spec!r}: no such command on the PATH; install it, or remove "
                                     f"tvm.linker to link with the pinned zig cc")
    done = subprocess.run([spec, "--version"], capture_output=True, text=True)
    version = (done.stdout.strip().splitlines() or [f"exit {done.returncode}"])[0]
    return {"tool": spec, "version": version, "command": spec}


def linker_options(spec: str) -> dict:
    """export_library keyword arguments for a linker spec: native, zig:<triple> or a command."""
    if spec == "native":
        return {}
    if spec.startswith("zig:"):
        command = [sys.executable, "-m", "ziglang", "cc", "-target", spec[4:]]
    else:
        command = [spec]

    def fcompile(output, objects, options=None):
        cmd = [*command, "-shared", "-fPIC", "-o", output, *objects, *(options or [])]
        run_tool(cmd, f"linker ({' '.join(cmd)})", error=RuntimeError)

    fcompile.output_format = "so"
    return {"fcompile": fcompile}
