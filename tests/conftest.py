"""Shared fixtures: tiny Keras models (seconds through every stage) and a CLI runner."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Float training differs between CPUs (AVX2, AVX-512, AMX kernels sum in other orders), so no assertion may rest on
# what training made of a model. TEST_TRAIN_SEED=n shifts the training seeds of the trained test models: a run with
# another seed is what another CPU's training looks like, on any machine (docs/testing.md, "Portable tests").
TRAIN_SEED_SHIFT = int(os.environ.get("TEST_TRAIN_SEED", "0"))


def make_tiny_model(path: Path, input_shape=(32, 32, 3), classes: int = 10, softmax: bool = True,
                    seed: int = 0) -> Path:
    """A small conv net with Xception's op kinds (conv, BN, ReLU, depthwise, pointwise, pool, dense)."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input(input_shape)
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same")(inp)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.SeparableConv2D(16, 3, padding="same")(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    out = keras.layers.Dense(classes, activation="softmax" if softmax else None)(x)
    keras.Model(inp, out).save(path)
    return path


def make_residual_model(path: Path, size: int = 32, classes: int = 10, seed: int = 0) -> Path:
    """Random weights in Xception's shape at small scale: entry convs, then residual blocks (ReLU,
    separable convs, max pooling, a strided 1x1 shortcut, ADD) and global average pooling: every int8
    operator kind of Xception, at int8 scales that no calibration has tuned."""
    import keras

    keras.utils.set_random_seed(seed)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False)(inp)
    x = keras.layers.ReLU()(keras.layers.BatchNormalization()(x))
    for filters in (16, 24):
        shortcut = keras.layers.BatchNormalization()(
            keras.layers.Conv2D(filters, 1, strides=2, padding="same", use_bias=False)(x))
        x = keras.layers.ReLU()(x)
        x = keras.layers.BatchNormalization()(keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x))
        x = keras.layers.ReLU()(x)
        x = keras.layers.BatchNormalization()(keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x))
        x = keras.layers.MaxPooling2D(3, strides=2, padding="same")(x)
        x = keras.layers.Add()([x, shortcut])
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    keras.Model(inp, keras.layers.Dense(classes)(x)).save(path)
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("models") / "tiny.keras")


@pytest.fixture(scope="session")
def stage_cache(tmp_path_factory) -> Path:
    """One stage cache for the whole run. Stages are keyed by their inputs' content, config and tool versions,
    so a stage another test already ran for the same model and settings is reused instead of run again, and the
    emulated aarch64 board (a Debian sysroot with wheels) is built at most once."""
    return tmp_path_factory.mktemp("stage-cache")


TINY_CALIB_N, TINY_EVAL_N = 20, 40


@pytest.fixture(scope="session")
def digitnet(tmp_path_factory) -> tuple[Path, Path]:
    """(model, eval folder): the small net trained on the digits (meaningful int8 accuracy) and 120 labelled
    test images, made once per run for the gate and the portable-int8 tests."""
    root = tmp_path_factory.mktemp("digitnet")
    return make_trained_tiny_model(root / "digitnet.keras"), labelled_digits(root / "eval")


@pytest.fixture(scope="session")
def tiny_build(tiny_model, stage_cache, tmp_path_factory):
    """``tiny_build(target)`` -> (CompileOptions, CompileResult): a shipped target compiled from the tiny model
    once per run (CALIB_N=20, EVAL_N=40) into one shared build folder. Tests that change a build copy it first;
    tests of the cache's own behaviour use other settings or their own cache."""
    from pipeline.compiler import CompileOptions, compile_target

    out = tmp_path_factory.mktemp("tiny-build")
    built: dict[str, tuple] = {}

    def compile_for(target: str):
        if target not in built:
            options = CompileOptions(target=target, weights=str(tiny_model), out_dir=out, cache_dir=stage_cache,
                                     calib_n=TINY_CALIB_N, eval_n=TINY_EVAL_N)
            built[target] = (options, compile_target(options))
        return built[target]
    return compile_for


