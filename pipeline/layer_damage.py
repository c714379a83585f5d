"""Where int8 loses accuracy, per op: each op's output against the float model's same tensor (SQNR), and the
end-to-end logit error when only that op is quantized (sensitivity; docs/recovery.md says why only-this-one
quantized). Ops are named by the Keras layers in their output tensor's name, as the user's model names them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.errors import first_line
from benchmarks.runtimes import dequantize
from pipeline.quantization import compare, db, load_interpreter, outputs, quantize, set_input

ERROR_IMAGES = 16            # images for the per-layer error (every tensor of both models is kept per image)
SENSITIVITY_IMAGES = 32      # images per only-this-layer-quantized run
# ops whose int8 arithmetic has its own error (weights, rescaling); quantize/dequantize and layout ops do not
QUANTIZED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "MEAN", "AVERAGE_POOL_2D",
                 "MAX_POOL_2D", "CONCATENATION", "SOFTMAX", "RELU", "RELU6", "LOGISTIC", "HARD_SWISH", "SUB")


# -- the ops of a TFLite model, named by Keras layers ------------------------------------------------------------
@dataclass
class Op:
    index: int
    kind: str
    tensor: str          # the output tensor's name (what denylisting and matching use)
    inputs: list[str]    # its input tensors' names
    layer: str           # the Keras layer it computes, e.g. "block2_sepconv1 (depthwise)"
    layers: list[str]    # every Keras layer fused into it, in the model's order


def keras_layers_in(tensor: str, layer_names: set[str]) -> list[str]:
    """The Keras layer names in a TFLite tensor name ("xception_1/block1_conv1_bn_1/batchnorm/add_1;..."): each
    ';'-part's second path component, without the call-count suffix Keras 3 adds ("_1")."""
    found = []
    for part in tensor.split(";"):
        pieces = part.split("/")
        for piece in pieces[1:2] or pieces[:1]:
            name = piece if piece in layer_names else re.sub(r"_\d+$", "", piece)
            if name in layer_names and name not in found:
                found.append(name)
    return found


def model_ops(model: bytes, layer_order: Sequence[str]) -> list[Op]:
    """Every op of the model with the Keras layers it computes (layer_order: the Keras model's layer names),
    read from the flatbuffer (TensorFlow's public object API)."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("__")}
    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    graph = parsed.subgraphs[0]
    names = {i: t.name.decode() for i, t in enumerate(graph.tensors)}
    position = {name: i for i, name in enumerate(layer_order)}
    graph_outputs = set(int(i) for i in graph.outputs)
    ops = []
    for index, op in enumerate(graph.operators):
        if op.outputs is None or not len(op.outputs):
            continue
        kind = codes.get(parsed.operatorCodes[op.opcodeIndex].builtinCode, "CUSTOM")
        tensor = names[int(op.outputs[0])]
        layers = sorted(keras_layers_in(tensor, set(position)), key=position.get)
        if not layers and int(op.outputs[0]) in graph_outputs and layer_order:
            layers = [layer_order[-1]]                 # the model's output op: named by the signature
        main = layers[-1] if layers else tensor.split(";")[0]
        weighted = [n for n in layers if re.search(r"conv|dense|sepconv|predictions|fc", n)]
        if weighted:
            main = weighted[0]
        if kind == "DEPTHWISE_CONV_2D" and "separable_conv2d" in tensor:
            main += " (depthwise)"
        ops.append(Op(index, kind, tensor, [names[int(i)] for i in (op.inputs if op.inputs is not None else [])
                                           if int(i) >= 0], main, layers))
    return ops


def closures(op: Op, ops: list[Op]) -> list[list[Op]]:
    """The two ways to keep ``op``'s damage out: its output tensor never quantized (the op and every quantizable
    consumer of it, since an int8 consumer would quantize it again), or its input tensors never quantized (the
    op and the quantizable ops that produce them). Which one helps depends on where the ruined range is."""
    output = [op] + [o for o in ops if op.tensor in o.inputs and o.kind in QUANTIZED_OPS and o is not op]
    inputs = [op] + [o for o in ops if o.tensor in op.inputs and o.kind in QUANTIZED_OPS and o is not op]
    return [output] if output == inputs else [output, inputs]


# -- per-layer error, sensitivity, recovery ----------------------------------------------------------------------
def layer_errors(float_model: bytes, int8_model: bytes, images: np.ndarray, ops: list[Op]) -> dict[str, dict]:
    """Per op output tensor: SQNR (dB) and relative RMSE of the int8 model's (dequantized) tensor against the
    float model's same tensor, over the images (errors accumulated from the input up to that layer)."""
    f_int, q_int = load_interpreter(float_model, True), load_interpreter(int8_model, True)
    f_index = {t["name"]: t["index"] for t in f_int.get_tensor_details()}
    q_details = {t["name"]: t for t in q_int.get_tensor_details()}
    wanted = [op.tensor for op in ops if op.tensor in f_index and op.tensor in q_details]
    signal = dict.fromkeys(wanted, 0.0)
    noise = dict.fromkeys(wanted, 0.0)
    for x in images:
        set_input(f_int, x)
        set_input(q_int, x)
        f_int.invoke()
        q_int.invoke()
        for name in wanted:
            ref = f_int.get_tensor(f_index[name]).astype(np.float64)
            detail = q_details[name]
            got = dequantize(q_int.get_tensor(detail["index"]), *detail["quantization"]).astype(np.float64)
            if got.shape != ref.shape:
                continue
            signal[name] += float(np.sum(ref ** 2))
            noise[name] += float(np.sum((got - ref) ** 2))
    result = {}
    for name in wanted:
        relative = noise[name] / max(signal[name], 1e-30)
        result[name] = {"sqnr_db": db(relative), "relative_rmse": round(float(np.sqrt(relative)), 6)}
    return result


