"""What the benchmark ran on: CPU, cores, governor, frequency, temperature, Raspberry Pi throttling.

Everything is read from /proc and /sys where readable (None where not); nothing is required.
"""
from __future__ import annotations

import contextlib
import os
import platform
import shutil
import socket
import subprocess
from importlib import metadata
from pathlib import Path

RUNTIME_DISTS = ("ai-edge-litert", "tflite-runtime", "onnxruntime", "apache-tvm", "numpy")
# vcgencmd get_throttled bits: 0-3 happening now, 16-19 happened since boot.
THROTTLE_NOW = {0: "under-voltage", 1: "arm frequency capped", 2: "throttled", 3: "soft temperature limit"}


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def cpu_model() -> str:
    model = _read("/proc/device-tree/model")
    if model:
        return model.rstrip("\x00")
    info = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Hardware", "Processor", "CPU part"):
        for line in info.splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# x86 flags whose presence CPUID confirms (numpy's runtime dispatch reads CPUID): Linux name -> numpy's.
CPUID_CONFIRMED = {"avx": "AVX", "avx2": "AVX2", "fma": "FMA3", "avx512f": "AVX512F", "avx512bw": "AVX512BW",
                   "avx512_vnni": "AVX512VNNI"}


def _cpuid_features() -> dict | None:
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return None
    return dict(__cpu_features__)


def cpu_flags() -> tuple[str, ...]:
    """This CPU's ISA flags as Linux names them (x86 ``flags``, ARM ``Features``), sorted.

    On x86 the flags are checked against CPUID, which is what code really runs on: under qemu-user
    (``qemu-x86_64 -cpu Haswell``) /proc/cpuinfo is the host's, CPUID the emulated CPU's. Where they
    disagree, CPUID wins and flags CPUID cannot confirm (avx_vnni, amx_*) are dropped.
    """
    flags: set[str] = set()
    for line in (_read("/proc/cpuinfo") or "").splitlines():
        if line.split(":", 1)[0].strip() in ("flags", "Features"):
            flags = set(line.split(":", 1)[1].split())
            break
    cpuid = _cpuid_features() if platform.machine() in ("x86_64", "AMD64") else None
    if cpuid:
        emulated = any(flag in flags and not cpuid.get(key) for flag, key in CPUID_CONFIRMED.items())
        flags = {f for f in flags if f not in CPUID_CONFIRMED or cpuid.get(CPUID_CONFIRMED[f])}
        flags |= {f for f, key in CPUID_CONFIRMED.items() if cpuid.get(key)}
        if emulated:
            flags -= {"avx_vnni", "amx_int8", "amx_tile", "amx_bf16", "avx512_bf16", "avx512_vbmi"}
    return tuple(sorted(flags))


# Int8 dot-product instruction sets, best first, with the Linux flag that reveals each. On x86 without
# VNNI, ONNX Runtime's u8 x s8 kernels use VPMADDUBSW, whose int16 pair sums saturate; the VNNI
# instructions (VPDPBUSD) and ARM's (SDOT, or NEON widening multiply-accumulate) accumulate exactly.
X86_INT8 = (("avx512_vnni", "avx512-vnni"), ("avx_vnni", "avx-vnni"), ("avx2", "avx2"))
ARM_INT8 = (("asimddp", "sdot"), ("dotprod", "sdot"), ("asimd", "neon"), ("neon", "neon"))


def int8_isa(machine: str, flags) -> str:
    """The int8 dot-product instruction set of a CPU from its machine name and ISA flags/features.

    x86_64: avx512-vnni, avx-vnni, avx2 or sse; aarch64: sdot or neon. Board files use the same
    names as Linux (``avx512_vnni``, ``avx_vnni``, ``avx2``; ``dotprod`` or ``asimddp``, ``neon``).
    """
    flags = set(flags)
    table, fallback = (ARM_INT8, "neon") if machine in ("aarch64", "arm64") else (X86_INT8, "sse")
    return next((name for flag, name in table if flag in flags), fallback)


def int8_saturates(machine: str, isa: str) -> bool:
    """Whether ONNX Runtime's u8 x s8 int8 kernels saturate on this CPU (x86 without VNNI)."""
    return machine not in ("aarch64", "arm64") and isa not in ("avx512-vnni", "avx-vnni")


def this_cpu() -> dict:
    """What a measurement ran on: CPU model, machine, int8 dot-product ISA."""
    machine = platform.machine()
    isa = int8_isa(machine, cpu_flags())
    return {"cpu_model": cpu_model(), "machine": machine, "int8_isa": isa,
            "int8_saturates": int8_saturates(machine, isa)}


def temperature_c() -> float | None:
    raw = _read("/sys/class/thermal/thermal_zone0/temp")
    try:
        return round(int(raw) / 1000.0, 1) if raw else None
    except ValueError:
        return None


def throttled() -> int | None:
    """The raw `vcgencmd get_throttled` bit field on a Raspberry Pi, else None."""
    if not shutil.which("vcgencmd"):
        return None
    try:
        out = subprocess.run(["vcgencmd", "get_throttled"], capture_output=True, text=True, timeout=5).stdout
        return int(out.strip().split("=")[1], 16)
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):
        return None


def snapshot() -> dict:
    """Readings that can change during a run (taken before and after)."""
    freq = _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_cur_freq")
    return {"temperature_c": temperature_c(), "throttled": throttled(),
            "freq_mhz": round(int(freq) / 1000) if freq and freq.isdigit() else None}


@contextlib.contextmanager
def pinned(cpus: list[int], log=print):
    """Run what is inside (and the processes it starts) on the target's bench cluster: its Linux CPU numbers
    from the target file (e.g. an RK3588's Cortex-A76 cores 4-7). Yields the CPUs pinned to, or None where
    the file names none or this machine lacks them (then nothing is pinned, and the log says why)."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        yield None
        return
    allowed = os.sched_getaffinity(0)
    if not set(cpus) <= allowed:
        log(f"  not pinned to the target's bench cluster (CPUs {sorted(cpus)}): this machine offers CPUs "
            f"{sorted(allowed)}")
        yield None
        return
    os.sched_setaffinity(0, cpus)
    try:
        yield sorted(cpus)
    finally:
        os.sched_setaffinity(0, allowed)


def describe(threads: int) -> dict:
    versions = {}
    for dist in RUNTIME_DISTS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "int8_isa": this_cpu()["int8_isa"],
        "cores": os.cpu_count(),
        "threads": threads,
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "max_freq_mhz": (lambda v: round(int(v) / 1000) if v and v.isdigit() else None)(
            _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")),
        "runtimes": versions,
    }


def throttle_reasons(before: int | None, after: int | None) -> list[str]:
    """Why a run counts as throttled: a 'now' bit set before or after, or new 'since boot' bits."""
    reasons = []
    for value, when in ((before, "before"), (after, "after")):
        if value:
            reasons += [f"{name} ({when})" for bit, name in THROTTLE_NOW.items() if value & (1 << bit)]
    if before is not None and after is not None and (after >> 16) & ~(before >> 16) & 0xF:
        reasons.append("throttling occurred during the run")
    return reasons
