"""int8 recovery: keep the most damaging ops float, one closure at a time, until the gate's budget is met or the
cap is reached (docs/recovery.md). ``Budget`` judges a model's outputs as ``make gate`` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from pipeline.layer_damage import Op, closures
from pipeline.quantization import compare, load_interpreter, outputs, quantize, set_input


class Budget:
    """The gate's accuracy budget for an int8 model, judged on the eval images as ``make gate`` judges it: top-1
    agreement with the float model, and where labels are known the top-1 drop in points."""

    def __init__(self, min_agreement: float, max_drop_points: float, float_logits: np.ndarray,
                 labels: np.ndarray | None):
        self.min_agreement, self.max_drop = min_agreement, max_drop_points
        self.float_logits, self.labels = float_logits, labels

    def judge(self, logits: np.ndarray) -> dict:
        result = compare(self.float_logits, logits)
        why = [f"top-1 agreement {result['agreement_top1']:.1%} (budget {self.min_agreement:.1%})"]
        met = result["agreement_top1"] >= self.min_agreement
        if self.labels is not None:
            drop = 100 * float(np.mean(self.float_logits.argmax(-1) == self.labels)
                               - np.mean(logits.argmax(-1) == self.labels))
            result["top1_drop_points"] = round(drop, 2)
            why.append(f"top-1 drop {drop:.2f} points (budget {self.max_drop:g})")
            met = met and round(drop, 9) <= self.max_drop
        return result | {"met": bool(met), "why": ", ".join(why)}


@dataclass
class Recovery:
    float_ops: list[Op]
    before: dict
    after: dict          # Budget.judge of the model below
    steps: list[dict]
    capped: bool
    model: bytes

    @property
    def met(self) -> bool:
        return self.after["met"]


def recover(calibrated_model: bytes, int8_model: bytes, budget: Budget, images: np.ndarray, ops: list[Op],
            ranked: list[str], cap: int, log: Callable[[str], None] = lambda m: None) -> Recovery:
    """Keep ops float, most damaging first, until ``budget`` is met on ``images`` or more than ``cap`` ops
    would be float. Each step adds the next op with the better of its two ``closures`` (measured)."""
    by_tensor = {op.tensor: op for op in ops}
    before = budget.judge(outputs(int8_model, images))
    floating: list[Op] = []
    steps, model, now = [], int8_model, before
    for name in ranked:
        if now["met"]:
            break
        groups = [floating + [o for o in g if o not in floating] for g in closures(by_tensor[name], ops)]
        fitting = [g for g in groups if len(g) <= cap and g != floating]
        if not fitting:
            if any(len(g) > cap for g in groups):
                return Recovery(floating, before, now, steps, True, model)
            continue
        tried = []
        for grown in fitting:
            candidate = quantize(calibrated_model, [o.tensor for o in grown])
            tried.append((budget.judge(outputs(candidate, images)), len(grown), grown, candidate))
        now, _, floating, model = max(tried, key=lambda t: (t[0]["met"], t[0]["agreement_top1"],
                                                            -t[0]["relative_mse"], -t[1]))
        steps.append({"float": [o.layer for o in floating], **now})
        log(f"  {len(floating)} float layers ({', '.join(o.layer for o in floating)}): {now['why']}")
    return Recovery(floating, before, now, steps, False, model)


def median_ms(model: bytes, x: np.ndarray, runs: int = 15) -> float:
    """Median latency of one inference here (LiteRT, 2 threads): a same-run comparison, not a board figure."""
    import time

    interpreter = load_interpreter(model)
    set_input(interpreter, x)
    interpreter.invoke()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - started) * 1000)
    return round(float(np.median(times)), 3)
