"""The sample: scikit-learn's handwritten digits (shipped inside the package, no download)
written as JPEG class folders, and a small Keras CNN trained on them here.

    python -m core.data.sample_data [--dest sample_data/digits]

Writes DEST/training/<digit>/*.jpg (calibration), DEST/validation/<digit>/*.jpg (evaluation),
DEST/labels.json and DEST/model.h5. Nothing is rewritten when DEST/model.h5 already exists.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from core.config import Preprocessing
from core.data.images import decode_rgb, find_jpegs
from core.data.preprocessing import preprocess
from core.files import atomic_write_json
from core.storage import REPO_ROOT

IMAGE_SIZE = 32
DEFAULT_DEST = REPO_ROOT / "sample_data" / "digits"


def write_images(dest: Path, train_count: int, validation_count: int, seed: int = 0) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    splits = {"training": order[:train_count], "validation": order[train_count : train_count + validation_count]}
    for split, indices in splits.items():
        for i in indices:
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)  # 8 x 8, values 0..16: a greyscale ("L") image
            image = Image.fromarray(pixels).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR).convert("RGB")
            folder = dest / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"digit_{i:04d}.jpg", quality=95)
    atomic_write_json(dest / "labels.json", {str(d): d for d in range(10)})


def sample_images(sample: Path, split: str = "training", count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first `count` (default all) images of the sample's `split` (training or validation), read through the
    workflow's own preprocessing, and their labels."""
    files = find_jpegs(Path(sample) / split)[:count]
    x = np.stack([preprocess(decode_rgb(f), IMAGE_SIZE, Preprocessing()) for f in files])
    return x, np.array([int(f.parent.name) for f in files])


