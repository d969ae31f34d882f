"""Each device is one Target: the models it takes, its repair's builders, whether a model deploys there and why not.
A compiler's report is judged the same whether it is a record or a row of results.json."""

from typing import get_args

import pytest

from core.build.variants import TargetDevice
from core.targets.devices import TARGETS, EthosUTarget, Imx500, Target, target_for, within_budget
from core.targets.records import EthosUReport, HardwareReports, Imx500Report

FITS = Imx500Report(compiled=True, skipped=False, fits=True, utilization_percent=40.0)
TOO_LARGE = Imx500Report(compiled=True, skipped=False, fits=False, utilization_percent=130.0)
NO_CONVERTER = Imx500Report(compiled=False, skipped=True, reason="the IMX500 converter is not installed")
FAILED = Imx500Report(
    compiled=False, skipped=False, reason="refused by the IMX500 converter: unsupported ops: Rescaling"
)
VELA_OK = EthosUReport(compiled=True, npu_share=1.0)
VELA_REFUSED = EthosUReport(compiled=False, reason="not for Ethos-U: needs a full-integer model")


def test_every_device_a_configuration_may_name_has_a_target_and_no_other_does():
    assert set(TARGETS) == {None, *get_args(TargetDevice)}
    assert type(target_for(None)) is Target and isinstance(target_for("imx500"), Imx500)
    ethos_u = [device for device in get_args(TargetDevice) if device != "imx500"]
    assert all(isinstance(target_for(d), EthosUTarget) and target_for(d).device == d for d in ethos_u)
    with pytest.raises(ValueError, match="unknown target_device 'edgetpu'"):
        target_for("edgetpu")


def test_the_imx500_takes_the_mct_ptq_model_when_it_fits_the_sensor():
    imx500 = target_for("imx500")
    assert imx500.takes("tflite_quantized", "float32") and not imx500.takes("tflite_full_int8", "float32")
    assert imx500.problem({"imx500": FITS.as_results()}) is None
    assert "does not fit the IMX500 (130% of its memory)" == imx500.problem({"imx500": TOO_LARGE.as_results()})
    assert imx500.problem({"imx500": NO_CONVERTER.as_results()}) == "the IMX500 converter is not installed"
    assert imx500.problem({"imx500": FAILED.as_results()}) == FAILED.reason
    assert "not converted for the IMX500" in imx500.problem({})


def test_an_ethos_u_takes_what_vela_compiled_and_puts_the_npu_first():
    ethos_u = target_for("ethos-u65-256")
    assert ethos_u.takes("tflite_full_int8", "float32") and ethos_u.npu_first and ethos_u.builders == ("converter",)
    assert ethos_u.problem({"ethos_u": VELA_OK.as_results()}) is None
    assert ethos_u.problem({"ethos_u": VELA_REFUSED.as_results()}) == VELA_REFUSED.reason
    assert ethos_u.problem({}) == "not compiled for Ethos-U"


def test_no_device_takes_every_model_and_repairs_with_both_builders():
    anywhere = target_for(None)
    assert anywhere.problem({"imx500": TOO_LARGE.as_results()}) is None
    assert anywhere.builders == ("mct", "converter") and not anywhere.npu_first and anywhere.compiler is None


def test_a_record_and_its_results_row_get_the_same_verdict():
    for report in (FITS, TOO_LARGE, NO_CONVERTER, FAILED):
        hardware = HardwareReports(imx500=report, ethos_u={"tflite_full_int8": VELA_OK})
        on_record = target_for("imx500").problem(hardware.reports_of("tflite_quantized", "float32"))
        assert on_record == target_for("imx500").problem({"imx500": report.as_results()})
    # The converter's report belongs to the MCT PTQ model only.
    assert hardware.reports_of("tflite_full_int8", "float32") == {"imx500": None, "ethos_u": VELA_OK.as_results()}


@pytest.mark.parametrize(
    ("device", "problem"),
    [
        ("imx500", "target_device 'imx500' needs target_platform 'imx500', got 'tflite'"),
        (
            "ethos-u55-128",
            "target_device 'ethos-u55-128' needs a full-integer model: add 'full_int8', 'full_uint8' or 'full_int16x8'",
        ),
    ],
)
def test_a_configuration_that_contradicts_its_target_is_refused(device, problem):
    found = target_for(device).configuration_problem(target_platform="tflite", variants=["float32", "mct_ptq"])
    assert found is not None and found.startswith(problem)
    assert target_for(None).configuration_problem(target_platform="tflite", variants=["float32"]) is None


def test_a_drop_equal_to_the_budget_is_within_it_and_a_larger_one_is_not():
    assert within_budget(0.01, 0.01) and within_budget(0.3 - 0.29, 0.01)  # 0.010000000000000009
    assert not within_budget(0.0101, 0.01)
