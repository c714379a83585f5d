"""TFLite int8 quantization we can steer: calibration methods, per-layer error and sensitivity, float fallback.

TFLite's converter calibrates (min/max of every tensor over the calibration images) and quantizes in one call.
We split it where TensorFlow itself does (``_experimental_calibrate_only``, then ``mlir_quantize``, the same two
calls the converter makes; on the reference and test models the result computes bit for bit what
``converter.convert()`` gives). In between:

- **calibration methods**: the recorded min/max of each activation tensor are replaced by a percentile or an
  entropy (KL) range measured on the same images (``ranges``);
- **selective quantization**: ``mlir_quantize(denylisted_nodes=...)`` keeps the named ops in float, with
  quantize/dequantize around them (what LiteRT's QuantizationDebugger does);
- **per-layer error**: the int8 model's tensors against the float model's same tensors (``layer_errors``);
- **sensitivity**: the end-to-end logit error when only one op is quantized, every other op float
  (``sensitivity``). Only-this-one-quantized, not only-this-one-float, because int8 damage sits in tensors: a
  tensor whose range is ruined is quantized by its producer *and* re-quantized for each int8 consumer, so
  leaving one of them float shows no gain, while quantizing either one alone shows the whole damage. It costs
  one quantization (no calibration: it reuses the recorded ranges) and one float-speed pass per op.

Ops are named by the Keras layers in their output tensor's name (``block2_sepconv1``, ``conv2d_7``), the way the
user's model names them. TF-side (needs TensorFlow); the analysis helpers run with LiteRT.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from benchmarks.runtimes import dequantize, quantize as quantize_input
from pipeline.errors import first_line

CALIB_METHODS = ("minmax", "percentile", "entropy")
DEFAULT_CALIB_METHOD = "minmax"
PERCENTILE = 99.99           # two-sided: 0.005% of the values clipped at each end
HISTOGRAM_BINS = 2048
ERROR_IMAGES = 16            # images for the per-layer error (every tensor of both models is kept per image)
SENSITIVITY_IMAGES = 32      # images per only-this-layer-quantized run
ENTROPY_LEVELS = 128         # quantized bins of |x| compared with the reference distribution (TensorRT's method)
# ops whose int8 arithmetic has its own error (weights, rescaling); quantize/dequantize and layout ops do not
QUANTIZED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MUL", "MEAN", "AVERAGE_POOL_2D",
                 "MAX_POOL_2D", "CONCATENATION", "SOFTMAX", "RELU", "RELU6", "LOGISTIC", "HARD_SWISH", "SUB")


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


# -- running models ----------------------------------------------------------------------------------------------
def _interpreter(model: bytes, preserve: bool = False):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, experimental_preserve_all_tensors=preserve, num_threads=2)
    interpreter.allocate_tensors()
    return interpreter


def _set_input(interpreter, x: np.ndarray) -> None:
    detail = interpreter.get_input_details()[0]
    interpreter.set_tensor(detail["index"], quantize_input(x[None], detail["dtype"], *detail["quantization"]))


def _output(interpreter) -> np.ndarray:
    detail = interpreter.get_output_details()[0]
    return dequantize(interpreter.get_tensor(detail["index"]), *detail["quantization"])


def outputs(model: bytes, images: np.ndarray) -> np.ndarray:
    interpreter = _interpreter(model)
    result = []
    for x in images:
        _set_input(interpreter, x)
        interpreter.invoke()
        result.append(_output(interpreter)[0])
    return np.array(result)


def compare(reference: np.ndarray, quantized: np.ndarray) -> dict:
    """Top-1 agreement and the logit error of a model's outputs against the float model's."""
    error = float(np.sum((quantized - reference) ** 2) / max(float(np.sum(reference ** 2)), 1e-30))
    return {"agreement_top1": float(np.mean(reference.argmax(-1) == quantized.argmax(-1))),
            "relative_mse": error, "sqnr_db": _db(error)}


def _db(relative_mse: float) -> float:
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
    interpreter = _interpreter(calibrated_model, preserve=True)
    index = {t["name"]: t["index"] for t in interpreter.get_tensor_details()}
    final = {d["name"] for d in interpreter.get_output_details()}
    names = [n for n in recorded if n in index and n not in final and recorded[n][1] > recorded[n][0]]
    hist = {n: np.zeros(HISTOGRAM_BINS, np.int64) for n in names}
    for x in calib:
        _set_input(interpreter, x)
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
    """TensorRT's KL-divergence threshold on |x|: the clipping threshold T whose 128-level quantized
    distribution is closest to the reference distribution, then [max(min, -T), min(max, T)]."""
    lo, hi = float(edges[0]), float(edges[-1])
    extent = max(abs(lo), abs(hi))
    centres = (edges[:-1] + edges[1:]) / 2
    folded = np.histogram(np.abs(centres), HISTOGRAM_BINS, (0, extent), weights=hist)[0]
    best, best_kl = HISTOGRAM_BINS, np.inf
    for i in range(ENTROPY_LEVELS, HISTOGRAM_BINS + 1, 16):
        reference = folded[:i].astype(np.float64).copy()
        reference[i - 1] += folded[i:].sum()                  # clipped values pile up at the threshold
        if reference.sum() == 0:
            continue
        chunks = np.array_split(folded[:i].astype(np.float64), ENTROPY_LEVELS)
        expanded = np.concatenate([np.where(c > 0, c.sum() / max((c > 0).sum(), 1), 0.0) for c in chunks])
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


# -- per-layer error, sensitivity, recovery ----------------------------------------------------------------------
def layer_errors(float_model: bytes, int8_model: bytes, images: np.ndarray, ops: list[Op]) -> dict[str, dict]:
    """Per op output tensor: SQNR (dB) and relative RMSE of the int8 model's (dequantized) tensor against the
    float model's same tensor, over the images (errors accumulated from the input up to that layer)."""
    f_int, q_int = _interpreter(float_model, True), _interpreter(int8_model, True)
    f_index = {t["name"]: t["index"] for t in f_int.get_tensor_details()}
    q_details = {t["name"]: t for t in q_int.get_tensor_details()}
    wanted = [op.tensor for op in ops if op.tensor in f_index and op.tensor in q_details]
    signal = dict.fromkeys(wanted, 0.0)
    noise = dict.fromkeys(wanted, 0.0)
    for x in images:
        _set_input(f_int, x)
        _set_input(q_int, x)
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
        result[name] = {"sqnr_db": _db(relative), "relative_rmse": round(float(np.sqrt(relative)), 6)}
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


