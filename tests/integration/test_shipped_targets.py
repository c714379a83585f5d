"""Every shipped target file compiles its whole artifact list (tiny model), each artifact built for the
processor its kind names: the README's schema, the files in targets/ and the compiler agree."""
from __future__ import annotations

import pytest

from pipeline.targets import ARTIFACT_KINDS, available_targets, load_target

pytestmark = pytest.mark.system       # every shipped target compiled: a minute; `make test-system`


@pytest.mark.parametrize("name", available_targets())
def test_shipped_target_compiles_its_artifact_list(tiny_build, name):
    target = load_target(name)
    options, result = tiny_build(name)
    manifest = result.manifest
    assert sorted(a["kind"] for a in manifest["artifacts"]) == sorted(target.artifacts)
    folder = options.out_dir / name
    for art in manifest["artifacts"]:
        made = ARTIFACT_KINDS[art["kind"]]
        fmt, precision, runtime, device = made.format, made.precision, made.runtime, made.device
        assert (art["format"], art["precision"], art["runtime"], art["device"]) == (fmt, precision, runtime, device)
        weights = art.get("params")               # a TVM CPU library's weights beside it count in its bytes
        assert (folder / art["file"]).stat().st_size + (weights["bytes"] if weights else 0) == art["bytes"] > 0
        if art["kind"] == "onnx-int8" and target.arch == "aarch64":     # measured as the board computes it
            assert art["accuracy"]["measured_on"]["emulated"] == target.cpu.core
        if fmt != "tvm":
            continue
        library = (folder / art["file"]).read_bytes()
        machine = int.from_bytes(library[18:20], "little")
        assert machine == {"aarch64": 183, "x86_64": 62}[target.arch], art["file"]
        if device == "gpu":          # an OpenCL module with its kernels, host code for the board's CPU
            assert art["tvm_target"]["kind"] == "opencl" and art["opencl_kernels"] > 0
            assert (folder / art["opencl_source"]).read_text().count("\n// Function: ") + 1 == art["opencl_kernels"]
        else:                        # a CPU library: llvm, and no OpenCL anywhere in it
            assert art["tvm_target"]["kind"] == "llvm" and "opencl_kernels" not in art
            assert b"__kernel" not in library and b"opencl" not in library.lower()
        if art["kind"] == "tvm-int8" and target.arch == "aarch64":
            check_arm_dot_products(folder / art["file"], art, "dotprod" in target.cpu.features)


def check_arm_dot_products(library, art, dotprod: bool):
    """Boards with the dot-product extension (rpi5, rk3588, adreno) get SDOT in their int8 library; the others
    (rpi4) NEON's widening multiplies and no SDOT. Counted by encoding, and by objdump where it is installed."""
    import shutil
    import subprocess

    from pipeline.tvm.library import aarch64_dot_instructions

    assert art["int8_dot"]["isa"] == ("sdot" if dotprod else "neon") and art["int8_dot"]["functions"] >= 4
    dots = aarch64_dot_instructions(library)
    assert (dots > 0) == dotprod, dots
    objdump = shutil.which("aarch64-linux-gnu-objdump")
    if objdump:
        listing = subprocess.run([objdump, "-d", "-j", ".text", str(library)], capture_output=True, text=True,
                                 check=True).stdout
        mnemonics = [line.split("\t")[2].split()[0] for line in listing.splitlines() if line.count("\t") >= 2]
        assert sum(m in ("sdot", "udot") for m in mnemonics) == dots
        if not dotprod:                                      # NEON: widening multiplies, pairwise sums
            assert "smull" in mnemonics and "saddlp" in mnemonics
