"""When int8 costs too much accuracy (issues 15 and 32): a small digits model with an outlier channel (conv_a's most
active channel scaled up 1000x, conv_b's weights for it scaled down: the float function unchanged, conv_a's
per-tensor int8 range ruined). Plain int8 fails the gate; the analysis names the damaged layers first; the recovery
ladder's first rung, cross-layer equalization, makes every int8 artifact pass with no float layer; with EQUALIZE=off
the float rung keeps a few layers float instead; RECOVER=0 fails."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

from benchmarks import gate
from pipeline.compiler import CompileOptions, compile_target
from tests.conftest import ROOT, labelled_digits, make_outlier_model, make_residual_outlier_model, write_target

ARTIFACTS = ["tflite-fp32", "tflite-int8", "tvm-int8", "onnx-fp32", "onnx-int8"]
DAMAGED = {"conv_a", "conv_b"}       # the layer whose output range is ruined, and the one that reads it
TEST_GATES = (ROOT / "benchmarks" / "gates.toml").read_text() + """
[models.outlier-file]
int8_faster_runtimes = []   # a 10k-parameter model is overhead-bound: speed is gated on Xception
max_size_ratio = 0.70       # recovery keeps 2 of its 4 weight layers float (measured 0.56 TFLite, 0.63 ONNX);
                            # on Xception two float layers are a few percent of the weights
