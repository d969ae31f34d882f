"""Step 3: quantize the Keras model with MCT's post-training quantization.

The calibration batches come from the calibration set's array; MCT sees `iteration_count`
batches of `batch_size` (MCT 2.x has no n_iter: the generator yields that many batches).
The result is saved with MCT's Keras exporter, which the evaluation and the TFLite export load.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from prefect import task
from tqdm import tqdm

from core.caching import ContentCachePolicy
from core.errors import StepError
from core.models import load_keras_model
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir

TPC_VERSION = "1.0"


def representative_data(calibration: np.ndarray, batch_size: int, progress: bool):
    """MCT's zero-argument generator factory: each call yields the batches anew, with a progress bar."""
    batch_count = len(calibration) // batch_size

    def generator():
        for i in tqdm(range(batch_count), desc="MCT calibration", unit="batch", disable=not progress):
            yield [calibration[i * batch_size : (i + 1) * batch_size]]

    return generator


def quantize_with_mct(
    model_path: str, calibration_path: str, batch_size: int, target_platform: str, out_dir: Path, progress: bool = True, allow_unsafe_code: bool = False
) -> dict:
    import model_compression_toolkit as mct

    model = load_keras_model(model_path, allow_unsafe_code)
    calibration = np.load(calibration_path, mmap_mode="r")
    try:
        tpc = mct.get_target_platform_capabilities(tpc_version=TPC_VERSION, device_type=target_platform)
        quantized, _ = mct.ptq.keras_post_training_quantization(
            model, representative_data(calibration, batch_size, progress), target_platform_capabilities=tpc
        )
        path = Path(out_dir) / "model_quantized.keras"
        mct.exporter.keras_export_model(model=quantized, save_model_path=str(path))
    except Exception as exc:
        raise StepError("quantize-with-mct", model_path, exc) from exc
    return {"path": str(path), "target_platform": target_platform, "tpc_version": TPC_VERSION, "mct_version": mct.__version__}


@task(
    name="quantize-with-mct",
    cache_policy=ContentCachePolicy(file_inputs=("model_path", "calibration_path"), ignore=("progress",)),
    persist_result=True,
    **RETRY_OPTIONS,
)
def quantize_with_mct_task(
    model_path: str, calibration_path: str, batch_size: int, target_platform: str, progress: bool = True, allow_unsafe_code: bool = False
) -> dict:
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    result = quantize_with_mct(model_path, calibration_path, batch_size, target_platform, new_work_dir("quantize"), progress, allow_unsafe_code)
    get_run_logger().info(
        "MCT %s quantized %s for target platform %s -> %s in %.1f s", result["mct_version"], model_path, target_platform, result["path"], time.perf_counter() - started
    )
    return result
