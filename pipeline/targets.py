"""Targets are data: one TOML file per board in targets/, validated into frozen dataclasses.

The TVM target table is passed to TVM as it is (a dict or a tag); nothing parses target strings.
"""
from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchmarks.device import cpu_flags, int8_isa, int8_saturates
from pipeline.errors import ConfigError

TARGETS_DIR = Path(__file__).resolve().parent.parent / "targets"
TUNING_DIR = TARGETS_DIR / "tuning"          # make tune writes <target>/<model>/ here; commit it

# artifact kind -> (format, precision, runtime, device)
ARTIFACT_KINDS: dict[str, tuple[str, str, str, str]] = {
    "tflite-fp32": ("tflite", "fp32", "litert", "cpu"),
    "tflite-int8": ("tflite", "int8", "litert", "cpu"),
    "tflite-dynamic": ("tflite", "dynamic", "litert", "cpu"),
    "tflite-fp16": ("tflite", "fp16", "litert", "gpu"),
    "onnx-fp32": ("onnx", "fp32", "onnxruntime", "cpu"),
    "onnx-int8": ("onnx", "int8", "onnxruntime", "cpu"),
    "tvm-fp32": ("tvm", "fp32", "tvm", "cpu"),
    "tvm-int8": ("tvm", "int8", "tvm", "cpu"),
    "tvm-gpu-fp32": ("tvm", "fp32", "tvm", "gpu"),
}
ARCHES = ("aarch64", "x86_64")
GPU_APIS = ("opencl",)


# The ISA flags of this machine that the pipeline cares about, recorded for core = "host".
HOST_FEATURES = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
                 "asimd", "asimddp", "asimdhp", "sve")


@dataclass(frozen=True)
class CpuSpec:
    core: str                     # the core an emulator uses (QEMU_CPU), e.g. cortex-a72; "host" = this machine
    cores: int                    # 0 = the machine's own count (host)
    features: tuple[str, ...]     # ISA extensions the board has, Linux's names (neon, dotprod, avx2, avx512_vnni, ...)


@dataclass(frozen=True)
class GpuSpec:
    api: str
    name: str


@dataclass(frozen=True)
class TvmSpec:
    target: Any                   # a TVM tag (str) or target dict, passed through untouched
    host: Any = None              # host target for GPU targets (dict or tag)
    cross_compiler: str = ""      # e.g. aarch64-linux-gnu-gcc; empty = native
    schedules: str = "default"    # CPU builds: "default" schedules, or "none" (TVM's bare output)


@dataclass(frozen=True)
class BenchSpec:
    threads: int                  # 0 = all cores


@dataclass(frozen=True)
class Target:
    name: str
    description: str
    arch: str
    artifacts: tuple[str, ...]
    cpu: CpuSpec
    bench: BenchSpec
    gpu: GpuSpec | None = None
    tvm: TvmSpec | None = None

    @property
    def int8_isa(self) -> str:
        """The board's int8 dot-product instruction set (avx512-vnni, avx-vnni, avx2, sse, sdot, neon)."""
        return int8_isa(self.arch, self.cpu.features)

    @property
    def int8_saturates(self) -> bool:
        """Whether ONNX Runtime's default (u8 x s8) int8 kernels saturate on this board's CPU."""
        return int8_saturates(self.arch, self.int8_isa)

    def to_dict(self) -> dict:
        return asdict(self) | {"int8_isa": self.int8_isa}


def available_targets(folder: Path = TARGETS_DIR) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.toml"))


def load_target(name: str, folder: Path = TARGETS_DIR) -> Target:
    valid = available_targets(folder)
    if name not in valid:
        raise ConfigError(f"unknown target {name!r}; valid targets: {', '.join(valid) or '(none)'} "
                          f"(add a board as {folder}/<name>.toml)")
    return parse_target(name, folder / f"{name}.toml")


