"""`make provision TARGET=t DEVICE=user@host`: the board gets exactly the runtimes `make verify` ran.

The target's wheel set (pipeline/board_wheels.py: the files the emulated board installs, by sha256) is pushed
over ssh with the board-side script, benchmarks/board_env.py, which installs it into a new virtualenv with no
package index (an offline board works) and records each package with its hashes in the environment. Before
anything is written, the board is probed: reachable, the target's architecture, CPython of the wheels' version,
a new enough C library, the CPU features the target's libraries use, and the disk the install needs. Any miss
is one line and the board is left as it was.
"""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from benchmarks.errors import BenchError
from benchmarks.ssh import BOARD_SCRIPT, Remote, board_script
from pipeline.board_wheels import PYTHON, WheelSet, ensure_wheels
from pipeline.errors import ConfigError, InputError
from pipeline.progress import Progress
from pipeline.targets import Target

BOARD_ROOT = "~/.xception-edge"          # on the board: envs/<set id>/, and current -> the one in use
# the target's features (Linux's names on x86; on ARM the toml says neon/dotprod/fp16) as /proc/cpuinfo says them
ARM_FLAGS = {"neon": "asimd", "dotprod": "asimddp", "fp16": "asimdhp", "i8mm": "i8mm", "sve": "sve", "bf16": "bf16"}
MACHINES = {"arm64": "aarch64", "aarch64": "aarch64", "x86_64": "x86_64", "amd64": "x86_64"}


def connect(dest: str, port: int | None, options: list[str]) -> Remote:
    remote = Remote(dest, port, options, timeout=1800)
    try:
        remote.run(["true"])
    except BenchError as err:
        raise InputError(f"DEVICE={dest} is unreachable over ssh ({err}); nothing was changed") from None
    return remote


def refusal(target: Target, wheels: WheelSet, board: dict) -> str | None:
    """Why this board cannot run this target's verified runtimes, in one line; None when it can."""
    machine = MACHINES.get(board["machine"], board["machine"])
    if machine != target.arch:
        return f"the board is {board['machine']}; target {target.name} is built for {target.arch}"
    if board["implementation"] != "CPython" or ".".join(board["python"].split(".")[:2]) != PYTHON:
        return (f"the board's python3 is {board['implementation']} {board['python']}; the verified wheels are for "
                f"CPython {PYTHON} (cp{PYTHON.replace('.', '')}, Debian bookworm's Python, as make verify runs): "
                f"install python{PYTHON} on the board")
    libc = tuple(int(x) for x in board["libc_version"].split(".")[:2] if x.isdigit()) if board["libc"] == "glibc" \
        else ()
    if len(libc) < 2 or libc < wheels.glibc():
        return (f"the board's C library is {board['libc'] or 'unknown'} {board['libc_version']}; the wheels need "
                f"glibc {'.'.join(map(str, wheels.glibc()))} or newer")
    named = {f: ARM_FLAGS.get(f, f) if target.arch == "aarch64" else f for f in target.cpu.features}
    missing = [f"{flag} ({f})" if flag != f else f for f, flag in named.items() if flag not in board["cpu_flags"]]
    if missing:
        return (f"the board's CPU lacks {', '.join(missing)}, which target {target.name}'s libraries use "
                f"(int8 {target.int8_isa}); pick the target of this board")
    need = wheels.bytes_needed()
    if board["free_bytes"] < need:
        return (f"the board has {board['free_bytes'] / 1e6:.0f} MB free in {board['checked_in']}; the runtimes "
                f"need {need / 1e6:.0f} MB")
    return None


def _bundle(wheels: WheelSet) -> bytes:
    """The wheel files, pip's own wheel (the installer) and the set's description, for the board."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for w in wheels.wheels:
            tar.add(wheels.folder / w["file"], arcname=w["file"])
        tar.add(wheels.folder / "installer" / wheels.installer["file"], arcname=f"installer/{wheels.installer['file']}")
        tar.add(BOARD_SCRIPT, arcname="board_env.py")
        text = json.dumps({"id": wheels.id, "arch": wheels.arch, "wheels": list(wheels.wheels),
                           "installer": wheels.installer}).encode()
        info = tarfile.TarInfo("wheels.json")
        info.size = len(text)
        tar.addfile(info, io.BytesIO(text))
    return buffer.getvalue()


def provision(target: Target, dest: str, port: int | None, options: list[str], cache_dir: Path,
              progress: Progress) -> dict:
    if target.os == "android":
        raise ConfigError(f"target {target.name} is a phone: its artifacts run in LiteRT or ONNX Runtime Mobile "
                          f"inside your app, not in a Python environment (docs/targets.md, Android)")
    remote = connect(dest, port, options)
    board = board_script(remote, "probe", BOARD_ROOT)
    wheels = ensure_wheels(cache_dir, target.arch, progress)
    why = refusal(target, wheels, board)
    if why:
        raise InputError(f"DEVICE={dest}: {why}; nothing was changed on the board")
    progress.log(f"{dest}: {board['machine']}, Python {board['python']}, glibc {board['libc_version']}, "
                 f"{board['free_bytes'] / 1e9:.1f} GB free: pushing wheel set {wheels.id} "
                 f"({sum(w['bytes'] for w in wheels.wheels) / 1e6:.0f} MB, {len(wheels.wheels)} wheels)")
    staging = remote.run(["sh", "-c", 'mkdir -p "$HOME/.xception-edge" && mktemp -d "$HOME/.xception-edge/staging.XXXXXX"'])\
        .strip()
    try:
        remote.run(["tar", "-C", staging, "-xf", "-"], stdin=_bundle(wheels))
        progress.log(f"{dest}: installing into {BOARD_ROOT}/envs/{wheels.id} with no package index")
        try:
            done = board_script(remote, "install", staging, BOARD_ROOT, pushed=f"{staging}/board_env.py")
        except BenchError as err:
            done = {"ok": False, "error": str(err)}
    finally:
        remote.run(["rm", "-rf", staging])
    if not done.get("ok"):
        raise BenchError(f"DEVICE={dest}: provisioning failed: {done.get('error')}")
    return {"device": dest, "target": target.name, "set_id": wheels.id, "env": done["env"], "board": board,
            "packages": done["packages"]}
