"""`make peers`: Xception 299x299 through LiteRT, ONNX Runtime and TVM (untuned, default schedules, tuned with the
host's records when there are any) on this machine, one run, same threads, measured back to back by the
device-side runner; then TVM's time per function. Random weights: latency does not depend on them.
Details: docs/peers.md and docs/internals.md (module notes).
"""
from __future__ import annotations

from pathlib import Path

from benchmarks import run
from benchmarks.device import this_cpu
from benchmarks.manifest import load_manifest
from benchmarks.profile import profile_artifact
from pipeline.compiler import CompileOptions, compile_target
from pipeline.progress import Progress
from pipeline.targets import TUNING_DIR
from pipeline.tvm.records import records_path

PEER_ARTIFACTS = ("tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8", "tvm-fp32", "tvm-int8")
# target name -> (artifacts, tvm.schedules, row label)
VARIANTS = {
    "peers": (PEER_ARTIFACTS, "default", "default schedules"),
    "peers-untuned": (("tvm-fp32", "tvm-int8"), "none", "untuned"),
    "peers-tuned": (("tvm-fp32", "tvm-int8"), "default", "tuned"),
}
RECORDS_TARGET = "host"


def write_peer_targets(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (artifacts, schedules, label) in VARIANTS.items():
        listed = ", ".join(f'"{k}"' for k in artifacts)
        (folder / f"{name}.toml").write_text(
            f'# written by `make peers`: {label}\n'
            f'description = "this machine, peer comparison ({label})"\narch = "x86_64"\nartifacts = [{listed}]\n'
            '[cpu]\ncore = "host"\ncores = 0\n[bench]\nthreads = 0\n'
            f'[tvm]\ncpu = {{ kind = "llvm" }}\nschedules = "{schedules}"\n')
    return folder


def compare(out_dir: Path, cache_dir: Path, threads: int, input_size: int = 299, budget: run.Budget = run.Budget(),
            progress: Progress | None = None, tuning_dir: Path = TUNING_DIR,
            profile_runs: int = 3) -> tuple[dict, list[dict], Path | None]:
    """Compile and measure LiteRT, ONNX Runtime and the TVM variants back to back; returns the results per
    variant, TVM's per-function profiles, and the tuning records used (None without tuned rows)."""
    progress = progress or Progress()
    targets = write_peer_targets(out_dir / "peer-targets")
    model_shape_id = f"xception-{input_size}x{input_size}-1000"
    records = records_path(tuning_dir, RECORDS_TARGET, model_shape_id, this_cpu()["int8_isa"])
    variants = [v for v in VARIANTS if v != "peers-tuned" or (records / "tuning.json").exists()]
    if "peers-tuned" not in variants:
        progress.warn(f"no tuning records in {records}: the table has no tuned TVM rows; run "
                      f"`make tune TARGET=host WEIGHTS=random RECOVER=0` first")
    runs: dict[str, dict] = {}
    for name in variants:
        compile_target(CompileOptions(target=name, weights="random", input_size=input_size, num_classes=1000,
                                      calib_n=16, eval_n=8, recover=False,     # the same all-int8 model everywhere
                                      out_dir=out_dir, cache_dir=cache_dir, targets_dir=targets,
                                      tuning_dir=tuning_dir if name == "peers-tuned" else None,
                                      records_target=RECORDS_TARGET), progress)
    for name in variants:                     # measured back to back, after every compile is done
        results = run.run_build(out_dir / name, threads, budget, eval_n=8, log=progress.log)
        run.write_results(results, out_dir / name / "bench" / f"{results['run_id']}.json")
        runs[name] = results
    profiled = "peers-tuned" if "peers-tuned" in runs else "peers"
    profiles = []
    manifest = load_manifest(out_dir / profiled)
    for art in (a for a in manifest["artifacts"] if a["format"] == "tvm"):
        progress.log(f"  profiling {profiled}/{art['file']} per function ({profile_runs} runs)")
        profiles.append(profile_artifact(out_dir / profiled, art, threads, profile_runs)
                        | {"variant": VARIANTS[profiled][2]})
    return runs, profiles, records if "peers-tuned" in runs else None
