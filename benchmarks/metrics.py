"""Accuracy of an artifact's logits against labels and the float reference (numpy only)."""
from __future__ import annotations

import numpy as np


def accuracy(logits: np.ndarray, reference_logits: np.ndarray, labels: np.ndarray | None = None) -> dict:
    """top-1 / top-5 against labels (when known), top-1 agreement and mean |logit delta| against float."""
    logits = np.asarray(logits, dtype=np.float32)
    reference_logits = np.asarray(reference_logits, dtype=np.float32)
    if logits.shape != reference_logits.shape:
        raise ValueError(f"logits shape {logits.shape} differs from the float reference's {reference_logits.shape}")
    predicted = np.argmax(logits, axis=1)
    result = {
        "n": int(len(logits)),
        "agreement_top1": float(np.mean(predicted == np.argmax(reference_logits, axis=1))),
        "mean_abs_logit_delta": float(np.mean(np.abs(logits - reference_logits))),
        "top1": None,
        "top5": None,
        "float_top1": None,
    }
    if labels is not None and len(labels):
        labels = np.asarray(labels)
        result["top1"] = float(np.mean(predicted == labels))
        result["float_top1"] = float(np.mean(np.argmax(reference_logits, axis=1) == labels))
        k = min(5, logits.shape[1])
        top_k = np.argsort(-logits, axis=1)[:, :k]
        result["top5"] = float(np.mean(np.any(top_k == labels[:, None], axis=1)))
        reference = np.argmax(reference_logits, axis=1)
        present = np.unique(labels)
        result["per_class"] = {"class": present.tolist(),
                               "n": [int(np.sum(labels == c)) for c in present],
                               "top1": [float(np.mean(predicted[labels == c] == c)) for c in present],
                               "float_top1": [float(np.mean(reference[labels == c] == c)) for c in present]}
    result["confusions"] = confusions(predicted, np.argmax(reference_logits, axis=1))
    return result


def confusions(predicted: np.ndarray, reference: np.ndarray, top: int = 5) -> list[dict]:
    """Where the artifact answers otherwise than the float model: the most frequent (float class, artifact class)
    pairs, most frequent first."""
    pairs: dict[tuple[int, int], int] = {}
    for f, a in zip(reference.tolist(), predicted.tolist()):
        if f != a:
            pairs[(f, a)] = pairs.get((f, a), 0) + 1
    ranked = sorted(pairs.items(), key=lambda item: (-item[1], item[0]))[:top]
    return [{"float": f, "artifact": a, "n": n} for (f, a), n in ranked]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def latency_stats(samples_ms) -> dict:
    """n, mean, std, min, p50, p90, p99, max of latency samples in milliseconds."""
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {"n": int(a.size), "mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()),
            "p50": float(p50), "p90": float(p90), "p99": float(p99), "max": float(a.max())}
