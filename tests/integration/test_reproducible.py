"""The same inputs give the same artifact bytes whatever else is installed: rpi4 and host compiled as the run
compiles them (its stage cache, its PATH: Debian's cross gcc installed or not), then in a fresh stage cache with a
PATH whose cross gcc, gcc, g++, cc and ld are decoys that record any call and fail. Every artifact's sha256 must be
equal, no decoy may run, and a third compile with the decoys gone again does no stage work."""
from __future__ import annotations

import os
import stat

import pytest

from pipeline.compiler import CompileOptions, compile_target
from tests.conftest import TINY_CALIB_N, TINY_EVAL_N

DECOYS = ("aarch64-linux-gnu-gcc", "aarch64-linux-gnu-g++", "gcc", "g++", "cc", "c++", "ld")


def _decoy_path(folder, calls):
    folder.mkdir()
    for name in DECOYS:
        tool = folder / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> "{calls}"\nexit 97\n')
        tool.chmod(tool.stat().st_mode | stat.S_IXUSR)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def _shipped(manifest) -> dict[str, str]:
    files = {a["file"]: a["sha256"] for a in manifest["artifacts"]}
    files |= {a["opencl_runtime"]["file"]: a["opencl_runtime"]["sha256"] for a in manifest["artifacts"]
              if a.get("opencl_runtime")}
    return files


@pytest.mark.parametrize("target", ["rpi4", "host"])
def test_same_bytes_with_other_tools_installed(target, tiny_build, tiny_model, emulator_cache, tmp_path, monkeypatch):
    def compile_in(cache, out):
        if not (cache / "emulation").exists():      # the emulated board only measures; it shapes no artifact
            cache.mkdir(parents=True, exist_ok=True)
            (cache / "emulation").symlink_to(emulator_cache / "emulation")
        return compile_target(CompileOptions(target=target, weights=str(tiny_model), out_dir=out, cache_dir=cache,
                                             calib_n=TINY_CALIB_N, eval_n=TINY_EVAL_N)).manifest

    first = tiny_build(target)[1].manifest
    calls = tmp_path / "decoy-calls.txt"
    monkeypatch.setenv("PATH", _decoy_path(tmp_path / "decoys", calls))
    second = compile_in(tmp_path / "cache-b", tmp_path / "b")
    assert not calls.exists(), f"a decoy tool ran: {calls.read_text()}"
    assert _shipped(second) == _shipped(first)
    linkers = {a["linker"]["command"] for a in second["artifacts"] if a["format"] == "tvm"}
    assert linkers == {f"zig cc -target {first['config']['target']['arch']}-linux-gnu"}
    monkeypatch.undo()
    again = compile_in(tmp_path / "cache-b", tmp_path / "b")
    assert all(s["cached"] for s in again["config"]["stages"]), [s for s in again["config"]["stages"] if not s["cached"]]
    assert _shipped(again) == _shipped(first)
