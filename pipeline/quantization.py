"""TFLite int8 we can steer: calibration and conversion, split where TensorFlow splits them.

``calibrated`` records every tensor's min/max (TensorFlow's ``_experimental_calibrate_only``); ``quantize`` makes
the int8 model from it (``mlir_quantize``, optionally keeping named ops float). On our models the two compute bit
for bit what ``converter.convert()`` gives. Between them ``ranges``/``with_ranges`` swap in percentile or entropy
ranges. Must hold: the output tensor keeps its min/max (clipping logits changes the winner). Details:
docs/recovery.md. The per-layer damage is in layer_damage.py, recovery in recovery.py.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks.runtimes import dequantize, quantize as quantize_input
from pipeline.options import option

CALIB_METHODS = option("CALIB_METHOD").choices
DEFAULT_CALIB_METHOD = option("CALIB_METHOD").default
PERCENTILE = 99.99           # two-sided: 0.005% of the values clipped at each end
HISTOGRAM_BINS = 2048
ENTROPY_LEVELS = 128         # quantized bins of |x| compared with the reference distribution (TensorRT's method)


def calibrated(saved_model: Path, calib: np.ndarray, progress_bar=None) -> bytes:
    """The float TFLite model with every tensor's calibrated min/max recorded (TFLite's own calibration)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]

    def representative():
        for i in range(len(calib)):
            if progress_bar is not None:
                progress_bar.update()
            yield [calib[i:i + 1]]

    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    converter._experimental_calibrate_only = True          # pylint: disable=protected-access
    return converter.convert()


def calibrate(saved_model: Path, calib: np.ndarray, method: str, progress) -> bytes:
    """TFLite's calibration with a progress bar, then the method's activation ranges (minmax: TFLite's own)."""
    bar = progress.bar("calibrating (TFLite)", len(calib))
    try:
        model = calibrated(saved_model, calib, bar)
    finally:
        bar.close()
    if method == "minmax":
        return model
    progress.log(f"  activation ranges by {method} (calibration images)")
    return with_ranges(model, ranges(model, calib, method))


def quantize(calibrated_model: bytes, float_nodes: Sequence[str] = ()) -> bytes:
    """The int8 model (int8 input and output) from a calibrated model, with the ops whose output tensors are
    named in ``float_nodes`` kept in float."""
    import tensorflow as tf
    from tensorflow.lite.python import convert as tf_convert

    return tf_convert.mlir_quantize(calibrated_model, False, input_data_type=tf.int8, output_data_type=tf.int8,
                                    denylisted_nodes=list(float_nodes) or None)


def quantize_16x8(calibrated_model: bytes) -> bytes:
    """The 16x8 model from a calibrated model: int16 activations, int8 weights, int64 biases, int8 input and output.
    LiteRT makes it for the whole model only (TensorFlow's own quantizer; its MLIR quantizer has no int16
    activations), from the same recorded ranges as ``quantize``."""
    # TensorFlow's quantizer behind Calibrator.calibrate_and_quantize, without feeding the images again: the
    # calibrated model already holds the recorded ranges it reads
    from tensorflow.lite.python.optimize import _pywrap_tensorflow_lite_calibration_wrapper as calibration

    wrapper = calibration.CalibrationWrapper(calibrated_model, [], [])
    int8, int16, int64 = (np.dtype(t).num for t in (np.int8, np.int16, np.int64))
    return bytes(wrapper.QuantizeModel(int8, int8, False, int16, int64, False, False))



# -- running models ----------------------------------------------------------------------------------------------
def load_interpreter(model: bytes, preserve: bool = False):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, experimental_preserve_all_tensors=preserve, num_threads=2)
    interpreter.allocate_tensors()
    return interpreter


def set_input(interpreter, x: np.ndarray) -> None:
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], quantize_input(x[None], detail["dtype"], *detail["quantization"]))


def output_of(interpreter) -> np.ndarray:
    detail = interpreter.get_output_details()[0]
    return dequantize(interpreter.get_tensor(detail["index"]), *detail["quantization"])


def outputs(model: bytes, images: np.ndarray) -> np.ndarray:
    interpreter = load_interpreter(model)
    result = []
    for x in images:
        set_input(interpreter, x)
        interpreter.invoke()
        result.append(output_of(interpreter)[0])
    return np.array(result)


def compare(reference: np.ndarray, quantized: np.ndarray) -> dict:
    """Top-1 agreement and the logit error of a model's outputs against the float model's."""
    error = float(np.sum((quantized - reference) ** 2) / max(float(np.sum(reference ** 2)), 1e-30))
    return {"agreement_top1": float(np.mean(reference.argmax(-1) == quantized.argmax(-1))),
            "relative_mse": error, "sqnr_db": db(error)}


def db(relative_mse: float) -> float:
    return round(float(-10 * np.log10(max(relative_mse, 1e-30))), 2)


