"""MCT's platform description: matched to the installed IMX500 converter, and every documented
`target_platform` quantizes a standard architecture (MobileNetV2)."""

from pathlib import Path

import numpy as np
import pytest

from core.build.platforms import choose_platform
from core.build.quantize_with_mct import quantize_with_mct


def fake_converter(root: Path, sdspconv_version: str) -> str:
    """An environment laid out as `make imx500` lays out .venv-imx500, with the given sdspconv."""
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "imxconv-tf").write_text("#!/bin/sh\n")
    (root / "lib" / "python3.11" / "site-packages" / f"sdspconv-{sdspconv_version}.dist-info").mkdir(parents=True)
    return str(root / "bin" / "imxconv-tf")


@pytest.mark.parametrize(
    ("sdspconv", "tpc", "reason"),
    [
        ("3.14.2", "1.0", "the TPC MCT pairs with IMX500 converter 3.14.2"),
        ("3.16.0", "4.0", "the TPC MCT pairs with IMX500 converter 3.16.0"),
        ("3.18.1", "5.0", "the TPC MCT pairs with IMX500 converter 3.18.1"),
        ("3.19.1", "5.0", "converter 3.19.1 is newer than MCT's table (up to 3.18): the TPC of converter 3.18"),
        ("3.12.0", "1.0", "converter 3.12.0 is older than any MCT knows"),
    ],
)
def test_the_imx500_description_follows_the_installed_converter(tmp_path, sdspconv, tpc, reason):
    choice = choose_platform("imx500", fake_converter(tmp_path, sdspconv))
    assert (choice.tpc_version, choice.imx500_converter_version) == (tpc, sdspconv)
    assert choice.reason.startswith(reason)


def test_without_the_converter_the_imx500_description_is_mcts_default(tmp_path, monkeypatch):
    monkeypatch.setenv("IMX500_CONVERTER", str(tmp_path / "missing" / "imxconv-tf"))
    choice = choose_platform("imx500")
    assert choice.tpc_version == "1.0" and choice.imx500_converter_version is None
    assert "not installed" in choice.reason


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["imx500", "tflite", "qnnpack"])
def test_every_documented_platform_quantizes_a_mobilenet_v2(tmp_path, platform):
    import tensorflow as tf

    model = tf.keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, classes=10)
    model.save(tmp_path / "mobilenet_v2.h5")
    np.save(tmp_path / "calibration.npy", np.random.default_rng(0).random((4, 32, 32, 3), np.float32))
    quantized = quantize_with_mct(
        model_path=str(tmp_path / "mobilenet_v2.h5"),
        calibration_path=str(tmp_path / "calibration.npy"),
        batch_size=4,
        target_platform=platform,
        out_dir=tmp_path,
        progress=False,
    )
    assert Path(quantized.path).stat().st_size > 0 and quantized.target_platform == platform