"""


@pytest.fixture(scope="module")
def outlier(tmp_path_factory, stage_cache):
    root = tmp_path_factory.mktemp("outlier")
    model = make_outlier_model(root / "outlier.keras")
    eval_dir = labelled_digits(root / "eval", 200)
    targets = write_target(root / "targets", "rec", ARTIFACTS, '[tvm]\ncpu = { kind = "llvm" }\n')

    def options(recover: bool, out: str, equalize: str = "auto", rungs: str = "cle,bias,16x8,float") -> CompileOptions:
        return CompileOptions(target="rec", weights=str(model), eval_dir=eval_dir, calib_n=100, out_dir=root / out,
                              cache_dir=stage_cache, targets_dir=targets, recover=recover, equalize=equalize,
                              recover_rungs=rungs)

    equalized = compile_target(options(True, "equalized")).manifest
    recovered = compile_target(options(True, "recovered", "off", "float")).manifest        # the float rung alone
    plain = compile_target(options(False, "plain")).manifest
    (root / "gates.toml").write_text(TEST_GATES)
    return {"root": root, "options": options, "recovered": recovered, "plain": plain, "equalized": equalized}


def _art(manifest, kind):
    return next(a for a in manifest["artifacts"] if a["kind"] == kind)


def test_plain_int8_is_ruined_by_the_outlier_channel(outlier):
    for kind in ("tflite-int8", "tvm-int8", "onnx-int8"):
        assert _art(outlier["plain"], kind)["accuracy"]["agreement_top1"] < 0.5, kind
    assert _art(outlier["plain"], "tflite-int8")["quantization"]["recovery"] == {"status": "off"}


def test_equalization_recovers_every_int8_artifact_with_no_float_layer(outlier):
    manifest = outlier["equalized"]
    recovery = _art(manifest, "tflite-int8")["quantization"]["recovery"]
    assert recovery["status"] == "recovered" and recovery["equalized"] and recovery["all_int8"]
    assert recovery["float_layers"] == [] and [r["rung"] for r in recovery["rungs"]] == ["cle"]
    cle = recovery["rungs"][0]
    assert {"producer": "conv_a", "consumer": "conv_b"}.items() <= cle["pairs"][0].items()
    assert cle["float_difference"] <= cle["float_tolerance"] and cle["pairs"][0]["max_scale"] > 100
    assert recovery["before"]["agreement_top1"] < 0.5 <= 0.985 <= recovery["after"]["agreement_top1"]
    assert "calibration images" in recovery["judged_on"]                   # chosen on images the gate does not judge
    assert recovery["size_bytes"]["recovered"] == recovery["size_bytes"]["int8"]      # no float weights
    for kind in ("tflite-int8", "tvm-int8", "onnx-int8"):
        assert _art(manifest, kind)["accuracy"]["agreement_top1"] >= 0.985, kind
    assert "float_layers" not in _art(manifest, "tvm-int8")
    assert _art(manifest, "onnx-int8")["quantization"]["float_layers"] == []
    # TVM int8 built from the equalized TFLite file computes what LiteRT computes on it, bit for bit
    vs = _art(manifest, "tvm-int8")["accuracy"]["vs_litert"]
    assert vs["within_tolerance"] and vs["max_quant_steps"] == 0


def test_recovery_keeps_the_damaged_layers_float_and_meets_the_budget(outlier):
    manifest = outlier["recovered"]
    tflite = _art(manifest, "tflite-int8")
    recovery = tflite["quantization"]["recovery"]
    assert recovery["status"] == "recovered"
    assert set(recovery["float_layers"]) == DAMAGED, recovery["float_layers"]       # 2 of 5 layers, no more
    assert recovery["before"]["agreement_top1"] < 0.5 <= 0.985 <= recovery["after"]["agreement_top1"]
    assert recovery["size_bytes"]["recovered"] > recovery["size_bytes"]["int8"]          # float weights cost bytes
    assert recovery["ranking"][0]["layer"] in DAMAGED
    for kind in ("tflite-int8", "tvm-int8", "onnx-int8"):
        assert _art(manifest, kind)["accuracy"]["agreement_top1"] >= 0.985, kind
    assert set(_art(manifest, "tvm-int8")["float_layers"]) == DAMAGED       # built from the recovered TFLite file
    onnx = _art(manifest, "onnx-int8")["quantization"]
    assert set(onnx["float_layers"]) >= DAMAGED and onnx["excluded_nodes"]


def _gate(build, args, capsys) -> tuple[int, str]:
    assert gate.main([str(build), *args, "--write-baseline", "recovered outlier model"]) == 0
    capsys.readouterr()
    code = gate.main([str(build), *args])
    return code, capsys.readouterr().out


def test_the_gate_judges_the_recovered_builds_and_fails_without_recovery(outlier, capsys):
    """The ladder chose on the calibration images; the gate judges the eval images, which no choice saw. Agreement
    with float carries over (TEST_TRAIN_SEED=0..5, 2026-12-04); the top-1 drop of a model whose int8 costs a point
    or so on 200 images does not always (seed 2: float 92% -> int8 91%, the drop at the 1.0-point limit), so the
    gate's verdict is asserted to follow its checks, not to be a pass."""
    root = outlier["root"]
    args = ["--gates", str(root / "gates.toml"), "--baselines", str(root / "baselines")]
    recovered, plain = root / "recovered" / "rec", root / "plain" / "rec"
    for build, line in ((root / "equalized" / "rec", "RECOVERED: outlier_int8.tflite: CLE on 3 layer pairs; all int8"),
                        (recovered, "RECOVERED: outlier_int8.tflite was compiled with 2 layers kept float")):
        code, out = _gate(build, args, capsys)
        assert line in out, out
        failed = re.findall(r"^FAILED: (\S+): (\w+)", out, re.M)
        verdict = re.search(r"^(\w+): junit ", out, re.M).group(1)
        assert code == (1 if failed else 0) and verdict == ("FAIL" if failed else "PASS"), out
        assert not [f for f in failed if f[1] in ("agreement_top1", "size_ratio", "cross_runtime_agreement")], out
    assert "kept float" not in _gate(root / "equalized" / "rec", args, capsys)[1]
    assert gate.main([str(plain), *args]) == 1
    out = capsys.readouterr().out
    # the figure the gate prints is the plain model's own (whatever float training on this CPU made of it), and
    # it is ruined: below the half that the outlier channel leaves at most
    printed = re.search(r"FAILED: outlier_int8\.tflite: agreement_top1 = ([0-9.]+)", out)
    assert printed and "RECOVERED" not in out, out
    plain_figure = _art(outlier["plain"], "tflite-int8")["accuracy"]["agreement_top1"]
    assert float(printed.group(1)) == pytest.approx(plain_figure, abs=5e-5) and plain_figure < 0.5


