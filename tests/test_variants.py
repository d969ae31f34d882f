"""Every quantization variant of the default set, built from the sample model by the real flow, keeps
what it promises; each model is evaluated on the same images; one is recommended; adding a variant to
a finished run costs only that variant."""

import json

import numpy as np
import pandas as pd
import pytest

from core.build.convert_to_tflite import convert_to_tflite
from core.build.export_saved_model import export_saved_model
from core.build.records import BuiltModel, UnsupportedVariant
from core.build.variants import PROMISES, Promise, VariantMismatch, check_variant
from tests.helpers import run, sdk_config, task_states, write_config

DEFAULT_FILES = [
    "model.tflite",
    "model_quantized.tflite",
    "model_quantized.keras",
    "model_dynamic_range.tflite",
    "model_float16.tflite",
    "model_int8_float_io.tflite",
    "model_full_int8.tflite",
    "model_full_uint8.tflite",
    "model_int16x8.tflite",
    "model_full_int8_vela.tflite",
    "model_full_uint8_vela.tflite",
    "imx500",  # the device compilers' outputs
]


@pytest.fixture(scope="module")
def default_run(prefect_harness, sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    config = sdk_config(sample_dir, out, max_accuracy_drop=0.02)
    del config["variants"]  # the default set
    config_path = write_config(out / "configuration.json", config)
    state = run(config_path)
    assert state.is_completed(), state.message
    return config_path, config, out, json.loads((out / "results" / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.hardware
def test_the_default_set_builds_every_converter_variant_and_mct_ptq_with_self_explaining_names(default_run):
    _, _, out, results = default_run
    assert sorted(p.name for p in (out / "models").iterdir()) == sorted(DEFAULT_FILES)
    assert [m["model"] for m in results["models"]][:4] == ["keras", "keras_quantized", "tflite", "tflite_quantized"]
    assert {m["variant"] for m in results["models"]} == {
        None,
        "float32",
        "mct_ptq",
        "dynamic_range",
        "float16",
        "int8_float_io",
        "full_int8",
        "full_uint8",
        "int16x8",
    }


@pytest.mark.slow
@pytest.mark.hardware
def test_each_exported_model_has_the_dtypes_its_variant_promises(default_run):
    _, _, out, results = default_run
    for m in results["models"]:
        if m["variant"]:
            promise = PROMISES[m["variant"]]
            assert (m["input_dtype"], m["output_dtype"]) == (promise.input_dtype, promise.output_dtype), m["model"]
            check_variant(m["file"], m["variant"])  # the published file, inspected again
    uint8 = next(m for m in results["models"] if m["variant"] == "full_uint8")
    assert uint8["input_quantization"][0] > 0  # a uint8 input with its own scale, not raw pixels


@pytest.mark.slow
@pytest.mark.hardware
def test_a_model_that_breaks_its_promise_is_refused_naming_the_variant(default_run):
    _, _, out, _ = default_run
    with pytest.raises(
        VariantMismatch,
        match=(
            r"variant 'full_uint8' .* model\.tflite "
            r".*input is float32, expected uint8; output is float32, expected uint8"
        ),
    ):
        check_variant(out / "models" / "model.tflite", "full_uint8")
    with pytest.raises(VariantMismatch, match="no float16 tensor inside"):
        check_variant(
            out / "models" / "model_full_int8.tflite", "float16", Promise("wrong on purpose", "int8", "int8", "float16")
        )


@pytest.mark.slow
@pytest.mark.hardware
def test_every_model_is_judged_on_the_same_images_with_top_5_confusion_matrix_agreement_and_latency(default_run):
    _, _, _, results = default_run
    for m in results["models"]:
        assert m["image_count"] == results["image_count"] == 120
        assert 0 <= m["top_1_accuracy"] <= m["top_5_accuracy"] <= 1, m["model"]
        assert sum(map(sum, m["confusion_matrix"])) == 120
        assert sum(row[i] for i, row in enumerate(m["confusion_matrix"])) == m["correct"]
        assert set(m["per_class_accuracy"]) == set(results["class_names"])
        assert m["latency_ms"]["all_threads"] > 0
        if m["model"].startswith("tflite"):
            assert m["latency_ms"]["1_thread"] > 0
    keras = results["models"][0]
    assert keras["agreement_with_keras"] == 1.0 and keras["top_1_change_vs_keras"] == 0


@pytest.mark.slow
@pytest.mark.hardware
def test_the_recommendation_is_the_smallest_tflite_model_within_the_budget(default_run):
    _, _, _, results = default_run
    choice = results["recommendation"]
    baseline = results["top_1_accuracy_keras"]
    within = [
        m for m in results["models"] if m["file"].endswith(".tflite") and baseline - m["top_1_accuracy"] <= 0.02 + 1e-9
    ]
    assert choice["chosen"] == min(within, key=lambda m: m["file_size_bytes"])["model"]
    assert len(choice["rejected"]) == sum(m["file"].endswith(".tflite") for m in results["models"]) - 1


@pytest.mark.slow
@pytest.mark.hardware
def test_the_comparison_is_saved_as_csv_and_an_html_report(default_run):
    _, _, out, results = default_run
    table = pd.read_csv(out / "results" / "results.csv")
    assert list(table["model"]) == [m["model"] for m in results["models"]]
    assert {"top_1", "top_5", "agreement", "ms_1_thread", "ms_all_threads", "input", "output", "size_kib"} <= set(
        table.columns
    )
    report = (out / "results" / "report.html").read_text()
    assert report.count("data:image/png;base64,") == len(results["models"]) + 1
    assert results["recommendation"]["chosen"] in report


@pytest.mark.slow
@pytest.mark.hardware
def test_adding_variants_to_a_finished_run_costs_only_those_variants(default_run):
    config_path, config, out, _ = default_run
    # + GPTQ, mixed precision and full 16x8, the variants built only when listed
    write_config(config_path, {**config, "variants": list(PROMISES), "gptq_epochs": 1})
    state = run(config_path)
    assert state.is_completed(), state.message
    states = task_states(state, expected=42)
    new = {
        f"{step}{suffix}"
        for suffix in ("gptq", "mixed_precision")
        for step in (
            "quantize-with-mct-",
            "export-quantized-tflite-mct_",
            "evaluate-tflite_mct_",
            "measure-latency-tflite_mct_",
        )
    }
    new |= {
        "convert-to-tflite-full_int16x8",
        "compile-for-ethos-u-full_int16x8",
        "evaluate-tflite_full_int16x8",
        "measure-latency-tflite_full_int16x8",
    }
    never_cached = {"validate-config", "search-repair", "record-results"}  # search-repair's trials are
    assert {name for name, s in states.items() if s == "Completed"} == new | never_cached, states
    assert all(s == "Cached" for name, s in states.items() if name not in new | never_cached), states
    results = json.loads((out / "results" / "results.json").read_text())
    assert (out / "models" / "model_mct_gptq.tflite").exists() and (
        out / "models" / "model_mct_mixed_precision.tflite"
    ).exists()
    mixed = results["mct_variants"]["tflite_mct_mixed_precision"]
    assert mixed["weights_memory_budget_bytes"] == pytest.approx(0.75 * mixed["weights_memory_8bit_bytes"])
    assert results["mct_variants"]["tflite_mct_gptq"]["gptq_epochs"] == 1


def test_a_variant_the_converter_cannot_make_is_reported_as_unsupported_instead_of_failing(tmp_path):
    import tensorflow as tf

    inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.Activation("elu")(tf.keras.layers.Conv2D(4, 3)(inputs))  # no 16x8 kernel for ELU
    outputs = tf.keras.layers.Dense(3, activation="softmax")(tf.keras.layers.GlobalAveragePooling2D()(x))
    tf.keras.Model(inputs, outputs).save(tmp_path / "elu.h5")
    np.save(tmp_path / "calibration.npy", np.random.default_rng(0).random((4, 8, 8, 3), np.float32))
    saved_model = export_saved_model(model_path=str(tmp_path / "elu.h5"), out_dir=tmp_path)

    def convert(variant: str):
        return convert_to_tflite(
            model_path=str(tmp_path / "elu.h5"),
            saved_model=saved_model,
            variant=variant,
            out_dir=tmp_path,
            calibration_path=str(tmp_path / "calibration.npy"),
        )

    unsupported = convert("int16x8")
    assert isinstance(unsupported, UnsupportedVariant) and "ELU" in unsupported.reason
    built = convert("full_int8")
    assert isinstance(built, BuiltModel) and built.facts.input_dtype == "int8"
