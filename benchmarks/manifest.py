"""Reading a compiled target folder: its manifest (benchmarks/manifest.schema.json) and the check that
every artifact is the file the manifest hashed. Used by the runner, the ssh and RPC paths, the
profile, the gate and `make verify`; needs nothing beyond the standard library.
"""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.errors import BenchError
from benchmarks.files import sha256_file


def model_gates_key(manifest: dict) -> str:
    """``<name>-<weights>`` (e.g. xception-reference): the model's key in gates.toml and baselines/."""
    return f"{manifest['model']['name']}-{manifest['model']['weights']}"


def fp32_twin(records: list[dict], record: dict) -> dict | None:
    """The fp32 artifact (manifest entry or result) of the same runtime and device as ``record``, if any:
    what an int8 artifact's size and speed are compared with."""
    return next((r for r in records if r["precision"] == "fp32" and r["runtime"] == record["runtime"]
                 and r["device"] == record["device"]), None)


def load_manifest(build_dir: Path) -> dict:
    """build/<target>/manifest.json, or one line saying what is wrong."""
    path = build_dir / "manifest.json"
    if not path.is_file():
        raise BenchError(f"{build_dir} has no manifest.json; give a folder made by `make compile` (build/<target>)")
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise BenchError(f"{path} is not valid JSON: {exc}") from None


def check_hashes(build_dir: Path, artifacts: list[dict]) -> None:
    """Refuse an artifact that is missing or whose sha256 differs from the manifest's (one line each)."""
    for art in artifacts:
        path = build_dir / art["file"]
        if not path.is_file():
            raise BenchError(f"artifact {path} listed in the manifest is missing")
        digest = sha256_file(path)
        if digest != art["sha256"]:
            raise BenchError(f"refusing {art['file']}: its sha256 {digest[:16]}... differs from the manifest's "
                             f"{art['sha256'][:16]}... (modified or corrupt; recompile with `make compile`)")
