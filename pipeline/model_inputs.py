"""The model and its images, prepared once per command: the weights resolved, the build stage (Keras model, float
reference outputs on the eval set), and calibration when int8 is asked for. ``prepare`` returns a frozen
``Prepared``; compile, analyze and tune all start from it. Must hold: a user's model evaluated on images not its
own, or a float model whose outputs look meaningless, is said in a banner before anything is built from it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.cache import CacheEntry
from pipeline.compile_options import CompileOptions, class_names
from pipeline.datasets import ImageSource
from pipeline.progress import Progress
from pipeline.sources import ModelSource, resolve
from pipeline.stage_runner import StageRunner
from pipeline.stages import build, calibrate


@dataclass(frozen=True)
class Prepared:
    source: ModelSource
    built: CacheEntry                   # the build stage: model.keras, model.json, eval.npz
    calibrated: CacheEntry | None       # the calibrate stage (calib.npz, calib.json); None without int8
    info: dict                          # model.json: input shape, classes, preprocessing, eval set
    name: str                           # "xception", or the user's file name made safe
    representative: bool                # False: a user's model evaluated on the digits (figures not its own)

    def file(self, name: str) -> Path:
        """model.keras, model.json, eval.npz (build) or calib.npz, calib.json (calibrate)."""
        entry = self.calibrated if name.startswith("calib.") else self.built
        return entry.file(name)

    @property
    def gates_key(self) -> str:
        """<name>-<weights kind> (xception-reference): the model's entry in benchmarks/gates.toml."""
        return f"{self.name}-{self.source.kind}"

    @property
    def shape_id(self) -> str:
        """<name>-<height>x<width>-<classes> (xception-299x299-1000): keys tuning records by the model's shape."""
        _, height, width, _ = self.info["input_shape"]
        return f"{self.name}-{height}x{width}-{self.info['num_classes']}"


def prepare(runner: StageRunner, options: CompileOptions, calibrate_too: bool, progress: Progress) -> Prepared:
    """The model source, the build stage and (``calibrate_too``: the target has int8 artifacts) calibration."""
    opts = options
    source = resolve(opts.weights, Path(opts.reference_dir or opts.cache_dir / "reference"), progress)
    name = "xception" if source.kind != "file" else safe_name(source.file.stem)
    eval_source = (ImageSource("folder", folder=str(opts.eval_dir)) if opts.eval_dir
                   else ImageSource("digits", split="test"))
    representative = bool(opts.eval_dir) or source.kind == "reference"
    if not representative:
        progress.banner([
            "No EVAL= folder: this model's accuracy figures are measured on the DIGITS test split,",
            "not on images from its own domain. They show only how int8 agrees with float on digits;",
            "they say nothing about your model's accuracy. Give EVAL=dir of your own images",
            f"(labels from class sub-folders, optional){' - CALIB= is for calibration only' if opts.calib_dir else ''}.",
        ])
    build_inputs = {"model": source.file} if source.file else {}
    if opts.eval_dir:
        build_inputs["eval_images"] = Path(opts.eval_dir)
    built = runner.stage(build, build.Config(
        source=source.kind, eval=eval_source, eval_n=opts.eval_n,
        input_size=opts.input_size if source.kind == "random" else 0,
        input_hw=tuple(opts.input_hw) if opts.input_hw and source.kind == "file" else (),
        num_classes=opts.num_classes if source.kind == "random" else 0,
        seed=opts.seed, labels_known=source.kind == "reference", preprocess=opts.preprocess,
        resize=opts.resize, crop=opts.crop, class_names=class_names(opts)), build_inputs, "build")
    info = json.loads(built.file("model.json").read_text())
    progress.log(f"  preprocessing: {info['preprocess']['why']}")
    sanity = info["eval"]["sanity"]
    if sanity["status"] == "suspect":
        progress.banner([
            "THE FLOAT MODEL'S OUTPUTS LOOK MEANINGLESS on the eval set:",
            f"  {sanity['why']}.",
            "int8 agreeing with such a model proves nothing, and `make gate` fails on it.",
            f"Check the preprocessing (PREPROCESS=, now {info['preprocess']['name']}), the eval images",
            "(EVAL=, labels from class folders) and the model itself (its own model.evaluate).",
        ])
    calibrated = None
    if calibrate_too:
        calib_source = (ImageSource("folder", folder=str(opts.calib_dir)) if opts.calib_dir
                        else ImageSource("digits", split="calib"))
        if calib_source.kind == "digits" and source.kind != "reference":
            progress.warn("calibrating a non-reference model on the digits calibration split; "
                          "pass CALIB=dir with images from the model's own domain")
        calib_inputs = {"model_info": built.file("model.json")}
        if opts.calib_dir:
            calib_inputs["images"] = Path(opts.calib_dir)
        calibrated = runner.stage(calibrate, calibrate.Config(calib_source, opts.calib_n, opts.seed),
                                  calib_inputs, "calibrate")
    return Prepared(source, built, calibrated, info, name, representative)


def safe_name(stem: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)
    return cleaned or "model"
