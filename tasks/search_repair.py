"""Repair step: when quantization cost more accuracy than `max_accuracy_drop` (or `repair` is 'always'),
climb the repair ladder (core/repair/ladder.py), one cached trial per recipe (tasks/try_repair.py), and stop at the
first model the target takes within the budget, or when `repair_max_trials` or `repair_time_budget_s` runs out.

The step's logic: core/repair/search_repair.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from prefect import State, task
from prefect.exceptions import CancelledRun
from prefect.futures import PrefectTaskRunFuture, wait

from core.analysis.records import LayerAnalysis
from core.build.records import BuiltModel
from core.config import QuantizeConfig
from core.data.records import CalibrationSet, EvaluationSet
from core.kinds.records import Evaluation
from core.kinds.registry import kind_named
from core.repair.records import RepairOutcome, RepairRecipe, RepairTrial, TrialInputs
from core.repair.search_repair import RunTrials, search_repair
from core.retry import RETRY_OPTIONS
from core.runners import RunnerConfig, make_task_runner
from core.storage import new_work_dir
from core.targets.records import HardwareReports
from tasks.try_repair import try_repair_task


def _settled(recipe: RepairRecipe, state: State) -> tuple[RepairTrial, bool]:
    """A finished trial task's trial, and whether it was cached. A task that failed (its retry too) or crashed is a
    failed trial, and the search goes on; a cancelled one stops the search."""
    if state.is_cancelled():
        raise CancelledRun(f"the repair trial {recipe.name} was cancelled")
    try:
        return state.result(), state.name == "Cached"
    except Exception as exc:  # what the task raised, or why it has no result
        return RepairTrial.crashed(recipe, exc), False


def _settled_future(recipe: RepairRecipe, future: PrefectTaskRunFuture) -> tuple[RepairTrial, bool]:
    """A trial submitted to the Dask workers: its trial, or, when every worker that ran it died (Dask's KilledWorker)
    or the cluster lost it, a failed trial."""
    try:
        future.result(raise_on_failure=False)  # waits, and keeps the task's final state
    except Exception as exc:
        return RepairTrial.crashed(recipe, exc), False
    return _settled(recipe, future.state)


def _trial_in_its_own_task(recipe: RepairRecipe, inputs: TrialInputs) -> tuple[RepairTrial, bool]:
    return _settled(recipe, try_repair_task(recipe=recipe, inputs=inputs, return_state=True))


@contextmanager
def _trial_runner(runner: RunnerConfig) -> Iterator[tuple[RunTrials, int]]:
    """How the trials run, and how many at once: here, one after the other; with a Dask runner, on its workers,
    as many as it has (its cluster started only when a trial is due)."""
    if not runner.distributed:
        yield (lambda recipes, inputs: [_trial_in_its_own_task(recipe, inputs) for recipe in recipes]), 1
        return
    with ExitStack() as stack:
        remote = None

        def on_workers(recipes: list[RepairRecipe], inputs: TrialInputs) -> list[tuple[RepairTrial, bool]]:
            nonlocal remote
            remote = remote or stack.enter_context(make_task_runner(runner))
            futures = [remote.submit(try_repair_task, {"recipe": recipe, "inputs": inputs}) for recipe in recipes]
            wait(futures)
            return [_settled_future(recipe, future) for recipe, future in zip(recipes, futures, strict=True)]

        yield on_workers, runner.workers


@task(name="search-repair", persist_result=False, **RETRY_OPTIONS)
def search_repair_task(
    *,
    config: QuantizeConfig,
    class_count: int,
    calibration: CalibrationSet,
    evaluation_set: EvaluationSet,
    evaluations: dict[str, Evaluation],
    built: list[BuiltModel],
    hardware: HardwareReports,
    layer_analysis: dict[str, LayerAnalysis],
    runner: RunnerConfig = RunnerConfig(),
) -> RepairOutcome:
    """When quantization lost too much accuracy: try the repair ladder's recipes, cheapest first, each its own
    cached task, until one gives a model the target takes within the budget."""
    from prefect.logging import get_run_logger

    with _trial_runner(runner) as (run_trials, parallel_trials):
        outcome = search_repair(
            config=config,
            class_count=class_count,
            calibration=calibration,
            evaluation_set=evaluation_set,
            evaluations=evaluations,
            built=built,
            hardware=hardware,
            out_dir=new_work_dir("repair-split"),
            run_trials=run_trials,
            parallel_trials=parallel_trials,
            layer_analysis=layer_analysis,
        )
    logger = get_run_logger()
    if not outcome.needed:
        logger.info("Repair: %s", outcome.why)
    elif outcome.chosen_trial is not None and outcome.reporting is not None:
        logger.info(
            "Repair: %s; chose %s after %d trial(s): %s %.4f on the %d reporting images (float %.4f)",
            outcome.why,
            outcome.chosen_trial.recipe.name,
            len(outcome.trials),
            kind_named(config.task).score_label,
            outcome.reporting.score,
            outcome.reporting_image_count,
            outcome.baseline_reporting_top_1,
        )
    else:
        logger.warning("Repair: %s; no trial qualified (%s)", outcome.why, outcome.stopped_because)
    return outcome
