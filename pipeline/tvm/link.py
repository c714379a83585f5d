"""Linking exported TVM libraries: natively, with zig (``zig:<triple>``, root-free cross linking from
the Python registry) or with a cross compiler command (e.g. aarch64-linux-gnu-gcc)."""
from __future__ import annotations

import subprocess
import sys


def linker_options(spec: str) -> dict:
    """export_library keyword arguments for a linker spec: native, zig:<triple> or a cross compiler."""
    if spec == "native":
        return {}
    if spec.startswith("zig:"):
        command = [sys.executable, "-m", "ziglang", "cc", "-target", spec[4:]]
    else:
        command = [spec]

    def fcompile(output, objects, options=None):
        cmd = [*command, "-shared", "-fPIC", "-o", output, *objects, *(options or [])]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"linker failed ({' '.join(cmd)}):\n{done.stdout}\n{done.stderr}")

    fcompile.output_format = "so"
    return {"fcompile": fcompile}
