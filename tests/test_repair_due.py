"""Whether the repair searches: not when the device's compiler refused the model for its operators, which no repair
recipe (they change precisions) can change; yes when it took the model and the accuracy is short."""

from core.build.records import BuiltModel, TFLiteFacts
from core.kinds.records import ClassificationEvaluation
from core.repair.ladder import repair_due
from core.targets.records import HardwareReports, Imx500Report

FACTS = TFLiteFacts(
    input_dtype="float32",
    output_dtype="float32",
    input_quantization=(0.0, 0),
    output_quantization=(0.0, 0),
    tensor_types=("int8",),
    ops=("CONV_2D",),
)


def evaluation(model: str, correct: int) -> ClassificationEvaluation:
    return ClassificationEvaluation.counted(
        model=model,
        model_path=model,
        correct=correct,
        correct_top_5=10,
        seconds=1.0,
        confusion_matrix=[[0]],
        predicted=[0] * 10,
        shard=(0, 10),
    )


def due(imx500: Imx500Report) -> tuple[bool, str]:
    return repair_due(
        mode="auto",
        evaluations={"keras": evaluation("keras", 9), "tflite_quantized": evaluation("tflite_quantized", 5)},
        built=[BuiltModel(variant="mct_ptq", path="m.tflite", facts=FACTS, builder="MCT exporter")],
        hardware=HardwareReports(imx500=imx500),
        float_tflite="float32",
        max_accuracy_drop=0.01,
        target_device="imx500",
    )


def test_a_model_the_imx500_converter_refused_for_an_operator_is_not_searched_for_and_says_why():
    refused = Imx500Report(
        compiled=False, skipped=False, reason="refused by the IMX500 converter: unsupported ops: Gelu (layer gelu)"
    )
    searched, why = due(refused)
    assert not searched
    assert why.startswith("not searched: imx500's compiler refused the model (tflite_quantized: refused by the IMX")
    assert "Gelu" in why


def test_a_model_the_imx500_takes_that_lost_accuracy_is_searched_for():
    fits = Imx500Report(compiled=True, skipped=False, fits=True, utilization_percent=40.0)
    searched, why = due(fits)
    assert searched
    assert "drops 0.4000" in why


def test_a_model_too_large_for_the_imx500_is_still_searched_for():
    too_large = Imx500Report(compiled=False, skipped=False, fits=False, utilization_percent=160.0)
    searched, _ = due(too_large)
    assert searched
