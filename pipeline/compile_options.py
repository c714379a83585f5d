"""CompileOptions: what a user asks a compile (and analyze, tune) for, as the Python API takes it, and the checks
that refuse a bad value in one line before any stage runs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.datasets import folder_images
from pipeline.errors import InputError
from pipeline.options import option
from pipeline.sources import check_size
from pipeline.targets import TARGETS_DIR, TUNING_DIR


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "xception-edge"


RUNGS = ("cle", "bias", "16x8", "float")       # the int8 recovery ladder's rungs (pipeline/ladder.py)


def _default(var: str, kind=str):
    return kind(option(var).default)


@dataclass(frozen=True)
class CompileOptions:
    """The API's options; the defaults are the option table's (pipeline/options.py), the variable in comments."""
    target: str
    weights: str = _default("WEIGHTS")                   # WEIGHTS
    calib_dir: Path | None = None                         # CALIB; None = the reference calibration split
    calib_n: int = _default("CALIB_N", int)               # CALIB_N
    eval_dir: Path | None = None                          # EVAL; None = the reference test split
    eval_n: int = _default("EVAL_N", int)                 # EVAL_N; 0 = all
    input_size: int = 299                                 # INPUT_SIZE for random weights
    input_hw: tuple[int, int] | None = None               # INPUT_SIZE as given: (H, W) for a model without a fixed size
    num_classes: int = _default("CLASSES", int)           # CLASSES, random weights only
    out_dir: Path = Path(_default("OUT"))                 # OUT
    cache_dir: Path = field(default_factory=default_cache_dir)     # CACHE_DIR
    reference_dir: Path | None = None                     # REFERENCE_DIR; None = <cache_dir>/reference
    targets_dir: Path = TARGETS_DIR                       # TARGETS_DIR
    seed: int = 0
    tuning_dir: Path | None = TUNING_DIR                  # TUNING_DIR; None = do not apply records (TUNED=0)
    records_target: str = ""                              # look records up under this target's name (default: its own)
    calib_method: str = _default("CALIB_METHOD")          # CALIB_METHOD
    recover: bool = _default("RECOVER") == "1"            # RECOVER
    recover_cap: int = _default("RECOVER_CAP", int)       # RECOVER_CAP
    equalize: str = _default("EQUALIZE")                  # EQUALIZE: auto | on | off
    recover_rungs: str = _default("RECOVER_RUNGS")        # RECOVER_RUNGS: the ladder's rungs, comma-separated
    preprocess: str = ""                                  # PREPROCESS; "" = read from the model
    resize: str = ""                                      # RESIZE; "": keras for a user's model, else bilinear
    crop: str = ""                                        # CROP; "": none for a user's model, else center
    labels_file: Path | None = None                       # LABELS


def validate_options(options: CompileOptions) -> None:
    if options.calib_n < 1:
        raise InputError(f"CALIB_N={options.calib_n} must be a positive number of images")
    if options.eval_n < 0:
        raise InputError(f"EVAL_N={options.eval_n} must be 0 (all) or a positive number of images")
    from pipeline.quantization import CALIB_METHODS

    if options.calib_method not in CALIB_METHODS:
        raise InputError(f"CALIB_METHOD={options.calib_method!r} is not a calibration method; "
                         f"valid: {', '.join(CALIB_METHODS)}")
    if options.equalize not in option("EQUALIZE").choices:
        raise InputError(f"EQUALIZE={options.equalize!r} is not accepted; valid: {', '.join(option('EQUALIZE').choices)}")
    rungs = [r.strip() for r in options.recover_rungs.split(",")]
    if not all(r in RUNGS for r in rungs) or len(set(rungs)) != len(rungs):
        raise InputError(f"RECOVER_RUNGS={options.recover_rungs!r} is not accepted; valid: a comma-separated subset "
                         f"of {','.join(RUNGS)}, each at most once")
    if options.recover_cap < 1:
        raise InputError(f"RECOVER_CAP={options.recover_cap} must be a positive number of layers")
    from models.preprocessing import parse_preprocess

    try:
        parse_preprocess(options.preprocess or "xception", options.resize or "bilinear", options.crop or "center")
    except ValueError as exc:
        raise InputError(str(exc)) from None
    class_names(options)
    if options.weights == "random":
        if options.input_hw and options.input_hw[0] != options.input_hw[1]:
            raise InputError(f"INPUT_SIZE={options.input_hw[0]}x{options.input_hw[1]}: WEIGHTS=random builds a "
                             f"square Xception; give one number (e.g. INPUT_SIZE=299)")
        check_size(options.input_size)
        if options.num_classes < 2:
            raise InputError(f"CLASSES={options.num_classes} must be 2 or more")
    for what, folder in (("CALIB", options.calib_dir), ("EVAL", options.eval_dir)):
        if folder is not None:
            folder_images(Path(folder), f"{what}=")


def class_names(options: CompileOptions) -> tuple[str, ...]:
    """LABELS=: one class name per line, in the model's output order (blank lines and # comments skipped)."""
    if options.labels_file is None:
        return ()
    path = Path(options.labels_file)
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"LABELS={path}: cannot read it ({getattr(exc, 'strerror', None) or exc}); give a text "
                         f"file with one class name per line, in the model's output order") from None
    names = tuple(line.strip() for line in lines if line.strip() and not line.strip().startswith("#"))
    if not names or len(set(names)) != len(names):
        raise InputError(f"LABELS={path}: {'no class names' if not names else 'a class name appears twice'}; give "
                         f"one class name per line, in the model's output order")
    return names
