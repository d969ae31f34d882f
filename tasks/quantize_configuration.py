"""Batch step: run the quantize-and-evaluate flow for one configuration on whichever Dask worker runs
this task, and report what it came to. It never raises: one configuration's failure is its own."""

from __future__ import annotations

from prefect import task

from core.batch.summary import outcome


def quantize_configuration(*, config_path: str, progress: bool = False) -> dict:
    from flows.quantize_evaluate import quantize_evaluate

    return outcome(config_path, quantize_evaluate(config_path=config_path, progress=progress, return_state=True))


@task(name="quantize-configuration", task_run_name="quantize-configuration-{config_path}", persist_result=False)
def quantize_configuration_task(*, config_path: str, progress: bool = False) -> dict:
    """Run the quantize-and-evaluate flow for one configuration; never raises."""
    return quantize_configuration(config_path=config_path, progress=progress)
