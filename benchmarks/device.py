"""What the benchmark ran on: CPU, cores, governor, frequency, temperature, Raspberry Pi throttling.

Everything is read from /proc and /sys where readable (None where not); nothing is required.
"""
from __future__ import annotations

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
