"""Before the long work, a run says what it will cost; int16x8 leaves the default set where it would dominate it."""

from __future__ import annotations

import logging
from pathlib import Path

from core import run_progress
from core.build.variants import DEFAULT_VARIANTS, variants_to_build
from core.config import QuantizeConfig
from tests.helpers import sdk_config


def config(**overrides) -> QuantizeConfig:
    return QuantizeConfig.model_validate(sdk_config(Path("/sample"), Path("/out"), **overrides))


def test_the_plan_counts_every_evaluated_model_and_mcts_calibration_images():
    plan = run_progress.plan_of(config(variants=None, input_tensor_size=64), evaluation_images=400)
    # keras, keras_quantized, and each default variant (mct_ptq's TFLite export among them)
    assert plan.models == 2 + len(DEFAULT_VARIANTS)
    assert plan.mct_models == 1 and plan.calibration_images == 20 * 3
    assert plan.image_passes == plan.models * 400 + 60
    assert plan.left_out == ()
    assert f"{plan.models} models x 400 evaluation images and MCT on 60 calibration images" in plan.describe()


def test_at_real_size_int16x8_leaves_the_default_set_and_the_plan_says_how_to_have_it():
    real = config(variants=None, input_tensor_size=224)
    plan = run_progress.plan_of(real, evaluation_images=2_000)
    assert plan.left_out == ("int16x8",)
    assert plan.models == 1 + len(DEFAULT_VARIANTS)
    assert "int16x8 left out of the default variants" in plan.describe()
    assert "list it in 'variants'" in plan.describe()
    assert "int16x8" not in variants_to_build(None, "float32", 2_000 * 224**2)
    # listed, it is built whatever the size
    assert "int16x8" in variants_to_build(["int16x8"], "float32", 2_000 * 224**2)
    assert run_progress.plan_of(config(variants=["int16x8"], input_tensor_size=224), 2_000).left_out == ()


def test_the_time_left_is_logged_once_a_tenth_of_the_passes_is_done(caplog):
    plan = run_progress.RunPlan(models=2, evaluation_images=50, mct_models=0, calibration_images=0)
    log = logging.getLogger("run-plan-test")
    with caplog.at_level(logging.INFO, logger="run-plan-test"):
        progress = run_progress.start(plan, enabled=False, log=log)
        run_progress.advance(5)
        assert not [r for r in caplog.records if "left" in r.getMessage()]
        run_progress.advance(5)
        run_progress.advance(40)
        run_progress.finish()
    estimates = [r.getMessage() for r in caplog.records if "left (estimated from the first" in r.getMessage()]
    assert len(estimates) == 1 and "of 100 image passes" in estimates[0]
    assert progress.done == 50
    run_progress.advance(10)  # after the run: nothing to count it in
