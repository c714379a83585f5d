"""check: run an artifact on the eval set right after it is made, against the float reference (accuracy.json). A TVM
library is also compared with LiteRT on the TFLite file it came from (recorded as measured). Where it ran
(``measured_on``: CPU, int8 ISA, emulated core) is part of the result and of the cache key; with ``emulate`` it
runs under qemu-user as the board's core. Details: docs/internals.md (module notes).
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline.errors import StageError
from pipeline.host_tools import run_tool
from pipeline.progress import Progress

NAME = "check"
VERSION = 6
TOOLS = ("ai-edge-litert", "onnxruntime", "apache-tvm", "numpy")
FP32_RELATIVE_TOLERANCE = 1e-4
INT8_STEP_TOLERANCE = 1


@dataclass(frozen=True)
class Config:
    kind: str
    runtime: str
    limit: int = 0            # only the first N eval images (0 = all)
    runs_on: str = ""         # canonical JSON of benchmarks.device.this_cpu() (native runs; part of the key)
    emulate: str = ""         # canonical JSON {"qemu", "sysroot", "core", "cores"}: run under qemu-user as that core


def run(inputs: Mapping[str, Path], config: Config, out: Path, progress: Progress) -> None:
    from benchmarks.metrics import accuracy
    from benchmarks.runtimes import open_session, run_all

    data = np.load(inputs["eval"])
    n = min(config.limit or len(data["inputs"]), len(data["inputs"]))
    x = data["inputs"][:n]
    threads = os.cpu_count() or 1
    name = inputs["artifact"].name
    io = json.loads(inputs["tvm_info"].read_text())["io"] if "tvm_info" in inputs else None
    if config.emulate:
        emulated = json.loads(config.emulate)
        progress.log(f"  checking {name} under qemu as {emulated['core']} (as the board computes it) on {n} eval "
                     f"images; emulation is slow (about 0.7 s per 71x71 Xception image)")
        logits, measured_on = _run_emulated(inputs["artifact"], config.runtime, io, inputs["eval"], n, threads,
                                            emulated)
    else:
        session = open_session(inputs["artifact"], config.runtime, threads, io)
        with progress.bar(f"checking {name} on {n} eval images", n) as bar:
            logits = run_all(session, x, on_step=bar.update)
        measured_on = json.loads(config.runs_on) if config.runs_on else {}
    if not np.all(np.isfinite(logits)):
        raise StageError(f"{name} produced non-finite outputs (NaN or inf) on the eval set; the artifact is broken")
    labels = data["labels"][:n] if "labels" in data.files else None
    result = accuracy(logits, data["logits"][:n], labels) | {"measured_on": measured_on}
    if "litert_twin" in inputs:
        twin = run_all(open_session(inputs["litert_twin"], "litert", threads), x)
        result["vs_litert"] = compare_with_litert(name, logits, twin, io)
    (out / "accuracy.json").write_text(json.dumps(result, indent=1))


def _run_emulated(artifact: Path, runtime: str, io: dict | None, eval_file: Path, n: int, threads: int,
                  emulated: dict) -> tuple[np.ndarray, dict]:
    """The artifact's logits on the first n eval images, computed by the runner's child under qemu-user,
    and where the child says it ran (the emulated core's ISA, read inside the emulator)."""
    from benchmarks.run import ONE_PASS, child_command
    from benchmarks.tvm_params import params_file
    from pipeline.emulation import Emulator

    emulator = Emulator(emulated["qemu"], Path(emulated["sysroot"]))
    emulator.set_core(emulated["core"], emulated["cores"])
    with tempfile.TemporaryDirectory(prefix="check-emulated-") as tmp:
        folder = Path(tmp)
        (folder / "eval").mkdir()
        (folder / "eval" / "eval.npz").symlink_to(eval_file.resolve())
        (folder / artifact.name).symlink_to(artifact.resolve())
        weights = params_file(artifact)
        if weights.is_file():                                # a TVM CPU library's weights go with it
            (folder / weights.name).symlink_to(weights.resolve())
        logits_file = folder / "logits.npy"
        cmd = child_command(folder, {"file": artifact.name, "runtime": runtime, "io": io}, threads, ONE_PASS, n,
                            folder / "result.json", emulator.python(), logits_file)
        root = Path(__file__).resolve().parent.parent.parent
        run_tool(cmd, f"{artifact.name} under qemu as {emulated['core']}", cwd=root, env=emulator.env(emulated["core"]))
        if not logits_file.is_file():
            raise StageError(f"{artifact.name} under qemu as {emulated['core']} wrote no outputs")
        ran_on = json.loads((folder / "result.json").read_text())["measured_on"]
        return np.load(logits_file), ran_on | {"cpu_model": f"{emulated['core']} emulated by qemu-user",
                                               "emulated": emulated["core"]}


def compare_with_litert(name: str, logits: np.ndarray, twin: np.ndarray, io: dict) -> dict:
    """TVM against LiteRT on the same TFLite model, recorded as measured (never loosened).

    int8: within one quantization step per output; fp32: within 1e-4 relative. ``within_tolerance``
    says whether every output met it and ``beyond_tolerance`` how many did not; the compile summary
    flags a miss loudly and the gate enforces cross-runtime top-1 agreement.
    """
    diff = np.abs(logits - twin)
    result = {"n": int(len(logits)), "max_abs_diff": float(diff.max()), "outputs": int(diff.size),
              "agreement_top1": float(np.mean(np.argmax(logits, 1) == np.argmax(twin, 1)))}
    scale = io["output"].get("scale")
    if io["output"]["dtype"] in ("int8", "uint8") and scale:
        steps = np.round(diff / scale).astype(int)
        beyond = int((steps > INT8_STEP_TOLERANCE).sum())
        result |= {"max_quant_steps": int(steps.max()), "tolerance_steps": INT8_STEP_TOLERANCE}
    else:
        relative = diff / max(float(np.max(np.abs(twin))), 1e-12)
        beyond = int((relative > FP32_RELATIVE_TOLERANCE).sum())
        result |= {"max_rel_diff": float(relative.max()), "tolerance_rel": FP32_RELATIVE_TOLERANCE}
    return result | {"within_tolerance": beyond == 0, "beyond_tolerance": beyond}
