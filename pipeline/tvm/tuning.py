"""MetaSchedule tuning of the TVM stage's functions, with records kept per target and model: MetaSchedule's JSON
database and tuning.json, our summary (trials, best tuned time and our default schedule's time per function).
Tuning runs one function at a time and publishes each with os.replace: an interrupted run loses at most the
function in progress. This module imports TVM. Details: docs/tuning.md and docs/internals.md (module notes).
"""
from __future__ import annotations

import functools
import gzip
import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from pathlib import Path

import tvm
from tvm.s_tir import meta_schedule as ms

from benchmarks.files import write_text_atomic
from pipeline.errors import InputError, first_line
from pipeline.tvm.dot import isa_for
from pipeline.tvm.int8 import import_tflite
from pipeline.tvm.link import linker_options
from pipeline.tvm.records import MIN_GAIN, TUNING_FILES, Task, allocate, uses_tuned
from pipeline.tvm.schedules import default_schedules, fusion_passes

SUMMARY, WORKLOADS_GZ, RECORDS_GZ = TUNING_FILES
WORKLOADS_JSON, RECORDS_JSON = (name.removesuffix(".gz") for name in (WORKLOADS_GZ, RECORDS_GZ))  # what MetaSchedule reads
FORMAT = 1
MAX_TRIALS_PER_ITER = 64
# Functions are identified by their anchor block (the convolution / matmul / pooling at their core):
# int8 functions carry their activation scales as constants, so with plain structural equality a
# re-calibrated model would match none of its records. MetaSchedule replays a record's trace on any
# function with the same anchor block.
MODULE_EQUALITY = "anchor-block"
FAILED = 1e9            # MetaSchedule's run time for a candidate that failed to build or run


def extract(tflite_path: Path, target, precision: str) -> list[Task]:
    """The fused TIR functions of a TFLite model, exactly as the compile stage's pipeline fuses them."""
    from tvm.s_tir.analysis import estimate_tir_flops

    with target:
        from pipeline.tvm.conv_tiles import vector_lanes
        from pipeline.tvm.packing import pack_pointwise

        packed = pack_pointwise(import_tflite(tflite_path, isa_for(target)), vector_lanes(target))
        fused = tvm.transform.Sequential(fusion_passes(target))(packed)
    keys = ms.database.MemoryDatabase(module_equality=MODULE_EQUALITY)
    tasks = []
    for extracted in ms.relax_integration.extract_tasks(fused, target, module_equality=MODULE_EQUALITY):
        mod = extracted.dispatched[0]
        main = mod["main"] if "main" in [g.name_hint for g in mod.get_global_vars()] else None
        if main is not None and main.attrs and main.attrs.get("tirx.is_scheduled"):
            continue                      # the dot-product functions: scheduled by pipeline/tvm/dot.py
        try:
            flops = float(estimate_tir_flops(mod))
        except Exception:  # noqa: BLE001 - TVM cannot estimate some functions: count them as cheap
            flops = 1.0
        tasks.append(Task(workload_key(keys, mod), extracted.task_name, precision, int(extracted.weight), mod,
                          max(flops, 1.0)))
    return tasks


def workload_key(database, mod) -> str:
    return str(database.commit_workload(mod).as_json()[0])


def build_candidate(mod, target, _params):
    """The builder's f_build: MetaSchedule's default without importing tvm.s_tir.tensor_intrin, which
    takes 15 s per builder process (LocalBuilder starts new processes for every batch); candidates
    arrive already tensorized, so the build does not need the intrinsics registered."""
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    return tvm.compile(RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod), target=target)


def export_candidate(linker: str, rt_mod) -> str:
    """The builder's f_export: a shared library linked here (a board running the RPC server needs no
    compiler), with the same linker as the compile stage."""

    folder = tempfile.mkdtemp(prefix="tvm-candidate-")
    path = os.path.join(folder, "candidate.so")
    rt_mod.export_library(path, **linker_options(linker))
    return path


def builder(linker: str, workers: int, timeout_sec: float = 60.0):
    return ms.builder.LocalBuilder(max_workers=workers, timeout_sec=timeout_sec, f_build=build_candidate,
                                   f_export=functools.partial(export_candidate, linker))


def read_summary(folder: Path) -> dict:
    path = folder / SUMMARY
    if not path.exists():
        return {"format": FORMAT, "tasks": {}}
    summary = json.loads(path.read_text())
    if summary.get("format") != FORMAT:
        raise InputError(f"{path}: tuning records in format {summary.get('format')!r}; this version reads format "
                         f"{FORMAT} (re-tune with `make tune`, or check out the records that match this version)")
    return summary


