"""Thin command line: parse -> call the Python API -> print -> map errors to exit codes.

Exit codes: 0 ok; 1 gate failed; 2 bad input or configuration; 3 a stage failed (log path
printed); 4 a dependency is missing; 5 the target is locked by another run; 6 the gate judged no accuracy;
7 a folder cannot be written (disk full, permission, read-only); 130 Ctrl-C; 143 SIGTERM.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from benchmarks.files import write_text_atomic
from pipeline.errors import PipelineError, fail
from pipeline.cli_boards import estimate_verb, import_verb, provision_verb, wheel_set_id
from pipeline.options import Option, for_verb

EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}

VERB_HELP = {
    "compile": "compile a target into OUT/<target>/ (make compile)",
    "tune": "MetaSchedule-tune the TVM CPU functions here or over an RPC tracker (make tune)",
    "bench": "benchmark OUT/<target>/ here, over ssh or a TVM RPC tracker (make bench)",
    "report": "Markdown, PNG plots and HTML from the newest results (make report)",
    "gate": "int8 accuracy / size / speed gates with JUnit output (make gate)",
    "baseline": "record the current int8 figures as the committed baseline (make baseline)",
    "analyze": "int8 per-layer error and sensitivity: table, JSON, plot (make analyze)",
    "verify": "run the ARM CPU artifacts under qemu and compare with the host (make verify)",
    "provision": "install on a board, over ssh, the runtimes make verify proved (make provision)",
    "estimate": "instructions per inference and latency bounds of each ARM CPU artifact, counted under qemu as the core; on x86-avx2 the validation (make estimate)",
    "import": "bring LiteRT benchmark_model output from a phone into OUT/<target>/bench/ (make import)",
    "peers": "LiteRT / ONNX Runtime / TVM on Xception 299x299 here, one run (make peers)",
    "targets": "list the targets and what each builds (make targets)",
    "clean": "remove OUT (build outputs); --cache also the stage cache (make clean)",
    "test": "run the test suite (make test)",
}
QUIET = ("compile", "tune", "analyze", "verify", "peers", "clean", "provision", "estimate")       # verbs that show progress


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that name the make variable (not a usage block naming --port)."""
    make_names: dict[str, str] = {}

    def error(self, message: str):
        import re

        found = re.match(r"argument (--[\w-]+)(?:/\S+)?: (.*)", message)
        if found and found.group(1) in self.make_names:
            message = f"{self.make_names[found.group(1)]}= ({found.group(1)}): {found.group(2)}"
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def _size(text: str) -> tuple[int, int]:
    import re

    found = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+))?\s*", text)
    if not found:
        raise argparse.ArgumentTypeError(f"expected N or HxW (e.g. 299 or 240x320), got {text!r}")
    return int(found.group(1)), int(found.group(2) or found.group(1))


TYPES = {"str": str, "int": _int, "float": float, "path": Path, "size": _size, "choice": str}


def _add(parser: argparse.ArgumentParser, o: Option) -> None:
    """One option of the table (pipeline/options.py) on one verb's parser."""
    unset = o.default == "" and o.kind != "str"
    extra = {"choices": o.choices} if o.choices else {}
    default = f" (default {o.default})" if o.default else ""
    parser.add_argument(o.flag, type=TYPES[o.kind], default=None if unset else o.default, metavar=o.var,
                        help=f"{o.var}=: {o.help}{default}".replace("%", "%%"), **extra)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m pipeline",
        description="Xception edge compiler: Keras Xception -> int8 PTQ -> TFLite / ONNX artifacts + manifest.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in VERB_HELP.items():
        sub = verbs.add_parser(verb, help=text)
        sub.make_names = {o.flag: o.var for o in for_verb(verb)}
        for o in for_verb(verb):
            _add(sub, o)
        if verb in QUIET:
            sub.add_argument("--quiet", action="store_true", help="no progress output")
        if verb in ("verify", "estimate"):
            sub.add_argument("--only", action="append", help="only this artifact file (repeatable)")
        if verb == "report":
            sub.add_argument("--results", type=Path, help="a results file (default: the newest)")
        if verb == "clean":
            sub.add_argument("--cache", action="store_true", help="also remove the stage cache (not the reference model)")
        if verb == "test":
            sub.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed to pytest")
    return parser


