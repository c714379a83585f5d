"""make tune TARGET=rpi4 RPC= KEY=: MetaSchedule candidates for an aarch64 board, cross-linked here and
measured on an emulated Cortex-A72 registered with a TVM RPC tracker (its own module, so the test
runner can run it beside test_tune.py)."""
from __future__ import annotations

import pytest

from pipeline.compiler import CompileOptions, compile_target
from pipeline.tuning import TuneOptions, tune_target

pytestmark = pytest.mark.system       # minutes: `make test-system`, run by .ci/run on every change


def test_tune_rpi4_on_an_emulated_board(tiny_model, emulator_cache, tmp_path):
    """`make tune TARGET=rpi4 RPC= KEY=`: candidates are cross-linked here (zig) and measured on an
    emulated Cortex-A72 (qemu-user) that registered with the tracker; compile then applies the records
    to the aarch64 library."""
    from pipeline.emulation import ensure_emulator
    from pipeline.progress import Progress
    from tests.conftest import ROOT, RpcFarm

    emulator = ensure_emulator(emulator_cache, Progress(quiet=True))
    emulator.set_core("cortex-a72", 4)
    targets = tmp_path / "targets"
    targets.mkdir()
    rpi4 = (ROOT / "targets" / "rpi4.toml").read_text()
    (targets / "pi.toml").write_text(rpi4.replace(rpi4[rpi4.index("artifacts"):rpi4.index("\n", rpi4.index("artifacts"))],
                                                  'artifacts = ["tflite-fp32", "tvm-fp32"]'))
    farm = RpcFarm()
    try:
        farm.add_board("emulated-pi", emulator.python(), emulator.env("cortex-a72"), timeout=120)
        options = CompileOptions(target="pi", weights=str(tiny_model), out_dir=tmp_path / "build",
                                 cache_dir=emulator_cache, calib_n=10, eval_n=8, targets_dir=targets,
                                 tuning_dir=tmp_path / "tuning")
        summary = tune_target(TuneOptions(options, trials=3, rpc=farm.address, key="emulated-pi", timeout_sec=120))
    finally:
        farm.stop()
    assert summary["tuned_on"]["key"] == "emulated-pi" and summary["tvm_target"]["mcpu"] == "cortex-a72"
    entries = [summary["tasks"][k] for k in summary["keys"]]
    assert all(e["default_ms"] > 0 for e in entries)              # measured on the emulated board
    assert any(e["best_ms"] is not None for e in entries) and sum(e["trials"] for e in entries) <= 3
    art = next(a for a in compile_target(options).manifest["artifacts"] if a["format"] == "tvm")
    assert art["tuning"]["records"] == str(tmp_path / "tuning" / "pi" / "neon" / "tiny-32x32-10")   # Cortex-A72: NEON
    header = (tmp_path / "build" / "pi" / art["file"]).read_bytes()[:20]
    assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183      # EM_AARCH64
