"""LiteRT's benchmark_model output from a phone, imported into our results: parsed from hand-written logs in the
documented format (tests/data/benchmark_model_*.txt, marked as such), validated, reported and gated."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest

from benchmarks.errors import BenchError
from tests.conftest import ROOT

DATA = ROOT / "tests" / "data"
SCHEMA = json.loads((ROOT / "benchmarks" / "results.schema.json").read_text())
# the sizes benchmark_model prints (bytes / 1e6, 6 significant digits) for the files the logs name
AS_ON_THE_PHONE = {"tflite-int8": ("xception_int8.tflite", 22_184_512), "tflite-fp32": ("xception_fp32.tflite", 83_290_200)}


@pytest.fixture
def phone_build(tiny_build, tmp_path) -> Path:
    """The tiny host build, its TFLite artifacts renamed and sized as the logs' files (the phone ran those)."""
    options, _ = tiny_build("host")
    build = tmp_path / "android-arm64"
    shutil.copytree(options.out_dir / "host", build)
    manifest = json.loads((build / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        if art["kind"] in AS_ON_THE_PHONE:
            art["file"], art["bytes"] = AS_ON_THE_PHONE[art["kind"]]
    (build / "manifest.json").write_text(json.dumps(manifest))
    return build


def test_a_newer_log_gives_median_init_and_peak_memory(phone_build):
    from benchmarks.litert_import import import_log

    results = import_log(phone_build, DATA / "benchmark_model_newer.txt", "Pixel 7 (Tensor G2)")
    jsonschema.validate(results, SCHEMA)
    (r,) = results["results"]
    assert results["where"] == "benchmark_model" and results["device"]["cpu_model"] == "Pixel 7 (Tensor G2)"
    assert (r["file"], r["precision"], r["device"], r["runtime"]) == ("xception_int8.tflite", "int8", "cpu", "litert")
    lat = r["latency_ms"]
    assert (lat["p90"], lat["p99"]) == (None, None) and "median" in lat["summary"] and "no p90/p99" in lat["summary"]
    assert [lat[k] for k in ("n", "mean", "std", "min", "p50", "max")] == pytest.approx(
        [50, 23.3107, 0.612, 22.69, 23.151, 26.114], rel=1e-12)
    assert (r["init_ms"], r["first_ms"], r["peak_rss_mb"]) == pytest.approx((61.204, 41.377, 52.4727), rel=1e-12)
    assert results["device"]["threads"] == 4 and results["budget"]["warmup"] == 21
    assert r["accuracy"] is None and r["verified_runtime"] is False and "sha256" not in r


def test_an_older_log_on_the_gpu_has_no_percentiles_nor_peak(phone_build):
    from benchmarks.litert_import import import_log

    (r,) = import_log(phone_build, DATA / "benchmark_model_older.txt")["results"]
    assert (r["file"], r["device"], r["precision"]) == ("xception_fp32.tflite", "gpu", "fp32")
    assert (r["latency_ms"]["n"], r["latency_ms"]["mean"], r["latency_ms"]["p50"]) == (100, pytest.approx(8.80146), None)
    assert r["peak_rss_mb"] is None and "no p90/p99" in r["latency_ms"]["summary"]


@pytest.mark.parametrize("edit,message", [
    (lambda t: t.replace("xception_int8.tflite", "mobilenet.tflite"),
     r"benchmark_model ran mobilenet\.tflite, which is not a TFLite artifact of .* \(it has .*xception_int8\.tflite"),
    (lambda t: t.replace("22.1845", "22.1901"), r"the phone's xception_int8\.tflite is 22\.1901 MB; the build's is "
                                                r"22\.1845 MB: not the same file"),
    (lambda t: t.replace("Inference timings in us", "Timings"), r"is not benchmark_model output: no 'Inference timings"),
    (lambda t: "\n".join(line for line in t.splitlines() if "count=" not in line), r"no warm-up and timed count= lines"),
])
def test_a_log_that_does_not_fit_is_one_line(phone_build, tmp_path, edit, message):
    from benchmarks.litert_import import import_log

    log = tmp_path / "log.txt"
    log.write_text(edit((DATA / "benchmark_model_newer.txt").read_text()))
    with pytest.raises(BenchError, match=message) as err:
        import_log(phone_build, log)
    assert "\n" not in str(err.value)


def test_the_import_is_reported_and_its_memory_gated_only_with_the_phones_sha256(phone_build, cli):
    manifest = json.loads((phone_build / "manifest.json").read_text())
    sha = next(a["sha256"] for a in manifest["artifacts"] if a["kind"] == "tflite-int8")
    args = ("import", "--target", phone_build.name, "--out", phone_build.parent, "--log",
            DATA / "benchmark_model_newer.txt")
    code, out, err = cli(*args, "--sha256", "0" * 64)
    assert code == 2 and "is not the manifest's sha256 of xception_int8.tflite" in err
    code, out, err = cli(*args, "--sha256", sha)
    assert code == 0, err
    assert re.search(r"xception_int8\.tflite\s+litert\s+23\.15\s+-\s+50\s+61\s+52\s+-\s+-\s+0", out), out
    from benchmarks.gate import memory_source
    from benchmarks.report import render

    measured = memory_source(phone_build, manifest)
    assert measured["xception_int8.tflite"][0] == 52.4727 and "(benchmark_model)" in measured["xception_int8.tflite"][1]
    md = render(phone_build)["markdown"].read_text()
    assert "imported from LiteRT's benchmark_model output (benchmark_model_newer.txt)" in md
    assert "| xception_int8.tflite | litert | int8 | 23.15 | - |" in md and "not measured (random inputs)" in md
