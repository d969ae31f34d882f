"""Repair step, one trial: quantize the model again with one recipe of the repair ladder (core/repair/ladder.py),
evaluate the result on the tuning images, and, when it stays within the budget, check that the target takes
it (the IMX500 converter's fit, or Vela's compile for an Ethos-U).

Each trial is its own cached task: a rerun of the search reuses every trial that finished.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from core.build.build_model import build_model
from core.build.equalization import CannotEqualize, equalize, prediction_agreement
from core.build.records import BuiltModel, QuantizedModel
from core.build.residual_equalization import equalize_residual_streams
from core.data.load_calibration_set import load_calibration_set
from core.errors import StepError
from core.evaluate.evaluate_model import evaluate_model, scored
from core.evaluate.models import load_keras_model
from core.kinds.registry import kind_named
from core.repair.ladder import MIN_EQUALIZATION_AGREEMENT
from core.repair.records import RepairRecipe, RepairTrial, TrialInputs, deliverable, describe_error
from core.targets.compile_for_ethos_u import compile_for_ethos_u
from core.targets.compile_for_imx500 import compile_for_imx500, converter_and_java
from core.targets.devices import imx500_problem, target_for, within_budget
from core.targets.records import EthosUReport, Imx500Report

STREAM_STATISTICS_IMAGES = 256  # calibration images that measure a residual stream's channels

log = logging.getLogger(__name__)


class _Equalized(NamedTuple):
    path: str
    agreement: float  # with the original's predictions on the tuning images
    description: str
    residual_streams: int


def _equalized_model(
    model_path: str, images_path: str, calibration_path: str, out_dir: Path, allow_unsafe_code: bool, residual: bool
) -> _Equalized:
    """The float model after cross-layer equalization (and, with `residual`, its residual streams rescaled,
    measured on calibration images), saved; what was done, and how well it keeps the float predictions."""
    original = load_keras_model(model_path, allow_unsafe_code)
    equalized, report = equalize(original, allow_unsafe_code=allow_unsafe_code)
    description, streams = report.describe(), 0
    if residual:
        calibration = np.load(calibration_path, mmap_mode="r")
        equalized, streams_report = equalize_residual_streams(
            equalized, np.asarray(calibration[:STREAM_STATISTICS_IMAGES]), allow_unsafe_code=allow_unsafe_code
        )
        description, streams = f"{description}; {streams_report.describe()}", len(streams_report.streams)
    images = np.load(images_path, mmap_mode="r")
    agreement = prediction_agreement(original, equalized, np.asarray(images)).agreement
    path = out_dir / "model_equalized.keras"
    equalized.save(path)
    return _Equalized(str(path), agreement, description, streams)


class _Trial:
    """A trial under way: what it has found so far, and the step it is at (its record names the step that raised)."""

    def __init__(self, recipe: RepairRecipe) -> None:
        self.recipe = recipe
        self.started = time.perf_counter()
        self.step = "starting"
        self.equalization: str | None = None  # what the equalization did, in words
        self.agreement: float | None = None  # the equalized float model's with the original's predictions
        self.measured: dict[str, Any] = {}  # the model made and its score, once evaluated

    def record(self, **found: Any) -> RepairTrial:
        return RepairTrial(
            recipe=self.recipe,
            seconds=time.perf_counter() - self.started,
            equalization=self.equalization,
            equalization_agreement=self.agreement,
            **found,
        )

    def failed(self, reason: str, error: BaseException | None = None) -> RepairTrial:
        """Not qualified, keeping what was measured before (a compiler that crashes on a model within the budget)."""
        unmeasured = dict(tuning_top_1=None, tuning_drop=None, within_budget=False)
        return self.record(
            **{**unmeasured, **self.measured},
            deployable=False,
            qualifies=False,
            reason=reason,
            error=None if error is None else describe_error(error),
        )


def try_repair(*, recipe: RepairRecipe, inputs: TrialInputs, out_dir: Path) -> RepairTrial:
    """The recipe's model, its Top-1 on the tuning images and, within the budget, the target's verdict. Whatever a
    step raises (equalization, MCT, the converter, the evaluation, a compiler; an interrupt excepted) ends this trial
    only: it is recorded as failed, naming the step and the error, and the search goes on with the next."""
    trial = _Trial(recipe)
    try:
        return _run(trial, inputs, Path(out_dir))
    except Exception as exc:  # any type: a library's or our own bug on this model is this trial's failure
        log.warning("Repair trial %s failed while %s", recipe.name, trial.step, exc_info=exc)
        return trial.failed(f"the trial failed while {trial.step}: {describe_error(exc)}", exc)


def _equalization_refused(recipe: RepairRecipe, equalized: _Equalized) -> str | None:
    """Why the equalized model is not used, if it is not."""
    if recipe.residual and not equalized.residual_streams:
        return f"no residual stream could be rescaled, so this rung adds nothing: {equalized.description}"
    if equalized.agreement < MIN_EQUALIZATION_AGREEMENT:
        changed = f"{100 * (1 - equalized.agreement):.1f}%"
        return f"equalization changed the float predictions on {changed} of the tuning images: not used"
    return None


def _run(trial: _Trial, p: TrialInputs, out_dir: Path) -> RepairTrial:
    """The trial's steps, in order; `trial.step` says which is running."""
    recipe = trial.recipe
    settings = p.build
    if recipe.equalize:
        trial.step = "equalizing the float model"
        try:
            equalized = _equalized_model(
                settings.model_path,
                p.tuning_images_path,
                p.calibration_path,
                out_dir,
                settings.allow_unsafe_code,
                residual=recipe.residual,
            )
        except CannotEqualize as exc:
            return trial.failed(f"equalization cannot rewrite this model: {exc}", exc)
        trial.agreement, trial.equalization = equalized.agreement, equalized.description
        if refused := _equalization_refused(recipe, equalized):
            return trial.failed(refused)
        settings = settings.model_copy(update={"model_path": equalized.path})
    calibration_path = p.calibration_path
    if recipe.calibration_factor > 1:
        trial.step = "drawing more calibration images"
        more = p.calibration_source.arguments(iteration_factor=recipe.calibration_factor)
        calibration_path = load_calibration_set(**more, out_dir=out_dir, progress=False).path
    trial.step = "making the recipe's model"
    try:
        made = build_model(
            recipe.build_recipe(p.error_method), settings, calibration_path=calibration_path, out_dir=out_dir
        )
    except StepError as exc:
        return trial.failed(f"the recipe failed: {exc}", exc)
    if made.unsupported is not None:
        return trial.failed(f"the recipe failed: {made.unsupported.reason}")
    built, quantized = made.model, made.quantized
    made_model = deliverable(built, quantized)
    assert made_model is not None, "build_model makes a TFLite model, an MCT model or says why not"
    name, path = made_model
    trial.step = f"evaluating {name} on the tuning images"
    evaluation = scored(
        evaluate_model(
            model_name=name,
            model_path=path,
            images_path=p.tuning_images_path,
            labels_path=p.tuning_labels_path,
            batch_size=p.evaluation_batch_size,
            progress=False,
            class_count=p.class_count,
            task=p.task,
        )
    )
    drop = p.baseline_score - evaluation.score
    within = within_budget(drop, p.max_accuracy_drop)
    trial.measured = dict(
        tuning_top_1=evaluation.score,
        tuning_drop=drop,
        within_budget=within,
        model=built,
        quantized=quantized,
        size_bytes=Path(path).stat().st_size,
        tuning_evaluation=evaluation,
    )
    if not within:
        return trial.record(
            **trial.measured,
            deployable=False,
            qualifies=False,
            reason=f"{kind_named(p.task).score_label} drop {drop:.4f} on the tuning images exceeds the budget "
            f"{p.max_accuracy_drop:.4f}",
        )
    trial.step = "checking that the target takes it"
    deployable, why, hardware = _deployable(quantized, built, p.target_device, p.ethos_u_accelerator, out_dir)
    return trial.record(**trial.measured, **hardware, deployable=deployable, qualifies=deployable, reason=why)


