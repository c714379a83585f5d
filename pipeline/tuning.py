"""`make tune`: MetaSchedule tuning of a target's TVM CPU functions, here or on boards via an RPC tracker.

    from pipeline.tuning import TuneOptions, tune_target
    summary = tune_target(TuneOptions(CompileOptions(target="host"), trials=2000))

Must hold: the functions tuned are exactly those the TVM stage compiles (same prepared model, same TFLite files);
TRIALS is the budget of the records folder, so a re-run resumes. Details: docs/tuning.md.
"""
from __future__ import annotations

import datetime
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.device import cpu_model
from benchmarks.rpc import parse_tracker
from pipeline.artifacts import Producer, linker, records_dir, tvm_spec
from pipeline.compile_options import CompileOptions, validate_options
from pipeline.compiler import needs_int8, runner_for
from pipeline.model_inputs import Prepared, prepare
from pipeline.errors import ConfigError, InputError, MissingDependencyError, StageError
from pipeline.output import TargetLock, ensure_writable
from pipeline.progress import Progress
from pipeline.targets import ARTIFACT_KINDS, Target, load_target

MAX_TRIALS = 1_000_000


@dataclass(frozen=True)
class TuneOptions:
    compile: CompileOptions
    trials: int = 1000
    rpc: str | None = None            # host:port of a TVM RPC tracker
    key: str | None = None            # device key at the tracker
    timeout_sec: float = 60.0         # per candidate build and per measurement


def _check(options: TuneOptions) -> None:
    if not 1 <= options.trials <= MAX_TRIALS:
        raise InputError(f"TRIALS={options.trials} must be between 1 and {MAX_TRIALS:,}")
    if options.compile.tuning_dir is None:
        raise ConfigError("tuning needs a records folder (tuning_dir is None)")
    if options.rpc:
        parse_tracker(options.rpc)
        if not options.key:
            raise InputError("RPC=host:port needs KEY=<device key> (the key the boards registered under)")
    elif options.key:
        raise InputError("KEY= is only used with RPC=host:port (tuning on boards through a tracker)")


def tune_target(options: TuneOptions, progress: Progress | None = None) -> dict:
    progress = progress or Progress(quiet=True)
    target = load_target(options.compile.target, options.compile.targets_dir)
    _check(options)
    validate_options(options.compile)
    precisions = [ARTIFACT_KINDS[k].precision for k in target.artifacts
                  if ARTIFACT_KINDS[k].format == "tvm" and ARTIFACT_KINDS[k].device == "cpu"]
    if not precisions:
        raise ConfigError(f"target {target.name} builds no TVM CPU library (artifacts: {', '.join(target.artifacts)}); "
                          f"tuning is for tvm-fp32 / tvm-int8 on llvm targets")
    if target.tvm.schedules != "default":
        raise ConfigError(f"target {target.name} sets tvm.schedules = {target.tvm.schedules!r}: its builds would not "
                          f"use tuning records; tune a target with the default schedules")
    native = target.arch == platform.machine()
    if not native and not options.rpc:
        raise InputError(f"target {target.name} is {target.arch} and this machine is {platform.machine()}: its "
                         f"functions must be measured on the board; give RPC=host:port KEY=<key> of a TVM RPC tracker")
    ensure_writable(options.compile.out_dir)
    runner = runner_for(options.compile, target, progress)
    progress.log(f"tuning target {target.name}: {target.description}")
    model = prepare(runner, options.compile, needs_int8(target), progress)
    records = records_dir(options.compile, target, model)
    try:
        records.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"records folder {records} cannot be created: {exc.strerror or exc}") from None
    with TargetLock(records.parent, records.name):
        producer = Producer(options.compile, target, runner, model, progress)
        sources = {p: producer.converted("tflite-int8" if p == "int8" else "tflite-fp32") for p in precisions}
        try:
            return _tune(options, target, model, records, {p: e.file(f) for p, (e, f) in sources.items()}, progress)
        except (RuntimeError, ValueError) as exc:          # TVM's errors are RuntimeErrors
            raise StageError(runner.failure("tune", "", exc) + f"; records so far are kept in {records}") from exc


