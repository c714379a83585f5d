"""The Python API: compile one target through every stage, with caching, into build/<target>/.

    from pipeline.compiler import CompileOptions, compile_target
    result = compile_target(CompileOptions(target="rpi4"))
"""
from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from benchmarks.device import cpu_model, this_cpu
from benchmarks.manifest import Artifact, Manifest
from pipeline import __version__
from pipeline.cache import CacheEntry, StageCache, canonical_json, sha256_file, sha256_tree, stage_key
from pipeline.datasets import ImageSource, folder_images
from pipeline.emulation import GUEST_SITE, ensure_emulator
from pipeline.host_tools import ensure_file, ensure_tool
from benchmarks.errors import STORAGE_ERRNOS
from pipeline.errors import InputError, MissingDependencyError, PipelineError, StageError, storage_error
from pipeline.output import TargetLock, ensure_writable, publish, staging_dir, write_json
from pipeline.progress import Progress
from pipeline.sources import ModelSource, check_size, resolve
from pipeline.stages import build, calibrate, check, convert, opencl_runtime, tvm_build
from pipeline.targets import ARTIFACT_KINDS, TARGETS_DIR, TUNING_DIR, Target, load_target
from pipeline.tvm.link import ZIG, describe, zig_spec
from pipeline.tvm.records import TUNING_FILES
from pipeline.versions import tool_versions

# With default schedules the on-host TVM check runs the whole eval set. Without them (tvm.schedules
# = "none") TVM runs Xception at about 0.7 s per 71x71 image (11 s at 299x299) on 2 cores, so the
# check uses the first images: 32 at 71x71, fewer for larger inputs (at least 4); n is recorded.
TVM_CHECK_PIXELS = 32 * 71 * 71
TVM_CHECK_MIN_IMAGES = 4


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xception-edge"


@dataclass(frozen=True)
class CompileOptions:
    target: str
    weights: str = "auto"                 # auto | imagenet | reference | random | path to .keras/.h5
    calib_dir: Path | None = None         # folder of images; None = the reference calibration split
    calib_n: int = 100
    eval_dir: Path | None = None          # folder of images; None = the reference test split
    eval_n: int = 0                       # 0 = all
    input_size: int = 299                 # random weights only
    input_hw: tuple[int, int] | None = None   # INPUT_SIZE= as given: (H, W) for a model without a fixed size
    num_classes: int = 1000               # random weights only
    out_dir: Path = Path("build")
    cache_dir: Path = field(default_factory=default_cache_dir)
    reference_dir: Path | None = None     # None = <cache_dir>/reference
    targets_dir: Path = TARGETS_DIR
    seed: int = 0
    tuning_dir: Path | None = TUNING_DIR  # MetaSchedule records (make tune); None = do not apply them
    records_target: str = ""              # look records up under this target's name (default: the target's)
    calib_method: str = "minmax"          # int8 calibration: minmax | percentile | entropy
    recover: bool = True                  # int8 below the gate's agreement budget: keep damaging layers float
    recover_cap: int = 8                  # at most this many float layers
    preprocess: str = ""                  # PREPROCESS=: what pixels the model takes; "" = read from the model
    resize: str = ""                      # RESIZE=; "": as Keras reads a user's images (keras), else bilinear
    crop: str = ""                        # CROP=: center | none; "": none for a user's model, else center
    labels_file: Path | None = None       # LABELS=: the model's class names, one per line, in its output order


MANIFEST_SCHEMA = Path(__file__).resolve().parent.parent / "benchmarks" / "manifest.schema.json"


@dataclass
class MadeArtifact:
    """One artifact: its manifest entry, and the cached files it is copied from (never in the manifest)."""
    entry: Artifact
    path: Path
    extra: dict[str, Path] = field(default_factory=dict)     # files shipped beside it (OpenCL source)


@dataclass
class StageRun:
    stage: str
    label: str
    key: str
    cached: bool


@dataclass
class CompileResult:
    manifest_path: Path
    manifest: Manifest
    runs: list[StageRun]


def compile_target(options: CompileOptions, progress: Progress | None = None,
                   versions: Mapping[str, str] | None = None) -> CompileResult:
    progress = progress or Progress(quiet=True)
    target = load_target(options.target, options.targets_dir)
    validate_options(options)
    ensure_writable(options.out_dir)
    with TargetLock(options.out_dir, target.name):
        return Compilation(options, target, progress, dict(versions or tool_versions())).run()


