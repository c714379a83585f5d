"""TVM's tensor intrinsics, registered in seconds instead of minutes (no TVM import until called)."""
from __future__ import annotations

import inspect
import sys
import time


def load_tensor_intrinsics() -> float:
    """Import TVM's tensor intrinsics (every MetaSchedule TuneContext imports them, for any target) in
    seconds instead of minutes; returns the seconds it took.

    Each of their ~1,300 ``@T.prim_func`` definitions calls ``inspect.stack()``, and for every frame of
    generated code (file ``<ast>``, ``<frozen importlib._bootstrap>``) ``inspect.getmodule`` scans all of
    ``sys.modules`` looking for a module with that file: 30,500 scans, measured at 29 s with TVM alone and
    minutes once TensorFlow (thousands of modules) is loaded, as it is when tuning follows the build stage.
    No module has such a file, so for a frame the answer is the same every time: it is looked up once per
    file name and then remembered, for the length of the import only."""
    if "tvm.s_tir.tensor_intrin" in sys.modules:
        return 0.0
    start = time.monotonic()
    real = inspect.getmodule
    known: dict[str, object] = {}

    def getmodule(obj, _filename=None):
        if _filename and _filename[0] == "<" and inspect.isframe(obj):
            if _filename not in known:
                known[_filename] = real(obj, _filename)
            return known[_filename]
        return real(obj, _filename)

    inspect.getmodule = getmodule
    try:
        import tvm.s_tir.tensor_intrin  # noqa: F401 - registers the intrinsics with TVM
    finally:
        inspect.getmodule = real
    return time.monotonic() - start
