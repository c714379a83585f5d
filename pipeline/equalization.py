"""Cross-layer equalization (CLE) of a Keras model: per channel, the producer's weights divided and the consumer's
multiplied by s = sqrt(r1 / r2), so both weight ranges become sqrt(r1 * r2) (Nagel et al., 2019; what AIMET's
``equalize_model`` does). It is applied only where the float function allows it exactly: the tensor between the
two flows through positively homogeneous ops alone (ReLU, BatchNorm on the producer's linear output, pooling,
padding) and has no other reader. Must hold: the float outputs are unchanged within FLOAT_TOLERANCE; every pair
that could not be equalized is named with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SWEEPS = 4                 # a chain conv -> conv -> conv settles in a few passes (each pass rebalances neighbours)
# Float outputs before and after, max |difference| / max |output|: float32 rounds each product and sum at 6e-8
# relative; rescaled weights change only those roundings (a few 1e-6 over a net's depth, measured 3e-7 on the
# outlier model). A wrong scale is off by O(1). 1e-4 leaves that margin and catches it.
FLOAT_TOLERANCE = 1e-4
MAX_SCALE = 1e6            # a channel whose weights are all zero on one side is left alone (s = 1)


@dataclass
class Pair:
    producers: list[str]           # the layers whose output channels are divided by s (two or more: an Add's inputs)
    consumer: str                  # the layer whose input-channel weights are multiplied by s
    through: list[str]             # the layers between them, each commuting with a per-channel scale
    scale_at: list[str]            # per producer, where the division happens: the producer or its BatchNorm
    max_scale: float = 1.0         # the largest channel scale applied, over all sweeps

    @property
    def producer(self) -> str:
        return " + ".join(self.producers)


@dataclass
class Plan:
    pairs: list[Pair] = field(default_factory=list)
    refused: list[dict] = field(default_factory=list)     # {"producer", "reason"}


def _kind(layer) -> str:
    import keras

    L = keras.layers
    if isinstance(layer, L.SeparableConv2D):
        return "separable"
    if isinstance(layer, L.DepthwiseConv2D):
        return "depthwise"
    if isinstance(layer, L.Conv2D) and getattr(layer, "groups", 1) == 1:
        return "conv"
    if isinstance(layer, L.Dense):
        return "dense"
    if isinstance(layer, L.BatchNormalization):
        return "bn"
    if isinstance(layer, L.Add):
        return "add"
    if isinstance(layer, L.ReLU):
        homogeneous = layer.max_value is None and float(layer.threshold) == 0.0
        return "homogeneous" if homogeneous else "other"
    if isinstance(layer, L.Activation):
        return "homogeneous" if _activation_name(layer.activation) in ("relu", "linear") else "other"
    if isinstance(layer, (L.MaxPooling2D, L.AveragePooling2D, L.GlobalAveragePooling2D, L.GlobalMaxPooling2D,
                          L.ZeroPadding2D, L.Dropout)):
        return "homogeneous"
    return "other"


def _activation_name(fn) -> str:
    return getattr(fn, "__name__", str(fn))


def _graph(model) -> tuple[dict, dict]:
    """Each layer's reader layers (by output tensor), and the tensors that are model outputs."""
    readers: dict[str, list] = {layer.name: [] for layer in model.layers}
    producer_of = {id(layer.output): layer for layer in model.layers if not isinstance(layer.output, (list, tuple))}
    for layer in model.layers:
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        for tensor in inputs:
            source = producer_of.get(id(tensor))
            if source is not None and source is not layer:
                readers[source.name].append(layer)
    outputs = {id(t) for t in model.outputs}
    return readers, outputs


def _walk(start, readers: dict, outputs: set, bn_allowed: bool) -> tuple[list[str], str, object, str]:
    """From ``start`` along single readers through scale-commuting layers: (through, scale_at, the layer reached,
    why it stops: "weights", "add" or a reason)."""
    through, scale_at, current = [], start.name, start
    while True:
        if id(current.output) in outputs:
            return through, scale_at, None, "its output is a model output"
        after = readers[current.name]
        if len(after) != 1:
            names = ", ".join(f"{r.name} ({type(r).__name__})" for r in after)
            return through, scale_at, None, (f"its output has {len(after)} readers ({names}): a residual or branch "
                                              f"needs every reader scaled alike")
        nxt = after[0]
        step = _kind(nxt)
        if step == "bn" and bn_allowed and current is start and nxt.scale:
            through.append(nxt.name)
            scale_at, current = nxt.name, nxt
        elif step == "homogeneous":
            through.append(nxt.name)
            current = nxt
        elif step in ("conv", "separable", "dense", "depthwise"):
            return through, scale_at, nxt, "weights"
        elif step == "add":
            return through, scale_at, nxt, "add"
        else:
            return through, scale_at, None, f"{nxt.name} ({type(nxt).__name__}) does not commute with a per-channel scale"