def train_model(dest: Path, epochs: int = 30, seed: int = 0) -> Path:
    """Train the small CNN on the training JPEGs, read through the workflow's own preprocessing."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    x, y = sample_images(dest)
    layers = tf.keras.layers
    model = tf.keras.Sequential(
        [
            tf.keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3)),
            # Named as Keras names them in a fresh process: the names must not depend on what the process built before.
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2d"),
            layers.MaxPooling2D(name="max_pooling2d"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2d_1"),
            layers.MaxPooling2D(name="max_pooling2d_1"),
            layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2d_2"),
            layers.GlobalAveragePooling2D(name="global_average_pooling2d"),
            layers.Dense(10, activation="softmax", name="dense"),
        ],
        name="digits_cnn",
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    path = dest / "model.h5"
    tmp = dest / ".model.h5.tmp.h5"
    model.save(tmp)
    os.replace(tmp, path)
    return path


def make_sample(
    dest: Path = DEFAULT_DEST, train_count: int = 1200, validation_count: int = 400, epochs: int = 30
) -> Path:
    dest = Path(dest)
    if (dest / "model.h5").exists():
        return dest
    write_images(dest, train_count, validation_count)
    train_model(dest, epochs)
    return dest


def make_imbalanced(
    model_path: Path, destination: Path, factor: float = 500.0, channels: tuple[int, ...] = (1, 4)
) -> Path:
    """The model with a channel-range imbalance that leaves its function unchanged: its first Conv2D's
    `channels` (weights and bias) multiplied by `factor` and the next Conv2D's matching inputs divided by it
    (through ReLU and max pooling, both positively homogeneous). Per-tensor 8-bit activations then spend
    their grid on two wide channels and lose the rest: the failure cross-layer equalization repairs (the repair
    search's tests and benchmark use it on the sample)."""
    import tensorflow as tf

    model = tf.keras.models.load_model(model_path, compile=False)
    convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    first, second = convs[0], convs[1]
    kernel, bias = first.get_weights()
    kernel[..., list(channels)] *= factor
    bias[list(channels)] *= factor
    first.set_weights([kernel, bias])
    kernel, bias = second.get_weights()
    kernel[:, :, list(channels), :] /= factor
    second.set_weights([kernel, bias])
    destination.parent.mkdir(parents=True, exist_ok=True)
    model.save(destination)
    return destination


def make_residual_with_outliers(
    sample: Path,
    destination: Path,
    factor: float = 300.0,
    channels: tuple[int, ...] = (3, 7),
    epochs: int = 40,
    seed: int = 0,
) -> Path:
    """A small residual CNN trained on the sample's training images, whose residual stream then carries outlier
    channels without any change to its function: the stream's `channels` are multiplied by `factor` where they are
    written (the stem and the block's last convolution, kernels and biases) and the weights that read them (the
    block's first convolution, the classifier) divided by it; ReLU, max pooling and average pooling are positively
    homogeneous. 8-bit activations then spend their grid on the outliers and the readers' weights for them round to
    nothing; pairwise equalization cannot reach the stream, as its tensors feed an Add as well as the next layer
    (the precision repair's tests and benchmark use it)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    x, y = sample_images(sample)
    layers = tf.keras.layers
    inputs = tf.keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    stream = layers.MaxPooling2D(name="stem_pool")(
        layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    )
    block = layers.Conv2D(16, 3, padding="same", activation="relu", name="block_a")(stream)
    block = layers.Conv2D(16, 3, padding="same", name="block_b")(block)
    stream = layers.ReLU(name="residual_relu")(layers.Add(name="residual")([stream, block]))
    pooled = layers.GlobalAveragePooling2D(name="pool")(stream)
    model = tf.keras.Model(inputs, layers.Dense(10, activation="softmax", name="head")(pooled), name="residual_cnn")
    model.compile(
        optimizer=tf.keras.optimizers.Adam(2e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    picked = list(channels)
    for writer in ("stem", "block_b"):
        kernel, bias = model.get_layer(writer).get_weights()
        kernel[..., picked] *= factor
        bias[picked] *= factor
        model.get_layer(writer).set_weights([kernel, bias])
    for reader, axis in (("block_a", 2), ("head", 0)):
        kernel, bias = model.get_layer(reader).get_weights()
        index: list = [slice(None)] * kernel.ndim
        index[axis] = picked
        kernel[tuple(index)] /= factor
        model.get_layer(reader).set_weights([kernel, bias])
    destination.parent.mkdir(parents=True, exist_ok=True)
    model.save(destination)
    return destination


def make_activation_spikes(model_path: Path, destination: Path, scale: float = 3000.0, threshold: float = 25.5) -> Path:
    """The model with one more channel in its first Conv2D that fires only on near-white 3 x 3 patches (about 1% of
    its positions), `scale` times larger than the others there, and that the next Conv2D ignores (zero weights): the
    same function. Per-tensor 8-bit activations spend their grid on the spikes; no equalization helps (there is no
    weight reading the channel to trade its range with); 16-bit activations do (the Ethos-U precision rung's test).
    The inputs must be the sample's, in [0, 1]: a patch's sum reaches 27 on white."""
    import tensorflow as tf

    model = tf.keras.models.load_model(model_path, compile=False)
    config = model.get_config()
    convs = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Conv2D)]
    first, second = convs[0], convs[1]
    entry = next(e for e in config["layers"] if e["config"]["name"] == first.name)
    entry["config"]["filters"] += 1
    wider = type(model).from_config(config)
    for old, new in zip(model.layers, wider.layers, strict=True):
        weights = old.get_weights()
        if old is first:
            kernel, bias = weights
            spike = np.full((*kernel.shape[:3], 1), scale, kernel.dtype)
            weights = [np.concatenate([kernel, spike], -1), np.append(bias, -threshold * scale).astype(bias.dtype)]
        elif old is second:
            kernel, bias = weights
            ignored = np.zeros((*kernel.shape[:2], 1, kernel.shape[3]), kernel.dtype)
            weights = [np.concatenate([kernel, ignored], 2), bias]
        new.set_weights(weights)
    destination.parent.mkdir(parents=True, exist_ok=True)
    wider.save(destination)
    return destination


def make_offset_logits(model_path: Path, destination: Path, offset: float = 3000.0) -> Path:
    """The model giving its logits (its last layer's softmax left out, as a model trained `from_logits` is exported)
    with `offset` added to every class's logit: the same predictions, as argmax and softmax ignore an offset common
    to all classes. The logits then lie within a few units of `offset`, so an 8-bit grid over them has steps
    (about offset / 128) wider than the gaps between the classes, and no rescaling of the weights can move the
    offset; 16 bits on the last layer keep the gaps (the IMX500 precision rung's test)."""
    import tensorflow as tf

    model = tf.keras.models.load_model(model_path, compile=False)
    config = model.get_config()
    config["layers"][-1]["config"]["activation"] = "linear"
    logits = type(model).from_config(config)
    logits.set_weights(model.get_weights())
    kernel, bias = logits.layers[-1].get_weights()
    logits.layers[-1].set_weights([kernel, bias + np.float32(offset)])
    destination.parent.mkdir(parents=True, exist_ok=True)
    logits.save(destination)
    return destination


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m core.data.sample_data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dest",
        type=Path,
        default=DEFAULT_DEST,
        help=f"where to write the sample (default {DEFAULT_DEST.relative_to(REPO_ROOT)})",
    )
    parser.add_argument("--train-count", type=int, default=1200, help="training (calibration) images (default 1200)")
    parser.add_argument(
        "--validation-count", type=int, default=400, help="validation (evaluation) images (default 400)"
    )
    args = parser.parse_args()
    dest = make_sample(args.dest, args.train_count, args.validation_count)
    print(f"sample ready in {dest}")


if __name__ == "__main__":
    main()
