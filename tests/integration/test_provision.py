"""make provision against a board reached over a real sshd on 127.0.0.1 (an x86 board: this machine's pinned
wheels, in a home of its own), then make bench there: the runtimes are the recorded ones, the figures the same."""
from __future__ import annotations

import getpass
import json
import re

import pytest

from benchmarks.errors import BenchError
from tests.conftest import free_port, start_sshd

pytestmark = pytest.mark.system          # a 400 MB install over ssh: `make test-system`, run by .ci/run

RUNNER = ["--threads", "1", "--min-runs", "3", "--min-seconds", "0", "--max-seconds", "1", "--eval-n", "24",
          "--only", "tiny_int8.tflite", "--only", "tiny_int8.onnx", "--only", "tiny_int8.so"]


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    """A board whose home is a folder of its own: every session runs with HOME there."""
    work = tmp_path_factory.mktemp("board")
    home = work / "home"
    home.mkdir()
    server = start_sshd(work, force_command=f'env HOME={home} sh -c "$SSH_ORIGINAL_COMMAND"')
    info = next(server)
    yield info | {"home": home, "dest": f"{getpass.getuser()}@127.0.0.1"}
    next(server, None)


def provision(cli, board, cache, target="host", port=None):
    return cli("provision", "--target", target, "--device", board["dest"], "--port", port or board["port"],
               "--ssh-opts", " ".join(board["options"]), "--cache-dir", cache)


def test_a_board_that_does_not_fit_is_refused_in_one_line_and_left_as_it_was(cli, board, stage_cache):
    code, out, err = provision(cli, board, stage_cache, target="rpi4")
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert code == 2 and len(errors) == 1, err
    assert re.fullmatch(r"error: DEVICE=\S+@127\.0\.0\.1: the board is x86_64; target rpi4 is built for aarch64; "
                        r"nothing was changed on the board", errors[0]), err
    code, out, err = provision(cli, board, stage_cache, port=free_port())
    assert code == 2 and re.fullmatch(r"error: DEVICE=\S+ is unreachable over ssh \(.*\); nothing was changed",
                                      err.strip()), err
    assert list(board["home"].iterdir()) == []


def test_provisioned_board_runs_the_recorded_runtimes_and_refuses_a_changed_one(cli, board, stage_cache, tiny_build):
    from benchmarks.run import Budget, run_build
    from benchmarks.ssh import run_over_ssh
    from pipeline.board_wheels import cached_wheels

    code, out, err = provision(cli, board, stage_cache)
    assert code == 0, err
    wheels = cached_wheels(stage_cache, "x86_64")
    env = board["home"] / ".xception-edge" / "current"
    record = json.loads((env / "xception-edge-env.json").read_text())
    assert record["set_id"] == wheels.id
    assert {p["wheel"]: p["wheel_sha256"] for p in record["packages"]} == {w["file"]: w["sha256"] for w in wheels.wheels}
    assert {"ai-edge-litert", "onnxruntime", "apache-tvm", "numpy"} <= {p["name"] for p in record["packages"]}
    assert not list((board["home"] / ".xception-edge").glob("staging.*"))          # the pushed wheels are removed

    options, _ = tiny_build("host")
    build = options.out_dir / "host"
    remote = run_over_ssh(build, board["dest"], RUNNER, board["port"], board["options"], log=lambda m: None,
                          expected_set=wheels.id)
    assert remote["runtime_env"]["verified"] and remote["runtime_env"]["set_id"] == wheels.id
    assert remote["runtime_env"]["python"].startswith(str(env.resolve()))
    assert all(r["verified_runtime"] for r in remote["results"]), [r.get("runtime_note") for r in remote["results"]]
    here = run_build(build, 1, Budget(min_runs=3, min_seconds=0, max_seconds=1), 24, log=lambda m: None,
                     only=["tiny_int8.tflite", "tiny_int8.onnx", "tiny_int8.so"])
    # the same pinned runtimes on the same CPU: the int8 outputs, hence every accuracy figure, are the same bits
    assert {r["file"]: r["accuracy"] for r in remote["results"]} == {r["file"]: r["accuracy"] for r in here["results"]}

    metadata = next(env.glob("lib/python3*/site-packages/psutil-*.dist-info/METADATA"))
    metadata.write_text(re.sub(r"(?m)^Version: .*$", "Version: 0.0.1", metadata.read_text()))
    with pytest.raises(BenchError, match=r"the runtime environment `make provision` installed has changed: psutil "
                                         r"is 0\.0\.1 where [\d.]+ was installed; run `make provision TARGET=host"):
        run_over_ssh(build, board["dest"], RUNNER, board["port"], board["options"], log=lambda m: None)


# -- the emulated arm64 board (tests/emulated_board.py): a Cortex-A72, what make verify emulates for rpi4 --------
ARM_CORE = "cortex-a72"
INT8 = ["tiny_int8.tflite", "tiny_int8.onnx", "tiny_int8.so"]