def plan(model) -> Plan:
    """The producer -> consumer pairs CLE can rescale exactly (an Add whose every input comes from an equalizable
    producer counts as one pair, all its producers scaled alike), and the weight layers it cannot, with the reason."""
    readers, outputs = _graph(model)
    found = Plan()
    at_add: dict[str, list] = {}                 # Add layer -> [(producer, through, scale_at)]
    adds = {}
    for layer in model.layers:
        if _kind(layer) not in ("conv", "separable", "dense"):
            continue
        activation = _activation_name(layer.activation)
        if activation not in ("relu", "linear"):
            found.refused.append({"producer": layer.name,
                                  "reason": f"its activation {activation} does not commute with a scale"})
            continue
        through, scale_at, reached, why = _walk(layer, readers, outputs, activation == "linear")
        if why == "weights":
            found.pairs.append(Pair([layer.name], reached.name, through, [scale_at]))
        elif why == "add":
            at_add.setdefault(reached.name, []).append((layer.name, through, scale_at))
            adds[reached.name] = reached
        elif why != "its output is a model output":       # the classifier: nothing after it to scale
            found.refused.append({"producer": layer.name, "reason": why})
    for name, members in at_add.items():
        add = adds[name]
        inputs = len(add.input) if isinstance(add.input, (list, tuple)) else 1
        names = [m[0] for m in members]
        if len(members) != inputs:
            reason = (f"{name} (Add): {inputs - len(members)} of its {inputs} inputs come from no equalizable layer "
                      f"(e.g. a residual's identity branch), and every branch needs the same scale")
        else:
            through, _, reached, why = _walk(add, readers, outputs, False)
            if why == "weights":
                found.pairs.append(Pair(names, reached.name, [t for m in members for t in m[1]] + [name] + through,
                                        [m[2] for m in members]))
                continue
            after = "another Add: a residual stream, whose every branch needs the same scale" if why == "add" else why
            reason = f"{name} (Add) is equalizable from its inputs, but after it: {after}"
        found.refused += [{"producer": n, "reason": reason} for n in names]
    return found


def out_range(model, pair: Pair) -> np.ndarray:
    """Per output channel, the producers' weights' largest |value| (BatchNorm folded in), the largest over them."""
    return np.max([_producer_range(model, p, at) for p, at in zip(pair.producers, pair.scale_at)], axis=0)


def _producer_range(model, name: str, scale_at: str) -> np.ndarray:
    producer = model.get_layer(name)
    kernel = producer.get_weights()[1 if _kind(producer) == "separable" else 0]
    r = np.abs(kernel).reshape(-1, kernel.shape[-1]).max(axis=0)
    if scale_at != name:
        bn = model.get_layer(scale_at)
        gamma = bn.gamma.numpy() if bn.scale else 1.0
        r = r * np.abs(gamma) / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)
    return r


def _in_range(layer) -> np.ndarray:
    """Per input channel of the consumer, its weights' largest |value|: axis -2 of its first weight array (the
    kernel of Conv2D, DepthwiseConv2D and Dense; the depthwise kernel of SeparableConv2D)."""
    kernel = layer.get_weights()[0]
    moved = np.moveaxis(kernel, -2, -1)
    return np.abs(moved).reshape(-1, moved.shape[-1]).max(axis=0)


def _divide_outputs(model, pair: Pair, s: np.ndarray) -> None:
    for name, scale_at in zip(pair.producers, pair.scale_at):
        _divide(model, name, scale_at, s)


def _divide(model, name: str, scale_at: str, s: np.ndarray) -> None:
    at = model.get_layer(scale_at)
    weights = at.get_weights()
    if scale_at != name:                 # BatchNorm: gamma and beta (its output is scaled by 1/s)
        names = [w.path.split("/")[-1] for w in at.weights]
        for i, name in enumerate(names):
            if name in ("gamma", "beta"):
                weights[i] = weights[i] / s
    else:
        kernel_index = 1 if _kind(at) == "separable" else 0
        weights[kernel_index] = weights[kernel_index] / s
        if at.use_bias:
            weights[-1] = weights[-1] / s
    at.set_weights(weights)


def _multiply_inputs(layer, s: np.ndarray) -> None:
    weights = layer.get_weights()
    shape = [1] * weights[0].ndim
    shape[-2] = len(s)
    weights[0] = weights[0] * s.reshape(shape)
    layer.set_weights(weights)


def _separable_inner(layer) -> np.ndarray:
    """Balance a separable convolution's own halves (depthwise -> pointwise, nothing between): per depthwise output
    channel; returns the scales applied."""
    weights = layer.get_weights()
    depthwise, pointwise = weights[0], weights[1]
    kh, kw, cin, mult = depthwise.shape
    r1 = np.abs(depthwise).reshape(kh * kw, cin * mult).max(axis=0)
    r2 = np.abs(pointwise[0, 0]).max(axis=1)
    s = _scales(r1, r2)
    weights[0] = depthwise / s.reshape(1, 1, cin, mult)
    weights[1] = pointwise * s.reshape(1, 1, -1, 1)
    layer.set_weights(weights)
    return s


def _scales(r1: np.ndarray, r2: np.ndarray) -> np.ndarray:
    ok = (r1 > 0) & (r2 > 0)
    s = np.where(ok, np.sqrt(np.where(ok, r1, 1.0) / np.where(ok, r2, 1.0)), 1.0)
    return np.clip(s, 1 / MAX_SCALE, MAX_SCALE).astype(np.float32)


def equalize(model, sweeps: int = SWEEPS) -> Plan:
    """Equalize ``model`` in place: every pair of ``plan(model)`` and every separable convolution's halves."""
    found = plan(model)
    separables = [layer for layer in model.layers if _kind(layer) == "separable"]
    for _ in range(sweeps):
        for layer in separables:
            _separable_inner(layer)
        for pair in found.pairs:
            consumer = model.get_layer(pair.consumer)
            s = _scales(out_range(model, pair), _in_range(consumer))
            _divide_outputs(model, pair, s)
            _multiply_inputs(consumer, s)
            pair.max_scale = max(pair.max_scale, float(np.max(np.maximum(s, 1 / s))))
    return found


def float_difference(before: np.ndarray, after: np.ndarray) -> float:
    """max |after - before| / max |before|: what FLOAT_TOLERANCE bounds."""
    return float(np.max(np.abs(after - before)) / max(float(np.max(np.abs(before))), 1e-30))
