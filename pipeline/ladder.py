"""The int8 recovery ladder for the TFLite int8 model, cheapest rung first, stopping at the first that meets the
gate's agreement budget: plain int8, cross-layer equalization (equalization.py, exact in float), bias correction
(bias_correction.py), 16x8 for the whole model (int16 activations; TVM then builds the float rung's model), then
float layers (recovery.py, capped). Must hold: every choice is judged on the calibration images, never on the
eval images the gate judges; each rung is recorded with its before, after, time and the layers it touched.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline import equalization as eq
from pipeline.layer_damage import SENSITIVITY_IMAGES, measure, model_ops
from pipeline.progress import Progress
from pipeline.quantization import outputs, quantize
from pipeline.recovery import Budget, median_ms, recover

EQUALIZE_MODES = ("auto", "on", "off")
FLOAT_CHECK_IMAGES = 32       # calibration images the float outputs are compared on, before and after CLE


@dataclass(frozen=True)
class Ladder:
    budget: float                 # top-1 agreement with float to reach (0: no recovery, RECOVER=0)
    max_drop: float               # the gate's top-1 drop budget (recorded; calibration images have no labels)
    cap: int                      # at most this many float layers
    sensitivity_n: int            # ops whose end-to-end sensitivity is measured for the float rung
    equalize: str = "auto"        # auto: CLE when the budget is missed; on: always; off: never
    rungs: tuple[str, ...] = ("cle", "bias", "16x8", "float")     # RECOVER_RUNGS (cle also needs equalize=auto)


@dataclass
class Result:
    model: bytes                  # the int8 TFLite model to ship
    record: dict                  # the manifest's quantization.recovery
    equalized: object | None      # the equalized Keras model when the shipped model comes from it
    tvm_model: bytes | None = None    # what TVM builds when the shipped model has int16 activations (16x8)


@dataclass
class _State:
    """Where the ladder stands: the Keras model, its calibrated TFLite model, the int8 model and its verdict."""
    model: object
    calibrated: bytes
    int8: bytes
    judged: dict
    equalized: object | None = None
    corrected: bool = False
    unbiased: bytes | None = None     # the calibrated model before bias correction (16x8 starts from it)


TVM_NO_16X8 = ("TVM 0.27's TFLite frontend cannot import int16 activations (its dequantize takes int8 only), "
               "so TVM builds the int8 model of the float rung instead")


def climb(model_file: Path, calibrate: Callable, calib: np.ndarray, ladder: Ladder, progress: Progress) -> Result:
    """``calibrate(keras_model) -> calibrated TFLite bytes``; the rungs as the module docstring says."""
    import keras

    model = keras.saving.load_model(model_file, compile=False)
    rungs: list[dict] = []
    equalized = None
    if ladder.equalize == "on":
        equalized, rung = _equalize(model_file, calib)
        rungs.append(rung | {"asked": True})
        model = equalized if rung["applied"] else model
        equalized = equalized if rung["applied"] else None
    calibrated = calibrate(model)
    plain = quantize(calibrated)
    if not ladder.budget:
        asked = {"rungs": rungs, "equalized": equalized is not None} if rungs else {}      # EQUALIZE=on alone
        return Result(plain, {"status": "off"} | asked, equalized)
    budget = Budget(ladder.budget, ladder.max_drop, outputs(calibrated, calib), None)
    judged = budget.judge(outputs(plain, calib))
    head = {"budget": ladder.budget, "budget_max_top1_drop_points": ladder.max_drop,
            "judged_on": f"{len(calib)} calibration images (the gate judges the eval images)"}
    if judged["met"]:
        return Result(plain, head | {"status": "not needed", "judged": judged, "rungs": rungs,
                                     "equalized": equalized is not None}, equalized)
    progress.log(f"  int8 misses the gate's budget on the {len(calib)} calibration images ({judged['why']}): "
                 f"climbing the recovery ladder")
    state, before, started = _State(model, calibrated, plain, judged, equalized), judged, time.monotonic()
    int8_rungs = ([_cle_rung] if ladder.equalize == "auto" and "cle" in ladder.rungs else []) + (
        [_bias_rung] if "bias" in ladder.rungs else [])
    for rung_of in int8_rungs:
        rungs.append(rung_of(state, model_file, calibrate, calib, budget, progress))
        if state.judged["met"]:
            return Result(state.int8, head | _outcome("recovered", before, state.judged, [], plain, state.int8, calib,
                                                      started) | _all_int8(state, rungs, ladder), state.equalized)
    if "16x8" in ladder.rungs:
        sixteen, rung = _sixteen_rung(state, calib, budget, progress)
        rungs.append(rung)
    else:
        sixteen, rung = None, {"met": False}
    floated = _float_rung(state, budget, before, calib, ladder, head, rungs, started, progress)
    if not rung["met"]:
        return floated
    unbiased = dataclasses.replace(state, corrected=False)          # 16x8 starts before bias correction
    record = head | _outcome("recovered", before, rung["after"], [], plain, sixteen, calib, started) | _all_int8(
        unbiased, rungs, ladder) | {"activations": "int16", "tvm": {
            "why": TVM_NO_16X8, "float_layers": floated.record["float_layers"], "status": floated.record["status"],
            "after": floated.record["after"], "size_bytes": floated.record["size_bytes"],
            "latency_ms_here": floated.record["latency_ms_here"]}}
    return Result(sixteen, record, state.equalized, floated.model)


def _all_int8(state: _State, rungs: list[dict], ladder: Ladder) -> dict:
    return {"rungs": rungs, "equalized": state.equalized is not None, "bias_corrected": state.corrected,
            "all_int8": True, "cap_layers": ladder.cap, "steps": [], "ranking": [], "float_tensors": [],
            "float_keras_layers": []}


def _cle_rung(state: _State, model_file: Path, calibrate: Callable, calib: np.ndarray, budget: Budget,
              progress: Progress) -> dict:
    """Rung 1: cross-layer equalization of the Keras model, requantized; adopted when agreement improves."""
    started = time.monotonic()
    candidate, rung = _equalize(model_file, calib)
    if not rung["applied"]:
        progress.log(f"  rung CLE: not applied ({rung['reason']})")
        return rung
    calibrated = calibrate(candidate)
    int8 = quantize(calibrated)
    rung["before"], rung["after"] = state.judged, budget.judge(outputs(int8, calib))
    rung["seconds"] = round(rung["seconds"] + time.monotonic() - started, 1)
    progress.log(f"  rung CLE: {len(rung['pairs'])} layer pairs equalized: {rung['after']['why']}")
    if rung["after"]["agreement_top1"] > state.judged["agreement_top1"]:
        state.model, state.calibrated, state.int8, state.judged = candidate, calibrated, int8, rung["after"]
        state.equalized = candidate
    return rung


def _bias_rung(state: _State, model_file: Path, calibrate: Callable, calib: np.ndarray, budget: Budget,
               progress: Progress) -> dict:
    """Rung 2: empirical bias correction of the calibrated model (bias_correction.py), in both forms; the best form
    and sweep on the calibration images is adopted when it improves agreement. TFLite's (and TVM's) int8 only: measured on TFLite's
    quantization grid, it does not hold for ONNX Runtime's own ranges."""
    from pipeline import bias_correction

    started = time.monotonic()
    tried = []
    for mode in bias_correction.MODES:
        corrected = bias_correction.correct(state.calibrated, calib, mode)
        tried += [(budget.judge(outputs(quantize(m), calib)), i, corrected) for i, m in enumerate(corrected.models)]
    best, sweep, corrected = max(tried, key=lambda t: (t[0]["agreement_top1"], -t[0]["relative_mse"], -t[1]))
    applied = best["agreement_top1"] > state.judged["agreement_top1"] or (
        best["agreement_top1"] == state.judged["agreement_top1"]
        and best["relative_mse"] < state.judged["relative_mse"])
    rung = {"rung": "bias", "applied": applied, "layers": corrected.layers, "mode": corrected.mode,
            "sweeps": len(corrected.models), "sweep_chosen": sweep + 1,
            "largest_relative_shift": corrected.largest_shift,
            "tried": [{"mode": c.mode, "sweep": i + 1, "agreement_top1": j["agreement_top1"], "sqnr_db": j["sqnr_db"]}
                      for j, i, c in tried],
            "before": state.judged, "after": best, "met": best["met"] and applied, "onnx": "not applied (measured on "
            "TFLite's quantization grid; ONNX Runtime recalibrates with its own)",
            "seconds": round(time.monotonic() - started, 1)}
    progress.log(f"  rung bias correction: {len(corrected.layers)} layers, {best['why']}"
                 + ("" if applied else " (no better: not applied)"))
    if applied:
        state.unbiased = state.calibrated
        state.calibrated, state.judged, state.corrected = corrected.models[sweep], best, True
        state.int8 = quantize(state.calibrated)
    return rung