def _folders(args) -> None:
    """The folders whose default is computed, not typed: CACHE_DIR, TARGETS_DIR, TUNING_DIR."""
    from pipeline.compile_options import default_cache_dir
    from pipeline.targets import TARGETS_DIR, TUNING_DIR

    for name, default in (("cache_dir", default_cache_dir), ("targets_dir", lambda: TARGETS_DIR),
                          ("tuning_dir", lambda: TUNING_DIR)):
        if hasattr(args, name) and getattr(args, name) is None:
            setattr(args, name, default())


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _folders(args)
    # 3: TensorFlow's C++ log stays quiet. At 2 a user still sees "E0000 ... node_def_util.cc ...
    # use_unbounded_threadpool" during training (Keras' tf.data map meets an older op definition:
    # harmless, but an "E" line reads as an error). Failures still raise. TF_CPP_MIN_LOG_LEVEL=0 shows all.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    received: list[int] = []

    def on_signal(signum, _frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, on_signal) for signum in EXIT_INTERRUPTED}
    try:
        verb = {"compile": _compile, "bench": _bench, "report": _report, "gate": _gate, "baseline": _baseline,
                "verify": _verify, "provision": provision_verb, "estimate": estimate_verb, "import": import_verb, "analyze": _analyze, "peers": _peers, "tune": _tune, "targets": _targets, "clean": _clean, "test": _test}[args.verb]
        return verb(args)
    except (PipelineError, OSError) as exc:     # OSError: a write the storage refused, a file no step named
        if received:
            # The interrupt landed inside a library that turned it into its own error (seen: Ctrl-C or
            # SIGTERM while Keras imports optree's C extension becomes "ImportError: ... install optree"):
            # the cause is the signal, and the clean-up has run as for any failure.
            return _interrupted(received[0])
        return fail(exc)
    except KeyboardInterrupt:
        return _interrupted(received[0] if received else signal.SIGINT)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _interrupted(signum: int) -> int:
    print(f"interrupted ({signal.Signals(signum).name}): partial outputs were removed and the cache "
          f"is intact; run the same command again to resume", file=sys.stderr)
    return EXIT_INTERRUPTED[signum]


def _compile_options(args, **extra):
    """CompileOptions from a verb's parsed model options (compile, analyze, tune)."""
    from pipeline.compile_options import CompileOptions

    model = dict(calib_method=args.calib_method) if hasattr(args, "calib_method") else {}
    if hasattr(args, "eval"):
        model |= dict(eval_dir=args.eval, eval_n=args.eval_n)
    return CompileOptions(
        target=args.target, weights=args.weights, calib_dir=args.calib, calib_n=args.calib_n,
        input_size=args.input_size[0] if args.input_size else 299, input_hw=args.input_size,
        num_classes=args.classes, out_dir=args.out, cache_dir=args.cache_dir, reference_dir=args.reference_dir,
        targets_dir=args.targets_dir, preprocess=args.preprocess, resize=args.resize, crop=args.crop,
        labels_file=args.labels, **model, **extra)


def _compile(args) -> int:
    from pipeline.compiler import compile_target
    from pipeline.tables import compile_table
    from pipeline.progress import Progress

    options = _compile_options(args, tuning_dir=args.tuning_dir if args.tuned == "1" else None, equalize=args.equalize,
                               recover=args.recover == "1", recover_cap=args.recover_cap,
                               recover_rungs=args.recover_rungs)
    result = compile_target(options, Progress(quiet=args.quiet))
    print(compile_table(result.manifest))
    ran = sum(not r.cached for r in result.runs)
    print(f"\n{len(result.manifest['artifacts'])} artifacts and the manifest in {result.manifest_path.parent}/ "
          f"({ran} of {len(result.runs)} stage runs did work, the rest came from the cache)")
    return 0


def _tune(args) -> int:
    from pipeline.progress import Progress
    from pipeline.tables import tuning_table
    from pipeline.tuning import TuneOptions, tune_target

    options = TuneOptions(_compile_options(args, tuning_dir=args.tuning_dir, recover=args.recover == "1", equalize=args.equalize,
                                           recover_cap=args.recover_cap, recover_rungs=args.recover_rungs),
                          trials=args.trials, rpc=args.rpc, key=args.key, timeout_sec=args.timeout)
    summary = tune_target(options, Progress(quiet=args.quiet))
    print(tuning_table(summary))
    print(f"\n`make compile TARGET={args.target}` (same model) applies these records; commit {summary['records_dir']}/ "
          f"to share them")
    return 0


def _bench(args) -> int:
    import shlex

    from benchmarks import run
    from benchmarks.errors import BenchError
    from benchmarks.run import Budget
    from benchmarks.text import results_summary

    build_dir = args.out / args.target
    log = lambda message: print(message, file=sys.stderr, flush=True)
    if args.device and args.rpc:
        raise BenchError("give DEVICE=user@host (ssh) or RPC=host:port (TVM tracker), not both")
    budget = Budget(min_runs=args.min_runs, min_seconds=args.min_seconds, max_seconds=args.max_seconds,
                    accuracy_seconds=args.accuracy_seconds)
    if args.rpc:
        from benchmarks.rpc import run_over_rpc

        if not args.key:
            raise BenchError("RPC=host:port needs KEY=<device key> (the key the boards registered under)")
        results = run_over_rpc(build_dir, args.rpc, args.key, budget, args.eval_n, log)
    elif args.device:
        from benchmarks.ssh import run_over_ssh

        runner_args = ["--threads", str(args.threads), "--eval-n", str(args.eval_n), "--min-runs",
                       str(args.min_runs), "--min-seconds", str(args.min_seconds), "--max-seconds",
                       str(args.max_seconds), "--accuracy-seconds", str(args.accuracy_seconds)]
        results = run_over_ssh(build_dir, args.device, runner_args, args.port, shlex.split(args.ssh_opts),
                               args.remote_python or "", log, wheel_set_id(build_dir, args.cache_dir))
    else:
        results = run.run_build(build_dir, args.threads, budget, args.eval_n, log=log)
    path = run.write_results(results, build_dir / "bench" / f"{results['run_id']}.json")
    print(results_summary(results, path))
    return 3 if results["failed"] else 0


