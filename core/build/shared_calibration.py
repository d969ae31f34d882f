"""TensorFlow's converter calibrates a model once per calibration set, not once per variant.

int8_float_io, full_int8, full_uint8 and int16x8 each make the converter run the float model over every calibration
image, one image at a time on one thread, to record each tensor's range; the four records are the same, since the
float model and the images are. At 224 px that pass is most of a calibrated conversion's minutes.

`calibrations_shared(calibration_path)` (entered around `converter.convert()` in the conversion worker, and around
the layer analysis' QuantizationDebugger, which calibrates the same model again) makes the converter's
`Calibrator.calibrate` keep its result (the model with its ranges) in the cache, keyed by the float model's bytes
and the calibration file, under a lock: a conversion that finds it there, or waits for the one that is making it,
reads it instead of calibrating again. The result is the converter's own, so every model is the same,
bit for bit. (The int16x8 conversion calibrates a second time inside its quantizer; only its first pass is shared.)
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import filelock

from core.files import atomic_write_bytes
from core.storage import cache_root

# The calibration file of the conversion under way in this thread, if shared (a thread's own: the analyses run the
# converter in the command's process, beside other steps that may convert without sharing).
_calibration = threading.local()


def calibrated_dir() -> Path:
    return cache_root() / "work" / "calibrated"


def calibration_key(calibration_path: str) -> str:
    """The calibration file, by path, size and modification time (the calibration step writes a new file for new
    images)."""
    stat = Path(calibration_path).stat()
    return hashlib.sha256(f"{Path(calibration_path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()


def _install() -> None:
    from tensorflow.lite.python.optimize import calibrator

    cls: Any = calibrator.Calibrator
    if getattr(cls, "_shared_by_quantize_evaluate", False):
        return
    own_init, own_calibrate = cls.__init__, cls.calibrate

    def __init__(self: Any, model_content: bytes, *args: Any, **kwargs: Any) -> None:
        own_init(self, model_content, *args, **kwargs)
        self._model_digest = hashlib.sha256(bytes(model_content)).hexdigest()

    def calibrate(self: Any, dataset_gen: Any) -> Any:
        calibration_path = getattr(_calibration, "path", None)
        if calibration_path is None:
            return own_calibrate(self, dataset_gen)
        path = calibrated_dir() / f"{self._model_digest[:24]}-{calibration_key(calibration_path)[:24]}.tflite"
        path.parent.mkdir(parents=True, exist_ok=True)
        with filelock.FileLock(str(path) + ".lock"):
            if path.exists():
                return path.read_bytes()
            calibrated = own_calibrate(self, dataset_gen)
            atomic_write_bytes(path, bytes(calibrated))
            return calibrated

    cls.__init__, cls.calibrate = __init__, calibrate
    cls._shared_by_quantize_evaluate = True


@contextmanager
def calibrations_shared(calibration_path: str | None) -> Iterator[None]:
    """While the block converts: calibrations on `calibration_path` are made once and shared (see above)."""
    if calibration_path is None:
        yield
        return
    _install()
    _calibration.path = calibration_path
    try:
        yield
    finally:
        _calibration.path = None
