"""Accuracy-regression gates: ``python -m benchmarks.gate build/<target>``.

Thresholds are data (benchmarks/gates.toml); baselines are committed per model and target
(benchmarks/baselines/<model>/<target>.json) and written only by ``make baseline MSG="why"``.
Accuracy comes from the newest benchmark run whose artifacts match the manifest, else from the
compile-time check; every check says which. Exit codes: 0 all pass, 1 a gate failed, 2 bad input, 6 no accuracy
was judged (every accuracy check skipped: too few images, no labels, figures from a CPU unlike the target's).
Writes build/<target>/gate/junit.xml and gate.json.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.files import read_json, results_newest_first, write_text_atomic
from benchmarks.errors import GATE_CHECKED_NOTHING, GATE_FAILED, BenchError, PipelineError, fail
from benchmarks.manifest import fp32_twin, load_manifest, model_gates_key
from benchmarks.gate_report import fmt, junit, ladder_summary, table as report_table
from benchmarks.gate_thresholds import GATES_FILE, Thresholds, load_thresholds

HERE = Path(__file__).resolve().parent
BASELINES_DIR = HERE / "baselines"
BASELINE_SCHEMA = HERE / "baseline.schema.json"
# the checks that judge accuracy; a gate where every one of them was skipped judged nothing, and says so
# (TVM against LiteRT is consistency, not accuracy against float: it does not count)
ACCURACY_METRICS = ("agreement_top1", "top1_drop_points", "relative_accuracy", "baseline_top1_drop",
                    "baseline_agreement_top1", "accuracy")
EXIT_CODES = {"pass": 0, "fail": GATE_FAILED, "checked nothing": GATE_CHECKED_NOTHING}
VERDICTS = {"pass": "PASS", "fail": "FAIL", "checked nothing": "CHECKED NOTHING"}


@dataclass
class Check:
    artifact: str
    metric: str
    value: float | None
    threshold: float | None
    op: str                 # ">=", "<=", "<"
    status: str             # pass | fail | skip
    detail: str = ""
    source: str = ""

    def message(self) -> str:
        if self.status == "skip":
            return f"{self.artifact}: {self.metric} not checked: {self.detail}"
        if self.value is None:
            return f"{self.artifact}: {self.metric} {'ok' if self.status == 'pass' else 'FAILED'}: {self.detail}"
        verdict = "ok" if self.status == "pass" else "FAILED"
        return (f"{self.artifact}: {self.metric} = {fmt(self.value)} (threshold {self.op} {fmt(self.threshold)}) "
                f"{verdict}{'; ' + self.detail if self.detail else ''} [{self.source}]")


def _compare(artifact, metric, value, op, threshold, source, detail="") -> Check:
    ok = {">=": value >= threshold, "<=": value <= threshold, "<": value < threshold}[op]
    return Check(artifact, metric, value, threshold, op, "pass" if ok else "fail", detail, source)


def accuracy_source(build_dir: Path, manifest: dict, runs: list | None = None) -> tuple[dict, dict, str]:
    """{file: accuracy}, {file: bench result} and a description of where the figures came from (``runs``: the
    build's results, newest first, when the caller has read them already)."""
    shas = {a["file"]: a["sha256"] for a in manifest["artifacts"]}
    for results, _ in runs if runs is not None else results_newest_first(build_dir):
        if results["where"] == "benchmark_model":      # imported: random inputs, another LiteRT build
            continue
        usable = {r["file"]: r for r in results["results"] if shas.get(r["file"]) == r.get("sha256")}
        if usable:
            acc = {f: r["accuracy"] for f, r in usable.items()}
            return acc, usable, f"benchmark run {results['run_id']}"
    acc = {a["file"]: a["accuracy"] for a in manifest["artifacts"] if a.get("accuracy")}
    return acc, {}, "compile-time check (no benchmark run of these artifacts)"


def baseline_path(baselines: Path, manifest: dict) -> Path:
    return baselines / model_gates_key(manifest) / f"{manifest['target']}.json"


def evaluate(build_dir: Path, gates: Path = GATES_FILE, baselines: Path = BASELINES_DIR) -> dict:
    manifest = load_manifest(build_dir)
    model, target = model_gates_key(manifest), manifest["target"]
    t = load_thresholds(gates, model, target)
    base_file = baseline_path(baselines, manifest)
    if not base_file.is_file():
        raise BenchError(f"no baseline for model {model} on target {target} ({base_file}); create one with "
                         f"`{baseline_command(build_dir, baselines)}` and commit it")
    baseline = read_json(base_file, "baseline", BASELINE_SCHEMA)
    runs = results_newest_first(build_dir)              # read and checked once, for accuracy and memory
    acc, bench, acc_source = accuracy_source(build_dir, manifest, runs)
    checks: list[Check] = []
    arts = manifest["artifacts"]
    for art in (a for a in arts if a["precision"] == "int8"):
        name, a = art["file"], acc.get(art["file"])
        src = acc_source if name in bench or not bench else "compile-time check"
        where = _measured_on(a, bench.get(name))
        if where:
            src += f" on {where['cpu_model']} ({where['machine']}, int8 {where['int8_isa']})"
        if a is None:
            checks.append(Check(name, "accuracy", None, None, "", "skip", art.get("accuracy_note", "not measured"), src))
        elif where.get("computes_as_target") is False:
            checks.append(Check(name, "accuracy", None, None, "", "skip",
                                f"measured on a CPU that does not compute what {target} computes: {where['why']}; "
                                f"run the gate on figures measured on the board (make bench DEVICE=...)", src))
        elif a["n"] < t.min_eval_images:
            checks.append(Check(name, "accuracy", None, None, "", "skip",
                                f"measured on {a['n']} images, fewer than min_eval_images={t.min_eval_images}", src))
        else:
            checks.append(_compare(name, "agreement_top1", a["agreement_top1"], ">=", t.min_agreement_top1, src))
            if a.get("top1") is not None and a.get("float_top1"):
                drop = (a["float_top1"] - a["top1"]) * 100
                checks.append(_compare(name, "top1_drop_points", drop, "<=", t.max_top1_drop_points, src,
                                       f"float {a['float_top1'] * 100:.2f}% -> int8 {a['top1'] * 100:.2f}%"))
                checks.append(_compare(name, "relative_accuracy", a["top1"] / a["float_top1"], ">=",
                                       t.min_relative_accuracy, src))
            else:
                checks.append(Check(name, "top1_drop_points", None, None, "", "skip",
                                    "no labels for the eval set (agreement with float is gated instead)", src))
            checks.append(_baseline_check(name, a, baseline, t, src, baseline_command(build_dir, baselines)))
        fp32 = fp32_twin(arts, art)
        if fp32:
            floated = recovered([art]).get(name)
            island = f"; {len(floated)} layers kept float by recovery ({', '.join(floated)})" if floated else ""
            checks.append(_compare(name, "size_ratio", art["bytes"] / fp32["bytes"], "<=", t.max_size_ratio,
                                   "manifest", f"{art['bytes']} / {fp32['bytes']} bytes{island}"))
        if art["runtime"] in t.int8_faster_runtimes:
            checks.append(_speed_check(art, fp32, bench, acc_source))
        if art["runtime"] == "tvm":
            vs = (art.get("accuracy") or {}).get("vs_litert")
            if vs is None:
                checks.append(Check(name, "cross_runtime_agreement", None, None, "", "skip",
                                    art.get("accuracy_note", "not compared with LiteRT"), "compile-time check"))
            else:
                checks.append(_compare(name, "cross_runtime_agreement", vs["agreement_top1"], ">=",
                                       t.min_cross_runtime_agreement, "compile-time check",
                                       f"TVM int8 against LiteRT int8 on {vs['n']} images"))
    checks += _memory_checks(manifest, memory_source(build_dir, manifest, runs), t)
    sanity = manifest["eval"].get("sanity") or {}
    if sanity.get("status") == "suspect":       # perfect agreement with a meaningless float model is no quality
        checks.insert(0, Check("float model", "outputs_meaningful", None, None, "", "fail",
                               f"{sanity['why']}; check PREPROCESS=, EVAL= and the model", "compile-time check"))
    failed = [c for c in checks if c.status == "fail"]
    judged = [c for c in checks if c.metric in ACCURACY_METRICS and c.status != "skip"]
    outcome = "fail" if failed else "pass" if judged else "checked nothing"
    return {"target": target, "model": model, "accuracy_source": acc_source, "gates": str(gates),
            "outcome": outcome, "min_eval_images": t.min_eval_images,
            "recovered": recovered(arts), "equalized": equalized(arts),
            # False: a user's model compiled without EVAL=, its figures measured on the digits
            "eval_representative": manifest["eval"].get("representative", True),
            "thresholds": asdict(t), "baseline": str(base_file), "passed": outcome == "pass",
            "checks": [asdict(c) | {"message": c.message()} for c in checks],
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def baseline_command(build_dir: Path, baselines: Path) -> str:
    """The `make baseline` that records from ``build_dir`` into ``baselines``, as the user would type it."""
    out, target = build_dir.parent, build_dir.name
    words = ["make", "baseline", f"TARGET={shlex.quote(target)}"]
    if Path(os.path.abspath(out)) != Path(os.path.abspath("build")):
        words.append(f"OUT={shlex.quote(str(out))}")
    if Path(os.path.abspath(baselines)) != BASELINES_DIR:
        words.append(f"BASELINES={shlex.quote(str(baselines))}")
    return " ".join(words + ['MSG="why"'])


def recovered(artifacts: list[dict]) -> dict[str, list[str]]:
    """int8 artifacts whose compile kept layers float to meet the accuracy budget: file -> those layers."""
    found = {}
    for art in artifacts:
        q = art.get("quantization") or {}
        recovery = q.get("recovery") or {}                 # tflite-int8; onnx-int8 and tvm-int8 list float_layers
        layers = (recovery.get("float_layers") if recovery.get("status") == "recovered"
                  else q.get("float_layers") or art.get("float_layers"))
        if art["precision"] == "int8" and layers:
            found[art["file"]] = list(layers)
    return found


def equalized(artifacts: list[dict]) -> dict[str, str]:
    """int8 artifacts the ladder recovered with no float layer (CLE, bias correction, 16x8): file -> what it did."""
    found = {}
    for art in artifacts:
        recovery = (art.get("quantization") or {}).get("recovery") or {}
        ladder = recovery.get("equalized") or recovery.get("bias_corrected") or recovery.get("activations")
        if art["precision"] == "int8" and ladder and not recovery.get("float_layers"):
            found[art["file"]] = ladder_summary(recovery)
    return found


def _measured_on(a: dict | None, bench_result: dict | None) -> dict:
    """Where an accuracy figure was measured (compile-time checks record it; bench results carry the device)."""
    if bench_result is not None:
        return bench_result.get("measured_on") or {}
    return (a or {}).get("measured_on") or {}


def _baseline_check(name: str, a: dict, baseline: dict, t: Thresholds, src: str, rerecord: str) -> Check:
    """What int8 costs now against what it cost when the baseline was recorded, each against the float model
    of its own run: float training is not bit-reproducible across CPUs (AVX2 vs AVX-512 kernels), so the
    float model, and its absolute top-1, differ from machine to machine while the int8 cost should not."""
    base = baseline.get("artifacts", {}).get(name)
    if base is None:
        return Check(name, "baseline", None, None, "", "skip", "artifact not in the baseline", src)
    if base.get("n") != a.get("n"):
        return Check(name, "baseline", None, None, "", "skip",
                     f"baseline measured on {base.get('n')} images, now {a.get('n')}: not comparable; "
                     f"re-record with {rerecord}", src)
    tol = t.baseline_tolerance_points
    if all(x.get(k) is not None for x in (a, base) for k in ("top1", "float_top1")):
        drop, base_drop = ((x["float_top1"] - x["top1"]) * 100 for x in (a, base))
        return _compare(name, "baseline_top1_drop", drop, "<=", base_drop + tol, src,
                        f"int8 costs {drop:.2f} pt of top-1 against this run's float model; baseline cost "
                        f"{base_drop:.2f} pt plus {tol} pt")
    floor = base["agreement_top1"] - tol / 100
    return _compare(name, "baseline_agreement_top1", a["agreement_top1"], ">=", floor, src,
                    f"baseline {base['agreement_top1'] * 100:.2f}% minus {tol} pt")


def memory_source(build_dir: Path, manifest: dict, runs: list | None = None) -> dict[str, tuple[float | None, str]]:
    """{file: (peak RSS MB, which run)}: each artifact's newest measurement of these very bytes, imported runs
    (benchmark_model on a phone, its sha256 given) included."""
    shas = {a["file"]: a["sha256"] for a in manifest["artifacts"]}
    found: dict[str, tuple[float | None, str]] = {}
    for results, _ in runs if runs is not None else results_newest_first(build_dir):
        for r in results["results"]:
            if shas.get(r["file"]) == r.get("sha256") and r["file"] not in found:
                found[r["file"]] = (r["peak_rss_mb"], f"benchmark run {results['run_id']}" +
                                    (" (benchmark_model)" if results["where"] == "benchmark_model" else ""))
    return found


def _memory_checks(manifest: dict, measured: dict, t: Thresholds) -> list[Check]:
    """Each measured artifact's peak RSS against max_ram_fraction of the board's RAM (the target's ram_mb)."""
    ram = manifest["config"]["target"].get("ram_mb") or 0
    checks = []
    for art in manifest["artifacts"]:
        rss, source = measured.get(art["file"], (None, ""))
        if not ram or rss is None:
            if art["file"] in measured:
                why = "the target does not say its RAM (ram_mb)" if not ram else "no peak RSS in its benchmark"
                checks.append(Check(art["file"], "peak_rss_of_board_ram", None, None, "", "skip", why, source))
            continue
        checks.append(_compare(art["file"], "peak_rss_of_board_ram", rss / ram, "<=", t.max_ram_fraction, source,
                               f"peak RSS {rss:.0f} MB of {ram} MB; headroom {ram * t.max_ram_fraction - rss:.0f} MB"))
    return checks


def _speed_check(art: dict, fp32: dict | None, bench: dict, acc_source: str) -> Check:
    name = art["file"]
    if fp32 is None or name not in bench or fp32["file"] not in bench:
        return Check(name, "int8_faster_than_fp32", None, None, "", "skip",
                     "needs int8 and fp32 of this runtime in one benchmark run (make bench)", acc_source)
    q, f = bench[name]["latency_ms"]["p50"], bench[fp32["file"]]["latency_ms"]["p50"]
    return _compare(name, "int8_faster_than_fp32", q / f, "<", 1.0, acc_source,
                    f"p50 {q:.2f} ms int8 / {f:.2f} ms fp32 ({fp32['file']})")


def write_outputs(report: dict, build_dir: Path) -> Path:
    folder = build_dir / "gate"
    folder.mkdir(parents=True, exist_ok=True)
    write_text_atomic(folder / "junit.xml", junit(report))
    write_text_atomic(folder / "gate.json", json.dumps(report, indent=1) + "\n")
    return folder


def make_baseline(build_dir: Path, reason: str, baselines: Path = BASELINES_DIR) -> Path:
    """Record the current int8 accuracy as the baseline; only `make baseline MSG="why"` calls this."""
    if not reason.strip():
        raise BenchError(f"a baseline needs a reason: {baseline_command(build_dir, baselines)} (MSG says why the "
                         f"numbers changed)")
    manifest = load_manifest(build_dir)
    acc, _, source = accuracy_source(build_dir, manifest)
    entries = {}
    for art in manifest["artifacts"]:
        a = acc.get(art["file"])
        if art["precision"] == "int8" and a is not None:
            entries[art["file"]] = {k: a.get(k) for k in ("n", "top1", "float_top1", "agreement_top1",
                                                         "mean_abs_logit_delta", "measured_on")}
    path = baseline_path(baselines, manifest)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"model": model_gates_key(manifest), "target": manifest["target"], "reason": reason.strip(),
              "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "accuracy_source": source, "versions": manifest.get("versions", {}), "artifacts": entries}
    return write_text_atomic(path, json.dumps(record, indent=1) + "\n")


def run_gate(build_dir: Path, gates: Path = GATES_FILE, baselines: Path = BASELINES_DIR) -> tuple[dict, str]:
    """Evaluate the gates, write junit.xml and gate.json, and return the report and the text to print."""
    report = evaluate(build_dir, gates, baselines)
    folder = write_outputs(report, build_dir)
    lines = [f"gate {report['model']} on {report['target']}; accuracy from {report['accuracy_source']}", report_table(report)]
    lines += [f"RECOVERED: {name} was compiled with {len(layers)} layers kept float to meet the accuracy budget "
              f"({', '.join(layers)}); these figures are the recovered artifact's"
              for name, layers in report.get("recovered", {}).items()]
    lines += [f"RECOVERED: {name}: {what}; these figures are the recovered model's"
              for name, what in report.get("equalized", {}).items()]
    if not report["eval_representative"]:
        lines.append("WARNING: these accuracy figures come from the digits test split, not from this model's own "
                     "images (compiled without EVAL=): they show int8 against float on digits only")
    lines += [f"FAILED: {c['message']}" for c in report["checks"] if c["status"] == "fail"]
    if report["outcome"] == "checked nothing":
        reasons = dict.fromkeys(c["detail"] for c in report["checks"]
                                if c["metric"] in ACCURACY_METRICS and c["status"] == "skip")
        lines.append(f"CHECKED NOTHING: no int8 artifact's accuracy was judged ({'; '.join(reasons)}). Compile with "
                     f"EVAL= a folder of at least {report['min_eval_images']} labelled images of your own "
                     f"(make compile TARGET={report['target']} EVAL=dir), or measure on the board "
                     f"(make bench TARGET={report['target']} DEVICE=user@host), then run the gate again; "
                     f"exit {GATE_CHECKED_NOTHING}, neither pass nor fail")
    lines.append(f"\n{VERDICTS[report['outcome']]}: junit {folder / 'junit.xml'}, json {folder / 'gate.json'}")
    return report, "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.gate``: the same gate without the compiler installed (e.g. on a CI box)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.gate", description=__doc__.splitlines()[0])
    p.add_argument("build_dir", type=Path)
    p.add_argument("--gates", type=Path, default=GATES_FILE)
    p.add_argument("--baselines", type=Path, default=BASELINES_DIR)
    p.add_argument("--write-baseline", metavar="REASON", help="record the current figures as the baseline")
    args = p.parse_args(argv)
    try:
        if args.write_baseline is not None:
            print(f"baseline written: {make_baseline(args.build_dir, args.write_baseline, args.baselines)}")
            return 0
        report, text = run_gate(args.build_dir, args.gates, args.baselines)
    except (PipelineError, OSError) as exc:
        return fail(exc)
    print(text)
    return EXIT_CODES[report["outcome"]]


if __name__ == "__main__":
    raise SystemExit(main())
