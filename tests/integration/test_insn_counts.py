"""The instruction-counting qemu plugin (pipeline/native/insn_classes.c) and `make estimate`: a known loop is
counted exactly, per class; a tiny model's counts repeat within the runner's timing bookkeeping; a bad target or
core is one line."""
from __future__ import annotations

import json
import shutil
import subprocess

import pytest


# one iteration: one dot product, one multiply-accumulate, one other SIMD op, one load, one scalar op, one branch
LOOP = r"""
#include <stdlib.h>
int main(int argc, char **argv) {
    long n = atol(argv[1]);
    __asm__ volatile("mov x0, %0\n"
                     "1: sdot v0.4s, v1.16b, v2.16b\n"
                     "fmla v3.4s, v4.4s, v5.4s\n"
                     "add v6.4s, v6.4s, v7.4s\n"
                     "ldr q8, [sp]\n"
                     "subs x0, x0, #1\n"
                     "b.ne 1b\n" :: "r"(n) : "x0", "v0", "v3", "v6", "v8", "cc", "memory");
    return 0;
}
"""


def test_the_plugin_counts_a_known_loop_exactly_by_class(tmp_path, stage_cache):
    from pipeline.insn_counts import CLASSES, count_run, ensure_plugin

    gcc, qemu = shutil.which("aarch64-linux-gnu-gcc"), shutil.which("qemu-aarch64")
    if not gcc or not qemu:
        pytest.skip("needs aarch64-linux-gnu-gcc and qemu-aarch64 (apt-get install gcc-aarch64-linux-gnu qemu-user; "
                    ".ci/run does)")
    (tmp_path / "loop.c").write_text(LOOP)
    subprocess.run([gcc, "-O1", "-march=armv8.2-a+dotprod", "-static", "-o", tmp_path / "loop", tmp_path / "loop.c"],
                   check=True)
    plugin = ensure_plugin(stage_cache)
    env = {"QEMU_CPU": "cortex-a76", "PATH": "/usr/bin:/bin"}
    short, long = (count_run([qemu, str(tmp_path / "loop"), str(n)], plugin, env, f"loop {n}") for n in (1000, 3500))
    assert {c: long[c] - short[c] for c in CLASSES} == {c: 2500 for c in CLASSES}


@pytest.mark.parametrize("args,message", [
    (("--target", "host"), r"^error: make estimate on x86 validates AVX2 code, which qemu-x86_64 can run; target host "
                           r"is built for host .*: use TARGET=x86-avx2$"),
    (("--target", "x86-avx2", "--core", "cortex-a72"), r"^error: ESTIMATE_CORE \(--core\) is for ARM targets; "),
    (("--target", "rpi4", "--core", "cortex-x9"), r"^error: no emulated core 'cortex-x9'; known: cortex-a53, "),
])
def test_a_bad_target_or_core_is_one_line(cli, args, message):
    import re

    code, out, err = cli("estimate", *args)
    assert code == 2 and re.search(message, err.strip()) and "\n" not in err.strip(), err


@pytest.mark.system       # the tiny model's CPU artifacts under qemu, twice each: `make test-system`
def test_counts_of_a_tiny_model_are_per_inference_and_the_same_every_run(cli, tiny_build, emulator_cache):
    options, _ = tiny_build("rpi4")
    args = ("estimate", "--target", "rpi4", "--out", options.out_dir, "--cache-dir", emulator_cache,
            "--only", "tiny_int8.tflite", "--only", "tiny_int8.so")
    runs = []
    for _ in range(2):
        code, out, err = cli(*args)
        assert code == 0, err
        runs.append(json.loads((options.out_dir / "rpi4" / "estimate" / "estimate.json").read_text()))
    first, again = ({r["file"]: r["instructions"] for r in run["counts"]} for run in runs)
    assert set(first) == set(again) == {"tiny_int8.tflite", "tiny_int8.so"}
    # the same within the runner's own bookkeeping, which depends on the timings it records (sorting the latency
    # samples, formatting them): about a thousand instructions a run, measured up to 0.3% of this
    # 300k-instruction tiny model; on the reference Xception (1.7e8) that is under 1e-5
    assert all(abs(first[f] - again[f]) <= 1e-2 * first[f] for f in first), (first, again)
    for r in runs[0]["counts"]:
        assert r["instructions"] > 1000 and r["core"] == "cortex-a72"
        assert r["by_class"]["dot"] == 0                     # a Cortex-A72 has no dot-product instructions
        # every counted instruction is attributed to a library's function (or to anonymous code), to the unit
        assert r["attributed"] == r["instructions"] and r["top_functions"] and r["consistent"]
        # the difference of two runs is per inference: far below either run's total (start-up is excluded)
        assert r["instructions"] * 20 < sum(r["totals"][0].values())
    assert "tvm/litert int8" in runs[0]["ratios"] and "counts, not time" in out
    # the estimate: labelled, bounds in order, and as repeatable as the counts it comes from
    assert runs[0]["estimate"]["label"] == "estimate, not measured" and "ESTIMATE, not measured" in out
    for r, second in zip(runs[0]["counts"], runs[1]["counts"]):
        low, high = r["estimate"]["bounds_ms"]
        assert 0 < low < high and r["estimate"]["core"] == "cortex-a72"
        assert second["estimate"]["bounds_ms"][0] == pytest.approx(low, rel=1e-2)
    tvm = next(r for r in runs[0]["counts"] if r["file"] == "tiny_int8.so")
    assert next(iter(tvm["top_functions"])).startswith("tiny_int8.so: ")   # the TVM library's own function first


@pytest.mark.system       # the tiny model's AVX2 artifacts counted under qemu-x86_64 and measured here
def test_the_x86_validation_counts_measures_and_bounds_every_artifact(cli, tiny_build, stage_cache):
    if not shutil.which("qemu-x86_64"):
        pytest.skip("needs qemu-x86_64 (apt-get install qemu-user; .ci/run does)")
    options, _ = tiny_build("x86-avx2")
    code, out, err = cli("estimate", "--target", "x86-avx2", "--out", options.out_dir, "--cache-dir", stage_cache,
                         "--only", "tiny_int8.so", "--only", "tiny_fp32.so")
    assert code == 0, err
    report = json.loads((options.out_dir / "x86-avx2" / "estimate" / "estimate.json").read_text())
    assert report["kind"] == "estimate validation" and report["validation"]["busy_ghz"] > 0
    assert {r["file"] for r in report["counts"]} == {"tiny_int8.so", "tiny_fp32.so"}
    for r in report["counts"]:
        # TVM's library is compiled for Haswell: what qemu counted is what ran here, on any x86 CPU with AVX2
        assert r["same_code"] and r["by_class"]["simd_mac"] > 0 and r["by_class"]["dot"] == 0
        assert 0 < r["lower_cycles"] < r["upper_cycles"] and r["measured_cycles"] > 0
        assert set(r["measured_ms"]) == {"1", "2"}                   # threads (JSON keys)
        assert "error" in r                 # predicted from the other artifact's alpha
    assert report["validation"]["rows_used"] == 2 and "leave-one-out error" in out
