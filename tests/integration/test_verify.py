"""`make verify` on a tiny model: rpi4's CPU artifacts under qemu (Cortex-A72) match the host, and a
library built for an ISA the Pi 4 lacks (SVE) is caught. Needs qemu-user, mmdebstrap and the
aarch64 wheels; the set-up installs them as root, else the tests are skipped with the reason."""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys

import pytest


from pipeline.errors import MissingDependencyError
from pipeline.progress import Progress
from pipeline.targets import load_target

pytestmark = pytest.mark.system       # minutes: `make test-system`, run by .ci/run on every change


def emulated_build(tiny_build, tmp_path_factory, emulator_cache, target: str):
    """root/build: the run's shared build of target (tests/conftest.py); root/cache: the run's cache with the
    emulator."""
    root = tmp_path_factory.mktemp(f"verify-{target}")
    (root / "cache").symlink_to(emulator_cache)
    options, _ = tiny_build(target)
    (root / "build").symlink_to(options.out_dir)
    return root


@pytest.fixture(scope="module")
def emulated(tiny_build, tmp_path_factory, emulator_cache):
    return emulated_build(tiny_build, tmp_path_factory, emulator_cache, "rpi4")


def test_rpi4_artifacts_match_the_host_under_emulation(emulated):
    from pipeline.verify import verify_target

    report = verify_target(emulated / "build" / "rpi4", load_target("rpi4"), emulated / "cache", n=3,
                           progress=Progress(quiet=True))
    rows = {r["file"]: r for r in report["rows"]}
    assert set(rows) == {"tiny_fp32.tflite", "tiny_int8.tflite", "tiny_fp32.onnx", "tiny_int8.onnx",
                         "tiny_fp32.so", "tiny_int8.so"}
    assert report["passed"], report
    assert rows["tiny_int8.tflite"]["max_difference"] == 0.0 and rows["tiny_int8.so"]["max_difference"] == 0.0
    assert rows["tiny_fp32.tflite"]["max_difference"] <= 1e-5 and rows["tiny_fp32.onnx"]["max_difference"] <= 1e-5
    onnx = rows["tiny_int8.onnx"]               # judged against float; the host run's difference is recorded
    assert onnx["agreement_top1_float"] == 1.0 and "agreement with float 3/3" in onnx["detail"]
    assert f"against the host run ({report['host']['int8_isa']}" in onnx["detail"]
    assert rows["tiny_int8.tflite"]["xnnpack"] and rows["tiny_fp32.tflite"]["xnnpack"]
    assert all(r["emulated_core"] == "cortex-a72" for r in rows.values())
    assert list((emulated / "build" / "rpi4" / "bench").glob("verify-*.json"))


def test_library_for_an_isa_the_board_lacks_is_caught(emulated, tmp_path):
    """SVE code on a Cortex-A72 (the Pi 4 has no SVE) dies with SIGILL under emulation."""
    from pipeline.stages import tvm_build
    from pipeline.verify import verify_target

    build = tmp_path / "rpi4"
    shutil.copytree(emulated / "build" / "rpi4", build, ignore=shutil.ignore_patterns("bench"))
    config = tvm_build.Config(kind="tvm-int8", file_name="tiny_int8.so", arch="aarch64", host="null", host_cpu="",
                              target=json.dumps({"kind": "llvm", "mtriple": "aarch64-linux-gnu",
                                                 "mcpu": "neoverse-v1", "mattr": ["+sve"]}),
                              linker="zig:aarch64-linux-gnu", linker_version="")
    out = tmp_path / "sve"
    out.mkdir()
    tvm_build.run({"tflite": build / "tiny_int8.tflite"}, config, out, Progress(quiet=True))
    for name in ("tiny_int8.so", "tiny_int8.params"):       # the library and its weights
        shutil.copyfile(out / name, build / name)
    manifest = json.loads((build / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        if art["file"] == "tiny_int8.so":
            art["sha256"] = hashlib.sha256((build / "tiny_int8.so").read_bytes()).hexdigest()
            art["params"]["sha256"] = hashlib.sha256((build / "tiny_int8.params").read_bytes()).hexdigest()
    (build / "manifest.json").write_text(json.dumps(manifest))
    report = verify_target(build, load_target("rpi4"), emulated / "cache", n=2, progress=Progress(quiet=True),
                           only=["tiny_int8.so"])
    assert not report["passed"]
    assert "SIGILL" in report["rows"][0]["detail"]


def test_cli_exit_code_on_mismatch_and_x86_target_refused(emulated, tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeline", "verify", "--target", "host", "--out",
                           str(emulated / "build"), "--cache-dir", str(emulated / "cache")],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "make verify emulates aarch64 boards; target host is x86_64" in done.stderr


def test_unknown_core_is_one_clear_line(tmp_path):
    from pipeline.emulation import Emulator

    with pytest.raises(MissingDependencyError, match=r"no emulated cpuinfo for core 'cortex-x9'; known: cortex-a53"):
        Emulator("qemu-aarch64", tmp_path).set_core("cortex-x9", 4)


@pytest.fixture(scope="module")
def emulated_rpi5(tiny_build, tmp_path_factory, emulator_cache):
    return emulated_build(tiny_build, tmp_path_factory, emulator_cache, "rpi5")


def test_rpi5_sdot_library_is_exact_on_a76_and_dies_on_a72(emulated_rpi5):
    """The rpi5 int8 library (SDOT) computes the host's result bit for bit on an emulated Cortex-A76, and on a
    Cortex-A72 (no dot product) it dies with SIGILL, the failure naming the missing instructions."""
    from pipeline.verify import verify_target

    only = ["tiny_int8.so", "tiny_int8.tflite"]
    build = emulated_rpi5 / "build" / "rpi5"
    report = verify_target(build, load_target("rpi5"), emulated_rpi5 / "cache", n=3, progress=Progress(quiet=True),
                           only=only)
    rows = {r["file"]: r for r in report["rows"]}
    assert report["passed"] and rows["tiny_int8.so"]["max_difference"] == 0.0, report
    assert rows["tiny_int8.so"]["emulated_core"] == "cortex-a76"

    report = verify_target(build, load_target("rpi5"), emulated_rpi5 / "cache", n=2, progress=Progress(quiet=True),
                           only=only, core="cortex-a72")
    rows = {r["file"]: r for r in report["rows"]}
    assert not report["passed"]
    detail = rows["tiny_int8.so"]["detail"]
    assert detail.startswith("killed by SIGILL: tiny_int8.so holds ") and "SDOT/UDOT" in detail
    assert "which cortex-a72 lacks" in detail
    assert rows["tiny_int8.tflite"]["match"]           # LiteRT picks its kernels at run time: it still runs


def test_verify_core_must_be_known(emulated_rpi5):
    from pipeline.errors import InputError
    from pipeline.verify import verify_target

    with pytest.raises(InputError, match=r"VERIFY_CORE='cortex-a99' is not a core the emulator knows; accepted: "):
        verify_target(emulated_rpi5 / "build" / "rpi5", load_target("rpi5"), emulated_rpi5 / "cache",
                      core="cortex-a99")