def _tune(options: TuneOptions, board: Target, model: Prepared, records_dir: Path, tflites: dict,
          progress: Progress) -> dict:
    progress.log("[tune] loading TVM MetaSchedule")
    started = time.monotonic()
    try:
        import tvm
        from tvm.s_tir import meta_schedule as ms
        from tvm.target.codegen import llvm_get_system_cpu

        import xgboost  # noqa: F401 - MetaSchedule's cost model
    except ImportError as exc:
        raise MissingDependencyError(f"tuning needs {exc.name}: run `make setup` (requirements.lock pins it)") from None
    from pipeline.tvm import tuning as tvm_tuning       # registers TVM's tensor intrinsics (pipeline/tvm/intrinsics.py)

    progress.log(f"[tune] MetaSchedule and TVM's tensor intrinsics loaded in {time.monotonic() - started:.0f} s")
    spec, detect_cpu = tvm_spec(board)
    if detect_cpu:
        spec = spec | {"mcpu": llvm_get_system_cpu()}
    target = tvm.target.Target(spec)
    workers = os.cpu_count() or 1
    if options.rpc:
        host, port = parse_tracker(options.rpc)
        _check_tracker(host, port, options.key, options.rpc)
        runner = ms.runner.RPCRunner(
            rpc_config=ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=options.key,
                                           session_priority=1, session_timeout_sec=options.timeout_sec),
            max_workers=1)
        where = {"runner": "rpc", "tracker": options.rpc, "key": options.key}
    else:
        runner = ms.runner.LocalRunner(timeout_sec=options.timeout_sec)
        where = {"runner": "local", "cpu": cpu_model(), "machine": platform.node()}
    where["int8_isa"] = board.int8_isa          # the records folder is keyed by it (records.records_path)
    builder = tvm_tuning.builder(linker(board), workers, options.timeout_sec)

    tasks = []
    for precision, tflite in tflites.items():
        found = tvm_tuning.extract(tflite, target, precision)
        progress.log(f"[tune] {precision}: {len(found)} functions to tune from {tflite.name}")
        tasks += found
    started = time.monotonic()
    work = options.compile.out_dir / "logs" / f"tune-{board.name}-{model.shape_id}"
    work.mkdir(parents=True, exist_ok=True)
    progress.log(f"[tune] MetaSchedule's own log: {work / 'metaschedule.log'}")
    tuner = tvm_tuning.Tuner(target, records_dir, builder, runner, progress.log, work)
    tuner.summary |= {
        "target": board.name, "model": model.shape_id, "tvm_target": spec,
        "tuned_on": where, "trials_budget": max(options.trials, tuner.summary.get("trials_budget", 0)),
    }
    progress.log(f"[tune] {len({t.key for t in tasks})} distinct functions, budget {options.trials} trials, "
                 f"records in {records_dir}")
    summary = tuner.tune(tasks, options.trials)
    summary["updated"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    tuner.save_summary()
    return dict(summary) | {"seconds_this_run": round(time.monotonic() - started, 1), "records_dir": str(records_dir),
                            "keys": list(dict.fromkeys(t.key for t in tasks))}


def _check_tracker(host: str, port: int, key: str, text: str) -> None:
    """One clear line when the tracker is unreachable or has no device under KEY (instead of a timeout per trial)."""
    import socket

    import tvm
    from tvm import rpc

    try:                                        # TVM's own client retries for a minute before it says so
        socket.create_connection((host, port), timeout=5).close()
    except OSError as exc:
        raise InputError(f"cannot reach the TVM RPC tracker at {text}: {exc.strerror or exc}") from None
    try:
        client = rpc.connect_tracker(host, port)
        queues = client.summary().get("queue_info", {})
    except (OSError, tvm.error.TVMError, RuntimeError) as exc:
        raise InputError(f"cannot reach the TVM RPC tracker at {text}: {exc}") from None
    if key not in queues:
        known = ", ".join(sorted(queues)) or "none"
        raise InputError(f"the tracker at {text} has no device under KEY={key!r} (keys registered: {known})")


