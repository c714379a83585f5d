"""The x86 dot-product forms on a CPU that has their instructions: each form's tensorized convolutions (and the
depthwise ones), compiled by TVM for its own target, run on Bochs' emulated Tiger Lake (AVX512-VNNI) with no
operating system (tests/support/x86_emulation.py), byte for byte against the numpy model of LiteRT's arithmetic.

- avx512-vnni: 512-bit VPDPBUSD, as a Cascade Lake / Ice Lake / Zen 4 build has it.
- avx-vnni: its 8-lane schedule, built for Tiger Lake, where LLVM encodes the same 256-bit VPDPBUSD with EVEX
  (AVX512-VL). An Alder Lake build encodes it with VEX ({vex}), which no Bochs 2.7 CPU model decodes: that
  encoding runs in the slow test on Bochs 3.0.
- avx2 as well (this machine runs it natively too).
- Controls that must differ: the VNNI intrinsic with its two multiplicands swapped (the weights as the unsigned
  operand), which shows the emulator computes VPDPBUSD's own operand order and the runner can fail.
- Slow: every distinct int8 convolution and depthwise convolution of Xception 299x299, at full size, in both
  VNNI forms; and on Debian 13's Bochs 3.0 (fetched into the cache): the avx-vnni form built for Alder Lake, its
  VEX encoding, on Arrow Lake (AVX-VNNI without AVX-512), and every form on Sapphire Rapids.

Skipped where Bochs is not installed and cannot be (not root); CI installs it."""
from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

tvm = pytest.importorskip("tvm")

from tests.support import x86_emulation  # noqa: E402
from pipeline.errors import MissingDependencyError  # noqa: E402
from pipeline.progress import Progress  # noqa: E402
from pipeline.tvm import dot  # noqa: E402
from tests.unit.test_tvm_dot import SHAPES, X_ZERO, Y_ZERO, conv_case, litert_conv, operands  # noqa: E402


FORMS = {   # form -> the x86 CPU it is compiled for
    "avx512-vnni": "cascadelake",
    "avx-vnni": "tigerlake",
    "avx2": "haswell",
}
NEEDS = {"avx512-vnni": "avx512-vnni", "avx-vnni": "avx512-vnni", "avx2": "avx2"}


def _depthwise_case(shape: dot.ConvShape, seed: int):
    """A depthwise convolution's arguments (weights [KH, KW, C], bias corrected) and what LiteRT computes: the same
    filter as a full convolution."""
    x, w, bias, scale = operands(shape, seed, depthwise=True)
    dense = np.zeros((*shape.kernel, shape.x[3], shape.x[3]), np.int8)
    for ch in range(shape.x[3]):
        dense[:, :, ch, ch] = w[:, :, 0, ch]
    args = (x, np.ascontiguousarray(w[:, :, 0, :]), dot.corrected_bias(w, bias, X_ZERO, 0), scale)
    return args, litert_conv(x, dense, bias, scale, shape)


def _as_depthwise(shape: dot.ConvShape) -> dot.ConvShape:
    return dot.ConvShape(shape.x, shape.kernel, shape.x[3], shape.strides, shape.padding)


def _object(funcs: dict, mcpu: str, path: Path):
    """``funcs`` (symbol -> PrimFunc) compiled for ``mcpu`` into the object file ``path``; the module."""
    lib = tvm.compile(tvm.IRModule({name: f.with_attr("global_symbol", name) for name, f in funcs.items()}),
                      target=_target(mcpu))
    lib.mod.write_to_file(str(path))
    return lib.mod


