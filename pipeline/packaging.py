"""Packaging: the output folder build/<target>/ assembled beside the old one (artifacts, eval set, manifest) and
swapped in with one rename. Must hold: the manifest passes benchmarks/manifest.schema.json; every copied file has
the sha256 its stage recorded; results of the previous build stay only when they still describe these files.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from benchmarks.manifest import Artifact, Manifest
from pipeline import __version__
from pipeline.artifacts import MadeArtifact
from pipeline.cache import sha256_file
from pipeline.compile_options import CompileOptions
from pipeline.errors import StageError, storage_error
from pipeline.model_inputs import Prepared
from pipeline.output import publish, staging_dir, write_json
from pipeline.progress import Progress
from pipeline.stage_runner import StageRun
from pipeline.targets import Target

MANIFEST_SCHEMA = Path(__file__).resolve().parent.parent / "benchmarks" / "manifest.schema.json"
RESULT_FOLDERS = ("bench", "report", "gate", "analysis")   # what make bench / report / verify / gate / analyze add


@dataclass
class CompileResult:
    manifest_path: Path
    manifest: Manifest
    runs: list[StageRun]


@dataclass(frozen=True)
class Package:
    """What goes into build/<target>/ and its manifest."""
    options: CompileOptions
    target: Target
    model: Prepared
    artifacts: list[MadeArtifact]
    versions: dict
    compiled_on: dict
    runs: list[StageRun]


def package(pkg: Package, progress: Progress) -> CompileResult:
    """The output folder; a write the storage refuses is one line naming OUT and the bytes needed, and leaves
    build/<target>/ and the cache as they were."""
    try:
        return _assemble(pkg, progress)
    except OSError as exc:
        need = pkg.model.file("eval.npz").stat().st_size + sum(
            p.stat().st_size for art in pkg.artifacts for p in (art.path, *art.extra.values()))
        error = storage_error(exc, f"the output folder {pkg.target.name}/", pkg.options.out_dir, need,
                              "free space there, or give another OUT=dir")
        if error is None:
            raise
        raise error from None


def _assemble(pkg: Package, progress: Progress) -> CompileResult:
    out_dir, name = pkg.options.out_dir, pkg.target.name
    staging = staging_dir(out_dir, name)
    try:
        (staging / "eval").mkdir()
        shutil.copyfile(pkg.model.file("eval.npz"), staging / "eval" / "eval.npz")
        listed = [_copy(art, staging) for art in pkg.artifacts]
        manifest = manifest_of(pkg, listed)
        validate_manifest(manifest)
        write_json(staging / "manifest.json", manifest)
        _carry_results(staging, out_dir / name, listed, pkg.model.built.files["eval.npz"], progress)
        publish(staging, out_dir / name)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return CompileResult(out_dir / name / "manifest.json", manifest, pkg.runs)


def _copy(art: MadeArtifact, staging: Path) -> Artifact:
    for name, path in art.extra.items():
        shutil.copyfile(path, staging / name)
    for sidecar in (art.entry.get("opencl_runtime"), art.entry.get("params")):
        if sidecar and sha256_file(staging / sidecar["file"]) != sidecar["sha256"]:
            raise StageError(f"cache entry for {sidecar['file']} is corrupt; remove "
                             f"{art.extra[sidecar['file']].parent} and compile again")
    dest = staging / art.entry["file"]
    shutil.copyfile(art.path, dest)
    digest = sha256_file(dest)
    if digest != art.entry["sha256"]:
        raise StageError(f"cache entry for {art.entry['file']} is corrupt (sha256 {digest} != recorded "
                         f"{art.entry['sha256']}); remove {art.path.parent} and compile again")
    weights = art.entry.get("params")       # a TVM CPU library's size is the library and its weights together
    return art.entry | {"bytes": dest.stat().st_size + (weights["bytes"] if weights else 0)}


def manifest_of(pkg: Package, listed: list[Artifact]) -> Manifest:
    source, info, evaluation = pkg.model.source, pkg.model.info, pkg.model.info["eval"]
    calibrated = pkg.model.calibrated
    return {
        "target": pkg.target.name,
        "model": {"name": pkg.model.name, "weights": source.kind, "weights_requested": source.requested,
                  "weights_note": source.note, "weights_file": str(source.file) if source.file else None,
                  "input_shape": info["input_shape"], "num_classes": info["num_classes"],
                  "outputs": info["outputs"], "parameters": info["parameters"], "preprocess": info["preprocess"]},
        "artifacts": listed,
        "eval": {"file": "eval/eval.npz", "n": evaluation["n"], "source": evaluation["source"],
                 "labels": evaluation["labels"], "float_top1": evaluation.get("float_top1"),
                 "representative": pkg.model.representative, "sanity": evaluation["sanity"],
                 **({"class_names": evaluation["class_names"]} if evaluation.get("class_names") else {})},
        "calibration": (json.loads(calibrated.file("calib.json").read_text()) | {"images": None}
                        if calibrated else None),
        "versions": pkg.versions | {"pipeline": __version__},
        "compiled_on": pkg.compiled_on,
        "config": {"target": pkg.target.to_dict(),
                   "options": {k: (str(v) if isinstance(v, Path) else v)
                               for k, v in dataclasses.asdict(pkg.options).items()},
                   "stages": [dataclasses.asdict(r) for r in pkg.runs]},
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _carry_results(staging: Path, final: Path, listed: list[Artifact], eval_sha256: str, progress: Progress) -> None:
    """Results of the previous build (bench/, report/, gate/, analysis/) stay when this compile made the same
    files (same names and sha256, same eval set): they still describe them. Otherwise they go, and the user is
    told which and why."""
    found = [final / name for name in RESULT_FOLDERS if (final / name).is_dir()]
    if not found:
        return
    try:
        before = json.loads((final / "manifest.json").read_text())
        same = (sorted((a["file"], a["sha256"]) for a in before["artifacts"])
                == sorted((a["file"], a["sha256"]) for a in listed)
                and sha256_file(final / "eval" / "eval.npz") == eval_sha256)
    except (OSError, ValueError, KeyError, TypeError):
        same = False
    if same:
        for folder in found:
            shutil.copytree(folder, staging / folder.name, symlinks=True)
        return
    progress.warn(f"{final}: removed {', '.join(f.name + '/' for f in found)} of the previous build: "
                  f"they measured artifacts (or an eval set) this compile replaced")


def validate_manifest(manifest: Manifest) -> None:
    """The manifest is a contract (benchmarks/manifest.schema.json): a compile never publishes one that breaks it."""
    import jsonschema

    schema = json.loads(MANIFEST_SCHEMA.read_text())
    try:
        jsonschema.validate(json.loads(json.dumps(manifest)), schema)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(top)"
        raise StageError(f"the manifest breaks benchmarks/manifest.schema.json at {where}: {exc.message}") from None