def _sixteen_rung(state: _State, calib: np.ndarray, budget: Budget, progress: Progress) -> tuple[bytes, dict]:
    """Rung 3: int16 activations, int8 weights, for the whole model (LiteRT's 16x8 is whole-model only); from
    the calibrated model before bias correction (the corrections were measured on the int8 grid)."""
    from pipeline.quantization import quantize_16x8

    started = time.monotonic()
    model = quantize_16x8(state.unbiased or state.calibrated)
    after = budget.judge(outputs(model, calib))
    rung = {"rung": "16x8", "applied": after["met"], "scope": "whole model (LiteRT makes 16x8 for whole models only)",
            "before": state.judged, "after": after, "met": after["met"], "tvm": TVM_NO_16X8,
            "seconds": round(time.monotonic() - started, 1)}
    progress.log(f"  rung 16x8 (int16 activations, int8 weights): {after['why']}"
                 + ("" if after["met"] else ": not adopted"))
    return model, rung


def _float_rung(state: _State, budget: Budget, before: dict, calib: np.ndarray, ladder: Ladder, head: dict,
                rungs: list[dict], started: float, progress: Progress) -> Result:
    """The last rung: the most damaging ops kept float, most damaging first, up to the cap. It starts from the
    model before bias correction (a layer kept float must keep its float bias); when it fails, the best int8
    model so far is shipped, and the gate fails."""
    best = state
    if "float" not in ladder.rungs:
        rungs = rungs + [{"rung": "float", "applied": False, "met": False, "reason": "not in RECOVER_RUNGS"}]
        return Result(best.int8, head | _outcome("not met", before, best.judged, [], best.int8, best.int8, calib,
                                                 started) | _all_int8(best, rungs, ladder), best.equalized)
    rung_started = time.monotonic()
    if state.unbiased is not None:
        state = dataclasses.replace(state, calibrated=state.unbiased, int8=quantize(state.unbiased), corrected=False)
    model, calibrated, plain = state.model, state.calibrated, state.int8
    reference = budget.float_logits[:SENSITIVITY_IMAGES]               # float, on the sensitivity images
    ops = model_ops(plain, [layer.name for layer in model.layers])
    found = measure(calibrated, plain, reference, calib, ops, ladder.sensitivity_n, progress)
    result = recover(calibrated, plain, budget, calib, ops, found.ranked, ladder.cap, progress.log)
    status = "recovered" if result.met else ("cap reached" if result.capped else "not met")
    layer_of = {op.tensor: op.layer for op in ops}
    rungs = rungs + [{"rung": "float", "applied": bool(result.float_ops),
                      "layers": [op.layer for op in result.float_ops], "before": result.before,
                      "after": result.after, "met": result.met, "seconds": round(time.monotonic() - rung_started, 1)}]
    shipped = result.model if result.met else best.int8
    record = head | _outcome(status, before, result.after, result.float_ops, plain, shipped, calib, started) | {
        "cap_layers": ladder.cap, "steps": result.steps, "rungs": rungs, "equalized": state.equalized is not None,
        "bias_corrected": best.corrected and not result.met, "all_int8": not result.float_ops or not result.met,
        "float_tensors": [op.tensor for op in result.float_ops],
        "float_keras_layers": [op.layers for op in result.float_ops],
        "ranking": [{"layer": layer_of[name], **found.sensitivities[name]} for name in found.ranked]}
    return Result(shipped, record, state.equalized)