def parse_target(name: str, path: Path) -> Target:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read target file: {exc.strerror}") from None
    where = path.name
    top = _keys(data, where, required=("description", "arch", "artifacts", "cpu", "bench"),
                optional=("gpu", "tvm"))
    arch = _choice(top["arch"], f"{where}: arch", ARCHES)
    artifacts = _str_list(top["artifacts"], f"{where}: artifacts")
    for kind in artifacts:
        _choice(kind, f"{where}: artifacts entry", tuple(ARTIFACT_KINDS))
    if not artifacts:
        raise ConfigError(f"{where}: artifacts is empty; list at least one of {', '.join(ARTIFACT_KINDS)}")
    cpu = _keys(top["cpu"], f"{where}: [cpu]", required=("core", "cores"), optional=("features",))
    features = tuple(_str_list(cpu.get("features", []), f"{where}: cpu.features"))
    if cpu["core"] == "host":       # this machine: its ISA is detected, not written down
        features = tuple(sorted(set(features) | (set(cpu_flags()) & set(HOST_FEATURES))))
    bench = _keys(top["bench"], f"{where}: [bench]", required=("threads",))
    gpu = tvm = None
    if "gpu" in top:
        g = _keys(top["gpu"], f"{where}: [gpu]", required=("api", "name"))
        gpu = GpuSpec(api=_choice(g["api"], f"{where}: gpu.api", GPU_APIS), name=_str(g["name"], f"{where}: gpu.name"))
    if "tvm" in top:
        t = _keys(top["tvm"], f"{where}: [tvm]", required=("target",), optional=("host", "cross_compiler", "schedules"))
        for key in ("target", "host"):
            if key in t and not isinstance(t[key], (str, dict)):
                raise ConfigError(f"{where}: tvm.{key} must be a TVM tag (string) or a table, "
                                  f"got {type(t[key]).__name__}")
        tvm = TvmSpec(target=t["target"], host=t.get("host"),
                      cross_compiler=_str(t.get("cross_compiler", ""), f"{where}: tvm.cross_compiler"),
                      schedules=_choice(t.get("schedules", "default"), f"{where}: tvm.schedules", ("default", "none")))
    if tvm is None and any(k.startswith("tvm-") for k in artifacts):
        raise ConfigError(f"{where}: artifacts ask for TVM builds but there is no [tvm] table with a target")
    if gpu is None and "tvm-gpu-fp32" in artifacts:
        raise ConfigError(f"{where}: tvm-gpu-fp32 needs a [gpu] table (api = \"opencl\")")
    if tvm is not None:
        _check_processor(where, artifacts, tvm)
    return Target(
        name=name,
        description=_str(top["description"], f"{where}: description"),
        arch=arch,
        artifacts=tuple(artifacts),
        cpu=CpuSpec(core=_str(cpu["core"], f"{where}: cpu.core"),
                    cores=_count(cpu["cores"], f"{where}: cpu.cores"),
                    features=features),
        bench=BenchSpec(threads=_count(bench["threads"], f"{where}: bench.threads")),
        gpu=gpu,
        tvm=tvm,
    )


def _tvm_kind(spec: Any) -> str:
    """The kind of a TVM target (llvm, opencl, ...) when the file says it; "" for a tag TVM alone can read."""
    if isinstance(spec, dict):
        return str(spec.get("kind", ""))
    first = (str(spec).split() or [""])[0]
    return first if first in ("llvm", "opencl", "vulkan", "cuda", "metal") else ""


def _check_processor(where: str, artifacts: list[str], tvm: TvmSpec) -> None:
    """Each TVM artifact kind is built for the processor it names: a CPU kind never from a GPU target (it
    would become an OpenCL module labelled cpu), a GPU kind never from an llvm target (a CPU-only library)."""
    kind = _tvm_kind(tvm.target)
    if not kind:
        return
    cpu_kinds = [k for k in artifacts if k.startswith("tvm-") and ARTIFACT_KINDS[k][3] == "cpu"]
    gpu_kinds = [k for k in artifacts if k.startswith("tvm-") and ARTIFACT_KINDS[k][3] == "gpu"]
    if cpu_kinds and kind != "llvm":
        raise ConfigError(f"{where}: {', '.join(cpu_kinds)} run on the CPU but tvm.target is a {kind} (GPU) target; "
                          f"a target file has one TVM target: list the CPU kinds with tvm.target kind = \"llvm\", "
                          f"or tvm-gpu-fp32 with kind = \"{kind}\" (a second file for the other processor)")
    if gpu_kinds and kind == "llvm":
        raise ConfigError(f"{where}: {', '.join(gpu_kinds)} runs on the GPU but tvm.target is llvm (the CPU); set "
                          f"tvm.target = {{ kind = \"opencl\", device = \"mali\" }} and tvm.host to the board's CPU")


def _keys(table: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict:
    if not isinstance(table, dict):
        raise ConfigError(f"{where} must be a table, got {type(table).__name__}")
    valid = required + optional
    for key in table:
        if key not in valid:
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: {', '.join(valid)}")
    for key in required:
        if key not in table:
            raise ConfigError(f"{where}: missing key {key!r}; required keys: {', '.join(required)}")
    return table


def _str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    return value


def _str_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be a list of strings, got {value!r}")
    return value


def _count(value: Any, where: str) -> int:
    """A core or thread count: a positive integer, or 0 for "all cores of the machine it runs on"."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"{where} must be a whole number >= 0 (0 = all cores), got {value!r}")
    return value


def _choice(value: Any, where: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ConfigError(f"{where} {value!r} is not valid; valid: {', '.join(valid)}")
    return value
