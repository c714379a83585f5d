import pytest

from benchmarks.report import markdown, rows
from pipeline.tables import peer_table


def result(file, runtime, precision, p50, top1=None, agreement=1.0, rss=100.0):
    return {"file": file, "runtime": runtime, "precision": precision, "device": "cpu", "bytes": 2_000_000,
            "latency_ms": {"n": 10, "mean": p50, "std": 0.0, "min": p50, "p50": p50, "p90": p50 * 1.1,
                           "p99": p50, "max": p50},
            "peak_rss_mb": rss, "accuracy": {"n": 10, "top1": top1, "top5": None, "agreement_top1": agreement,
                                             "mean_abs_logit_delta": 0.1}}


RESULTS = {
    "target": "host", "run_id": "r1", "where": "local", "created": "2026-11-22T17:00:00+00:00",
    "model": {"input_shape": [1, 299, 299, 3]},
    "device": {"cpu_model": "Test CPU", "cores": 2, "threads": 2, "governor": None, "throttled": False,
               "platform": "Linux-test"},
    "eval": {"n": 10, "float_top1": 0.9},
    "results": [result("a_fp32.tflite", "litert", "fp32", 60.0, 0.9), result("a_int8.tflite", "litert", "int8", 30.0, 0.88),
                result("a_fp32.onnx", "onnxruntime", "fp32", 120.0, 0.9), result("a_int8.onnx", "onnxruntime", "int8", 100.0, 0.9),
                result("a_fp32.so", "tvm", "fp32", 600.0, 0.9, rss=None)],
}


def test_speedup_is_over_fp32_of_the_same_runtime():
    by = {r["file"]: r for r in rows(RESULTS)}
    assert by["a_int8.tflite"]["speedup"] == pytest.approx(2.0)
    assert by["a_int8.onnx"]["speedup"] == pytest.approx(1.2)
    assert by["a_fp32.so"]["speedup"] == pytest.approx(1.0)
    assert by["a_int8.tflite"]["change"] == "-2.00 pt top-1"


def test_accuracy_change_never_mixes_image_subsets():
    subset = dict(RESULTS, results=[result("a_int8.so", "tvm", "int8", 600.0, 0.9)])
    subset["results"][0]["accuracy"]["n"] = 4               # measured on 4 of 10 images, no float figure
    assert rows(subset)[0]["change"].endswith("pt agreement")
    subset["results"][0]["accuracy"]["float_top1"] = 0.95   # the runner's float top-1 on those 4 images
    assert rows(subset)[0]["change"] == "-5.00 pt top-1"


def test_markdown_row():
    md = markdown(RESULTS)
    assert "| a_int8.tflite | litert | int8 | 30.00 | 33.00 | 2.00x | 100 | 2.0 | -2.00 pt top-1 |" in md
    assert "| a_fp32.so | tvm | fp32 | 600.00 | 660.00 | 1.00x | - | 2.0 | +0.00 pt top-1 |" in md


def test_peer_table_ratios_against_litert_same_precision():
    untuned = dict(RESULTS, results=[result("a_fp32.so", "tvm", "fp32", 6000.0, rss=None),
                                     result("a_int8.so", "tvm", "int8", 7500.0, rss=None)])
    tuned = dict(RESULTS, results=[result("a_fp32.so", "tvm", "fp32", 45.0, rss=None)],
                 failed=[{"file": "a_int8.so", "reason": "boom"}])
    table, _ = peer_table({"peers": RESULTS, "peers-untuned": untuned, "peers-tuned": tuned})
    assert "one run on 2026-11-22: Test CPU (2 cores, int8 ISA: " in table
    assert "| onnxruntime | int8 | 100.0 | 110.0 | 10 | 1.20x | 3.33x | 100 |" in table
    assert "| tvm (default schedules) | fp32 | 600.0 | 660.0 | 10 |  | 10.00x | - |" in table
    assert "| tvm (untuned) | int8 | 7500.0 | 8250.0 | 10 | 0.80x | 250.00x | - |" in table
    assert "| tvm (tuned) | fp32 | 45.0 | 49.5 | 10 |  | 0.75x | - |" in table
    assert "| litert | int8 | 30.0 | 33.0 | 10 | 2.00x | 1.00x | 100 |" in table
    assert "FAILED peers-tuned/a_int8.so: boom" in table
    rows_in_order = [line.split(" |")[0] for line in table.splitlines() if line.startswith("| tvm")]
    assert rows_in_order == ["| tvm (untuned)"] * 2 + ["| tvm (default schedules)"] + ["| tvm (tuned)"]


