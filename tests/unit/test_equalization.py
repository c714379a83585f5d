"""Cross-layer equalization on small Keras models: exact in float, weight ranges balanced, and refused (with the
reason) wherever a scale would change the function."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline import equalization as eq


def _model(activation_b: str = "relu", bn: bool = True):
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv_a")(inp)
    if bn:
        x = keras.layers.BatchNormalization(name="bn_a")(x)
    x = keras.layers.ReLU(name="relu_a")(x)
    x = keras.layers.SeparableConv2D(12, 3, padding="same", activation=activation_b, name="sep_b")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inp, keras.layers.Dense(5, name="logits")(x))
    if bn:                                   # a trained-looking BatchNorm: not the identity
        rng = np.random.default_rng(1)
        model.get_layer("bn_a").set_weights([rng.uniform(0.5, 2, 8), rng.normal(0, 0.3, 8), rng.normal(0, 0.2, 8),
                                             rng.uniform(0.5, 3, 8)])
    return model


def _images(model, n: int = 8) -> np.ndarray:
    return np.random.default_rng(2).uniform(-1, 1, (n,) + tuple(model.inputs[0].shape[1:])).astype(np.float32)


def test_equalization_is_exact_in_float_and_balances_an_outlier_channel():
    model = _model()
    kernel, bias = model.get_layer("conv_a").get_weights()
    kernel[..., 3] *= 1000                   # an outlier channel, undone by BatchNorm's scale: float unchanged
    model.get_layer("conv_a").set_weights([kernel, bias])
    bn = model.get_layer("bn_a").get_weights()
    bn[2][3] *= 1000                         # moving mean and variance follow the channel
    bn[3][3] *= 1000 ** 2
    model.get_layer("bn_a").set_weights(bn)
    x = _images(model)
    before = model.predict(x, verbose=0)
    found = eq.equalize(model)
    assert eq.float_difference(before, model.predict(x, verbose=0)) <= eq.FLOAT_TOLERANCE
    pairs = {(p.producer, p.consumer): p for p in found.pairs}
    assert ("conv_a", "sep_b") in pairs and pairs[("conv_a", "sep_b")].through == ["bn_a", "relu_a"]
    assert ("sep_b", "logits") in pairs
    # conv_a's channels, BatchNorm folded, now span comparable ranges (they spanned 1000x)
    pair = pairs[("conv_a", "sep_b")]
    folded = eq.out_range(model, pair)
    assert folded.max() / folded.min() < 30


def test_a_scale_that_would_change_the_function_is_refused_with_the_reason():
    import keras

    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="a")(inp)
    b = keras.layers.Conv2D(4, 3, padding="same", activation="relu6", name="b")(a)        # not homogeneous
    c = keras.layers.Conv2D(4, 1, name="c")(b)
    d = keras.layers.Conv2D(4, 1, name="d")(c)
    out = keras.layers.Add(name="add")([c, keras.layers.Conv2D(4, 1, name="e")(d)])   # c has two readers
    model = keras.Model(inp, keras.layers.Flatten()(out))
    found = eq.plan(model)
    assert [(p.producer, p.consumer) for p in found.pairs] == [("a", "b"), ("d", "e")]     # e may feed an Add
    refused = {r["producer"]: r["reason"] for r in found.refused}
    assert "relu6" in refused["b"]
    assert "2 readers" in refused["c"]
    assert "add (Add)" in refused["e"]


@pytest.mark.parametrize("bn", [True, False])
def test_equalizing_twice_changes_nothing_more(bn):
    """The scales converge: a second equalization finds every pair balanced (scales near 1)."""
    model = _model(bn=bn)
    eq.equalize(model)
    again = eq.equalize(model, sweeps=1)
    assert max(p.max_scale for p in again.pairs) < 1.05


def test_the_branches_of_an_add_are_scaled_alike_and_exactly():
    import keras

    keras.utils.set_random_seed(3)
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="a")(inp)
    b = keras.layers.Conv2D(6, 3, padding="same", name="b")(a)
    s = keras.layers.BatchNormalization(name="s_bn")(keras.layers.Conv2D(6, 1, name="s")(a))
    x = keras.layers.ReLU()(keras.layers.Add(name="add")([b, s]))
    out = keras.layers.Dense(3, name="logits")(keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(5, 3, name="c")(x)))
    model = keras.Model(inp, out)
    for name in ("b", "s"):                  # channel 2 of both branches up, c's weights for it down
        kernel, bias = model.get_layer(name).get_weights()
        kernel[..., 2] *= 500
        bias[2] *= 500
        model.get_layer(name).set_weights([kernel, bias])
    bn = model.get_layer("s_bn").get_weights()
    bn[2][2] *= 500
    bn[3][2] *= 500 ** 2
    model.get_layer("s_bn").set_weights(bn)
    kernel, bias = model.get_layer("c").get_weights()
    kernel[:, :, 2, :] /= 500
    model.get_layer("c").set_weights([kernel, bias])
    x = _images(model)
    before = model.predict(x, verbose=0)
    found = eq.equalize(model)
    assert eq.float_difference(before, model.predict(x, verbose=0)) <= eq.FLOAT_TOLERANCE
    group = next(p for p in found.pairs if p.consumer == "c")
    assert dict(zip(group.producers, group.scale_at)) == {"b": "b", "s": "s_bn"} and group.max_scale > 50
    assert "a" in {r["producer"] for r in found.refused}                   # two readers: both branches