class Budget:
    """The gate's accuracy budget for an int8 model, judged on the eval images as ``make gate`` judges it: top-1
    agreement with the float model, and where labels are known the top-1 drop in points."""

    def __init__(self, min_agreement: float, max_drop_points: float, float_logits: np.ndarray,
                 labels: np.ndarray | None):
        self.min_agreement, self.max_drop = min_agreement, max_drop_points
        self.float_logits, self.labels = float_logits, labels

    def judge(self, logits: np.ndarray) -> dict:
        result = compare(self.float_logits, logits)
        why = [f"top-1 agreement {result['agreement_top1']:.1%} (budget {self.min_agreement:.1%})"]
        met = result["agreement_top1"] >= self.min_agreement
        if self.labels is not None:
            drop = 100 * float(np.mean(self.float_logits.argmax(-1) == self.labels)
                               - np.mean(logits.argmax(-1) == self.labels))
            result["top1_drop_points"] = round(drop, 2)
            why.append(f"top-1 drop {drop:.2f} points (budget {self.max_drop:g})")
            met = met and round(drop, 9) <= self.max_drop
        return result | {"met": bool(met), "why": ", ".join(why)}


@dataclass
class Recovery:
    float_ops: list[Op]
    before: dict
    after: dict          # Budget.judge of the model below
    steps: list[dict]
    capped: bool
    model: bytes

    @property
    def met(self) -> bool:
        return self.after["met"]


def recover(calibrated_model: bytes, int8_model: bytes, budget: Budget, images: np.ndarray, ops: list[Op],
            ranked: list[str], cap: int, log: Callable[[str], None] = lambda m: None) -> Recovery:
    """Keep ops float, most damaging first, until ``budget`` is met on ``images`` or more than ``cap`` ops
    would be float. Each step adds the next op with the better of its two ``closures`` (measured)."""
    by_tensor = {op.tensor: op for op in ops}
    before = budget.judge(outputs(int8_model, images))
    floating: list[Op] = []
    steps, model, now = [], int8_model, before
    for name in ranked:
        if now["met"]:
            break
        groups = [floating + [o for o in g if o not in floating] for g in closures(by_tensor[name], ops)]
        fitting = [g for g in groups if len(g) <= cap and g != floating]
        if not fitting:
            if any(len(g) > cap for g in groups):
                return Recovery(floating, before, now, steps, True, model)
            continue
        tried = []
        for grown in fitting:
            candidate = quantize(calibrated_model, [o.tensor for o in grown])
            tried.append((budget.judge(outputs(candidate, images)), len(grown), grown, candidate))
        now, _, floating, model = max(tried, key=lambda t: (t[0]["met"], t[0]["agreement_top1"],
                                                            -t[0]["relative_mse"], -t[1]))
        steps.append({"float": [o.layer for o in floating], **now})
        log(f"  {len(floating)} float layers ({', '.join(o.layer for o in floating)}): {now['why']}")
    return Recovery(floating, before, now, steps, False, model)


def median_ms(model: bytes, x: np.ndarray, runs: int = 15) -> float:
    """Median latency of one inference here (LiteRT, 2 threads): a same-run comparison, not a board figure."""
    import time

    interpreter = _interpreter(model)
    _set_input(interpreter, x)
    interpreter.invoke()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - started) * 1000)
    return round(float(np.median(times)), 3)


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
                     "sqnr_db": _db(relative), "relative_rmse": round(float(np.sqrt(relative)), 6)})
    return rows