def _gate(args) -> int:
    from benchmarks import gate

    report, text = gate.run_gate(args.out / args.target, args.gates or gate.GATES_FILE,
                                 args.baselines or gate.BASELINES_DIR)
    print(text)
    return gate.EXIT_CODES[report["outcome"]]


def _baseline(args) -> int:
    from benchmarks import gate

    print(f"baseline written: {gate.make_baseline(args.out / args.target, args.msg, args.baselines or gate.BASELINES_DIR)}")
    return 0


def _analyze(args) -> int:
    from pipeline.analysis import analyze_target
    from pipeline.analysis_report import rungs_table, table
    from pipeline.progress import Progress

    options = _compile_options(args)
    result, folder = analyze_target(options, args.analyze_n, Progress(quiet=args.quiet))
    o = result["overall"]
    print(f"TFLite int8 ({result['calib_method']}) against float on {result['calibration_images']} calibration "
          f"images: top-1 agreement {o['agreement_top1']:.3f}, logit SQNR {o['sqnr_db']:.1f} dB; "
          f"{result['sensitivity_measured']} of {result['quantized_ops']} layers measured alone "
          f"({result['seconds']:.0f} s)")
    print(table(result))
    if result.get("rungs"):
        print("\nWhat each recovery rung would do:")
        print(rungs_table(result))
    if result.get("onnx_layers"):
        from pipeline.analysis_report import onnx_table

        print("\nONNX int8, lowest SQNR first:")
        print(onnx_table(result, 5))
    print(f"\nanalysis.json, analysis.md and sqnr_by_layer.png in {folder}/")
    return 0


def _verify(args) -> int:
    from pipeline.progress import Progress
    from pipeline.targets import load_target
    from pipeline.tables import verify_table
    from pipeline.verify import verify_target

    target = load_target(args.target, args.targets_dir)
    report = verify_target(args.out / args.target, target, args.cache_dir, args.n, Progress(quiet=args.quiet),
                           args.only, args.core)
    print(verify_table(report))
    for entry in report["skipped"]:
        print(f"  not verified: {entry['file']}: {entry['reason']}")
    gpu = any(r.get("device") == "gpu" for r in report["rows"])
    print(f"\n{'PASS' if report['passed'] else 'FAIL'}: under emulated {report['emulator']['core'] if 'emulator' in report else target.cpu.core}"
          f"{' and on software GPUs (lavapipe, POCL, Intel CPU OpenCL)' if gpu else ''}, {'every' if report['passed'] else 'NOT every'} verified artifact "
          f"of {args.target} computes what it should (LiteRT and TVM: what the host computes; ONNX Runtime int8: the "
          f"model's gate against float{'; GPU: LiteRT fp16 on lavapipe, the same gate; TVM OpenCL: LiteRT fp32 within 1e-4, fp16 within 1e-2 and 99% top-1' if gpu else ''})")
    return 0 if report["passed"] else 1


def _peers(args) -> int:
    from benchmarks.run import Budget
    from pipeline.peers import compare
    from pipeline.tables import peer_table
    from pipeline.progress import Progress

    budget = Budget(warmup=1, min_runs=10, min_seconds=2.0, max_seconds=args.max_seconds, accuracy_seconds=60.0)
    threads = args.threads or os.cpu_count() or 1
    size = args.input_size[0] if args.input_size else 299
    runs, profiles, records = compare(args.out, args.cache_dir, threads, size, budget,
                                      Progress(quiet=args.quiet), tuning_dir=args.tuning_dir)
    table, summary = peer_table(runs, profiles, records)
    path = args.out / "peers" / "peers.md"
    write_text_atomic(path, table)
    write_text_atomic(path.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")
    print(table)
    print(f"table: {path}; the same as data: {path.with_suffix('.json')}")
    return 0


def _report(args) -> int:
    from benchmarks.report import render

    out = render(args.out / args.target, args.results)
    print(out["markdown"].read_text())
    for name, path in out.items():
        print(f"{name}: {path}")
    return 0


def _targets(args) -> int:
    from pipeline.targets import available_targets, load_target

    folder = args.targets_dir
    for name in available_targets(folder):
        t = load_target(name, folder)
        print(f"{name:14s} {t.arch:8s} {', '.join(t.artifacts):60s} {t.description}")
    return 0


def _clean(args) -> int:
    for path in [args.out] + ([args.cache_dir / "stages"] if args.cache else []):
        if path.exists():
            shutil.rmtree(path)
            print(f"removed {path}")
    return 0


def _test(args) -> int:
    return subprocess.call([sys.executable, "-m", "pytest", *args.pytest_args])
