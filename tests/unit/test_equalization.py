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
    model = keras.Model(inp, keras.layers.Flatten(name="flatten")(out))
    found = eq.plan(model)
    assert [(p.producer, p.consumer) for p in found.pairs] == [("a", "b"), ("d", "e")]     # e may feed an Add
    refused = {r["producer"]: r["reason"] for r in found.refused}
    assert "relu6" in refused["b"]
    # c's output is read by d and by the Add, whose other input is e: one group, which reaches the Flatten
    assert "flatten (Flatten) does not commute" in refused["c"] and refused["e"] == refused["c"]


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
    ranges = eq.out_range(model, next(p for p in eq.plan(model).pairs if p.consumer == "c"))
    assert ranges.max() / ranges.min() > 100
    found = eq.equalize(model)
    assert eq.float_difference(before, model.predict(x, verbose=0)) <= eq.FLOAT_TOLERANCE
    group = next(p for p in found.pairs if p.consumer == "c")
    assert dict(zip(group.producers, group.scale_at)) == {"b": "b", "s": "s_bn"} and group.max_scale > 10
    ranges = eq.out_range(model, group)
    assert ranges.max() / ranges.min() < 30
    branch = next(p for p in found.pairs if p.producer == "a")               # two readers: both take the scale
    assert set(branch.consumers) == {"b", "s"} and branch.offsets == [0, 0] and not found.refused


def test_through_a_concatenation_each_branch_is_scaled_at_its_channel_offset():
    """A concatenation moves a branch's channels to an offset among the consumer's inputs: the outlier in the second
    branch is equalized against the consumer's weights at that offset, exactly; the first branch, an identity of
    the input (no layer to scale), is left alone and the other consumer channels untouched."""
    import keras

    keras.utils.set_random_seed(4)
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="a")(inp)
    b = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="b")(a)
    merged = keras.layers.Concatenate(name="cat")([keras.layers.MaxPooling2D(1, name="idle")(inp), b])
    out = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="c")(merged))   # c: not a producer
    model = keras.Model(inp, out)
    kernel, bias = model.get_layer("b").get_weights()
    kernel[..., 1] *= 700
    bias[1] *= 700
    model.get_layer("b").set_weights([kernel, bias])
    c_before = model.get_layer("c").get_weights()[0].copy()
    c_before[:, :, 3 + 1, :] /= 700              # b's channel 1 is the consumer's input channel 3 + 1
    model.get_layer("c").set_weights([c_before, model.get_layer("c").get_weights()[1]])
    x = _images(model)
    before = model.predict(x, verbose=0)
    found = eq.equalize(model)
    assert eq.float_difference(before, model.predict(x, verbose=0)) <= eq.FLOAT_TOLERANCE
    pair = next(p for p in found.pairs if p.producer == "b")
    assert pair.consumer == "c" and pair.offsets == [3] and "cat" in pair.through and pair.max_scale > 100
    c_after = model.get_layer("c").get_weights()[0]
    np.testing.assert_array_equal(c_after[:, :, :3, :], c_before[:, :, :3, :])     # the input's channels: unscaled
    ranges = eq.out_range(model, pair)
    assert ranges.max() / ranges.min() < 30                                    # b's channels spanned 700x
    assert ("a", "b") in {(p.producer, p.consumer) for p in found.pairs}


def test_an_add_after_a_concatenation_is_refused_with_the_reason():
    import keras

    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(2, 1, name="a")(inp)
    merged = keras.layers.Concatenate(name="cat")([a, keras.layers.Conv2D(2, 1, name="b")(inp)])
    out = keras.layers.Add(name="add")([merged, keras.layers.Conv2D(4, 1, name="d")(inp)])
    model = keras.Model(inp, keras.layers.Conv2D(3, 1, name="e")(out))
    refused = {r["producer"]: r["reason"] for r in eq.plan(model).refused}
    assert "add (Add) after a concatenation" in refused["a"] and "add (Add) after a concatenation" in refused["b"]


def test_a_residual_stream_is_one_group_whose_every_writer_and_reader_takes_the_scale():
    """a -> Add(a, b(a)) -> Add(that, c(that)) -> ReLU -> d, channel 1 of the stream x400 in every writer (a, b, c)
    and /400 in every reader (b, c, d): the identity shortcuts carry the scale, so one scale covers the stream."""
    import keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="a")(inp)
    s1 = keras.layers.Add(name="add1")([a, keras.layers.Conv2D(6, 3, padding="same", name="b")(a)])
    s2 = keras.layers.Add(name="add2")([s1, keras.layers.Conv2D(6, 1, name="c")(s1)])
    out = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, name="d")(keras.layers.ReLU()(s2)))
    model = keras.Model(inp, out)
    for name in ("a", "b", "c"):
        kernel, bias = model.get_layer(name).get_weights()
        kernel[..., 1] *= 400
        bias[1] *= 400
        model.get_layer(name).set_weights([kernel, bias])
    for name in ("b", "c", "d"):
        kernel, bias = model.get_layer(name).get_weights()
        kernel[:, :, 1, :] /= 400
        model.get_layer(name).set_weights([kernel, bias])
    x = _images(model)
    before = model.predict(x, verbose=0)
    ranges = eq.out_range(model, eq.plan(model).pairs[0])
    assert ranges.max() / ranges.min() > 100
    found = eq.equalize(model)
    assert eq.float_difference(before, model.predict(x, verbose=0)) <= eq.FLOAT_TOLERANCE
    assert [(p.producers, p.consumers) for p in found.pairs] == [(["a", "b", "c"], ["b", "c", "d"])]
    assert {"add1", "add2"} <= set(found.pairs[0].through) and not found.refused
    # b and c read and write the stream: their weight from channel 1 to channel 1 never moves, so one sweep's
    # scale is about sqrt(400), and the sweeps settle the ranges
    ranges = eq.out_range(model, found.pairs[0])
    assert ranges.max() / ranges.min() < 30


def test_an_identity_branch_from_the_model_input_is_refused_with_the_reason():
    import keras

    inp = keras.Input((8, 8, 3))
    out = keras.layers.Add(name="add")([inp, keras.layers.Conv2D(3, 1, name="b")(inp)])
    model = keras.Model(inp, keras.layers.Conv2D(2, 1, name="c")(out))
    refused = {r["producer"]: r["reason"] for r in eq.plan(model).refused}
    assert "model's input" in refused["b"]
