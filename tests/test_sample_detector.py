"""The detection sample's detector: trained here on digits placed on canvases (no download), well above chance in
COCO mAP from COCO's own evaluator; its head, a tensor that mixes objectness, category logits and box offsets, loses
box precision at 8 bits under MCT, and 16 bits there (found in the graph: the only layer the IMX500's TPC lets take
them) give it back. The groundwork of detection (issue 21)."""

from __future__ import annotations

import numpy as np
import pytest

from core.build.platforms import choose_platform


@pytest.fixture(scope="module")
def detector(detection_sample, tmp_path_factory):
    from core.data.coco import read_coco_annotations
    from core.data.sample_detector import images_of

    folder = tmp_path_factory.mktemp("detector")
    sample, model = detection_sample, detection_sample / "model.h5"  # 600 training and 200 validation canvases
    training = read_coco_annotations(sample / "training.json", sample / "training")
    np.save(folder / "calibration.npy", images_of(training, sample / "training")[:128])
    validation = read_coco_annotations(sample / "validation.json", sample / "validation")
    return model, folder / "calibration.npy", validation, images_of(validation, sample / "validation")


def scores(predict, validation, images):
    from core.data.sample_detector import decode
    from core.evaluate.coco_metrics import coco_scores

    return coco_scores(validation, decode(predict(images), [image.id for image in validation.images]))


@pytest.mark.slow
def test_the_float_detector_finds_the_digits_well_above_chance(detector):
    import tensorflow as tf

    model, _, validation, images = detector
    keras = tf.keras.models.load_model(model, compile=False)
    found = scores(lambda x: keras.predict(x, verbose=0), validation, images)
    assert found.map_50 > 0.6, found  # chance is near 0: a box must land on the digit and name it


@pytest.mark.slow
@pytest.mark.hardware  # the TPC follows the installed IMX500 converter (TPC 1.0 without it has no 16 bits)
def test_8_bit_boxes_lose_precision_and_16_bits_on_the_head_found_in_the_graph_give_it_back(detector, tmp_path):
    import tensorflow as tf

    from core.build.precision import sixteen_bit_layers
    from core.build.quantize_with_mct import quantize_with_mct
    from core.evaluate.models import load_quantized_keras_model

    if choose_platform("imx500").tpc_version < "4.0":
        pytest.skip("the IMX500 TPC in use has no 16-bit activations: install the converter (make imx500)")
    model, calibration, validation, images = detector
    keras = tf.keras.models.load_model(model, compile=False)
    float_map = scores(lambda x: keras.predict(x, verbose=0), validation, images).map_50_95
    arguments = dict(model_path=str(model), calibration_path=str(calibration), batch_size=32, target_platform="imx500")
    assert sixteen_bit_layers(**arguments) == ["head"]  # the model output: no layer reads it at 8 bits
    found = {}
    for sixteen in ((), ("head",)):
        out = tmp_path / f"sixteen-{len(sixteen)}"
        out.mkdir()
        quantized = quantize_with_mct(**arguments, out_dir=out, progress=False, sixteen_bit_activations=sixteen)
        mct = load_quantized_keras_model(quantized.path)
        found[sixteen] = scores(lambda x, model=mct: model.predict(x, verbose=0), validation, images).map_50_95
    assert float_map - found[()] > 0.05, (float_map, found)  # 8 bits on the head: the boxes lose precision
    assert float_map - found[("head",)] < 0.02, (float_map, found)
