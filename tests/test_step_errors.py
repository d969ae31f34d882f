"""When MCT or a converter raises, the step fails with its name, the model and the original message."""

import numpy as np
import pytest

from core.build.quantize_with_mct import quantize_with_mct
from core.errors import StepError

pytestmark = pytest.mark.slow  # MCT on the trained sample model


def test_an_mct_failure_names_the_step_the_model_and_the_cause(sample_dir, tmp_path):
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, np.zeros((4, 32, 32, 3), np.float32))
    model = str(sample_dir / "model.h5")
    with pytest.raises(StepError) as info:
        quantize_with_mct(
            model_path=model,
            calibration_path=str(calibration),
            batch_size=2,
            target_platform="no-such-platform",
            out_dir=tmp_path,
            progress=False,
        )
    message = str(info.value)
    assert message.startswith(f"step 'quantize-with-mct (ptq)' failed for model {model}: ")
    assert "no-such-platform" in message or "device" in message.lower()
    assert not (tmp_path / "model_quantized.keras").exists()
