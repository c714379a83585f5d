"""The int8 ladder's bias-correction and 16x8 rungs on a tiny model, and how the gate words what the ladder did."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks.gate_report import ladder_summary
from pipeline import bias_correction as bc


def test_the_mean_shift_of_a_relu_tensor_ignores_where_float_is_zero():
    reference = np.zeros((2, 3, 3, 2), np.float32)
    reference[..., 0] = 1.0                                 # channel 0 active everywhere; channel 1 clipped to 0
    quantized = reference + np.array([0.25, 0.0], np.float32)
    quantized[..., 1] = 0.5                                 # where float is 0 the difference is a clip, not a shift
    assert np.allclose(bc.mean_shift(reference, quantized), [0.25, 0.0])
    signed = np.concatenate([reference, -reference], axis=0)   # a tensor with negative values: every element counts
    assert np.allclose(bc.mean_shift(signed, signed + 0.1), [0.1, 0.1])


def test_an_input_shift_is_carried_through_each_layout_of_weights():
    """What an op's input shift makes in its output: TFLite's conv [out, kh, kw, in], depthwise [1, kh, kw,
    in * multiplier] and dense [out, in] layouts; this part is not the op's own and is not corrected there."""
    shift = np.array([1.0, -2.0], np.float32)
    conv = np.zeros((3, 2, 2, 2), np.float32)
    conv[0, :, :, 0], conv[1, :, :, 1], conv[2] = 1.0, 0.5, 0.25      # 4 taps each
    op = bc._Biased("CONV_2D", "out", "in", conv, 0)
    assert np.allclose(bc.propagated(op, shift), [4.0, -4.0, 0.25 * 4 * (1 - 2)])
    depthwise = np.ones((1, 3, 3, 4), np.float32)                       # multiplier 2: channels 0,0,1,1
    assert np.allclose(bc.propagated(bc._Biased("DEPTHWISE_CONV_2D", "o", "i", depthwise, 0), shift),
                       [9, 9, -18, -18])
    dense = np.array([[1.0, 1.0], [0.0, 3.0]], np.float32)
    assert np.allclose(bc.propagated(bc._Biased("FULLY_CONNECTED", "o", "i", dense, 0), shift), [-1.0, -6.0])
    reference = {"in": np.zeros((1, 2, 2, 2), np.float32), "out": np.full((1, 2, 2, 3), -1.0, np.float32)}
    got = {"in": reference["in"] + shift, "out": reference["out"] + np.array([4.5, -4.0, -1.0], np.float32)}
    assert np.allclose(bc.own_shifts(reference, got, [op])["out"], [0.5, 0.0, 0.0])    # only 0.5 is its own


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A small random conv net and its calibrated TFLite model: conv_a has an outlier channel (x100, conv_b's
    weights for it /100), conv_b's weights a common offset (so that rounding shifts its mean)."""
    import keras

    from pipeline.quantization import calibrated
    from pipeline.stages.convert import saved_model

    keras.utils.set_random_seed(7)
    inp = keras.Input((12, 12, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(inp)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv_b")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inp, keras.layers.Dense(4, name="logits")(x))
    kernel, bias = model.get_layer("conv_a").get_weights()
    kernel[..., 0] *= 100                                   # an outlier channel: ruins conv_a's int8 range
    model.get_layer("conv_a").set_weights([kernel, bias * np.array([100] + [1] * 7, np.float32)])
    kernel, bias = model.get_layer("conv_b").get_weights()
    kernel[:, :, 0, :] /= 100                               # float function unchanged
    model.get_layer("conv_b").set_weights([kernel + 0.05, bias])
    images = np.random.default_rng(1).uniform(-1, 1, (32, 12, 12, 3)).astype(np.float32)
    work = tmp_path_factory.mktemp("tiny")
    return calibrated(saved_model(model, work), images), images


def _buffers(model: bytes) -> list[bytes]:
    from tensorflow.lite.tools import flatbuffer_utils

    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(model))
    return [bytes(b.data) if b.data is not None else b"" for b in parsed.buffers]


@pytest.mark.parametrize("mode", bc.MODES)
def test_bias_correction_changes_only_the_biases_and_shrinks_the_mean_shift(tiny, mode):
    from pipeline.quantization import quantize

    calibrated, images = tiny
    corrected = bc.correct(calibrated, images, mode, sweeps=2)
    assert len(corrected.models) == 2
    assert [n for n in corrected.layers if "conv_a" in n] and [n for n in corrected.layers if "conv_b" in n]
    before, after = _buffers(calibrated), _buffers(corrected.models[-1])
    changed = {i for i, b in enumerate(after) if i >= len(before) or before[i] != b}     # a shared bias is copied
    from tensorflow.lite.tools import flatbuffer_utils
    graph = flatbuffer_utils.convert_bytearray_to_object(bytearray(corrected.models[-1])).subgraphs[0]
    bias_buffers = {graph.tensors[op.inputs[2]].buffer for op in graph.operators
                    if op.inputs is not None and len(op.inputs) > 2 and op.inputs[2] >= 0}
    assert changed and changed <= bias_buffers            # weights, ranges and everything else unchanged
    reference = bc.tensor_values(calibrated, corrected.layers, images)

    def total_shift(model: bytes) -> float:
        got = bc.tensor_values(quantize(model), corrected.layers, images)
        return sum(float(np.abs(bc.mean_shift(reference[n], got[n])).sum()) for n in corrected.layers)

    assert total_shift(corrected.models[-1]) < 0.5 * total_shift(calibrated)


def test_16x8_has_int16_activations_int8_weights_and_is_closer_to_float(tiny):
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    from pipeline.quantization import outputs, quantize, quantize_16x8

    calibrated, images = tiny
    sixteen = quantize_16x8(calibrated)
    parsed = flatbuffer_utils.convert_bytearray_to_object(bytearray(sixteen))
    graph = parsed.subgraphs[0]
    codes = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("__")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("__")}
    for op in graph.operators:
        if codes[parsed.operatorCodes[op.opcodeIndex].builtinCode] == "CONV_2D":
            activation, weights, bias = (types[graph.tensors[i].type] for i in op.inputs)
            assert (activation, weights, bias, types[graph.tensors[op.outputs[0]].type]) == (
                "INT16", "INT8", "INT64", "INT16")
    names = [graph.tensors[op.outputs[0]].name.decode() for op in graph.operators]
    conv_a = next(n for n in names if "conv_a" in n)
    reference = bc.tensor_values(calibrated, [conv_a], images)[conv_a][..., 1:]     # the channels the outlier ruins

    def error(model: bytes) -> float:
        return float(np.abs(bc.tensor_values(model, [conv_a], images)[conv_a][..., 1:] - reference).mean())

    assert error(sixteen) < 0.1 * error(quantize(calibrated))
    assert float(np.abs(outputs(sixteen, images) - outputs(calibrated, images)).mean()) < float(
        np.abs(outputs(quantize(calibrated), images) - outputs(calibrated, images)).mean())


def test_the_gate_words_each_rung_the_ladder_applied():
    cle = {"rung": "cle", "applied": True, "pairs": [{}, {}, {}]}
    bias = {"rung": "bias", "applied": True, "layers": ["a", "b"]}
    assert ladder_summary({"rungs": [cle], "equalized": True, "status": "recovered"}) == "CLE on 3 layer pairs; all int8"
    assert ladder_summary({"rungs": [cle, bias], "equalized": True, "bias_corrected": True,
                           "activations": "int16", "status": "recovered"}) == (
        "CLE on 3 layer pairs, bias correction on 2 layers, 16x8 (int16 activations) for the whole model; "
        "int8 weights, no float layer")
    assert ladder_summary({"rungs": [cle, bias], "equalized": True, "bias_corrected": False, "status": "recovered",
                           "float_layers": ["conv_b"]}) == "1 layers kept float (conv_b) after CLE on 3 layer pairs"
    assert ladder_summary({"rungs": [], "status": "not needed"}) == ""
