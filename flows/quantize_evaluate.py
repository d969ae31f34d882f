"""The quantize-and-evaluate flow: the AITRIOS SDK's model quantization as a Prefect pipeline.

    python -m flows.quantize_evaluate configs/digits/configuration.json

validate config -> load calibration set -> quantize with MCT -> export model_quantized.tflite
              \\-> load evaluation set, convert model.tflite -> evaluate the four models in parallel
              -> record results (publish models, results.json, artifacts)
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any, Optional

import core  # noqa: F401  (quietens TensorFlow before it is imported)
from prefect import flow
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from core.config import QuantizeConfig, load_config_file
from core.errors import InputError
from core.storage import results_storage_dir
from tasks.convert_to_tflite import convert_to_tflite_task
from tasks.evaluate_model import evaluate_model_task
from tasks.export_quantized_tflite import export_quantized_tflite_task
from tasks.load_calibration_set import load_calibration_set_task
from tasks.load_evaluation_set import load_evaluation_set_task
from tasks.quantize_with_mct import quantize_with_mct_task
from tasks.record_results import format_table, record_results_task
from tasks.validate_config import validate_config_task


@flow(
    name="quantize-evaluate",
    description="Quantize a Keras image classifier with MCT, convert it to TFLite and compare the Top-1 accuracy and size of the four models.",
    task_runner=ThreadPoolTaskRunner(max_workers=4),
    result_storage=results_storage_dir(),
    validate_parameters=True,
)
def quantize_evaluate(config_path: Optional[str] = None, config: Optional[QuantizeConfig] = None, progress: bool = True) -> dict[str, Any]:
    """Quantize and evaluate one model.

    Args:
        config_path: Path of an SDK-format configuration.json (relative paths inside it resolve against its folder).
        config: The configuration inline, instead of a file (relative paths resolve against the working directory).
        progress: Show progress bars on the terminal.
    """
    validated = validate_config_task(config=config, config_path=config_path)
    c = validated.config
    evaluation_set = load_evaluation_set_task.submit(c.evaluate_image_dir, c.evaluate_image_extension, validated.class_names, c.input_tensor_size, c.preprocessing, progress)
    unsafe = c.allow_unsafe_model_code
    float_tflite = convert_to_tflite_task.submit(c.source_keras_model, c.float_tflite, unsafe)
    calibration = load_calibration_set_task(c.dataset_image_dir, c.input_tensor_size, c.batch_size, c.iteration_count, c.preprocessing, c.seed, progress)
    quantization = quantize_with_mct_task.submit(c.source_keras_model, calibration["path"], c.batch_size, c.target_platform, progress, unsafe)

    images, labels = evaluation_set.result()["images_path"], evaluation_set.result()["labels_path"]

    def evaluate(model_name: str, model_path: str):
        return evaluate_model_task.submit(model_name, model_path, images, labels, c.evaluation_batch_size, progress, unsafe)

    evaluations = [evaluate("keras", c.source_keras_model), evaluate("tflite", float_tflite.result()["path"])]
    evaluations.append(evaluate("keras_quantized", quantization.result()["path"]))
    quantized_tflite = export_quantized_tflite_task(quantization.result()["path"])
    evaluations.append(evaluate("tflite_quantized", quantized_tflite["path"]))
    # Let every evaluation finish (and be cached) before a failed one fails the run.
    wait(evaluations)
    return record_results_task(
        validated, calibration, quantization.result(), float_tflite.result(), quantized_tflite, evaluation_set.result(), [e.result() for e in evaluations]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.quantize_evaluate",
        description=(
            "Quantize a Keras image classifier with Sony's Model Compression Toolkit, convert it to TFLite, "
            "and report the Top-1 accuracy and file size of the float Keras model, the MCT-quantized Keras model, "
            "model.tflite and model_quantized.tflite. Runs on Prefect's ephemeral API, or records the run on the "
            "server PREFECT_API_URL points at."
        ),
        epilog=(
            "Outputs: OUTPUT_DIR/model.tflite, OUTPUT_DIR/model_quantized.tflite, OUTPUT_DIR/model_quantized.keras, "
            "EVALUATE_RESULT_DIR/results.json and results.csv. Exit status: 0 on success, 2 for a problem with the "
            "input (configuration, images, labels, model), 1 for any other failure. The configuration keys are "
            "described in README.md."
        ),
    )
    parser.add_argument("config_path", metavar="CONFIGURATION_JSON", help="SDK-format configuration.json; relative paths in it resolve against its folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--json", action="store_true", help="print results.json's content instead of the table")
    args = parser.parse_args(argv)
    try:
        load_config_file(args.config_path)  # structural problems are reported before Prefect starts
        results = quantize_evaluate(config_path=args.config_path, progress=not args.no_progress)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # the run failed: its log holds the details, the cause goes last
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        # The ephemeral API logs its shutdown at exit; keep the outcome as the last line instead.
        logging.getLogger("prefect").setLevel(logging.WARNING)
    print(json.dumps(results, indent=2) if args.json else "\n" + format_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
