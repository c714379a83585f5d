"""The weights file of a TVM CPU library (benchmarks/tvm_params.py): read back exactly, written byte for byte the
same for the same arrays, and a damaged file is one clear line."""
from __future__ import annotations

import numpy as np
import pytest

from benchmarks import tvm_params
from benchmarks.errors import InputError


def _arrays():
    rng = np.random.default_rng(0)
    return [rng.integers(-128, 128, (3, 3, 8, 16), dtype=np.int8), rng.normal(size=(16,)).astype(np.float32),
            np.arange(7, dtype=np.int32), np.zeros((0, 4), np.float32), np.float32(2.5).reshape(())]


def test_weights_are_read_back_exactly_and_aligned(tmp_path):
    path = tmp_path / "lib.params"
    tvm_params.write(path, _arrays(), "ab" * 32)
    back = tvm_params.read(path, "ab" * 32)
    assert len(back) == 5
    for a, b in zip(_arrays(), back):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    assert tvm_params.params_file(tmp_path / "x_int8.so") == tmp_path / "x_int8.params"


def test_the_same_arrays_give_the_same_bytes(tmp_path):
    tvm_params.write(tmp_path / "a.params", _arrays(), "ab" * 32)
    tvm_params.write(tmp_path / "b.params", [a.copy() for a in _arrays()], "ab" * 32)
    assert (tmp_path / "a.params").read_bytes() == (tmp_path / "b.params").read_bytes()
    changed = _arrays()
    changed[1][0] += 1
    tvm_params.write(tmp_path / "c.params", changed, "ab" * 32)
    assert (tmp_path / "c.params").read_bytes() != (tmp_path / "a.params").read_bytes()


@pytest.mark.parametrize("damage, words", [(lambda b: b"NOTPARAM" + b[8:], "not a TVM weights file"),
                                           (lambda b: b[:len(b) - 100], "truncated"),
                                           (lambda b: b[:16] + b"x" + b[17:], "header is damaged")])
def test_a_damaged_file_is_one_line_naming_it(tmp_path, damage, words):
    path = tmp_path / "lib.params"
    tvm_params.write(path, _arrays(), "ab" * 32)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(InputError) as raised:
        tvm_params.read(path)
    assert words in str(raised.value) and str(path) in str(raised.value) and "\n" not in str(raised.value)


def test_weights_of_another_build_of_the_library_are_refused(tmp_path):
    path = tmp_path / "lib.params"
    tvm_params.write(path, _arrays(), "ab" * 32)
    with pytest.raises(InputError) as raised:
        tvm_params.read(path, "cd" * 32)
    assert "another build of its library" in str(raised.value) and "abababab" in str(raised.value)
