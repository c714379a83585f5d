"""The pieces of int8 recovery that need no model: layer names from TFLite tensor names, the budget as the gate
judges it, and the two ways to keep a layer's damage out."""
from __future__ import annotations

import numpy as np

from pipeline import layer_damage as damage, recovery


def test_tflite_tensor_names_give_the_users_keras_layer_names():
    layers = {"block1_conv1", "block1_conv1_bn", "block1_conv1_act", "conv2d_4", "add_12", "conv_a"}
    fused = "xception_1/block1_conv1_act_1/Relu;xception_1/block1_conv1_bn_1/batchnorm/add_1;xception_1/block1_conv1_1/conv"
    assert damage.keras_layers_in(fused, layers) == ["block1_conv1_act", "block1_conv1_bn", "block1_conv1"]
    assert damage.keras_layers_in("functional_1/conv_a_1/BiasAdd", layers) == ["conv_a"]     # an ONNX node name
    assert damage.keras_layers_in("xception_1/add_12_1/Add", layers) == ["add_12"]
    assert damage.keras_layers_in("StatefulPartitionedCall_1:0", layers) == []


def test_the_budget_is_the_gates_agreement_and_top1_drop():
    reference = np.eye(4)[[0, 1, 2, 3] * 25]                      # 100 images, float predicts 0,1,2,3,...
    labels = np.array([0, 1, 2, 3] * 25)
    budget = recovery.Budget(0.985, 1.0, reference, labels)
    assert budget.judge(reference)["met"]
    one_wrong = reference.copy()
    one_wrong[0] = np.eye(4)[1]
    judged = budget.judge(one_wrong)                              # 99% agreement, but 1 point of top-1 lost
    assert judged["agreement_top1"] == 0.99 and judged["top1_drop_points"] == 1.0 and judged["met"]
    two_wrong = one_wrong.copy()
    two_wrong[1] = np.eye(4)[2]
    judged = budget.judge(two_wrong)
    assert not judged["met"] and "top-1 drop 2.00 points (budget 1)" in judged["why"]
    assert not recovery.Budget(0.985, 1.0, reference, None).judge(two_wrong)["met"]   # 98% < 98.5% without labels too


def test_a_layer_is_kept_float_with_its_consumers_or_with_its_producers():
    a = damage.Op(0, "CONV_2D", "a", ["input"], "conv_a", ["conv_a"])
    b = damage.Op(1, "CONV_2D", "b", ["a"], "conv_b", ["conv_b"])
    c = damage.Op(2, "CONV_2D", "c", ["b"], "conv_c", ["conv_c"])
    ops = [a, b, c]
    output_side, input_side = damage.closures(b, ops)
    assert output_side == [b, c] and input_side == [b, a]
    assert damage.closures(a, ops) == [[a, b], [a]]


def test_entropy_ranges_keep_a_relu_tensors_tail_despite_its_spike_of_zeros():
    """Zero is exact in int8: the spike of a ReLU output's zeros must not make a small clipping threshold look best
    (merged into its level it did: the threshold fell to 1.4 of 10.9, below 70% of the non-zero values)."""
    from pipeline import quantization as q

    rng = np.random.default_rng(0)
    values = np.concatenate([np.zeros(60_000), rng.exponential(1.0, 40_000)])
    hist, edges = np.histogram(values, q.HISTOGRAM_BINS, (0, values.max()))
    lo, hi = q._entropy(hist, edges)
    assert lo == 0.0 and np.quantile(values[values > 0], 0.99) < hi <= values.max()