@pytest.fixture(scope="module")
def arm_board(tmp_path_factory, emulator_cache):
    from pipeline.progress import Progress
    from tests.emulated_board import binfmt_entry, prepare_board, static_qemu

    work = tmp_path_factory.mktemp("arm-board")
    progress = Progress(quiet=True)
    with binfmt_entry(static_qemu(emulator_cache, progress)):
        script = prepare_board(work, emulator_cache, ARM_CORE, 4, progress)
        server = start_sshd(work, force_command=f"sh {script}")
        info = next(server)
        yield info | {"home": work / "root" / "root", "dest": f"{getpass.getuser()}@127.0.0.1"}
        next(server, None)


def _board_logits(remote, build, art, folder: str) -> bytes:
    """Run one artifact on the board as make verify's emulated child runs it (one pass, --save-logits), in the
    provisioned environment; the logits file's bytes."""
    import base64
    from pathlib import PurePosixPath

    from benchmarks.run import ONE_PASS, child_command

    here = PurePosixPath(folder)
    cmd = child_command(here / build.name, art, 1, ONE_PASS, 24, here / "one.json",
                        ["/root/.xception-edge/current/bin/python"], here / "logits.npy")
    remote.run(["sh", "-c", 'cd "$1" && shift && exec "$@"', "sh", folder, *cmd])
    return base64.b64decode(remote.run(["base64", f"{folder}/logits.npy"]))


def test_emulated_arm64_board_is_provisioned_and_benches_make_verifys_bits(cli, arm_board, emulator_cache, tiny_build,
                                                                           tmp_path):
    import io

    import numpy as np

    from benchmarks.run import ONE_PASS, child_command
    from benchmarks.ssh import Remote, bundle, run_over_ssh
    from pipeline.board_wheels import cached_wheels
    from pipeline.emulation import ensure_emulator
    from pipeline.progress import Progress
    from pipeline.verify_runs import run_child

    # a board whose CPU lacks the target's int8 instructions: refused before anything is written
    code, out, err = provision(cli, arm_board, emulator_cache, target="rpi5")
    assert code == 2 and re.fullmatch(r"error: DEVICE=\S+: the board's CPU lacks asimddp \(dotprod\), asimdhp \(fp16\), "
                                      r"which target rpi5's libraries use \(int8 sdot\); pick the target of this "
                                      r"board; nothing was changed on the board", err.strip()), err
    assert list(arm_board["home"].iterdir()) == []

    code, out, err = provision(cli, arm_board, emulator_cache, target="rpi4")
    assert code == 0, err
    wheels = cached_wheels(emulator_cache, "aarch64")
    record = json.loads((arm_board["home"] / ".xception-edge/current/xception-edge-env.json").read_text())
    assert record["set_id"] == wheels.id and record["arch"] == "aarch64"
    assert {p["wheel"]: p["wheel_sha256"] for p in record["packages"]} == {w["file"]: w["sha256"] for w in wheels.wheels}

    options, _ = tiny_build("rpi4")
    build = options.out_dir / "rpi4"
    remote = run_over_ssh(build, arm_board["dest"], RUNNER, arm_board["port"], arm_board["options"],
                          log=lambda m: None, expected_set=wheels.id)
    assert remote["runtime_env"]["verified"] and remote["device"]["machine"] == "aarch64", remote["runtime_env"]
    assert sorted(r["file"] for r in remote["results"]) == sorted(INT8)
    assert all(r["verified_runtime"] for r in remote["results"]), [r.get("runtime_note") for r in remote["results"]]

    # the same int8 outputs, bit for bit, as make verify's emulated run of each file (its sysroot, its qemu)
    emulator = ensure_emulator(emulator_cache, Progress(quiet=True))
    emulator.set_core(ARM_CORE, 4)
    board = Remote(arm_board["dest"], arm_board["port"], arm_board["options"])
    folder = board.run(["mktemp", "-d", "/tmp/verify-bits.XXXXXX"]).strip()
    board.run(["tar", "-C", folder, "-xf", "-"], stdin=bundle(build))          # the build and the runner, as bench

    manifest = json.loads((build / "manifest.json").read_text())
    for art in (a for a in manifest["artifacts"] if a["file"] in INT8):
        code, stderr, _ = run_child(child_command(build, art, 1, ONE_PASS, 24, tmp_path / "v.json", emulator.python(),
                                                  tmp_path / "v.npy"), emulator.env(ARM_CORE))
        assert code == 0, stderr[-500:]
        on_board = np.load(io.BytesIO(_board_logits(board, build, art, folder)))
        assert on_board.dtype == np.float32 and on_board.any() and on_board.shape == np.load(tmp_path / "v.npy").shape
        assert np.array_equal(on_board, np.load(tmp_path / "v.npy")), art["file"]
