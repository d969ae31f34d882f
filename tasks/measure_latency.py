"""Step 7: measure each model's inference latency per image on this CPU.

The step's logic: core/evaluate/measure_latency.py.
"""

from __future__ import annotations

from prefect import task

from core.caching import ContentCachePolicy
from core.evaluate.measure_latency import measure_latency, this_machine
from core.evaluate.records import REMEASURE_HINT, Latency
from core.failures import ModelFailure
from core.retry import RETRY_OPTIONS


@task(
    name="measure-latency",
    task_run_name="measure-latency-{model_name}",
    # A figure measured on another machine is not reused.
    cache_policy=ContentCachePolicy(file_inputs=("model_path", "images_path"), environment=lambda _: this_machine()),
    persist_result=True,
    **RETRY_OPTIONS,
)
def measure_latency_task(
    *, model_name: str, model_path: str, images_path: str, repeats: int, allow_unsafe_code: bool = False
) -> Latency | ModelFailure:
    """Median latency per image on this CPU, one thread and all threads, after a warm-up (or how the model's
    interpreter failed)."""
    from prefect.logging import get_run_logger

    result = measure_latency(
        model_name=model_name,
        model_path=model_path,
        images_path=images_path,
        repeats=repeats,
        allow_unsafe_code=allow_unsafe_code,
    )
    if isinstance(result, ModelFailure):
        get_run_logger().warning("%s: latency not measured: %s", model_name, result.describe())
        return result
    if result.under_load:
        get_run_logger().warning(
            "%s: latency (%s) taken while other work loaded the CPU (%s): %s",
            model_name,
            ", ".join(result.under_load),
            result.load,
            REMEASURE_HINT,
        )
    one_thread = "n/a" if result.one_thread_ms is None else f"{result.one_thread_ms} ms"
    get_run_logger().info(
        "%s: %s per image on 1 thread, %s ms on all threads (median of %d) on %s",
        model_name,
        one_thread,
        result.all_threads_ms,
        repeats,
        result.machine,
    )
    return result
