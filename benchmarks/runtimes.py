"""Open an artifact with its runtime and run it on float inputs, returning float logits.

Runtimes are imported only when an artifact needs them: LiteRT (``ai_edge_litert``, or
``tflite_runtime`` on boards that have only that), ONNX Runtime, and (next) the TVM runtime.
Quantized inputs/outputs are (de)quantized here with the scale and zero point the model carries.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

RUNTIMES = ("litert", "onnxruntime")


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
        dtype = self.input["dtype"]
        if dtype in (np.int8, np.uint8):
            scale, zero = self.input["quantization"]
            info = np.iinfo(dtype)
            x = np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)
        else:
            x = x.astype(dtype)
        self.interpreter.set_tensor(self.input["index"], x)
        self.interpreter.invoke()
        y = self.interpreter.get_tensor(self.output["index"])
        if self.output["dtype"] in (np.int8, np.uint8):
            scale, zero = self.output["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return y.astype(np.float32)


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


def open_session(path: Path, runtime: str, threads: int):
    if runtime == "litert":
        return LiteRTSession(path, threads)
    if runtime == "onnxruntime":
        return OnnxSession(path, threads)
    raise ValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")


def run_all(session, inputs: np.ndarray, on_step=None) -> np.ndarray:
    """Run a batch-1 session over every input (N, H, W, C); returns (N, classes) float logits."""
    outputs = []
    for i in range(len(inputs)):
        outputs.append(session.run(inputs[i:i + 1])[0])
        if on_step:
            on_step()
    return np.stack(outputs)