def test_a_cap_reached_first_is_said_and_the_gate_fails(outlier, capsys):
    """EQUALIZE=off, RECOVER_RUNGS=float, RECOVER_CAP=1: one float layer cannot keep conv_a's output out of int8 (it takes two), so
    recovery stops, the compile warns, the plain int8 model ships, and the gate fails."""
    import dataclasses

    from pipeline.progress import Progress

    root = outlier["root"]
    options = dataclasses.replace(outlier["options"](True, "capped", "off", "float"), recover_cap=1)
    manifest = compile_target(options, Progress()).manifest
    err = capsys.readouterr().err
    recovery = _art(manifest, "tflite-int8")["quantization"]["recovery"]
    assert recovery["status"] == "cap reached" and len(recovery["float_layers"]) <= 1
    assert "outlier_int8.tflite: int8 recovery failed (cap reached, cap 1 float layers)" in err
    assert _art(manifest, "tflite-int8")["accuracy"]["agreement_top1"] < 0.5            # the plain model shipped
    args = ["--gates", str(root / "gates.toml"), "--baselines", str(root / "baselines-capped")]
    assert gate.main([str(root / "recovered" / "rec"), *args, "--write-baseline", "recovered outlier model"]) == 0
    assert gate.main([str(root / "capped" / "rec"), *args]) == 1


def test_the_analysis_names_the_damaged_layer_first(outlier):
    from pipeline.analysis import analyze_target
    from pipeline.analysis_report import table, worst

    result, folder = analyze_target(outlier["options"](True, "recovered"), n=0)
    assert result["recovery_order"][0] in DAMAGED and set(result["recovery_order"][:2]) == DAMAGED
    first = worst(result)[0]
    assert first["layer"] in DAMAGED and first["sensitivity"]["agreement_top1"] < 0.5
    rows = {r["layer"]: r for r in result["layers"]}
    # conv_a's own tensor keeps a high SQNR (the 1000x channel holds nearly all its energy, the ruined channels
    # little); the damage shows in conv_b's output, and in conv_a's sensitivity
    assert rows["conv_b"]["sqnr_db"] < 10 < rows["conv_a"]["sqnr_db"]
    assert rows["conv_a"]["sensitivity"]["agreement_top1"] < 0.5 < 0.95 < rows["conv_c"]["sensitivity"]["agreement_top1"]
    assert "conv_a" in table(result)
    onnx = {r["layer"]: r for r in result["onnx_layers"]}           # ONNX int8 (plain, no recovery) per layer
    assert {"conv_a", "conv_b", "conv_c"} <= set(onnx) and onnx["conv_b"]["sqnr_db"] < 10 < onnx["conv_a"]["sqnr_db"]
    saved = json.loads((folder / "analysis.json").read_text())
    assert saved["recovery_order"] == result["recovery_order"]
    # which rung helps: equalization repairs the whole model; conv_a alone after it no longer ruins the output
    gains = result["rungs"]
    assert gains["cle"]["applied"] and result["overall"]["agreement_top1"] < 0.5 <= 0.985 <= \
        gains["cle"]["overall"]["agreement_top1"]
    top = gains["layers"][0]
    assert top["layer"] in DAMAGED and top["cle_alone"]["agreement_top1"] > 0.9 > first["sensitivity"]["agreement_top1"]
    assert set(top["float"]["layers"]) & DAMAGED and "What each recovery rung would do" in (folder / "analysis.md").read_text()
    # bias correction and 16x8 on the whole model, measured and timed (16x8 gives the ruined tensor 256x the levels)
    assert gains["bias"]["layers"] == 4 and gains["bias"]["seconds"] >= 0 and gains["16x8"]["scope"] == "whole model"
    assert gains["16x8"]["overall"]["sqnr_db"] > result["overall"]["sqnr_db"] + 10
    assert "16x8 (int16 activations, whole model): whole-model top-1 agreement" in table(result) + (
        folder / "analysis.md").read_text()
    assert (folder / "sqnr_by_layer.png").stat().st_size > 1000 and "conv_a" in (folder / "analysis.md").read_text()