def validate_options(options: CompileOptions) -> None:
    if options.calib_n < 1:
        raise InputError(f"CALIB_N={options.calib_n} must be a positive number of images")
    if options.eval_n < 0:
        raise InputError(f"EVAL_N={options.eval_n} must be 0 (all) or a positive number of images")
    from pipeline.quantization import CALIB_METHODS

    if options.calib_method not in CALIB_METHODS:
        raise InputError(f"CALIB_METHOD={options.calib_method!r} is not a calibration method; "
                         f"valid: {', '.join(CALIB_METHODS)}")
    if options.recover_cap < 1:
        raise InputError(f"RECOVER_CAP={options.recover_cap} must be a positive number of layers")
    from models.preprocessing import parse_preprocess

    try:
        parse_preprocess(options.preprocess or "xception", options.resize or "bilinear", options.crop or "center")
    except ValueError as exc:
        raise InputError(str(exc)) from None
    class_names(options)
    if options.weights == "random":
        if options.input_hw and options.input_hw[0] != options.input_hw[1]:
            raise InputError(f"INPUT_SIZE={options.input_hw[0]}x{options.input_hw[1]}: WEIGHTS=random builds a "
                             f"square Xception; give one number (e.g. INPUT_SIZE=299)")
        check_size(options.input_size)
        if options.num_classes < 2:
            raise InputError(f"CLASSES={options.num_classes} must be 2 or more")
    for what, folder in (("CALIB", options.calib_dir), ("EVAL", options.eval_dir)):
        if folder is not None:
            folder_images(Path(folder), f"{what}=")


def class_names(options: CompileOptions) -> tuple[str, ...]:
    """LABELS=: one class name per line, in the model's output order (blank lines and # comments skipped)."""
    if options.labels_file is None:
        return ()
    path = Path(options.labels_file)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"LABELS={path}: cannot read it ({getattr(exc, 'strerror', None) or exc}); give a text "
                         f"file with one class name per line, in the model's output order") from None
    names = tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))
    if not names or len(set(names)) != len(names):
        raise InputError(f"LABELS={path}: {'no class names' if not names else 'a class name appears twice'}; give "
                         f"one class name per line, in the model's output order")
    return names