class Tuner:
    """Tunes tasks into a records folder with one builder and runner (local or over RPC)."""

    def __init__(self, target, records_dir: Path, builder, runner, log, work_dir: Path):
        self.target, self.records_dir, self.builder, self.runner, self.log = target, records_dir, builder, runner, log
        self.work_dir = work_dir
        records_dir.mkdir(parents=True, exist_ok=True)
        for stale in records_dir.glob(".tuning-*"):          # left by a run that was killed mid-function
            shutil.rmtree(stale, ignore_errors=True)
        self.summary = read_summary(records_dir)
        self._quiet_metaschedule(work_dir / "metaschedule.log")

    def _quiet_metaschedule(self, log_file: Path) -> None:
        """MetaSchedule logs every round's tables to the console: they go to a file instead."""
        handler = logging.FileHandler(log_file, mode="a")
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        for name in ("tvm.s_tir.meta_schedule", "tvm.meta_schedule"):
            logger = logging.getLogger(name)
            logger.handlers = [handler]
            logger.propagate = False
            logger.setLevel(logging.INFO)

    def measure(self, mods: list) -> list[float]:
        """Run time in ms of scheduled functions, built and run like tuning candidates: one builder batch and
        one runner batch for all of them (a batch starts the builder's worker processes once)."""
        built = self.builder.build([ms.builder.BuilderInput(mod, self.target) for mod in mods])
        try:
            failed = next((b.error_msg for b in built if b.error_msg), None)
            if failed:
                raise RuntimeError(f"building the default schedule failed: {failed.splitlines()[-1]}")
            device = "cpu" if self.target.kind.name == "llvm" else self.target.kind.name
            inputs = [ms.runner.RunnerInput(b.artifact_path, device,
                                            ms.arg_info.ArgInfo.from_prim_func(next(iter(mod.functions.values()))))
                      for mod, b in zip(mods, built)]
            results = [future.result() for future in self.runner.run(inputs)]
        finally:
            for b in built:
                if b.artifact_path:
                    shutil.rmtree(os.path.dirname(b.artifact_path), ignore_errors=True)
        failed = next((r.error_msg for r in results if r.error_msg), None)
        if failed:
            raise RuntimeError(f"running the default schedule failed: {failed.splitlines()[-1]}")
        return [1e3 * sum(float(s) for s in r.run_secs) / len(r.run_secs) for r in results]

    def default_ms(self, tasks: list[Task]) -> list[float]:
        """Our default schedule's run time for each task (the yardstick a tuned schedule must beat)."""
        scheduled = []
        for task in tasks:
            copy = tvm.IRModule(dict(task.mod.functions.items()))   # dlight's pass updates its input in place
            with self.target:
                scheduled.append(default_schedules()(copy))
        return self.measure(scheduled)

    def tune(self, tasks: list[Task], trials: int) -> dict:
        plan = allocate(tasks, trials)
        precisions: dict[str, set] = {}
        calls: dict[str, int] = {}
        for t in tasks:            # functions with the same anchor block (e.g. fp32 and int8 convolutions) are one
            precisions.setdefault(t.key, set()).add(t.precision)
            calls[t.key] = calls.get(t.key, 0) + t.weight
        seen: set[str] = set()
        order = [t for t in tasks if not (t.key in seen or seen.add(t.key))]
        for task in order:
            entry = self.summary["tasks"].setdefault(task.key, {"name": task.name, "trials": 0, "best_ms": None,
                                                                "default_ms": None, "exhausted": False})
            entry |= {"name": task.name, "precision": "+".join(sorted(precisions[task.key])),
                      "calls": calls[task.key], "flops": task.flops}
        unmeasured = [t for t in order if self.summary["tasks"][t.key]["default_ms"] is None]
        if unmeasured:
            started = time.monotonic()
            for task, value in zip(unmeasured, self.default_ms(unmeasured)):
                self.summary["tasks"][task.key]["default_ms"] = round(value, 5)
            self.save_summary()
            self.log(f"  default schedules of {len(unmeasured)} function(s) measured "
                     f"({time.monotonic() - started:.0f} s)")
        for index, task in enumerate(order, 1):
            entry = self.summary["tasks"][task.key]
            precision = entry["precision"]
            head = f"  [{index}/{len(order)}] {precision} {task.name}"
            remaining = plan[task.key] - entry["trials"]
            if plan[task.key] == 0:
                self.log(f"{head}: no trials at this budget (default schedule {_ms(entry['default_ms'])})")
                continue
            # fewer candidates than asked means the search space is used up (failed candidates count too)
            if remaining <= 0 or entry["exhausted"]:
                self.log(f"{head}: done before ({entry['trials']} trials, best {_ms(entry['best_ms'])}, "
                         f"default schedule {_ms(entry['default_ms'])})")
                continue
            if task.mod.functions and any(f.attrs and f.attrs.get("tirx.is_scheduled") for f in task.mod.functions.values()):
                raise RuntimeError(f"{task.name} is already scheduled: nothing to tune")
            self.log(f"{head}: {remaining} trials (of {plan[task.key]}), default schedule {_ms(entry['default_ms'])}")
            started = time.monotonic()
            measured, best = self._tune_one(task, remaining)
            entry["trials"] += measured
            entry["exhausted"] = measured < remaining
            if best is not None and (entry["best_ms"] is None or best < entry["best_ms"]):
                entry["best_ms"] = round(best, 5)
            self.save_summary()
            verdict = ("used" if uses_tuned(entry) else f"not used (needs {MIN_GAIN:.0%} faster)")
            self.log(f"{head}: best {_ms(entry['best_ms'])} after {entry['trials']} trials "
                     f"({time.monotonic() - started:.0f} s) against the default {_ms(entry['default_ms'])}: {verdict}")
        self.check_replay(tasks)
        return self.summary

    def check_replay(self, tasks: list[Task]) -> None:
        """Replay each function's best record on every function of the model it serves, now, not at compile
        time: a record whose trace fails on its own function is marked ``replay_failed`` and never applied
        (records.uses_tuned); one that fails on a twin (the same anchor block, another epilogue) is named."""
        from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

        from pipeline.tvm.schedules import replays

        if not (self.records_dir / RECORDS_GZ).exists():
            return
        with tempfile.TemporaryDirectory(prefix="replay-check-") as plain:
            unpack(self.records_dir, Path(plain))
            database = _load_database(Path(plain) / WORKLOADS_JSON, Path(plain) / RECORDS_JSON)
            for task in tasks:
                entry = self.summary["tasks"].get(task.key)
                if not entry or entry.get("best_ms") is None:
                    continue
                own = task.name == entry["name"]
                for gvar, func in task.mod.functions_items():
                    if replays(database, _normalize_mod(func), self.target, gvar.name_hint):
                        continue
                    failed = entry.setdefault("replay_failed_on", [])
                    if task.name not in failed:
                        failed.append(task.name)
                    entry["replay_failed"] = entry.get("replay_failed", False) or own
                    self.log(f"  {task.name}: its tuned schedule cannot be replayed"
                             f"{'' if own else ' on this twin of ' + entry['name']}: "
                             f"{'never applied' if own else 'this function keeps the default schedule'}")
        self.save_summary()

    def _tune_one(self, task: Task, trials: int) -> tuple[int, float | None]:
        staging = Path(tempfile.mkdtemp(dir=self.records_dir, prefix=".tuning-"))
        try:
            unpack(self.records_dir, staging)
            database = ms.database.JSONDatabase(path_workload=str(staging / WORKLOADS_JSON),
                                                path_tuning_record=str(staging / RECORDS_JSON), allow_missing=True,
                                                module_equality=MODULE_EQUALITY)
            before = _lines(staging / RECORDS_JSON)
            context = ms.TuneContext(mod=task.mod, target=self.target, space_generator="post-order-apply",
                                     search_strategy="evolutionary", task_name=task.name,
                                     logger=logging.getLogger("tvm.s_tir.meta_schedule"),
                                     rand_state=zlib.crc32(task.key.encode()) % (2 ** 31 - 1), num_threads="physical")
            ms.tune_tasks(tasks=[context.clone()], task_weights=[1.0], work_dir=str(self.work_dir),
                          max_trials_global=trials, num_trials_per_iter=min(trials, MAX_TRIALS_PER_ITER),
                          builder=self.builder, runner=self.runner, database=database, cost_model="xgb",
                          task_scheduler="round-robin", module_equality=MODULE_EQUALITY)
            measured = _lines(staging / RECORDS_JSON) - before
            dropped = drop_unloadable(staging / WORKLOADS_JSON, staging / RECORDS_JSON, before, _load_database)
            if dropped:
                self.log(f"    {dropped} record(s) of {task.name} dropped: MetaSchedule wrote them but cannot read "
                         f"them back (their trace fails to replay); the records folder would not load with them")
                database = _load_database(staging / WORKLOADS_JSON, staging / RECORDS_JSON)
            best = best_ms(database, task.mod)
            for name in (WORKLOADS_JSON, RECORDS_JSON):
                if (staging / name).exists():
                    pack(staging / name, self.records_dir / f"{name}.gz")
            return measured, best
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def save_summary(self) -> None:
        write_text_atomic(self.records_dir / SUMMARY, json.dumps(self.summary, indent=1, sort_keys=True) + "\n")


