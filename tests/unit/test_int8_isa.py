"""Which int8 instructions a CPU has, which ONNX int8 scheme a target gets, and whether a figure
measured on one CPU describes another."""
from __future__ import annotations

import pytest

from benchmarks.device import cpu_flags, int8_isa, int8_saturates, this_cpu
from pipeline.accuracy import describes_target
from pipeline.stages.convert import ONNX_INT8_SCHEMES, onnx_int8_scheme
from pipeline.targets import HOST_FEATURES, load_target


@pytest.mark.parametrize("machine,flags,isa,saturates", [
    ("x86_64", {"sse4_2", "avx", "avx2", "fma"}, "avx2", True),
    ("x86_64", {"avx2", "avx512f", "avx512_vnni"}, "avx512-vnni", False),
    ("x86_64", {"avx2", "avx_vnni"}, "avx-vnni", False),
    ("x86_64", {"sse4_2"}, "sse", True),
    ("aarch64", {"fp", "asimd"}, "neon", False),
    ("aarch64", {"fp", "asimd", "asimddp"}, "sdot", False),
    ("aarch64", {"neon", "dotprod", "fp16"}, "sdot", False),      # board files name them this way
    ("aarch64", {"neon"}, "neon", False),
])
def test_int8_isa(machine, flags, isa, saturates):
    assert int8_isa(machine, flags) == isa
    assert int8_saturates(machine, isa) is saturates


def test_shipped_targets_get_the_scheme_their_cpu_needs():
    for name in ("rpi4", "rpi5", "android-arm64"):
        t = load_target(name)
        assert not t.int8_saturates and onnx_int8_scheme(t.arch, t.int8_isa, t.int8_saturates)[0] == "s8s8"
    assert load_target("rpi4").int8_isa == "neon" and load_target("rpi5").int8_isa == "sdot"
    scheme, why = onnx_int8_scheme("x86_64", "avx2", True)
    assert scheme == "u8s8-reduce-range" and ONNX_INT8_SCHEMES[scheme][2] is True and "no VNNI" in why


def test_host_target_detects_this_cpu():
    host = load_target("host")
    assert set(host.cpu.features) == set(cpu_flags()) & set(HOST_FEATURES)
    assert host.int8_isa == this_cpu()["int8_isa"]
    assert host.to_dict()["int8_isa"] == host.int8_isa


AVX2_HOST = {"cpu_model": "x", "machine": "x86_64", "int8_isa": "avx2", "int8_saturates": True}
VNNI_HOST = {"cpu_model": "x", "machine": "x86_64", "int8_isa": "avx512-vnni", "int8_saturates": False}


def test_a_saturating_host_does_not_describe_an_arm_board():
    rpi4 = load_target("rpi4")
    same, why = describes_target("onnx-int8", "s8s8", AVX2_HOST, rpi4)
    assert not same and "saturates" in why
    assert describes_target("onnx-int8", "s8s8", VNNI_HOST, rpi4)[0]
    assert describes_target("onnx-int8", "s8s8", AVX2_HOST | {"emulated": "cortex-a72"}, rpi4)[0]
    assert describes_target("tflite-int8", "", AVX2_HOST, rpi4)[0]          # XNNPACK is exact everywhere
    assert describes_target("onnx-fp32", "", AVX2_HOST, rpi4)[0]


def test_a_non_saturating_scheme_describes_any_x86_cpu(tmp_path):
    (tmp_path / "old.toml").write_text('description = "d"\narch = "x86_64"\nartifacts = ["onnx-int8"]\n'
                                       '[cpu]\ncore = "haswell"\ncores = 2\nfeatures = ["avx2", "fma"]\n'
                                       '[bench]\nthreads = 1\n')
    old = load_target("old", tmp_path)
    assert old.int8_isa == "avx2" and old.int8_saturates
    assert describes_target("onnx-int8", "u8s8-reduce-range", AVX2_HOST, old)[0]
    assert describes_target("onnx-int8", "u8s8-reduce-range", VNNI_HOST, old)[0]


def test_cpuid_overrules_the_hosts_cpuinfo_under_emulation(monkeypatch):
    """qemu-x86_64 -cpu Haswell on an AVX-512 VNNI machine: /proc/cpuinfo is the host's, CPUID the Haswell's."""
    from benchmarks import device

    host_flags = "fpu sse4_2 avx avx2 fma avx512f avx512bw avx512_vnni avx_vnni amx_int8"
    monkeypatch.setattr(device, "_read", lambda path: f"processor\t: 0\nflags\t\t: {host_flags}\n"
                        if path == "/proc/cpuinfo" else None)
    monkeypatch.setattr(device.platform, "machine", lambda: "x86_64")
    haswell = {"AVX": True, "AVX2": True, "FMA3": True, "AVX512F": False, "AVX512BW": False, "AVX512VNNI": False}
    monkeypatch.setattr(device, "_cpuid_features", lambda: haswell)
    flags = set(device.cpu_flags())
    assert {"avx2", "fma"} <= flags and not flags & {"avx512f", "avx512_vnni", "avx_vnni", "amx_int8"}
    assert device.this_cpu()["int8_isa"] == "avx2" and device.this_cpu()["int8_saturates"]
    native = haswell | {"AVX512F": True, "AVX512BW": True, "AVX512VNNI": True}    # the same host, not emulated
    monkeypatch.setattr(device, "_cpuid_features", lambda: native)
    assert {"avx512_vnni", "avx_vnni", "amx_int8"} <= set(device.cpu_flags())
    assert device.this_cpu()["int8_isa"] == "avx512-vnni" and not device.this_cpu()["int8_saturates"]
