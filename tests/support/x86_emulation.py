"""x86 instruction sets this machine lacks (AVX-512 VNNI, AVX-VNNI), run: TVM-compiled functions on Bochs' emulated
Intel CPUs, with no operating system.

qemu's TCG has no VNNI (7.2, and 10.0 from bookworm-backports) and Linux 6.1 does not boot on Bochs 2.7's
Tiger Lake (it stops after "LSM: Security Framework initializing", in a fault loop), so the functions run bare
metal: the object files TVM writes (``Module.write_to_file``), linked with a freestanding runner
(tests/support/native/x86_runner.c) that calls each one by TVM's FFI calling convention and compares its output with
the expected bytes, and the boot code (tests/support/native/x86_boot.S: long mode, AVX-512 state on), booted by
syslinux's Multiboot loader from an ISO image. Output comes back on the emulated serial port. A run takes
seconds; the tools come from Debian (installed with apt as root, else one line saying what to install).

Debian 12's Bochs 2.7 has AVX512-VNNI (Tiger Lake, Ice Lake) but no CPU with AVX-VNNI; ``bochs3`` fetches
Debian 13's Bochs 3.0, whose Arrow Lake has AVX-VNNI without AVX-512 (the VEX ``vpdpbusd`` an avx-vnni build
emits) and whose Sapphire Rapids has both, with Debian 13's C runtime it needs, into the cache.
"""
from __future__ import annotations

import hashlib
import lzma
import os
import pty
import re
import shutil
import subprocess
import tempfile
import threading
import time
import tty
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.host_tools import DEBIAN, apt_install, build_once, run_tool
from pipeline.errors import InputError, MissingDependencyError, StageError
from pipeline.progress import Progress

NATIVE = Path(__file__).resolve().parent / "native"
CPU_MODEL = "tigerlake"          # Bochs 2.7's model with AVX512-VNNI (and VL, BW); none of its models has AVX-VNNI
PACKAGES = ("bochs", "bochsbios", "vgabios", "bochs-term", "isolinux", "syslinux-common", "xorriso")
FILES = {
    "bochs-bin": "/usr/bin/bochs-bin",
    "bios": "/usr/share/bochs/BIOS-bochs-latest",
    "vgabios": "/usr/share/vgabios/vgabios.bin",
    "isolinux.bin": "/usr/lib/ISOLINUX/isolinux.bin",
    "ldlinux.c32": "/usr/lib/syslinux/modules/bios/ldlinux.c32",
    "mboot.c32": "/usr/lib/syslinux/modules/bios/mboot.c32",
    "libcom32.c32": "/usr/lib/syslinux/modules/bios/libcom32.c32",
    "xorriso": "/usr/bin/xorriso",
    "term display": "/usr/lib/*/bochs/plugins/libbx_term_gui.so",     # bochs-term: Debian's Bochs has no nogui
}
NEEDS = {"avx2": 1, "avx512-vnni": 2, "avx-vnni": 4}        # tests/support/native/x86_runner.c's NEEDS_* bits
DTYPES = {"int8": (0, 8), "int16": (0, 16), "int32": (0, 32), "uint8": (1, 8), "float32": (2, 32)}
MAX_OPERAND_BYTES = 256 << 20   # inputs, outputs and expected outputs, in the emulated machine's 512 MiB
LINE = re.compile(r"^(SAME|DIFFERS|SKIP) (\w+)(?: (\d+)/(\d+) rc (-?\d+))?$")


@dataclass(frozen=True)
class Call:
    """One call of a compiled function: ``symbol`` is its name in the object file (TVM's global symbol), ``args``
    its inputs, ``expected`` what it must write into its one output (the last argument: same shape and dtype)."""
    symbol: str
    args: tuple[np.ndarray, ...]
    expected: np.ndarray
    needs: str = "avx2"


@dataclass(frozen=True)
class Outcome:
    status: str                  # same | differs | skipped (the emulated CPU lacks the instruction set)
    bytes_differing: int = 0
    bytes: int = 0
    rc: int = 0


@dataclass(frozen=True)
class Report:
    cpu: str                     # the emulated CPU's brand string and instruction sets, as the runner read them
    outcomes: dict[str, Outcome]
    seconds: float


def ensure_tools(progress: Progress) -> dict[str, Path]:
    """Bochs, its BIOS, syslinux's ISO boot loader and xorriso; gcc and binutils for the runner."""
    found = _found()
    if len(found) < len(FILES):
        apt_install(PACKAGES[0], progress, "running x86 code on an emulated AVX512-VNNI CPU",
                    extra=("--no-install-recommends", *PACKAGES[1:]))
        found = _found()
    missing = [name for name in FILES if name not in found]
    missing += [t for t in ("gcc", "ld", "objcopy") if not shutil.which(t)]
    if missing:
        raise MissingDependencyError(f"{', '.join(missing)} not installed and could not be installed here; "
                                     f"run `apt-get install {' '.join(PACKAGES)} gcc binutils` as root")
    return found


