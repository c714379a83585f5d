"""Where an artifact's accuracy is measured, and what the figure describes. Each artifact runs on the eval set
through the check stage: here, or, for ONNX Runtime int8 on an ARM board, under qemu-user as the board's core
(its int8 kernels differ by CPU). Must hold: every accuracy record says, in ``measured_on``, whether the CPU it
ran on computes what the target computes, and why (docs/int8.md).
"""
from __future__ import annotations

import json
import platform
from pathlib import Path

from benchmarks.device import this_cpu
from pipeline.cache import canonical_json
from pipeline.emulation import ensure_emulator
from pipeline.errors import MissingDependencyError, StageError
from pipeline.progress import Progress
from pipeline.stage_runner import StageRunner
from pipeline.stages import check, convert
from pipeline.targets import ARTIFACT_KINDS, Target

# With default schedules the on-host TVM check runs the whole eval set. Without them (tvm.schedules = "none") TVM
# runs Xception at about 0.7 s per 71x71 image (11 s at 299x299) on 2 cores: the first images only, n recorded.
TVM_CHECK_PIXELS = 32 * 71 * 71
TVM_CHECK_MIN_IMAGES = 4


class Checker:
    """Runs the check stage for one target; the emulated board is set up on first need (None: not yet)."""

    def __init__(self, runner: StageRunner, target: Target, cache_dir: Path, progress: Progress):
        self.runner, self.target, self.cache_dir, self.progress = runner, target, cache_dir, progress
        self.host_cpu = this_cpu()
        self.emulator = None            # False: emulation is not possible here (said once)

    def check(self, kind: str, runtime: str, inputs: dict[str, Path], limit: int = 0) -> dict:
        """The accuracy record of one artifact, with ``measured_on`` saying whether that CPU computes what the
        target does."""
        emulate = self.emulation_for(kind)
        runs_on = "" if emulate else canonical_json(self.host_cpu)
        checked = self.runner.stage(check, check.Config(kind, runtime, limit=limit, runs_on=runs_on, emulate=emulate),
                                    inputs, f"check {kind}")
        result = json.loads(checked.file("accuracy.json").read_text())
        same, why = describes_target(kind, onnx_int8_scheme(self.target)[0], result["measured_on"], self.target)
        result["measured_on"] |= {"computes_as_target": same, "why": why}
        if not same:
            self.progress.warn(f"{inputs['artifact'].name}: accuracy measured on {self.host_cpu['cpu_model']} "
                               f"({why}); it does not describe {self.target.name}")
        return result

    def tvm_limit(self, input_shape: list[int]) -> int:
        """How many eval images the on-host TVM check runs (0: all)."""
        if self.target.tvm.schedules == "default":
            return 0
        _, height, width, _ = input_shape
        return max(TVM_CHECK_MIN_IMAGES, TVM_CHECK_PIXELS // (height * width))

    def emulation_for(self, kind: str) -> str:
        """ONNX Runtime int8 on an ARM board: its int8 kernels differ from x86's (which saturate without VNNI), so
        the figure comes from running the artifact as the board does, under qemu-user. "" = run here."""
        target = self.target
        if kind != "onnx-int8" or target.arch != "aarch64" or platform.machine() == "aarch64":
            return ""
        if self.emulator is None:
            try:
                self.emulator = ensure_emulator(self.cache_dir, self.progress)
            except (MissingDependencyError, StageError) as exc:
                self.progress.warn(f"cannot emulate {target.cpu.core} to measure {kind} as the board runs it: {exc}")
                self.emulator = False
        if not self.emulator:
            return ""
        return canonical_json({"qemu": self.emulator.qemu, "sysroot": str(self.emulator.sysroot),
                               "core": target.cpu.core, "cores": target.cpu.cores or 4})


def onnx_int8_scheme(target: Target) -> tuple[str, str]:
    """The ONNX int8 scheme for this target's CPU, and why."""
    return convert.onnx_int8_scheme(target.arch, target.int8_isa, target.int8_saturates)


def describes_target(kind: str, onnx_scheme: str, measured_on: dict, target: Target) -> tuple[bool, str]:
    """Whether an accuracy figure measured on ``measured_on`` is what ``target`` computes, and why."""
    precision, runtime = ARTIFACT_KINDS[kind].precision, ARTIFACT_KINDS[kind].runtime
    isa = measured_on.get("int8_isa")
    if measured_on.get("emulated"):
        return True, f"run under qemu-user as the board's core ({measured_on['emulated']})"
    if precision != "int8":
        return True, "float arithmetic: the target computes the same up to rounding"
    if runtime == "litert":
        return True, ("LiteRT's int8 kernels (XNNPACK) compute exact integer arithmetic on every CPU "
                      "(make verify checks ARM builds bit for bit)")
    if runtime == "tvm":
        return True, "TVM library built for and run on this CPU"
    reduce_range = convert.ONNX_INT8_SCHEMES[onnx_scheme][2]
    if not reduce_range and measured_on.get("int8_saturates") and not target.int8_saturates:
        return False, (f"this CPU ({isa}, no VNNI) saturates int16 sums in ONNX Runtime's int8 kernels, the "
                       f"target ({target.int8_isa}) does not: the figure understates the target's accuracy")
    if measured_on.get("machine") != target.arch:
        return True, (f"ONNX Runtime int8 accumulates exactly here ({isa}) as on the target ({target.int8_isa}); "
                      f"requantization rounding may differ by a step")
    return True, f"the same int8 arithmetic: {onnx_scheme} does not saturate on this CPU ({isa}) nor on the target"
