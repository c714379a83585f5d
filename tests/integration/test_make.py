"""Every make variable reaches the program exactly as typed, whatever it holds, through every verb.

`make` runs with VENV pointing at a stand-in Python (in a folder whose name has an apostrophe, a space
and a `$`) that records the arguments it was started with; the values are hostile (quotes that would
close the recipe's quoting, `;`, `$(shell ...)`, backticks, `$HOME`) and each would create a canary
file if any shell or make expanded it.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import pytest

from tests.conftest import ROOT

FAKE_PYTHON = """#!{python}
import json, os, sys
with open(os.environ["XC_TEST_ARGV"], "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
sys.exit(int(os.environ.get("XC_TEST_EXIT", "0")))
"""


def hostile(canary) -> dict[str, str]:
    c = str(canary)
    return {
        "quote": f"pi@host'; touch {c}; echo '",
        "dquote": f'a "b" c"; touch {c}; echo "',
        "make": f"$(shell touch {c})",
        "backtick": f"`touch {c}` $(touch {c}) $HOME $$ ${{HOME}}",
        "apostrophe_path": "/home/o'brien/my model.keras",
        "dash": "-oStrictHostKeyChecking=no",
    }


@pytest.fixture
def fake(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    venv = tmp_path / "ven'v $x"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(FAKE_PYTHON.format(python=shutil.which("python3")))
    python.chmod(0o755)
    stamp = venv / ".installed"
    stamp.touch()
    later = time.time() + 3600                       # newer than requirements.lock: no real set-up
    os.utime(stamp, (later, later))
    log = tmp_path / "argv.jsonl"

    def make(*args: str, exit_code: int = 0):
        done = subprocess.run(["make", "-s", "--no-print-directory", *args, f"VENV={venv}"], cwd=ROOT,
                              capture_output=True, text=True,
                              env=os.environ | {"XC_TEST_ARGV": str(log), "XC_TEST_EXIT": str(exit_code)})
        calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return done, calls
    return make


def _value(argv: list[str], flag: str) -> str:
    hits = [a.split("=", 1)[1] for a in argv if a.startswith(flag + "=")]
    assert len(hits) == 1, (flag, argv)
    return hits[0]


# verb -> (make variable, the option it becomes)
VARIABLES = {
    "compile": [("TARGET", "--target"), ("WEIGHTS", "--weights"), ("CALIB", "--calib"), ("EVAL", "--eval"),
                ("OUT", "--out"), ("CACHE_DIR", "--cache-dir"), ("TUNING_DIR", "--tuning-dir"),
                ("REFERENCE_DIR", "--reference-dir"), ("CALIB_N", "--calib-n"), ("INPUT_SIZE", "--input-size"),
                ("TARGETS_DIR", "--targets-dir"), ("PREPROCESS", "--preprocess"), ("RESIZE", "--resize"),
                ("CROP", "--crop"), ("LABELS", "--labels")],
    "tune": [("TARGET", "--target"), ("RPC", "--rpc"), ("KEY", "--key"), ("TRIALS", "--trials"),
             ("WEIGHTS", "--weights"), ("RECOVER", "--recover"), ("RECOVER_CAP", "--recover-cap")],
    "bench": [("TARGET", "--target"), ("DEVICE", "--device"), ("SSH_OPTS", "--ssh-opts"), ("PORT", "--port"),
              ("REMOTE_PYTHON", "--remote-python"), ("THREADS", "--threads"), ("OUT", "--out")],
    "report": [("TARGET", "--target"), ("OUT", "--out")],
    "verify": [("TARGET", "--target"), ("VERIFY_N", "--n"), ("VERIFY_CORE", "--core"), ("CACHE_DIR", "--cache-dir"),
               ("TARGETS_DIR", "--targets-dir")],
    "gate": [("TARGET", "--target"), ("OUT", "--out"), ("GATES", "--gates"), ("BASELINES", "--baselines")],
    "baseline": [("TARGET", "--target"), ("MSG", "--msg"), ("BASELINES", "--baselines")],
    "targets": [("TARGETS_DIR", "--targets-dir")],
    "peers": [("OUT", "--out"), ("THREADS", "--threads")],
    "clean": [("OUT", "--out"), ("CACHE_DIR", "--cache-dir"), ("TARGETS_DIR", "--targets-dir")],
}


@pytest.mark.parametrize("verb", sorted(VARIABLES))
def test_every_variable_arrives_as_typed_and_nothing_runs(fake, verb, tmp_path):
    canary = tmp_path / "canary"
    for kind, value in hostile(canary).items():
        assignments = [f"{var}={value}" for var, _ in VARIABLES[verb]]
        done, calls = fake(verb, *assignments)
        assert done.returncode == 0, (kind, done.stderr)
        assert len(calls) == 1, (kind, calls)
        for var, flag in VARIABLES[verb]:
            assert _value(calls[0], flag) == value, (verb, var, kind)
        assert not canary.exists(), f"{verb}: a {kind} value ran a command"


def test_profile_folder_and_pytest_arguments_arrive_as_typed(fake, tmp_path):
    canary = tmp_path / "canary"
    done, calls = fake("profile", "OUT=a b'c", f"TARGET=$(shell touch {canary})")
    assert done.returncode == 0 and calls[0][:3] == ["-m", "benchmarks.profile", f"a b'c/$(shell touch {canary})"]
    # PYTEST_ARGS is a list of arguments: pytest splits it like a shell would, but no shell runs it
    done = subprocess.run(["make", "-s", "-n", "test", f"PYTEST_ARGS=-k 'a b'; touch {canary}"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0 and f"'-k '\"'\"'a b'\"'\"'; touch {canary}'" in done.stdout
    assert not canary.exists()


EXIT_CODES = [0, 1, 2, 3, 4, 5, 6, 7, 130, 143]     # benchmarks/errors.py; 130/143: interrupted by SIGINT/SIGTERM


@pytest.mark.parametrize("code", EXIT_CODES)
def test_make_exits_with_the_programs_own_code(fake, code):
    done, calls = fake("gate", "TARGET=host", exit_code=code)
    assert calls and done.returncode == code, (done.returncode, done.stderr)


@pytest.mark.parametrize("verb", sorted(set(VARIABLES) | {"profile", "tune", "clean-cache"}))
def test_every_verb_passes_its_code_through(fake, verb):
    done, calls = fake(verb, exit_code=4)
    assert len(calls) == 1 and done.returncode == 4, (verb, done.returncode, done.stderr)


def test_make_test_passes_pytests_code(fake):
    done, calls = fake("test", "TEST_WORKERS=0", exit_code=5)     # pytest: 5 = no tests collected
    assert calls[0][:2] == ["-m", "pytest"] and done.returncode == 5


def test_later_verbs_do_not_run_after_a_failure(fake):
    done, calls = fake("compile", "gate", "TARGET=host", exit_code=3)
    assert done.returncode == 3 and [c[1] for c in calls] == ["pipeline"] and calls[0][2] == "compile"


def test_real_program_codes_through_make():
    ok = subprocess.run(["make", "-s", "targets"], cwd=ROOT, capture_output=True, text=True)
    assert ok.returncode == 0 and "rpi4" in ok.stdout
    bad = subprocess.run(["make", "-s", "gate", "TARGET=no-such-board"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "has no manifest.json" in bad.stderr


def test_without_the_plugin_a_failure_is_makes_2(fake, tmp_path):
    """No C compiler: the Makefile falls back to plain recipes (make's own 2, and its 'Error N' line)."""
    (tmp_path / "pipeline" / "native").mkdir(parents=True)
    for name in ("Makefile", "pipeline/options.mk", "requirements.lock", "pipeline/native/make_exit.c"):
        shutil.copy(ROOT / name, tmp_path / name)
    venv = next(tmp_path.glob("ven*"))
    done = subprocess.run(["make", "-s", "gate", "CC=false", f"VENV={venv}"], cwd=tmp_path, capture_output=True,
                          text=True, env=os.environ | {"XC_TEST_ARGV": str(tmp_path / "log"), "XC_TEST_EXIT": "3"})
    assert done.returncode == 2 and "Error 3" in done.stderr and (tmp_path / "log").exists()
    assert not (tmp_path / ".make" / "xc_exit.so").exists()
