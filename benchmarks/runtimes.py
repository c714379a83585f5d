"""Open an artifact with its runtime and run it on float inputs, returning float logits.

Runtimes are imported only when an artifact needs them: LiteRT (``ai_edge_litert``, or
``tflite_runtime`` on boards that have only that), ONNX Runtime, and the TVM runtime.
Quantized inputs/outputs are (de)quantized here with the scale and zero point the model carries.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.errors import first_line

RUNTIMES = ("litert", "onnxruntime", "tvm")
TVM_RUNTIME_ONLY = "TVM_USE_RUNTIME_LIB"       # TVM 0.27's switch: `import tvm` loads libtvm_runtime.so alone


class RuntimeMissing(RuntimeError):
    """The runtime an artifact needs is not installed here."""


def litert_interpreter_class():
    try:
        from ai_edge_litert.interpreter import Interpreter
        return Interpreter, "ai-edge-litert"
    except ImportError:
        pass
    try:
        from tflite_runtime.interpreter import Interpreter
        return Interpreter, "tflite-runtime"
    except ImportError:
        raise RuntimeMissing("no LiteRT runtime: install ai-edge-litert (or tflite-runtime on a board)") from None


class LiteRTSession:
    def __init__(self, path: Path, threads: int):
        interpreter_cls, self.provider = litert_interpreter_class()
        self.interpreter = interpreter_cls(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.input["shape"])

    def run(self, x: np.ndarray) -> np.ndarray:
        scale, zero = self.input["quantization"]
        self.interpreter.set_tensor(self.input["index"], quantize(x, self.input["dtype"], scale, zero))
        self.interpreter.invoke()
        scale, zero = self.output["quantization"]
        return dequantize(self.interpreter.get_tensor(self.output["index"]), scale, zero)


class LiteRTGpuSession:
    """A float (fp16 / fp32) TFLite model on LiteRT's GPU accelerator (WebGPU over Vulkan), asked for alone: an
    operator the GPU cannot run, or no usable GPU driver, is an error here rather than a quiet CPU fallback."""

    def __init__(self, path: Path):
        try:
            from ai_edge_litert.compiled_model import CompiledModel
            from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        except ImportError:
            raise RuntimeMissing("LiteRT's GPU path needs ai-edge-litert (CompiledModel); tflite-runtime has none") from None
        try:
            self.model = CompiledModel.from_file(str(path), hardware_accel=HardwareAccelerator.GPU)
        except Exception as exc:  # noqa: BLE001 - LiteRT raises plain RuntimeErrors with its own text
            raise RuntimeMissing(f"LiteRT's GPU accelerator cannot run {path.name}: "
                                 f"{first_line(exc)[:200]} "
                                 f"(a Vulkan driver is needed: the board's, or Mesa's lavapipe 25+)") from None
        if not self.model.is_fully_accelerated():
            raise RuntimeMissing(f"LiteRT's GPU accelerator does not run all of {path.name}; refusing a CPU fallback")
        signature = next(iter(self.model.get_signature_list()))
        details = self.model.get_input_tensor_details(signature)
        self.input_shape = tuple(next(iter(details.values()))["shape"])
        outputs = self.model.get_output_tensor_details(signature)
        self.output_size = int(np.prod(next(iter(outputs.values()))["shape"]))
        self.inputs = self.model.create_input_buffers(0)
        self.outputs = self.model.create_output_buffers(0)
        self.provider = "ai-edge-litert gpu (WebGPU)"
        self.accelerated = True

    def run(self, x: np.ndarray) -> np.ndarray:
        self.inputs[0].write(np.ascontiguousarray(x, dtype=np.float32))
        self.model.run_by_index(0, self.inputs, self.outputs)
        return self.outputs[0].read(self.output_size, np.float32).reshape(1, -1)


class OnnxSession:
    def __init__(self, path: Path, threads: int):
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeMissing("no ONNX Runtime: install onnxruntime") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = tuple(self.session.get_inputs()[0].shape)
        self.provider = "onnxruntime"

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x.astype(np.float32)})[0].astype(np.float32)


class TvmSession:
    """A TVM Relax library run by the Relax VM: here (``load``) or on an RPC device (the module and
    device of a remote session).

    ``io`` carries the input/output dtype, scale and zero point (from the manifest), since the
    library itself does not: int8 libraries take and give int8 like the TFLite model they came from.
    """

    def __init__(self, module, device, io: dict | None, provider: str, weights: list | None = None):
        import tvm
        from tvm.runtime.vm import VirtualMachine       # the runtime's VM: no compiler needed

        self._tensor = tvm.runtime.tensor
        self.device = device
        self.vm = VirtualMachine(module, device)
        self.main = self.vm["main"]
        # a CPU library's weights (<stem>.params), passed after the input on every call, as tensors on the device
        self.weights = [tvm.runtime.tensor(w, device=device) for w in weights or []]
        self.io = io or {"input": {"dtype": "float32"}, "output": {"dtype": "float32"}}
        self.input_shape = tuple(self.io["input"].get("shape", ()))
        self.provider = provider

    @classmethod
    def load(cls, path: Path, threads: int, io: dict | None, opencl_runtime: Path | None = None) -> "TvmSession":
        """A CPU library, or with ``opencl_runtime`` (our libtvm_runtime_opencl.so shipped beside it) a GPU
        library on the first OpenCL device."""
        if threads:
            os.environ.setdefault("TVM_NUM_THREADS", str(threads))
        if "tvm" not in sys.modules:
            # TVM's runtime library only (3.4 MB), not its compiler (libtvm_compiler.so, 259 MB with LLVM), which
            # `import tvm` maps otherwise: what a board needs, and what the runner's memory figure should show
            os.environ.setdefault(TVM_RUNTIME_ONLY, "1")
        try:
            import tvm
        except ImportError:
            raise RuntimeMissing("no TVM runtime: install apache-tvm") from None
        version = f"tvm {tvm.__version__}{'' if _tvm_compiler_mapped() else ' (runtime only)'}"
        if opencl_runtime is None:
            return cls(tvm.runtime.load_module(str(path)), tvm.cpu(), io, version, library_weights(path))
        try:
            ctypes.CDLL(str(opencl_runtime), mode=ctypes.RTLD_GLOBAL)  # registers device_api.opencl with TVM
        except OSError as exc:
            raise RuntimeMissing(f"cannot load {opencl_runtime.name} (built for the board's architecture, with "
                                 f"the OpenCL ICD loader libOpenCL.so.1): {exc}") from None
        device = tvm.opencl(0)
        if not device.exist:
            raise RuntimeMissing(f"no OpenCL device: install the board's OpenCL driver (an ICD in "
                                 f"/etc/OpenCL/vendors); {opencl_runtime.name} found none")
        return cls(tvm.runtime.load_module(str(path)), device, io, f"{version} opencl ({device.device_name})")

    def to_device(self, x: np.ndarray):
        i = self.io["input"]
        return self._tensor(quantize(x, np.dtype(i["dtype"]), i.get("scale"), i.get("zero_point")), device=self.device)

    def run(self, x: np.ndarray) -> np.ndarray:
        o = self.io["output"]
        result = self.main(self.to_device(x), *self.weights)
        y = result.numpy() if hasattr(result, "numpy") else result[0].numpy()
        return dequantize(y, o.get("scale"), o.get("zero_point"))


def library_weights(path: Path) -> list:
    """The arrays of ``path``'s <stem>.params, one by one as they become tensors; none when it has no such file (a
    GPU library, or one built before the weights left the .so)."""
    from benchmarks.files import sha256_file
    from benchmarks.tvm_params import params_file, read

    weights = params_file(Path(path))
    return read(weights, sha256_file(Path(path))) if weights.is_file() else []


def _tvm_compiler_mapped() -> bool:
    """Whether this process has TVM's compiler library mapped (where /proc tells; elsewhere assumed so)."""
    try:
        return "libtvm_compiler" in Path("/proc/self/maps").read_text()
    except OSError:
        return True