def _outcome(status: str, before: dict, after: dict, float_ops: list, plain: bytes, recovered: bytes,
             calib: np.ndarray, started: float) -> dict:
    return {"status": status, "before": before, "after": after, "float_layers": [op.layer for op in float_ops],
            "size_bytes": {"int8": len(plain), "recovered": len(recovered)},
            "latency_ms_here": {"int8": (here := median_ms(plain, calib[0])),
                                "recovered": here if recovered is plain else median_ms(recovered, calib[0])},
            "seconds": round(time.monotonic() - started, 1)}


def _equalize(model_file: Path, calib: np.ndarray) -> tuple[object, dict]:
    """A fresh copy of the model, equalized, with its rung record (not applied when nothing could be, or when the
    float outputs moved beyond eq.FLOAT_TOLERANCE)."""
    import keras

    started = time.monotonic()
    model = keras.saving.load_model(model_file, compile=False)
    images = calib[:FLOAT_CHECK_IMAGES]
    before = np.asarray(model.predict(images, verbose=0))
    found = eq.equalize(model)
    difference = eq.float_difference(before, np.asarray(model.predict(images, verbose=0)))
    rung = {"rung": "cle", "pairs": [{"producer": p.producer, "consumer": p.consumer, "through": p.through,
                                      "max_scale": round(p.max_scale, 3)} | (
                                          {"offsets": p.offsets} if any(p.offsets) else {}) for p in found.pairs],
            "refused": found.refused, "float_difference": difference, "float_tolerance": eq.FLOAT_TOLERANCE,
            "applied": bool(found.pairs) and difference <= eq.FLOAT_TOLERANCE,
            "seconds": round(time.monotonic() - started, 1)}
    if not found.pairs:
        rung["reason"] = "no layer pair can be equalized exactly" + (
            f" ({'; '.join(r['producer'] + ': ' + r['reason'] for r in found.refused[:3])})" if found.refused else "")
    elif not rung["applied"]:
        rung["reason"] = (f"the float outputs moved by {difference:.2e} relative (tolerance "
                          f"{eq.FLOAT_TOLERANCE:.0e}): not the same function, not applied")
    return model, rung


