"""Cross-layer equalization (CLE) of a Keras model: per channel, the producers' weights divided and the consumers'
multiplied by s = sqrt(r1 / r2), so the weight ranges meet at sqrt(r1 * r2) (Nagel et al., 2019; AIMET's
``equalize_model`` does it for chains). A group is every tensor one per-channel scale must cover exactly: linked by
ops that commute with it (ReLU, pooling, padding; an Add, all of whose inputs then carry it; a channel concatenation,
at an offset), so branches and residual streams are equalized too. Must hold: the float outputs are unchanged within
FLOAT_TOLERANCE; every producer that could not be equalized is named with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Sweeps until no channel scale of a sweep is beyond 1 +- SETTLED. A chain settles in a few (each sweep rebalances
# neighbours); a layer that reads and writes the same residual stream keeps its weight from channel k to k whatever
# the scale, so each sweep covers only the square root of what is left (x1000: 31.6, 178, 421, 649, ... 995 after 8).
SETTLED = 0.01
MAX_SWEEPS = 12
# Float outputs before and after, max |difference| / max |output|: float32 rounds each product and sum at 6e-8
# relative; rescaled weights change only those roundings (a few 1e-6 over a net's depth, measured 3e-7 on the
# outlier model). A wrong scale is off by O(1). 1e-4 leaves that margin and catches it.
FLOAT_TOLERANCE = 1e-4
MAX_SCALE = 1e6            # a channel whose weights are all zero on one side is left alone (s = 1)


@dataclass
class Pair:
    producers: list[str]           # the layers whose output channels are divided by s (several: an Add's inputs)
    consumers: list[str]           # the layers whose input-channel weights are multiplied by s
    through: list[str]             # the layers between them, each commuting with a per-channel scale
    scale_at: list[str]            # per producer, where the division happens: the producer or its BatchNorm
    offsets: list[int]             # per consumer, where the group's channels start among its inputs (a concatenation)
    max_scale: float = 1.0         # the largest channel scale applied, all sweeps together (or its inverse)

    @property
    def producer(self) -> str:
        return " + ".join(self.producers)

    @property
    def consumer(self) -> str:
        return " + ".join(self.consumers)


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
    if isinstance(layer, L.Concatenate) and layer.axis in (-1, len(layer.output.shape) - 1):
        return "concat"
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


def _graph(model) -> tuple[dict, dict, dict]:
    """Each layer's reader layers (by output tensor), the tensors that are model outputs, and each layer's input
    layers (None for a model input)."""
    readers: dict[str, list] = {layer.name: [] for layer in model.layers}
    producer_of = {id(layer.output): layer for layer in model.layers if not isinstance(layer.output, (list, tuple))}
    for layer in model.layers:
        inputs = layer.input if isinstance(layer.input, (list, tuple)) else [layer.input]
        for tensor in inputs:
            source = producer_of.get(id(tensor))
            if source is not None and source is not layer:
                readers[source.name].append(layer)
    outputs = {id(t) for t in model.outputs}
    model_inputs = {id(t) for t in model.inputs}
    sources = {layer.name: [None if id(t) in model_inputs else producer_of.get(id(t))
                            for t in (layer.input if isinstance(layer.input, (list, tuple)) else [layer.input])]
               for layer in model.layers}
    return readers, outputs, sources


WEIGHTS = ("conv", "separable", "dense")


class _Refused(Exception):
    pass


class _Group:
    """The search for one group, from one producer: members (layers whose output carries the scale, at a channel
    offset or None), producers (name -> where the division happens) and consumers (name -> offset)."""

    def __init__(self, model, readers: dict, outputs: set, sources: dict):
        self.model, self.readers, self.outputs, self.sources = model, readers, outputs, sources
        self.members: dict[str, int | None] = {}
        self.producers: dict[str, str] = {}
        self.consumers: dict[str, int] = {}
        self.queue: list = []

    def join(self, layer, offset: int | None) -> None:
        if layer.name in self.members:
            if self.members[layer.name] != offset:
                raise _Refused(f"{layer.name} would carry the scale at two channel offsets")
            return
        if id(layer.output) in self.outputs:
            raise _Refused("its output is a model output")
        self.members[layer.name] = offset
        self.queue.append(layer)

    def source(self, layer) -> None:
        """``layer``'s output enters the group whole: it is a producer (or its BatchNorm), or it passes the scale
        back to its own inputs (an Add, a ReLU, a pooling)."""
        if layer is None:
            raise _Refused("a branch comes from the model's input, which no layer can scale")
        if layer.name in self.members:
            return
        kind = _kind(layer)
        if kind in WEIGHTS:
            activation = _activation_name(layer.activation)
            if activation not in ("relu", "linear"):
                raise _Refused(f"{layer.name}'s activation {activation} does not commute with a scale")
            after = self.readers[layer.name]
            if activation == "linear" and len(after) == 1 and _kind(after[0]) == "bn" and after[0].scale:
                self.producers[layer.name] = after[0].name          # BatchNorm on the linear output: divide there
                self.join(after[0], None)
            else:
                self.producers[layer.name] = layer.name
                self.join(layer, None)
        elif kind == "bn":
            linear = self.sources[layer.name][0]
            if not (linear is not None and _kind(linear) in WEIGHTS and layer.scale and self.readers[linear.name] ==
                    [layer] and _activation_name(linear.activation) == "linear"):
                raise _Refused(f"{layer.name} (BatchNormalization) is not directly on a linear layer's output")
            self.producers[linear.name] = layer.name
            self.join(layer, None)
        elif kind in ("homogeneous", "add"):
            self.join(layer, None)
            for inner in self.sources[layer.name]:
                self.source(inner)
        else:
            raise _Refused(f"{layer.name} ({type(layer).__name__}) does not commute with a per-channel scale")

    def spread(self, layer) -> None:
        """Every reader of a member either carries the scale on, or takes it in its weights."""
        offset = self.members[layer.name]
        for reader in self.readers[layer.name]:
            kind = _kind(reader)
            if kind == "homogeneous":
                self.join(reader, offset)
            elif kind in WEIGHTS + ("depthwise",):
                if self.consumers.setdefault(reader.name, offset or 0) != (offset or 0):
                    raise _Refused(f"{reader.name} reads the group at two channel offsets")
            elif kind == "add" and offset is None:
                self.source(reader)
            elif kind == "add":
                raise _Refused(f"{reader.name} (Add) after a concatenation: its other inputs' channels at that "
                               f"offset would need the same scale")
            elif kind == "concat":
                at = [i for i, t in enumerate(reader.input) if t is layer.output]
                if len(at) != 1:
                    raise _Refused(f"{reader.name} (Concatenate) reads it {len(at)} times")
                self.join(reader, (offset or 0) + sum(int(t.shape[-1]) for t in reader.input[:at[0]]))
            else:
                raise _Refused(f"{reader.name} ({type(reader).__name__}) does not commute with a per-channel scale")

    def search(self, start) -> Pair:
        self.source(start)
        while self.queue:
            self.spread(self.queue.pop(0))
        if not self.consumers:
            raise _Refused("no layer with weights reads it")
        order = {layer.name: i for i, layer in enumerate(self.model.layers)}
        producers = sorted(self.producers, key=order.get)
        consumers = sorted(self.consumers, key=order.get)
        through = [m for m in sorted(self.members, key=order.get) if m not in self.producers]
        return Pair(producers, consumers, through, [self.producers[p] for p in producers],
                    [self.consumers[c] for c in consumers])


def plan(model) -> Plan:
    """The groups CLE can rescale exactly, each with its producers and consumers, and the weight layers it cannot,
    with the reason (a layer whose output reaches the model's output, such as the classifier, is left out)."""
    readers, outputs, sources = _graph(model)
    order = {layer.name: i for i, layer in enumerate(model.layers)}
    found, seen = Plan(), set()
    for layer in model.layers:
        if _kind(layer) not in WEIGHTS or layer.name in seen:
            continue
        group = _Group(model, readers, outputs, sources)
        try:
            pair = group.search(layer)
        except _Refused as why:
            names = sorted(set(group.producers) | {layer.name}, key=order.get)
            seen.update(names)
            if str(why) != "its output is a model output":
                found.refused += [{"producer": n, "reason": str(why)} for n in names]
            continue
        seen.update(pair.producers)
        found.pairs.append(pair)
    return found


def out_range(model, pair: Pair) -> np.ndarray:
    """Per output channel, the producers' weights' largest |value| (BatchNorm folded in), the largest over them."""
    return np.max([_producer_range(model, p, at) for p, at in zip(pair.producers, pair.scale_at)], axis=0)


def in_range(model, pair: Pair) -> np.ndarray:
    """Per group channel, the consumers' weights' largest |value| for it, the largest over them."""
    n = len(out_range(model, pair))
    return np.max([_in_range(model.get_layer(c))[o:o + n] for c, o in zip(pair.consumers, pair.offsets)], axis=0)


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


def _multiply_inputs(layer, s: np.ndarray, start: int = 0) -> None:
    """The consumer's weights for input channels start .. start + len(s) multiplied by s."""
    weights = layer.get_weights()
    full = np.ones(weights[0].shape[-2], np.float32)
    full[start:start + len(s)] = s
    shape = [1] * weights[0].ndim
    shape[-2] = len(full)
    weights[0] = weights[0] * full.reshape(shape)
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


def equalize(model, sweeps: int = MAX_SWEEPS) -> Plan:
    """Equalize ``model`` in place: every pair of ``plan(model)`` and every separable convolution's halves, sweep
    after sweep until they settle (or ``sweeps``)."""
    found = plan(model)
    separables = [layer for layer in model.layers if _kind(layer) == "separable"]
    total = [1.0] * len(found.pairs)
    for _ in range(sweeps):
        largest = 1.0
        for layer in separables:
            largest = max(largest, _ratio(_separable_inner(layer)))
        for i, pair in enumerate(found.pairs):
            s = _scales(out_range(model, pair), in_range(model, pair))
            _divide_outputs(model, pair, s)
            for consumer, offset in zip(pair.consumers, pair.offsets):
                _multiply_inputs(model.get_layer(consumer), s, offset)
            total[i] = total[i] * s
            pair.max_scale = _ratio(total[i])
            largest = max(largest, _ratio(s))
        if largest <= 1 + SETTLED:
            break
    return found


def _ratio(s) -> float:
    return float(np.max(np.maximum(s, 1 / s)))


def float_difference(before: np.ndarray, after: np.ndarray) -> float:
    """max |after - before| / max |before|: what FLOAT_TOLERANCE bounds."""
    return float(np.max(np.abs(after - before)) / max(float(np.max(np.abs(before))), 1e-30))
