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

@dataclass(frozen=True)
class ArtifactKind:
    """One artifact kind: the one record of what it is and how it is made (no other table lists kinds)."""
    format: str                     # tflite | onnx | tvm
    precision: str                  # fp32 | int8 | dynamic | fp16
    runtime: str                    # one of benchmarks.runtimes.RUNTIMES
    device: str                     # cpu | gpu
    extension: str                  # the file's suffix
    needs_calibration: bool = False     # made from the calibration images (static int8)


ARTIFACT_KINDS: dict[str, ArtifactKind] = {
    "tflite-fp32": ArtifactKind("tflite", "fp32", "litert", "cpu", "tflite"),
    "tflite-int8": ArtifactKind("tflite", "int8", "litert", "cpu", "tflite", needs_calibration=True),
    "tflite-dynamic": ArtifactKind("tflite", "dynamic", "litert", "cpu", "tflite"),
    "tflite-fp16": ArtifactKind("tflite", "fp16", "litert", "gpu", "tflite"),
    "onnx-fp32": ArtifactKind("onnx", "fp32", "onnxruntime", "cpu", "onnx"),
    "onnx-int8": ArtifactKind("onnx", "int8", "onnxruntime", "cpu", "onnx", needs_calibration=True),
    "tvm-fp32": ArtifactKind("tvm", "fp32", "tvm", "cpu", "so"),
    "tvm-int8": ArtifactKind("tvm", "int8", "tvm", "cpu", "so"),
    "tvm-gpu-fp32": ArtifactKind("tvm", "fp32", "tvm", "gpu", "so"),
    "tvm-gpu-fp16": ArtifactKind("tvm", "fp16", "tvm", "gpu", "so"),      # fp16 compute, fp32 input and output
}
ARCHES = ("aarch64", "x86_64")
GPU_APIS = ("opencl",)


# The ISA flags of this machine that the pipeline cares about, recorded for core = "host".
HOST_FEATURES = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8",
                 "asimd", "asimddp", "asimdhp", "sve")


@dataclass(frozen=True)
class Cluster:
    """One group of identical cores (a big.LITTLE board has two or three)."""
    name: str
    core: str                     # the core an emulator uses (QEMU_CPU), e.g. cortex-a76; "host" = this machine
    cores: int                    # 0 = the machine's own count (host)
    features: tuple[str, ...]     # ISA extensions, Linux's names (neon, dotprod, fp16, avx2, avx512_vnni, ...)
    cpus: tuple[int, ...] = ()    # Linux CPU numbers of these cores on the board; () = not known, not pinned


@dataclass(frozen=True)
class CpuSpec:
    """The cluster the CPU artifacts are built for, emulated as and benchmarked on (bench.cluster), plus
    every cluster of the board. core / cores / features / cpus are that cluster's."""
    core: str
    cores: int
    features: tuple[str, ...]
    cpus: tuple[int, ...] = ()
    cluster: str = "cpu"
    clusters: tuple[Cluster, ...] = ()


@dataclass(frozen=True)
class GpuSpec:
    api: str
    name: str


@dataclass(frozen=True)
class TvmSpec:
    cpu: Any = None               # TVM target (llvm) of the CPU artifacts (tvm-fp32, tvm-int8): a tag or a table
    gpu: Any = None               # TVM target (opencl) of the GPU artifacts (tvm-gpu-fp32)
    gpu_host: Any = None          # the host code of the GPU artifacts; default: tvm.cpu (the board's CPU)
    linker: str = "zig"           # "zig": the pinned zig cc (pipeline/tvm/link.py), or a linker command
    schedules: str = "default"    # CPU builds: "default" schedules, or "none" (TVM's bare output)

    def target_for(self, device: str) -> tuple[Any, Any]:
        """(TVM target, host) for an artifact on "cpu" or "gpu", passed to TVM untouched."""
        if device == "gpu":
            return self.gpu, self.gpu_host if self.gpu_host is not None else self.cpu
        return self.cpu, None


@dataclass(frozen=True)
class BenchSpec:
    threads: int                  # 0 = all cores of the bench cluster
    cluster: str = "cpu"          # which cluster the benchmark runs on (pinned to its cpus when known)


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
    os: str = "linux"             # linux | android (OSES): what the board runs, and so what it can load
    ram_mb: int = 0               # the board's RAM (its smallest common model), MB; 0 = this machine's

    @property
    def on_a_phone(self) -> str:
        """What a phone runs of this target's artifacts (Android targets); "" elsewhere."""
        return ANDROID_RUNS if self.os == "android" else ""

    @property
    def int8_isa(self) -> str:
        """The board's int8 dot-product instruction set (avx512-vnni, avx-vnni, avx2, sse, sdot, neon)."""
        return int8_isa(self.arch, self.cpu.features)

    @property
    def int8_saturates(self) -> bool:
        """Whether ONNX Runtime's default (u8 x s8) int8 kernels saturate on this board's CPU."""
        return int8_saturates(self.arch, self.int8_isa)

    def to_dict(self) -> dict:
        return asdict(self) | {"int8_isa": self.int8_isa, "ram_mb": self.ram_mb or host_ram_mb()}