def test_calibration_methods_change_the_ranges_and_are_recorded(outlier):
    from pipeline import quantization as q

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 100_000), [80.0]])            # one outlier
    hist, edges = np.histogram(values, q.HISTOGRAM_BINS, (values.min(), values.max()))
    lo, hi = q._percentile(hist, edges)
    assert hi < 10 and lo > -10                                           # the outlier no longer sets the range
    elo, ehi = q._entropy(hist, edges)
    assert 1 < ehi < 80 and elo >= values.min()
    assert _art(outlier["recovered"], "tflite-int8")["quantization"]["calib_method"] == "minmax"
    assert _art(outlier["recovered"], "onnx-int8")["quantization"]["calibration"] == "MinMax"


def _ladder(tmp_path, stage_cache, merge: str, **made) -> dict:
    model = make_residual_outlier_model(tmp_path / f"{merge}.keras", merge=merge, **made)
    targets = write_target(tmp_path / "targets", "res", ["tflite-fp32", "tflite-int8", "tvm-int8", "onnx-fp32",
                                                         "onnx-int8"], '[tvm]\ncpu = { kind = "llvm" }\n')
    return compile_target(CompileOptions(target="res", weights=str(model), eval_dir=labelled_digits(tmp_path / "e", 200),
                                         calib_n=100, out_dir=tmp_path / "out", cache_dir=stage_cache,
                                         targets_dir=targets)).manifest


@pytest.mark.parametrize("merge, producer, consumer", [("add", "conv_b + shortcut", "conv_c"),
                                                     ("concat", "conv_b", "conv_c"),
                                                     ("identity", "conv_a + conv_b", "conv_b + conv_c")])
def test_an_outlier_through_a_merge_of_branches_is_equalized_as_one_group(tmp_path, stage_cache, merge, producer,
                                                                         consumer):
    """The outlier channel flows through a residual ADD (both branches scaled alike, conv_c's weights the other way),
    a concatenation (conv_b's channels at their offset among conv_c's inputs), or an identity shortcut (conv_a and
    conv_b write the stream, conv_b and conv_c read it: one scale for all). Equalization repairs the ruined range,
    and the TFLite int8 model ships with no float layer. What is left depends on the trained model: the same
    models with no outlier at all give 97.5-98% on the eval images (seed 3, AMD EPYC Zen 4, 2026-12-05), and
    where the model's own int8 is that marginal on the calibration images too, the ladder goes on past CLE (one
    identity model of six: CLE 98%, bias correction 98%, 16x8 100%). So the test asserts the repair (CLE alone
    >= 95%), no float layer, and 95% rather than the gate's 98.5%."""
    manifest = _ladder(tmp_path, stage_cache, merge)
    recovery = _art(manifest, "tflite-int8")["quantization"]["recovery"]
    assert recovery["before"]["agreement_top1"] < 0.5 and recovery["status"] == "recovered"
    assert recovery["all_int8"] and not recovery["float_layers"]
    assert [r["rung"] for r in recovery["rungs"]] in (["cle"], ["cle", "bias"], ["cle", "bias", "16x8"])
    cle = recovery["rungs"][0]
    assert cle["rung"] == "cle" and cle["applied"] and cle["after"]["agreement_top1"] >= 0.95 and not cle["refused"]
    pairs = {p["producer"]: p for p in cle["pairs"]}
    assert pairs[producer]["consumer"] == consumer and pairs[producer]["max_scale"] > 100
    assert pairs[producer].get("offsets", [0])[0] == 0          # conv_b's channels come first in the concatenation
    for kind in ("tflite-int8", "tvm-int8", "onnx-int8"):
        assert _art(manifest, kind)["accuracy"]["agreement_top1"] >= 0.95, kind
    assert _art(manifest, "tvm-int8")["accuracy"]["vs_litert"]["max_quant_steps"] == 0


