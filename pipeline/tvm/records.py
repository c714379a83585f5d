"""Tuning records (TVM-free): the files of a records folder and when a tuned schedule is used.

A records folder written by `make tune` holds our summary first, then MetaSchedule's JSON database,
gzipped (Xception: 10 MB of JSON -> 0.4 MB, for users who commit it).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

TUNING_FILES = ("tuning.json", "database_workload.json.gz", "database_tuning_record.json.gz")


def records_path(tuning_dir: Path, target: str, model_shape_id: str, isa: str) -> Path:
    """Where `make tune` keeps the MetaSchedule records of one target and model, tuned on a CPU with the int8
    instruction set ``isa`` (benchmarks.device.int8_isa: avx512-vnni, avx-vnni, avx2, sse, sdot, neon). A schedule
    tuned for one instruction set is not the best, or not valid, on another: the host records of an AVX2 machine
    covered 21 of 36 fp32 functions on an AVX-512 VNNI one, and one of them could not be replayed there."""
    return Path(tuning_dir) / target / isa / model_shape_id


def records_elsewhere(tuning_dir: Path, target: str, model_shape_id: str, isa: str) -> list[str]:
    """The other instruction sets with records of this target and model (never applied here: said instead)."""
    folder = Path(tuning_dir) / target
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir()
                  if p.name != isa and (p / model_shape_id / TUNING_FILES[0]).exists())

# A tuned schedule replaces the default one only when it measured at least this much faster: the
# runner measures a function alone, with warm caches, and a marginal win there can be a loss inside
# the model (seen on Xception 299 int8: tuned weight casts, 0.007 vs 0.007 ms alone, took 13 ms per
# inference in the model; the int8 library ran 129 ms with them, 99 ms without).
MIN_GAIN = 0.10


def uses_tuned(entry: dict) -> bool:
    """Whether compile applies this function's tuned schedule (it beat the default one by MIN_GAIN, and its trace
    replayed on its own function when it was written)."""
    best, default = entry.get("best_ms"), entry.get("default_ms")
    return (best is not None and default is not None and best <= default * (1 - MIN_GAIN)
            and not entry.get("replay_failed"))


def estimate(summary: dict, keys) -> dict:
    """Default vs chosen time summed over functions (x calls), each function's tuned schedule counted
    only where it beat the default one, as compile applies them."""
    default = chosen = 0.0
    for key in keys:
        entry = summary["tasks"].get(key)
        if not entry or entry.get("default_ms") is None:
            continue
        calls = entry.get("calls", 1)
        default += calls * entry["default_ms"]
        chosen += calls * (entry["best_ms"] if uses_tuned(entry) else entry["default_ms"])
    return {"default_ms_sum": round(default, 3), "chosen_ms_sum": round(chosen, 3),
            "ratio": round(default / chosen, 3) if chosen else None}


@dataclass
class Task:
    key: str            # workload structural hash, as MetaSchedule's database writes it
    name: str
    precision: str
    weight: int         # calls per inference
    mod: Any            # the function as a tvm.IRModule (this module imports no TVM)
    flops: float


def allocate(tasks: list[Task], trials: int) -> dict[str, int]:
    """TRIALS split over the functions: a third evenly, two thirds by share of the model's FLOPs
    (calls x FLOPs per call); a function shared by fp32 and int8 models is tuned once."""
    unique: dict[str, float] = {}
    for task in tasks:
        unique[task.key] = unique.get(task.key, 0.0) + task.weight * task.flops
    total = sum(unique.values())
    return {key: int(trials * (1 / 3 / len(unique) + 2 / 3 * cost / total)) for key, cost in unique.items()}
