"""An emulated arm64 board for the tests, reached over a real sshd on 127.0.0.1 (tests/conftest.py start_sshd).

Each ssh session runs in a mount namespace of its own, chrooted into the board's root: an arm64 Debian with
python3, sh, coreutils and tar (no runtimes: `make provision` brings them), its own /root, and /proc/cpuinfo and
/sys's cpu lists of the emulated core, as make verify's sysroot has. The kernel runs every aarch64 program there
through qemu-user by binfmt_misc: a static qemu, opened when the entry is registered (flag F), so it works inside
the chroot and follows every exec (the venv's python, pip, the runner's children), with QEMU_CPU the board's core.
Nothing of the board runs on the host's x86 programs. The entry is registered for the test and removed after it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.emulation import CORES, QEMU_MODEL, SUITE, cpu_lists, cpuinfo
from pipeline.host_tools import build_once, ensure_tool, run_tool
from pipeline.progress import Progress

PACKAGES = "python3,libstdc++6,dash,coreutils,tar"      # what the board-side commands use, and nothing more
BINFMT = Path("/proc/sys/fs/binfmt_misc")
# an aarch64 ELF executable or shared object (Debian's qemu-user-binfmt registers the same magic and mask)
MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"

SESSION = """#!/bin/sh
# one ssh session on the emulated board: mounts of its own (gone with the session), then the board's shell
exec unshare --mount --propagation private /bin/sh -c '
  mount -t proc proc "$1/proc" && mount --bind "$2" "$1/proc/cpuinfo" && mount --rbind /dev "$1/dev" &&
  exec env -i HOME=/root PATH=/usr/local/bin:/usr/bin:/bin LANG=C.UTF-8 QEMU_CPU="$3" {chroot} "$1" /bin/sh -c "$4"
' sh {root} {cpuinfo} {qemu_cpu} "$SSH_ORIGINAL_COMMAND"
"""


def board_root(cache_dir: Path, progress: Progress) -> Path:
    """The board's Debian root (without runtimes), built once and cached."""
    mmdebstrap = ensure_tool("mmdebstrap", "mmdebstrap", progress)

    def build(folder: Path, scratch: Path) -> str:
        progress.log(f"building the emulated board's arm64 Debian {SUITE} root ({PACKAGES})")
        run_tool([mmdebstrap, "--variant=extract", "--architectures=arm64", f"--include={PACKAGES}", SUITE, folder],
                 "emulated board: mmdebstrap")
        return f"{SUITE} {PACKAGES}"

    return build_once(cache_dir / "emulation" / f"{SUITE}-arm64-board-{PACKAGES.replace(',', '-')}", build)


def static_qemu(cache_dir: Path, progress: Progress) -> Path:
    """qemu-aarch64-static from Debian's qemu-user-static of the installed qemu-user's version (downloaded and
    unpacked, not installed: the host's own qemu set-up is left alone)."""
    ensure_tool("qemu-aarch64", "qemu-user", progress)
    version = run_tool(["dpkg-query", "-W", "-f", "${Version}", "qemu-user"], "dpkg-query qemu-user").stdout.strip()

    def build(folder: Path, scratch: Path) -> str:
        progress.log(f"downloading Debian's qemu-user-static {version}")
        run_tool(["apt-get", "download", f"qemu-user-static={version}"], "apt-get download qemu-user-static",
                 cwd=scratch)
        deb = next(scratch.glob("qemu-user-static_*.deb"))
        run_tool(["dpkg-deb", "-x", deb, scratch / "x"], "dpkg-deb -x qemu-user-static")
        shutil.copy2(scratch / "x/usr/bin/qemu-aarch64-static", folder / "qemu-aarch64-static")
        return f"qemu-user-static {version}"

    folder = f"qemu-user-static-{version.replace(':', '_')}"        # binfmt_misc's fields are separated by ':'
    return build_once(cache_dir / "emulation" / folder, build) / "qemu-aarch64-static"


@contextlib.contextmanager
def binfmt_entry(interpreter: Path):
    """aarch64 programs run by ``interpreter`` for as long as the block lasts (skips where binfmt_misc cannot be
    had: not root, or a container without it)."""
    if not (BINFMT / "register").exists():
        done = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], capture_output=True)
        if done.returncode or not (BINFMT / "register").exists():
            pytest.skip(f"binfmt_misc cannot be mounted here ({done.stderr.decode().strip()[:120]}): the emulated "
                        f"arm64 board needs it")
    name = f"xception-edge-test-{os.getpid()}"
    (BINFMT / "register").write_text(f":{name}:M::{MAGIC}:{MASK}:{interpreter}:F\n")
    try:
        yield name
    finally:
        (BINFMT / name).write_text("-1\n")


def prepare_board(work: Path, cache_dir: Path, core: str, cores: int, progress: Progress) -> Path:
    """A board of ``cores`` ``core``s in ``work``: its root (a copy of the cached one, so every test board starts
    clean) and the session script sshd's ForceCommand runs; returns the script."""
    root = work / "root"
    subprocess.run(["cp", "-a", str(board_root(cache_dir, progress)), str(root)], check=True)
    for folder in ("proc", "root", "dev", "tmp"):
        (root / folder).mkdir(exist_ok=True)
    cpu_lists(root, cores)
    (work / "cpuinfo").write_text(cpuinfo(core, cores))
    script = work / "session.sh"
    script.write_text(SESSION.format(chroot=shutil.which("chroot") or "/usr/sbin/chroot", root=root,
                                     cpuinfo=work / "cpuinfo", qemu_cpu=QEMU_MODEL.get(core, core)))
    return script


def main(argv: list[str] | None = None) -> int:
    """`python -m tests.emulated_board [--core C] [--cores N] DIR`: serve an emulated board until Ctrl-C, for trying
    `make provision` and `make bench DEVICE=` by hand (the command lines to use are printed)."""
    import argparse
    import signal

    from pipeline.compile_options import default_cache_dir
    from tests.conftest import start_sshd

    p = argparse.ArgumentParser(prog="python -m tests.emulated_board", description=main.__doc__)
    p.add_argument("--core", default="cortex-a72", choices=sorted(CORES))
    p.add_argument("--cores", type=int, default=4)
    p.add_argument("--cache-dir", type=Path, default=default_cache_dir())
    p.add_argument("dir", type=Path, help="a new folder for the board (its root, keys, sshd config)")
    args = p.parse_args(argv)
    args.dir.mkdir(parents=True)
    progress = Progress()
    with binfmt_entry(static_qemu(args.cache_dir, progress)):
        script = prepare_board(args.dir.resolve(), args.cache_dir, args.core, args.cores, progress)
        server = start_sshd(args.dir.resolve(), force_command=f"sh {script}")
        info = next(server)
        opts = " ".join(info["options"])
        print(f"an emulated {args.core} board ({args.cores} cores) on 127.0.0.1:{info['port']}; try:\n"
              f"  make provision TARGET=rpi4 DEVICE=root@127.0.0.1 PORT={info['port']} SSH_OPTS='{opts}'\n"
              f"  make bench TARGET=rpi4 DEVICE=root@127.0.0.1 PORT={info['port']} SSH_OPTS='{opts}'\n"
              f"Ctrl-C or kill stops it (its root stays in {args.dir / 'root'})", flush=True)

        def stop(*_):
            raise KeyboardInterrupt

        signal.signal(signal.SIGTERM, stop)     # kill, or Ctrl-C: the binfmt entry and sshd go with it
        signal.signal(signal.SIGINT, stop)      # (a shell's background job ignores SIGINT otherwise)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
        finally:
            next(server, None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
