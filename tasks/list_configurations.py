"""Batch step 1: the configurations to run: the files given, or every `configuration.json`
below a folder (one folder per model, as in `configs/<model>/configuration.json`).

The step's logic: core/batch/list_configurations.py.
"""

from __future__ import annotations

from prefect import task

from core.batch.list_configurations import list_configurations


@task(name="list-configurations", retries=0, persist_result=False)
def list_configurations_task(*, config_dir: str | None = None, config_paths: list[str] | None = None) -> list[str]:
    from prefect.logging import get_run_logger

    """The configuration files to run: those given, and every configuration.json below config_dir."""
    paths = list_configurations(config_dir=config_dir, config_paths=config_paths)
    get_run_logger().info("%d configurations to quantize and evaluate:\n%s", len(paths), "\n".join(paths))
    return paths