OPENCL_STATS = "xception_edge.opencl.stats"


def opencl_stats() -> dict | None:
    """What our OpenCL runtime ran in this process (platform, device, kernels built, launches), or None."""
    import tvm

    stats = tvm.get_global_func(OPENCL_STATS, allow_missing=True)
    if stats is None:
        return None
    figures = json.loads(stats())
    # a CPU OpenCL (POCL, Intel's CPU runtime): proof that the kernels are right, not a GPU's speed
    return figures | {"software": figures["device_type"] == "cpu"}


def vulkan_driver() -> str | None:
    """Why LiteRT's GPU accelerator cannot run here, or None: the Vulkan loader and at least one driver."""
    if ctypes.util.find_library("vulkan") is None:
        return "no Vulkan loader (libvulkan.so.1) on this machine"
    icds = os.environ.get("VK_ICD_FILENAMES") or os.environ.get("VK_DRIVER_FILES")
    if not icds and not any(Path(d).glob("*.json") for d in ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d")):
        return "no Vulkan driver registered (/usr/share/vulkan/icd.d)"
    return None


def software_vulkan() -> bool:
    """Whether LiteRT's GPU path runs on Mesa's lavapipe (the CPU): a correctness run, not GPU speed."""
    icds = os.environ.get("VK_ICD_FILENAMES") or os.environ.get("VK_DRIVER_FILES") or ""
    return "lvp_icd" in icds


def opencl_driver() -> str | None:
    """Why OpenCL cannot run here, or None: the ICD loader and at least one vendor driver file."""
    if ctypes.util.find_library("OpenCL") is None:
        return "no OpenCL ICD loader (libOpenCL.so.1) on this machine"
    vendors = os.environ.get("OCL_ICD_VENDORS", "/etc/OpenCL/vendors")
    if not (Path(vendors).is_file() or any(Path(vendors).glob("*.icd"))):
        return f"no OpenCL driver registered in {vendors}"
    return None


def quantize(x: np.ndarray, dtype, scale, zero) -> np.ndarray:
    """Float input -> the model's input dtype (int8/uint8 with scale and zero point, else a cast)."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu" and scale:
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
    return x.astype(dtype)


def dequantize(y: np.ndarray, scale, zero) -> np.ndarray:
    if y.dtype.kind in "iu" and scale:
        return ((y.astype(np.float32) - zero) * scale).astype(np.float32)
    return y.astype(np.float32)


def open_session(path: Path, runtime: str, threads: int, io: dict | None = None,
                 opencl_runtime: Path | None = None, device: str = "cpu"):
    if runtime == "litert" and device == "gpu":
        return LiteRTGpuSession(path)
    if runtime == "litert":
        return LiteRTSession(path, threads)
    if runtime == "onnxruntime":
        return OnnxSession(path, threads)
    if runtime == "tvm":
        return TvmSession.load(path, threads, io, opencl_runtime)
    raise ValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")


def run_all(session, inputs: np.ndarray, on_step=None, seconds: float | None = None) -> np.ndarray:
    """Run a batch-1 session over the inputs (N, H, W, C); returns (n, classes) float logits.

    With ``seconds``, stops once that much time has passed (after at least one input).
    """
    outputs, began = [], time.perf_counter()
    for i in range(len(inputs)):
        outputs.append(session.run(inputs[i:i + 1])[0])
        if on_step:
            on_step()
        if seconds is not None and time.perf_counter() - began >= seconds:
            break
    return np.stack(outputs)


def runtime_available(runtime: str) -> bool:
    import importlib.util

    modules = {"litert": ("ai_edge_litert", "tflite_runtime"), "onnxruntime": ("onnxruntime",), "tvm": ("tvm",)}
    return any(importlib.util.find_spec(m) is not None for m in modules.get(runtime, ()))
