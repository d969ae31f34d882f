"""16-bit activations only where a layer needs them, on the IMX500: which layers MCT lets take them is read from
the TPC in use, and a model quantized so keeps them (a tiny residual model built here)."""

from __future__ import annotations

import numpy as np
import pytest

from core.build.platforms import choose_platform


def tiny_residual(path):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inputs = tf.keras.Input((8, 8, 3))
    a = layers.ReLU(name="relu_a")(layers.Conv2D(8, 3, padding="same", name="conv_a")(inputs))
    b = layers.Conv2D(8, 1, name="conv_b")(inputs)
    joined = layers.Add(name="add")([a, b])
    outputs = layers.Dense(4, name="dense")(layers.GlobalAveragePooling2D(name="gap")(joined))
    tf.keras.Model(inputs, outputs).save(path)
    return str(path)


@pytest.mark.slow
@pytest.mark.hardware  # the TPC follows the installed IMX500 converter (TPC 1.0 without it has no 16 bits)
def test_only_layers_whose_operator_and_consumers_take_16_bits_are_candidates_and_they_keep_them(tmp_path):
    from mct_quantizers import KerasActivationQuantizationHolder, keras_load_quantized_model

    from core.build.precision import sixteen_bit_layers
    from core.build.quantize_with_mct import quantize_with_mct

    if choose_platform("imx500").tpc_version < "4.0":
        pytest.skip("the IMX500 TPC in use has no 16-bit activations: install the converter (make imx500)")
    model = tiny_residual(tmp_path / "model.keras")
    np.save(tmp_path / "calibration.npy", np.random.default_rng(0).normal(size=(16, 8, 8, 3)).astype(np.float32))
    arguments = dict(model_path=model, calibration_path=str(tmp_path / "calibration.npy"), batch_size=8)
    candidates = sixteen_bit_layers(**arguments, target_platform="imx500")
    # relu_a and conv_b feed the Add, which takes 16-bit input; the Add feeds the pooling, which does not; conv_a's
    # output is fused with relu_a's; dense is the model output.
    assert sorted(candidates) == ["conv_b", "dense", "relu_a"]
    quantized = quantize_with_mct(
        **arguments, target_platform="imx500", out_dir=tmp_path, progress=False, sixteen_bit_activations=("relu_a",)
    )
    assert quantized.sixteen_bit_activations == ["relu_a"]
    loaded = keras_load_quantized_model(quantized.path)
    bits = {
        holder.inbound_nodes[0].inbound_layers.name: holder.activation_holder_quantizer.num_bits
        for holder in loaded.layers
        if isinstance(holder, KerasActivationQuantizationHolder)
    }
    assert bits["relu_a"] == 16 and bits["add"] == 8


@pytest.mark.slow
@pytest.mark.hardware
def test_activation_spikes_no_equalization_can_trade_are_repaired_for_an_ethos_u_by_16_bit_activations(
    prefect_harness, sample_dir, tmp_path
):
    """The sample CNN with one more first-layer channel that spikes 3000x on near-white patches and that nothing
    reads (core.data.sample_data.make_activation_spikes): the same function, which full-integer 8 bits breaks."""
    from core.data.sample_data import make_activation_spikes
    from tests.helpers import completed_results

    model = make_activation_spikes(sample_dir / "model.h5", tmp_path / "spiky" / "model.h5")
    results = completed_results(
        sample_dir,
        tmp_path,
        source_keras_model=str(model),
        max_accuracy_drop=0.05,
        target_device="ethos-u55-128",
        variants=["full_int8"],
    )
    rows = {row["model"]: row for row in results["models"]}
    assert results["top_1_accuracy_keras"] - rows["tflite_full_int8"]["top_1_accuracy"] > 0.2
    trials = {trial["recipe"]: trial for trial in results["repair"]["trials"]}
    if "converter_cle" in trials:  # tried for the channels' spread the analysis also found: it cannot help
        assert not trials["converter_cle"]["qualifies"]
        assert "channel(s) left: no weight of" in trials["converter_cle"]["equalization"]
    repair = results["repair"]
    assert repair["chosen"] == "converter_16x8"
    assert trials["converter_16x8"]["chosen_because"].startswith("the analysis: ")
    assert trials["converter_16x8"]["npu_share"] == 1.0  # Vela runs the int16 activations on the NPU
    assert repair["chosen_drop_reporting"] <= 0.05  # on the images the search never saw
    repaired = rows["tflite_repaired"]
    assert repaired["input_dtype"] == "int16" and repaired["ethos_u"]["compiled"]
    assert results["recommendation"]["chosen"] == "tflite_repaired"


