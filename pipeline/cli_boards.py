"""The command line's verbs for boards and phones: `make provision`, `make import` and `make estimate` (cli.py
parses the arguments and maps errors to exit codes; each verb returns its exit code)."""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import PipelineError


def provision_verb(args) -> int:
    import shlex

    from benchmarks.errors import BenchError
    from pipeline.progress import Progress
    from pipeline.provision import provision
    from pipeline.targets import load_target

    if not args.device:
        raise BenchError("give DEVICE=user@host: the board to provision over ssh")
    target = load_target(args.target, args.targets_dir)
    done = provision(target, args.device, args.port, shlex.split(args.ssh_opts), args.cache_dir,
                     Progress(quiet=args.quiet))
    for p in done["packages"]:
        print(f"  {p['name']} {p['version']}  sha256 {p['wheel_sha256'][:16]}")
    print(f"\n{args.device} provisioned for {args.target}: {len(done['packages'])} packages from wheel set "
          f"{done['set_id']} (the files make verify's emulated board installs) in {done['env']}; the record of what "
          f"is installed, with hashes, is {done['env']}/xception-edge-env.json. `make bench TARGET={args.target} "
          f"DEVICE={args.device}` runs there.")
    return 0


def import_verb(args) -> int:
    from benchmarks.errors import BenchError
    from benchmarks.litert_import import import_log
    from benchmarks.run import write_results
    from benchmarks.text import results_summary

    if args.log is None:
        raise BenchError("give LOG=<file>: the saved output of benchmark_model (see docs/benchmarks.md, On a phone)")
    build_dir = args.out / args.target
    results = import_log(build_dir, args.log, args.phone, args.sha256)
    path = write_results(results, build_dir / "bench" / f"{results['run_id']}.json")
    print(results_summary(results, path))
    if not args.sha256:
        print("  (no SHA256=: the figures are reported, and `make gate` does not judge them)")
    return 0


def estimate_verb(args) -> int:
    from pipeline.estimate import estimate_target
    from pipeline.progress import Progress
    from pipeline.targets import load_target

    target = load_target(args.target, args.targets_dir)
    path, text = estimate_target(args.out / args.target, target, args.cache_dir, Progress(quiet=args.quiet),
                                 args.only, args.core)
    print(text)
    print(f"\n{path}")
    return 0


def wheel_set_id(build_dir: Path, cache_dir: Path) -> str | None:
    """The id of the wheel set make verify installs for the build's architecture, when this machine has it."""
    from benchmarks.manifest import load_manifest
    from pipeline.board_wheels import cached_wheels

    try:
        arch = load_manifest(build_dir)["config"]["target"].get("arch")
    except PipelineError:               # no manifest: the run says so in its own words
        return None
    found = cached_wheels(cache_dir, arch) if arch in ("aarch64", "x86_64") else None
    return found.id if found else None
