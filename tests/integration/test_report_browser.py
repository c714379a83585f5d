"""The HTML report in a real browser: Debian's Chromium, headless, opens build/<t>/report/report.html, every image
decodes, and a screenshot is kept beside the report (report/report-screenshot.png). The report comes from a
benchmark run of the trained digits net with a labelled eval set (so the per-class figure is there too)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

pytestmark = pytest.mark.system          # a browser install and start: `make test-system`


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip("Chromium is not installed and this is not a root Debian machine that could install it")
    done = subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "chromium"],
                          capture_output=True, text=True, env=os.environ | {"DEBIAN_FRONTEND": "noninteractive"})
    if done.returncode or not shutil.which("chromium"):
        pytest.skip(f"could not install Chromium: {done.stderr.strip()[-300:]}")
    return shutil.which("chromium")


def test_the_html_report_renders_in_chromium_with_every_image(digitnet, stage_cache, tmp_path):
    from benchmarks.report import render
    from benchmarks.run import Budget, run_build, write_results
    from pipeline.compiler import CompileOptions, compile_target
    from tests.conftest import write_target

    browser = _chromium()
    model, eval_dir = digitnet
    targets = write_target(tmp_path / "targets", "web", ["tflite-fp32", "tflite-int8", "onnx-fp32", "onnx-int8"])
    compile_target(CompileOptions(target="web", weights=str(model), eval_dir=eval_dir, calib_n=50,
                                  out_dir=tmp_path / "build", cache_dir=stage_cache, targets_dir=targets))
    build = tmp_path / "build" / "web"
    budget = Budget(warmup=1, min_runs=3, min_seconds=0.0, max_seconds=1.0, accuracy_seconds=10.0)
    write_results(run_build(build, threads=1, budget=budget, log=lambda m: None), build / "bench" / "run.json")
    out = render(build)
    assert {"latency", "accuracy_latency", "size", "per_class"} <= set(out)
    page = build / "report" / "report.html"
    common = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000"]
    dom = subprocess.run([*common, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'data-images="loaded (\d+) of (\d+)"', dom.stdout)
    assert found, dom.stderr[-2000:]
    loaded, total = map(int, found.groups())
    assert total == len([k for k in out if k not in ("markdown", "html")]) and loaded == total
    shot = build / "report" / "report-screenshot.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,2400", page.as_uri()], capture_output=True,
                   timeout=120)
    assert shot.stat().st_size > 20_000 and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
