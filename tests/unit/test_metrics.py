import numpy as np
import pytest

from benchmarks.metrics import accuracy, softmax


def test_accuracy_against_labels_and_reference():
    ref = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    got = np.array([[3.0, 1.0, 0.5], [2.5, 2.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    labels = np.array([0, 1, 2, 1])
    r = accuracy(got, ref, labels)
    assert r["n"] == 4
    assert r["agreement_top1"] == pytest.approx(0.75)
    assert r["top1"] == pytest.approx(0.5)            # rows 0 and 2 right
    assert r["top5"] == pytest.approx(1.0)            # only 3 classes: every label is in the top 3
    assert r["mean_abs_logit_delta"] == pytest.approx((0.5 + 2.5) / 12)


def test_no_labels_means_no_top1():
    r = accuracy(np.eye(3), np.eye(3))
    assert r["top1"] is None and r["top5"] is None and r["agreement_top1"] == 1.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs from the float reference"):
        accuracy(np.zeros((2, 3)), np.zeros((2, 4)))


def test_softmax_rows_sum_to_one():
    p = softmax(np.array([[1000.0, 0.0], [1.0, 1.0]]))
    assert np.allclose(p.sum(axis=1), 1.0) and np.allclose(p[1], 0.5)
