"""What a board would execute per inference, counted under emulation: the runner's child runs each CPU
artifact under qemu-user as the board's core, on 1 thread, with our TCG plugin (pipeline/native/insn_classes.c)
counting the instructions executed by class. The child runs twice, with K and 2K timed inferences after the same
load and warm-up; the difference over K is one inference's count, start-up and warm-up excluded.
Counts, not time: no throughput model is applied here (docs/estimate.md says what is and is not measured).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

from pipeline.emulation import Emulator
from pipeline.errors import ConfigError, StageError
from pipeline.host_tools import built_from_c, run_tool

SOURCE = Path(__file__).resolve().parent / "native" / "insn_classes.c"
CLASSES = ("dot", "simd_mac", "simd_other", "load_store", "branch", "scalar")
ROOT = Path(__file__).resolve().parent.parent
TOP = 12                     # functions kept per artifact in estimate.json, the most instructions first


def ensure_plugin(cache_dir: Path) -> Path:
    """The plugin, built once per source with this machine's C compiler (cached by the source's sha256)."""
    return built_from_c(cache_dir, SOURCE, "insn_classes.so", ["-shared", "-fPIC", "-fvisibility=hidden", "-Wall"],
                        "the instruction-counting qemu plugin")


def read_counts(path: Path) -> dict[str, int]:
    """The plugin's totals, by class."""
    totals = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == "total":
            totals[parts[1]] = int(parts[2])
    if set(totals) != set(CLASSES):
        raise StageError(f"{path}: the plugin wrote no complete totals (got {sorted(totals)})")
    return totals


def count_run(command: list[str], plugin: Path, env: dict, what: str, maps: Path | None = None) -> dict[str, int]:
    """Totals by class of one command run under qemu-user (``command`` starts with the qemu binary); with ``maps``,
    also "attribution": {library: function -> instructions}, from the blocks and the guest's memory map the
    command wrote there (the runner's child does, given XCEPTION_EDGE_MAPS)."""
    from pipeline.insn_attribution import attribute, read_blocks, read_maps

    with tempfile.TemporaryDirectory(prefix="insn-") as tmp:
        out = Path(tmp) / "counts.txt"
        run_tool([command[0], "-plugin", f"{plugin},out={out}", *command[1:]], what, cwd=ROOT, env=env)
        if not out.is_file():
            raise StageError(f"{what}: the counting plugin wrote nothing")
        totals = read_counts(out)
        if maps is None:
            return totals
        if not maps.is_file():
            raise StageError(f"{what}: the runner wrote no memory map ({maps})")
        sysroot = Path(command[command.index("-L") + 1]) if "-L" in command else Path("/")
        guest = lambda p: sysroot / p.lstrip("/") if (sysroot / p.lstrip("/")).is_file() else Path(p)
        return totals | {"attribution": attribute(read_blocks(out.read_text()), read_maps(maps.read_text()), guest)}


def per_inference(build_dir: Path, art: dict, emulator: Emulator, core: str, plugin: Path, runs: int = 2,
                  cache_dir: Path | None = None) -> dict:
    """Instructions per inference of one artifact, by class: (count with 2K runs - count with K runs) / K.
    With ``cache_dir``, a count is kept there and reused for the same artifact bytes, weights, core, emulator
    command, plugin, runner and runtime versions (an x86 fp32 count takes minutes of emulated AVX2)."""
    if art.get("device") == "gpu":
        raise ConfigError(f"{art['file']} runs on the GPU; instruction counts are for CPU artifacts")
    if cache_dir is None:
        return _count(build_dir, art, emulator, core, plugin, runs)
    from benchmarks.files import write_text_atomic
    from pipeline.versions import tool_versions

    runner = (ROOT / "benchmarks" / "run.py").read_bytes() + SOURCE.read_bytes()
    key = hashlib.sha256(json.dumps([art.get("sha256"), (art.get("params") or {}).get("sha256"), core, runs,
                                     emulator.python()[:-1], hashlib.sha256(runner).hexdigest(),
                                     tool_versions()], sort_keys=True).encode()).hexdigest()[:24]
    path = cache_dir / "insn-counts" / f"{key}.json"
    if art.get("sha256") and path.is_file():
        return json.loads(path.read_text()) | {"file": art["file"], "cached": True}
    row = _count(build_dir, art, emulator, core, plugin, runs)
    if art.get("sha256"):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(row) + "\n")
    return row


def _count(build_dir: Path, art: dict, emulator: Emulator, core: str, plugin: Path, runs: int) -> dict:
    from benchmarks.run import Budget, child_command

    emulator.set_core(core, 1)
    env = emulator.env(core) | {"PYTHONHASHSEED": "0", "TVM_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    from pipeline.insn_attribution import per_inference as attributed

    totals = []
    with tempfile.TemporaryDirectory(prefix="insn-run-") as tmp:
        for k in (runs, 2 * runs):
            budget = Budget(warmup=1, min_runs=k, min_seconds=0.0, max_seconds=1e9, accuracy_seconds=1e9)
            cmd = child_command(build_dir, art, 1, budget, 1, Path(tmp) / f"result-{k}.json", emulator.python())
            maps = Path(tmp) / f"maps-{k}.txt"
            totals.append(count_run(cmd, plugin, env | {"XCEPTION_EDGE_MAPS": str(maps)},
                                    f"{art['file']} under qemu as {core}, {k} inferences", maps))
    per = {c: (totals[1][c] - totals[0][c]) / runs for c in CLASSES}
    functions = attributed(totals[0].pop("attribution"), totals[1].pop("attribution"), runs)
    return {"file": art["file"], "runtime": art["runtime"], "precision": art["precision"], "core": core,
            "by_class": per, "instructions": sum(per.values()), "runs": [runs, 2 * runs], "totals": totals,
            "attributed": sum(functions.values()), "top_functions": dict(list(functions.items())[:TOP]),
            # a class that shrank from K to 2K inferences: the runs did timing-dependent work (spinning, first-use
            # set-up) beyond the inferences, so these figures are not one inference's
            "consistent": all(v >= 0 for v in per.values())}


def write_report(folder: Path, rows: list[dict], meta: dict) -> Path:
    from benchmarks.files import write_text_atomic

    folder.mkdir(parents=True, exist_ok=True)
    return write_text_atomic(folder / "estimate.json", json.dumps(meta | {"counts": rows}, indent=1) + "\n")
