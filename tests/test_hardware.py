"""The real device compilers on the sample model: Sony's IMX500 converter on the MCT model, Arm's Vela on
the full-integer model; their reports in the results and the recommendation; both cached by content."""

import json

import pytest

from core.build.platforms import find_imx500_converter
from core.build.quantize_with_mct import quantize_with_mct
from core.errors import InputError
from core.results.recommend import recommend
from core.results.record_results import require_imx500_fit
from core.targets.compile_for_ethos_u import compile_for_ethos_u
from core.targets.compile_for_imx500 import compile_for_imx500, converter_and_java, parse_memory_report
from tests.helpers import run, sdk_config, task_states, write_config

pytestmark = pytest.mark.skipif(
    find_imx500_converter() is None, reason="Sony's IMX500 converter is not installed: make imx500"
)


@pytest.fixture(scope="module")
def hardware_run(prefect_harness, sample_dir, tmp_path_factory):
    """The flow with both device compilers, twice on one configuration: first with the Keras evaluation failing on
    purpose (a failed run whose compiles were still running when that evaluation failed), then as it is (a
    completed run: the compiles' reports, from the first run's cache)."""
    from core.evaluate.evaluate_model import FAULT_ENV

    out = tmp_path_factory.mktemp("hardware")
    # A calibration set of its own (40 images): nothing of the first run is cached by an earlier test's run, so its
    # compiles start only once MCT has quantized, well after the Keras evaluation, which fails at once, has failed.
    config = sdk_config(sample_dir, out, variants=["mct_ptq", "full_int8"], iteration_count=2)
    config_path = write_config(out / "configuration.json", config)
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv(FAULT_ENV, "keras")
        failed = run(config_path)
    assert failed.is_failed(), failed.message
    state = run(config_path)
    assert state.is_completed(), state.message
    return config_path, out, json.loads((out / "results" / "results.json").read_text()), failed


@pytest.mark.slow
@pytest.mark.hardware
def test_the_imx500_conversion_writes_the_packager_input_and_a_memory_report_that_fits(hardware_run):
    _, out, results, _ = hardware_run
    folder = out / "models" / "imx500"
    assert (folder / "packerOut.zip").stat().st_size > 0 and (folder / "dnnParams.xml").exists()
    report = parse_memory_report(next(folder.glob("*_MemoryReport.json")))
    assert report["fits"] is True and 0 < report["memory_usage_bytes"] < report["memory_available_bytes"]
    imx500 = results["hardware"]["imx500"]
    assert imx500["fits"] is True and imx500["input_format"] in ("signed", "unsigned") and imx500["input_scale"] > 0
    assert imx500["packer_out"] == str(folder / "packerOut.zip")
    assert next(m for m in results["models"] if m["model"] == "tflite_quantized")["imx500"]["fits"] is True


@pytest.mark.slow
@pytest.mark.hardware
def test_vela_puts_every_operator_of_the_full_integer_model_on_the_npu(hardware_run):
    _, out, results, _ = hardware_run
    ethos_u = next(m for m in results["models"] if m["model"] == "tflite_full_int8")["ethos_u"]
    assert ethos_u["compiled"] and ethos_u["accelerator"] == "ethos-u55-128"
    assert ethos_u["npu_share"] == 1.0 and ethos_u["cpu_operators"] == 0 and ethos_u["npu_operators"] > 0
    assert ethos_u["sram_kib"] > 0 and ethos_u["cycles_total"] > 0 and ethos_u["inferences_per_second"] > 0
    assert (out / "models" / "model_full_int8_vela.tflite").stat().st_size > 0
    float_model = next(m for m in results["models"] if m["model"] == "tflite")["ethos_u"]
    assert float_model == {
        "compiled": False,
        "reason": "not for Ethos-U: needs a full-integer model "
        "(variant float32 is not; build full_int8, full_uint8 or full_int16x8)",
    }


@pytest.mark.slow
@pytest.mark.hardware
def test_vela_declines_a_float_model_instead_of_running(hardware_run, tmp_path):
    _, out, _, _ = hardware_run
    result = compile_for_ethos_u(
        model_path=str(out / "models" / "model.tflite"),
        variant="float32",
        accelerator="ethos-u55-128",
        out_dir=tmp_path,
    )
    assert result.compiled is False and result.reason.startswith("not for Ethos-U: needs a full-integer model")
    assert list(tmp_path.iterdir()) == []  # Vela never ran