def test_peer_table_states_the_goals_from_the_same_run_and_as_data():
    tuned = dict(RESULTS, results=[result("a_fp32.so", "tvm", "fp32", 90.0, rss=250.0),
                                   result("a_int8.so", "tvm", "int8", 45.0, rss=105.0)])
    table, summary = peer_table({"peers": RESULTS, "peers-tuned": tuned})
    # best peers: LiteRT for both (fp32 60 against ONNX Runtime's 120; int8 30 against 100)
    assert "- best peer fp32: litert (60.0 ms)" in table and "- best peer int8: litert (30.0 ms)" in table
    assert "- TVM int8, tuned / best peer int8: 1.50x (misses the goal <= 1.0x)" in table
    assert "- TVM fp32, tuned / best peer fp32: 1.50x (misses the goal <= 1.0x)" in table
    assert "- TVM peak RSS, tuned / LiteRT's, fp32: 2.50x (misses the goal <= 1.1x)" in table        # 250 / 100
    assert "- TVM peak RSS, tuned / LiteRT's, int8: 1.05x (meets the goal <= 1.1x)" in table
    assert "- TVM int8 (tuned) is 2.00x faster than TVM fp32 (tuned) (meets the goal >= 1.5x)" in table
    int8 = summary["precisions"]["int8"]
    assert int8["best_peer"] == "litert" and int8["tvm"]["tuned"]["vs_best_peer"] == 1.5
    assert "default schedules" not in int8["tvm"]                                # the "peers" run has no int8 .so
    assert summary["precisions"]["fp32"]["tvm"]["default schedules"]["vs_best_peer"] == 10.0
    met = {g["goal"]: g["met"] for g in summary["goals"]}
    assert met["TVM int8, tuned / best peer int8"] is False and met["TVM peak RSS, tuned / LiteRT's, int8"] is True
    assert met["TVM fp32, default schedules / best peer fp32"] is False        # 600 / 60


def test_accuracy_against_latency_is_readable_with_many_artifacts():
    """Seven artifacts close together: each named once in a legend (no labels printed over each other at the
    points), the y axis ending at 100%."""
    import matplotlib

    matplotlib.use("Agg")
    from benchmarks.report import accuracy_latency_figure

    table = [{"file": f"xception_{i}.tflite", "runtime": "litert", "p50": 10 + i * 0.1, "top1": 0.99 - i * 0.001,
              "agreement": 1.0} for i in range(7)]
    ax = accuracy_latency_figure(table).axes[0]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"xception_{i}.tflite (litert)" for i in range(7)]
    assert not ax.texts and ax.get_ylim()[1] == 100.0 and ax.get_ylim()[0] >= 0


def test_the_estimate_is_its_own_labelled_section_and_a_report_on_its_own(tmp_path):
    import json

    from benchmarks.report import estimate_section, render

    build = tmp_path / "rpi4"
    (build / "estimate").mkdir(parents=True)
    estimate = {"bounds_ms": [10.0, 40.0], "ms_1_thread": 20.0, "range_ms_1_thread": [15.0, 30.0], "ms": 8.0,
                "core": "cortex-a72"}
    (build / "estimate" / "estimate.json").write_text(json.dumps({
        "kind": "instruction counts and latency estimate", "core": "cortex-a72",
        "estimate": {"source": "a guide", "ghz": 1.8, "threads": 4,
                     "calibration": {"measured": "here", "error": [-0.2, 0.1]}},
        "counts": [{"file": "m_fp32.so", "instructions": 5e8, "estimate": estimate}]}))
    section = estimate_section(build)
    assert section.startswith("\n## ESTIMATE, not measured: cortex-a72")
    assert "| m_fp32.so | 500.0 | 10.0-40.0 | 20.0 (15.0-30.0) | 8.0 |" in section and "-20% to +10%" in section
    out = render(build)                   # no bench results yet (no board): the estimate alone, said so
    text = out["markdown"].read_text()
    assert text.startswith("# No measured latency yet") and section in text
    assert estimate_section(tmp_path) == ""
