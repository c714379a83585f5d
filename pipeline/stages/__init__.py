"""The stages, in data-flow order. Each module has NAME, VERSION, TOOLS, a frozen ``Config``
dataclass and ``run(inputs, config, out, progress)``: inputs are files, outputs go to ``out``
(a fresh folder). Stages never read argv, environment variables or globals.
"""
from pipeline.stages import analyze, build, calibrate, check, convert, opencl_runtime, tvm_build

STAGES = (build, calibrate, convert, tvm_build, opencl_runtime, check, analyze)
