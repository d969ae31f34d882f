"""The old notebook's way to the SDK's two models, as one command the end-to-end benchmark times against the flow's:
one step after another in one process: decode the calibration images, MCT PTQ, TensorFlow's converter on the float
model (model.tflite; float32, as the flow makes it by default), MCT's exporter on the quantized one
(model_quantized.tflite), then the four models evaluated one after another, one image per inference call, every
image decoded again for each model (benchmarks/throughput.py). Nothing is cached.

    python -m benchmarks.notebook_way CONFIGURATION_JSON WORK_DIR   # prints each stage's seconds as JSON
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import core  # noqa: F401  (quietens TensorFlow before it is imported)
from core.build.platforms import choose_platform, target_platform_capabilities
from core.config import Preprocessing
from core.data.load_calibration_set import load_calibration_set
from core.evaluate.models import load_keras_model, load_quantized_keras_model
from core.files import atomic_write_bytes


def notebook_way(config: dict, work: Path) -> dict[str, float]:
    import model_compression_toolkit as mct
    import tensorflow as tf

    from benchmarks.throughput import notebook_evaluation

    for folder in ("calibration", "quantize", "export"):
        (work / folder).mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal started
        seconds[stage] = round(time.perf_counter() - started, 2)
        started = time.perf_counter()

    size = config["input_tensor_size"]
    calibration = load_calibration_set(
        dataset_image_dir=config["dataset_image_dir"],
        input_tensor_size=size,
        batch_size=config["batch_size"],
        iteration_count=config["iteration_count"],
        preprocessing=Preprocessing(),
        seed=0,
        out_dir=work / "calibration",
        progress=False,
    )
    lap("calibration_set")
    # MCT called as the notebook called it (its own statistics collection: the flow's is faster, to the same bits).
    import numpy as np

    images = np.load(calibration.path)
    batch = config["batch_size"]

    def representative_data():
        for i in range(len(images) // batch):
            yield [images[i * batch : (i + 1) * batch]]

    quantized_model, _ = mct.ptq.keras_post_training_quantization(
        load_keras_model(config["source_keras_model"]),
        representative_data,
        target_platform_capabilities=target_platform_capabilities(choose_platform("imx500")),
    )
    quantized_path = work / "quantize" / "model_quantized.keras"
    mct.exporter.keras_export_model(model=quantized_model, save_model_path=str(quantized_path))
    lap("mct_ptq")
    converter = tf.lite.TFLiteConverter.from_keras_model(load_keras_model(config["source_keras_model"]))
    tflite = atomic_write_bytes(work / "model.tflite", converter.convert())
    lap("convert_model_tflite")
    # MCT's own exporter, as the notebook called it (the flow's export converts faster, to the same model).
    tflite_quantized = work / "export" / "model_quantized.tflite"
    mct.exporter.keras_export_model(
        model=load_quantized_keras_model(str(quantized_path)),
        save_model_path=str(tflite_quantized),
        serialization_format=mct.exporter.KerasExportSerializationFormat.TFLITE,
        quantization_format=mct.exporter.QuantizationFormat.INT8,
    )
    lap("export_model_quantized_tflite")
    models = {
        "keras": config["source_keras_model"],
        "keras_quantized": str(quantized_path),
        "tflite": str(tflite),
        "tflite_quantized": str(tflite_quantized),
    }
    notebook_evaluation(Path(config["evaluate_image_dir"]), models, size)
    lap("evaluate_four_models")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.notebook_way", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("config_path", type=Path)
    parser.add_argument("work_dir", type=Path)
    args = parser.parse_args(argv)
    print(json.dumps(notebook_way(json.loads(args.config_path.read_text()), args.work_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
