"""The records of repair/ (see core/records.py for what a record is)."""

from __future__ import annotations

from typing import Any, Literal

from core.analysis.layer_causes import CauseKind
from core.analysis.records import ScoreSensitivity
from core.build.recipes import BuildSettings, Recipe
from core.build.records import BuiltModel, QuantizedModel
from core.build.variants import REPAIRED_KERAS_MODEL, REPAIRED_MODEL
from core.data.records import CalibrationSource
from core.kinds.records import Evaluation
from core.records import Record
from core.targets.records import EthosUReport, Imx500Report


class RepairRecipe(Record):
    """One rung of the ladder: what is changed before quantizing again."""

    name: str
    description: str
    builder: Literal["mct", "converter"]
    equalize: bool = False
    residual: bool = False  # also rescale the residual streams (core/build/residual_equalization.py)
    error_method: str | None = None
    z_threshold: float | None = None
    shift_negative_params_search: bool = False
    calibration_factor: int = 1
    gptq_epochs: int | None = None
    converter_variant: str | None = None  # for the converter: full_int8 (Ethos-U) or int8_float_io
    cures: tuple[CauseKind, ...] = ()  # the analysis's causes this recipe is the cure for (core/repair/ladder.py)
    # MCT: 16-bit activations on a group of layers the search grows (core/repair/precision_search.py) ...
    precision: bool = False
    sixteen_bit_activations: tuple[str, ...] = ()  # ... and, in each of its trials, the group

    def build_recipe(self, error_method: str) -> Recipe:
        """How the model is made once the float model is equalized and the calibration drawn (`error_method`: the
        configuration's, for a rung that does not choose its own)."""
        if self.builder == "converter":
            return Recipe(variant=self.converter_variant or "full_int8")  # type: ignore[arg-type]  # a catalogue name
        return Recipe(
            variant="mct_gptq" if self.gptq_epochs else "mct_ptq",
            error_method=self.error_method or error_method,
            gptq_epochs=self.gptq_epochs,
            z_threshold=self.z_threshold,
            shift_negative_params_search=self.shift_negative_params_search,
            sixteen_bit_activations=self.sixteen_bit_activations,
        )


class TrialInputs(Record):
    """What every trial of one search shares: the model, the calibration, the target, the tuning images."""

    build: BuildSettings
    error_method: str  # the configuration's: a rung may choose another
    calibration_path: str
    calibration_source: CalibrationSource  # to draw more calibration images
    target_device: str | None
    ethos_u_accelerator: str
    tuning_images_path: str
    tuning_labels_path: str
    evaluation_batch_size: int
    class_count: int
    task: str  # the kind of model, which scores the trials
    baseline_score: float  # the float model's on the tuning images
    max_accuracy_drop: float


def describe_error(exc: BaseException) -> str:
    """An exception as a trial's record gives it: its type and its message's first line."""
    try:
        message = str(exc)
    except Exception:  # a message that cannot be made (a broken __str__) must not fail the search
        message = ""
    first_line = next((line.strip() for line in message.splitlines() if line.strip()), "")
    return f"{type(exc).__name__}: {first_line}" if first_line else type(exc).__name__


def deliverable(model: BuiltModel | None, quantized: QuantizedModel | None) -> tuple[str, str] | None:
    """The model a trial made, as (its row's name, its file): the TFLite model, or MCT's Keras model when there is no
    TFLite (16-bit activations, which Sony's IMX500 converter takes and MCT's TFLite export cannot write)."""
    if model is not None:
        return REPAIRED_MODEL, model.path
    if quantized is not None:
        return REPAIRED_KERAS_MODEL, quantized.path
    return None