@pytest.fixture(scope="module")
def offset_logits_run(prefect_harness, sample_dir, tmp_path_factory):
    """The sample CNN giving its logits with a common offset of 3000 (core.data.sample_data.make_offset_logits): the
    same predictions, which 8-bit logits lose."""
    from core.data.sample_data import make_offset_logits
    from tests.helpers import completed_results

    if choose_platform("imx500").tpc_version < "4.0":
        pytest.skip("the IMX500 TPC in use has no 16-bit activations: install the converter (make imx500)")
    out = tmp_path_factory.mktemp("offset-logits")
    model = make_offset_logits(sample_dir / "model.h5", out / "logits" / "model.h5")
    settings = dict(source_keras_model=str(model), max_accuracy_drop=0.05, target_device="imx500")
    return out, completed_results(sample_dir, out, **settings)


@pytest.mark.slow
@pytest.mark.hardware
def test_8_bit_logits_lose_the_gaps_between_classes_and_the_analysis_names_the_last_layer(offset_logits_run):
    _, results = offset_logits_run
    assert results["top_1_accuracy_keras"] - results["top_1_accuracy_tflite_quantized"] > 0.2
    worst = results["layer_analysis"]["tflite_quantized"]["layers"][0]
    assert worst["layer"] == "dense" and "sensitive_last" in worst["cause_kinds"], worst


@pytest.mark.slow
@pytest.mark.hardware
def test_16_bits_on_the_last_layer_alone_repair_it_for_the_imx500_and_the_sensor_takes_the_model(offset_logits_run):
    out, results = offset_logits_run
    repair = results["repair"]
    trials = {trial["recipe"]: trial for trial in repair["trials"]}
    assert repair["chosen"] == "mct_16bit" and repair["chosen_model"] == "keras_repaired"
    promoted = trials["mct_16bit"]
    assert promoted["sixteen_bit_activations"] == ["dense"]  # the analysis's worst layer, and no other
    assert promoted["chosen_because"].startswith("the analysis: dense lost")
    assert promoted["imx500_fits"]  # Sony's converter compiled the 16-bit model and it fits the sensor
    assert repair["chosen_drop_reporting"] <= 0.05  # on the images the search never saw
    rows = {row["model"]: row for row in results["models"]}
    repaired = rows["keras_repaired"]
    assert repaired["file"].endswith("model_repaired.keras") and repaired["imx500"]["fits"]
    assert repaired["imx500"]["memory_usage_bytes"] > 0  # the memory report's figure, beside PTQ's
    assert results["recommendation"]["chosen"] == "keras_repaired"
    assert (out / "models" / "model_repaired.keras").stat().st_size > 0
    assert not (out / "models" / "model_repaired.tflite").exists()
    # What the device takes, published: Sony's converter's output for the repaired model, beside PTQ's imx500/
    assert (out / "models" / "imx500_repaired" / "packerOut.zip").stat().st_size > 0
    from core.results.results_text import repair_text

    assert "trial 1 mct_16bit (16 bits on dense): tuning Top-1" in repair_text(results)  # the terminal's lines
    assert repaired["imx500"]["packer_out"] == str(out / "models" / "imx500_repaired" / "packerOut.zip")


def analysis_of(losses: dict[str, float]):
    from core.analysis.records import LayerAnalysis, LayerReport

    layers = [
        LayerReport(
            layer=name,
            type="Dense",
            rank=rank,
            loss_db=loss,
            loss_seen_at=[name],
            metrics={},
            output_range=None,
            channel_spread=None,
            negative_share=None,
            outlier_ratio=None,
            causes=[],
        )
        for rank, (name, loss) in enumerate(sorted(losses.items(), key=lambda item: -item[1]), 1)
    ]
    return LayerAnalysis(model="tflite_quantized", method="xquant", layers=layers, model_metrics={}, summary="")


