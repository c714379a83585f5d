import pytest

from pipeline.errors import ConfigError
from pipeline.targets import ARTIFACT_KINDS, TARGETS_DIR, available_targets, load_target

REQUIRED_BOARDS = ("host", "rpi4", "rpi5", "android-arm64", "mali", "adreno", "rk3588")

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
    assert (target.tvm is None) == (target.os == "android")        # a phone gets no TVM library
    assert target.ram_mb > 0 or name == "host"                        # make gate checks peak RSS against it


def test_a_phone_gets_only_what_a_phone_loads_and_is_told_what_runs_there():
    phone = load_target("android-arm64")
    assert phone.os == "android" and phone.tvm is None
    assert all(ARTIFACT_KINDS[k].format in ("tflite", "onnx") for k in phone.artifacts)
    assert "LiteRT" in phone.on_a_phone and "ONNX Runtime Mobile" in phone.on_a_phone
    assert load_target("rpi5").on_a_phone == ""


@pytest.mark.parametrize("extra", [
    'os = "android"\nartifacts = ["tflite-int8", "tvm-int8"]\n[tvm]\ncpu = { kind = "llvm", mtriple = "aarch64-linux-gnu" }\n',
    'artifacts = ["tvm-int8"]\n[tvm]\ncpu = { kind = "llvm", mtriple = "aarch64-linux-android" }\n',
])
def test_tvm_for_android_is_one_line_that_says_why_and_what_to_use(tmp_path, extra):
    text = GOOD.replace('artifacts = ["tflite-int8"]\n', "")
    head, rest = text.split("[cpu]", 1)
    folder = write(tmp_path, "phone", head + extra.split("[tvm]")[0] + "[cpu]" + rest
                   + ("[tvm]" + extra.split("[tvm]")[1] if "[tvm]" in extra else ""))
    with pytest.raises(ConfigError) as err:
        load_target("phone", folder)
    message = str(err.value)
    assert "\n" not in message and "tvm-int8 for Android" in message
    assert "TVM libraries cannot be loaded on Android" in message and "LiteRT" in message and "aarch64-linux-gnu" in message


def test_adreno_is_a_qualcomm_linux_board_with_its_real_cores():
    from pipeline.emulation import CORES, QEMU_MODEL

    board = load_target("adreno")
    assert board.os == "linux" and board.gpu.name == "Adreno 643" and "QCS6490" in board.description
    assert {c.core: c.cpus for c in board.cpu.clusters} == {"cortex-a78": (4, 5, 6, 7), "cortex-a55": (0, 1, 2, 3)}
    assert board.cpu.core == "cortex-a78" and board.int8_isa == "sdot"
    for spec in (board.tvm.cpu, board.tvm.gpu_host):
        assert spec["mtriple"] == "aarch64-linux-gnu" and spec["mcpu"] == "cortex-a78"
    assert {"tvm-int8", "tvm-gpu-fp16"} <= set(board.artifacts)
    assert "cortex-a78" in CORES and QEMU_MODEL["cortex-a78"] == "cortex-a76"      # make verify runs it as an A76


def test_board_facts():
    rpi4, rpi5 = load_target("rpi4"), load_target("rpi5")
    assert rpi4.cpu.core == "cortex-a72" and "dotprod" not in rpi4.cpu.features
    assert rpi4.tvm.cpu["mcpu"] == "cortex-a72" and "+dotprod" not in rpi4.tvm.cpu["mattr"]
    assert rpi5.cpu.core == "cortex-a76" and "dotprod" in rpi5.cpu.features
    for gpu in ("mali", "adreno"):
        t = load_target(gpu)
        assert t.gpu.api == "opencl" and t.tvm.gpu["kind"] == "opencl" and "tflite-fp16" in t.artifacts
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
    with pytest.raises(ConfigError, match=r"\[cpu\]: unknown key 'mhz'; valid keys: core, cores, cpus, features"):
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
    ('arch = "aarch64"', 'arch = "aarch64"\nram_mb = "1GB"', r"ram_mb must be the board's RAM in MB, a whole number .*got '1GB'"),
    ('arch = "aarch64"', 'arch = "aarch64"\nram_mb = -5', r"ram_mb must be the board's RAM in MB"),
])
def test_bad_values(tmp_path, old, new, message):
    with pytest.raises(ConfigError, match=message):
        load_target("b", write(tmp_path, "b", GOOD.replace(old, new)))


