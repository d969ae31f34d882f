"""Step 3: quantize the Keras model with MCT: post-training quantization (PTQ, the SDK's), gradient-based
PTQ (GPTQ, `gptq_epochs` epochs) or mixed precision under a weights-memory budget (a share of the
all-8-bit weights memory), with the threshold error method selectable (MSE by default; NOCLIPPING is
min/max, KL is KLD).

The step's logic: core/build/quantize_with_mct.py.
"""

from __future__ import annotations

import time

from prefect import task

from core.build.platforms import choose_platform
from core.build.quantize_with_mct import quantize_with_mct
from core.build.records import QuantizedModel, UnsupportedVariant
from core.caching import ContentCachePolicy
from core.errors import StepError
from core.failures import library_said
from core.retry import RETRY_OPTIONS, last_attempt
from core.storage import new_work_dir


@task(
    name="quantize-with-mct",
    task_run_name="quantize-with-mct-{method}",
    # The platform description follows the installed IMX500 converter: installing another redoes the quantization.
    cache_policy=ContentCachePolicy(
        file_inputs=("model_path", "calibration_path"),
        ignore=("progress",),
        environment=lambda inputs: choose_platform(inputs["target_platform"]).model_dump(),
    ),
    persist_result=True,
    **RETRY_OPTIONS,
)
def quantize_with_mct_task(
    *,
    model_path: str,
    calibration_path: str,
    batch_size: int,
    target_platform: str,
    method: str = "ptq",
    error_method: str = "mse",
    gptq_epochs: int | None = None,
    weights_memory_ratio: float | None = None,
    allow_unsafe_code: bool = False,
    progress: bool = True,
) -> QuantizedModel | UnsupportedVariant:
    """Quantize the float Keras model with MCT (PTQ, GPTQ or mixed precision) and save it in MCT's Keras format;
    or, when MCT cannot quantize this model (a layer it has no quantizer for), what it said."""
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    try:
        result = quantize_with_mct(
            model_path=model_path,
            calibration_path=calibration_path,
            batch_size=batch_size,
            target_platform=target_platform,
            out_dir=new_work_dir("quantize"),
            progress=progress,
            allow_unsafe_code=allow_unsafe_code,
            method=method,
            error_method=error_method,
            gptq_epochs=gptq_epochs,
            weights_memory_ratio=weights_memory_ratio,
        )
    except StepError as exc:
        if not last_attempt():
            raise
        unsupported = UnsupportedVariant(
            variant=f"mct_{method}", reason=f"MCT cannot quantize the model: {library_said(exc)}"
        )
        get_run_logger().warning("%s: %s", unsupported.variant, unsupported.reason)
        return unsupported
    get_run_logger().info(
        "MCT %s %s (%s thresholds) quantized %s for target platform %s -> %s in %.1f s",
        result.mct_version,
        method,
        error_method,
        model_path,
        target_platform,
        result.path,
        time.perf_counter() - started,
    )
    return result