def test_candidates_are_promoted_worst_first_and_those_the_analysis_did_not_measure_nearest_the_output_first():
    from core.repair.precision_search import groups, ranked_candidates

    ranked = ranked_candidates(["a", "b", "c", "d", "e"], [analysis_of({"b": 3.0, "d": 20.0, "x": 50.0})])
    assert ranked == ["d", "b", "e", "c", "a"]  # x is not a candidate: the TPC does not let it take 16 bits
    assert list(groups(ranked)) == [("d",), ("b",), ("e", "c"), ("a",)]
    assert list(groups([])) == []


def test_the_group_grows_until_a_trial_qualifies_and_a_promotion_that_does_not_help_is_dropped():
    from core.repair.precision_search import grow_precision
    from core.repair.records import RepairRecipe, RepairTrial

    # A model that 16 bits on "tail" and "join" cure together; "noise" changes nothing.
    def score(layers: tuple[str, ...]) -> float:
        return 0.5 + 0.2 * ("tail" in layers) + 0.25 * ("join" in layers)

    ran: list[tuple[str, ...]] = []

    def run(recipe: RepairRecipe, why: str) -> RepairTrial:
        layers = recipe.sixteen_bit_activations
        ran.append(layers)
        qualifies = score(layers) >= 0.9
        return RepairTrial.not_run(recipe, why, "").model_copy(
            update={"tuning_top_1": score(layers), "qualifies": qualifies}
        )

    recipe = RepairRecipe(name="mct_16bit", description="", builder="mct", precision=True)
    found = grow_precision(recipe, "the analysis", ["tail", "noise", "join", "other"], run)
    assert ran == [("tail",), ("tail", "noise"), ("tail", "join", "other")]  # noise did not help: dropped
    assert found is not None and found.qualifies and found.recipe.sixteen_bit_activations == ("tail", "join", "other")
    assert "16 bits on tail, join, other (kept: tail)" in found.chosen_because


def test_the_group_stops_growing_when_the_search_runs_out_of_trials():
    from core.repair.precision_search import grow_precision
    from core.repair.records import RepairRecipe, RepairTrial

    budget = [2]

    def run(recipe: RepairRecipe, why: str) -> RepairTrial | None:
        if not budget[0]:
            return None
        budget[0] -= 1
        return RepairTrial.not_run(recipe, why, "").model_copy(update={"tuning_top_1": 0.1})

    recipe = RepairRecipe(name="mct_16bit", description="", builder="mct", precision=True)
    found = grow_precision(recipe, "", ["a", "b", "c", "d"], run)
    assert found is not None and found.recipe.sixteen_bit_activations == ("a", "b")  # the last one that ran


@pytest.mark.slow
@pytest.mark.hardware
def test_for_an_ethos_u_the_debuggers_analysis_names_the_logits_and_16x8_repairs_them_first(
    prefect_harness, sample_dir, tmp_path
):
    from core.data.sample_data import make_offset_logits
    from tests.helpers import completed_results

    model = make_offset_logits(sample_dir / "model.h5", tmp_path / "logits" / "model.h5")
    results = completed_results(
        sample_dir,
        tmp_path,
        source_keras_model=str(model),
        max_accuracy_drop=0.05,
        target_device="ethos-u55-128",
        variants=["full_int8"],
    )
    worst = results["layer_analysis"]["tflite_full_int8"]["layers"][0]
    assert worst["layer"] == "dense" and "sensitive_last" in worst["cause_kinds"], worst
    repair = results["repair"]
    assert repair["trials"][0]["recipe"] == "converter_16x8" and repair["chosen"] == "converter_16x8"
    assert repair["chosen_drop_reporting"] <= 0.05