OSES = ("linux", "android")
ANDROID_RUNS = ("on a phone, the TFLite artifacts run in LiteRT (CPU with XNNPACK; fp16 on the GPU delegate) and the "
                "ONNX ones in ONNX Runtime Mobile, inside your app")
# Why no TVM library is built for Android: a TVM library needs libtvm_runtime.so built for Android's C library
# (bionic), which no package registry has, and our OpenCL runtime links against glibc (docs/targets.md).
ANDROID_NO_TVM = ("TVM libraries cannot be loaded on Android: they need TVM's runtime built for Android (bionic), "
                  "which no package registry has")


def host_ram_mb() -> int:
    """This machine's RAM in MB (MemTotal), the RAM of a target whose ram_mb is 0; 0 where /proc says nothing."""
    try:
        line = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal:"))
        return int(line.split()[1]) // 1024
    except (OSError, StopIteration, ValueError, IndexError):
        return 0


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
        data = tomllib.loads(path.read_bytes().decode("utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: the target file is not text (a binary file?); expected TOML like "
                          f"targets/rpi4.toml") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read target file: {exc.strerror}") from None
    where = str(path)               # the folder too: a user's TARGETS_DIR= file is told from ours
    top = _keys(data, where, required=("description", "arch", "artifacts", "cpu", "bench"),
                optional=("gpu", "tvm", "os", "ram_mb"))
    os_name = _choice(top.get("os", "linux"), f"{where}: os", OSES)
    ram_mb = top.get("ram_mb", 0)
    if not isinstance(ram_mb, int) or isinstance(ram_mb, bool) or ram_mb < 0:
        raise ConfigError(f"{where}: ram_mb must be the board's RAM in MB, a whole number (e.g. 1024 for 1 GB; 0 = "
                          f"this machine's), got {ram_mb!r}")
    arch = _choice(top["arch"], f"{where}: arch", ARCHES)
    artifacts = _str_list(top["artifacts"], f"{where}: artifacts")
    for kind in artifacts:
        _choice(kind, f"{where}: artifacts entry", tuple(ARTIFACT_KINDS))
    if not artifacts:
        raise ConfigError(f"{where}: artifacts is empty; list at least one of {', '.join(ARTIFACT_KINDS)}")
    clusters = _clusters(top["cpu"], where)
    bench = _keys(top["bench"], f"{where}: [bench]", required=("threads",), optional=("cluster",))
    names = [c.name for c in clusters]
    if "cluster" in bench:
        chosen = _choice(bench["cluster"], f"{where}: bench.cluster", tuple(names))
    elif len(clusters) == 1:
        chosen = names[0]
    else:
        raise ConfigError(f"{where}: the board has {len(clusters)} CPU clusters ({', '.join(names)}); say which one "
                          f"the CPU artifacts are built for and benchmarked on with bench.cluster")
    run_on = clusters[names.index(chosen)]
    threads = _count(bench["threads"], f"{where}: bench.threads")
    if run_on.cores and threads > run_on.cores:
        raise ConfigError(f"{where}: bench.threads = {threads} but cluster {run_on.name!r} has {run_on.cores} cores; "
                          f"threads beyond a cluster's cores would run on other cores or share them")
    gpu = tvm = None
    if "gpu" in top:
        g = _keys(top["gpu"], f"{where}: [gpu]", required=("api", "name"))
        gpu = GpuSpec(api=_choice(g["api"], f"{where}: gpu.api", GPU_APIS), name=_str(g["name"], f"{where}: gpu.name"))
    if "tvm" in top:
        tvm = _tvm(top["tvm"], where)
    _check_processor(where, artifacts, tvm, gpu)
    _check_android(where, os_name, artifacts, tvm)
    if tvm is not None:
        _check_features(where, tvm.cpu, run_on)
    return Target(
        name=name,
        description=_str(top["description"], f"{where}: description"),
        arch=arch,
        artifacts=tuple(artifacts),
        cpu=CpuSpec(core=run_on.core, cores=run_on.cores, features=run_on.features, cpus=run_on.cpus,
                    cluster=run_on.name, clusters=tuple(clusters)),
        bench=BenchSpec(threads=threads, cluster=run_on.name),
        gpu=gpu,
        tvm=tvm,
        os=os_name,
        ram_mb=ram_mb,
    )


def _check_android(where: str, os_name: str, artifacts: list[str], tvm: TvmSpec | None) -> None:
    """No artifact a phone cannot load: TVM kinds on an Android board (os = "android", or a TVM target whose
    triple names Android) are refused in one line that says what runs there instead."""
    tvm_kinds = [k for k in artifacts if ARTIFACT_KINDS[k].format == "tvm"]
    triples = [str(spec.get("mtriple", "")) if isinstance(spec, dict) else str(spec)
               for spec in ((tvm.cpu, tvm.gpu, tvm.gpu_host) if tvm else ()) if spec is not None]
    android = os_name == "android" or any("android" in t for t in triples)
    if android and tvm_kinds:
        raise ConfigError(f"{where}: {', '.join(tvm_kinds)} for Android: {ANDROID_NO_TVM}; {ANDROID_RUNS}: list "
                          f"tflite-* and onnx-* kinds, and build TVM kinds for a Linux board (a target with "
                          f"mtriple aarch64-linux-gnu)")
    if android and os_name != "android":
        raise ConfigError(f"{where}: a TVM target for Android (mtriple *-android) on a board that does not say "
                          f"os = \"android\"; write os = \"android\" and drop [tvm], or target Linux")


def _clusters(table: Any, where: str) -> list[Cluster]:
    """[cpu] is one cluster (core, cores, features, cpus), or a list of them: [[cpu.clusters]] with a name each."""
    if isinstance(table, dict) and "clusters" in table:
        _keys(table, f"{where}: [cpu]", required=("clusters",))
        entries = table["clusters"]
        if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
            raise ConfigError(f"{where}: cpu.clusters must be a list of tables ([[cpu.clusters]] with name, core, "
                              f"cpus, features), got {entries!r}")
        clusters = [_cluster(e, f"{where}: cpu.clusters[{i}]", named=True) for i, e in enumerate(entries)]
    else:
        clusters = [_cluster(table, f"{where}: [cpu]", named=False)]
    names = [c.name for c in clusters]
    if len(set(names)) != len(names):
        raise ConfigError(f"{where}: cpu.clusters names must differ, got {', '.join(names)}")
    seen: set[int] = set()
    for c in clusters:
        if seen & set(c.cpus):
            raise ConfigError(f"{where}: cluster {c.name!r} lists cpus {sorted(seen & set(c.cpus))} that another "
                              f"cluster lists too")
        seen |= set(c.cpus)
    return clusters


def _cluster(table: Any, where: str, named: bool) -> Cluster:
    t = _keys(table, where, required=(("name",) if named else ()) + ("core",),
              optional=("cores", "cpus", "features"))
    cpus = t.get("cpus", [])
    if not isinstance(cpus, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in cpus) \
            or len(set(cpus)) != len(cpus):
        raise ConfigError(f"{where}: cpus must be a list of distinct Linux CPU numbers (0, 1, ...), got {cpus!r}")
    if "cores" in t:
        cores = _count(t["cores"], f"{where.replace(': [cpu]', ': cpu')}.cores")
        if cpus and cores != len(cpus):
            raise ConfigError(f"{where}: cores = {cores} but cpus lists {len(cpus)} CPUs {cpus}")
    elif cpus:
        cores = len(cpus)
    else:
        raise ConfigError(f"{where}: missing key 'cores' (or 'cpus', the Linux CPU numbers of the cluster's cores)")
    features = tuple(_str_list(t.get("features", []), f"{where}: features"))
    core = _str(t["core"], f"{where}: core")
    if core == "host":       # this machine: its ISA is detected, not written down
        features = tuple(sorted(set(features) | (set(cpu_flags()) & set(HOST_FEATURES))))
    name = _str(t["name"], f"{where}: name") if named else "cpu"
    return Cluster(name=name, core=core, cores=cores, features=features, cpus=tuple(cpus))


def _tvm(table: Any, where: str) -> TvmSpec:
    if isinstance(table, dict) and ("target" in table or "host" in table):
        raise ConfigError(f"{where}: tvm.target / tvm.host are the old one-target form; a board has a CPU and a GPU "
                          f"target: write tvm.cpu = {{ kind = \"llvm\", ... }} for tvm-fp32 / tvm-int8 and "
                          f"tvm.gpu = {{ kind = \"opencl\", ... }} for tvm-gpu-fp32 (README: Target files)")
    if isinstance(table, dict) and "cross_compiler" in table:
        raise ConfigError(f"{where}: tvm.cross_compiler is gone: TVM libraries are linked with the pinned zig cc "
                          f"whatever is installed, so the same inputs give the same bytes; remove the key, or write "
                          f"tvm.linker = \"<command>\" to link with a toolchain of your own")
    t = _keys(table, f"{where}: [tvm]", required=(),
              optional=("cpu", "gpu", "gpu_host", "linker", "schedules"))
    for key in ("cpu", "gpu", "gpu_host"):
        if key in t and not isinstance(t[key], (str, dict)):
            raise ConfigError(f"{where}: tvm.{key} must be a TVM tag (string) or a table, got {type(t[key]).__name__}")
    return TvmSpec(cpu=t.get("cpu"), gpu=t.get("gpu"), gpu_host=t.get("gpu_host"),
                   linker=_linker(t.get("linker", "zig"), f"{where}: tvm.linker"),
                   schedules=_choice(t.get("schedules", "default"), f"{where}: tvm.schedules", ("default", "none")))


def _tvm_kind(spec: Any) -> str:
    """The kind of a TVM target (llvm, opencl, ...) when the file says it; "" for a tag TVM alone can read."""
    if isinstance(spec, dict):
        return str(spec.get("kind", ""))
    first = (str(spec).split() or [""])[0]
    return first if first in ("llvm", "opencl", "vulkan", "cuda", "metal") else ""


def _check_processor(where: str, artifacts: list[str], tvm: TvmSpec | None, gpu: GpuSpec | None) -> None:
    """Each TVM artifact kind is built for the processor it names, from that processor's TVM target: a CPU
    kind from tvm.cpu (llvm), a GPU kind from tvm.gpu (never llvm: that would be a CPU-only library)."""
    cpu_kinds = [k for k in artifacts if ARTIFACT_KINDS[k].format == "tvm" and ARTIFACT_KINDS[k].device == "cpu"]
    gpu_kinds = [k for k in artifacts if ARTIFACT_KINDS[k].format == "tvm" and ARTIFACT_KINDS[k].device == "gpu"]
    if cpu_kinds and (tvm is None or tvm.cpu is None):
        raise ConfigError(f"{where}: {', '.join(cpu_kinds)} run on the CPU and need a CPU TVM target: "
                          f"[tvm] cpu = {{ kind = \"llvm\", ... }}")
    if gpu_kinds and (tvm is None or tvm.gpu is None):
        raise ConfigError(f"{where}: {', '.join(gpu_kinds)} runs on the GPU and needs a GPU TVM target: "
                          f"[tvm] gpu = {{ kind = \"opencl\", ... }}")
    if gpu_kinds and gpu is None:
        raise ConfigError(f"{where}: {', '.join(gpu_kinds)} needs a [gpu] table (api = \"opencl\", name = ...)")
    if tvm is None:
        return
    if tvm.cpu is not None and _tvm_kind(tvm.cpu) not in ("", "llvm"):
        raise ConfigError(f"{where}: tvm.cpu is a {_tvm_kind(tvm.cpu)} (GPU) target; the CPU target is "
                          f"kind = \"llvm\" (the GPU's goes in tvm.gpu)")
    if tvm.gpu is not None and _tvm_kind(tvm.gpu) == "llvm":
        raise ConfigError(f"{where}: tvm.gpu is llvm (the CPU); the GPU target is e.g. "
                          f"{{ kind = \"opencl\", device = \"mali\" }} (the CPU's goes in tvm.cpu)")
    if gpu_kinds and tvm.gpu_host is None and tvm.cpu is None:
        raise ConfigError(f"{where}: {', '.join(gpu_kinds)}'s host code runs on the board's CPU: give tvm.cpu "
                          f"(or tvm.gpu_host), e.g. {{ kind = \"llvm\", mtriple = \"aarch64-linux-gnu\" }}")


# LLVM's aarch64 -mattr extensions that fault on a core without them (SIGILL), and Linux's name for each
_MATTR_FEATURES = {"+dotprod": "dotprod", "+fullfp16": "fp16", "+i8mm": "i8mm", "+sve": "sve", "+sve2": "sve2"}


def _check_features(where: str, spec: Any, cluster: Cluster) -> None:
    """A CPU library compiled with an extension the bench cluster lacks would die with SIGILL on the board."""
    if not isinstance(spec, dict) or cluster.core == "host":
        return
    mattr = spec.get("mattr", [])
    mattr = mattr.split(",") if isinstance(mattr, str) else mattr
    missing = [m for m in mattr if m in _MATTR_FEATURES and _MATTR_FEATURES[m] not in cluster.features]
    if missing:
        raise ConfigError(f"{where}: tvm.cpu mattr {', '.join(missing)} needs "
                          f"{', '.join(_MATTR_FEATURES[m] for m in missing)}, which cluster {cluster.name!r} "
                          f"({cluster.core}) does not list in its features: the library would die with SIGILL there")


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


def _linker(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip() or any(c.isspace() for c in value):
        raise ConfigError(f"{where} must be \"zig\" (the pinned zig cc) or one linker command without arguments, "
                          f"got {value!r}")
    return value


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
