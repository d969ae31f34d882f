"""Step 6: evaluate one model on the shared evaluation set, scored as its kind of model scores it.

The step's logic: core/evaluate/evaluate_model.py.
"""

from __future__ import annotations

from prefect import task

from core.caching import ContentCachePolicy
from core.evaluate.evaluate_model import evaluate_model, injected_fault_key
from core.failures import ModelFailure
from core.kinds.records import Evaluation
from core.kinds.registry import CLASSIFICATION
from core.retry import RETRY_OPTIONS


@task(
    name="evaluate-model",
    task_run_name="evaluate-{model_name}{shard_label}",
    cache_policy=ContentCachePolicy(
        file_inputs=("model_path", "images_path", "labels_path"),
        ignore=("progress", "shard_label"),
        environment=injected_fault_key,
    ),
    persist_result=True,
    **RETRY_OPTIONS,
)
def evaluate_model_task(
    *,
    model_name: str,
    model_path: str,
    images_path: str,
    labels_path: str,
    batch_size: int,
    progress: bool = True,
    allow_unsafe_code: bool = False,
    class_count: int | None = None,
    start: int = 0,
    stop: int | None = None,
    task: str = CLASSIFICATION.name,
    shard_label: str = "",
) -> Evaluation | ModelFailure:
    """Run one model on the evaluation images (or a shard of them), scored as its kind (`task`) scores it: for a
    classifier, Top-1, Top-5, confusion matrix and predictions. A TFLite model that crashes its interpreter, or that
    the interpreter refuses, is that model's failure (returned, and remembered as a result is)."""
    from prefect.logging import get_run_logger

    result = evaluate_model(
        model_name=model_name,
        model_path=model_path,
        images_path=images_path,
        labels_path=labels_path,
        batch_size=batch_size,
        progress=progress,
        allow_unsafe_code=allow_unsafe_code,
        class_count=class_count,
        start=start,
        stop=stop,
        task=task,
    )
    if isinstance(result, ModelFailure):
        get_run_logger().warning("%s: %s", model_name, result.describe())
    else:
        get_run_logger().info("%s: %s", model_name, result.describe())
    return result
