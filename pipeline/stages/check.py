"""check: run an artifact on the eval set right after it is made, against the float reference.

Output: accuracy.json with top-1 agreement with float, top-1/top-5 when labels are known, and the
mean absolute logit difference. Uses the same runtime code as the device runner.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from pipeline.errors import StageError
from pipeline.progress import Progress

NAME = "check"
VERSION = 1
TOOLS = ("ai-edge-litert", "onnxruntime", "numpy")


@dataclass(frozen=True)
class Config:
    kind: str
    runtime: str


def run(inputs: Mapping[str, Path], config: Config, out: Path, progress: Progress) -> None:
    from benchmarks.metrics import accuracy
    from benchmarks.runtimes import open_session, run_all

    data = np.load(inputs["eval"])
    session = open_session(inputs["artifact"], config.runtime, threads=os.cpu_count() or 1)
    with progress.bar(f"checking {config.kind} on the eval set", len(data["inputs"])) as bar:
        logits = run_all(session, data["inputs"], on_step=bar.update)
    if not np.all(np.isfinite(logits)):
        raise StageError(f"{inputs['artifact'].name} produced non-finite outputs (NaN or inf) on the eval "
                         f"set; the artifact is broken")
    labels = data["labels"] if "labels" in data.files else None
    result = accuracy(logits, data["logits"], labels)
    (out / "accuracy.json").write_text(json.dumps(result, indent=1))
