"""make tune on a tiny model: MetaSchedule over a real TVM RPC tracker and server on 127.0.0.1, resuming,
records applied by compile (and the results still agree with LiteRT), and bad inputs."""
from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest

from benchmarks.device import this_cpu
from pipeline.compiler import CompileOptions, compile_target
from pipeline.errors import ConfigError, InputError
from pipeline.tuning import TuneOptions, tune_target
from pipeline.tvm.records import MIN_GAIN, TUNING_FILES
from tests.conftest import error_lines, free_port, write_target

pytestmark = pytest.mark.system       # minutes: `make test-system`, run by .ci/run on every change
TRIALS = 4           # the tiny model's largest convolutions get trials; each tuned function costs ~20 s


@pytest.fixture(scope="module")
def setup(tiny_model, stage_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    targets = write_target(root / "targets", "tunehost", ["tflite-fp32", "tvm-fp32"], '[tvm]\ncpu = { kind = "llvm" }\n')

    def options(**extra) -> CompileOptions:
        return CompileOptions(**({"target": "tunehost", "weights": str(tiny_model), "out_dir": root / "build",
                                  "cache_dir": stage_cache, "calib_n": 20, "eval_n": 40, "targets_dir": targets,
                                  "tuning_dir": root / "tuning"} | extra))
    return root, options


@pytest.fixture(scope="module")
def tuned_over_rpc(setup, rpc_tracker):
    root, options = setup
    return tune_target(TuneOptions(options(), trials=TRIALS, rpc=rpc_tracker, key="testboard", timeout_sec=30))


def _record_lines(folder):
    with gzip.open(folder / TUNING_FILES[2], "rt") as f:
        return sum(1 for line in f if line.strip())


def test_rpc_tuning_measures_on_the_board_and_keeps_records(tuned_over_rpc, rpc_tracker):
    summary = tuned_over_rpc
    folder = Path(summary["records_dir"])
    isa = this_cpu()["int8_isa"]                          # records are keyed by the instruction set they were tuned on
    assert folder.parts[-3:] == ("tunehost", isa, "tiny-32x32-10") and summary["tuned_on"]["int8_isa"] == isa
    for name in TUNING_FILES:
        assert (folder / name).stat().st_size > 0, name
    assert summary["tuned_on"] == {"runner": "rpc", "tracker": rpc_tracker, "key": "testboard", "int8_isa": isa}
    entries = [summary["tasks"][k] for k in summary["keys"]]
    spent = sum(e["trials"] for e in entries)
    assert 0 < spent <= TRIALS
    measured = [e for e in entries if e["best_ms"] is not None]
    assert measured, "no candidate was measured on the RPC server"
    assert all(e["default_ms"] > 0 for e in entries)       # the default schedule, measured by the same runner
    assert _record_lines(folder) >= spent


def test_tuning_resumes_and_extends(tuned_over_rpc, setup, rpc_tracker):
    root, options = setup
    folder = Path(tuned_over_rpc["records_dir"])
    lines = _record_lines(folder)
    again = tune_target(TuneOptions(options(), trials=TRIALS, rpc=rpc_tracker, key="testboard", timeout_sec=30))
    assert _record_lines(folder) == lines                  # the budget was spent: nothing more measured
    assert sum(again["tasks"][k]["trials"] for k in again["keys"]) == sum(
        tuned_over_rpc["tasks"][k]["trials"] for k in tuned_over_rpc["keys"])
    more = tune_target(TuneOptions(options(), trials=2 * TRIALS, rpc=rpc_tracker, key="testboard", timeout_sec=30))
    assert _record_lines(folder) > lines
    assert sum(more["tasks"][k]["trials"] for k in more["keys"]) <= 2 * TRIALS
    assert json.loads((folder / TUNING_FILES[0]).read_text())["trials_budget"] == 2 * TRIALS
    assert not list(folder.glob(".tuning-*"))              # no staging copies left behind


def test_compile_applies_the_records_and_stays_correct(tuned_over_rpc, setup):
    root, options = setup
    folder = Path(tuned_over_rpc["records_dir"])
    art = next(a for a in compile_target(options()).manifest["artifacts"] if a["format"] == "tvm")
    tuning = art["tuning"]
    assert tuning["records"] == str(folder)
    for name in TUNING_FILES:
        assert tuning["sha256"][name] == hashlib.sha256((folder / name).read_bytes()).hexdigest()
    assert tuning["distinct_functions"] == len(tuned_over_rpc["keys"]) == tuning["with_records"]
    assert tuning["functions"] >= tuning["distinct_functions"]
    winners = sum(1 for k in tuned_over_rpc["keys"]
                  if (e := json.loads((folder / TUNING_FILES[0]).read_text())["tasks"][k])["best_ms"] is not None
                  and e["best_ms"] <= e["default_ms"] * (1 - MIN_GAIN))      # applied only when 10% faster
    assert tuning["with_faster_records"] == winners
    assert (tuning["applied"] >= winners) if winners else tuning["applied"] == 0   # counted in the built module
    assert art["schedules"] == ("tuned + default" if winners else "default")
    vs = art["accuracy"]["vs_litert"]
    assert vs["within_tolerance"] and vs["max_rel_diff"] <= 1e-4      # tuned schedules keep results correct
    plain = next(a for a in compile_target(options(out_dir=root / "plain", tuning_dir=None)).manifest["artifacts"]
                 if a["format"] == "tvm")
    assert plain["tuning"] is None and plain["schedules"] == "default"
    if winners:
        assert plain["sha256"] != art["sha256"]           # the records really changed the library


def test_tune_bad_inputs_are_one_line(setup, cli, tmp_path):
    root, options = setup
    with pytest.raises(InputError, match="needs KEY="):
        tune_target(TuneOptions(options(), rpc="127.0.0.1:9"))
    with pytest.raises(InputError, match="not host:port"):
        tune_target(TuneOptions(options(), rpc="nohost", key="k"))
    with pytest.raises(InputError, match="TRIALS=0"):
        tune_target(TuneOptions(options(), trials=0))
    with pytest.raises(ConfigError, match="builds no TVM CPU library"):
        tune_target(TuneOptions(options(target="mali", targets_dir=CompileOptions.targets_dir)))
    with pytest.raises(InputError, match="must be measured on the board"):
        tune_target(TuneOptions(options(target="rpi4", targets_dir=CompileOptions.targets_dir)))
    port = free_port()
    code, out, err = cli("tune", "--target", "tunehost", "--targets-dir", root / "targets", "--weights",
                         options().weights, "--calib-n", "10", "--rpc", f"127.0.0.1:{port}", "--key", "k",
                         "--out", tmp_path / "o", "--cache-dir", options().cache_dir, "--tuning-dir", tmp_path / "t",
                         "--quiet")
    assert code == 2 and len(error_lines(err)) == 1 and "cannot reach the TVM RPC tracker" in err
