"""Repair step: when quantization cost more accuracy than `max_accuracy_drop` (or `repair` is 'always'),
climb the repair ladder (core/repair/ladder.py), one cached trial per recipe (tasks/try_repair.py), and stop at the
first model the target takes within the budget, or when `repair_max_trials` or `repair_time_budget_s` runs out.

No selection bias: the evaluation images are split (seeded; a classifier's stratified by class) into a tuning
half, on which the trials are judged, and a reporting half, on which the chosen model's score (a classifier's
Top-1) is reported; results.json shows both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from itertools import takewhile
from pathlib import Path
from typing import Any

import numpy as np

from core.analysis.records import LayerAnalysis
from core.build.precision import sixteen_bit_layers
from core.build.recipes import BuildSettings
from core.build.records import BuiltModel
from core.build.residual_equalization import has_add
from core.build.variants import model_id
from core.config import QuantizeConfig
from core.data.records import CalibrationSet, CalibrationSource, EvaluationSet
from core.evaluate.evaluate_model import evaluate_model, scored
from core.evaluate.models import load_keras_model
from core.files import atomic_save_numpy
from core.kinds.kind import ModelKind
from core.kinds.records import Evaluation
from core.kinds.registry import kind_named
from core.repair.ladder import ANALYSIS_METHODS, TUNING_SHARE, by_causes, ladder, repair_due
from core.repair.noise import DropNoise
from core.repair.precision_search import grow_precision, ranked_candidates
from core.repair.records import RepairOutcome, RepairRecipe, RepairTrial, TrialInputs, describe_error
from core.repair.score_ranking import leading_layer, ptq_model_path, rank_by_score, why_rank_by_score
from core.targets.devices import target_for, within_budget
from core.targets.records import HardwareReports

# Runs recipes' trials, together where it can (each its own cached task; on Dask workers with a Dask runner): each
# trial, and whether it was cached, in the recipes' order. A trial whose run failed or died is returned as a failed
# trial (RepairTrial.crashed); only an interrupt or a cancelled run raises.
RunTrials = Callable[[list[RepairRecipe], TrialInputs], list[tuple[RepairTrial, bool]]]


def split_evaluation_set(evaluation_set: EvaluationSet, kind: ModelKind, seed: int, out_dir: Path) -> dict[str, str]:
    """Tuning and reporting images and their truth, as files in `out_dir` (same content for the same set), split
    as the kind of model splits them (a classifier's: stratified by class)."""
    images = np.load(evaluation_set.images_path, mmap_mode="r")
    truth = Path(evaluation_set.labels_path)
    tuning, reporting = kind.split(evaluation_set.labels_path, TUNING_SHARE, seed)
    paths = {}
    for part, indices in (("tuning", tuning), ("reporting", reporting)):
        paths[f"{part}_images"] = str(atomic_save_numpy(out_dir / f"{part}_images.npy", np.asarray(images[indices])))
        labels = out_dir / f"{part}_{truth.stem}{truth.suffix}"
        paths[f"{part}_labels"] = str(kind.subset(evaluation_set.labels_path, indices, labels))
    return paths


def sixteen_bit_candidates(config: QuantizeConfig, calibration: CalibrationSet) -> list[str]:
    """The layers MCT may give 16-bit activations under the run's TPC, in the graph's order (equalization keeps
    the layers' names)."""
    return sixteen_bit_layers(
        model_path=config.source_keras_model,
        calibration_path=calibration.path,
        batch_size=config.batch_size,
        target_platform=config.target_platform,
        allow_unsafe_code=config.allow_unsafe_model_code,
    )


def search_repair(
    *,
    config: QuantizeConfig,
    class_count: int,
    calibration: CalibrationSet,
    evaluation_set: EvaluationSet,
    evaluations: dict[str, Evaluation],
    built: list[BuiltModel],
    hardware: HardwareReports,
    out_dir: Path,
    run_trials: RunTrials,
    parallel_trials: int = 1,
    layer_analysis: dict[str, LayerAnalysis] | None = None,
) -> RepairOutcome:
    """`run_trials` runs trials (the cached tasks in a flow), up to `parallel_trials` at once: the next recipes in
    order run together, and only those up to the first that qualifies are recorded, so the outcome is the one-by-one
    search's. `layer_analysis` (by model name) chooses the first recipes: the cures of the causes it found."""
    started = time.perf_counter()
    budget = float(config.max_accuracy_drop)
    due, why = repair_due(
        mode=config.repair,
        evaluations=evaluations,
        built=built,
        hardware=hardware,
        float_tflite=config.float_tflite,
        max_accuracy_drop=budget,
        target_device=config.target_device,
    )
    outcome = dict(
        mode=config.repair,
        why=why,
        target_device=config.target_device,
        max_accuracy_drop=budget,
        confidence=float(config.repair_confidence),
    )
    if not due:
        return RepairOutcome(needed=False, **outcome)
    kind = kind_named(config.task)
    split = split_evaluation_set(evaluation_set, kind, config.seed, Path(out_dir))

    def scored_on(part: str, model_name: str, model_path: str) -> Evaluation:
        return scored(
            evaluate_model(
                model_name=model_name,
                model_path=model_path,
                images_path=split[f"{part}_images"],
                labels_path=split[f"{part}_labels"],
                batch_size=config.evaluation_batch_size,
                progress=False,
                allow_unsafe_code=config.allow_unsafe_model_code,
                class_count=class_count,
                task=config.task,
            )
        )

    float_tuning = scored_on("tuning", "keras", config.source_keras_model)
    float_reporting = scored_on("reporting", "keras", config.source_keras_model)
    baseline_tuning = float_tuning.score
    noise = DropNoise(kind, float_tuning, split["tuning_labels"], seed=config.seed)
    inputs = TrialInputs(
        build=BuildSettings.of(config),
        error_method=config.mct_error_method,
        calibration_path=calibration.path,
        calibration_source=CalibrationSource.of(config),
        target_device=config.target_device,
        ethos_u_accelerator=config.ethos_u_accelerator,
        tuning_images_path=split["tuning_images"],
        tuning_labels_path=split["tuning_labels"],
        evaluation_batch_size=config.evaluation_batch_size,
        class_count=class_count,
        task=config.task,
        baseline_score=baseline_tuning,
        max_accuracy_drop=budget,
    )
    trials: list[RepairTrial] = []
    spent = 0.0  # the trials' own seconds: a cached trial costs nothing
    stopped = "the ladder is exhausted"
    recipes = ladder(target_device=config.target_device, error_method=config.mct_error_method)
    if not has_add(load_keras_model(config.source_keras_model, config.allow_unsafe_model_code)):
        recipes = [recipe for recipe in recipes if not recipe.residual]  # no residual stream: nothing for them
    # The analyses of the models the target's builders make: MCT's (XQuant) for the IMX500, the converter's for an
    # Ethos-U, both with no device.
    methods = {ANALYSIS_METHODS[builder] for builder in target_for(config.target_device).builders}
    analyses = [a for a in (layer_analysis or {}).values() if a.method in methods]
    limit: str | None = None
    ran = 0  # trials run (a rung with nothing to try is recorded, not run)
    confirmed: dict[int, Evaluation] = {}  # by trial index: a chosen model's evaluation on the reporting images

    def judged(trial: RepairTrial) -> tuple[RepairTrial, Evaluation | None]:
        """The trial with its drop's noise; one that qualifies with it must then hold on the reporting images (and
        is returned with its evaluation there), or the search goes on."""
        if trial.tuning_evaluation is None or trial.tuning_drop is None:
            return trial, None
        try:
            estimate = noise.estimate(trial.tuning_evaluation, float(config.repair_confidence))
        except OSError:  # a cached trial whose detections file was cleaned away: judged on its drop alone
            return trial, None
        trial = trial.model_copy(update={"drop_spread": estimate.spread, "drop_bound": estimate.bound})
        if not trial.qualifies:
            return trial, None
        if not within_budget(estimate.bound, budget):
            unsure = (
                f"its drop {estimate.drop:.4f} on the {estimate.image_count} tuning images is within the budget "
                f"{budget:.4f}, but with their sampling noise it may be up to {estimate.bound:.4f} "
                f"({estimate.confidence:.0%} bound): not a sure cure ({trial.reason})"
            )
            return trial.model_copy(update={"qualifies": False, "reason": unsure}), None
        made = trial.deliverable
        assert made is not None, "a trial qualifies with a model"
        reporting = scored_on("reporting", *made)
        drop = float_reporting.score - reporting.score
        held = within_budget(drop, budget)
        update: dict[str, Any] = {"reporting_score": reporting.score, "reporting_drop": drop, "held_on_reporting": held}
        if not held:
            update |= {
                "qualifies": False,
                "reason": f"{trial.reason} on the tuning images, but on the {reporting.image_count} reporting images "
                f"it drops {drop:.4f}, over the budget: the search goes on",
            }
        return trial.model_copy(update=update), reporting if held else None

    def limit_reached() -> bool:
        nonlocal limit
        if ran >= config.repair_max_trials:
            limit = f"repair_max_trials ({config.repair_max_trials}) reached"
        elif spent >= config.repair_time_budget_s:
            limit = f"repair_time_budget_s ({config.repair_time_budget_s:g} s) spent"
        return limit is not None

    def run_together(batch: list[tuple[RepairRecipe, str]]) -> list[RepairTrial]:
        """The batch's trials, recorded as the one-by-one search would have: each counted against the limits in
        turn, up to the first that qualifies or the limit; none when a limit stops the search before."""
        nonlocal spent, ran
        if limit_reached():
            return []
        batch = batch[: config.repair_max_trials - ran]
        done = run_trials([recipe for recipe, _ in batch], inputs)
        recorded: list[RepairTrial] = []
        for (trial, cached), (_, why) in zip(done, batch, strict=True):
            if recorded and limit_reached():
                break
            trial, reporting = judged(trial.model_copy(update={"cached": cached, "chosen_because": why}))
            if reporting is not None:
                confirmed[len(trials) + len(recorded)] = reporting
            recorded.append(trial)
            ran += 1
            spent += 0.0 if cached else trial.seconds
            if trial.qualifies:
                break
        trials.extend(recorded)
        return recorded

    def run(recipe: RepairRecipe, why: str) -> RepairTrial | None:
        return next(iter(run_together([(recipe, why)])), None)

    candidates = _SixteenBitCandidates(config, calibration)
    ranking = None
    if why_score := why_rank_by_score(config.task, analyses):
        ptq = ptq_model_path(built)
        if ptq is not None and any(r.precision for r in recipes) and candidates.names:
            ranking = rank_by_score(
                task=config.task,
                quantized_model_path=ptq,
                candidates=candidates.names,
                images_path=split["tuning_images"],
                labels_path=split["tuning_labels"],
                batch_size=config.evaluation_batch_size,
                class_count=class_count,
            )
    ptq_drop = _ptq_drop(evaluations, config.float_tflite)
    lead = None if ptq_drop is None else leading_layer(ranking, ptq_drop, budget, config.task)
    order = by_causes(recipes, analyses, precision_leads=lead[1] if lead else None)
    while order and not limit_reached():
        recipe, why = order[0]
        found: RepairTrial | None = None
        if not recipe.precision:
            batch = list(takewhile(lambda step: not step[0].precision, order[:parallel_trials]))
            recorded = run_together(batch)
            # Trials run together after one that qualified are not recorded: should it fail on the reporting
            # images later, they come next (served from the cache).
            order = order[len(recorded) or len(batch) :]
            found = next((trial for trial in recorded if trial.qualifies), None)
        else:
            order = order[1:]
            if candidates.error is not None:  # MCT asked about the model: its failure is the rung's, not the search's
                asked = "MCT could not say which layers may take 16-bit activations"
                error = candidates.error
                trials.append(RepairTrial.not_run(recipe, why, f"{asked}: {describe_error(error)}", error=error))
                continue
            ranked = ranked_candidates(candidates.names, analyses, ranking)
            if ranked:
                found = grow_precision(recipe, why, ranked, run)
            else:
                no_layer = f"no layer may take 16-bit activations under {config.target_platform}'s TPC (MCT's answer)"
                trials.append(RepairTrial.not_run(recipe, why, no_layer))
        if found is not None and found.qualifies:
            stopped = f"{found.recipe.name} qualifies"
            break
    else:
        stopped = limit or stopped  # the ladder ran out, or a limit stopped it
    chosen = next((i for i, t in enumerate(trials) if t.qualifies), None)
    measured = [(t.tuning_drop, i) for i, t in enumerate(trials) if t.tuning_drop is not None]
    closest = chosen if chosen is not None else (min(measured)[1] if measured else None)
    reporting = None if chosen is None else confirmed[chosen]
    tuning_count = len(np.load(split["tuning_images"], mmap_mode="r"))
    if chosen is None and closest is not None and (unsure := _unsure(trials[closest], budget)):
        stopped = f"{stopped}; {unsure}"
    return RepairOutcome(
        needed=True,
        **outcome,
        tuning_image_count=tuning_count,
        reporting_image_count=evaluation_set.image_count - tuning_count,
        baseline_tuning_top_1=baseline_tuning,
        baseline_reporting_top_1=float_reporting.score,
        baseline_reporting=float_reporting,
        trials=trials,
        chosen=chosen,
        closest=closest,
        reporting=reporting,
        stopped_because=stopped,
        score_ranking=None if ranking is None else ranking.model_copy(update={"why": why_score}),
        seconds=time.perf_counter() - started,
    )


class _SixteenBitCandidates:
    """The layers MCT may give 16-bit activations, asked of MCT once, when first needed; or why it could not say."""

    def __init__(self, config: QuantizeConfig, calibration: CalibrationSet) -> None:
        self._config, self._calibration = config, calibration
        self._names: list[str] | None = None
        self._error: Exception | None = None

    def _ask(self) -> None:
        if self._names is None:
            try:
                self._names = sixteen_bit_candidates(self._config, self._calibration)
            except Exception as exc:  # recorded by the rung that needed the answer
                self._names, self._error = [], exc

    @property
    def names(self) -> list[str]:
        self._ask()
        assert self._names is not None
        return self._names

    @property
    def error(self) -> Exception | None:
        """Why MCT could not say (MCT asked first, when not yet asked)."""
        self._ask()
        return self._error


def _unsure(trial: RepairTrial, budget: float) -> str | None:
    """What to do about a trial within the budget as measured but not surely, or None."""
    if not trial.within_budget or trial.drop_bound is None or within_budget(trial.drop_bound, budget):
        return None
    return (
        f"{trial.recipe.name} is within the budget as measured ({trial.tuning_drop:.4f}) but not surely (up to "
        f"{trial.drop_bound:.4f}): more evaluation images would tell, or repair_confidence 0.5 judges the drop as "
        "measured"
    )


def _ptq_drop(evaluations: dict[str, Evaluation], float_tflite: str) -> float | None:
    """What MCT's PTQ model lost of the float model's score, when both were evaluated."""
    ptq = evaluations.get(model_id("mct_ptq", float_tflite)) or evaluations.get("keras_quantized")
    return None if ptq is None or "keras" not in evaluations else evaluations["keras"].score - ptq.score