def test_a_float_island_that_blows_the_size_budget_fails_the_gate_as_such(outlier, capsys):
    root = outlier["root"]
    tight = root / "gates-tight.toml"
    # all int8, this tiny model is 0.33 (TFLite) and 0.44 (ONNX) of fp32 (format overhead); 2 float layers: 0.56, 0.63
    tight.write_text(TEST_GATES.replace("max_size_ratio = 0.70", "max_size_ratio = 0.45"))
    args = ["--gates", str(tight), "--baselines", str(root / "baselines-tight")]
    assert gate.main([str(root / "recovered" / "rec"), *args, "--write-baseline", "float island"]) == 0
    capsys.readouterr()
    assert gate.main([str(root / "recovered" / "rec"), *args]) == 1
    out = capsys.readouterr().out
    assert re.search(r"FAILED: outlier_int8\.tflite: size_ratio = 0\.\d+ \(threshold <= 0\.4500\) FAILED; "
                     r"\d+ / \d+ bytes; 2 layers kept float by recovery", out), out
    code, out = _gate(root / "equalized" / "rec", args, capsys)                 # all int8: within 0.45
    assert "size_ratio" not in "".join(re.findall(r"^FAILED: .*$", out, re.M)), out


def test_past_equalization_the_ladder_tries_bias_correction_then_16x8_and_says_what_tvm_builds(tmp_path, stage_cache):
    """An outlier before a pre-activation BatchNorm (on a ReLU's output), which no per-channel scale passes exactly
    (BN(x / s) is not BN(x) / s): equalization says why, and the ladder climbs to bias correction and 16x8, each
    recorded with its before and after, and stops at the first that meets the budget. Seed 3 on AMD EPYC Zen 4,
    2026-12-05: bias correction 14%, 16x8 100% on the calibration images: 16x8 adopted. Other trainings may stop
    elsewhere or end at the float rung, so each ending is asserted as it must be."""
    manifest = _ladder(tmp_path, stage_cache, "bn")
    tflite = _art(manifest, "tflite-int8")
    recovery = tflite["quantization"]["recovery"]
    assert recovery["before"]["agreement_top1"] < 0.985 and recovery["status"] != "not needed"
    rungs = {r["rung"]: r for r in recovery["rungs"]}
    order = [r["rung"] for r in recovery["rungs"]]
    assert order == ["cle", "bias", "16x8", "float"][:len(order)] and len(order) >= 2
    refused = {r["producer"]: r["reason"] for r in rungs["cle"]["refused"]}
    assert "bn (BatchNormalization) does not commute" in refused["conv_b"] and not rungs["cle"].get("after", {}).get("met")
    bias = rungs["bias"]
    assert bias["layers"] and len(bias["largest_relative_shift"]) == bias["sweeps"] == 3
    assert bias["before"]["agreement_top1"] < 0.985 and "ONNX Runtime" in bias["onnx"]
    onnx, tvm = _art(manifest, "onnx-int8"), _art(manifest, "tvm-int8")
    assert tvm["accuracy"]["vs_litert"]["max_quant_steps"] == 0           # against the TFLite file it was built from
    if bias["met"]:
        assert recovery["all_int8"] and recovery["bias_corrected"] and order == ["cle", "bias"]
        return
    sixteen = rungs["16x8"]
    assert sixteen["scope"].startswith("whole model") and "TVM 0.27" in sixteen["tvm"]
    if sixteen["met"]:
        assert recovery["activations"] == "int16" and recovery["all_int8"] and not recovery["float_layers"]
        assert onnx["quantization"]["activations"] == "int16" and not onnx["quantization"]["float_layers"]
        assert tvm["source_tflite"] == "tvm_source.tflite" and "float rung" in tvm["built_from"]
        assert tvm.get("float_layers", []) == (recovery["tvm"]["float_layers"] if recovery["tvm"]["status"] ==
                                                "recovered" else [])
        assert recovery["tvm"]["size_bytes"]["recovered"] >= recovery["tvm"]["size_bytes"]["int8"]     # its cost
        assert rungs.get("float") is None
    else:
        assert "activations" not in recovery and order[-1] == "float" and rungs["float"]["applied"]
        assert tvm["source_tflite"] != "tvm_source.tflite" and onnx["quantization"]["activations"] != "int16"