"""Thin command line: parse -> call the Python API -> print -> map errors to exit codes.

Exit codes: 0 ok; 1 gate failed; 2 bad input or configuration; 3 a stage failed (log path
printed); 4 a dependency is missing; 5 the target is locked by another run; 6 the gate judged no accuracy;
7 a folder cannot be written (disk full, permission, read-only); 130 Ctrl-C; 143 SIGTERM.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from pipeline.errors import PipelineError, fail

EXIT_INTERRUPTED = {signal.SIGINT: 130, signal.SIGTERM: 143}

# The make variable behind each option (the Makefile passes VAR as --option=VAR): errors name both.
MAKE_VARIABLES = {
    "--target": "TARGET", "--weights": "WEIGHTS", "--calib": "CALIB", "--calib-n": "CALIB_N", "--eval": "EVAL",
    "--eval-n": "EVAL_N (compile) / BENCH_EVAL_N (bench)", "--input-size": "INPUT_SIZE", "--classes": "CLASSES",
    "--out": "OUT", "--cache-dir": "CACHE_DIR", "--reference-dir": "REFERENCE_DIR", "--tuning-dir": "TUNING_DIR",
    "--device": "DEVICE", "--port": "PORT", "--ssh-opts": "SSH_OPTS", "--remote-python": "REMOTE_PYTHON",
    "--rpc": "RPC", "--key": "KEY", "--threads": "THREADS", "--min-runs": "MIN_RUNS",
    "--min-seconds": "MIN_SECONDS", "--max-seconds": "MAX_SECONDS", "--accuracy-seconds": "ACC_SECONDS",
    "--trials": "TRIALS", "--timeout": "TUNE_TIMEOUT", "--n": "VERIFY_N", "--core": "VERIFY_CORE", "--msg": "MSG",
    "--calib-method": "CALIB_METHOD", "--analyze-n": "ANALYZE_N", "--recover": "RECOVER", "--recover-cap": "RECOVER_CAP",
}


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that name the make variable (not a usage block naming --port)."""

    def error(self, message: str):
        import re

        found = re.match(r"argument (--[\w-]+)(?:/\S+)?: (.*)", message)
        if found and found.group(1) in MAKE_VARIABLES:
            message = f"{MAKE_VARIABLES[found.group(1)]}= ({found.group(1)}): {found.group(2)}"
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


def _model_options(parser) -> None:
    """The target and the model as compile takes them (analyze runs the same stages up to calibration)."""
    parser.add_argument("--target", required=True, help="a file name in targets/ without .toml (e.g. rpi4)")
    parser.add_argument("--weights", default="auto",
                        help="auto (default), imagenet, reference, random, or a path to a .keras/.h5 model")
    parser.add_argument("--calib", type=Path, help="folder of calibration images (default: reference split)")
    parser.add_argument("--calib-n", type=_int, default=100, help="calibration images to use (default 100)")
    parser.add_argument("--eval", type=Path, help="folder of evaluation images (default: reference test split)")
    parser.add_argument("--eval-n", type=_int, default=0, help="evaluation images to use (default 0 = all)")
    _input_options(parser)


def _input_options(parser) -> None:
    """What the model takes and how images become it (compile, analyze and tune prepare the model alike)."""
    parser.add_argument("--input-size", type=_size, default=None,
                        help="N or HxW: the input size for --weights random (default 299), or for a model without a "
                             "fixed height and width")
    parser.add_argument("--classes", type=_int, default=1000, help="class count for --weights random")
    parser.add_argument("--preprocess", default="", help="what pixels the model takes: xception, raw, unit, "
                        "imagenet-caffe, imagenet-torch or 'mean=R,G,B std=R,G,B' (default: read from the model)")
    parser.add_argument("--resize", default="", help="keras, bilinear, nearest, bicubic or area (default: keras for "
                        "your own model, as image_dataset_from_directory resizes; bilinear otherwise)")
    parser.add_argument("--crop", default="", help="center (cover, crop the centre) or none (default: none for your "
                        "own model, center otherwise)")
    parser.add_argument("--labels", type=Path, help="the model's class names, one per line, in its output order")


