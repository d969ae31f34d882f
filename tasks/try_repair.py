"""Repair step, one trial: quantize the model again with one recipe of the repair ladder (core/repair/ladder.py),
evaluate the result on the tuning images, and, when it stays within the budget, check that the target takes
it (the IMX500 converter's fit, or Vela's compile for an Ethos-U).

The step's logic: core/repair/try_repair.py.
"""

from __future__ import annotations

from prefect import task

from core.caching import ContentCachePolicy
from core.kinds.registry import kind_named
from core.repair.ladder import TRIAL_FILE_INPUTS
from core.repair.records import RepairRecipe, RepairTrial, TrialInputs
from core.repair.try_repair import try_repair
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir
from core.targets.compile_for_imx500 import converter_and_java
from core.targets.devices import target_for


def _verdict_environment(inputs: dict) -> tuple[str | None, str | None] | None:
    """What a trial's verdict depends on besides its inputs: the IMX500 converter and Java installed (for the IMX500,
    and for a model with 16-bit activations, which only the IMX500 runs)."""
    needs_converter = target_for(inputs["inputs"].target_device).compiler == "imx500_converter" or bool(
        inputs["recipe"].sixteen_bit_activations
    )
    return converter_and_java() if needs_converter else None


def _run_name() -> str:
    from prefect.runtime import task_run

    return f"try-repair-{task_run.parameters['recipe'].name}"


@task(
    name="try-repair",
    task_run_name=_run_name,
    cache_policy=ContentCachePolicy(
        file_inputs=TRIAL_FILE_INPUTS,
        # The IMX500 verdict depends on the converter installed.
        environment=_verdict_environment,
    ),
    persist_result=True,
    **RETRY_OPTIONS,
)
def try_repair_task(*, recipe: RepairRecipe, inputs: TrialInputs) -> RepairTrial:
    """One repair trial: quantize again with one recipe, evaluate on the tuning images, check the target takes it."""
    from prefect.logging import get_run_logger

    trial = try_repair(recipe=recipe, inputs=inputs, out_dir=new_work_dir("repair"))
    get_run_logger().info(
        "Repair trial %s: tuning %s %s, %s (%.1f s)",
        trial.recipe.name,
        kind_named(inputs.task).score_label,
        "-" if trial.tuning_top_1 is None else f"{trial.tuning_top_1:.4f}",
        trial.reason,
        trial.seconds,
    )
    return trial
