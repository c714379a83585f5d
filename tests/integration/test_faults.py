"""Faults a user meets, each through `make`: one `error:` line (or the gate's own verdict), the documented exit
code, and nothing lost.

- a full disk for OUT and for the stage cache, and a read-only OUT (small tmpfs mounts: root only);
- corrupt, truncated, binary, empty and wrong-shaped baselines, gates files, results files and manifests;
- a gate whose every accuracy check was skipped (fewer eval images than min_eval_images): neither pass nor fail.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from benchmarks.errors import GATE_CHECKED_NOTHING, StorageError
from tests.conftest import ROOT, TINY_CALIB_N, TINY_EVAL_N, write_target

INPUT, CANNOT_WRITE = 2, StorageError.exit_code


def make(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "-s", "--no-print-directory", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True)


def one_error(done: subprocess.CompletedProcess, code: int, pattern: str) -> str:
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == code, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert len(errors) == 1 and re.search(pattern, errors[0]), done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    return errors[0]


def snapshot(folder) -> dict[str, tuple[int, int]]:
    """Every file of a stage cache (not the emulated board's sysroot) with its size and mtime."""
    found = {}
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "emulation"]
        for name in files:
            st = os.stat(os.path.join(root, name))
            found[os.path.relpath(os.path.join(root, name), folder)] = (st.st_size, st.st_mtime_ns)
    return found


@pytest.fixture
def mount(tmp_path):
    """``mount(size_kb, read_only=False)``: a fresh tmpfs of that size; unmounted afterwards."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full or read-only disk is made with a tmpfs mount, which needs root")
    mounted = []

    def mount_one(size_kb: int, read_only: bool = False):
        point = tmp_path / f"disk{len(mounted)}"
        point.mkdir()
        options = f"size={size_kb}k" + (",ro" if read_only else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True,
                              text=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point
    yield mount_one
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture(scope="module")
def tiny_host(tiny_build, tiny_model, stage_cache):
    """The make arguments that compile the shared tiny host build again (every stage cached)."""
    tiny_build("host")
    return ["TARGET=host", f"WEIGHTS={tiny_model}", f"CACHE_DIR={stage_cache}", f"CALIB_N={TINY_CALIB_N}",
            f"EVAL_N={TINY_EVAL_N}"]


@pytest.mark.system          # a compile through make on a small disk: `make test-system`
def test_a_full_output_disk_is_one_line_and_leaves_output_and_cache_as_they_were(tiny_host, stage_cache, mount):
    before = snapshot(stage_cache)
    out = mount(64)                                          # the eval set alone is larger
    done = make("compile", *tiny_host, f"OUT={out}")
    one_error(done, CANNOT_WRITE, rf"cannot write the output folder host/ in {re.escape(str(out))}: no space left on "
                                  r"device \([0-9.,]+ MB free there; this step needs about [0-9.,]+ MB\); free space "
                                  r"there, or give another OUT=dir")
    assert sorted(p.name for p in out.iterdir()) == [".host.lock"]          # no half-written output, no staging
    assert snapshot(stage_cache) == before


@pytest.mark.system          # a compile through make on a small disk: `make test-system`
def test_a_full_cache_disk_is_one_line_and_leaves_no_partial_entry(tiny_model, mount, tmp_path):
    cache = mount(256)
    done = make("compile", "TARGET=host", f"WEIGHTS={tiny_model}", f"CACHE_DIR={cache}", f"OUT={tmp_path / 'out'}",
                f"CALIB_N={TINY_CALIB_N}", f"EVAL_N={TINY_EVAL_N}")
    one_error(done, CANNOT_WRITE, rf"cannot write the \w[\w -]*\w stage's result in {re.escape(str(cache))}: no space "
                                  r"left on device \([0-9.,]+ MB free there; this step needs about [0-9.,]+ MB\); free "
                                  r"space there, or give another CACHE_DIR=")
    leftovers = [p for p in cache.rglob("*") if p.name.startswith(".tmp-")]
    entries = list(cache.glob("stages/*/*"))                        # stages/<stage>/<key>: complete or absent
    assert not leftovers and all((e / ".entry.json").is_file() for e in entries), (leftovers, entries)
    assert not (tmp_path / "out" / "host").exists()


@pytest.mark.system          # a compile through make on a small disk: `make test-system`
def test_a_read_only_output_folder_is_one_line(tiny_host, mount):
    out = mount(1024, read_only=True)
    done = make("compile", *tiny_host, f"OUT={out / 'build'}")
    one_error(done, CANNOT_WRITE, rf"cannot write the output in {re.escape(str(out))}/build: read-only file system; "
                                  r"choose another with OUT=dir")


# -- files the gate, report and bench read ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def gated(digitnet, stage_cache, tmp_path_factory):
    """The trained digits net compiled with EVAL_N=90 (fewer than min_eval_images = 100), benchmarked once, with a
    baseline and the gate tests' thresholds: (OUT, gates file, baselines folder)."""
    from benchmarks.run import Budget, run_build, write_results
    from pipeline.compiler import CompileOptions, compile_target
    from tests.integration.test_gate import TEST_GATES

    model, eval_dir = digitnet
    out = tmp_path_factory.mktemp("faults")
    targets = write_target(out / "targets", "gated", ["tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8"])
    compile_target(CompileOptions(target="gated", weights=str(model), eval_dir=eval_dir, eval_n=90, calib_n=50,
                                  out_dir=out, cache_dir=stage_cache, targets_dir=targets))
    budget = Budget(warmup=1, min_runs=2, min_seconds=0.0, max_seconds=1.0, accuracy_seconds=5.0)
    write_results(run_build(out / "gated", threads=1, budget=budget, log=lambda m: None),
                  out / "gated" / "bench" / "r.json")
    gates, baselines = out / "gates.toml", out / "baselines"
    gates.write_text(TEST_GATES)
    done = make("baseline", "TARGET=gated", f"OUT={out}", f"BASELINES={baselines}", "MSG=fault tests")
    assert done.returncode == 0, done.stderr
    return out, gates, baselines


