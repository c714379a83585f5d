"""TVM int8 computes what LiteRT computes (within one quantization step, in practice bit for bit) on
random-weight models of Xception's operator kinds at several sizes and class counts; a library that
misses fails the compile with one line and nothing is written."""
from __future__ import annotations


import pytest

from pipeline.compiler import CompileOptions, compile_target
from pipeline.errors import StageError
from tests.conftest import make_residual_model, write_target

ARTIFACTS = ["tflite-int8", "tvm-int8"]


def compile_residual(tmp_path, cache, size, classes, seed):
    model = make_residual_model(tmp_path / f"res{size}-{classes}-{seed}.keras", size, classes, seed)
    targets = write_target(tmp_path / "targets", "exact", ARTIFACTS, '[tvm]\ncpu = { kind = "llvm" }\n')
    options = CompileOptions(target="exact", weights=str(model), out_dir=tmp_path / "build", cache_dir=cache,
                             calib_n=20, eval_n=40, targets_dir=targets)
    return options, compile_target(options)


@pytest.mark.parametrize("size,classes,seed", [(32, 10, 0), (48, 7, 1), (40, 3, 2)])
def test_random_residual_models_are_litert_exact(tmp_path, stage_cache, size, classes, seed):
    _, result = compile_residual(tmp_path, stage_cache, size, classes, seed)
    tvm = next(a for a in result.manifest["artifacts"] if a["kind"] == "tvm-int8")
    assert tvm["int8_integer_adds"] == 2 and tvm["int8_integer_chains"] == 12     # every add and conv/dense
    assert tvm["int8_integer_means"] == 1                                         # and the global mean
    vs = tvm["accuracy"]["vs_litert"]
    assert vs["outputs"] == 40 * classes and vs["beyond_tolerance"] == 0
    assert vs["max_quant_steps"] == 0, vs          # measured: bit for bit


def test_a_library_out_of_tolerance_fails_the_compile(tmp_path, monkeypatch):
    """Coarse add multipliers (6 bits instead of XNNPACK's 20) put TVM steps away from LiteRT: one line,
    exit code 3, no manifest."""
    from pipeline.tvm import int8

    monkeypatch.setattr(int8, "ADD_SHIFT_BITS", 6)
    with pytest.raises(StageError) as caught:
        compile_residual(tmp_path, tmp_path / "own-cache", 32, 10, 0)     # its own cache: nothing shared is touched
    message = str(caught.value)
    assert "res32-10-0_int8.so differs from LiteRT running res32-10-0_int8.tflite by up to" in message
    assert "quantization steps (tolerance 1)" in message and "\n" not in message and caught.value.exit_code == 3
    assert not (tmp_path / "build" / "exact" / "manifest.json").exists()