def test_tvm_target_passes_through_untouched(tmp_path):
    text = GOOD + '[tvm]\ncpu = { kind = "llvm", mcpu = "cortex-a53", num-cores = 4 }\n'
    target = load_target("b", write(tmp_path, "b", text))
    assert target.tvm.cpu == {"kind": "llvm", "mcpu": "cortex-a53", "num-cores": 4}
    tagged = load_target("c", write(tmp_path, "c", GOOD + '[tvm]\ncpu = "raspberry-pi/4b-aarch64"\n'))
    assert tagged.tvm.target_for("cpu") == ("raspberry-pi/4b-aarch64", None)
    with pytest.raises(ConfigError, match=r"tvm.cpu must be a TVM tag \(string\) or a table, got int"):
        load_target("d", write(tmp_path, "d", GOOD + "[tvm]\ncpu = 3\n"))


def test_the_old_one_target_form_is_refused_with_the_new_one(tmp_path):
    with pytest.raises(ConfigError, match=r"tvm.target / tvm.host are the old one-target form.*tvm.cpu = .*tvm.gpu ="):
        load_target("b", write(tmp_path, "b", GOOD + '[tvm]\ntarget = { kind = "llvm" }\n'))


GPU_BOARD = GOOD.replace('"tflite-int8"', '{kinds}') + '[gpu]\napi = "opencl"\nname = "Mali-G610"\n[tvm]\n{tvm}\n'
CPU_T = 'cpu = { kind = "llvm", mtriple = "aarch64-linux-gnu" }'
GPU_T = 'gpu = { kind = "opencl", device = "mali" }'


@pytest.mark.parametrize("kinds,tvm,message", [
    ('"tvm-int8"', GPU_T, r"tvm-int8 run on the CPU and need a CPU TVM target: \[tvm\] cpu = "),
    ('"tvm-gpu-fp32"', CPU_T, r"tvm-gpu-fp32 runs on the GPU and needs a GPU TVM target: \[tvm\] gpu = "),
    ('"tvm-int8"', 'cpu = { kind = "opencl" }', r"tvm.cpu is a opencl \(GPU\) target; the CPU target is kind = \"llvm\""),
    ('"tvm-gpu-fp32"', CPU_T + '\ngpu = { kind = "llvm" }', r"tvm.gpu is llvm \(the CPU\)"),
    ('"tvm-gpu-fp32"', 'gpu = "llvm -mtriple=aarch64-linux-gnu"', r"tvm.gpu is llvm"),
    ('"tvm-gpu-fp32"', GPU_T, r"host code runs on the board's CPU: give tvm.cpu \(or tvm.gpu_host\)"),
])
def test_a_tvm_artifact_is_built_for_the_processor_it_names(tmp_path, kinds, tvm, message):
    """An OpenCL module labelled cpu, or a CPU-only library labelled gpu, is refused when the file is read."""
    with pytest.raises(ConfigError, match=message):
        load_target("b", write(tmp_path, "b", GPU_BOARD.format(kinds=kinds, tvm=tvm)))


def test_one_board_has_cpu_and_gpu_tvm_artifacts(tmp_path):
    both = load_target("ok", write(tmp_path, "ok", GPU_BOARD.format(kinds='"tvm-int8", "tvm-gpu-fp32"',
                                                                     tvm=CPU_T + "\n" + GPU_T)))
    assert both.tvm.target_for("cpu") == ({"kind": "llvm", "mtriple": "aarch64-linux-gnu"}, None)
    assert both.tvm.target_for("gpu") == ({"kind": "opencl", "device": "mali"},      # host code: the board's CPU
                                          {"kind": "llvm", "mtriple": "aarch64-linux-gnu"})
    own_host = load_target("h", write(tmp_path, "h", GPU_BOARD.format(
        kinds='"tvm-gpu-fp32"', tvm=GPU_T + '\ngpu_host = { kind = "llvm", mcpu = "cortex-a53" }')))
    assert own_host.tvm.target_for("gpu")[1] == {"kind": "llvm", "mcpu": "cortex-a53"}