def unpack(records_dir: Path, folder: Path) -> None:
    """MetaSchedule's plain JSON files in ``folder`` from a records folder's gzipped ones."""
    for name in (WORKLOADS_JSON, RECORDS_JSON):
        packed = records_dir / f"{name}.gz"
        if packed.exists():
            with gzip.open(packed, "rb") as src, open(folder / name, "wb") as dst:
                shutil.copyfileobj(src, dst)


def pack(plain: Path, packed: Path) -> None:
    """Gzip ``plain`` into ``packed`` atomically; mtime 0, so the same records give the same bytes
    (and the compile stage's cache key does not change)."""
    handle, tmp = tempfile.mkstemp(dir=packed.parent, prefix=f".{packed.name}.", suffix=".tmp")
    with os.fdopen(handle, "wb") as raw, open(plain, "rb") as src:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as dst:
            shutil.copyfileobj(src, dst)
    os.chmod(tmp, 0o644)
    os.replace(tmp, packed)


def _load_database(workloads: Path, records: Path):
    return ms.database.JSONDatabase(path_workload=str(workloads), path_tuning_record=str(records),
                                    allow_missing=False, module_equality=MODULE_EQUALITY)


def drop_unloadable(workloads: Path, records: Path, first_new: int, load) -> int:
    """Remove the records after the first ``first_new`` that ``load(workloads, records)`` cannot read back.

    TVM 0.27's MetaSchedule can write a record whose trace it then fails to replay when the database is
    opened (seen on a max pooling fused with an integer residual add); one such line makes the whole
    records folder unreadable for `make compile`. Only this run's lines are checked, one at a time, and
    only when the file as a whole fails to load. Returns how many were dropped."""
    try:
        load(workloads, records)
        return 0
    except Exception:  # noqa: BLE001 - TVM reports a failed replay as a bare RuntimeError from a worker thread
        pass
    lines = [line for line in records.read_text().splitlines() if line.strip()]
    kept, dropped = lines[:first_new], 0
    with tempfile.TemporaryDirectory(prefix="record-check-") as tmp:
        single = Path(tmp) / RECORDS_JSON
        for line in lines[first_new:]:
            single.write_text(line + "\n")
            try:
                load(workloads, single)
            except Exception:  # noqa: BLE001 - as above
                dropped += 1
                continue
            kept.append(line)
    write_text_atomic(records, "".join(line + "\n" for line in kept))
    load(workloads, records)          # the earlier lines loaded before this run; if not, say so loudly
    return dropped


