"""Every verb, given a bad input, prints exactly one `error:` line, no traceback, and exits with the
code of the error's class (one hierarchy, benchmarks/errors.py, for the compiler and the harness)."""
from __future__ import annotations

import pytest

from benchmarks import profile
from benchmarks.errors import BenchError, InputError, PipelineError
from benchmarks.run import Budget


@pytest.mark.parametrize("verb,args,message", [
    ("compile", ["--target", "no-such-board"], r"unknown target 'no-such-board'"),
    ("tune", ["--target", "host", "--trials", "0"], r"TRIALS=0 must be between 1"),
    ("bench", ["--target", "host", "--out", "{empty}"], r"has no manifest.json"),
    ("bench", ["--target", "host", "--out", "{empty}", "--min-runs", "0"], r"MIN_RUNS / --min-runs = 0 must be >= 1"),
    ("bench", ["--target", "host", "--out", "{empty}", "--threads", "-3"], r"THREADS \(--threads\) = -3: must be 0"),
    ("bench", ["--target", "host", "--out", "{empty}", "--eval-n", "-1"], r"BENCH_EVAL_N \(--eval-n\) = -1: must be 0"),
    ("report", ["--target", "host", "--out", "{empty}"], r"no benchmark results in"),
    ("verify", ["--target", "host", "--out", "{empty}"], r"make verify emulates aarch64 boards"),
    ("gate", ["--target", "host", "--out", "{empty}"], r"has no manifest.json"),
    ("baseline", ["--target", "host", "--out", "{empty}", "--msg", " "], r"a baseline needs a reason"),
    ("peers", ["--out", "{empty}", "--max-seconds", "0"], r"MAX_SECONDS / --max-seconds = 0"),
    ("compile", ["--target", "host", "--calib-method", "kl"], r"CALIB_METHOD= \(--calib-method\): invalid choice: 'kl'"),
    ("compile", ["--target", "host", "--recover", "yes"], r"RECOVER= \(--recover\): invalid choice: 'yes'"),
    ("compile", ["--target", "host", "--recover-cap", "0"], r"RECOVER_CAP=0 must be a positive number of layers"),
    ("analyze", ["--target", "no-such-board"], r"unknown target 'no-such-board'"),
    ("analyze", ["--target", "host", "--analyze-n", "-1"], r"ANALYZE_N=-1 must be 0"),
])
def test_bad_input_is_one_line_and_exit_2(cli, tmp_path, verb, args, message):
    import re

    (tmp_path / "empty" / "host").mkdir(parents=True)
    code, out, err = cli(verb, *[a.replace("{empty}", str(tmp_path / "empty")) for a in args])
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, (code, err)
    assert len(lines) == 1 and re.search(message, lines[0]), err
    assert "Traceback" not in err + out


def test_profile_bad_input_is_one_line(tmp_path, capsys):
    assert profile.main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "Traceback" not in err


def test_one_hierarchy_with_codes_on_the_classes():
    assert issubclass(BenchError, InputError) and issubclass(InputError, PipelineError)
    from pipeline import errors

    assert errors.InputError is InputError and errors.PipelineError is PipelineError
    with pytest.raises(BenchError, match=r"ACC_SECONDS / --accuracy-seconds = 0 must be > 0"):
        Budget(accuracy_seconds=0)


def test_an_interrupt_a_library_turned_into_its_own_error_is_still_an_interrupt(cli, monkeypatch):
    """SIGTERM while Keras imports optree's C extension surfaced as "ImportError: ... install optree" and
    the CLI said "stage failed" (exit 3) in a fresh virtualenv; the signal is the cause: exit 143."""
    import os
    import signal

    from pipeline import cli as cli_module
    from pipeline.errors import StageError

    def compile_that_is_interrupted_inside_an_import(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)          # the handler raises KeyboardInterrupt here
        except KeyboardInterrupt:
            raise StageError("stage build failed for target host: ImportError: To use Keras, you need optree")
        return 0

    monkeypatch.setattr(cli_module, "_compile", compile_that_is_interrupted_inside_an_import)
    code, _, err = cli("compile", "--target", "host")
    assert code == 143 and "interrupted (SIGTERM)" in err and "error:" not in err


@pytest.mark.parametrize("args,message", [
    (["bench", "--target", "host", "--port", "22; id"], "PORT= (--port): expected a whole number, got '22; id'"),
    (["compile", "--target", "host", "--calib-n", "many"], "CALIB_N= (--calib-n): expected a whole number"),
    (["tune", "--target", "host", "--timeout", "soon"], "TUNE_TIMEOUT= (--timeout): invalid float value"),
    (["verify", "--target", "rpi4", "--n", "x"], "VERIFY_N= (--n): expected a whole number"),
])
def test_a_malformed_value_is_one_line_naming_the_make_variable(capsys, args, message):
    from pipeline.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err
    assert "usage:" not in err
