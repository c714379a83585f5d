"""Benchmark harness: runner on tiny artifacts, schema, tampering, report, ssh (real sshd) and TVM RPC."""
from __future__ import annotations

import json
import re
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from benchmarks.errors import BenchError
from benchmarks.run import Budget, run_build

from tests.conftest import ROOT, start_sshd

SCHEMA = json.loads((ROOT / "benchmarks" / "results.schema.json").read_text())
FAST = Budget(warmup=1, min_runs=5, min_seconds=0.05, max_seconds=2.0, accuracy_seconds=10.0)


@pytest.fixture(scope="module")
def host_build(tiny_build) -> Path:
    options, _ = tiny_build("host")
    return options.out_dir / "host"


@pytest.fixture(scope="module")
def local_results(host_build):
    return run_build(host_build, threads=1, budget=FAST, eval_n=24, log=lambda m: None)


def test_runner_measures_every_artifact(local_results, host_build):
    jsonschema.validate(local_results, SCHEMA)
    manifest = json.loads((host_build / "manifest.json").read_text())
    assert {r["file"] for r in local_results["results"]} == {a["file"] for a in manifest["artifacts"]}
    for r in local_results["results"]:
        lat = r["latency_ms"]
        assert lat["n"] >= FAST.min_runs and lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert r["init_ms"] > 0 and r["first_ms"] > 0 and r["peak_rss_mb"] > 10
        assert r["accuracy"]["agreement_top1"] >= 0.9 and r["accuracy"]["n"] == 24
    assert local_results["device"]["threads"] == 1 and local_results["device"]["cpu_model"]


def test_memory_is_per_artifact(local_results):
    rss = {r["runtime"]: r["peak_rss_mb"] for r in local_results["results"]}
    assert rss["tvm"] != rss["litert"]            # separate processes, separate peaks


def test_tvm_runs_on_its_runtime_library_alone(local_results):
    """A board needs libtvm_runtime.so only: the runner never maps TVM's compiler (259 MB with LLVM inside)."""
    tvm = [r for r in local_results["results"] if r["runtime"] == "tvm"]
    assert tvm and all(r["provider"].endswith("(runtime only)") for r in tvm), [r["provider"] for r in tvm]


