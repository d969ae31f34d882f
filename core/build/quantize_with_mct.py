"""Step 3: quantize the Keras model with MCT: post-training quantization (PTQ, the SDK's), gradient-based
PTQ (GPTQ, `gptq_epochs` epochs) or mixed precision under a weights-memory budget (a share of the
all-8-bit weights memory), with the threshold error method selectable (MSE by default; NOCLIPPING is
min/max, KL is KLD).

The calibration batches come from the calibration set's array; MCT sees `iteration_count`
batches of `batch_size` (MCT 2.x has no n_iter: the generator yields that many batches).
The result is saved with MCT's Keras exporter, which the evaluation and the TFLite export load.

A large calibration set (more than IN_PROCESS_MAX_BYTES: 1,000 images at 224 px are 600 MB) is quantized in a
worker process of its own, which ends when MCT is done: MCT leaves gigabytes of a 224 px model's activations held
by the process that ran it (not given back by the garbage collector nor by malloc_trim), and the IMX500 converter
that follows takes 3.4 GB more. The worker appends a byte to a file per calibration batch; the step shows them as
its progress bar.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from core import run_progress
from core.build import mct_statistics
from core.build.keras_conversion import with_input_size
from core.build.platforms import choose_platform, target_platform_capabilities
from core.build.precision import bit_width_config, node_names_in
from core.build.records import QuantizedModel
from core.build.substitute_layers import device_equivalent
from core.build.variants import MCT_METHODS, mct_keras_file_name
from core.errors import StepError
from core.evaluate.models import load_keras_model
from core.isolation import Workers
from core.storage import cache_root


def representative_data(calibration: np.ndarray, batch_size: int, progress: bool, ticks: str | None = None):
    """MCT's zero-argument generator factory: each call yields the batches anew, with a progress bar (or, in a
    worker, a byte appended to the file `ticks` per batch)."""
    batch_count = len(calibration) // batch_size

    def generator():
        for i in tqdm(range(batch_count), desc="MCT calibration", unit="batch", disable=not progress or bool(ticks)):
            yield [calibration[i * batch_size : (i + 1) * batch_size]]
            if ticks:
                with open(ticks, "ab") as tick:
                    tick.write(b".")
            else:
                run_progress.advance(batch_size)

    return generator


IN_PROCESS_MAX_BYTES = 256 * 2**20  # calibration sets up to this size are quantized in the step's own process
MCT_WORKERS = Workers("mct-worker", lambda: cache_root() / "work" / "logs", idle_seconds=0.5)


ERROR_METHODS = ("noclipping", "mse", "mae", "kl", "lp", "hmse")
METHODS = tuple(MCT_METHODS.values())


def quantize_with_mct(**arguments: Any) -> QuantizedModel:
    """The model quantized (see `quantize_here` for the arguments): in this process, or, for a large calibration
    set, in a worker process of its own (see the module's docstring)."""
    if Path(arguments["calibration_path"]).stat().st_size <= IN_PROCESS_MAX_BYTES:
        return quantize_here(**arguments)
    progress = arguments.pop("progress", True)
    batch_size = arguments["batch_size"]
    batch_count = len(np.load(arguments["calibration_path"], mmap_mode="r")) // batch_size
    ticks = Path(arguments["out_dir"]) / ".mct-calibration-batches"
    ticks.parent.mkdir(parents=True, exist_ok=True)
    ticks.write_bytes(b"")
    done = threading.Event()

    def relay() -> None:
        shown = 0
        with tqdm(total=batch_count, desc="MCT calibration", unit="batch", disable=not progress) as bar:
            while True:
                finished = done.wait(0.5)
                now = min(ticks.stat().st_size if ticks.exists() else shown, batch_count)
                if now > shown:
                    bar.update(now - shown)
                    run_progress.advance((now - shown) * batch_size)
                    shown = now
                if finished:
                    return

    relaying = threading.Thread(target=relay, name="mct-progress", daemon=True)
    relaying.start()
    try:
        return MCT_WORKERS.run(quantize_here, **arguments, progress=False, ticks=str(ticks))
    except StepError:
        raise
    except Exception as exc:  # the worker died, or what MCT raised did not survive the way back
        method = arguments.get("method", "ptq")
        raise StepError(f"quantize-with-mct ({method})", arguments["model_path"], exc) from exc
    finally:
        done.set()
        relaying.join()
        ticks.unlink(missing_ok=True)


def quantize_here(
    *,
    model_path: str,
    calibration_path: str,
    batch_size: int,
    target_platform: str,
    out_dir: Path,
    progress: bool = True,
    allow_unsafe_code: bool = False,
    method: str = "ptq",
    error_method: str = "mse",
    gptq_epochs: int | None = None,
    weights_memory_ratio: float | None = None,
    z_threshold: float | None = None,
    shift_negative_params_search: bool = False,
    sixteen_bit_activations: tuple[str, ...] = (),
    ticks: str | None = None,
) -> QuantizedModel:
    """`gptq_epochs` for GPTQ, `weights_memory_ratio` (of the all-8-bit weights memory) for mixed precision.
    `z_threshold` removes activation outliers beyond that many standard deviations before thresholds are chosen;
    `shift_negative_params_search` searches the shift of negative activations; `sixteen_bit_activations` names the
    layers whose outputs get 16 bits (core/build/precision.py says which may; the repair search's knobs)."""
    import model_compression_toolkit as mct

    if method not in METHODS or error_method not in ERROR_METHODS:
        raise ValueError(
            f"method {method!r} / error method {error_method!r}: expected one of {METHODS} / {ERROR_METHODS}"
        )
    if method == "gptq" and gptq_epochs is None:
        raise ValueError("method 'gptq' needs gptq_epochs")
    if method == "mixed_precision" and weights_memory_ratio is None:
        raise ValueError("method 'mixed_precision' needs weights_memory_ratio")
    platform = choose_platform(target_platform)
    mct_statistics.install()
    calibration = np.load(calibration_path, mmap_mode="r")
    # A model whose input size is not fixed is quantized at the calibration images' size: MCT's exports need one.
    model = with_input_size(load_keras_model(model_path, allow_unsafe_code), calibration.shape[1])
    substituted: list[str] = []
    if target_platform == "imx500":  # its converter refuses Rescaling and Normalization: the same function instead
        model, substituted = device_equivalent(model, allow_unsafe_code=allow_unsafe_code)
    data = representative_data(calibration, batch_size, progress, ticks)
    try:
        tpc = target_platform_capabilities(platform)
        error = mct.core.QuantizationErrorMethod[error_method.upper()]
        knobs: dict = {"z_threshold": z_threshold} if z_threshold is not None else {}
        if shift_negative_params_search:
            knobs["shift_negative_params_search"] = True
        quantization_config = mct.core.QuantizationConfig(
            activation_error_method=error, weights_error_method=error, **knobs
        )
        mixed = (
            mct.core.MixedPrecisionQuantizationConfig(num_of_images=min(32, len(calibration)))
            if method == "mixed_precision"
            else None
        )
        widths = bit_width_config(node_names_in(model, tuple(sixteen_bit_activations)))
        core_config = mct.core.CoreConfig(
            quantization_config=quantization_config,
            **({"mixed_precision_config": mixed} if mixed else {}),
            **({"bit_width_config": widths} if widths else {}),
        )
        details: dict = {
            "z_threshold": z_threshold,
            "shift_negative_params_search": shift_negative_params_search or None,
            "sixteen_bit_activations": list(sixteen_bit_activations) or None,
            "substituted_layers": substituted or None,
        }
        if method == "gptq":
            gptq_config = mct.gptq.get_keras_gptq_config(n_epochs=gptq_epochs)
            quantized, _ = mct.gptq.keras_gradient_post_training_quantization(
                model, data, gptq_config=gptq_config, core_config=core_config, target_platform_capabilities=tpc
            )
            details["gptq_epochs"] = gptq_epochs
        elif method == "mixed_precision":
            assert weights_memory_ratio is not None
            full = mct.core.keras_resource_utilization_data(model, data, core_config, target_platform_capabilities=tpc)
            budget = full.weights_memory * weights_memory_ratio
            quantized, _ = mct.ptq.keras_post_training_quantization(
                model,
                data,
                target_resource_utilization=mct.core.ResourceUtilization(weights_memory=budget),
                core_config=core_config,
                target_platform_capabilities=tpc,
            )
            details.update(
                weights_memory_ratio=weights_memory_ratio,
                weights_memory_budget_bytes=float(budget),
                weights_memory_8bit_bytes=float(full.weights_memory),
            )
        else:
            quantized, _ = mct.ptq.keras_post_training_quantization(
                model, data, core_config=core_config, target_platform_capabilities=tpc
            )
        path = Path(out_dir) / mct_keras_file_name(method)
        mct.exporter.keras_export_model(model=quantized, save_model_path=str(path))
    except Exception as exc:
        raise StepError(f"quantize-with-mct ({method})", model_path, exc) from exc
    return QuantizedModel(
        variant=f"mct_{method}",
        path=str(path),
        method=method,
        error_method=error_method,
        target_platform=target_platform,
        tpc_version=platform.tpc_version,
        tpc_reason=platform.reason,
        imx500_converter_version=platform.imx500_converter_version,
        mct_version=mct.__version__,
        **details,
    )