BAD = {
    "corrupt": lambda good: good[: len(good) // 3] + b"\x00}{",
    # cut mid-value ("key =" in TOML): a cut at a line end could leave a shorter file that is still valid
    "truncated": lambda good: good[: good.find(b"=", len(good) // 2) + 1 or len(good) // 2],
    "binary": lambda good: bytes(range(256)) * 4,
    "empty": lambda good: b"",
}
WRONG_SHAPE = {
    "baseline": b'{"model": "x", "target": "host", "reason": "r", "created": "now", "artifacts": "oops"}',
    "gates": b"defaults = 3\n",
    "results": b'{"schema": 1, "run_id": "r", "results": "oops"}',
    "manifest": b'{"target": "host", "artifacts": "oops"}',
}


def _files(out, gates, baselines):
    return {"baseline": next(baselines.rglob("gated.json")), "gates": gates,
            "results": out / "gated" / "bench" / "r.json", "manifest": out / "gated" / "manifest.json"}


@pytest.mark.parametrize("damage", [*BAD, "wrong-shaped"])
@pytest.mark.parametrize("kind", ["baseline", "gates", "results", "manifest"])
def test_a_bad_file_is_one_line_naming_it_and_exit_2(gated, kind, damage):
    out, gates, baselines = gated
    path = _files(out, gates, baselines)[kind]
    good = path.read_bytes()
    try:
        path.write_bytes(WRONG_SHAPE[kind] if damage == "wrong-shaped" else BAD[damage](good))
        done = make("gate", "TARGET=gated", f"OUT={out}", f"GATES={gates}", f"BASELINES={baselines}")
        line = one_error(done, INPUT, re.escape(str(path)) if kind != "gates" or damage != "wrong-shaped"
                         else r"gates.toml \[defaults\] is 3; expected a table")
        assert "PASS" not in done.stdout, line
        if kind in ("results", "manifest"):          # the report and the runner read them too
            verb = "report" if kind == "results" else "bench"
            one_error(make(verb, "TARGET=gated", f"OUT={out}"), INPUT, re.escape(str(path)))
    finally:
        path.write_bytes(good)
    assert make("gate", "TARGET=gated", f"OUT={out}", f"GATES={gates}", f"BASELINES={baselines}").returncode == \
        GATE_CHECKED_NOTHING                                  # restored: 90 images, as below


def test_a_gate_that_judged_no_accuracy_does_not_pass(gated):
    """A user's model evaluated on 90 images, fewer than min_eval_images = 100: every accuracy check is skipped,
    and the gate says so with its own code instead of PASS."""
    out, gates, baselines = gated
    done = make("gate", "TARGET=gated", f"OUT={out}", f"GATES={gates}", f"BASELINES={baselines}")
    assert done.returncode == GATE_CHECKED_NOTHING, (done.returncode, done.stdout, done.stderr)
    assert "CHECKED NOTHING: no int8 artifact's accuracy was judged (measured on 90 images, fewer than " \
           "min_eval_images=100)" in done.stdout
    assert "EVAL= a folder of at least 100 labelled images" in done.stdout and "\nPASS" not in done.stdout
    report = json.loads((out / "gated" / "gate" / "gate.json").read_text())
    assert report["outcome"] == "checked nothing" and report["passed"] is False
