"""Reading a compiled target folder: its manifest (benchmarks/manifest.schema.json) and the check that
every artifact is the file the manifest hashed. Used by the runner, the ssh and RPC paths, the
profile, the gate and `make verify`; needs nothing beyond the standard library.
"""

from pathlib import Path
from typing import Any, Literal, NotRequired, TypedDict

from benchmarks.errors import BenchError
from benchmarks.files import read_json, sha256_file

SCHEMA = Path(__file__).resolve().parent / "manifest.schema.json"


# -- the manifest as a typed record: the same fields as benchmarks/manifest.schema.json (a unit test keeps the two
# in step); the compiler builds a Manifest, the readers below return one. Plain dicts at run time, so the JSON
# file, the schema and every reader agree without a conversion layer.
class Cpu(TypedDict):
    cpu_model: str
    machine: str
    int8_isa: Literal["avx512-vnni", "avx-vnni", "avx2", "sse", "sdot", "neon"]
    int8_saturates: bool


class MeasuredOn(Cpu):
    computes_as_target: bool
    why: str
    emulated: NotRequired[str]


class Accuracy(TypedDict):
    n: int
    agreement_top1: float
    top1: float | None
    top5: float | None
    mean_abs_logit_delta: float
    measured_on: MeasuredOn
    vs_litert: NotRequired[dict[str, Any]]
    per_class: NotRequired[dict[str, list]]       # labelled eval: per class id, n, top-1, float top-1
    confusions: NotRequired[list[dict[str, int]]]  # most frequent (float class, artifact class) disagreements


class Artifact(TypedDict):
    kind: str                      # an ARTIFACT_KINDS key: tflite-int8, tvm-gpu-fp32, ...
    format: Literal["tflite", "onnx", "tvm"]
    precision: Literal["fp32", "fp16", "int8", "dynamic"]
    runtime: Literal["litert", "onnxruntime", "tvm"]
    device: Literal["cpu", "gpu"]
    file: str                      # a name inside build/<target>/
    sha256: str
    bytes: int
    accuracy: Accuracy | None
    accuracy_note: NotRequired[str]
    quantization: NotRequired[dict[str, Any]]      # int8: calib_method; onnx: scheme, activations, weights,
    #                                                reduce_range, why, float_layers; tflite: recovery
    float_layers: NotRequired[list[str]]           # tvm-int8 built from a recovered TFLite file: its float layers
    int8_dot: NotRequired[dict[str, Any] | None]   # tvm-int8: the dot-product ISA, its instruction, how many functions
    arch: NotRequired[Literal["aarch64", "x86_64"]]
    io: NotRequired[dict[str, Any]]
    source_tflite: NotRequired[str]
    opencl_source: NotRequired[str]
    params: NotRequired[dict]          # a TVM CPU library's weights beside it: {file, sha256, bytes}
    opencl_kernels: NotRequired[int]
    opencl_runtime: NotRequired[dict[str, Any]]    # GPU: our TVM OpenCL runtime shipped beside it (file, sha256, ...)
    linker: NotRequired[dict[str, Any]]            # tvm: the tool that linked the library (tool, version, command)


class ModelInfo(TypedDict):
    name: str
    weights: Literal["imagenet", "reference", "random", "file"]
    weights_requested: str
    weights_note: str | None
    weights_file: str | None
    input_shape: list[int]
    num_classes: int
    outputs: str
    parameters: int
    preprocess: NotRequired[dict[str, Any]]   # what the artifacts take: mean, std, channel order, resize, crop, why


class EvalInfo(TypedDict):
    file: str
    n: int
    source: str
    labels: bool
    float_top1: float | None
    representative: bool           # False: a user's model evaluated on the digits (not its own domain)
    class_names: NotRequired[list[str]]        # labels from class-name folders (or LABELS=): id -> name
    sanity: NotRequired[dict[str, Any]]        # is the float model's output meaningful (ok | suspect | not checked)


class Config(TypedDict):
    target: dict[str, Any]         # the target file as loaded (Target.to_dict)
    options: dict[str, Any]
    stages: list[dict[str, Any]]


class Manifest(TypedDict):
    target: str
    model: ModelInfo
    artifacts: list[Artifact]
    eval: EvalInfo
    calibration: dict[str, Any] | None
    versions: dict[str, str]
    compiled_on: Cpu
    config: Config
    created: str


def model_gates_key(manifest: Manifest) -> str:
    """``<name>-<weights>`` (e.g. xception-reference): the model's key in gates.toml and baselines/."""
    return f"{manifest['model']['name']}-{manifest['model']['weights']}"


def fp32_twin(records: list[dict], record: dict) -> dict | None:
    """The fp32 artifact (manifest entry or result) of the same runtime and device as ``record``, if any:
    what an int8 artifact's size and speed are compared with."""
    return next((r for r in records if r["precision"] == "fp32" and r["runtime"] == record["runtime"]
                 and r["device"] == record["device"]), None)


def load_manifest(build_dir: Path) -> Manifest:
    """build/<target>/manifest.json, or one line saying what is wrong."""
    path = build_dir / "manifest.json"
    if not path.is_file():
        raise BenchError(f"{build_dir} has no manifest.json; give a folder made by `make compile` (build/<target>)")
    return read_json(path, "manifest", SCHEMA)


def check_hashes(build_dir: Path, artifacts: list[Artifact]) -> None:
    """Refuse an artifact that is missing or whose sha256 differs from the manifest's (one line each)."""
    for art in artifacts:
        files = [(art["file"], art["sha256"])]
        if "opencl_runtime" in art:            # native code it loads: checked like the artifact itself
            files.append((art["opencl_runtime"]["file"], art["opencl_runtime"]["sha256"]))
        if "params" in art:                    # a TVM CPU library's weights
            files.append((art["params"]["file"], art["params"]["sha256"]))
        for name, expected in files:
            path = build_dir / name
            if not path.is_file():
                raise BenchError(f"{path} listed in the manifest is missing")
            digest = sha256_file(path)
            if digest != expected:
                raise BenchError(f"refusing {name}: its sha256 {digest[:16]}... differs from the manifest's "
                                 f"{expected[:16]}... (modified or corrupt; recompile with `make compile`)")
