"""The TVM stage on a tiny model: host (run and compared with LiteRT), rpi4 (aarch64 ELF), mali (OpenCL)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.compiler import CompileOptions, compile_target
from pipeline.errors import MissingDependencyError, StageError
from tests.conftest import TINY_CALIB_N, TINY_EVAL_N, write_target


@pytest.fixture(scope="module")
def build(tiny_build):
    def compile_for(target: str):
        options, result = tiny_build(target)          # shared by the run (tests/conftest.py)
        return result.manifest, options.out_dir / target
    return compile_for


def tvm_artifacts(manifest):
    return {a["precision"]: a for a in manifest["artifacts"] if a["format"] == "tvm"}


def host_dot_isa():
    import tvm
    from tvm.target.codegen import llvm_get_system_cpu

    from pipeline.tvm.dot import isa_for

    return isa_for(tvm.target.Target({"kind": "llvm", "mcpu": llvm_get_system_cpu()}))


def test_host_tvm_runs_and_matches_litert(build):
    manifest, folder = build("host")
    tvm = tvm_artifacts(manifest)
    assert set(tvm) == {"fp32", "int8"}
    for precision, art in tvm.items():
        assert art["runtime"] == "tvm" and art["device"] == "cpu" and art["arch"] == "x86_64"
        assert art["tvm_target"]["kind"] == "llvm" and art["tvm_target"]["mcpu"]   # this machine's CPU
        acc = art["accuracy"]
        assert acc["n"] == 40 and acc["agreement_top1"] >= 0.9      # the whole eval set
        assert art["schedules"] == "default"
        # conv, depthwise, pointwise and dense in LiteRT's integer arithmetic: on this CPU's int8 dot products
        # where it has them (then none in float32), else exact float32 (tiny weights)
        isa = host_dot_isa()
        assert art["int8_integer_chains"] == (4 if precision == "int8" else 0)
        assert art["int8_float_exact"] == (4 if precision == "int8" and isa is None else 0)
        if precision == "int8" and isa is not None:
            assert art["int8_dot"] == {"isa": isa.name, "instruction": isa.instruction, "functions": 4}
        vs = acc["vs_litert"]
        assert vs["within_tolerance"] and vs["beyond_tolerance"] == 0 and vs["outputs"] == 400
        if precision == "fp32":
            assert vs["max_rel_diff"] <= 1e-4
        else:
            assert vs["max_quant_steps"] <= 1 and art["io"]["input"]["dtype"] == "int8"


def test_host_tvm_library_loads_in_the_runner(build):
    from benchmarks.runtimes import open_session

    manifest, folder = build("host")
    art = tvm_artifacts(manifest)["int8"]
    session = open_session(folder / art["file"], "tvm", 1, art["io"])
    x = np.load(folder / "eval" / "eval.npz")["inputs"][:1]
    assert session.run(x).shape == (1, 10)


def test_rpi4_library_is_an_aarch64_elf_for_the_exact_cpu(build):
    manifest, folder = build("rpi4")
    for art in tvm_artifacts(manifest).values():
        header = (folder / art["file"]).read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and header[4] == 2                     # 64-bit ELF
        assert int.from_bytes(header[16:18], "little") == 3                    # ET_DYN: shared object
        assert int.from_bytes(header[18:20], "little") == 183                  # EM_AARCH64
        assert art["tvm_target"]["mcpu"] == "cortex-a72"
        assert "+dotprod" not in art["tvm_target"].get("mattr", [])
        assert art["accuracy"] is None and "aarch64" in art["accuracy_note"]


def test_mali_library_has_an_opencl_module_and_its_source(build):
    manifest, folder = build("mali")
    art = tvm_artifacts(manifest)["fp32"]
    assert art["device"] == "gpu" and art["tvm_target"]["kind"] == "opencl"
    assert art["opencl_kernels"] > 0
    source = (folder / art["opencl_source"]).read_text()
    assert source.startswith("// Function: ") and source.count("\n// Function: ") + 1 == art["opencl_kernels"]
    assert source.count("__kernel void") > art["opencl_kernels"]       # each chunk declares every kernel again
    assert (folder / art["file"]).read_bytes()[18:20] == (183).to_bytes(2, "little")


def test_unscheduled_gpu_build_is_refused(build, monkeypatch, tmp_path):
    """TVM quietly builds CPU-only code when GPU schedules are missing: the stage must refuse it."""
    import tvm

    run = _opencl_build(build, "tvm-gpu-fp32", tmp_path)
    real_compile = tvm.compile
    monkeypatch.setattr(tvm, "compile", lambda mod, target: real_compile(mod, target=tvm.target.Target("llvm")))
    with pytest.raises(StageError, match=r"TVM built no OpenCL kernels for x\.so .*refusing the artifact"):
        run()
    assert not (tmp_path / "x.so").exists()


def _opencl_build(build, kind: str, out):
    """The TVM stage on the tiny model's fp32 TFLite file with an OpenCL target, as artifact ``kind``."""
    from pipeline.progress import Progress
    from pipeline.stages import tvm_build

    manifest, folder = build("mali")
    config = tvm_build.Config(kind=kind, file_name="x.so", target=json.dumps({"kind": "opencl"}),
                              host="null", host_cpu="", linker="native", linker_version="", arch="x86_64")
    tflite_file = folder / next(a["file"] for a in manifest["artifacts"] if a["kind"] == "tflite-fp32")
    return lambda: tvm_build.run({"tflite": tflite_file}, config, out, Progress(quiet=True))