def _calib_method_option(parser) -> None:
    from pipeline.quantization import CALIB_METHODS, DEFAULT_CALIB_METHOD

    parser.add_argument("--calib-method", choices=CALIB_METHODS, default=DEFAULT_CALIB_METHOD,
                        help=f"int8 activation ranges (default {DEFAULT_CALIB_METHOD})")


def _recovery_options(parser) -> None:
    parser.add_argument("--recover", choices=("0", "1"), default="1",
                        help="1 (default): int8 below the gate's agreement budget keeps its most damaging layers float")
    parser.add_argument("--recover-cap", type=_int, default=8, help="at most this many float layers (default 8)")


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


def _parser() -> argparse.ArgumentParser:
    from pipeline.compile_options import default_cache_dir

    parser = _Parser(
        prog="python -m pipeline",
        description="Xception edge compiler: Keras Xception -> int8 PTQ -> TFLite / ONNX artifacts + manifest.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    comp = verbs.add_parser("compile", help="compile a target into OUT/<target>/ (make compile)")
    _model_options(comp)
    _calib_method_option(comp)
    _recovery_options(comp)
    _tuning_dir(comp)
    comp.add_argument("--no-tuning", action="store_true", help="do not apply tuning records (default schedules)")
    _common(comp, default_cache_dir())

    tu = verbs.add_parser("tune", help="MetaSchedule-tune the TVM CPU functions here or over an RPC tracker (make tune)")
    tu.add_argument("--target", required=True, help="a file name in targets/ without .toml (e.g. host, rpi4)")
    tu.add_argument("--weights", default="auto", help="the model, as for compile")
    tu.add_argument("--calib", type=Path, help="calibration images, as for compile (int8 functions)")
    tu.add_argument("--calib-n", type=_int, default=100)
    _input_options(tu)
    tu.add_argument("--trials", type=_int, default=1000,
                    help="trial budget of the records (a re-run resumes up to it; default 1000)")
    tu.add_argument("--rpc", help="host:port of a TVM RPC tracker: measure on the boards registered under --key")
    tu.add_argument("--key", help="device key at the tracker (with --rpc)")
    tu.add_argument("--timeout", type=float, default=60.0, help="seconds per candidate build or run (default 60)")
    _recovery_options(tu)                    # the int8 model tuned must be the one compile builds
    _tuning_dir(tu)
    _common(tu, default_cache_dir())

    be = verbs.add_parser("bench", help="benchmark OUT/<target>/ here, over ssh or a TVM RPC tracker (make bench)")
    be.add_argument("--target", required=True)
    be.add_argument("--out", type=Path, default=Path("build"), help="output folder (default build)")
    be.add_argument("--device", help="user@host: run on a board over ssh")
    be.add_argument("--port", type=_int, help="ssh port")
    be.add_argument("--ssh-opts", default="", help="extra ssh options, e.g. '-i key -o UserKnownHostsFile=f'")
    be.add_argument("--remote-python", default="python3", help="python on the board (default python3)")
    be.add_argument("--rpc", help="host:port of a TVM RPC tracker (TVM artifacts)")
    be.add_argument("--key", help="device key at the tracker (with --rpc)")
    be.add_argument("--threads", type=_int, default=0)
    be.add_argument("--eval-n", type=_int, default=0)
    be.add_argument("--min-runs", type=_int, default=10)
    be.add_argument("--min-seconds", type=float, default=2.0)
    be.add_argument("--max-seconds", type=float, default=30.0)
    be.add_argument("--accuracy-seconds", type=float, default=120.0)

    rp = verbs.add_parser("report", help="Markdown, PNG plots and HTML from the newest results (make report)")
    rp.add_argument("--target", required=True)
    rp.add_argument("--out", type=Path, default=Path("build"), help="output folder (default build)")
    rp.add_argument("--results", type=Path, help="a results file (default: the newest)")

    ga = verbs.add_parser("gate", help="int8 accuracy / size / speed gates with JUnit output (make gate)")
    ga.add_argument("--target", required=True)
    ga.add_argument("--out", type=Path, default=Path("build"), help="output folder (default build)")
    ga.add_argument("--gates", type=Path, help="gates file (default benchmarks/gates.toml)")
    ga.add_argument("--baselines", type=Path, help="baselines folder (default benchmarks/baselines)")

    bl = verbs.add_parser("baseline", help="record the current int8 figures as the committed baseline (make baseline)")
    bl.add_argument("--target", required=True)
    bl.add_argument("--out", type=Path, default=Path("build"), help="output folder (default build)")
    bl.add_argument("--msg", default="", help="why the baseline changes (required)")
    bl.add_argument("--baselines", type=Path, help="baselines folder (default benchmarks/baselines)")

    an = verbs.add_parser("analyze", help="int8 per-layer error and sensitivity: table, JSON, plot (make analyze)")
    _model_options(an)
    an.add_argument("--analyze-n", type=_int, default=16,
                    help="layers whose sensitivity is measured, those losing the most SQNR (default 16; 0 = all)")
    _calib_method_option(an)                 # analysed before recovery: no recovery options
    _common(an, default_cache_dir())

    ve = verbs.add_parser("verify", help="run the ARM CPU artifacts under qemu and compare with the host (make verify)")
    ve.add_argument("--target", required=True)
    ve.add_argument("--n", type=_int, default=4, help="eval images per artifact (default 4; emulation is slow)")
    ve.add_argument("--only", action="append", help="only this artifact file (repeatable)")
    ve.add_argument("--core", default="", help="emulate this core instead of the target's (VERIFY_CORE=), e.g. "
                                                "cortex-a72: what the libraries do on a board without their ISA")
    _common(ve, default_cache_dir())

    pe = verbs.add_parser("peers", help="LiteRT / ONNX Runtime / TVM on Xception 299x299 here, one run (make peers)")
    pe.add_argument("--threads", type=_int, default=0, help="threads for every runtime (default: all cores)")
    pe.add_argument("--input-size", type=_int, default=299)
    pe.add_argument("--max-seconds", type=float, default=30.0, help="latency budget per artifact")
    _tuning_dir(pe)
    _common(pe, default_cache_dir())

    tg = verbs.add_parser("targets", help="list the targets and what each builds (make targets)")
    tg.add_argument("--targets-dir", type=Path, default=None, help="folder of target files (default targets/)")

    cl = verbs.add_parser("clean", help="remove OUT (build outputs); --cache also the stage cache (make clean)")
    _common(cl, default_cache_dir())
    cl.add_argument("--cache", action="store_true", help="also remove the stage cache (not the reference model)")

    verbs.add_parser("test", help="run the test suite (make test)").add_argument(
        "pytest_args", nargs=argparse.REMAINDER, help="passed to pytest")
    return parser


def _tuning_dir(p: argparse.ArgumentParser) -> None:
    from pipeline.targets import TUNING_DIR

    p.add_argument("--tuning-dir", type=Path, default=TUNING_DIR,
                   help=f"tuning records, <dir>/<target>/<model>/ (default {TUNING_DIR.relative_to(TUNING_DIR.parent.parent)})")


def _common(p: argparse.ArgumentParser, cache: Path) -> None:
    p.add_argument("--out", type=Path, default=Path("build"), help="output folder (default build)")
    p.add_argument("--cache-dir", type=Path, default=cache, help=f"stage cache (default {cache})")
    p.add_argument("--reference-dir", type=Path, default=None,
                   help="where the reference model is kept (default <cache-dir>/reference)")
    p.add_argument("--targets-dir", type=Path, default=None, help="folder of target files (default targets/)")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
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
                "verify": _verify, "analyze": _analyze, "peers": _peers, "tune": _tune, "targets": _targets, "clean": _clean, "test": _test}[args.verb]
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
    """CompileOptions from the options ``_model_options``, ``_calib_method_option`` and ``_common`` added."""
    from pipeline.compiler import CompileOptions
    from pipeline.targets import TARGETS_DIR

    return CompileOptions(
        target=args.target, weights=args.weights, calib_dir=args.calib, calib_n=args.calib_n,
        eval_dir=args.eval, eval_n=args.eval_n, input_size=args.input_size[0] if args.input_size else 299,
        input_hw=args.input_size, num_classes=args.classes,
        out_dir=args.out, cache_dir=args.cache_dir, reference_dir=args.reference_dir,
        targets_dir=args.targets_dir or TARGETS_DIR, calib_method=args.calib_method, preprocess=args.preprocess,
        resize=args.resize, crop=args.crop, labels_file=args.labels, **extra)