def _deployable(
    quantized: QuantizedModel | None,
    built: BuiltModel | None,
    target_device: str | None,
    accelerator: str,
    out_dir: Path,
) -> tuple[bool, str, dict[str, Imx500Report | EthosUReport]]:
    """(the target takes it, why, the compiler's report) for a model within the budget. A model with no TFLite (MCT's
    with 16-bit activations) runs on the IMX500 only, so Sony's converter judges it whatever the target."""
    target = target_for(target_device)
    if target.compiler == "imx500_converter" or built is None:
        if quantized is None:
            return False, "the IMX500 takes MCT models only", {}
        converter, java = converter_and_java()
        report = compile_for_imx500(
            quantized_keras_path=quantized.path, out_dir=out_dir, converter=converter, java=java
        )
        if report.skipped:
            return (
                False,
                f"within the budget, but the IMX500 fit cannot be checked: {report.reason}",
                {"imx500": report},
            )
        problem = imx500_problem(report.as_results())
        why = f"within the budget, but {problem}" if problem else "within the budget and fits the IMX500"
        return problem is None, why, {"imx500": report}
    if target.compiler == "vela":
        assert built is not None
        vela = compile_for_ethos_u(
            model_path=built.path, variant=built.variant, accelerator=accelerator, out_dir=out_dir
        )
        if target.problem({"ethos_u": vela.as_results()}):
            return False, f"within the budget, but not for Ethos-U: {vela.reason}", {"ethos_u": vela}
        share = f"{100 * (vela.npu_share or 0):.0f}% of operators on the NPU"
        return True, f"within the budget; Vela compiled it for {accelerator} ({share})", {"ethos_u": vela}
    return True, "within the budget (an integer TFLite model)", {}