class Compilation:
    def __init__(self, options: CompileOptions, target: Target, progress: Progress, versions: dict):
        self.options, self.target, self.progress, self.versions = options, target, progress, versions
        self.cache = StageCache(options.cache_dir)
        self.hashes: dict[Path, str] = {}
        self.runs: list[StageRun] = []
        self.host_cpu = this_cpu()
        self._emulator = None           # set up on first need; False = not possible here
        # set by prepare(): the build stage's entry, the model's description and name, calibration
        self.built: CacheEntry | None = None
        self.calibrated: CacheEntry | None = None
        self.info: dict = {}
        self.model_name = ""
        self.eval_representative = True     # False: a user's model evaluated on the digits (figures not its own)

    # -- stage plumbing -------------------------------------------------------------------------
    def _hash(self, path: Path) -> str:
        if path not in self.hashes:
            self.hashes[path] = (sha256_tree(path, folder_images(path, "image")) if path.is_dir()
                                 else sha256_file(path))
        return self.hashes[path]

    def stage(self, module, config, inputs: dict[str, Path], label: str) -> CacheEntry:
        hashes = {name: self._hash(path) for name, path in inputs.items()}
        tools = {t: self.versions.get(t, "absent") for t in ("python",) + module.TOOLS}
        key = stage_key(module.NAME, module.VERSION, hashes, dataclasses.asdict(config), tools)
        entry, damage = self.cache.verified(module.NAME, key)
        if damage:
            self.progress.warn(f"[{label}] the cached result in {self.cache.root} is damaged ({damage}); rebuilding it")
        cached = entry is not None
        if cached:
            self.progress.log(f"[{label}] cached")
        else:
            self.progress.log(f"[{label}] running")
            try:
                entry = self.cache.produce(module.NAME, key,
                                           lambda out: module.run(inputs, config, out, self.progress))
            except (PipelineError, KeyboardInterrupt):
                raise
            except Exception as exc:
                refused = _storage_cause(exc)
                if refused is not None:
                    raise storage_error(refused, f"the {label} stage's result", self.cache.root, self.cache_need(),
                                        "free space there, or give another CACHE_DIR=") from None
                raise StageError(self.failure(label, getattr(config, "file_name", ""), exc)) from exc
        for name, digest in entry.files.items():
            self.hashes[entry.file(name)] = digest
        self.runs.append(StageRun(module.NAME, label, key, cached))
        return entry

    def cache_need(self) -> int:
        """Roughly what a compile of this model for this target writes to the stage cache: the model, its float
        copy, and each artifact at its precision's share of the float weights (fp16 half, int8 a quarter)."""
        if self.built is not None:
            model = self.built.file("model.keras").stat().st_size
        elif self.options.weights not in ("auto", "imagenet", "reference", "random") and Path(self.options.weights).is_file():
            model = Path(self.options.weights).stat().st_size
        else:
            model = 4 * XCEPTION_PARAMETERS
        share = {"fp32": 1.0, "fp16": 0.5}
        return int(model * (2 + sum(share.get(ARTIFACT_KINDS[k].precision, 0.25) for k in self.target.artifacts)))

    def converted(self, kind: str) -> tuple[CacheEntry, str]:
        """The convert stage's entry for one TFLite/ONNX kind (also the source of TVM builds)."""
        made = ARTIFACT_KINDS[kind]
        file_name = f"{self.model_name}_{made.precision}.{made.extension}"
        inputs = {"model": self.built.file("model.keras")}
        if made.needs_calibration:
            inputs["calib"] = self.calibrated.file("calib.npz")
        scheme = self.onnx_int8_scheme()[0] if kind == "onnx-int8" else ""
        config = convert.Config(kind, file_name, scheme)
        if made.needs_calibration:
            config = dataclasses.replace(config, calib_method=self.options.calib_method)
        if kind == "tflite-int8" and self.options.recover:
            budget = self.recovery_budget()
            config = dataclasses.replace(config, recover_budget=budget.min_agreement_top1,
                                         recover_max_drop=budget.max_top1_drop_points,
                                         recover_cap=self.options.recover_cap)
            inputs["eval"] = self.built.file("eval.npz")
        if kind == "onnx-int8" and self.options.recover:
            # ONNX Runtime's quantizer recalibrates on every call: too slow to search; it keeps float the
            # Keras layers that the TFLite recovery found (same model, same calibration images)
            recovery = tflite_recovery(self.converted("tflite-int8")[0])
            if recovery.get("status") == "recovered":
                layers = dict.fromkeys(l for ls in recovery.get("float_keras_layers", []) for l in ls)
                config = dataclasses.replace(config, float_layers=tuple(layers))
        return self.stage(convert, config, inputs, f"convert {kind}"), file_name

    def recovery_budget(self):
        """What int8 recovery aims at: the gate's thresholds for this model and target."""
        from benchmarks.gate import GATES_FILE, load_thresholds

        return load_thresholds(GATES_FILE, f"{self.model_name}-{self.source_kind}", self.target.name)

    def onnx_int8_scheme(self) -> tuple[str, str]:
        """The ONNX int8 scheme for this target's CPU, and why."""
        return convert.onnx_int8_scheme(self.target.arch, self.target.int8_isa, self.target.int8_saturates)

    # -- where accuracy is measured ---------------------------------------------------------------
    def check_artifact(self, kind: str, runtime: str, inputs: dict[str, Path], limit: int = 0) -> dict:
        """Run the check stage for one artifact (here, or under emulation as the board's core) and
        return its accuracy record with ``measured_on`` saying whether that CPU computes what the target does."""
        emulate = self._emulation_for(kind)
        runs_on = "" if emulate else canonical_json(self.host_cpu)
        checked = self.stage(check, check.Config(kind, runtime, limit=limit, runs_on=runs_on, emulate=emulate),
                             inputs, f"check {kind}")
        result = json.loads(checked.file("accuracy.json").read_text())
        same, why = describes_target(kind, self.onnx_int8_scheme()[0], result["measured_on"], self.target)
        result["measured_on"] |= {"computes_as_target": same, "why": why}
        if not same:
            self.progress.warn(f"{inputs['artifact'].name}: accuracy measured on {self.host_cpu['cpu_model']} "
                               f"({why}); it does not describe {self.target.name}")
        return result

    def _emulation_for(self, kind: str) -> str:
        """ONNX Runtime int8 on an ARM board: its int8 kernels differ from x86's (which saturate without VNNI),
        so the figure comes from running the artifact as the board does, under qemu-user. "" = run here."""
        target = self.target
        if kind != "onnx-int8" or target.arch != "aarch64" or platform.machine() == "aarch64":
            return ""
        if self._emulator is None:
            try:
                self._emulator = ensure_emulator(self.options.cache_dir, self.progress)
            except (MissingDependencyError, StageError) as exc:
                self.progress.warn(f"cannot emulate {target.cpu.core} to measure {kind} as the board runs it: {exc}")
                self._emulator = False
        if not self._emulator:
            return ""
        return canonical_json({"qemu": self._emulator.qemu, "sysroot": str(self._emulator.sysroot),
                               "core": target.cpu.core, "cores": target.cpu.cores or 4})


    def tvm_spec(self, device: str = "cpu") -> tuple[dict | str, bool]:
        """The target's TVM target for a CPU or GPU artifact as the stage gets it, and whether LLVM should
        detect this CPU."""
        target = self.target
        native = target.arch == platform.machine()
        spec, _ = target.tvm.target_for(device)
        llvm = isinstance(spec, dict) and spec.get("kind") == "llvm"      # options below are the CPU target's
        if native and llvm and target.cpu.cores == 0 and "num-cores" not in spec:
            spec = spec | {"num-cores": os.cpu_count() or 1}
        if llvm and "num-cores" not in spec and target.cpu.cores:
            spec = spec | {"num-cores": target.cpu.cores}          # MetaSchedule needs it
        detect_cpu = native and llvm and "mcpu" not in spec and "mtriple" not in spec
        return spec, detect_cpu

    def records_dir(self) -> Path | None:
        """The MetaSchedule records for this target and model, or None (none made, or not wanted)."""
        if self.options.tuning_dir is None:
            return None
        return records_path(self.options.tuning_dir, self.options.records_target or self.target.name,
                            self.model_shape_id)

    @property
    def model_shape_id(self) -> str:
        """<name>-<height>x<width>-<classes> (xception-299x299-1000): keys tuning records by the model's shape."""
        _, height, width, _ = self.info["input_shape"]
        return f"{self.model_name}-{height}x{width}-{self.info['num_classes']}"

    def _tvm_artifact(self, kind: str, precision: str, device: str) -> MadeArtifact:
        target = self.target
        source, source_file = self.converted("tflite-int8" if precision == "int8" else "tflite-fp32")
        file_name = f"{self.model_name}_{precision}{'_opencl' if device == 'gpu' else ''}.so"
        native = target.arch == platform.machine()
        spec, detect_cpu = self.tvm_spec(device)
        config = tvm_build.Config(kind=kind, file_name=file_name, target=canonical_json(spec),
                                  host=canonical_json(target.tvm.target_for(device)[1]),
                                  host_cpu=cpu_model() if detect_cpu else "",
                                  linker=self.linker(), linker_version=describe(self.linker())["version"],
                                  arch=target.arch, schedules=target.tvm.schedules)
        inputs = {"tflite": source.file(source_file)}
        records = self.records_dir() if device == "cpu" and target.tvm.schedules == "default" else None
        if records is not None and (records / TUNING_FILES[0]).exists():
            inputs |= {name: records / name for name in TUNING_FILES}
            self.progress.log(f"  applying tuning records from {records}")
        made = self.stage(tvm_build, config, inputs, f"tvm {kind}")
        info = json.loads(made.file("tvm.json").read_text())
        record = {"file": file_name, "sha256": made.files[file_name],
                  "tvm_target": info["tvm_target"], "arch": target.arch, "io": info["io"],
                  "schedules": info["schedules"], "tuning": info.get("tuning"), "linker": info["linker"],
                  "int8_integer_chains": info.get("int8_integer_chains", 0),
                  "int8_float_exact": info.get("int8_float_exact", 0),
                  "int8_integer_adds": info.get("int8_integer_adds", 0),
                  "int8_dot": info.get("int8_dot"),
                  "source_tflite": source_file, "accuracy": None}
        if precision == "int8":
            recovery = tflite_recovery(source)
            if recovery.get("status") == "recovered":
                record["float_layers"] = recovery["float_layers"]      # from the recovered TFLite file
        if device == "gpu":
            record["opencl_source"] = Path(file_name).stem + ".cl"
            record["opencl_kernels"] = info["opencl_kernels"]
            record["accuracy_note"] = "not run here: OpenCL artifacts need the board's GPU"
        elif not native:
            record["accuracy_note"] = f"not run here: built for {target.arch}, this machine is {platform.machine()}"
        else:
            _, height, width, _ = self.info["input_shape"]
            limit = 0 if target.tvm.schedules == "default" else max(TVM_CHECK_MIN_IMAGES,
                                                                    TVM_CHECK_PIXELS // (height * width))
            record["accuracy"] = self.check_artifact(
                kind, "tvm", {"artifact": made.file(file_name), "eval": self.built.file("eval.npz"),
                              "tvm_info": made.file("tvm.json"), "litert_twin": source.file(source_file)}, limit)
            self._within_tolerance(file_name, source_file, record["accuracy"]["vs_litert"])
        extra = {}
        if device == "gpu":
            runtime = self.opencl_runtime()
            name = opencl_runtime.FILE_NAME
            record["opencl_runtime"] = json.loads(runtime.file("opencl_runtime.json").read_text()) | {
                "sha256": runtime.files[name]}
            extra = {record["opencl_source"]: made.file(record["opencl_source"]), name: runtime.file(name)}
        return MadeArtifact(record, made.file(file_name), extra)

    def _say_recovery(self, file_name: str, recovery: dict) -> None:
        if recovery["status"] == "recovered":
            self.progress.log(
                f"{file_name}: recovered: {len(recovery['float_layers'])} layers kept float "
                f"({', '.join(recovery['float_layers'])}); on the eval images "
                f"{recovery['before']['why']} -> {recovery['after']['why']}; size x{recovery['size_bytes']['recovered'] / recovery['size_bytes']['int8']:.2f}, "
                f"latency here x{recovery['latency_ms_here']['recovered'] / max(recovery['latency_ms_here']['int8'], 1e-9):.2f}")
        elif recovery["status"] in ("cap reached", "not met"):
            self.progress.warn(f"{file_name}: int8 recovery failed ({recovery['status']}, cap {recovery['cap_layers']} "
                               f"float layers): {recovery['after']['why']} on the eval images; the gate will fail")

    def opencl_runtime(self) -> CacheEntry:
        """Our TVM OpenCL runtime for the target's architecture: shipped beside GPU artifacts, so that a board
        needs only the pip TVM runtime, its OpenCL driver and this file."""
        arch = self.target.arch
        ensure_file("/usr/include/CL/cl.h", "opencl-headers", self.progress, "building the OpenCL runtime")
        if arch == platform.machine():
            compiler = ensure_tool("g++", "g++", self.progress)
            spec = importlib.util.find_spec("tvm")
            site = Path(spec.origin).parent.parent if spec and spec.origin else None
            if site is None:
                raise MissingDependencyError("the OpenCL runtime links against TVM's runtime: run `make setup`")
        else:
            compiler = ensure_tool(f"{arch}-linux-gnu-g++", f"g++-{arch.replace('_', '-')}-linux-gnu", self.progress)
            # TVM's runtime libraries for the board's architecture: the emulated board's (its pip wheels)
            site = ensure_emulator(self.options.cache_dir, self.progress).sysroot / GUEST_SITE.lstrip("/")
        inputs = {"source": opencl_runtime.SOURCE, "libtvm_runtime": site / "tvm" / "lib" / "libtvm_runtime.so",
                  "libtvm_ffi": site / "tvm_ffi" / "lib" / "libtvm_ffi.so"}
        return self.stage(opencl_runtime, opencl_runtime.Config(arch=arch, compiler=Path(compiler).name,
                                                                compiler_version=describe(compiler)["version"]), inputs,
                          f"opencl runtime {arch}")

    def _within_tolerance(self, file_name: str, source_file: str, vs: dict) -> None:
        """A TVM library computes what LiteRT computes on the TFLite file it came from (int8: within one
        quantization step, fp32: 1e-4 relative) or the compile fails: an artifact that misses is wrong, not
        slightly less accurate, and is never shipped with exit 0."""
        if vs["within_tolerance"]:
            return
        if "max_quant_steps" in vs:
            off = f"{vs['max_quant_steps']} quantization steps (tolerance {vs['tolerance_steps']})"
        else:
            off = f"{vs['max_rel_diff']:.2e} relative (tolerance {vs['tolerance_rel']:.0e})"
        raise StageError(f"{file_name} differs from LiteRT running {source_file} by up to {off} on "
                         f"{vs['beyond_tolerance']} of {vs['outputs']} outputs: an operator of this model is not in "
                         f"LiteRT's arithmetic in TVM; no artifacts were written (target {self.target.name}; "
                         f"leave tvm-* out of its artifacts to ship the others)")

    def linker(self) -> str:
        """The linker spec of this target's TVM libraries: the pinned zig cc for every architecture, native
        included, unless the target file names its own (pipeline/tvm/link.py)."""
        name = self.target.tvm.linker
        return zig_spec(self.target.arch) if name == ZIG else name

    def failure(self, label: str, artifact: str, exc: Exception) -> str:
        """One line for a failed step, with its full traceback written under build/logs/."""
        logs = self.options.out_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        log = logs / f"{self.target.name}-{label.replace(' ', '_').replace('/', '_')}.log"
        log.write_text("".join(traceback.format_exception(exc)))
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        what = f" ({artifact})" if artifact else ""
        return (f"stage {label}{what} failed for target {self.target.name}: {type(exc).__name__}: {first} "
                f"(full log: {log})")

    # -- the compilation ------------------------------------------------------------------------
    def run(self) -> CompileResult:
        if any(ARTIFACT_KINDS[kind].format == "tvm" for kind in self.target.artifacts):
            describe(self.linker())           # a missing linker is one line before any stage runs
        source = self.prepare()
        artifacts = []
        for kind in self.target.artifacts:
            fmt, precision, runtime, device = ARTIFACT_KINDS[kind][:4]
            head = {"kind": kind, "format": fmt, "precision": precision, "runtime": runtime, "device": device}
            if fmt == "tvm":
                made_artifact = self._tvm_artifact(kind, precision, device)
                made_artifact.entry = head | made_artifact.entry
            else:
                made, file_name = self.converted(kind)
                accuracy = self.check_artifact(kind, runtime, {"artifact": made.file(file_name),
                                                               "eval": self.built.file("eval.npz")})
                entry = head | {"file": file_name, "sha256": made.files[file_name], "accuracy": accuracy}
                if kind == "onnx-int8":
                    details = json.loads(made.file("convert.json").read_text())
                    entry["quantization"] = details["quantization"] | {"why": self.onnx_int8_scheme()[1]}
                if kind == "tflite-int8":
                    entry["quantization"] = json.loads(made.file("convert.json").read_text())["quantization"]
                    self._say_recovery(file_name, entry["quantization"]["recovery"])
                made_artifact = MadeArtifact(entry, made.file(file_name))
            artifacts.append(made_artifact)
        return self._package(source, artifacts)

    def prepare(self) -> ModelSource:
        """The model source, the build stage and (when the target has int8 artifacts) calibration."""
        opts, target = self.options, self.target
        self.progress.log(f"compiling target {target.name}: {target.description}")
        reference_dir = opts.reference_dir or opts.cache_dir / "reference"
        source = resolve(opts.weights, Path(reference_dir), self.progress)
        model_name = "xception" if source.kind != "file" else _safe_name(source.file.stem)

        eval_source = (ImageSource("folder", folder=str(opts.eval_dir)) if opts.eval_dir
                       else ImageSource("digits", split="test"))
        self.eval_representative = bool(opts.eval_dir) or source.kind == "reference"
        if not self.eval_representative:
            self.progress.banner([
                "No EVAL= folder: this model's accuracy figures are measured on the DIGITS test split,",
                "not on images from its own domain. They show only how int8 agrees with float on digits;",
                "they say nothing about your model's accuracy. Give EVAL=dir of your own images",
                f"(labels from class sub-folders, optional){' - CALIB= is for calibration only' if opts.calib_dir else ''}.",
            ])
        build_inputs = {"model": source.file} if source.file else {}
        if opts.eval_dir:
            build_inputs["eval_images"] = Path(opts.eval_dir)
        built = self.stage(build, build.Config(
            source=source.kind, eval=eval_source, eval_n=opts.eval_n,
            input_size=opts.input_size if source.kind == "random" else 0,
            input_hw=tuple(opts.input_hw) if opts.input_hw and source.kind == "file" else (),
            num_classes=opts.num_classes if source.kind == "random" else 0,
            seed=opts.seed, labels_known=source.kind == "reference", preprocess=opts.preprocess,
            resize=opts.resize, crop=opts.crop, class_names=class_names(opts)), build_inputs, "build")
        info = json.loads(built.file("model.json").read_text())
        self.progress.log(f"  preprocessing: {info['preprocess']['why']}")
        sanity = info["eval"]["sanity"]
        if sanity["status"] == "suspect":
            self.progress.banner([
                "THE FLOAT MODEL'S OUTPUTS LOOK MEANINGLESS on the eval set:",
                f"  {sanity['why']}.",
                "int8 agreeing with such a model proves nothing, and `make gate` fails on it.",
                f"Check the preprocessing (PREPROCESS=, now {info['preprocess']['name']}), the eval images",
                "(EVAL=, labels from class folders) and the model itself (its own model.evaluate).",
            ])

        needs_calibration = any(ARTIFACT_KINDS[k].precision == "int8" for k in target.artifacts)
        self.calibrated = None
        if needs_calibration:
            calib_source = (ImageSource("folder", folder=str(opts.calib_dir)) if opts.calib_dir
                            else ImageSource("digits", split="calib"))
            if calib_source.kind == "digits" and source.kind != "reference":
                self.progress.warn("calibrating a non-reference model on the digits calibration split; "
                                   "pass CALIB=dir with images from the model's own domain")
            calib_inputs = {"model_info": built.file("model.json")}
            if opts.calib_dir:
                calib_inputs["images"] = Path(opts.calib_dir)
            self.calibrated = self.stage(calibrate, calibrate.Config(calib_source, opts.calib_n, opts.seed),
                                         calib_inputs, "calibrate")
        self.built, self.model_name, self.info = built, model_name, info
        self.source_kind = source.kind
        return source

    def _carry_results(self, staging: Path, final: Path, listed: list[Artifact]) -> None:
        """Results of the previous build (bench/, report/, gate/) stay when this compile made the same
        files (same names and sha256, same eval set): they still describe them. Otherwise they go, and
        the user is told which and why."""
        found = [final / name for name in RESULT_FOLDERS if (final / name).is_dir()]
        if not found:
            return
        try:
            before = json.loads((final / "manifest.json").read_text())
            same = (sorted((a["file"], a["sha256"]) for a in before["artifacts"])
                    == sorted((a["file"], a["sha256"]) for a in listed)
                    and sha256_file(final / "eval" / "eval.npz") == self.built.files["eval.npz"])
        except (OSError, ValueError, KeyError, TypeError):
            same = False
        if same:
            for folder in found:
                shutil.copytree(folder, staging / folder.name, symlinks=True)
            return
        self.progress.warn(f"{final}: removed {', '.join(f.name + '/' for f in found)} of the previous build: "
                           f"they measured artifacts (or an eval set) this compile replaced")

    def _package(self, source: ModelSource, artifacts: list[MadeArtifact]) -> CompileResult:
        """The output folder, assembled beside build/<target>/ and swapped in; a write the storage refuses is one
        line naming OUT and the bytes needed, and leaves build/<target>/ and the cache as they were."""
        try:
            return self._assemble(source, artifacts)
        except OSError as exc:
            need = self.built.file("eval.npz").stat().st_size + sum(
                p.stat().st_size for art in artifacts for p in (art.path, *art.extra.values()))
            error = storage_error(exc, f"the output folder {self.target.name}/", self.options.out_dir, need,
                                  "free space there, or give another OUT=dir")
            if error is None:
                raise
            raise error from None

    def _assemble(self, source: ModelSource, artifacts: list[MadeArtifact]) -> CompileResult:
        opts, target = self.options, self.target
        built, calibrated, info, model_name = self.built, self.calibrated, self.info, self.model_name
        staging = staging_dir(opts.out_dir, target.name)
        try:
            (staging / "eval").mkdir()
            shutil.copyfile(built.file("eval.npz"), staging / "eval" / "eval.npz")
            listed = []
            for art in artifacts:
                for name, path in art.extra.items():
                    shutil.copyfile(path, staging / name)
                sidecar = art.entry.get("opencl_runtime")
                if sidecar and sha256_file(staging / sidecar["file"]) != sidecar["sha256"]:
                    raise StageError(f"cache entry for {sidecar['file']} is corrupt; remove {art.extra[sidecar['file']].parent} "
                                     f"and compile again")
                dest = staging / art.entry["file"]
                shutil.copyfile(art.path, dest)
                digest = sha256_file(dest)
                if digest != art.entry["sha256"]:
                    raise StageError(f"cache entry for {art.entry['file']} is corrupt (sha256 {digest} != recorded "
                                     f"{art.entry['sha256']}); remove {art.path.parent} and compile again")
                listed.append(art.entry | {"bytes": dest.stat().st_size})
            manifest: Manifest = {
                "target": target.name,
                "model": {"name": model_name, "weights": source.kind, "weights_requested": source.requested,
                          "weights_note": source.note,
                          "weights_file": str(source.file) if source.file else None,
                          "input_shape": info["input_shape"], "num_classes": info["num_classes"],
                          "outputs": info["outputs"], "parameters": info["parameters"],
                          "preprocess": info["preprocess"]},
                "artifacts": listed,
                "eval": {"file": "eval/eval.npz", "n": info["eval"]["n"], "source": info["eval"]["source"],
                         "labels": info["eval"]["labels"], "float_top1": info["eval"].get("float_top1"),
                         "representative": self.eval_representative, "sanity": info["eval"]["sanity"],
                         **({"class_names": info["eval"]["class_names"]} if info["eval"].get("class_names") else {})},
                "calibration": (json.loads(calibrated.file("calib.json").read_text()) | {"images": None}
                                if calibrated else None),
                "versions": self.versions | {"pipeline": __version__},
                "compiled_on": self.host_cpu,
                "config": {"target": target.to_dict(),
                           "options": {k: (str(v) if isinstance(v, Path) else v)
                                       for k, v in dataclasses.asdict(opts).items()},
                           "stages": [dataclasses.asdict(r) for r in self.runs]},
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            }
            validate_manifest(manifest)
            write_json(staging / "manifest.json", manifest)
            self._carry_results(staging, opts.out_dir / target.name, listed)
            publish(staging, opts.out_dir / target.name)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        path = opts.out_dir / target.name / "manifest.json"
        return CompileResult(path, manifest, self.runs)


XCEPTION_PARAMETERS = 22_910_480          # keras.applications.Xception, 1000 classes

RESULT_FOLDERS = ("bench", "report", "gate", "analysis")   # what make bench / report / verify / gate / analyze add


def _storage_cause(exc: BaseException) -> OSError | None:
    """The OSError a full, read-only or forbidden folder raised, if that is what ``exc`` is or was caused by
    (TensorFlow and Keras re-raise a refused write as their own errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def tflite_recovery(converted: CacheEntry) -> dict:
    """The int8 recovery record of a tflite-int8 convert stage entry (its status, float layers, ...)."""
    return json.loads(converted.file("convert.json").read_text())["quantization"]["recovery"]


def validate_manifest(manifest: Manifest) -> None:
    """The manifest is a contract (benchmarks/manifest.schema.json): a compile never publishes one that breaks it."""
    import jsonschema

    schema = json.loads(MANIFEST_SCHEMA.read_text())
    try:
        jsonschema.validate(json.loads(json.dumps(manifest)), schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        raise StageError(f"the manifest breaks benchmarks/manifest.schema.json at {where}: {exc.message}") from None


def describes_target(kind: str, onnx_scheme: str, measured_on: dict, target: Target) -> tuple[bool, str]:
    """Whether an accuracy figure measured on ``measured_on`` is what ``target`` computes, and why."""
    precision, runtime = ARTIFACT_KINDS[kind].precision, ARTIFACT_KINDS[kind].runtime
    isa = measured_on.get("int8_isa")
    if measured_on.get("emulated"):
        return True, f"run under qemu-user as the board's core ({measured_on['emulated']})"
    if precision != "int8":
        return True, "float arithmetic: the target computes the same up to rounding"
    if runtime == "litert":
        return True, ("LiteRT's int8 kernels (XNNPACK) compute exact integer arithmetic on every CPU "
                      "(make verify checks ARM builds bit for bit)")
    if runtime == "tvm":
        return True, "TVM library built for and run on this CPU"
    reduce_range = convert.ONNX_INT8_SCHEMES[onnx_scheme][2]
    if not reduce_range and measured_on.get("int8_saturates") and not target.int8_saturates:
        return False, (f"this CPU ({isa}, no VNNI) saturates int16 sums in ONNX Runtime's int8 kernels, the "
                       f"target ({target.int8_isa}) does not: the figure understates the target's accuracy")
    if measured_on.get("machine") != target.arch:
        return True, (f"ONNX Runtime int8 accumulates exactly here ({isa}) as on the target ({target.int8_isa}); "
                      f"requantization rounding may differ by a step")
    return True, f"the same int8 arithmetic: {onnx_scheme} does not saturate on this CPU ({isa}) nor on the target"


def records_path(tuning_dir: Path, target: str, model_shape_id: str) -> Path:
    """Where `make tune` keeps the MetaSchedule records of one target and model."""
    return Path(tuning_dir) / target / model_shape_id


def _safe_name(stem: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)
    return cleaned or "model"
