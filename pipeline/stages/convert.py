"""convert: one deployable artifact from the Keras model (and calibration data for int8).

tflite-fp32      TFLite, float32
tflite-int8      TFLite full-integer: int8 weights (per-channel) and activations, int8 input/output
tflite-fp16      TFLite with float16 weights (for GPU delegates)
tflite-dynamic   TFLite dynamic-range: int8 weights, float activations
onnx-fp32        ONNX via tf2onnx
onnx-int8        ONNX static QDQ (onnxruntime.quantization, per-channel weights), same calibration set, in
                 the scheme that suits the target's CPU (ONNX_INT8_SCHEMES, onnx_int8_scheme)
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline.progress import Progress

NAME = "convert"
VERSION = 2
TOOLS = ("tensorflow", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy")
ONNX_OPSET = 17
NEEDS_CALIBRATION = ("tflite-int8", "onnx-int8")

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


def run(inputs: Mapping[str, Path], config: Config, out: Path, progress: Progress) -> None:
    import keras

    started = time.monotonic()
    model = keras.saving.load_model(inputs["model"], compile=False)
    calib = np.load(inputs["calib"])["inputs"] if config.kind in NEEDS_CALIBRATION else None
    target = out / config.file_name
    work = out / ".work"          # scratch space, removed before the entry is published
    work.mkdir()
    if config.kind.startswith("tflite-"):
        target.write_bytes(_tflite(model, config.kind, calib, work, progress))
    elif config.kind == "onnx-fp32":
        _onnx_fp32(model, target)
    elif config.kind == "onnx-int8":
        if config.onnx_scheme not in ONNX_INT8_SCHEMES:
            raise ValueError(f"convert: onnx-int8 scheme {config.onnx_scheme!r} is not one of "
                             f"{', '.join(ONNX_INT8_SCHEMES)}")
        _onnx_int8(model, calib, work, target, progress, config.onnx_scheme)
    else:
        raise ValueError(f"convert: unknown artifact kind {config.kind!r}")
    shutil.rmtree(work)
    details = {"kind": config.kind, "seconds": round(time.monotonic() - started, 2),
               "calibration_images": 0 if calib is None else int(len(calib))}
    if config.kind == "onnx-int8":
        activations, weights, reduce_range, what = ONNX_INT8_SCHEMES[config.onnx_scheme]
        details["quantization"] = {"scheme": config.onnx_scheme, "activations": activations, "weights": weights,
                                   "per_channel": True, "reduce_range": reduce_range, "format": "QDQ",
                                   "calibration": "MinMax", "description": what}
    (out / "convert.json").write_text(json.dumps(details, indent=1))


def _serving_function(model):
    import tensorflow as tf

    shape = (1,) + tuple(model.inputs[0].shape[1:])
    spec = tf.TensorSpec(shape, tf.float32, name="input")
    fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])
    return fn, spec


def _tflite(model, kind: str, calib, work: Path, progress: Progress) -> bytes:
    import tensorflow as tf

    # Through a SavedModel with a batch-1 signature: converting a concrete function directly leaves
    # resource-variable reads in the graph, which the int8 calibrator cannot run.
    _, spec = _serving_function(model)
    saved = work / "saved_model"
    model.export(str(saved), format="tf_saved_model", input_signature=[spec], verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    if kind == "tflite-fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == "tflite-dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif kind == "tflite-int8":
        bar = progress.bar("calibrating (TFLite)", len(calib))

        def representative():
            for i in range(len(calib)):
                bar.update()
                yield [calib[i:i + 1]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
        try:
            return converter.convert()
        finally:
            bar.close()
    return converter.convert()


def _onnx_fp32(model, target: Path) -> None:
    import tf2onnx

    fn, spec = _serving_function(model)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=[spec], opset=ONNX_OPSET)
    target.write_bytes(proto.SerializeToString())


def _onnx_int8(model, calib, work: Path, target: Path, progress: Progress, scheme: str) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fp32 = work / "fp32.onnx"
    prepared = work / "prepared.onnx"
    _onnx_fp32(model, fp32)
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
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

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    activations, weights, reduce_range, _ = ONNX_INT8_SCHEMES[scheme]
    try:
        quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=types[activations], weight_type=types[weights], reduce_range=reduce_range,
                        calibrate_method=CalibrationMethod.MinMax)
    finally:
        bar.close()