@pytest.fixture
def cli(capsys):
    """Run ``python -m pipeline`` in-process: returns (exit code, stdout, stderr)."""
    from pipeline.cli import main

    def run(*args: str):
        previous = signal.getsignal(signal.SIGTERM)
        capsys.readouterr()                     # what an earlier call printed before it raised is not this call's
        try:
            code = main([str(a) for a in args])
        except SystemExit as exc:                # argparse's own errors (an invalid choice) exit from parse_args
            code = exc.code
        finally:
            signal.signal(signal.SIGTERM, previous)
        out, err = capsys.readouterr()
        return code, out, err
    return run


def run_module(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, **kwargs)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def write_target(folder: Path, name: str, artifacts: list[str], extra: str = "") -> Path:
    """A target file for tests (e.g. one artifact only, to keep Xception-size tests short)."""
    folder.mkdir(parents=True, exist_ok=True)
    listed = ", ".join(f'"{a}"' for a in artifacts)
    (folder / f"{name}.toml").write_text(
        f'description = "test target"\narch = "x86_64"\nartifacts = [{listed}]\n{extra}'
        '[cpu]\ncore = "host"\ncores = 0\n[bench]\nthreads = 0\n')
    return folder


def make_trained_tiny_model(path: Path, size: int = 32, epochs: int = 8) -> Path:
    """A small conv net trained for a few seconds on the digits train split (meaningful outputs)."""
    import keras

    from models import digits
    from models.preprocessing import preprocess

    keras.utils.set_random_seed(1 + TRAIN_SEED_SHIFT)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same")(inp)
    x = keras.layers.BatchNormalization(momentum=0.8)(x)   # Keras' 0.99 does not converge in few steps
    x = keras.layers.ReLU()(x)
    x = keras.layers.SeparableConv2D(32, 3, strides=2, padding="same")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inp, keras.layers.Dense(10)(x))
    x_train, y_train = digits.load_split("train", size, size)
    model.compile(optimizer=keras.optimizers.Adam(2e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(preprocess(x_train), y_train, epochs=epochs, batch_size=32, verbose=0)
    model.save(path)
    return path


def _train_on_digits(model, size: int, epochs: int, layer: str) -> int:
    """Train ``model`` on the digits; returns the channel of ``layer`` with the largest output on them."""
    import keras
    import numpy as np

    from models import digits
    from models.preprocessing import preprocess

    x_train, y_train = digits.load_split("train", size, size)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(preprocess(x_train), y_train, epochs=epochs, batch_size=32, verbose=0)
    probe = keras.Model(model.inputs, model.get_layer(layer).output)
    return int(np.argmax(np.asarray(probe.predict(preprocess(x_train[:256]), verbose=0)).max(axis=(0, 1, 2))))


def make_outlier_model(path: Path, size: int = 32, factor: float = 1000.0, seed: int = 2, epochs: int = 25) -> Path:
    """A small net trained on the digits whose most active conv_a channel is scaled up by ``factor`` and conv_b's
    weights for it down (models/outlier.py): float unchanged, per-tensor int8 of conv_a's output ruined."""
    import keras

    from models.outlier import inject

    keras.utils.set_random_seed(seed + TRAIN_SEED_SHIFT)
    inp = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv_a")(inp)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv_b")(x)
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_c")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(x))
    # the channel with the largest output on the training images: scaled up, it sets conv_a's int8 range and every
    # other channel falls below half a step, whatever training made of the model (a fixed channel may be dead)
    inject(model, "conv_a", _train_on_digits(model, size, epochs, "conv_a"), factor)
    model.save(path)
    return path


def make_residual_outlier_model(path: Path, size: int = 32, factor: float = 1000.0, seed: int = 3,
                                epochs: int = 15, merge: str = "add") -> Path:
    """A small net trained on the digits whose outlier channel k flows through the merge of two branches, scaled up
    by ``factor`` in every layer that writes it and down in every layer that reads it. ``merge="add"``: a residual
    ADD of conv_b and a 1x1 shortcut; "concat": a concatenation of the two (conv_b's channel alone); "identity": a
    residual ADD whose shortcut is conv_a's output itself (conv_a's, conv_b's channel, read by conv_b and conv_c);
    "bn": no merge, conv_b's ReLU output normalized by a BatchNorm (pre-activation style: its moving statistics
    take the scale back, so conv_c is not rescaled). Float unchanged; the int8 range of that tensor ruined."""
    import keras

    keras.utils.set_random_seed(seed + TRAIN_SEED_SHIFT)
    inp = keras.Input((size, size, 3))
    a = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="conv_a")(inp)
    b = keras.layers.Conv2D(16, 3, padding="same", name="conv_b")(a)
    if merge == "bn":
        x = keras.layers.BatchNormalization(name="bn")(keras.layers.ReLU(name="add_relu")(b))
    else:
        s = a if merge == "identity" else keras.layers.Conv2D(16, 1, name="shortcut")(a)
        merged = (keras.layers.Concatenate(name="concat") if merge == "concat" else keras.layers.Add(name="add"))([b, s])
        x = keras.layers.ReLU(name="add_relu")(merged)
    x = keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="conv_c")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(x))
    k = _train_on_digits(model, size, epochs, "add_relu") % 16          # a channel of conv_b (the first half of a concatenation)
    scaled = {"add": ("conv_b", "shortcut"), "concat": ("conv_b",), "identity": ("conv_a", "conv_b"),
              "bn": ("conv_b",)}[merge]
    for name in scaled:
        kernel, bias = model.get_layer(name).get_weights()
        kernel[..., k] *= factor
        bias[k] *= factor
        model.get_layer(name).set_weights([kernel, bias])
    readers = {"identity": ("conv_c", "conv_b"), "bn": ()}.get(merge, ("conv_c",))
    for name in readers:
        kernel, bias = model.get_layer(name).get_weights()
        kernel[:, :, k, :] /= factor
        model.get_layer(name).set_weights([kernel, bias])
    if merge == "bn":           # (x F - mean F) / sqrt(var' + eps) is (x - mean) / sqrt(var + eps) when var' = ...
        bn = model.get_layer("bn")
        gamma, beta, mean, var = bn.get_weights()
        mean[k] *= factor
        var[k] = factor ** 2 * (var[k] + bn.epsilon) - bn.epsilon
        bn.set_weights([gamma, beta, mean, var])
    model.save(path)
    return path


