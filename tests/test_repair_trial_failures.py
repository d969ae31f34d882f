"""A repair trial's crash is that trial's: whatever one of its steps raises (equalization, MCT, the evaluation, a
compiler), or the death of the process running it, is recorded as that trial failed, with the step and the error,
and the search goes on with the next; only an interrupt or a cancelled run stops it."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from core.build.equalization import CannotEqualize
from core.build.recipes import BuildSettings, Built
from core.build.records import QuantizedModel
from core.config import Preprocessing
from core.data.records import CalibrationSource
from core.kinds.records import ClassificationEvaluation
from core.repair.records import RepairRecipe, RepairTrial, TrialInputs
from core.repair.try_repair import try_repair
from tests.helpers import run, sdk_config, write_config

PLAIN = RepairRecipe(name="mct_plain", description="MCT PTQ again", builder="mct")
EQUALIZED = RepairRecipe(name="mct_cle", description="equalization, then MCT PTQ", builder="mct", equalize=True)
BASELINE = 0.9


def raising(error: BaseException):
    def fail(*args, **kwargs):
        raise error

    return fail


@pytest.fixture
def inputs(tmp_path) -> TrialInputs:
    """A trial's inputs on a tiny real Keras model and four tuning images (the labels are never read here)."""
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input((4, 4, 3)), tf.keras.layers.Flatten(), tf.keras.layers.Dense(2)])
    model.save(tmp_path / "model.h5")
    np.save(tmp_path / "tuning.npy", np.zeros((4, 4, 4, 3), np.float32))
    return TrialInputs(
        build=BuildSettings(model_path=str(tmp_path / "model.h5"), batch_size=4, target_platform="imx500"),
        error_method="mse",
        calibration_path=str(tmp_path / "tuning.npy"),
        calibration_source=CalibrationSource(
            dataset_image_dir=str(tmp_path),
            input_tensor_size=4,
            batch_size=4,
            iteration_count=1,
            preprocessing=Preprocessing(),
            seed=0,
        ),
        target_device=None,
        ethos_u_accelerator="ethos-u55-128",
        tuning_images_path=str(tmp_path / "tuning.npy"),
        tuning_labels_path=str(tmp_path / "labels.json"),
        evaluation_batch_size=4,
        class_count=2,
        task="classification",
        baseline_score=BASELINE,
        max_accuracy_drop=0.01,
    )


def an_mct_model(tmp_path: Path):
    """build_model as it returns an MCT model with 16-bit activations (no TFLite: the IMX500's), without MCT."""
    path = tmp_path / "quantized.keras"
    path.write_bytes(b"an MCT model")
    quantized = QuantizedModel(
        variant="mct_ptq",
        path=str(path),
        method="ptq",
        error_method="mse",
        target_platform="imx500",
        tpc_version="4.0",
        mct_version="2.6.1",
        sixteen_bit_activations=["dense"],
    )
    return lambda *args, **kwargs: Built(quantized=quantized)


def within_the_budget(monkeypatch) -> None:
    monkeypatch.setattr("core.repair.try_repair.evaluate_model", lambda **kwargs: None)
    evaluation = ClassificationEvaluation.counted(
        model="keras_repaired",
        model_path="-",
        correct=int(BASELINE * 100),
        correct_top_5=100,
        seconds=0.0,
        confusion_matrix=[[0]],
        predicted=[0] * 100,
        shard=(0, 100),
    )
    assert evaluation.score == BASELINE
    monkeypatch.setattr("core.repair.try_repair.scored", lambda _: evaluation)


