"""Every bad input: one clear line, a non-zero exit code, no half-written artifact or cache entry."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from PIL import Image

from pipeline.output import TargetLock
from tests.conftest import ROOT, error_lines, make_tiny_model, write_target


@pytest.fixture
def dirs(tmp_path):
    return {"out": tmp_path / "build", "cache": tmp_path / "cache"}


def compile_args(dirs, *extra):
    return ["compile", "--quiet", "--out", dirs["out"], "--cache-dir", dirs["cache"], *extra]


def assert_one_error(code, err, expected_code, pattern, dirs=None, target="host"):
    import re

    lines = error_lines(err)
    assert code == expected_code, err
    assert len(lines) == 1, err
    assert re.search(pattern, lines[0]), lines[0]
    if dirs is not None:
        assert not (dirs["out"] / target).exists()
        stages = dirs["cache"] / "stages"
        leftovers = [p for p in stages.rglob(".tmp-*")] if stages.exists() else []
        assert leftovers == []


def test_unknown_target(cli, dirs):
    code, _, err = cli(*compile_args(dirs, "--target", "rpi9"))
    assert_one_error(code, err, 2, r"unknown target 'rpi9'; valid targets: adreno, android-arm64, host", dirs)


def test_malformed_target_file(cli, dirs, tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "board.toml").write_text("description = [unclosed\n")
    code, _, err = cli(*compile_args(dirs, "--target", "board", "--targets-dir", tmp_path / "t"))
    assert_one_error(code, err, 2, r"board\.toml: malformed TOML", dirs, "board")


def test_unknown_key_in_target_file(cli, dirs, tmp_path):
    folder = write_target(tmp_path / "t", "board", ["tflite-fp32"], extra='speed = "fast"\n')
    code, _, err = cli(*compile_args(dirs, "--target", "board", "--targets-dir", folder))
    assert_one_error(code, err, 2, r"unknown key 'speed'; valid keys: description, arch, artifacts", dirs, "board")


def test_missing_model_file(cli, dirs, tmp_path):
    code, _, err = cli(*compile_args(dirs, "--target", "host", "--weights", tmp_path / "nope.keras"))
    assert_one_error(code, err, 2, r"model file .*nope\.keras does not exist", dirs)


def test_corrupt_model_file(cli, dirs, tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"PK\x03\x04 this is not a keras archive")
    code, _, err = cli(*compile_args(dirs, "--target", "host", "--weights", bad))
    assert_one_error(code, err, 2, r"cannot load model file .*broken\.keras: .*accepted: a Keras \.keras or \.h5", dirs)


@pytest.mark.parametrize("shape,message", [
    ((32, 32, 1), r"input shape \(None, 32, 32, 1\) is not an image batch; accepted: one input of rank 4"),
    ((48,), r"input shape \(None, 48\) is not an image batch"),
])
def test_model_input_not_an_rgb_image(cli, dirs, tmp_path, shape, message):
    import keras

    inp = keras.Input(shape)
    x = keras.layers.Flatten()(inp) if len(shape) > 1 else inp
    path = tmp_path / "wrong.keras"
    keras.Model(inp, keras.layers.Dense(3)(x)).save(path)
    code, _, err = cli(*compile_args(dirs, "--target", "host", "--weights", path))
    assert_one_error(code, err, 2, message, dirs)


def test_empty_calibration_folder(cli, dirs, tmp_path, tiny_model):
    (tmp_path / "calib" / "sub").mkdir(parents=True)
    code, _, err = cli(*compile_args(dirs, "--target", "host", "--weights", tiny_model, "--calib", tmp_path / "calib"))
    assert_one_error(code, err, 2, r"CALIB= folder .*calib holds no images; accepted: \.jpg, \.jpeg, \.png", dirs)


def test_unreadable_calibration_folder(cli, dirs, tmp_path, tiny_model):
    (tmp_path / "calib").mkdir()
    (tmp_path / "calib" / "a.jpg").write_bytes(b"\xff\xd8 truncated")
    (tmp_path / "calib" / "b.png").write_bytes(b"nothing")
    code, _, err = cli(*compile_args(dirs, "--target", "host", "--weights", tiny_model, "--calib", tmp_path / "calib"))
    assert_one_error(code, err, 2, r"calibration folder .*none of its 2 image files could be read", dirs)
    assert "a.jpg" in err and "b.png" in err            # each unreadable file is named


def test_some_unreadable_calibration_images_are_skipped(cli, dirs, tmp_path, tiny_model):
    (tmp_path / "calib").mkdir()
    Image.new("RGB", (40, 40), (10, 20, 30)).save(tmp_path / "calib" / "good.png")
    (tmp_path / "calib" / "bad.png").write_bytes(b"nothing")
    code, _, err = cli(*compile_args(dirs, "--target", "host", "--weights", tiny_model, "--calib", tmp_path / "calib"))
    assert code == 0, err
    assert "skipping unreadable calibration image" in err and "bad.png" in err


def test_unwritable_output_folder(cli, dirs, tmp_path, tiny_model):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    code, _, err = cli("compile", "--quiet", "--target", "host", "--weights", tiny_model,
                       "--out", blocker / "build", "--cache-dir", dirs["cache"])
    assert_one_error(code, err, 2, r"output folder .*file/build is not writable: .*choose another with OUT=dir")


def test_bad_number(cli, dirs):
    code, _, err = cli(*compile_args(dirs, "--target", "host", "--calib-n", "many"))
    assert_one_error(code, err, 2, r"CALIB_N= \(--calib-n\): expected a whole number, got 'many'", dirs)
    code, _, err = cli(*compile_args(dirs, "--target", "host", "--calib-n", "0"))
    assert_one_error(code, err, 2, r"CALIB_N=0 must be a positive number of images", dirs)


def test_second_compile_of_same_target_is_refused(cli, dirs, tiny_model):
    dirs["out"].mkdir(parents=True)
    with TargetLock(dirs["out"], "host"):
        code, _, err = cli(*compile_args(dirs, "--target", "host", "--weights", tiny_model))
    assert_one_error(code, err, 5, r"target host is being compiled by pid \d+ .*wait for it to finish", dirs)


@pytest.mark.system          # a real compile killed mid-stage and resumed: a minute; `make test-system`
def test_sigterm_mid_stage_leaves_no_partial_output_and_next_run_recovers(dirs, tmp_path):
    model = make_tiny_model(tmp_path / "m.keras", seed=3)
    cmd = [sys.executable, "-m", "pipeline", *map(str, compile_args(dirs, "--target", "host", "--weights", model))]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        # wait until a stage is mid-way: its private temporary folder exists
        while time.monotonic() < deadline and proc.poll() is None:
            if list((dirs["cache"] / "stages").rglob(".tmp-*")) if (dirs["cache"] / "stages").exists() else []:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "compile finished before it could be interrupted"
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 143, err
    assert "interrupted (SIGTERM)" in err
    assert list((dirs["cache"] / "stages").rglob(".tmp-*")) == []
    assert not (dirs["out"] / "host").exists()
    assert [p.name for p in dirs["out"].iterdir() if p.name.startswith(".host.staging")] == []
    rerun = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert (dirs["out"] / "host" / "manifest.json").is_file()


def test_a_damaged_cache_entry_is_rebuilt_automatically(cli, dirs, tiny_model, tmp_path):
    """A cached file changed after the fact (disk error, a hand edit) or an entry whose record is gone: the
    next compile says so in one warning and rebuilds that stage; the artifact is the same as before."""
    import json

    targets = write_target(tmp_path / "targets", "one", ["tflite-fp32"])
    args = compile_args(dirs, "--target", "one", "--targets-dir", targets, "--weights", tiny_model, "--calib-n", "4",
                        "--eval-n", "4")
    code, _, err = cli(*args)
    assert code == 0, err
    first = json.loads((dirs["out"] / "one" / "manifest.json").read_text())["artifacts"][0]["sha256"]
    converted = next((dirs["cache"] / "stages" / "convert").iterdir())
    tflite = next(converted.glob("*.tflite"))
    tflite.write_bytes(tflite.read_bytes() + b"\0")                       # damaged after it was made
    code, _, err = cli(*args)
    assert code == 0, err
    assert f"[convert tflite-fp32] the cached result in {dirs['cache']} is damaged ({tflite.name} changed" in err
    assert json.loads((dirs["out"] / "one" / "manifest.json").read_text())["artifacts"][0]["sha256"] == first
    (converted / ".entry.json").write_text("{not json")                  # a record nobody can read
    code, _, err = cli(*args)
    assert code == 0 and "is damaged (its record is missing or unreadable); rebuilding it" in err, err
    code, _, err = cli(*args)
    assert code == 0 and "damaged" not in err                           # rebuilt entries are trusted again
