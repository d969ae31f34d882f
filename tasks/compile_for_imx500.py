"""Step 8a: convert the MCT-quantized model for Sony's IMX500 sensor with Sony's converter
(`imxconv-tf`), and read back whether it fits the chip.

The step's logic: core/targets/compile_for_imx500.py.
"""

from __future__ import annotations

import time

from prefect import task

from core.build.records import QuantizedModel
from core.caching import ContentCachePolicy
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir
from core.targets.compile_for_imx500 import compile_for_imx500, converter_and_java
from core.targets.records import Imx500Report


@task(
    name="compile-for-imx500",
    # The converter and Java are part of the key: installing either redoes a skipped run.
    cache_policy=ContentCachePolicy(file_inputs=("quantized_model",), environment=lambda _: converter_and_java()),
    persist_result=True,
    **RETRY_OPTIONS,
)
def compile_for_imx500_task(*, quantized_model: QuantizedModel) -> Imx500Report:
    """Convert the MCT PTQ model for Sony's IMX500 with Sony's converter and read whether it fits the chip."""
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    converter, java = converter_and_java()
    result = compile_for_imx500(
        quantized_keras_path=quantized_model.path, out_dir=new_work_dir("imx500"), converter=converter, java=java
    )
    logger = get_run_logger()
    if result.skipped:
        logger.warning("IMX500 conversion skipped: %s", result.reason)
    elif result.memory_usage_bytes is None:  # refused before planning memory, crashed or timed out
        logger.warning("IMX500 converter in %.1f s: %s", time.perf_counter() - started, result.reason)
    else:
        logger.info(
            "IMX500 converter in %.1f s: %s of %s bytes on chip (%.0f%%), %s",
            time.perf_counter() - started,
            result.memory_usage_bytes,
            result.memory_available_bytes,
            result.utilization_percent,
            "fits" if result.fits else "DOES NOT FIT",
        )
        if not result.compiled and result.fits:
            logger.warning("IMX500 converter: %s", result.reason)
    return result
