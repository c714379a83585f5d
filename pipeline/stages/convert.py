"""convert: one deployable artifact from the Keras model (and calibration data for int8): tflite-fp32, tflite-int8
(calibrated by CALIB_METHOD, recovered when it misses the gate's budget), tflite-fp16, tflite-dynamic, onnx-fp32
(tf2onnx), onnx-int8 (static QDQ in the scheme that suits the target's CPU, ONNX_INT8_SCHEMES).
Details: docs/artifacts.md and docs/internals.md (module notes).
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
from pipeline.targets import ARTIFACT_KINDS

NAME = "convert"
VERSION = 12
TOOLS = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy")
ONNX_OPSET = 17

# ONNX int8 schemes: (activation type, weight type, reduce_range, what it is). Weights are per-channel.
# On x86 without VNNI, ONNX Runtime runs int8 convolutions as u8 x s8 with VPMADDUBSW, whose int16
# sums of two products saturate (up to 2 * 255 * 127 = 64,770 > 32,767); with 7-bit weights
# (reduce_range) the largest pair sum is 2 * 255 * 64 = 32,640 and nothing saturates. Measured on the
# reference Xception on an AVX2-only AMD EPYC (360 digits, agreement with float / p50 at 2 threads):
# s8s8 94.2% / 9.1 ms; s8s8 + reduce_range 100% / 9.0 ms; u8u8 99.7% / 7.4 ms; u8s8 + reduce_range
# 100% / 6.6 ms. ARM (NEON widening multiply-accumulate, or SDOT) and x86 VNNI accumulate exactly:
# there s8s8 keeps the full 8-bit weights.
ONNX_INT8_SCHEMES = {
    "s8s8": ("int8", "int8", False, "int8 activations, int8 per-channel weights (8-bit)"),
    "u8s8-reduce-range": ("uint8", "int8", True, "uint8 activations, int8 per-channel weights in 7 bits "
                          "(reduce_range)"),
}


def onnx_int8_scheme(arch: str, int8_isa: str, saturates: bool) -> tuple[str, str]:
    """The ONNX int8 scheme for a target CPU, and why (recorded in the manifest)."""
    if saturates:
        return "u8s8-reduce-range", (
            f"target CPU {arch} with {int8_isa} and no VNNI: ONNX Runtime's int8 kernels (VPMADDUBSW) saturate "
            f"int16 pair sums of 8-bit weights; 7-bit weights cannot saturate")
    return "s8s8", f"target CPU {arch} with {int8_isa}: int8 products accumulate exactly; full 8-bit weights"


@dataclass(frozen=True)
class Config:
    kind: str             # an ARTIFACT_KINDS key
    file_name: str        # the artifact's file name, e.g. xception_int8.tflite
    onnx_scheme: str = "" # onnx-int8 only: an ONNX_INT8_SCHEMES key
    calib_method: str = "minmax"    # int8 kinds: minmax | percentile | entropy
    recover_budget: float = 0.0     # tflite-int8: top-1 agreement with float to reach by recovery (0: off)
    recover_max_drop: float = 1.0   # the gate's top-1 drop budget in points (recorded)
    recover_cap: int = 8            # at most this many float layers
    sensitivity_n: int = 16         # ops whose end-to-end sensitivity is measured when recovering
    float_layers: tuple[str, ...] = ()   # onnx-int8: Keras layers kept float (those TFLite recovery kept float)
    equalize: str = ""              # tflite-int8: auto | on | off (EQUALIZE=): cross-layer equalization rung
    rungs: str = "cle,bias,16x8,float"    # tflite-int8: the ladder's rungs (RECOVER_RUNGS=)
    activations16: bool = False     # onnx-int8: int16 activations (the TFLite ladder's 16x8 rung was adopted)

TVM_SOURCE = "tvm_source.tflite"    # tflite-int8 with 16x8 adopted: the int8 model TVM builds instead
ONNX_CALIBRATION = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy"}


def run(inputs: Mapping[str, Path], config: Config, out: Path, progress: Progress) -> None:
    import keras

    started = time.monotonic()
    model = keras.saving.load_model(inputs["model"], compile=False)
    calib = np.load(inputs["calib"])["inputs"] if ARTIFACT_KINDS[config.kind].needs_calibration else None
    target = out / config.file_name
    work = out / ".work"          # scratch space, removed before the entry is published
    work.mkdir()
    quantization = None
    if config.kind == "tflite-int8":
        data, quantization = _tflite_int8(inputs["model"], calib, work, out, progress, config)
        target.write_bytes(data)
    elif config.kind.startswith("tflite-"):
        target.write_bytes(_tflite(model, config.kind, work))
    elif config.kind == "onnx-fp32":
        _onnx_fp32(model, target)
    elif config.kind == "onnx-int8":
        if config.onnx_scheme not in ONNX_INT8_SCHEMES:
            raise ValueError(f"convert: onnx-int8 scheme {config.onnx_scheme!r} is not one of "
                             f"{', '.join(ONNX_INT8_SCHEMES)}")
        excluded = _onnx_int8(model, calib, work, target, progress, config.onnx_scheme, config.calib_method,
                              config.float_layers, config.activations16)
    else:
        raise ValueError(f"convert: unknown artifact kind {config.kind!r}")
    shutil.rmtree(work)
    details = {"kind": config.kind, "seconds": round(time.monotonic() - started, 2),
               "calibration_images": 0 if calib is None else int(len(calib))}
    if config.kind == "onnx-int8":
        activations, weights, reduce_range, what = ONNX_INT8_SCHEMES[config.onnx_scheme]
        details["quantization"] = {"scheme": config.onnx_scheme, "activations": activations, "weights": weights,
                                   "per_channel": True, "reduce_range": reduce_range, "format": "QDQ",
                                   "calibration": ONNX_CALIBRATION[config.calib_method],
                                   "calib_method": config.calib_method, "description": what,
                                   "float_layers": list(config.float_layers), "excluded_nodes": excluded}
        if config.activations16:
            details["quantization"] |= {"activations": "int16", "reduce_range": False, "description":
                                        "int16 activations, int8 per-channel weights (the TFLite ladder's 16x8 rung)"}
    if quantization is not None:
        details["quantization"] = quantization
    (out / "convert.json").write_text(json.dumps(details, indent=1))


def _serving_function(model):
    import tensorflow as tf

    shape = (1,) + tuple(model.inputs[0].shape[1:])
    spec = tf.TensorSpec(shape, tf.float32, name="input")
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return fn, spec


def saved_model(model, work: Path) -> Path:
    # Through a SavedModel with a batch-1 signature: converting a concrete function directly leaves
    # resource-variable reads in the graph, which the int8 calibrator cannot run.
    _, spec = _serving_function(model)
    saved = work / "saved_model"
    model.export(str(saved), format="tf_saved_model", input_signature=[spec], verbose=False)
    return saved


def _tflite_int8(model_file: Path, calib, work: Path, out: Path, progress: Progress, config: Config) -> tuple[bytes, dict]:
    """TFLite's calibration, the calibration method's ranges, quantization; then the recovery ladder (ladder.py)
    when the int8 model misses the gate's budget. An equalized Keras model is kept as equalized.keras (the ONNX
    int8 conversion takes it)."""
    from pipeline import quantization as q
    from pipeline.ladder import Ladder, climb

    runs = iter(range(1_000_000))

    def calibrate(model) -> bytes:
        folder = work / f"calibrate-{next(runs)}"
        folder.mkdir()
        return q.calibrate(saved_model(model, folder), calib, config.calib_method, progress)

    ladder = Ladder(config.recover_budget, config.recover_max_drop, config.recover_cap, config.sensitivity_n,
                    config.equalize or "off", tuple(r.strip() for r in config.rungs.split(",")))
    result = climb(model_file, calibrate, calib, ladder, progress)
    if result.equalized is not None:
        result.equalized.save(out / "equalized.keras")
    if result.tvm_model is not None:
        (out / TVM_SOURCE).write_bytes(result.tvm_model)
    info = {"calib_method": config.calib_method, "calibration_images": int(len(calib))}
    return result.model, info | {"recovery": result.record}


def _tflite(model, kind: str, work: Path) -> bytes:
    """A float TFLite model: fp32, fp16 weights or dynamic-range int8 weights (tflite-int8: ``_tflite_int8``)."""
    import tensorflow as tf

    saved = saved_model(model, work)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if kind == "tflite-fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "tflite-dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return converter.convert()


def _onnx_fp32(model, target: Path) -> None:
    import tf2onnx

    fn, spec = _serving_function(model)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=ONNX_OPSET)
    renumber_made_names(proto.graph)
    proto.graph.doc_string = "converted by tf2onnx"    # it names TensorFlow's traced function, whose id counts up
    target.write_bytes(proto.SerializeToString())


MADE_NAME = re.compile(r"__(\d+)(?=(?::\d+)?$)")


def renumber_made_names(graph) -> None:
    """tf2onnx names the nodes it makes ``<name>__<n>`` from one process-wide counter, so the same model got other
    names (and bytes) depending on what the process had converted before, and on its first conversion. The numbers
    are renumbered 1, 2, ... in graph order: one number per counter value, so distinct names stay distinct."""
    numbers: dict[str, str] = {}

    def renamed(name: str) -> str:
        return MADE_NAME.sub(lambda m: "__" + numbers.setdefault(m.group(1), str(len(numbers) + 1)), name)

    for value in [*graph.input, *graph.initializer, *graph.output, *graph.value_info]:
        value.name = renamed(value.name)
    for node in graph.node:
        node.name = renamed(node.name)
        node.input[:] = [renamed(n) for n in node.input]
        node.output[:] = [renamed(n) for n in node.output]


def _onnx_int8(model, calib, work: Path, target: Path, progress: Progress, scheme: str,
               calib_method: str = "minmax", float_layers: tuple[str, ...] = (),
               activations16: bool = False) -> list[str]:
    """The QDQ model; nodes of the Keras layers in ``float_layers`` are excluded from quantization (their
    tensors between excluded nodes stay float); ``activations16``: int16 activations, int8 weights (ONNX Runtime's
    16-bit QDQ, run as float between its Q/DQ pairs on the CPU). Returns the excluded node names."""
    import onnx

    from pipeline.layer_damage import keras_layers_in

    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = work / "fp32.onnx"
    prepared = work / "prepared.onnx"
    _onnx_fp32(model, fp32)
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    wanted = set(float_layers)
    excluded = [node.name for node in onnx.load(str(prepared), load_external_data=False).graph.node
                if wanted and set(keras_layers_in(node.name, wanted))]
    if float_layers:
        progress.log(f"  {len(excluded)} ONNX nodes of {len(float_layers)} float layers excluded from quantization")
    bar = progress.bar("calibrating (ONNX Runtime)", len(calib))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(calib):
                return None
            sample = {"input": calib[self.i:self.i + 1]}
            self.i += 1
            bar.update()
            return sample

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8, "int16": QuantType.QInt16}
    activations, weights, reduce_range, _ = ONNX_INT8_SCHEMES[scheme]
    if activations16:
        activations, reduce_range = "int16", False
    try:
        quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=types[activations], weight_type=types[weights], reduce_range=reduce_range,
                        calibrate_method=getattr(CalibrationMethod, ONNX_CALIBRATION[calib_method]),
                        nodes_to_exclude=excluded)
    finally:
        bar.close()
    return excluded