def test_an_exception_in_equalization_is_the_trials_failure_named_with_its_step(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr("core.repair.try_repair.equalize", raising(TypeError("unhashable type: 'list'")))

    trial = try_repair(recipe=EQUALIZED, inputs=inputs, out_dir=tmp_path)

    assert trial.ran and not trial.qualifies and trial.tuning_top_1 is None
    assert trial.reason == "the trial failed while equalizing the float model: TypeError: unhashable type: 'list'"
    assert trial.error == "TypeError: unhashable type: 'list'" and trial.summary()["error"] == trial.error


def test_a_model_equalization_cannot_rewrite_is_refused_with_why(inputs, tmp_path, monkeypatch):
    refusal = CannotEqualize("model 'm' cannot be rebuilt from its configuration, which equalization rewrites: ...")
    monkeypatch.setattr("core.repair.try_repair.equalize", raising(refusal))

    trial = try_repair(recipe=EQUALIZED, inputs=inputs, out_dir=tmp_path)

    assert not trial.qualifies and trial.reason == f"equalization cannot rewrite this model: {refusal}"
    assert trial.error is not None and trial.error.startswith("CannotEqualize: model 'm' cannot be rebuilt")


def test_an_exception_in_the_builder_is_the_trials_failure(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr("core.repair.try_repair.build_model", raising(RuntimeError("MCT gave up\nits traceback")))

    trial = try_repair(recipe=PLAIN, inputs=inputs, out_dir=tmp_path)

    assert not trial.qualifies and trial.error == "RuntimeError: MCT gave up"  # the message's first line
    assert trial.reason == "the trial failed while making the recipe's model: RuntimeError: MCT gave up"


def test_an_exception_in_the_evaluation_is_the_trials_failure(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr("core.repair.try_repair.build_model", an_mct_model(tmp_path))
    monkeypatch.setattr("core.repair.try_repair.evaluate_model", raising(ValueError("no such tensor")))

    trial = try_repair(recipe=PLAIN, inputs=inputs, out_dir=tmp_path)

    assert not trial.qualifies and trial.tuning_top_1 is None
    assert (
        trial.reason
        == "the trial failed while evaluating keras_repaired on the tuning images: ValueError: no such tensor"
    )


def test_a_compiler_that_raises_on_a_model_within_the_budget_fails_the_trial_keeping_its_score(
    inputs, tmp_path, monkeypatch
):
    monkeypatch.setattr("core.repair.try_repair.build_model", an_mct_model(tmp_path))
    within_the_budget(monkeypatch)
    monkeypatch.setattr("core.repair.try_repair.converter_and_java", lambda: ("imxconv-tf", "java"))
    monkeypatch.setattr("core.repair.try_repair.compile_for_imx500", raising(OSError("converter vanished")))

    trial = try_repair(recipe=PLAIN, inputs=inputs.model_copy(update={"target_device": "imx500"}), out_dir=tmp_path)

    assert not trial.qualifies and not trial.deployable and trial.within_budget and trial.tuning_top_1 == BASELINE
    assert trial.reason == "the trial failed while checking that the target takes it: OSError: converter vanished"


def test_an_interrupt_is_not_a_trials_failure_but_stops_the_search(inputs, tmp_path, monkeypatch):
    monkeypatch.setattr("core.repair.try_repair.build_model", raising(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        try_repair(recipe=PLAIN, inputs=inputs, out_dir=tmp_path)


def test_a_trial_task_that_failed_or_crashed_is_a_failed_trial_and_a_cancelled_one_stops_the_search():
    from prefect.exceptions import CancelledRun
    from prefect.states import Cancelled, Completed, Crashed, Failed

    from tasks.search_repair import _settled

    finished = RepairTrial.not_run(PLAIN, "", "a trial's own record")
    assert _settled(PLAIN, Completed(data=finished)) == (finished, False)
    assert _settled(PLAIN, Completed(data=finished, name="Cached")) == (finished, True)

    failed, cached = _settled(PLAIN, Failed(data=RuntimeError("outside the trial's steps")))
    assert not cached and failed.ran and not failed.qualifies and failed.recipe == PLAIN
    assert failed.reason == "the trial's run failed: RuntimeError: outside the trial's steps"
    crashed, _ = _settled(PLAIN, Crashed(message="Execution was interrupted by the process dying"))
    assert not crashed.qualifies and crashed.error is not None and crashed.reason.startswith("the trial's run failed: ")
    with pytest.raises(CancelledRun):
        _settled(PLAIN, Cancelled())


def test_a_trial_whose_dask_workers_all_died_is_a_failed_trial():
    from distributed import KilledWorker

    from tasks.search_repair import _settled_future

    class KilledFuture:
        def result(self, raise_on_failure: bool = True):
            last_worker = SimpleNamespace(address="tcp://127.0.0.1:40000")
            raise KilledWorker("try-repair-mct_cle", last_worker, allowed_failures=3)

    trial, cached = _settled_future(PLAIN, KilledFuture())  # type: ignore[arg-type]

    assert not cached and not trial.qualifies and trial.error is not None
    assert trial.reason.startswith("the trial's run failed: KilledWorker: Attempted to run task 'try-repair-mct_cle'")


@pytest.mark.slow
def test_a_trial_whose_builder_raises_is_recorded_as_failed_and_the_search_goes_on(
    prefect_harness, sample_dir, tmp_path, monkeypatch
):
    """The digits sample given a channel-range imbalance that 8-bit PTQ does not survive, repaired with no target
    device: the ladder's MCT and converter rungs take turns. MCT's builder is made to raise: its first rung, mct_cle,
    fails with the error, and the converter's, converter_cle, runs next and repairs the model."""
    from core.build.build_model import build_model
    from core.data.sample_data import make_imbalanced
    from core.results.results_text import repair_text

    def mct_raises(recipe, *args, **kwargs):
        if recipe.builder == "mct":
            raise RuntimeError("injected: MCT raised on this model")
        return build_model(recipe, *args, **kwargs)

    monkeypatch.setattr("core.repair.try_repair.build_model", mct_raises)
    broken = make_imbalanced(sample_dir / "model.h5", tmp_path / "broken" / "model.h5")
    config = sdk_config(sample_dir, tmp_path, source_keras_model=str(broken), max_accuracy_drop=0.05)
    state = run(write_config(tmp_path / "configuration.json", config))

    assert state.is_completed(), state.message
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    first, second = results["repair"]["trials"][:2]
    reason = "the trial failed while making the recipe's model: RuntimeError: injected: MCT raised on this model"
    assert first["recipe"] == "mct_cle" and first["ran"] and not first["qualifies"] and first["reason"] == reason
    assert first["error"] == "RuntimeError: injected: MCT raised on this model" and first["tuning_top_1"] is None
    assert second["recipe"] == "converter_cle" and second["qualifies"] and second["error"] is None
    assert results["repair"]["chosen"] == "converter_cle"
    assert f"trial 1 mct_cle: tuning Top-1 -; {reason}" in repair_text(results)
    assert "RuntimeError: injected: MCT raised on this model" in Path(results["report"]).read_text()
