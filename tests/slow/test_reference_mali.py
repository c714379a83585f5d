"""The reference Xception for mali (moved here from .ci/run to keep CI within its budget; the system tier proves
the same on tiny models in tests/integration/test_opencl.py): OpenCL kernels in every GPU library, the aarch64
OpenCL runtime shipped beside them, and `make verify` runs each library's x86-host twin on POCL through our
runtime against LiteRT. Minutes: `make test-slow`."""
import json
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_mali_reference_has_opencl_kernels_and_verifies_on_pocl(tmp_path):
    out = tmp_path / "build"
    done = subprocess.run(["make", "-s", "compile", "TARGET=mali", f"OUT={out}"], cwd=ROOT, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    manifest = json.loads((out / "mali" / "manifest.json").read_text())
    gpu = [a for a in manifest["artifacts"] if a["format"] == "tvm" and a["device"] == "gpu"]
    assert gpu and all(a["opencl_kernels"] > 0 for a in gpu)
    assert all(a["opencl_runtime"]["arch"] == "aarch64" for a in gpu)
    done = subprocess.run(["make", "-s", "verify", "TARGET=mali", "VERIFY_N=8", f"OUT={out}"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0 and "PASS" in done.stdout, done.stdout[-3000:] + done.stderr[-2000:]