def labelled_digits(folder: Path, n: int = 120, size: int = 32) -> Path:
    """The first ``n`` images of the digits test split as an EVAL= folder (one sub-folder per label)."""
    from PIL import Image

    from models import digits

    pixels, labels = digits.load_split("test", size, size)
    for i, (img, label) in enumerate(zip(pixels[:n], labels[:n])):
        (folder / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / str(label) / f"{i}.png")
    return folder


def damaged_int8_tflite(model_file: Path, calib, out: Path) -> Path:
    """A real quantization regression: per-tensor int8 calibrated on ranges clipped to 2% of the data."""
    import keras
    import tensorflow as tf

    model = keras.saving.load_model(model_file)
    spec = tf.TensorSpec((1,) + tuple(model.inputs[0].shape[1:]), tf.float32)
    saved = out.parent / "damaged_saved_model"
    model.export(str(saved), format="tf_saved_model", input_signature=[spec], verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter._experimental_disable_per_channel = True
    converter.representative_dataset = lambda: ([calib[i:i + 1] * 0.02] for i in range(len(calib)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    out.write_bytes(converter.convert())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RpcFarm:
    """A TVM RPC tracker on 127.0.0.1 and the servers ("boards") registered with it; every process is
    stopped as a whole process group (servers fork a worker per session)."""

    def __init__(self):
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        self._start([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(self.port),
                     "--port-end", str(self.port + 1)])
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self.procs[0].poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    pytest.fail(f"the TVM RPC tracker did not start (exit {self.procs[0].poll()})")
                time.sleep(0.2)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, cmd: list[str], env: dict | None = None) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                                env=env)
        self.procs.append(proc)
        return proc

    def add_board(self, key: str, python: list[str] | None = None, env: dict | None = None,
                  timeout: float = 30, load_library: str | None = None) -> None:
        """An RPC server under ``key``. With ``python`` (e.g. qemu + an aarch64 python) the server loop runs
        in that process: TVM's rpc_server would spawn its worker with sys.executable, which qemu-user
        cannot exec without binfmt_misc."""
        if python is None:
            proc = self._start([sys.executable, "-m", "tvm.exec.rpc_server", "--tracker", self.address, "--key", key,
                                "--host", "127.0.0.1", *(["--load-library", load_library] if load_library else [])],
                               env)
        else:
            code = ("import time\nfrom tvm.rpc import server\n"
                    f"server._popen_start_rpc_server('127.0.0.1', 9300, 9500, False, ('127.0.0.1', {self.port}), "
                    f"{key!r})\nwhile True:\n    time.sleep(3600)\n")
            proc = self._start([*python, "-c", code], env)
        from tvm import rpc

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                if rpc.connect_tracker("127.0.0.1", self.port).summary().get("queue_info", {}).get(key, {}).get("free"):
                    return
            except Exception:  # noqa: BLE001 - the tracker is still starting
                pass
            time.sleep(0.5)
        self.stop()
        pytest.fail(f"the TVM RPC server for key {key!r} did not register with the tracker (exit {proc.poll()})")

    def stop(self) -> None:
        for proc in self.procs:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in self.procs:
            proc.wait(timeout=10)


@pytest.fixture(scope="module")
def rpc_tracker():
    """A TVM RPC tracker and one server registered under key 'testboard', both on 127.0.0.1."""
    farm = RpcFarm()
    farm.add_board("testboard")
    yield farm.address
    farm.stop()


@pytest.fixture(scope="session")
def emulator_cache(stage_cache) -> Path:
    """The run's stage cache, holding the emulated aarch64 board (qemu-user + arm64 sysroot), built once per run.
    Where the user's own cache already holds boards (a `make compile TARGET=rpi4` before the tests, as in CI),
    the run uses them: a board only measures, it shapes no artifact, and it is keyed by its packages' versions."""
    from pipeline.compile_options import default_cache_dir
    from pipeline.emulation import ensure_emulator
    from pipeline.errors import MissingDependencyError, StageError
    from pipeline.progress import Progress

    for name in ("emulation", "wheels"):       # the boards and the wheel sets they are installed from
        users = default_cache_dir() / name
        if users.is_dir() and not (stage_cache / name).exists():
            (stage_cache / name).symlink_to(users, target_is_directory=True)
    try:
        ensure_emulator(stage_cache, Progress(quiet=True))
    except (MissingDependencyError, StageError) as exc:
        pytest.skip(f"emulator set-up not possible here: {exc}")
    return stage_cache


# -- a real sshd (the ssh benchmark and make provision) -------------------------------------------------
def _ensure_sshd() -> str | None:
    sshd = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)
    if sshd is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, env=env, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "openssh-server"], capture_output=True, env=env, timeout=600)
        sshd = "/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None
    return sshd


def start_sshd(work: Path, force_command: str = ""):
    """A real sshd on 127.0.0.1 for the tests (a generator: the fixture yields from it); ``force_command``, when
    given, is what every session runs (the client's command is in $SSH_ORIGINAL_COMMAND)."""
    sshd = _ensure_sshd()
    if sshd is None:
        pytest.skip("no sshd: install openssh-server (apt-get install openssh-server; .ci/run does)")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(work / name)], check=True)
    (work / "authorized_keys").write_text((work / "client_key.pub").read_text())
    port = free_port()
    (work / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {work}/host_key\nAuthorizedKeysFile {work}/authorized_keys\n"
        f"PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        f"StrictModes no\nUsePAM no\nPidFile {work}/sshd.pid\n" + (f"ForceCommand {force_command}\n" if force_command else ""))
    os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(work / "sshd_config")], stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.skip(f"sshd could not start: {proc.stderr.read().decode()[-300:]}")
            time.sleep(0.1)
    options = ["-i", str(work / "client_key"), "-o", f"UserKnownHostsFile={work}/known_hosts",
               "-o", "StrictHostKeyChecking=accept-new"]
    yield {"port": port, "options": options, "user": os.environ.get("USER") or "root"}
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=10)
