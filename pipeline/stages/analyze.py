"""analyze (make analyze): where int8 loses accuracy, layer by layer, for the TFLite int8 model before recovery:
each op's SQNR against float, the end-to-end sensitivity of the ops that lose most, the order recovery would
follow; with an ONNX int8 model, its activations against float ONNX. Output: analysis.json.
Details: docs/internals.md (module notes).
"""
from __future__ import annotations

import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline.progress import Progress

NAME = "analyze"
VERSION = 6
TOOLS = ("tensorflow", "keras", "ai-edge-litert", "numpy")


@dataclass(frozen=True)
class Config:
    calib_method: str = "minmax"
    n: int = 16            # ops whose sensitivity is measured (0: every quantized op)


def run(inputs: Mapping[str, Path], config: Config, out: Path, progress: Progress) -> None:
    import keras

    from pipeline import layer_damage as damage, quantization as q
    from pipeline.ladder import rung_gains
    from pipeline.stages.convert import saved_model

    started = time.monotonic()
    model = keras.saving.load_model(inputs["model"], compile=False)
    calib = np.load(inputs["calib"])["inputs"]
    work = out / ".work"
    work.mkdir()
    calibrated = q.calibrate(saved_model(model, work), calib, config.calib_method, progress)
    int8 = q.quantize(calibrated)
    reference = q.outputs(calibrated, calib)
    overall = q.compare(reference, q.outputs(int8, calib))
    ops = damage.model_ops(int8, [layer.name for layer in model.layers])
    progress.log(f"  per-layer error of {len(ops)} ops on {min(len(calib), damage.ERROR_IMAGES)} calibration images")
    quantized = [op for op in ops if op.kind in damage.QUANTIZED_OPS]
    found = damage.measure(calibrated, int8, reference, calib, ops, config.n or len(quantized), progress)
    errors, measured, sens, ranked = found.errors, found.measured, found.sensitivities, found.ranked
    rank = {name: i + 1 for i, name in enumerate(ranked)}
    layer_of = {op.tensor: op.layer for op in ops}
    layers = []
    for op in ops:
        if op.kind not in damage.QUANTIZED_OPS:
            continue
        row = {"index": op.index, "op": op.kind, "layer": op.layer, "keras_layers": op.layers, "tensor": op.tensor,
               "flow": flow(op.layer), **errors.get(op.tensor, {"sqnr_db": None, "relative_rmse": None})}
        if op.tensor in sens:
            row["sensitivity"] = sens[op.tensor]
            row["rank"] = rank.get(op.tensor)
        layers.append(row)
    _fill_flow(layers)
    onnx_rows = None
    if "onnx_int8" in inputs:
        progress.log("  per-layer error of the ONNX int8 model")
        onnx_rows = damage.onnx_layer_errors(inputs["onnx_fp32"], inputs["onnx_int8"], calib[:damage.ERROR_IMAGES],
                                        [layer.name for layer in model.layers])
        for row in onnx_rows:
            row["flow"] = flow(row["layer"])
        _fill_flow(onnx_rows)
    runs = iter(range(1_000_000))

    def calibrate(candidate) -> bytes:
        folder = work / f"rung-{next(runs)}"
        folder.mkdir()
        return q.calibrate(saved_model(candidate, folder), calib, config.calib_method, progress)

    gains = rung_gains(inputs["model"], calibrate, calibrated, reference, calib, ops, ranked, progress)
    (out / "analysis.json").write_text(json.dumps({
        "artifact": "tflite-int8", "calib_method": config.calib_method, "calibration_images": int(len(calib)),
        "error_images": int(min(len(calib), damage.ERROR_IMAGES)),
        "sensitivity_images": int(min(len(calib), damage.SENSITIVITY_IMAGES)),
        "sensitivity_measured": len(measured), "quantized_ops": len(quantized),
        "sensitivity_form": "end-to-end outputs against float with only this op quantized",
        "overall": overall, "layers": layers, "onnx_layers": onnx_rows,
        "recovery_order": [layer_of[name] for name in ranked], "rungs": gains,
        "seconds": round(time.monotonic() - started, 1)}, indent=1))
    shutil.rmtree(work)


def flow(layer: str) -> str | None:
    """Xception's parts by block number: entry flow (blocks 1-4), middle flow (5-12), exit flow (13-14)."""
    found = re.match(r"block(\d+)_", layer)
    if not found:
        return None
    block = int(found.group(1))
    return "entry" if block <= 4 else "middle" if block <= 12 else "exit"


def _fill_flow(layers: list[dict]) -> None:
    """Ops outside a named block (shortcut convolutions, adds, the classifier) belong to the part before them;
    a model without Xception's block names is one part, "network"."""
    if not any(r["flow"] for r in layers):
        for r in layers:
            r["flow"] = "network"
        return
    current = "entry"
    for r in layers:
        current = r["flow"] = r["flow"] or current
