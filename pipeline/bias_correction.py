"""Empirical bias correction of a calibrated TFLite model (Nagel et al., 2019; AIMET's ``correct_bias``): each
convolution's and dense layer's int8 output is compared with the float model's same tensor on calibration images,
and its per-channel mean shift is subtracted from its float bias, so that the int8 model's expected output matches
the float one. Sweeps repeat it, since a correction upstream moves the shifts downstream. Must hold: the recorded
activation ranges are kept (the quantizer reads them), so the corrected model differs only in its biases.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.quantization import load_interpreter, quantize, set_input

BIASED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")
SWEEPS = 3                 # measured on the residual outlier nets: the shifts settle within three sweeps
IMAGES = 32                # calibration images the shifts are measured on


@dataclass
class Corrected:
    models: list[bytes]          # the calibrated model after each sweep
    layers: list[str]            # the output tensors whose biases were corrected
    largest_shift: list[float]   # per sweep: the largest |mean shift| / the tensor's float range


def _biased(model_object) -> list[tuple[str, int]]:
    """(output tensor name, bias tensor index) of every convolution and dense op with a float bias. A bias tensor
    or buffer shared with another op (the converter may share a zero bias) is first given its own copy."""
    import copy

    from tensorflow.lite.python import schema_py_generated as schema

    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("__")}
    graph = model_object.subgraphs[0]
    ops = [op for op in graph.operators if codes.get(model_object.operatorCodes[op.opcodeIndex].builtinCode)
           in BIASED_OPS and op.inputs is not None and len(op.inputs) > 2 and op.inputs[2] >= 0]
    tensors_seen, buffers_seen, found = set(), set(), []
    for op in ops:
        index = int(op.inputs[2])
        if index in tensors_seen or graph.tensors[index].buffer in buffers_seen:
            tensor = copy.deepcopy(graph.tensors[index])
            buffer = copy.deepcopy(model_object.buffers[tensor.buffer])
            model_object.buffers.append(buffer)
            tensor.buffer = len(model_object.buffers) - 1
            graph.tensors.append(tensor)
            index = len(graph.tensors) - 1
            op.inputs[2] = index
        tensors_seen.add(index)
        buffers_seen.add(graph.tensors[index].buffer)
        found.append((graph.tensors[op.outputs[0]].name.decode(), index))
    return found


def tensor_values(model: bytes, names: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """Each named tensor's float values (dequantized when the model stores it as integers) per image."""
    interpreter = load_interpreter(model, preserve=True)
    details = {t["name"]: t for t in interpreter.get_tensor_details()}
    values: dict[str, list] = {n: [] for n in names}
    for x in images:
        set_input(interpreter, x)
        interpreter.invoke()
        for n in names:
            detail = details[n]
            v = interpreter.get_tensor(detail["index"])[0]
            if v.dtype != np.float32:
                scale, zero = detail["quantization"]
                v = (v.astype(np.float32) - zero) * scale
            values[n].append(v.copy())
    return {n: np.array(v) for n, v in values.items()}


def mean_shift(reference: np.ndarray, quantized: np.ndarray) -> np.ndarray:
    """Per channel (last axis), the mean of quantized - float. A fused ReLU clips both at zero, where the
    difference says nothing about the shift, so a tensor that is never negative is averaged where float > 0."""
    axes = tuple(range(reference.ndim - 1))
    mask = (reference > 0) if reference.min() >= 0 else np.ones(reference.shape, bool)
    return np.where(mask, quantized - reference, 0).sum(axes) / np.maximum(mask.sum(axes), 1)


def correct(calibrated: bytes, images: np.ndarray, sweeps: int = SWEEPS) -> Corrected:
    """The calibrated model with its biases corrected, after each of ``sweeps`` sweeps."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(calibrated))
    biased = _biased(model)
    names = [name for name, _ in biased]
    images = images[:IMAGES]
    reference = tensor_values(calibrated, names, images)
    graph = model.subgraphs[0]
    current, models, largest = calibrated, [], []
    for _ in range(sweeps):
        got = tensor_values(quantize(current), names, images)
        worst = 0.0
        for name, bias_index in biased:
            shift = mean_shift(reference[name], got[name])
            span = float(np.ptp(reference[name])) or 1.0
            worst = max(worst, float(np.abs(shift).max()) / span)
            buffer = model.buffers[graph.tensors[bias_index].buffer]
            bias = np.frombuffer(bytes(buffer.data), np.float32) - shift.astype(np.float32)
            buffer.data = np.frombuffer(bias.astype(np.float32).tobytes(), np.uint8)
        current = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
        models.append(current)
        largest.append(round(worst, 6))
    return Corrected(models, names, largest)