@pytest.mark.slow
@pytest.mark.hardware
def test_a_rerun_does_not_call_the_compilers_again(hardware_run):
    config_path, _, _, _ = hardware_run
    states = task_states(run(config_path), expected=19)
    assert states["compile-for-imx500"] == "Cached" and states["compile-for-ethos-u-full_int8"] == "Cached", states


@pytest.mark.slow
@pytest.mark.hardware
def test_a_target_device_restricts_the_recommendation(hardware_run):
    _, _, results, _ = hardware_run
    assert recommend(results["models"], 0.05, "size", "imx500").chosen == "tflite_quantized"
    on_ethos_u = recommend(results["models"], 0.05, "size", "ethos-u55-128")
    assert on_ethos_u.chosen == "tflite_full_int8" and "most operators on the NPU" in on_ethos_u.reason
    assert any("not for Ethos-U" in r.reason for r in on_ethos_u.rejected)


@pytest.mark.slow
@pytest.mark.hardware
def test_the_converters_refusal_of_a_layer_the_tool_cannot_substitute_is_a_verdict_naming_it(
    rescaling_models, tmp_path
):
    """An image's Rescaling becomes a 1x1 depthwise convolution (tests/test_substitute_layers.py); one of a 2-D
    tensor has no such equivalent, is left in the MCT model, and the converter refuses it."""
    quantized = quantize_with_mct(
        model_path=str(rescaling_models / "pooled_rescaling.h5"),
        calibration_path=str(rescaling_models / "calibration.npy"),
        batch_size=4,
        target_platform="imx500",
        out_dir=tmp_path,
        progress=False,
    )
    assert quantized.substituted_layers is None
    converter, java = converter_and_java()
    report = compile_for_imx500(quantized_keras_path=quantized.path, out_dir=tmp_path, converter=converter, java=java)
    assert report.compiled is False and report.skipped is False and report.fits is None
    assert report.reason == "refused by the IMX500 converter: unsupported ops: Rescaling (layer rescaling)"


def test_without_the_converter_the_step_is_skipped_with_how_to_install_it(tmp_path):
    result = compile_for_imx500(quantized_keras_path="model_quantized.keras", out_dir=tmp_path, converter=None)
    assert result.skipped and "make imx500" in result.reason and "IMX500_CONVERTER" in result.reason


def test_a_model_too_large_for_the_sensor_is_reported_and_can_fail_the_run(tmp_path):
    report = tmp_path / "big_MemoryReport.json"
    report.write_text(
        json.dumps(
            {
                "Memory Report": {
                    "Runtime Memory Physical Size": "89088B",
                    "Model Memory Physical Size": "9783968B",
                    "Memory Usage": "9874080B",
                    "Total Memory Available On Chip": "8388480B",
                    "Memory Utilization": "118%",
                    "Fit In Chip": False,
                }
            }
        )
    )
    imx500 = {"skipped": False, "compiled": False, **parse_memory_report(report)}
    assert imx500["fits"] is False and imx500["utilization_percent"] == 118
    too_big = {"hardware": {"imx500": imx500}}

    class Config:
        imx500_require_fit = True

    with pytest.raises(
        InputError, match=r"does not fit the IMX500: 9,874,080 bytes needed, 8,388,480 available \(118%\)"
    ):
        require_imx500_fit(Config, too_big)
    Config.imx500_require_fit = False
    require_imx500_fit(Config, too_big)  # only reported


@pytest.mark.slow
@pytest.mark.hardware
def test_a_failing_run_is_marked_failed_only_once_its_compiles_have_finished(hardware_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    state = hardware_run[3]  # the Keras evaluation failed at once; the compiles ran on
    assert state.is_failed()

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    compiles = [r for r in task_runs if r.name.startswith("compile-for-")]
    assert {r.name.rsplit("-", 1)[0] if r.name.startswith("compile-for-imx500") else r.name for r in compiles} == {
        "compile-for-imx500",
        "compile-for-ethos-u-full_int8",
    }
    for compile_run in compiles:
        assert compile_run.state is not None and compile_run.state.is_completed(), compile_run.name
        assert compile_run.state.name == "Completed", f"{compile_run.name}: {compile_run.state.name}, not run here"
        assert compile_run.end_time is not None and flow_run.end_time is not None
        assert compile_run.end_time <= flow_run.end_time, f"{compile_run.name} ended after the run was marked Failed"
