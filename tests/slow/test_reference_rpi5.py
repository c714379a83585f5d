"""The reference Xception for rpi5 (moved here from .ci/run to keep CI within its budget; the same property is
proven on a tiny model by tests/integration/test_verify.py in the system tier): the int8 library's convolutions
are sdot instructions (by objdump and by encoding, none in rpi4's), bit-exact on an emulated Cortex-A76, and
killed by SIGILL on a Cortex-A72 with one line naming the instructions. Minutes: `make test-slow`."""
import json
import subprocess
from pathlib import Path

import pytest

from pipeline.tvm.library import aarch64_dot_instructions
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _make(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "--no-print-directory", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True)


def _sdot(out: Path, target: str) -> tuple[str, int, int]:
    manifest = json.loads((out / target / "manifest.json").read_text())
    art = next(a for a in manifest["artifacts"] if a["kind"] == "tvm-int8")
    lib = out / target / art["file"]
    listing = subprocess.run(["aarch64-linux-gnu-objdump", "-d", "-j", ".text", str(lib)], capture_output=True,
                             text=True, check=True).stdout
    return art["int8_dot"]["isa"], sum("\tsdot\t" in line for line in listing.splitlines()), \
        aarch64_dot_instructions(lib)


def test_rpi5_reference_int8_is_sdot_exact_on_a76_and_dies_on_a72(tmp_path):
    out = tmp_path / "build"
    for target in ("rpi5", "rpi4"):
        done = _make("compile", f"TARGET={target}", f"OUT={out}")
        assert done.returncode == 0, done.stderr[-3000:]
    isa, by_objdump, by_encoding = _sdot(out, "rpi5")
    assert isa == "sdot" and by_objdump > 0 and by_objdump == by_encoding
    isa, by_objdump, by_encoding = _sdot(out, "rpi4")
    assert isa == "neon" and by_objdump == by_encoding == 0
    done = _make("verify", "TARGET=rpi5", f"OUT={out}")
    assert done.returncode == 0 and "PASS: under emulated cortex-a76" in done.stdout, done.stdout[-3000:]
    done = _make("verify", "TARGET=rpi5", f"OUT={out}", "VERIFY_CORE=cortex-a72")
    assert done.returncode == 1, (done.returncode, done.stdout[-3000:])
    assert "killed by SIGILL: xception_int8.so holds" in done.stdout + done.stderr
    assert "SDOT/UDOT instructions" in done.stdout + done.stderr and "which cortex-a72 lacks" in done.stdout + done.stderr
