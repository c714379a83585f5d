"""Emulated aarch64 for `make verify`: qemu-user, an arm64 Debian sysroot with Python, and the
aarch64 wheels of the versions the host uses. Set up once per tool versions, cached, atomically.

The sysroot gets an ARM-looking /proc/cpuinfo and /sys/devices/system/cpu/{possible,present}
for the emulated core (qemu-user redirects the guest's absolute paths into the sysroot when the
file exists there): without them XNNPACK silently disables itself, or crashes.
"""
from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import MissingDependencyError, StageError
from pipeline.progress import Progress
from pipeline.versions import tool_versions

SUITE = "bookworm"                     # Debian 12: Python 3.11, like the host
GUEST_SITE = "/opt/xception-edge-site"
# cloudpickle and psutil: TVM's RPC server (an emulated board for `make tune RPC=`) needs them
WHEELS = ("ai-edge-litert", "onnxruntime", "numpy", "apache-tvm", "apache-tvm-ffi", "cloudpickle", "psutil")
PLATFORMS = ("manylinux_2_27_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64")
# MIDR part numbers and the /proc/cpuinfo feature words Linux prints for each core.
CORES = {
    "cortex-a53": ("0xd03", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a55": ("0xd05", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"),
    "cortex-a72": ("0xd08", "fp asimd evtstrm crc32 cpuid"),
    "cortex-a76": ("0xd0b", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"),
}


@dataclass(frozen=True)
class Emulator:
    qemu: str
    sysroot: Path

    def python(self) -> list[str]:
        return [self.qemu, "-L", str(self.sysroot), str(self.sysroot / "usr/bin/python3")]

    def env(self, core: str) -> dict:
        return os.environ | {"QEMU_CPU": core, "PYTHONPATH": GUEST_SITE, "TF_CPP_MIN_LOG_LEVEL": "2"}

    def set_core(self, core: str, cores: int) -> None:
        if core not in CORES:
            raise MissingDependencyError(f"no emulated cpuinfo for core {core!r}; known: {', '.join(CORES)}")
        part, features = CORES[core]
        block = (f"processor\t: {{i}}\nBogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
                 f"CPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: {part}\nCPU revision\t: 0\n\n")
        (self.sysroot / "proc").mkdir(exist_ok=True)
        (self.sysroot / "proc" / "cpuinfo").write_text("".join(block.format(i=i) for i in range(cores)))
        cpu = self.sysroot / "sys/devices/system/cpu"
        cpu.mkdir(parents=True, exist_ok=True)
        for name in ("possible", "present", "online"):
            (cpu / name).write_text(f"0-{cores - 1}\n")


APT_LOCK = Path(tempfile.gettempdir()) / "xception-edge-apt.lock"


def apt_install(package: str, progress: Progress, why: str, extra: tuple[str, ...] = (),
                before=None) -> None:
    """apt-get install (``extra``: more packages and options), as root on Debian only; one process at a time
    (parallel test workers, two compiles), waiting for dpkg's own lock rather than failing on it. ``before``
    runs under the lock first (e.g. adding a package source, which then needs an update). Quiet; the caller
    checks what it needed."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return
    import fcntl

    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=600"]
    install = ["apt-get", *wait, "install", "-y", "-qq", package, *extra]
    with open(APT_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        progress.log(f"installing {package} (Debian) for {why}")
        updated = before is not None and before()
        if updated:
            subprocess.run(["apt-get", *wait, "update", "-qq"], capture_output=True, env=env)
        done = subprocess.run(install, capture_output=True, env=env)
        if done.returncode and not updated:    # an old or missing package list: update once, then try again
            subprocess.run(["apt-get", *wait, "update", "-qq"], capture_output=True, env=env)
            subprocess.run(install, capture_output=True, env=env)


def ensure_tool(name: str, package: str, progress: Progress) -> str:
    """The path of a Debian tool, installed with apt-get when missing and possible (root), else one clear error."""
    found = shutil.which(name)
    if found:
        return found
    apt_install(package, progress, name)
    found = shutil.which(name)
    if not found:
        raise MissingDependencyError(f"{name} is not installed and could not be installed here; "
                                     f"run `apt-get install {package}` as root")
    return found


def ensure_file(path: str, package: str, progress: Progress, why: str) -> Path:
    """A file a Debian package provides (headers, a library), installed with apt-get when missing and possible."""
    if not Path(path).exists():
        apt_install(package, progress, why)
    if not Path(path).exists():
        raise MissingDependencyError(f"{path} is missing and could not be installed here ({why}); "
                                     f"run `apt-get install {package}` as root")
    return Path(path)


LAVAPIPE_ICD = Path("/usr/share/vulkan/icd.d/lvp_icd.json")
MESA_MIN_MAJOR = 25          # LiteRT's WebGPU (Dawn) rejects bookworm's Mesa 22.3 ("No adapters found")
DEBIAN = "http://deb.debian.org/debian"
BACKPORTS = Path("/etc/apt/sources.list.d/xception-edge-backports.sources")


def _mesa_major() -> int:
    done = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "mesa-vulkan-drivers"], capture_output=True, text=True)
    head = done.stdout.split(".")[0] if done.returncode == 0 else ""
    return int(head) if head.isdigit() else 0


def ensure_lavapipe(progress: Progress) -> Path:
    """Mesa's software Vulkan (lavapipe) 25 or newer, for LiteRT's GPU accelerator without a GPU: on Debian 12
    from bookworm-backports (the source is added, once), as root; else one line saying what is needed."""
    if LAVAPIPE_ICD.is_file() and _mesa_major() >= MESA_MIN_MAJOR and ctypes.util.find_library("vulkan"):
        return LAVAPIPE_ICD
    release = Path("/etc/os-release").read_text() if Path("/etc/os-release").is_file() else ""
    if "VERSION_CODENAME=bookworm" in release:
        def add_backports() -> bool:
            if not BACKPORTS.is_file():
                BACKPORTS.write_text(f"Types: deb\nURIs: {DEBIAN}\nSuites: bookworm-backports\n"
                                     "Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
            return True                    # the backports package list may be old or missing: update first

        apt_install("mesa-vulkan-drivers", progress, "LiteRT's GPU path (lavapipe, from bookworm-backports)",
                    extra=("libvulkan1", "-t", "bookworm-backports"), before=add_backports)
    if LAVAPIPE_ICD.is_file() and _mesa_major() >= MESA_MIN_MAJOR and ctypes.util.find_library("vulkan"):
        return LAVAPIPE_ICD
    raise MissingDependencyError(f"LiteRT's GPU accelerator needs Mesa's lavapipe {MESA_MIN_MAJOR} or newer and the "
                                 f"Vulkan loader (found Mesa {_mesa_major() or 'none'}); on Debian 12 as root: "
                                 f"`apt-get install -t bookworm-backports mesa-vulkan-drivers libvulkan1`")


# Intel's CPU OpenCL runtime from PyPI: a CPU OpenCL with cl_khr_fp16 (POCL has none), for fp16 GPU kernels.
# It runs on AMD CPUs too. Pinned; unpacked once into the cache, never into the venv.
INTEL_OPENCL = (("intel-opencl-rt", "2026.2.0"), ("intel-cmplr-lib-rt", "2026.2.0"), ("tbb", "2023.2.0"))
INTEL_OPENCL_PLATFORM = "Intel(R) OpenCL"



def build_once(root: Path, build: Callable[[Path, Path], str]) -> Path:
    """``root``, built once and cached: ``build(folder, scratch)`` fills a new folder (``scratch`` is for
    downloads) and returns what it pinned, written to ``.complete``; the folder then replaces ``root`` in one
    rename, so a failed or interrupted build leaves nothing half-made."""
    if (root / ".complete").is_file():
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root.parent))
    try:
        (tmp / "root").mkdir()
        (tmp / "scratch").mkdir()
        pins = build(tmp / "root", tmp / "scratch")
        (tmp / "root" / ".complete").write_text(pins + "\n")
        os.replace(tmp / "root", root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_intel_opencl(cache_dir: Path, progress: Progress) -> dict[str, str]:
    """The environment that makes Intel's CPU OpenCL the OpenCL platform of a process (OCL_ICD_VENDORS, the
    libraries on LD_LIBRARY_PATH, XC_OPENCL_PLATFORM for our runtime)."""
    import platform
    import zipfile

    if platform.machine() != "x86_64":
        raise MissingDependencyError(f"Intel's CPU OpenCL runtime is for x86-64; this machine is {platform.machine()}")
    root = cache_dir / "intel-opencl" / "-".join(f"{n}{v}" for n, v in INTEL_OPENCL)

    def build(folder: Path, scratch: Path) -> str:
        pins = [f"{n}=={v}" for n, v in INTEL_OPENCL]
        progress.log(f"downloading Intel's CPU OpenCL runtime (fp16 kernels): {' '.join(pins)} (once, cached in {root})")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                               "--no-deps", "--only-binary=:all:", "-d", str(scratch), *pins],
                              capture_output=True, text=True)
        if done.returncode:
            tail = " | ".join(done.stderr.strip().splitlines()[-2:])
            raise MissingDependencyError(f"cannot download Intel's CPU OpenCL runtime ({' '.join(pins)}): {tail}")
        lib = folder / "lib"
        lib.mkdir()
        for wheel in scratch.glob("*.whl"):
            with zipfile.ZipFile(wheel) as z:
                for member in z.infolist():
                    parts = member.filename.split("/")
                    if len(parts) == 4 and parts[0].endswith(".data") and parts[1:3] == ["data", "lib"] and parts[3]:
                        target = lib / parts[3]
                        target.write_bytes(z.read(member))
                        target.chmod(0o755)
        (folder / "vendors").mkdir()
        (folder / "vendors" / "intel-cpu.icd").write_text(f"{root / 'lib' / 'libintelocl.so'}\n")
        return " ".join(pins)

    build_once(root, build)
    return {"OCL_ICD_VENDORS": str(root / "vendors"), "XC_OPENCL_PLATFORM": INTEL_OPENCL_PLATFORM,
            "LD_LIBRARY_PATH": ":".join(p for p in (str(root / "lib"), os.environ.get("LD_LIBRARY_PATH", "")) if p)}


def ensure_emulator(cache_dir: Path, progress: Progress) -> Emulator:
    qemu = ensure_tool("qemu-aarch64", "qemu-user", progress)
    versions = tool_versions()
    tag = "-".join(f"{w}{versions[w]}" for w in WHEELS)
    sysroot = cache_dir / "emulation" / f"{SUITE}-arm64-{tag}"
    if (sysroot / ".complete").is_file():
        return Emulator(qemu, sysroot)
    mmdebstrap = ensure_tool("mmdebstrap", "mmdebstrap", progress)

    def build(folder: Path, scratch: Path) -> str:
        progress.log(f"building an arm64 Debian {SUITE} sysroot with Python (once, cached in {sysroot})")
        _run([mmdebstrap, "--variant=extract", "--architectures=arm64", "--include=python3,libstdc++6",
              SUITE, str(folder)], "mmdebstrap")
        pins = [f"{w}=={versions[w]}" for w in WHEELS]
        progress.log(f"installing aarch64 wheels: {' '.join(pins)}")
        _run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile",
              "--target", str(folder / GUEST_SITE.lstrip("/")), "--only-binary=:all:", "--python-version",
              "3.11", "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], *pins], "pip")
        return " ".join(pins)

    return Emulator(qemu, build_once(sysroot, build))


def _run(cmd: list[str], what: str) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise StageError(f"emulator set-up: {what} failed (exit {done.returncode}): {tail}")
