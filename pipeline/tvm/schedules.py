"""Default CPU schedules for the TVM stage (TVM 0.27 gives llvm builds none: untuned code runs scalar and
single-threaded, ~100x LiteRT): dlight's ApplyDefaultSchedule with our ConvLike (pipeline/tvm/conv_tiles.py) and
Injective rules, then GEMV and Reduction; the fusion passes, tuned records and the CPU pipeline. Must hold: reduction
order is never changed, so a scheduled function gives the unscheduled one's result
(tests/integration/test_tvm_schedules.py). This module imports TVM. Details: docs/internals.md (module notes).
"""
from __future__ import annotations

from tvm import s_tir, tirx
from tvm.s_tir import dlight
from tvm.s_tir.dlight.base import get_extent
from tvm.s_tir.dlight.cpu.base import CPUScheduleRule

from pipeline.tvm.conv_tiles import ConvLike, normalized, vector_lanes


class Injective(CPUScheduleRule):
    def apply(self, func, target, _):
        sch, infos = normalized(func)
        if not infos or not all(b.is_injective() for b in infos):
            return None
        for block in infos[:-1]:
            try:
                sch.compute_inline(block.block_rv)
            except Exception:  # noqa: BLE001 - TVM raises ScheduleError subclasses: leave the block as is
                pass
        loops = sch.get_loops(infos[-1].block_rv)
        if not loops:
            return None
        fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
        lanes = vector_lanes(target)
        extent = get_extent(sch, fused)
        if isinstance(extent, int) and extent >= 2 * lanes:
            outer, inner = sch.split(fused, factors=[None, lanes])
            sch.vectorize(inner)
            sch.parallel(outer)
        else:
            sch.parallel(fused)
        return sch


def default_schedules():
    """The pass that schedules every unscheduled function of a Relax module for a CPU target."""
    return dlight.ApplyDefaultSchedule(ConvLike(), Injective(), dlight.cpu.GEMV(), dlight.cpu.Reduction())


def fusion_passes(target) -> list:
    """Library dispatch, legalization and operator fusion: what the compile stage and the tuner's task
    extraction both run, so tuning records match the compiled functions."""
    from tvm import relax
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    return cpu.library_dispatch_passes(target) + [relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
                                                 relax.transform.FuseOps(), relax.transform.FuseTIR()]


def apply_records(mod, database, target, stats: dict):
    """Tuned schedules from a MetaSchedule database, function by function.

    Like relax.transform.MetaScheduleApplyDatabase, except that a record whose trace cannot be
    replayed on a function leaves that function to the default schedules: TVM's pass aborts the
    whole build instead (seen on int8 Xception, where an fp32 convolution's trace meets its int8
    twin with a dequantize/requantize epilogue). ``stats`` receives the counts.
    """
    import tvm
    from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

    updates, failed, functions = {}, [], 0
    for gvar, func in mod.functions_items():
        if not isinstance(func, tirx.PrimFunc) or (func.attrs and func.attrs.get("tirx.is_scheduled")):
            continue
        functions += 1
        sch = _replayed(database, _normalize_mod(func), target, gvar.name_hint)
        if sch is None:
            continue
        if sch is False:
            failed.append(gvar.name_hint)
            continue
        scheduled = sch.mod["main"]
        if not (func.attrs and "global_symbol" in func.attrs):
            scheduled = scheduled.without_attr("global_symbol")
        updates[gvar] = scheduled.with_attr("tirx.is_scheduled", True)
    result = tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs, global_infos=mod.global_infos)
    for gvar, func in updates.items():
        result[gvar] = func
    stats.update(functions=functions, tuned=len(updates), replay_failed=failed)
    return result


def replays(database, workload, target, name: str) -> bool:
    """Whether the database's record for ``workload`` (if any) replays on it, as ``apply_records`` replays it."""
    return _replayed(database, workload, target, name) is not False


def _replayed(database, workload, target, name: str):
    """The schedule of ``workload`` with the database's record replayed on it; None when there is no record,
    False when its trace fails (TVM raises InternalError / ScheduleError)."""
    import tvm_ffi
    from tvm.s_tir.meta_schedule.trace_apply import schedule_using_anchor_trace

    record = database.query_tuning_record(workload, target, name)
    if record is None:
        return None
    sch = s_tir.Schedule(workload)
    try:
        if tvm_ffi.structural_equal(record.workload.mod, workload):
            record.trace.apply_to_schedule(sch, remove_postproc=False)
        else:                          # same anchor block, other epilogue: replay the anchor's trace
            schedule_using_anchor_trace(sch, record.trace, target)
    except Exception:  # noqa: BLE001 - keep the default schedule
        return False
    return sch


def cpu_pipeline(target, database=None, stats: dict | None = None):
    """TVM's CPU pipeline with operator fusion, tuned schedules from ``database`` (a MetaSchedule
    database, optional; ``stats`` then receives how many functions really got one) and the default
    schedules for every function still unscheduled.

    tvm.compile's own CPU default neither fuses nor folds constants. FoldConstant is left out here
    on purpose: it would fold int8 weights' dequantize into float32 constants (an int8 Xception
    library of 84 MB instead of 24 MB); without it the weights stay int8 and are dequantized inside
    the fused kernels.
    """
    import contextlib

    import tvm
    from tvm.relax.backend.cpu_generic import pipeline as cpu

    @tvm.transform.module_pass(opt_level=0)
    def _pipeline(mod, _ctx):
        with target, (database if database is not None else contextlib.nullcontext()):
            mod = tvm.transform.Sequential(fusion_passes(target))(mod)
            if database is not None:
                mod = apply_records(mod, database, target, stats if stats is not None else {})
            return tvm.transform.Sequential(
                [default_schedules()] + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))(mod)

    return _pipeline