TOP_LAYERS = 3      # make analyze: the rungs' gains are measured for the layers ranked most damaging


def rung_gains(model_file: Path, calibrate: Callable, calibrated: bytes, reference: np.ndarray, calib: np.ndarray,
               ops: list, ranked: list[str], progress: Progress) -> dict:
    """What each rung would do (make analyze): the whole model after equalization, and for the TOP_LAYERS most
    damaging ops, their damage alone after equalization and the whole model's agreement with each kept float."""
    from pipeline.layer_damage import QUANTIZED_OPS, closures, sensitivity
    from pipeline.quantization import compare

    started = time.monotonic()
    by_tensor = {op.tensor: op for op in ops}
    top = [by_tensor[name] for name in ranked[:TOP_LAYERS]]
    candidate, rung = _equalize(model_file, calib)
    cle = {k: rung[k] for k in ("pairs", "refused", "float_difference", "applied") if k in rung} | (
        {"reason": rung["reason"]} if "reason" in rung else {})
    alone_cle = {}
    if rung["applied"]:
        calibrated_e = calibrate(candidate)
        int8_e = quantize(calibrated_e)
        cle["overall"] = compare(reference, outputs(int8_e, calib))
        ops_e = {op.layer: op for op in model_ops(int8_e, [layer.name for layer in candidate.layers])}
        mine = [ops_e[op.layer] for op in top if op.layer in ops_e]
        found = sensitivity(calibrated_e, reference[:SENSITIVITY_IMAGES], calib[:SENSITIVITY_IMAGES],
                            list(ops_e.values()), mine)
        alone_cle = {ops_e_op.layer: found[ops_e_op.tensor] for ops_e_op in mine}
    layers = []
    for op in top:
        tried = []
        for group in closures(op, ops):
            names = [o.tensor for o in group if o.kind in QUANTIZED_OPS]
            tried.append((compare(reference, outputs(quantize(calibrated, names), calib)), [o.layer for o in group]))
        best, floated = max(tried, key=lambda t: (t[0]["agreement_top1"], -t[0]["relative_mse"]))
        layers.append({"layer": op.layer, "cle_alone": alone_cle.get(op.layer),
                       "float": {"layers": floated, **best}})
    cle["seconds"] = round(time.monotonic() - started, 1)
    whole = _whole_model_gains(calibrated, reference, calib)
    progress.log(f"  rung gains: CLE {'applied' if rung['applied'] else 'not applicable'}, bias correction, 16x8, "
                 f"float for the top {len(top)} layers ({time.monotonic() - started:.0f} s)")
    return {"cle": cle, **whole, "layers": layers, "seconds": round(time.monotonic() - started, 1),
            "not_measured": "16x8 for one layer: LiteRT makes 16x8 for whole models only"}


def _whole_model_gains(calibrated: bytes, reference: np.ndarray, calib: np.ndarray) -> dict:
    """make analyze: bias correction (its best sweep) and 16x8 on the whole model, each with its time."""
    from pipeline import bias_correction
    from pipeline.quantization import compare, quantize_16x8

    started = time.monotonic()
    tried = []
    for mode in bias_correction.MODES:
        corrected = bias_correction.correct(calibrated, calib, mode)
        tried += [(compare(reference, outputs(quantize(m), calib)), mode, i) for i, m in enumerate(corrected.models)]
    best, mode, sweep = max(tried, key=lambda t: (t[0]["agreement_top1"], -t[0]["relative_mse"]))
    bias = {"overall": best, "mode": mode, "sweep_chosen": sweep + 1, "layers": len(corrected.layers),
            "tried": [{"mode": m, "sweep": i + 1, **{k: j[k] for k in ("agreement_top1", "sqnr_db")}}
                      for j, m, i in tried], "seconds": round(time.monotonic() - started, 1)}
    started = time.monotonic()
    sixteen = {"overall": compare(reference, outputs(quantize_16x8(calibrated), calib)),
               "scope": "whole model", "seconds": round(time.monotonic() - started, 1)}
    return {"bias": bias, "16x8": sixteen}
