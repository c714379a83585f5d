"""A model that int8 breaks on purpose, with its float function unchanged: one output channel of a convolution is
multiplied by ``factor`` and the next layer's weights for it divided by it, so per-tensor int8 gives the other
channels a step ``factor`` times coarser (how real models defeat per-tensor quantization).

    python -m models.outlier model.keras damaged.keras --layer conv_a [--channel 0] [--factor 1000]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def inject(model, layer: str, channel: int = 0, factor: float = 1000.0):
    """Scale ``layer``'s output channel up and its consumer's weights down by ``factor`` (in place)."""
    import keras

    conv = model.get_layer(layer)
    if not isinstance(conv, keras.layers.Conv2D) or conv.activation not in (keras.activations.relu,
                                                                             keras.activations.linear):
        raise ValueError(f"{layer} must be a Conv2D with a ReLU or linear activation")
    consumers = [op for op in model.layers if any(conv.output is t for t in _inputs(op))]
    if len(consumers) != 1:
        raise ValueError(f"{layer} must feed exactly one layer (it feeds {len(consumers)})")
    nxt = consumers[0]
    kernel, *bias = conv.get_weights()
    if not 0 <= channel < kernel.shape[-1]:
        raise ValueError(f"channel {channel} is not one of {layer}'s {kernel.shape[-1]} channels")
    kernel[..., channel] *= factor
    if bias:
        bias[0][channel] *= factor
    conv.set_weights([kernel, *bias])
    weights = nxt.get_weights()
    if isinstance(nxt, (keras.layers.SeparableConv2D, keras.layers.DepthwiseConv2D)):
        weights[0][:, :, channel, :] /= factor          # the depthwise kernel: per input channel
    elif isinstance(nxt, keras.layers.Conv2D):
        weights[0][:, :, channel, :] /= factor
    else:
        raise ValueError(f"{layer} feeds {nxt.name} ({type(nxt).__name__}); give a layer that feeds a convolution")
    nxt.set_weights(weights)
    return model


def _inputs(layer) -> list:
    inbound = getattr(layer, "_inbound_nodes", [])
    tensors = []
    for node in inbound:
        tensors.extend(node.input_tensors)
    return tensors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.outlier", description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--layer", required=True)
    parser.add_argument("--channel", type=int, default=0)
    parser.add_argument("--factor", type=float, default=1000.0)
    args = parser.parse_args(argv)
    import keras

    model = keras.saving.load_model(args.model, compile=False)
    try:
        inject(model, args.layer, args.channel, args.factor)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    model.save(args.out)
    x = np.zeros((1,) + tuple(model.inputs[0].shape[1:]), np.float32)
    print(f"{args.out}: channel {args.channel} of {args.layer} x{args.factor:g} (float outputs unchanged; "
          f"check: {float(np.abs(model(x)).max()):.4g} max |output| on a blank image)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