def test_missing_linker_is_one_clear_line(monkeypatch, tiny_model, stage_cache, tmp_path):
    """Libraries are linked by the pinned zig cc (whatever else is installed) or by the command a target file
    names; either one missing is one line naming it, before any stage runs."""
    from importlib import metadata

    real_version = metadata.version

    def version(name):
        if name == "ziglang":
            raise metadata.PackageNotFoundError(name)
        return real_version(name)
    monkeypatch.setattr(metadata, "version", version)
    with pytest.raises(MissingDependencyError, match=r"linked with zig \(the ziglang package\): run `make setup`"):
        compile_target(CompileOptions(target="rpi4", weights=str(tiny_model), out_dir=tmp_path / "b",
                                      cache_dir=stage_cache, calib_n=TINY_CALIB_N, eval_n=TINY_EVAL_N))
    monkeypatch.undo()
    targets = write_target(tmp_path / "targets", "own", ["tflite-fp32", "tvm-fp32"],
                           '[tvm]\ncpu = { kind = "llvm" }\nlinker = "no-such-linker-gcc"\n')
    with pytest.raises(MissingDependencyError, match=r"tvm.linker = 'no-such-linker-gcc': no such command on the PATH"):
        compile_target(CompileOptions(target="own", weights=str(tiny_model), out_dir=tmp_path / "c", targets_dir=targets,
                                      cache_dir=stage_cache, calib_n=TINY_CALIB_N, eval_n=TINY_EVAL_N))
    assert not (tmp_path / "b" / "rpi4").exists() and not (tmp_path / "c" / "own").exists()


def test_tvm_failure_names_stage_target_artifact_and_log(build, monkeypatch, tiny_model, stage_cache, tmp_path):
    import tvm

    # its own stage cache (nothing of the TVM stage cached), sharing the run's emulated board
    (stage_cache / "emulation").mkdir(exist_ok=True)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "emulation").symlink_to(stage_cache / "emulation")

    def broken(mod, target, **kwargs):
        raise tvm.error.InternalError("simulated codegen failure\nwith a long C++ backtrace")

    monkeypatch.setattr(tvm, "compile", broken)
    with pytest.raises(StageError) as info:
        compile_target(CompileOptions(target="rpi4", weights=str(tiny_model), out_dir=tmp_path / "b",
                                      cache_dir=tmp_path / "c", calib_n=5, eval_n=5))
    message = str(info.value)
    assert "stage tvm tvm-fp32 (tiny_fp32.so) failed for target rpi4" in message
    log = message.split("full log: ")[1].rstrip(")")
    assert "simulated codegen failure" in open(log).read() and "\n" not in message


def test_profile_breaks_an_inference_down_per_function(build, tmp_path, capsys):
    from benchmarks.profile import main as profile_main

    manifest, folder = build("host")
    # one thread: with the test modules running side by side, a thread pool's workers wait for CPUs, and
    # the instrumented and the plain run (separate runs) would time that wait differently
    assert profile_main([str(folder), "--runs", "3", "--threads", "1", "--json", str(tmp_path / "p.json")]) == 0
    profiles = json.loads((tmp_path / "p.json").read_text())
    assert {p["file"] for p in profiles} == {a["file"] for a in tvm_artifacts(manifest).values()}
    for p in profiles:
        names = {f["name"] for f in p["functions"]}
        # the model's own kernels are timed: TVM's fused convolutions, or (int8) our dot-product functions
        conv = "int8_dot_conv" if p["file"].endswith("int8.so") and host_dot_isa() else "fused_conv2d"
        assert any(n.startswith(conv) for n in names), names
        assert all(f["calls"] >= 1 and f["ms"] >= 0 for f in p["functions"])
        assert 0 < p["instrumented_ms"] <= p["total_ms"] + 1e-9    # within each run the parts never exceed the whole
    out = capsys.readouterr().out
    assert all(f"{p['file']}: " in out for p in profiles) and "| function | calls | ms | share |" in out
    assert profile_main([str(folder), "--file", "nope.so"]) == 2


def test_a_cpu_artifact_holding_an_opencl_module_is_refused(build, tmp_path):
    """Checked on the built module, whatever the target file said: a CPU kind built from a GPU target."""
    with pytest.raises(StageError, match=r"x\.so is a CPU artifact \(tvm-fp32\) but TVM built an OpenCL module"):
        _opencl_build(build, "tvm-fp32", tmp_path)()
    assert not (tmp_path / "x.so").exists()
