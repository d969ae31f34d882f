"""Step 6: evaluate one model on the shared evaluation set: Top-1, Top-5 and the confusion matrix.

The step's logic: core/evaluate/evaluate_model.py.
"""

from __future__ import annotations

from prefect import task

from core.caching import ContentCachePolicy
from core.evaluate.evaluate_model import evaluate_model, injected_fault_key
from core.evaluate.records import Evaluation
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
    shard_label: str = "",
) -> Evaluation:
    """Run one model on the evaluation images (or a shard of them): Top-1, Top-5, confusion matrix, predictions."""
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
    )
    get_run_logger().info(
        "%s: Top-1 %.4f, Top-5 %.4f (%d of %d images) in %.1f s",
        model_name,
        result.top_1_accuracy,
        result.top_5_accuracy,
        result.correct,
        result.image_count,
        result.seconds,
    )
    return result
