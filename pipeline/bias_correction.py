"""Empirical bias correction of a calibrated TFLite model (Nagel et al., 2019; AIMET's ``correct_bias``): each
convolution's and dense layer's int8 output is compared with the float model's same tensor on calibration images,
and its per-channel mean shift is subtracted from its float bias. Two forms (MODES): ``own``, the part of the shift
the op adds itself (its output's shift less what its input's shift makes through its float weights), corrected once
where it arises; ``whole``, each op's whole shift (right for a shallow net whose damage sits in one tensor; on
the reference Xception it corrected shifts again downstream: logit SQNR 38 -> 24 dB). Must hold: the recorded
activation ranges are kept (the quantizer reads them), so only the biases change.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from pipeline.quantization import load_interpreter, quantize, set_input

BIASED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
SWEEPS = 3                 # later sweeps measure what earlier ones left (shifts through ReLU are not linear)
MODES = ("own", "whole")
IMAGES = 32                # calibration images the shifts are measured on


@dataclass
class Corrected:
    mode: str                    # own | whole (MODES)
    models: list[bytes]          # the calibrated model after each sweep
    layers: list[str]            # the output tensors whose biases were corrected
    largest_shift: list[float]   # per sweep: the largest |own mean shift| / the tensor's float range


@dataclass
class _Biased:
    kind: str
    output: str            # output tensor name
    input: str             # activation input tensor name
    weights: np.ndarray    # float weights in TFLite's layout
    bias_index: int        # bias tensor index (its own: a shared one is copied first)


def _biased(model_object) -> list[_Biased]:
    """Every convolution and dense op with a float bias. A bias tensor or buffer shared with another op (the
    converter may share a zero bias) is first given its own copy."""
    from tensorflow.lite.python import schema_py_generated as schema

    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("__")}
    graph = model_object.subgraphs[0]
    tensors_seen, buffers_seen, found = set(), set(), []
    for op in graph.operators:
        kind = codes.get(model_object.operatorCodes[op.opcodeIndex].builtinCode)
        if kind not in BIASED_OPS or op.inputs is None or len(op.inputs) < 3 or op.inputs[2] < 0:
            continue
        index = int(op.inputs[2])
        if index in tensors_seen or graph.tensors[index].buffer in buffers_seen:
            tensor = copy.deepcopy(graph.tensors[index])
            model_object.buffers.append(copy.deepcopy(model_object.buffers[tensor.buffer]))
            tensor.buffer = len(model_object.buffers) - 1
            graph.tensors.append(tensor)
            index = len(graph.tensors) - 1
            op.inputs[2] = index
        tensors_seen.add(index)
        buffers_seen.add(graph.tensors[index].buffer)
        weight = graph.tensors[int(op.inputs[1])]
        data = model_object.buffers[weight.buffer].data
        if data is None or weight.type != 0:          # weights computed at run time, or not float32: left alone
            continue
        weights = np.frombuffer(bytes(data), np.float32).reshape(weight.shape)
        found.append(_Biased(kind, graph.tensors[op.outputs[0]].name.decode(),
                             graph.tensors[int(op.inputs[0])].name.decode(), weights, index))
    return found


def tensor_values(model: bytes, names: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Each named tensor's float values (dequantized when the model stores it as integers) per image."""
    interpreter = load_interpreter(model, preserve=True)
    details = {t["name"]: t for t in interpreter.get_tensor_details()}
    values: dict[str, list] = {n: [] for n in names if n in details}     # a name the model lacks: left out
    for x in images:
        set_input(interpreter, x)
        interpreter.invoke()
        for n in values:
            values[n].append(_value(interpreter, details[n]))
    return {n: np.array(v) for n, v in values.items()}


def _value(interpreter, detail: dict) -> np.ndarray:
    v = interpreter.get_tensor(detail["index"])[0]
    if v.dtype != np.float32:
        scale, zero = detail["quantization"]
        v = (v.astype(np.float32) - zero) * scale
    return v.copy()


def mean_shift(reference: np.ndarray, quantized: np.ndarray) -> np.ndarray:
    """Per channel (last axis), the mean of quantized - float. A fused ReLU clips both at zero, where the
    difference says nothing about the shift, so a tensor that is never negative is averaged where float > 0."""
    axes = tuple(range(reference.ndim - 1))
    mask = (reference > 0) if reference.min() >= 0 else np.ones(reference.shape, bool)
    return np.where(mask, quantized - reference, 0).sum(axes) / np.maximum(mask.sum(axes), 1)


def propagated(op: _Biased, input_shift: np.ndarray) -> np.ndarray:
    """The mean shift an input shift per channel makes in the op's output through its float weights (zero padding
    at the borders ignored)."""
    w = op.weights
    if op.kind == "CONV_2D":                              # [out, kh, kw, in]
        return np.einsum("okhi,i->o", w, input_shift) if w.shape[-1] == input_shift.shape[0] else 0.0
    if op.kind == "DEPTHWISE_CONV_2D":                    # [1, kh, kw, in * multiplier]
        multiplier = w.shape[-1] // max(input_shift.shape[0], 1)
        return w.sum(axis=(0, 1, 2)) * np.repeat(input_shift, multiplier)
    return w @ input_shift if w.shape[-1] == input_shift.shape[0] else 0.0      # FULLY_CONNECTED: [out, in]


def own_shifts(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], ops: list[_Biased]) -> dict:
    """Per op, the mean shift of its output that it adds itself: its output's shift less its input's, propagated."""
    found = {}
    for op in ops:
        own = mean_shift(reference[op.output], got[op.output])
        if op.input in got and op.input in reference:
            inflow = got[op.input] - reference[op.input]
            own = own - propagated(op, inflow.reshape(-1, inflow.shape[-1]).mean(axis=0))
        found[op.output] = own
    return found


def correct(calibrated: bytes, images: np.ndarray, mode: str = "own", sweeps: int = SWEEPS) -> Corrected:
    """The calibrated model with its biases corrected in ``mode``, after each of ``sweeps`` sweeps."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    ops = _biased(model)
    names = list(dict.fromkeys([op.output for op in ops] + [op.input for op in ops]))
    images = images[:IMAGES]
    reference = tensor_values(calibrated, names, images)
    graph = model.subgraphs[0]
    current, models, largest = calibrated, [], []
    for _ in range(sweeps):
        got = tensor_values(quantize(current), names, images)
        shifts = own_shifts(reference, got, ops) if mode == "own" else {
            op.output: mean_shift(reference[op.output], got[op.output]) for op in ops}
        worst = 0.0
        for op in ops:
            shift = shifts[op.output]
            worst = max(worst, float(np.abs(shift).max()) / (float(np.ptp(reference[op.output])) or 1.0))
            buffer = model.buffers[graph.tensors[op.bias_index].buffer]
            bias = np.frombuffer(bytes(buffer.data), np.float32) - shift.astype(np.float32)
            buffer.data = np.frombuffer(bias.astype(np.float32).tobytes(), np.uint8)
        current = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
        models.append(current)
        largest.append(round(worst, 6))
    return Corrected(mode, models, [op.output for op in ops], largest)
