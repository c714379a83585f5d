"""make provision's refusals (one line, before anything is written) and the board-side check of what is installed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import board_env
from pipeline.board_wheels import WheelSet
from pipeline.provision import refusal
from pipeline.targets import load_target

WHEELS = WheelSet(Path("/nowhere"), "aarch64", (
    {"file": "numpy-2.4.6-cp311-cp311-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl", "sha256": "a" * 64,
     "bytes": 16_000_000, "unpacked_bytes": 50_000_000},
    {"file": "psutil-7.2.2-cp36-abi3-manylinux2014_aarch64.whl", "sha256": "b" * 64, "bytes": 156_000,
     "unpacked_bytes": 500_000}), {"file": "pip-23.2.1-py3-none-any.whl", "bytes": 2_000_000})
PI5 = {"machine": "aarch64", "python": "3.11.2", "implementation": "CPython", "libc": "glibc", "libc_version": "2.36",
       "cpu_flags": "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop "
                    "asimddp".split(), "free_bytes": 20_000_000_000, "checked_in": "/home/pi"}
PI4_FLAGS = "fp asimd evtstrm crc32 cpuid".split()


def test_a_board_that_fits_is_accepted():
    assert refusal(load_target("rpi5"), WHEELS, PI5) is None
    assert refusal(load_target("rpi4"), WHEELS, PI5 | {"cpu_flags": PI4_FLAGS}) is None


@pytest.mark.parametrize("board,message", [
    ({"machine": "x86_64"}, r"^the board is x86_64; target rpi5 is built for aarch64$"),
    ({"python": "3.9.2"}, r"^the board's python3 is CPython 3\.9\.2; the verified wheels are for CPython 3\.11 "
                          r"\(cp311, .*install python3\.11 on the board$"),
    ({"python": "3.12.1"}, r"python3 is CPython 3\.12\.1; the verified wheels are for CPython 3\.11"),
    ({"libc_version": "2.24"}, r"^the board's C library is glibc 2\.24; the wheels need glibc 2\.28 or newer$"),
    ({"libc": "", "libc_version": ""}, r"C library is unknown"),
    ({"cpu_flags": PI4_FLAGS}, r"^the board's CPU lacks asimddp \(dotprod\), asimdhp \(fp16\), which target rpi5's "
                               r"libraries use \(int8 sdot\); pick the target of this board$"),
    ({"free_bytes": 30_000_000}, r"^the board has 30 MB free in /home/pi; the runtimes need 69 MB$"),
])
def test_each_mismatch_is_one_line(board, message):
    why = refusal(load_target("rpi5"), WHEELS, PI5 | board)
    assert why is not None and "\n" not in why
    assert __import__("re").search(message, why), why


def test_wheel_set_is_named_by_its_bytes():
    other = WheelSet(WHEELS.folder, "aarch64", (WHEELS.wheels[0] | {"sha256": "c" * 64}, WHEELS.wheels[1]),
                     WHEELS.installer)
    assert WHEELS.id.startswith("aarch64-cp311-") and WHEELS.id != other.id
    assert WHEELS.id == WheelSet(Path("/elsewhere"), "aarch64", WHEELS.wheels, WHEELS.installer).id
    assert WHEELS.glibc() == (2, 28)


def _env(tmp_path: Path, version: str = "7.2.2", record: str = "psutil/__init__.py,sha256=x,10\n") -> Path:
    env = tmp_path / "root" / "envs" / "set1"
    info = env / "lib" / "python3.11" / "site-packages" / "psutil-7.2.2.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: psutil\nVersion: {version}\n\nbody\n")
    (info / "RECORD").write_text(record)
    return env


def test_check_finds_a_changed_package(tmp_path):
    env = _env(tmp_path)
    (tmp_path / "root" / "current").symlink_to(Path("envs") / "set1")
    assert board_env.check(str(tmp_path / "root")) == {"provisioned": False}        # no record: not finished
    have = board_env.installed(str(env))
    (env / board_env.RECORD).write_text(json.dumps({"set_id": "set1", "packages": [
        {"name": "psutil", "version": "7.2.2", "record_sha256": have["psutil"][1]}]}))
    state = board_env.check(str(tmp_path / "root"))
    assert state["provisioned"] and state["problems"] == [] and state["set_id"] == "set1"
    _env(tmp_path, record="psutil/__init__.py,sha256=y,11\n")                        # another wheel, same version
    assert board_env.check(str(tmp_path / "root"))["problems"] == [
        "psutil 7.2.2 was reinstalled from another wheel (its RECORD changed)"]
    _env(tmp_path, version="5.9.0")
    assert board_env.check(str(tmp_path / "root"))["problems"] == ["psutil is 5.9.0 where 7.2.2 was installed"]


def test_probe_reads_this_machine(tmp_path):
    found = board_env.probe(str(tmp_path / "not" / "yet"))
    assert found["checked_in"] == str(tmp_path) and found["free_bytes"] > 0
    assert found["implementation"] == "CPython" and found["cpu_flags"]
