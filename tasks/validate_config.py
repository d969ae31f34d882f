"""Step 1: validate the configuration against the files it names, before any heavy work.

The step's logic: core/validate_config.py.
"""

from __future__ import annotations

from typing import Any

from prefect import task

from core.config import (
    QuantizeConfig,
    ValidatedConfig,
)
from core.validate_config import validate_config


@task(name="validate-config", retries=0, persist_result=False)
def validate_config_task(
    *,
    config: QuantizeConfig | dict[str, Any] | None = None,
    config_path: str | None = None,
    base_dir: str | None = None,
) -> ValidatedConfig:
    """Check the configuration and the files it names, all problems at once, before any heavy work."""
    from prefect.logging import get_run_logger

    validated = validate_config(config=config, config_path=config_path, base_dir=base_dir)
    get_run_logger().info(
        "Configuration %s is valid: model %s (%s), %d calibration images, %d evaluation images in %d classes",
        validated.source,
        validated.config.source_keras_model,
        validated.model_format,
        validated.calibration_image_count,
        validated.evaluation_image_count,
        len(validated.class_names),
    )
    return validated