BOCHS3_SUITE = "trixie"              # Debian 13: Bochs 3.0, built against glibc 2.41 (Debian 12 has 2.36)
BOCHS3_PACKAGES = ("bochs", "bochs-term", "bochsbios", "libc6", "libstdc++6", "libgcc-s1", "libltdl7")


def bochs3(cache_dir: Path, progress: Progress) -> dict[str, Path]:
    """``ensure_tools``' tools with Bochs 3.0 in place of 2.7: Debian 13's packages, checked against the SHA-256
    of Debian 13's package index, unpacked once into ``cache_dir`` (atomically) and run through Debian 13's own
    dynamic loader and C/C++ runtime; the GUI libraries it links come from Debian 12's bochs package."""
    tools = ensure_tools(progress)
    root = cache_dir / "bochs" / f"{BOCHS3_SUITE}-3.0"
    lib = root / "usr/lib/x86_64-linux-gnu"

    def build(folder: Path, scratch: Path) -> str:
        progress.log(f"fetching Bochs 3.0 from Debian {BOCHS3_SUITE} (once, cached in {root})")
        index = _fetch(f"{DEBIAN}/dists/{BOCHS3_SUITE}/main/binary-amd64/Packages.xz")
        wanted = package_index(lzma.decompress(index).decode(), BOCHS3_PACKAGES)
        for name in BOCHS3_PACKAGES:
            if name not in wanted:
                raise MissingDependencyError(f"Debian {BOCHS3_SUITE}'s index has no package {name}")
            filename, digest = wanted[name]
            data = _fetch(f"{DEBIAN}/{filename}")
            if hashlib.sha256(data).hexdigest() != digest:
                raise MissingDependencyError(f"{Path(filename).name}: SHA-256 differs from Debian "
                                             f"{BOCHS3_SUITE}'s index")
            deb = scratch / Path(filename).name
            deb.write_bytes(data)
            _sh(["dpkg-deb", "-x", str(deb), str(folder)], f"unpacking {deb.name}", scratch)
        wrapper = folder / "bochs"
        wrapper.write_text("#!/bin/sh\n"
                           f"export LTDL_LIBRARY_PATH={lib}/bochs/plugins\n"
                           f"exec {lib}/ld-linux-x86-64.so.2 --library-path "
                           f"{lib}:/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu {root}/usr/bin/bochs-bin \"$@\"\n")
        wrapper.chmod(0o755)
        return " ".join(f"{n}={wanted[n][0]}" for n in BOCHS3_PACKAGES)

    build_once(root, build)
    return tools | {"bochs-bin": root / "bochs", "bios": root / "usr/share/bochs/BIOS-bochs-latest"}


def _fetch(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=120) as response:
            return response.read()
    except OSError as error:
        raise MissingDependencyError(f"cannot download {url}: {error}") from None


def package_index(packages: str, names: tuple[str, ...]) -> dict[str, tuple[str, str]]:
    """Filename and SHA-256 of each of ``names`` in a Debian Packages index."""
    found = {}
    for stanza in packages.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in stanza.splitlines() if ": " in line and not line[0].isspace())
        if fields.get("Package") in names and "Filename" in fields and "SHA256" in fields:
            found[fields["Package"]] = (fields["Filename"], fields["SHA256"])
    return found


def _found() -> dict[str, Path]:
    found = {}
    for name, pattern in FILES.items():
        hits = sorted(Path("/").glob(pattern.lstrip("/")))
        if hits:
            found[name] = hits[0]
    return found


