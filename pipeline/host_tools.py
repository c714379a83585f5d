"""Set-up of what this machine needs, in one place: Debian packages (apt, as root, one process at a time), pinned
downloads unpacked once into the cache, and ``run_tool``, the one way we run an external tool. Must hold: a
set-up that cannot happen here is one MissingDependencyError line naming the package to install.
"""
from __future__ import annotations

import ctypes.util
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipeline.errors import MissingDependencyError, StageError
from pipeline.progress import Progress


def run_tool(cmd: list, what: str, *, error: type[Exception] = StageError, cwd: Path | None = None,
             env: dict | None = None, pick: str = "") -> subprocess.CompletedProcess:
    """Run an external tool; a non-zero exit raises ``error`` naming ``what``, the exit code and the last lines of
    its stderr (``pick``: the first lines that contain it instead, e.g. a compiler's "error")."""
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines()
        chosen = [line for line in lines if pick in line][:3] if pick else []
        tail = " | ".join(chosen or lines[-3:])[:400] or "no output"
        raise error(f"{what} failed (exit {done.returncode}): {tail}")
    return done


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


def built_from_c(cache_dir: Path, source: Path, output: str, flags: list[str], what: str) -> Path:
    """``output`` compiled from one C ``source`` with this machine's C compiler, once per source (cached in
    ``cache_dir/native/`` by the source's sha256); ``what`` names it in errors."""
    import hashlib

    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise MissingDependencyError(f"{what} needs a C compiler: apt-get install gcc")
    key = hashlib.sha256(source.read_bytes()).hexdigest()[:16]

    def build(folder: Path, scratch: Path) -> str:
        run_tool([cc, "-O2", *flags, "-o", folder / output, source], f"building {what}")
        return key

    return build_once(cache_dir / "native" / f"{source.stem}-{key}", build) / output


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
        run_tool([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--no-deps",
                  "--only-binary=:all:", "-d", scratch, *pins],
                 f"downloading Intel's CPU OpenCL runtime ({' '.join(pins)})", error=MissingDependencyError)
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
