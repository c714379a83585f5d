"""Emulated aarch64 for `make verify`: qemu-user, an arm64 Debian sysroot with Python, and the aarch64 wheel
set a provisioned board gets (pipeline/board_wheels.py). Set up once per wheel set, cached, atomically.

The sysroot gets an ARM-looking /proc/cpuinfo and /sys/devices/system/cpu/{possible,present}
for the emulated core (qemu-user redirects the guest's absolute paths into the sysroot when the
file exists there): without them XNNPACK silently disables itself, or crashes.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.board_wheels import PLATFORMS, PYTHON, ensure_wheels
from pipeline.errors import MissingDependencyError
from pipeline.host_tools import build_once, ensure_tool, run_tool
from pipeline.progress import Progress

SUITE = "bookworm"                     # Debian 12: Python 3.11, like the host
GUEST_SITE = "/opt/xception-edge-site"
# MIDR part numbers and the /proc/cpuinfo feature words Linux prints for each core.
CORES = {
    "cortex-a53": ("0xd03", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a55": ("0xd05", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"),
    "cortex-a72": ("0xd08", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a76": ("0xd0b", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"),
    "cortex-a78": ("0xd41", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"),
}
# qemu 7.2 has no model of these cores; each runs as the qemu core with its instruction set (the A78 is
# ARMv8.2-A with the same extensions as the A76: dotprod, fp16, RCpc)
QEMU_MODEL = {"cortex-a78": "cortex-a76", "cortex-a55": "cortex-a76"}     # the A55 too: ARMv8.2-A, dotprod, fp16


@dataclass(frozen=True)
class Emulator:
    qemu: str
    sysroot: Path

    def python(self) -> list[str]:
        return [self.qemu, "-L", str(self.sysroot), str(self.sysroot / "usr/bin/python3")]

    def env(self, core: str) -> dict:
        return os.environ | {"QEMU_CPU": QEMU_MODEL.get(core, core), "PYTHONPATH": GUEST_SITE,
                             "TF_CPP_MIN_LOG_LEVEL": "2"}

    def set_core(self, core: str, cores: int) -> None:
        text = cpuinfo(core, cores)
        (self.sysroot / "proc").mkdir(exist_ok=True)
        (self.sysroot / "proc" / "cpuinfo").write_text(text)
        cpu_lists(self.sysroot, cores)


def cpuinfo(core: str, cores: int) -> str:
    """The /proc/cpuinfo Linux prints on a board of ``cores`` of ``core``."""
    if core not in CORES:
        raise MissingDependencyError(f"no emulated cpuinfo for core {core!r}; known: {', '.join(CORES)}")
    part, features = CORES[core]
    block = (f"processor\t: {{i}}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
             f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 0\n\n")
    return "".join(block.format(i=i) for i in range(cores))


def cpu_lists(root: Path, cores: int) -> None:
    """/sys/devices/system/cpu/{possible,present,online} under ``root`` (XNNPACK reads them)."""
    cpu = root / "sys/devices/system/cpu"
    cpu.mkdir(parents=True, exist_ok=True)
    for name in ("possible", "present", "online"):
        (cpu / name).write_text(f"0-{cores - 1}\n")


def ensure_emulator(cache_dir: Path, progress: Progress) -> Emulator:
    """The sysroot, its runtimes installed from the aarch64 wheel set `make provision` pushes to a board."""
    qemu = ensure_tool("qemu-aarch64", "qemu-user", progress)
    wheels = ensure_wheels(cache_dir, "aarch64", progress)
    sysroot = cache_dir / "emulation" / f"{SUITE}-arm64-{wheels.id}"
    if (sysroot / ".complete").is_file():
        return Emulator(qemu, sysroot)
    mmdebstrap = ensure_tool("mmdebstrap", "mmdebstrap", progress)

    def build(folder: Path, scratch: Path) -> str:
        progress.log(f"building an arm64 Debian {SUITE} sysroot with Python (once, cached in {sysroot})")
        run_tool([mmdebstrap, "--variant=extract", "--architectures=arm64", "--include=python3,libstdc++6",
                  SUITE, folder], "emulator set-up: mmdebstrap")
        progress.log(f"installing the aarch64 wheel set {wheels.id}: {' '.join(wheels.pins)}")
        run_tool([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
                  "--no-index", "--no-deps", "--target", folder / GUEST_SITE.lstrip("/"), "--only-binary=:all:",
                  "--python-version", PYTHON, "--implementation", "cp",
                  *[a for p in PLATFORMS["aarch64"] for a in ("--platform", p)],
                  *[wheels.folder / w["file"] for w in wheels.wheels]], "emulator set-up: pip")
        return f"{wheels.id} " + " ".join(wheels.pins)

    return Emulator(qemu, build_once(sysroot, build))
