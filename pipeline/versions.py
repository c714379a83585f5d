"""Versions of every tool the pipeline uses, read from package metadata (nothing is imported)."""
from __future__ import annotations

import platform
from importlib import metadata

# Distribution names as installed by requirements.lock; a tool that is absent reads "absent".
TOOLS = {
    "tensorflow": ("tensorflow-cpu", "tensorflow"),
    "keras": ("keras",),
    "ai-edge-litert": ("ai-edge-litert",),
    "onnx": ("onnx",),
    "onnxruntime": ("onnxruntime",),
    "tf2onnx": ("tf2onnx",),
    "apache-tvm": ("apache-tvm",),
    "apache-tvm-ffi": ("apache-tvm-ffi",),
    "tflite": ("tflite",),
    "ziglang": ("ziglang",),
    "numpy": ("numpy",),
    "scikit-learn": ("scikit-learn",),
    "pillow": ("pillow",),
    "xgboost": ("xgboost-cpu", "xgboost"),
    "cloudpickle": ("cloudpickle",),
    "psutil": ("psutil",),
}


def tool_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name, dists in TOOLS.items():
        found[name] = "absent"
        for dist in dists:
            try:
                found[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found
