"""Step 8b: compile each full-integer TFLite model for an Arm Ethos-U NPU with Vela, and read back how
much of it runs on the NPU, the memory it needs and its estimated speed.

The step's logic: core/targets/compile_for_ethos_u.py.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task

from core.build.records import BuiltModel
from core.caching import ContentCachePolicy
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir
from core.targets.compile_for_ethos_u import compile_for_ethos_u
from core.targets.records import EthosUReport


def _run_name() -> str:
    from prefect.runtime import task_run

    return f"compile-for-ethos-u-{task_run.parameters['model'].variant}"


@task(
    name="compile-for-ethos-u",
    task_run_name=_run_name,
    cache_policy=ContentCachePolicy(file_inputs=("model",)),
    persist_result=True,
    **RETRY_OPTIONS,
)
def compile_for_ethos_u_task(*, model: BuiltModel, accelerator: str) -> EthosUReport:
    """Compile a full-integer TFLite model for an Arm Ethos-U NPU with Vela: NPU share, memory, speed."""
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    result = compile_for_ethos_u(
        model_path=model.path, variant=model.variant, accelerator=accelerator, out_dir=new_work_dir("vela")
    )
    if result.compiled:
        get_run_logger().info(
            "Vela compiled %s for %s in %.1f s: %d of %d operators on the NPU, %.1f KiB SRAM, "
            "%.1f KiB off-chip flash, %s inferences/s",
            Path(model.path).name,
            accelerator,
            time.perf_counter() - started,
            result.npu_operators,
            (result.npu_operators or 0) + (result.cpu_operators or 0),
            result.sram_kib,
            result.off_chip_flash_kib,
            result.inferences_per_second,
        )
    elif result.accelerator:  # Vela ran and failed on the model (a model it declined has no accelerator)
        get_run_logger().warning("Vela on %s for %s: %s", Path(model.path).name, accelerator, result.reason)
    return result
