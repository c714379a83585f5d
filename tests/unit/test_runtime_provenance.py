"""Results say which TFLite package ran an artifact, and whether it is the one `make verify` proves."""
from benchmarks.run import runtime_provenance
from benchmarks.text import results_summary


def test_tflite_runtime_is_flagged_and_litert_is_not():
    assert runtime_provenance("ai-edge-litert") == {"verified_runtime": True}
    assert runtime_provenance("onnxruntime") == {"verified_runtime": True}
    flagged = runtime_provenance("tflite-runtime")
    assert flagged["verified_runtime"] is False and "not the runtime `make verify` proves" in flagged["runtime_note"]


def test_the_summary_says_so():
    result = {"file": "m_int8.tflite", "runtime": "litert", "latency_ms": {"p50": 1.0, "p90": 1.0, "n": 3},
              "init_ms": 1.0, "peak_rss_mb": 10.0, "accuracy": {"agreement_top1": 1.0, "top1": None, "n": 4},
              **runtime_provenance("tflite-runtime")}
    text = results_summary({"results": [result], "skipped": [], "failed": [],
                            "device": {"throttled": False}}, "r.json")
    assert "NOTE m_int8.tflite: tflite-runtime, not ai-edge-litert" in text
