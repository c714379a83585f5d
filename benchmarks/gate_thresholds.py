"""The gate's thresholds: benchmarks/gates.toml read, merged ([defaults] < [models.<m>] < [models.<m>.targets.<t>])
and validated, an unknown key or an impossible value being one line that names it."""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from benchmarks.errors import BenchError
from benchmarks.runtimes import RUNTIMES

GATES_FILE = Path(__file__).resolve().parent / "gates.toml"


@dataclass(frozen=True)
class Thresholds:
    max_top1_drop_points: float = 1.0
    min_relative_accuracy: float = 0.99
    min_agreement_top1: float = 0.985
    baseline_tolerance_points: float = 0.5
    min_cross_runtime_agreement: float = 0.995
    max_size_ratio: float = 0.30
    int8_faster_runtimes: tuple[str, ...] = ("litert", "onnxruntime", "tvm")
    min_eval_images: int = 100
    max_ram_fraction: float = 0.5


FRACTIONS = ("min_relative_accuracy", "min_agreement_top1", "min_cross_runtime_agreement", "max_size_ratio",
             "max_ram_fraction")
POINTS = ("max_top1_drop_points", "baseline_tolerance_points")


def _validate(table: dict, where: str) -> dict:
    valid = [f for f in Thresholds.__dataclass_fields__]
    out = {}
    for key, value in table.items():
        if key not in valid:
            raise BenchError(f"{where}: unknown key {key!r}; valid keys: {', '.join(valid)}")
        if key in FRACTIONS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise BenchError(f"{where}: {key} = {value!r} is impossible; give a fraction between 0 and 1 "
                                 f"(e.g. 0.99 for 99%)")
        elif key in POINTS:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 100:
                raise BenchError(f"{where}: {key} = {value!r} is impossible; give percentage points between 0 and 100")
        elif key == "min_eval_images":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise BenchError(f"{where}: min_eval_images = {value!r} must be a whole number >= 1")
        elif key == "int8_faster_runtimes":
            if not isinstance(value, list) or any(v not in RUNTIMES for v in value):
                raise BenchError(f"{where}: int8_faster_runtimes = {value!r}; give a list of {', '.join(RUNTIMES)}")
            value = tuple(value)
        out[key] = value
    return out


def load_thresholds(path: Path, model: str, target: str) -> Thresholds:
    try:
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise BenchError(f"{path}: cannot read the gates file: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise BenchError(f"{path}: the gates file is not text (a binary file?); expected TOML like "
                         f"benchmarks/gates.toml") from None
    except tomllib.TOMLDecodeError as exc:
        raise BenchError(f"{path}: cannot read gates: {exc}") from None
    if not data:
        raise BenchError(f"{path}: the gates file is empty; expected TOML like benchmarks/gates.toml")
    for key in data:
        if key not in ("defaults", "models"):
            raise BenchError(f"{path.name}: unknown key {key!r}; valid keys: defaults, models")
    merged = _validate(_table(data.get("defaults", {}), f"{path.name} [defaults]"), f"{path.name} [defaults]")
    for name, table in _table(data.get("models", {}), f"{path.name} [models]").items():
        table = _table(table, f"{path.name} [models.{name}]")
        targets = _table(table.get("targets", {}), f"{path.name} [models.{name}.targets]")
        for tname, ttable in targets.items():
            _table(ttable, f"{path.name} [models.{name}.targets.{tname}]")
        if name != model:
            continue
        merged |= _validate({k: v for k, v in table.items() if k != "targets"}, f"{path.name} [models.{name}]")
        for tname, ttable in targets.items():
            if tname == target:
                merged |= _validate(ttable, f"{path.name} [models.{name}.targets.{tname}]")
    return Thresholds(**merged)


def _table(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise BenchError(f"{where} is {value!r}; expected a table of keys (see benchmarks/gates.toml)")
    return value
