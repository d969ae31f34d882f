"""Step: for a model that lost more Top-1 than `max_accuracy_drop`, find which layers lost it and why
(core/analysis/layer_analysis.py): MCT's XQuant for an MCT model, TensorFlow's QuantizationDebugger for an integer model
of the converter; per Keras layer the loss, the output range, the channels' range spread, and the causes in
words, worst layer first.

The step's logic: core/analysis/analyse_layers.py.
"""

from __future__ import annotations

import time

from prefect import task

from core.analysis.analyse_layers import analyse_layers
from core.analysis.records import LayerAnalysis
from core.build.records import BuiltModel
from core.caching import ContentCachePolicy
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir


@task(
    name="analyse-layers",
    task_run_name="analyse-layers-{model_name}",
    cache_policy=ContentCachePolicy(
        file_inputs=("model", "float_model_path", "calibration_path", "evaluation_images_path")
    ),
    persist_result=True,
    **RETRY_OPTIONS,
)
def analyse_layers_task(
    *,
    model_name: str,
    model: BuiltModel,
    float_model_path: str,
    calibration_path: str,
    evaluation_images_path: str,
    allow_unsafe_code: bool = False,
) -> LayerAnalysis:
    """Which layers of a model that lost too much accuracy lost it, and why: per layer, worst first."""
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    analysis = analyse_layers(
        model_name=model_name,
        model=model,
        float_model_path=float_model_path,
        calibration_path=calibration_path,
        evaluation_images_path=evaluation_images_path,
        out_dir=new_work_dir("analysis"),
        allow_unsafe_code=allow_unsafe_code,
    )
    get_run_logger().info(
        "%s (%s, %.1f s): %s", model_name, analysis.method, time.perf_counter() - started, analysis.summary
    )
    return analysis