S = dot.ConvShape
XCEPTION_CONVS = [      # Keras' Xception at 299x299: the stem, shortcuts (1x1 stride 2), pointwise halves, classifier
    S((1, 299, 299, 3), (3, 3), 32, (2, 2)), S((1, 149, 149, 32), (3, 3), 64),
    S((1, 147, 147, 64), (1, 1), 128, (2, 2)), S((1, 147, 147, 64), (1, 1), 128), S((1, 147, 147, 128), (1, 1), 128),
    S((1, 74, 74, 128), (1, 1), 256, (2, 2)), S((1, 74, 74, 128), (1, 1), 256), S((1, 74, 74, 256), (1, 1), 256),
    S((1, 37, 37, 256), (1, 1), 728, (2, 2)), S((1, 37, 37, 256), (1, 1), 728), S((1, 37, 37, 728), (1, 1), 728),
    S((1, 19, 19, 728), (1, 1), 728), S((1, 19, 19, 728), (1, 1), 1024, (2, 2)), S((1, 19, 19, 728), (1, 1), 1024),
    S((1, 10, 10, 1024), (1, 1), 1536), S((1, 10, 10, 1536), (1, 1), 2048), S((1, 1, 1, 2048), (1, 1), 1000),
]
XCEPTION_DEPTHWISE = [S((1, h, h, c), (3, 3), c, (1, 1), (1, 1, 1, 1)) for h, c in
                      ((147, 64), (147, 128), (74, 128), (74, 256), (37, 256), (37, 728), (19, 728), (10, 1024),
                       (10, 1536))]


def _tools():
    try:
        x86_emulation.ensure_tools(Progress(quiet=True))
    except MissingDependencyError as error:
        pytest.skip(str(error))


def _target(mcpu: str):
    return tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": mcpu})


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    _tools()
    work = tmp_path_factory.mktemp("bochs")
    objects, calls, controls = [], [], []
    for form, mcpu in FORMS.items():
        spec, tag, funcs = dot.ISAS[form], form.replace("-", "_"), {}
        for i, shape in enumerate(SHAPES):
            funcs[f"xe_{tag}_conv{i}"] = dot.conv_function(shape, spec, Y_ZERO, X_ZERO)
            calls.append(x86_emulation.Call(f"xe_{tag}_conv{i}", *conv_case(spec, i), NEEDS[form]))
        for i in (0, 4):
            shape = _as_depthwise(SHAPES[i])
            funcs[f"xe_{tag}_depthwise{i}"] = dot.depthwise_function(shape, Y_ZERO, X_ZERO)
            calls.append(x86_emulation.Call(f"xe_{tag}_depthwise{i}", *_depthwise_case(shape, 10 + i), NEEDS[form]))
        if spec.offset:                                      # the VNNI forms: a control with swapped operands
            name = f"test_swapped_{spec.intrin}"
            dot.register_once(name, dot.description(spec.lanes, spec.k, spec.data_dtype),
                              dot.vnni_impl(spec.lanes, unsigned="weights"))
            for i in (0, 2):
                funcs[f"xe_{tag}_swapped{i}"] = dot.conv_function(SHAPES[i], replace(spec, intrin=name), Y_ZERO, X_ZERO)
                calls.append(x86_emulation.Call(f"xe_{tag}_swapped{i}", *conv_case(spec, i), NEEDS[form]))
                controls.append(f"xe_{tag}_swapped{i}")
        objects.append(work / f"{form}.o")
        assert spec.instruction in _object(funcs, mcpu, objects[-1]).inspect_source("asm")
    return x86_emulation.run(objects, calls, keep=work / "image"), calls, controls


def test_every_x86_form_is_litert_arithmetic_on_an_emulated_vnni_cpu(report):
    result, calls, controls = report
    assert "avx512-vnni 1" in result.cpu, result.cpu              # the emulated CPU has the instructions
    checked = [c.symbol for c in calls if c.symbol not in controls]
    assert len(checked) == 21
    wrong = {s: result.outcomes[s] for s in checked if result.outcomes[s].status != "same"}
    assert not wrong, wrong
    assert all(result.outcomes[s].bytes > 0 for s in checked)


def test_the_emulated_vnni_instruction_tells_its_operands_apart(report):
    result, _, controls = report
    assert len(controls) == 4
    for symbol in controls:
        outcome = result.outcomes[symbol]
        assert outcome.status == "differs" and outcome.bytes_differing > outcome.bytes // 4, (symbol, outcome)