def _compile(args) -> int:
    from pipeline.compiler import compile_target
    from pipeline.tables import compile_table
    from pipeline.progress import Progress

    options = _compile_options(args, tuning_dir=None if args.no_tuning else args.tuning_dir,
                               recover=args.recover == "1", recover_cap=args.recover_cap)
    result = compile_target(options, Progress(quiet=args.quiet))
    print(compile_table(result.manifest))
    ran = sum(not r.cached for r in result.runs)
    print(f"\n{len(result.manifest['artifacts'])} artifacts and the manifest in {result.manifest_path.parent}/ "
          f"({ran} of {len(result.runs)} stage runs did work, the rest came from the cache)")
    return 0


def _tune(args) -> int:
    from pipeline.compiler import CompileOptions
    from pipeline.progress import Progress
    from pipeline.targets import TARGETS_DIR
    from pipeline.tables import tuning_table
    from pipeline.tuning import TuneOptions, tune_target

    options = TuneOptions(
        CompileOptions(target=args.target, weights=args.weights, calib_dir=args.calib, calib_n=args.calib_n,
                       input_size=args.input_size[0] if args.input_size else 299, input_hw=args.input_size,
                       num_classes=args.classes, out_dir=args.out, preprocess=args.preprocess, resize=args.resize,
                       crop=args.crop, labels_file=args.labels,
                       cache_dir=args.cache_dir, reference_dir=args.reference_dir,
                       targets_dir=args.targets_dir or TARGETS_DIR, tuning_dir=args.tuning_dir,
                       recover=args.recover == "1", recover_cap=args.recover_cap),
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
                               args.remote_python, log)
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
    from pipeline.analysis import analyze_target, table
    from pipeline.progress import Progress

    options = _compile_options(args)
    result, folder = analyze_target(options, args.analyze_n, Progress(quiet=args.quiet))
    o = result["overall"]
    print(f"TFLite int8 ({result['calib_method']}) against float on {result['calibration_images']} calibration "
          f"images: top-1 agreement {o['agreement_top1']:.3f}, logit SQNR {o['sqnr_db']:.1f} dB; "
          f"{result['sensitivity_measured']} of {result['quantized_ops']} layers measured alone "
          f"({result['seconds']:.0f} s)")
    print(table(result))
    if result.get("onnx_layers"):
        from pipeline.analysis import onnx_table

        print("\nONNX int8, lowest SQNR first:")
        print(onnx_table(result, 5))
    print(f"\nanalysis.json, analysis.md and sqnr_by_layer.png in {folder}/")
    return 0


def _verify(args) -> int:
    from pipeline.progress import Progress
    from pipeline.targets import TARGETS_DIR, load_target
    from pipeline.tables import verify_table
    from pipeline.verify import verify_target

    target = load_target(args.target, args.targets_dir or TARGETS_DIR)
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
    runs, profiles, records = compare(args.out, args.cache_dir, threads, args.input_size, budget,
                                      Progress(quiet=args.quiet), tuning_dir=args.tuning_dir)
    table = peer_table(runs, profiles, records)
    path = args.out / "peers" / "peers.md"
    path.write_text(table)
    print(table)
    print(f"table: {path}")
    return 0


def _report(args) -> int:
    from benchmarks.report import render

    out = render(args.out / args.target, args.results)
    print(out["markdown"].read_text())
    for name, path in out.items():
        print(f"{name}: {path}")
    return 0


def _targets(args) -> int:
    from pipeline.targets import TARGETS_DIR, available_targets, load_target

    folder = args.targets_dir or TARGETS_DIR
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