# -- calibration methods -----------------------------------------------------------------------------------------
def ranges(calibrated_model: bytes, calib: np.ndarray, method: str) -> dict[str, tuple[float, float]]:
    """Per activation tensor name, its (min, max) under the method, from a histogram of the float values of the
    calibration images over the recorded min/max range. The model's output keeps its min/max: clipping logits
    changes which class wins."""
    if method not in CALIB_METHODS:
        raise ValueError(f"calibration method {method!r} is not one of {', '.join(CALIB_METHODS)}")
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated_model))
    graph = model.subgraphs[0]
    recorded = {}
    for op in graph.operators:
        for index in op.outputs:
            q = graph.tensors[index].quantization
            if q is not None and q.min is not None and len(q.min) == 1:
                recorded[graph.tensors[index].name.decode()] = (float(q.min[0]), float(q.max[0]))
    if method == "minmax":
        return recorded
    interpreter = load_interpreter(calibrated_model, preserve=True)
    index = {t["name"]: t["index"] for t in interpreter.get_tensor_details()}
    final = {d["name"] for d in interpreter.get_output_details()}
    names = [n for n in recorded if n in index and n not in final and recorded[n][1] > recorded[n][0]]
    hist = {n: np.zeros(HISTOGRAM_BINS, np.int64) for n in names}
    for x in calib:
        set_input(interpreter, x)
        interpreter.invoke()
        for n in names:
            lo, hi = recorded[n]
            hist[n] += np.histogram(interpreter.get_tensor(index[n]), HISTOGRAM_BINS, (lo, hi))[0]
    result = dict(recorded)
    for n in names:
        lo, hi = recorded[n]
        edges = np.linspace(lo, hi, HISTOGRAM_BINS + 1)
        new = _percentile(hist[n], edges) if method == "percentile" else _entropy(hist[n], edges)
        result[n] = (min(new[0], 0.0), max(new[1], 0.0))          # int8 ranges hold zero exactly
    return result


def _percentile(hist: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    cumulative = np.cumsum(hist) / max(hist.sum(), 1)
    tail = (100 - PERCENTILE) / 200
    low = int(np.searchsorted(cumulative, tail))
    high = int(np.searchsorted(cumulative, 1 - tail))
    return float(edges[low]), float(edges[min(high + 1, len(edges) - 1)])


def _entropy(hist: np.ndarray, edges: np.ndarray) -> tuple[float, float]:
    """TensorRT's KL-divergence threshold on |x|: the clipping threshold T whose 128-level quantized distribution
    is closest to the reference distribution, then [max(min, -T), min(max, T)]. One change: the bin holding zero is
    never merged into its level, because int8 represents zero exactly (the zero point). Merged, a ReLU tensor's
    spike of exact zeros was smeared over its first level, which made every small T look best: on the reference
    Xception that clipped ReLU outputs to a quarter of their range and the residual stream to a seventh, and int8
    agreed 91% with float (83% on the eval images); kept exact, 100% (2026-12-04, docs/recovery.md)."""
    lo, hi = float(edges[0]), float(edges[-1])
    extent = max(abs(lo), abs(hi))
    centres = (edges[:-1] + edges[1:]) / 2
    folded = np.histogram(np.abs(centres), HISTOGRAM_BINS, (0, extent), weights=hist)[0].astype(np.float64)
    best, best_kl = HISTOGRAM_BINS, np.inf
    for i in range(ENTROPY_LEVELS, HISTOGRAM_BINS + 1, 16):
        reference = folded[:i].copy()
        reference[i - 1] += folded[i:].sum()                  # clipped values pile up at the threshold
        if reference.sum() == 0:
            continue
        sliced = folded[:i].copy()
        sliced[0] = 0.0                                        # zero: exact, kept out of its level's average
        chunks = np.array_split(sliced, ENTROPY_LEVELS)
        expanded = np.concatenate([np.where(c > 0, c.sum() / max((c > 0).sum(), 1), 0.0) for c in chunks])
        expanded[0] = folded[0]
        p, q = reference / reference.sum(), expanded / max(expanded.sum(), 1e-30)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best, best_kl = i, kl
    threshold = extent * best / HISTOGRAM_BINS
    return max(lo, -threshold), min(hi, threshold)


def with_ranges(calibrated_model: bytes, new: dict[str, tuple[float, float]]) -> bytes:
    """The calibrated model with its recorded activation ranges replaced (the quantizer reads them)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated_model))
    for tensor in model.subgraphs[0].tensors:
        name = tensor.name.decode()
        if name in new and tensor.quantization is not None and tensor.quantization.min is not None:
            tensor.quantization.min = np.array([new[name][0]], np.float32)
            tensor.quantization.max = np.array([new[name][1]], np.float32)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))