def test_runner_needs_no_tensorflow_nor_pipeline(host_build, tmp_path):
    """build/<t> plus benchmarks/ alone, with tensorflow/keras made unimportable, is enough."""
    shutil.copytree(host_build, tmp_path / "host")
    shutil.copytree(ROOT / "benchmarks", tmp_path / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    blocker = tmp_path / "blocked"
    for name in ("tensorflow", "keras", "pipeline"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('the runner imported {name}')\n")
    env = os.environ | {"PYTHONPATH": str(blocker)}
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", "host", "--threads", "1", "--min-runs", "3",
                           "--min-seconds", "0", "--max-seconds", "1", "--eval-n", "4"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(next((tmp_path / "host" / "bench").glob("*.json")).read_text())
    jsonschema.validate(result, SCHEMA)
    assert len(result["results"]) == 7 and not result["failed"]


def test_tampered_artifact_is_refused(host_build, tmp_path):
    copy = tmp_path / "host"
    shutil.copytree(host_build, copy)
    target = copy / "tiny_int8.tflite"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    done = subprocess.run([sys.executable, "-m", "benchmarks.run", str(copy)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refusing tiny_int8.tflite: its sha256" in errors[0]
    assert not (copy / "bench").exists()


def test_missing_manifest_is_one_line(tmp_path):
    with pytest.raises(BenchError, match=r"has no manifest\.json; give a folder made by `make compile`"):
        run_build(tmp_path)


def test_report_renders_table_plots_and_html(local_results, host_build, tmp_path):
    from benchmarks.report import render
    from benchmarks.run import write_results

    build = tmp_path / "host"
    shutil.copytree(host_build, build)
    write_results(local_results, build / "bench" / "r1.json")
    out = render(build)
    for name in ("latency", "accuracy_latency", "size"):
        png = out[name].read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    md = out["markdown"].read_text()
    assert "| tiny_int8.tflite | litert | int8 |" in md and "speed-up vs fp32" in md
    ram = json.loads((build / "manifest.json").read_text())["config"]["target"]["ram_mb"]
    assert f"## Memory on the board (host: {ram} MB RAM)" in md          # host: this machine's MemTotal
    rss = next(r["peak_rss_mb"] for r in local_results["results"] if r["file"] == "tiny_int8.tflite")
    assert re.search(rf"\| tiny_int8\.tflite \| {rss:.0f} \| {rss / ram * 100:.1f}% \| {ram - rss:.0f} MB \|", md), md
    page = out["html"].read_text()
    assert page.count("data:image/png;base64,") == 3 and "tiny_int8.so" in page


def test_report_without_results_is_one_line(host_build, tmp_path):
    from benchmarks.report import render

    shutil.copytree(host_build, tmp_path / "host", ignore=shutil.ignore_patterns("bench"))
    with pytest.raises(BenchError, match=r"no benchmark results in .*run `make bench` first"):
        render(tmp_path / "host")


# -- ssh -------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    yield from start_sshd(tmp_path_factory.mktemp("sshd"))


def test_bench_over_ssh(sshd, host_build):
    from benchmarks.ssh import run_over_ssh

    import getpass

    results = run_over_ssh(host_build, f"{getpass.getuser()}@127.0.0.1",
                           ["--threads", "1", "--min-runs", "3", "--min-seconds", "0", "--max-seconds", "1",
                            "--eval-n", "4", "--only", "tiny_int8.tflite", "--only", "tiny_fp32.onnx"],
                           port=sshd["port"], options=sshd["options"], remote_python=sys.executable, log=lambda m: None)
    jsonschema.validate(results, SCHEMA)
    assert results["where"] == "ssh" and results["remote"].endswith("@127.0.0.1")
    assert {r["file"] for r in results["results"]} == {"tiny_int8.tflite", "tiny_fp32.onnx"}
    # a Python the user named, not the environment make provision installs: not the verified runtimes, and said so
    assert results["runtime_env"] == {"provisioned": None, "verified": False, "python": sys.executable,
                                      "why": f"run by REMOTE_PYTHON={sys.executable}, not the environment `make "
                                             f"provision` installs"}
    assert all(not r["verified_runtime"] and "REMOTE_PYTHON" in r["runtime_note"] for r in results["results"])
    assert not list(Path("/tmp").glob("xception-edge.*/host/manifest.json"))      # remote folder removed


@pytest.mark.parametrize("dest", ["-oProxyCommand=touch /tmp/x", "user@host;rm -rf /", "a b"])
def test_ssh_destination_is_validated(dest):
    from benchmarks.ssh import check_destination

    with pytest.raises(BenchError, match=r"is not an ssh destination; accepted: host or user@host"):
        check_destination(dest)


# -- TVM RPC (the tracker and server fixture is in tests/conftest.py) ------------------------------
def test_bench_tvm_over_rpc(rpc_tracker, host_build):
    from benchmarks.rpc import run_over_rpc

    results = run_over_rpc(host_build, rpc_tracker, "testboard", FAST, eval_n=4, log=lambda m: None)
    jsonschema.validate(results, SCHEMA)
    assert results["where"] == "rpc"
    assert {r["file"] for r in results["results"]} == {"tiny_fp32.so", "tiny_int8.so"}
    for r in results["results"]:
        assert r["latency_ms"]["n"] >= FAST.min_runs and r["accuracy"]["agreement_top1"] >= 0.75
        assert r["peak_rss_mb"] is None


def test_rpc_bad_tracker_address():
    from benchmarks.rpc import parse_tracker

    with pytest.raises(BenchError, match=r"RPC='nohost' is not host:port"):
        parse_tracker("nohost")


def test_a_partial_copy_runs_what_is_there(host_build, tmp_path):
    """One artifact copied to a board with the manifest and the eval set: it is measured, the rest are listed
    as skipped (no --only needed); a folder with none of them is one clear error."""
    board = tmp_path / "host"
    board.mkdir()
    shutil.copy(host_build / "manifest.json", board)
    shutil.copytree(host_build / "eval", board / "eval")
    shutil.copy(host_build / "tiny_int8.tflite", board)
    results = run_build(board, threads=1, budget=FAST, eval_n=4, log=lambda m: None)
    jsonschema.validate(results, SCHEMA)
    assert [r["file"] for r in results["results"]] == ["tiny_int8.tflite"]
    manifest = json.loads((board / "manifest.json").read_text())
    assert {s["file"] for s in results["skipped"]} == {a["file"] for a in manifest["artifacts"]} - {"tiny_int8.tflite"}
    (board / "tiny_int8.tflite").unlink()
    with pytest.raises(BenchError, match="none of the manifest's artifacts is in"):
        run_build(board, threads=1, budget=FAST, log=lambda m: None)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_bench_runs_on_the_targets_cluster(host_build, tmp_path):
    """A board file's bench cluster (Linux CPU numbers) pins the measurement; CPUs this machine lacks are
    named in the log and nothing is pinned."""
    board = tmp_path / "host"
    shutil.copytree(host_build, board, ignore=shutil.ignore_patterns("bench", "report", "gate"))
    manifest = json.loads((board / "manifest.json").read_text())
    manifest["config"]["target"]["cpu"]["cpus"] = [0]
    manifest["config"]["target"]["bench"]["cluster"] = "big"
    (board / "manifest.json").write_text(json.dumps(manifest))
    logged = []
    results = run_build(board, threads=1, budget=FAST, eval_n=4, only=["tiny_int8.tflite"], log=logged.append)
    jsonschema.validate(results, SCHEMA)
    assert results["device"]["pinned_cpus"] == [0] and results["results"][0]["cpus_allowed"] == [0]
    assert any("pinned to the big cluster: CPUs [0]" in line for line in logged)
    assert os.sched_getaffinity(0) != {0} or os.cpu_count() == 1          # the runner gave its own CPUs back
    manifest["config"]["target"]["cpu"]["cpus"] = [4096]
    (board / "manifest.json").write_text(json.dumps(manifest))
    logged.clear()
    results = run_build(board, threads=1, budget=FAST, eval_n=4, only=["tiny_int8.tflite"], log=logged.append)
    assert results["device"]["pinned_cpus"] is None and len(results["results"][0]["cpus_allowed"]) >= 1
    assert any("not pinned to the target's bench cluster (CPUs [4096])" in line for line in logged)