def best_ms(database, mod) -> float | None:
    if not database.has_workload(mod):
        return None
    top = database.get_top_k(database.commit_workload(mod), 1)
    if not top or not top[0].run_secs:
        return None
    secs = [float(s) for s in top[0].run_secs]
    value = 1e3 * sum(secs) / len(secs)
    return None if value >= FAILED * 1e3 else value


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open() as f:
        return sum(1 for line in f if line.strip())


def _ms(value) -> str:
    return "-" if value is None else f"{value:.3f} ms"


def winning_database(summary_file: Path, workloads_gz: Path, records_gz: Path):
    """A MemoryDatabase with the tuned schedules that beat the default ones, and what it holds."""
    summary = read_summary(summary_file.parent)
    winners = {key for key, e in summary["tasks"].items() if uses_tuned(e)}
    with tempfile.TemporaryDirectory(prefix="tuning-records-") as plain:
        unpack(workloads_gz.parent, Path(plain))
        try:
            source = _load_database(Path(plain) / WORKLOADS_JSON, Path(plain) / RECORDS_JSON)
        except Exception as exc:  # noqa: BLE001 - TVM's failed replays are bare RuntimeErrors
            raise InputError(f"the tuning records in {workloads_gz.parent} cannot be read by TVM "
                             f"({first_line(exc)}); compile with TUNED=0, or "
                             f"tune into a fresh TUNING_DIR (this version's make tune drops such records)") from None
        all_records = source.get_all_tuning_records()
    chosen = ms.database.MemoryDatabase(module_equality=MODULE_EQUALITY)
    keys = ms.database.MemoryDatabase(module_equality=MODULE_EQUALITY)
    for record in all_records:
        mod = record.workload.mod
        if workload_key(keys, mod) not in winners:
            continue
        workload = chosen.commit_workload(mod)
        chosen.commit_tuning_record(ms.database.TuningRecord(record.trace, workload, record.run_secs,
                                                             record.target, record.args_info))
    return chosen, winners, summary