class RepairTrial(Record):
    """What a recipe gave: the model, its Top-1 on the tuning images, and whether the target takes it."""

    recipe: RepairRecipe
    chosen_because: str = ""  # why the search tried this recipe when it did
    tuning_top_1: float | None
    tuning_drop: float | None
    within_budget: bool
    deployable: bool
    qualifies: bool
    reason: str
    seconds: float
    size_bytes: int | None = None
    equalization: str | None = None  # what the equalization did and left, in words
    equalization_agreement: float | None = None
    model: BuiltModel | None = None
    quantized: QuantizedModel | None = None
    imx500: Imx500Report | None = None
    ethos_u: EthosUReport | None = None
    cached: bool = False
    ran: bool = True  # False: the rung had nothing to try on this model (RepairTrial.not_run)
    error: str | None = None  # the exception that ended the trial, when one did (describe_error)
    # The trial's model on the tuning images, for the search to measure its drop's noise (core/repair/noise.py).
    tuning_evaluation: Evaluation | None = None
    # Set by the search: the drop's sampling noise on the tuning images, and, for a trial that qualified there,
    # its drop on the reporting images, which it must hold on to be chosen.
    drop_spread: float | None = None
    drop_bound: float | None = None
    reporting_score: float | None = None
    reporting_drop: float | None = None
    held_on_reporting: bool | None = None

    @property
    def deliverable(self) -> tuple[str, str] | None:
        return deliverable(self.model, self.quantized)

    @property
    def decided_on(self) -> str | None:
        """Which images decided this trial's verdict."""
        if not self.ran or self.tuning_drop is None:
            return None
        return "tuning" if self.held_on_reporting is None else "tuning and reporting"

    @classmethod
    def not_run(
        cls, recipe: RepairRecipe, chosen_because: str, reason: str, error: BaseException | None = None
    ) -> RepairTrial:
        """A rung with nothing to try on this model (or that could not find out: `error`), recorded with why."""
        return cls(
            recipe=recipe,
            chosen_because=chosen_because,
            tuning_top_1=None,
            tuning_drop=None,
            within_budget=False,
            deployable=False,
            qualifies=False,
            reason=reason,
            seconds=0.0,
            ran=False,
            error=None if error is None else describe_error(error),
        )

    @classmethod
    def crashed(cls, recipe: RepairRecipe, exc: BaseException) -> RepairTrial:
        """A trial that left no record of its own: its task failed outside the trial's steps (its retry too), or
        the process running it died."""
        error = describe_error(exc)
        return cls(
            recipe=recipe,
            tuning_top_1=None,
            tuning_drop=None,
            within_budget=False,
            deployable=False,
            qualifies=False,
            reason=f"the trial's run failed: {error}",
            seconds=0.0,
            error=error,
        )

    def summary(self) -> dict[str, Any]:
        """As results.json's repair.trials lists it."""
        return {
            "recipe": self.recipe.name,
            "changed": self.recipe.description,
            "sixteen_bit_activations": list(self.recipe.sixteen_bit_activations) or None,
            "chosen_because": self.chosen_because,
            "tuning_top_1": self.tuning_top_1,
            "tuning_drop": _rounded(self.tuning_drop),
            "tuning_drop_spread": _rounded(self.drop_spread),
            "tuning_drop_bound": _rounded(self.drop_bound),
            "reporting_score": _rounded(self.reporting_score),
            "reporting_drop": _rounded(self.reporting_drop),
            "held_on_reporting": self.held_on_reporting,
            "decided_on": self.decided_on,
            "size_bytes": self.size_bytes,
            "imx500_fits": self.imx500.fits if self.imx500 and not self.imx500.skipped else None,
            "npu_share": self.ethos_u.npu_share if self.ethos_u and self.ethos_u.compiled else None,
            "equalization": self.equalization,
            "equalization_agreement": self.equalization_agreement,
            "qualifies": self.qualifies,
            "reason": self.reason,
            "seconds": round(self.seconds, 2),
            "cached": self.cached,
            "ran": self.ran,
            "error": self.error,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


class RepairOutcome(Record):
    """The search: whether it ran and why, every trial, and the chosen one with its Top-1 on unseen images."""

    mode: str
    needed: bool
    why: str
    target_device: str | None
    max_accuracy_drop: float
    confidence: float = 0.5  # of the bound a trial's tuning drop must keep within the budget
    tuning_image_count: int = 0
    reporting_image_count: int = 0
    baseline_tuning_top_1: float | None = None
    baseline_reporting_top_1: float | None = None
    trials: list[RepairTrial] = []
    chosen: int | None = None  # index into trials
    closest: int | None = None
    reporting: Evaluation | None = None  # the chosen model on the images the search never saw
    baseline_reporting: Evaluation | None = None  # the float model on the same images
    stopped_because: str | None = None
    score_ranking: ScoreSensitivity | None = None  # the candidates ranked by the score itself, when measured
    seconds: float = 0.0

    @property
    def rejected_on_reporting(self) -> list[str]:
        """The trials that qualified on the tuning images and failed on the reporting ones: when there are any, the
        reporting images took part in choosing, and the chosen model's figure on them is not an unseen one."""
        return [t.recipe.name for t in self.trials if t.held_on_reporting is False]

    @property
    def chosen_trial(self) -> RepairTrial | None:
        return None if self.chosen is None else self.trials[self.chosen]

    @property
    def repaired(self) -> tuple[str, str] | None:
        """The chosen model as (its row's name, its file), or None."""
        chosen = self.chosen_trial
        return chosen.deliverable if chosen else None

    def summary(self) -> dict[str, Any]:
        chosen = self.chosen_trial
        closest = None if self.closest is None else self.trials[self.closest]
        summary: dict[str, Any] = {
            "mode": self.mode,
            "ran": self.needed,
            "why": self.why,
            "target_device": self.target_device,
            "max_accuracy_drop": self.max_accuracy_drop,
            "confidence": self.confidence,
            "tuning_image_count": self.tuning_image_count,
            "reporting_image_count": self.reporting_image_count,
            "float_top_1_tuning": self.baseline_tuning_top_1,
            "float_top_1_reporting": self.baseline_reporting_top_1,
            "trials": [t.summary() for t in self.trials],
            "chosen": chosen.recipe.name if chosen else None,
            "chosen_model": self.repaired[0] if self.repaired else None,
            "closest": closest.recipe.name if closest else None,
            "stopped_because": self.stopped_because,
            "rejected_on_reporting": self.rejected_on_reporting,
            "score_ranking": None if self.score_ranking is None else self.score_ranking.summary(),
            # True when no decision was taken on the reporting images but the chosen model's check: its figure
            # there is one on unseen images.
            "reporting_unseen": not self.rejected_on_reporting,
            "seconds": round(self.seconds, 2),
        }
        if chosen and self.reporting is not None and self.baseline_reporting_top_1 is not None:
            summary["chosen_top_1_tuning"] = chosen.tuning_top_1
            summary["chosen_top_1_reporting"] = self.reporting.score
            drop = self.baseline_reporting_top_1 - self.reporting.score
            summary["chosen_drop_reporting"] = round(drop, 6)
        return summary