def operands(calls: list[Call], work: Path) -> None:
    """tests/support/native/x86_runner.c's calls.h (shapes, dtypes, the table of calls) and data.S, which brings every
    input and expected output in as the raw bytes of a file beside it (``.incbin``: Xception-size operands
    assemble in moments); the outputs are zeroed buffers."""
    header, data, rows, total = ["/* generated by tests/support/x86_emulation.py */\n"], [".section .data\n"], [], 0
    for i, call in enumerate(calls):
        if not re.fullmatch(r"[A-Za-z_]\w*", call.symbol):
            raise InputError(f"{call.symbol!r} is not a C symbol; accepted: letters, digits and underscores")
        if call.needs not in NEEDS:
            raise InputError(f"unknown instruction set {call.needs!r}; accepted: {', '.join(NEEDS)}")
        args = [*call.args, call.expected]
        total += sum(a.nbytes for a in args) + call.expected.nbytes
        if total > MAX_OPERAND_BYTES:
            raise InputError(f"the calls' operands pass {MAX_OPERAND_BYTES >> 20} MiB at {call.symbol}; the emulated "
                             "machine has 512 MiB: run them in smaller batches")
        if len(args) > 8:
            raise InputError(f"{call.symbol}: {len(args)} arguments; the runner takes at most 8")
        described = []
        for j, a in enumerate(args):
            if str(a.dtype) not in DTYPES:
                raise InputError(f"{call.symbol}: argument {j} is {a.dtype}; accepted: {', '.join(DTYPES)}")
            code, bits = DTYPES[str(a.dtype)]
            name = f"c{i}_a{j}"
            if j < len(call.args):                     # an input: its bytes
                (work / f"{name}.bin").write_bytes(np.ascontiguousarray(a).tobytes())
                data.append(f".balign 64\n.globl {name}\n{name}:\n.incbin \"{name}.bin\"\n.byte 0\n")
                header.append(f"extern uint8_t {name}[];\n")
            else:                                      # the output: a zeroed buffer the size of the expected one
                header.append(f"static uint8_t {name}[{max(a.nbytes, 1)}] __attribute__((aligned(64)));\n")
            dims = ','.join(map(str, a.shape)) or '0'
            header.append(f"static const int64_t c{i}_s{j}[{max(a.ndim, 1)}] = {{{dims}}};\n")
            described.append(f"{{{name}, {a.ndim}, {code}, {bits}, c{i}_s{j}}}")
        (work / f"c{i}_expected.bin").write_bytes(np.ascontiguousarray(call.expected).tobytes())
        data.append(f".balign 64\n.globl c{i}_expected\nc{i}_expected:\n.incbin \"c{i}_expected.bin\"\n.byte 0\n")
        header.append(f"extern const uint8_t c{i}_expected[];\n")
        header.append(f"int __tvm_ffi_{call.symbol}(void *, const TVMFFIAny *, int32_t, TVMFFIAny *);\n")
        rows.append(f'  {{"{call.symbol}", __tvm_ffi_{call.symbol}, {NEEDS[call.needs]}u, {len(args)}, '
                    f'{{{", ".join(described)}}}, c{i}_expected}},\n')
    header.append("static const call_t CALLS[] = {\n" + "".join(rows) + "};\n")
    (work / "calls.h").write_text("".join(header))
    (work / "data.S").write_text("".join(data) + '.section .note.GNU-stack, "", @progbits\n')


def _ffi_include() -> Path:
    import tvm_ffi

    include = Path(tvm_ffi.__file__).resolve().parent / "include"
    if not (include / "tvm/ffi/c_api.h").exists():
        raise MissingDependencyError(f"tvm_ffi's C headers are not in {include}; reinstall apache-tvm-ffi")
    return include


def _sh(cmd: list[str], what: str, cwd: Path) -> None:
    run_tool(cmd, what, cwd=cwd)


def build_image(objects: list[Path], calls: list[Call], work: Path, tools: dict[str, Path]) -> Path:
    """The bootable ISO: runner + boot code + ``objects``, a flat Multiboot binary loaded by mboot.c32."""
    operands(calls, work)
    flags = ["-O1", "-ffreestanding", "-fno-pie", "-fno-stack-protector", "-mno-red-zone", "-mgeneral-regs-only",
             "-fno-builtin", "-fno-asynchronous-unwind-tables", "-Wall", "-Werror"]
    _sh(["gcc", "-c", *flags, f"-I{_ffi_include()}", f"-I{work}", "-o", "runner.o", str(NATIVE / "x86_runner.c")],
        "compiling the bare-metal runner", work)
    _sh(["gcc", "-c", "-o", "boot.o", str(NATIVE / "x86_boot.S")], "assembling the boot code", work)
    _sh(["gcc", "-c", "-o", "data.o", "data.S"], "assembling the operands", work)
    _sh(["ld", "-nostdlib", "-static", "-no-pie", "--no-warn-rwx-segments", "-T", str(NATIVE / "x86_boot.ld"),
         "-o", "image.elf", "boot.o", "runner.o", "data.o", *map(str, objects)], "linking the image", work)
    iso = work / "iso"
    (iso / "isolinux").mkdir(parents=True, exist_ok=True)
    _sh(["objcopy", "-O", "binary", "-j", ".multiboot", "-j", ".text32", "-j", ".text", "-j", ".rodata",
         "-j", ".data", "image.elf", str(iso / "image.bin")], "objcopy", work)
    for name in ("isolinux.bin", "ldlinux.c32", "mboot.c32", "libcom32.c32"):
        shutil.copy(tools[name], iso / "isolinux" / name)
    (iso / "isolinux/isolinux.cfg").write_text("default run\nprompt 0\ntimeout 0\nlabel run\n"
                                               "  kernel mboot.c32\n  append /image.bin\n")
    _sh([str(tools["xorriso"]), "-as", "mkisofs", "-quiet", "-o", "boot.iso", "-b", "isolinux/isolinux.bin",
         "-c", "isolinux/boot.cat", "-no-emul-boot", "-boot-load-size", "4", "-boot-info-table", str(iso)],
        "making the boot image", work)
    return work / "boot.iso"