def test_a_layers_own_activation_is_ranked_by_the_analysis_of_its_layer():
    from core.repair.precision_search import ranked_candidates

    analysis = analysis_of({"conv": 15.0, "tail": 2.0})
    assert ranked_candidates(["conv_post_activation", "tail", "other"], [analysis]) == [
        "conv_post_activation",
        "tail",
        "other",
    ]


def score_ranking(gains: dict[str, float], quantized_score: float = 0.4):
    from core.analysis.records import LayerSensitivity, ScoreSensitivity

    layers = [
        LayerSensitivity(layer=name, holders=[name], score=quantized_score + gain, gain=gain, seconds=0.1)
        for name, gain in sorted(gains.items(), key=lambda item: -item[1])
    ]
    return ScoreSensitivity(
        quantized_score=quantized_score,
        quantized_seconds=0.1,
        layers=layers,
        not_found=[],
        left_out=[],
        seconds=1.0,
        image_count=100,
    )


def test_the_layers_whose_float_output_raises_the_score_come_first_then_the_analysis_order():
    """A detector's head loses little signal-to-noise and most of the mAP: the score's ranking puts it first."""
    from core.repair.precision_search import ranked_candidates

    analysis = analysis_of({"conv": 7.3, "head": 1.7, "mid": 3.0})
    assert ranked_candidates(["conv", "mid", "head"], [analysis]) == ["conv", "mid", "head"]
    ranking = score_ranking({"head": 0.19, "conv": 0.002, "mid": -0.001})
    assert ranked_candidates(["conv", "mid", "head"], [analysis], ranking) == ["head", "conv", "mid"]


def test_a_layer_that_alone_wins_back_half_the_excess_puts_the_precision_rung_first():
    from core.repair.ladder import by_causes, ladder
    from core.repair.score_ranking import leading_layer, why_rank_by_score

    analysis = analysis_of({"conv": 7.3, "head": 1.7})
    assert why_rank_by_score("detection", [analysis]) is not None  # a detector: always by the score
    assert why_rank_by_score("classification", [analysis_of({"conv": 12.0})]) is None  # the analysis found a loss
    assert why_rank_by_score("classification", [analysis]) is not None  # nothing significant (10 dB) found
    # PTQ dropped 0.19 against a budget of 0.05: the head alone wins back 0.19, the conv 0.002.
    lead = leading_layer(score_ranking({"head": 0.19, "conv": 0.002}), drop=0.19, budget=0.05, task="detection")
    assert lead is not None and lead[0] == "head" and "raises mAP@[.5:.95] from 0.4000 to 0.5900" in lead[1]
    assert leading_layer(score_ranking({"head": 0.05}), drop=0.19, budget=0.05, task="detection") is None
    recipes = ladder(target_device="imx500", error_method="mse")
    assert by_causes(recipes, [analysis])[0][0].name != "mct_16bit"
    first, why = by_causes(recipes, [analysis], precision_leads=lead[1])[0]
    assert first.name == "mct_16bit" and why.startswith("the score ranking: keeping head")
    assert [r.name for r, _ in by_causes(recipes, [analysis], precision_leads=lead[1])].count("mct_16bit") == 1


def test_a_16_bit_node_named_for_a_folded_normalization_follows_the_fold_into_the_equalized_model():
    """MCT names a convolution it folds a batch normalization into '<conv>_bn'; the repair's equalization folds the
    normalization first, and MCT's node is then the convolution's own name (seen on a MobileNetV2-style detector:
    'No nodes found in the graph for filter b2_project_bn')."""
    import tensorflow as tf

    from core.build.precision import node_names_in

    inputs = tf.keras.Input((8, 8, 3))
    conv = tf.keras.layers.Conv2D(4, 1, name="project")(inputs)
    with_norm = tf.keras.Model(inputs, tf.keras.layers.BatchNormalization(name="project_norm")(conv))
    folded = tf.keras.Model(inputs, tf.keras.layers.Conv2D(4, 1, name="project")(inputs))
    names = ("project_bn", "head", "relu_bn")
    assert node_names_in(with_norm, names) == names  # MCT folds it, and names the node so
    assert node_names_in(folded, names) == ("project", "head", "relu_bn")  # a name with no such layer stays
