import pytest

from pipeline.errors import ConfigError
from pipeline.targets import ARTIFACT_KINDS, TARGETS_DIR, available_targets, load_target

REQUIRED_BOARDS = ("host", "rpi4", "rpi5", "android-arm64", "mali", "adreno")

GOOD = """
description = "test board"
arch = "aarch64"
artifacts = ["tflite-int8"]
[cpu]
core = "cortex-a53"
cores = 4
features = ["neon"]
[bench]
threads = 4
"""


def write(tmp_path, name, text):
    (tmp_path / f"{name}.toml").write_text(text)
    return tmp_path


@pytest.mark.parametrize("name", REQUIRED_BOARDS)
def test_shipped_targets_parse(name):
    target = load_target(name)
    assert target.name == name
    assert target.artifacts and all(kind in ARTIFACT_KINDS for kind in target.artifacts)
    assert target.tvm is not None


def test_board_facts():
    rpi4, rpi5 = load_target("rpi4"), load_target("rpi5")
    assert rpi4.cpu.core == "cortex-a72" and "dotprod" not in rpi4.cpu.features
    assert rpi4.tvm.target["mcpu"] == "cortex-a72" and "+dotprod" not in rpi4.tvm.target["mattr"]
    assert rpi5.cpu.core == "cortex-a76" and "dotprod" in rpi5.cpu.features
    for gpu in ("mali", "adreno"):
        t = load_target(gpu)
        assert t.gpu.api == "opencl" and t.tvm.target["kind"] == "opencl" and "tflite-fp16" in t.artifacts
    assert {"tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8"} <= set(rpi4.artifacts)


def test_every_shipped_file_is_listed():
    assert set(REQUIRED_BOARDS) <= set(available_targets())
    assert sorted(p.stem for p in TARGETS_DIR.glob("*.toml")) == available_targets()


def test_unknown_target_lists_valid_ones():
    with pytest.raises(ConfigError, match=r"unknown target 'rpi9'; valid targets: .*rpi4.*rpi5"):
        load_target("rpi9")


def test_user_board_is_just_a_file(tmp_path):
    target = load_target("myboard", write(tmp_path, "myboard", GOOD))
    assert target.cpu.core == "cortex-a53" and target.artifacts == ("tflite-int8",)


def test_malformed_toml(tmp_path):
    with pytest.raises(ConfigError, match=r"bad\.toml: malformed TOML"):
        load_target("bad", write(tmp_path, "bad", GOOD + "\n[cpu\n"))


def test_unknown_top_level_key_names_key_and_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'colour'; valid keys: description, arch, artifacts"):
        load_target("b", write(tmp_path, "b", 'colour = "red"\n' + GOOD))


def test_unknown_nested_key(tmp_path):
    with pytest.raises(ConfigError, match=r"\[cpu\]: unknown key 'mhz'; valid keys: core, cores, features"):
        load_target("b", write(tmp_path, "b", GOOD.replace("cores = 4", "cores = 4\nmhz = 1500")))


def test_missing_key(tmp_path):
    with pytest.raises(ConfigError, match=r"missing key 'arch'"):
        load_target("b", write(tmp_path, "b", GOOD.replace('arch = "aarch64"', "")))


@pytest.mark.parametrize("old,new,message", [
    ('arch = "aarch64"', 'arch = "riscv"', r"arch 'riscv' is not valid; valid: aarch64, x86_64"),
    ('["tflite-int8"]', '["tflite-int4"]', r"artifacts entry 'tflite-int4' is not valid; valid: tflite-fp32"),
    ('["tflite-int8"]', "[]", r"artifacts is empty"),
    ("cores = 4", "cores = -1", r"cpu.cores must be a whole number >= 0"),
    ("threads = 4", 'threads = "four"', r"bench.threads must be a whole number"),
])
def test_bad_values(tmp_path, old, new, message):
    with pytest.raises(ConfigError, match=message):
        load_target("b", write(tmp_path, "b", GOOD.replace(old, new)))


def test_tvm_target_passes_through_untouched(tmp_path):
    text = GOOD + '[tvm]\ntarget = { kind = "llvm", mcpu = "cortex-a53", num-cores = 4 }\n'
    target = load_target("b", write(tmp_path, "b", text))
    assert target.tvm.target == {"kind": "llvm", "mcpu": "cortex-a53", "num-cores": 4}
    tagged = load_target("c", write(tmp_path, "c", GOOD + '[tvm]\ntarget = "raspberry-pi/4b-aarch64"\n'))
    assert tagged.tvm.target == "raspberry-pi/4b-aarch64"
    with pytest.raises(ConfigError, match=r"tvm.target must be a TVM tag \(string\) or a table, got int"):
        load_target("d", write(tmp_path, "d", GOOD + "[tvm]\ntarget = 3\n"))


GPU_BOARD = GOOD.replace('"tflite-int8"', '{kinds}') + '[gpu]\napi = "opencl"\nname = "Mali-G610"\n[tvm]\ntarget = {target}\n'


@pytest.mark.parametrize("kinds,target,message", [
    ('"tvm-int8"', '{ kind = "opencl", device = "mali" }',
     r"tvm-int8 run on the CPU but tvm.target is a opencl \(GPU\) target"),
    ('"tvm-fp32", "tvm-gpu-fp32"', '{ kind = "opencl" }', r"tvm-fp32 run on the CPU but tvm.target is a opencl"),
    ('"tvm-gpu-fp32"', '{ kind = "llvm", mtriple = "aarch64-linux-gnu" }',
     r"tvm-gpu-fp32 runs on the GPU but tvm.target is llvm \(the CPU\)"),
    ('"tvm-gpu-fp32"', '"llvm -mtriple=aarch64-linux-gnu"', r"tvm-gpu-fp32 runs on the GPU but tvm.target is llvm"),
])
def test_a_tvm_artifact_is_built_for_the_processor_it_names(tmp_path, kinds, target, message):
    """An OpenCL module labelled cpu, or a CPU-only library labelled gpu, is refused when the file is read."""
    with pytest.raises(ConfigError, match=message):
        load_target("b", write(tmp_path, "b", GPU_BOARD.format(kinds=kinds, target=target)))
    fine = load_target("ok", write(tmp_path, "ok", GPU_BOARD.format(kinds='"tvm-gpu-fp32"', target='{ kind = "opencl" }')))
    assert fine.artifacts == ("tvm-gpu-fp32",)