def boot(iso: Path, work: Path, tools: dict[str, Path], cpu_model: str, timeout_s: float) -> str:
    """Boot ``iso`` in Bochs (its terminal display on a pseudo-terminal we drain, its debugger told to
    continue) until the runner powers it off or a fault stops it; the serial port's text. The serial port is a
    second pseudo-terminal, read as Bochs writes it (a file would lose its buffered tail when a fault ends Bochs)."""
    log = work / "bochs.log"
    console, console_slave = pty.openpty()
    serial, serial_slave = pty.openpty()
    tty.setraw(serial_slave)
    (work / "bochsrc").write_text(
        f"megs: 512\ncpu: model={cpu_model}, count=1, ips=400000000, reset_on_triple_fault=0\n"
        f"romimage: file={tools['bios']}\nvgaromimage: file={tools['vgabios']}\n"
        "display_library: term\nata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14\n"
        f"ata0-master: type=cdrom, path={iso}, status=inserted\nboot: cdrom\n"
        f"com1: enabled=1, mode=term, dev={os.ttyname(serial_slave)}\nlog: {log}\n"
        "panic: action=fatal\nerror: action=report\ninfo: action=ignore\nclock: sync=none\n")
    (work / "commands").write_text("continue\nquit\n")
    text = bytearray()
    readers = [threading.Thread(target=_read, args=(console, None), daemon=True),
               threading.Thread(target=_read, args=(serial, text), daemon=True)]
    try:
        proc = subprocess.Popen([str(tools["bochs-bin"]), "-q", "-f", "bochsrc", "-rc", "commands"], cwd=work,
                                stdin=console_slave, stdout=console_slave, stderr=console_slave,
                                env=os.environ | {"TERM": "xterm"}, start_new_session=True)
    finally:
        os.close(console_slave)
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise StageError(f"Bochs ran past {timeout_s:.0f} s without the runner powering it off; see {log}")
    finally:
        os.close(serial_slave)                 # the serial reader then reads to the end and stops
        readers[1].join(timeout=10)
        os.close(console)
        os.close(serial)
    return text.decode(errors="replace")


def _read(fd: int, into: bytearray | None) -> None:
    try:
        while chunk := os.read(fd, 65536):
            if into is not None:
                into.extend(chunk)
    except OSError:                            # EIO: the other end is closed
        pass


def parse(text: str) -> tuple[str, dict[str, Outcome]]:
    cpu, outcomes, result, started = "", {}, None, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("CPU "):
            cpu = line[4:].strip()
        elif line.startswith("CALL "):
            started = line[5:].strip()
        elif line.startswith("RESULT "):
            result = line
        elif m := LINE.match(line):
            status = {"SAME": "same", "DIFFERS": "differs", "SKIP": "skipped"}[m[1]]
            outcomes[m[2]] = Outcome(status, *(int(g) for g in m.groups()[2:] if g is not None))
    if result is None:
        where = f"in {started} (an instruction this CPU lacks, or a fault)" if started and started not in outcomes \
            else "outside the calls"
        raise StageError(f"the emulated machine stopped before the runner's RESULT line, {where}; "
                         f"its serial output ends: {text[-200:]!r}")
    return cpu, outcomes


def run(objects: list[Path], calls: list[Call], progress: Progress | None = None, cpu_model: str = CPU_MODEL,
        timeout_s: float = 600, keep: Path | None = None, tools: dict[str, Path] | None = None) -> Report:
    """Run ``calls`` (functions of ``objects``) on Bochs' ``cpu_model``; each call's outcome. ``keep``: a folder
    to build in and leave (the image, bochsrc, Bochs' log), else a temporary one. ``tools``: ``bochs3``'s for
    Bochs 3.0's models, else Debian 12's Bochs 2.7."""
    progress = progress or Progress(quiet=True)
    if not calls:
        raise InputError("no calls to run; give at least one")
    tools = tools or ensure_tools(progress)
    with tempfile.TemporaryDirectory(prefix="xception-edge-bochs-") as tmp:
        work = keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        iso = build_image([Path(o).resolve() for o in objects], calls, work, tools)
        progress.log(f"  booting {len(calls)} call(s) on Bochs' emulated {cpu_model} (bare metal)")
        start = time.monotonic()
        cpu, outcomes = parse(boot(iso, work, tools, cpu_model, timeout_s))
        seconds = time.monotonic() - start
    missing = [c.symbol for c in calls if c.symbol not in outcomes]
    if missing:
        raise StageError(f"the runner did not report {', '.join(missing)}")
    return Report(cpu, outcomes, seconds)