@pytest.mark.slow
def test_every_xception_convolution_at_full_size_on_an_emulated_vnni_cpu(tmp_path):
    """17 convolutions (3.6 G multiply-adds) and 9 depthwise ones, in each VNNI form."""
    _tools()
    calls, objects = [], []
    convs = [operands(shape, 100 + i) for i, shape in enumerate(XCEPTION_CONVS)]
    litert = [litert_conv(x, w, bias, scale, shape) for (x, w, bias, scale), shape in zip(convs, XCEPTION_CONVS)]
    depthwise = [_depthwise_case(shape, 200 + i) for i, shape in enumerate(XCEPTION_DEPTHWISE)]
    for form in ("avx512-vnni", "avx-vnni"):
        spec, tag, funcs = dot.ISAS[form], form.replace("-", "_"), {}
        for i, (shape, (x, w, bias, scale)) in enumerate(zip(XCEPTION_CONVS, convs)):
            funcs[f"xc_{tag}_conv{i}"] = dot.conv_function(shape, spec, Y_ZERO, X_ZERO)
            args = (x, dot.pack_weights(w, spec), dot.corrected_bias(w, bias, X_ZERO, spec.offset), scale)
            calls.append(x86_emulation.Call(f"xc_{tag}_conv{i}", args, litert[i], "avx512-vnni"))
        for i, shape in enumerate(XCEPTION_DEPTHWISE):
            funcs[f"xc_{tag}_depthwise{i}"] = dot.depthwise_function(shape, Y_ZERO, X_ZERO)
            calls.append(x86_emulation.Call(f"xc_{tag}_depthwise{i}", *depthwise[i], "avx512-vnni"))
        objects.append(tmp_path / f"{form}.o")
        _object(funcs, FORMS[form], objects[-1])
    result = x86_emulation.run(objects, calls, keep=tmp_path / "image", timeout_s=1200)
    assert len(calls) == 2 * (17 + 9)
    wrong = {c.symbol: result.outcomes[c.symbol] for c in calls if result.outcomes[c.symbol].status != "same"}
    assert not wrong, wrong


@pytest.mark.slow
def test_the_vex_encoded_avx_vnni_form_on_emulated_arrow_lake_and_every_form_on_sapphire_rapids(stage_cache, tmp_path):
    """Bochs 3.0's Arrow Lake has AVX-VNNI and no AVX-512: code built for Alder Lake must use the VEX vpdpbusd there
    (an EVEX one would fault and reset the machine before RESULT)."""
    _tools()
    try:
        tools = x86_emulation.bochs3(stage_cache, Progress(quiet=True))
    except MissingDependencyError as error:
        pytest.skip(str(error))
    objects, calls = [], []
    for form, mcpu in (("avx512-vnni", "cascadelake"), ("avx-vnni", "alderlake"), ("avx2", "haswell")):
        spec, tag, funcs = dot.ISAS[form], form.replace("-", "_"), {}
        for i, shape in enumerate(SHAPES):
            funcs[f"xv_{tag}_conv{i}"] = dot.conv_function(shape, spec, Y_ZERO, X_ZERO)
            calls.append(x86_emulation.Call(f"xv_{tag}_conv{i}", *conv_case(spec, i), form))
        objects.append(tmp_path / f"{form}.o")
        _object(funcs, mcpu, objects[-1])
    listing = subprocess.run(["objdump", "-d", str(tmp_path / "avx-vnni.o")], capture_output=True, text=True,
                             check=True).stdout
    vex = [line for line in listing.splitlines() if "vpdpbusd" in line]
    assert vex and all("\tc4 " in line or "\tc5 " in line for line in vex)       # VEX prefixes, no EVEX (62)
    runs = {model: x86_emulation.run(objects, calls, cpu_model=model, tools=tools, keep=tmp_path / model)
            for model in ("arrow_lake", "sapphire_rapids")}
    assert "avx512-vnni 0 avx-vnni 1" in runs["arrow_lake"].cpu, runs["arrow_lake"].cpu
    assert "avx512-vnni 1 avx-vnni 1" in runs["sapphire_rapids"].cpu, runs["sapphire_rapids"].cpu
    for model, result in runs.items():
        for call in calls:
            want = "skipped" if model == "arrow_lake" and call.needs == "avx512-vnni" else "same"
            assert result.outcomes[call.symbol].status == want, (model, call.symbol, result.outcomes[call.symbol])