def candidates(ops: list[Op], errors: dict[str, dict], n: int) -> list[Op]:
    """The n quantizable ops that lose the most SQNR themselves (their output's SQNR below their inputs'):
    where the end-to-end sensitivity is measured. Each costs a quantization of the whole model (about 4 s for
    Xception on 2 cores), so not every op is measured; an op that adds little error cannot matter much."""
    best = max((e["sqnr_db"] for e in errors.values()), default=0.0)
    drops = []
    for op in ops:
        if op.kind not in QUANTIZED_OPS or op.tensor not in errors:
            continue
        before = min((errors[i]["sqnr_db"] for i in op.inputs if i in errors), default=best)
        drops.append((before - errors[op.tensor]["sqnr_db"], op.index, op))
    return [op for _, _, op in sorted(drops, key=lambda d: (-d[0], d[1]))[:n]]


def sensitivity(calibrated_model: bytes, reference: np.ndarray, images: np.ndarray, ops: list[Op],
                measured: list[Op], tick: Callable[[], None] = lambda: None) -> dict[str, dict]:
    """For each op in ``measured``: the end-to-end outputs against float when only that op is quantized."""
    quantizable = [op for op in ops if op.kind in QUANTIZED_OPS]
    result = {}
    for op in measured:
        others = [o.tensor for o in quantizable if o is not op]
        try:
            model = quantize(calibrated_model, others)
            result[op.tensor] = compare(reference, outputs(model, images))
        except Exception as exc:               # an op the quantizer cannot quantize alone: recorded, not ranked
            result[op.tensor] = {"error": first_line(exc)[:200]}
        tick()
    return result


@dataclass
class Measured:
    errors: dict[str, dict]       # per op tensor: SQNR, relative RMSE
    measured: list[Op]            # the ops whose sensitivity was measured
    sensitivities: dict[str, dict]
    ranked: list[str]             # op tensors, most damaging first


def measure(calibrated_model: bytes, int8_model: bytes, reference: np.ndarray, calib: np.ndarray, ops: list[Op],
            n: int, progress) -> Measured:
    """Per-layer error on ERROR_IMAGES calibration images, then the sensitivity of the n ops that lose the most
    SQNR themselves on SENSITIVITY_IMAGES, ranked (what make analyze shows and recovery follows)."""
    errors = layer_errors(calibrated_model, int8_model, calib[:ERROR_IMAGES], ops)
    measured = candidates(ops, errors, n)
    bar = progress.bar("sensitivity (one layer quantized at a time)", len(measured))
    try:
        sens = sensitivity(calibrated_model, reference[:SENSITIVITY_IMAGES], calib[:SENSITIVITY_IMAGES], ops,
                           measured, bar.update)
    finally:
        bar.close()
    return Measured(errors, measured, sens, ranking(sens))


def ranking(sensitivities: dict[str, dict]) -> list[str]:
    """Op tensor names, most damaging first (largest end-to-end logit error when quantized alone)."""
    ranked = [(v["relative_mse"], name) for name, v in sensitivities.items() if "relative_mse" in v]
    return [name for _, name in sorted(ranked, reverse=True)]


def onnx_layer_errors(fp32_model: Path, int8_model: Path, images: np.ndarray,
                      layer_order: Sequence[str]) -> list[dict]:
    """The ONNX int8 (QDQ) model's activations against the float ONNX model's, per quantized tensor: the
    tensor X after its QuantizeLinear/DequantizeLinear pair (``X_DequantizeLinear_Output``) against X in the float
    model. Rows in the float model's node order, named by the Keras layer of the node that computes X."""
    import onnx
    import onnxruntime as ort

    float_graph = onnx.load(str(fp32_model))
    int8_graph = onnx.load(str(int8_model))
    producer = {out: node for node in float_graph.graph.node for out in node.output}
    order = {out: i for i, node in enumerate(float_graph.graph.node) for out in node.output}
    suffix = "_DequantizeLinear_Output"
    pairs = {}
    for node in int8_graph.graph.node:
        if node.op_type == "DequantizeLinear" and node.output[0].endswith(suffix):
            name = node.output[0][:-len(suffix)]
            if name in producer:                      # an activation (weights are initializers, not node outputs)
                pairs[name] = node.output[0]
    names = sorted(pairs, key=order.get)
    if not names:
        return []

    def session(graph, outputs):
        del graph.graph.output[:]
        graph.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None)
                                  for n in outputs)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL   # keep every tensor
        options.intra_op_num_threads = 2
        return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])

    f_session = session(float_graph, names)
    q_session = session(int8_graph, [pairs[n] for n in names])
    f_input, q_input = f_session.get_inputs()[0].name, q_session.get_inputs()[0].name
    signal, noise = np.zeros(len(names)), np.zeros(len(names))
    for x in images:
        refs = f_session.run(None, {f_input: x[None].astype(np.float32)})
        gots = q_session.run(None, {q_input: x[None].astype(np.float32)})
        for i, (ref, got) in enumerate(zip(refs, gots)):
            signal[i] += float(np.sum(ref.astype(np.float64) ** 2))
            noise[i] += float(np.sum((got.astype(np.float64) - ref) ** 2))
    layers = set(layer_order)
    rows = []
    for i, name in enumerate(names):
        found = keras_layers_in(producer[name].name, layers)
        relative = noise[i] / max(signal[i], 1e-30)
        rows.append({"tensor": name, "op": producer[name].op_type, "layer": found[0] if found else producer[name].name,
                     "sqnr_db": db(relative), "relative_rmse": round(float(np.sqrt(relative)), 6)})
    return rows
