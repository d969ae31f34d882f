"""The run's progress as a whole, and what it will cost, told before the long work starts.

The cost of a run is, before anything else, the images it pushes through models: every evaluated model's evaluation
images, and the calibration images MCT runs each of its models on. `RunPlan` counts them from the configuration; the
flow logs it once validated ("10 models x 2,000 evaluation images and MCT on 1,000 calibration images: 21,000 image
passes"), and `RunProgress` is one bar over them all, fed by the evaluations' and MCT's batches (in this process),
whose time left is estimated from the passes done so far. Once a tenth of them is done, the estimate is logged too,
so the Prefect UI shows it.

Image passes are not all equal (an int16x8 model's take longer than a full_int8 one's), so the estimate is an
estimate; the converter's calibrations and the compilers are not counted.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from tqdm import tqdm

from core.config import QuantizeConfig

ESTIMATE_AFTER = 0.1  # the share of the passes after which the estimate is logged


@dataclass(frozen=True)
class RunPlan:
    models: int  # evaluated models, the float Keras model included
    evaluation_images: int
    mct_models: int
    calibration_images: int
    left_out: tuple[str, ...] = ()  # default variants not built at this size

    @property
    def image_passes(self) -> int:
        return self.models * self.evaluation_images + self.mct_models * self.calibration_images

    def describe(self) -> str:
        times = f" {self.mct_models} times" if self.mct_models > 1 else ""
        mct = f" and MCT{times} on {self.calibration_images:,} calibration images" if self.mct_models else ""
        left_out = (
            f"; {', '.join(self.left_out)} left out of the default variants at this size (TensorFlow Lite runs it on "
            "its reference kernels, one thread, many times full_int8's time): list it in 'variants' to build it"
            if self.left_out
            else ""
        )
        return (
            f"This run: {self.models} models x {self.evaluation_images:,} evaluation images{mct}: "
            f"{self.image_passes:,} image passes{left_out}"
        )


def plan_of(config: QuantizeConfig, evaluation_images: int) -> RunPlan:
    """The plan of a run of `config` on `evaluation_images`: each variant it builds is evaluated, and so are the
    float Keras model and MCT PTQ's Keras model."""
    from core.build.recipes import IMX500_VARIANT, variant_recipes
    from core.build.variants import VARIANTS, left_out_by_default

    variants = [r.variant for r in variant_recipes(config, evaluation_images)]
    keras_models = 1 + (IMX500_VARIANT in variants)
    mct = sum(VARIANTS[v].builder == "mct" for v in variants)
    left_out = left_out_by_default(config.variants, evaluation_images * config.input_tensor_size**2)
    calibration_images = config.batch_size * config.iteration_count
    return RunPlan(keras_models + len(variants), evaluation_images, mct, calibration_images, left_out)


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


class RunProgress:
    """One bar over the run's image passes (disabled: counted, not drawn)."""

    def __init__(self, plan: RunPlan, enabled: bool, log: logging.Logger | logging.LoggerAdapter | None = None):
        self.plan = plan
        self.log = log
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._logged = False
        self.done = 0  # counted here: a disabled bar counts nothing
        self.bar = tqdm(total=plan.image_passes, desc="run", unit="img", disable=not enabled, position=0)

    def advance(self, passes: int) -> None:
        with self._lock:
            self.bar.update(passes)
            self.done += passes
            done = self.done
            if self._logged or done < ESTIMATE_AFTER * self.plan.image_passes or self.log is None:
                return
            self._logged = True
        elapsed = time.perf_counter() - self.started
        left = elapsed * (self.plan.image_passes - done) / done
        self.log.info(
            f"About {minutes(left)} left (estimated from the first {done:,} of {self.plan.image_passes:,} image "
            f"passes, {done / elapsed:.1f} a second)"
        )

    def close(self) -> None:
        self.bar.close()


_current: RunProgress | None = None


def start(plan: RunPlan, enabled: bool, log: logging.Logger | logging.LoggerAdapter | None = None) -> RunProgress:
    """The run's progress, fed by `advance` from this process's steps until `finish`."""
    global _current
    finish()
    _current = RunProgress(plan, enabled, log)
    if log is not None:
        log.info(plan.describe())
    return _current


def advance(passes: int) -> None:
    """Images pushed through a model (an evaluation's batch, an MCT calibration batch)."""
    current = _current
    if current is not None:
        current.advance(passes)


def finish() -> None:
    global _current
    if _current is not None:
        _current.close()
        _current = None