def test_rk3588_is_a_big_little_board_with_cpu_and_gpu_artifacts():
    rk = load_target("rk3588")
    assert [(c.name, c.core, c.cpus) for c in rk.cpu.clusters] == [
        ("big", "cortex-a76", (4, 5, 6, 7)), ("little", "cortex-a55", (0, 1, 2, 3))]
    assert (rk.cpu.core, rk.cpu.cores, rk.cpu.cpus, rk.bench.cluster, rk.bench.threads) == \
        ("cortex-a76", 4, (4, 5, 6, 7), "big", 4)
    assert {"tvm-int8", "tvm-fp32", "tvm-gpu-fp32"} <= set(rk.artifacts) and rk.int8_isa == "sdot"
    assert rk.tvm.cpu["kind"] == "llvm" and rk.tvm.gpu["kind"] == "opencl" and rk.gpu.name == "Mali-G610"


CLUSTERS = """description = "big.LITTLE"
arch = "aarch64"
artifacts = ["tflite-int8", "tvm-int8"]
[[cpu.clusters]]
name = "big"
core = "cortex-a76"
cpus = [4, 5, 6, 7]
features = ["neon", "dotprod"]
[[cpu.clusters]]
name = "little"
core = "cortex-a53"
cpus = [0, 1, 2, 3]
features = ["neon"]
[bench]
cluster = "big"
threads = 4
[tvm]
cpu = { kind = "llvm", mcpu = "cortex-a76", mattr = ["+neon", "+dotprod"] }
"""


@pytest.mark.parametrize("old,new,message", [
    ('cluster = "big"\n', "", r"has 2 CPU clusters \(big, little\); say which one .* with bench.cluster"),
    ('cluster = "big"', 'cluster = "mid"', r"bench.cluster 'mid' is not valid; valid: big, little"),
    ("threads = 4", "threads = 8", r"bench.threads = 8 but cluster 'big' has 4 cores"),
    ("cpus = [0, 1, 2, 3]", "cpus = [3, 4]", r"cluster 'little' lists cpus \[4\] that another cluster lists too"),
    ("cpus = [0, 1, 2, 3]", "cpus = [0, 0]", r"cpus must be a list of distinct Linux CPU numbers"),
    ('name = "little"', 'name = "big"', r"cpu.clusters names must differ"),
    ('cluster = "big"', 'cluster = "little"',
     r"tvm.cpu mattr \+dotprod needs dotprod, which cluster 'little' \(cortex-a53\) does not list.*SIGILL"),
    ('cpus = [4, 5, 6, 7]', 'cores = 4\ncpus = [4, 5]', r"cores = 4 but cpus lists 2 CPUs"),
    ('cpus = [4, 5, 6, 7]', '', r"cpu.clusters\[0\]: missing key 'cores' \(or 'cpus'"),
])
def test_cluster_mistakes_are_one_line_each(tmp_path, old, new, message):
    assert load_target("ok", write(tmp_path, "ok", CLUSTERS)).cpu.cpus == (4, 5, 6, 7)
    with pytest.raises(ConfigError, match=message):
        load_target("b", write(tmp_path, "b", CLUSTERS.replace(old, new, 1)))


def test_every_emulated_core_has_a_qemu_model():
    """make verify and make estimate run each core of CORES as QEMU_MODEL's stand-in or as itself: qemu 7.2 must
    know that model (it has no Cortex-A55 nor A78)."""
    import shutil
    import subprocess

    from pipeline.emulation import CORES, QEMU_MODEL

    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        pytest.skip("no qemu-aarch64 (apt-get install qemu-user; .ci/run does)")
    known = subprocess.run([qemu, "-cpu", "help"], capture_output=True, text=True).stdout.split()
    assert [c for c in CORES if QEMU_MODEL.get(c, c) not in known] == []
