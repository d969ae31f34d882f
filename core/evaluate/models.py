"""Loading the models the workflow handles, and running them on batches of preprocessed images."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from core.custom_layers import active_custom_layers_module, custom_layers_digest, custom_objects, user_custom_objects
from core.errors import InputError
from core.files import atomic_write_text, hash_path
from core.storage import remembered_file

KERAS_FILE_SUFFIXES = {".h5", ".hdf5", ".keras"}


def keras_model_format(path: Path) -> str | None:
    """'h5', 'keras' or 'saved_model' for a loadable layout, None for anything else."""
    path = Path(path)
    if path.is_file() and path.suffix.lower() in {".h5", ".hdf5"}:
        return "h5"
    if path.is_file() and path.suffix.lower() == ".keras":
        return "keras"
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return "saved_model"
    return None


def _stored_config(path: Path, fmt: str) -> dict | None:
    """The architecture a model file stores, read without deserializing any layer."""
    import json
    import zipfile

    try:
        if fmt == "h5":
            import h5py

            with h5py.File(path, "r") as f:
                raw = f.attrs.get("model_config")
        elif fmt == "keras":
            with zipfile.ZipFile(path) as z:
                raw = z.read("config.json")
        else:
            return None
    except (OSError, KeyError, zipfile.BadZipFile):
        return None
    if raw is None:
        return None
    return json.loads(raw.decode() if isinstance(raw, bytes) else raw)


def code_carrying_layers(config: object) -> list[str]:
    """Names of the Lambda layers in a stored architecture: loading them executes code stored in the file."""
    found = []
    if isinstance(config, dict):
        if config.get("class_name") == "Lambda":
            found.append(str(config.get("config", {}).get("name", "lambda")))
        for value in config.values():
            found += code_carrying_layers(value)
    elif isinstance(config, list):
        for value in config:
            found += code_carrying_layers(value)
    return found


def load_keras_model(path: str | Path, allow_unsafe_code: bool = False):
    """Load the user's float Keras model, uncompiled (we only run inference).

    Lambda layers are refused unless `allow_unsafe_code`: a model file is data, and loading
    one must not run code an attacker put in it (Keras's safe mode, extended to .h5 files).
    The layers Keras does not know itself come from core/custom_layers.py.
    """
    import tensorflow as tf

    path = Path(path)
    fmt = keras_model_format(path)
    if fmt is None:
        raise InputError(
            f"model {path} is not a Keras model: expected an .h5 or .keras file, "
            "or a SavedModel folder holding saved_model.pb"
        )
    stored = _stored_config(path, fmt)
    lambdas = code_carrying_layers(stored)
    if lambdas and not allow_unsafe_code:
        raise InputError(
            f"model {path} has Lambda layers {lambdas}: loading them runs Python code stored in the file. "
            'If you trust the file, set "allow_unsafe_model_code": true in the configuration'
        )
    known = custom_objects()
    try:
        if fmt == "keras":
            model = tf.keras.models.load_model(
                path, custom_objects=known, compile=False, safe_mode=not allow_unsafe_code
            )
        else:
            model = tf.keras.models.load_model(path, custom_objects=known, compile=False)
    except Exception as exc:  # Keras raises many types for unreadable files
        unknown = unknown_layer_classes(stored, known) or unknown_class_named_in(exc)
        if unknown:
            raise InputError(unknown_layers_message(path, unknown)) from None
        raise InputError(f"model {path} cannot be loaded as a Keras model ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, tf.keras.Model):
        raise InputError(not_keras_saved_model_message(path))
    return model


def stored_layer_classes(config: object) -> list[str]:
    """The class names of the layers in a stored architecture, nested models' and wrapped layers' included."""
    found: list[str] = []
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "layers" and isinstance(value, list):
                found += [
                    str(layer["class_name"]) for layer in value if isinstance(layer, dict) and "class_name" in layer
                ]
            elif key in ("layer", "backward_layer") and isinstance(value, dict) and "class_name" in value:
                found.append(str(value["class_name"]))
            found += stored_layer_classes(value)
    elif isinstance(config, list):
        for value in config:
            found += stored_layer_classes(value)
    return found


def unknown_layer_classes(config: object, known: dict) -> list[str]:
    """The layer classes of a stored architecture that neither Keras nor `known` resolves, in order of appearance."""
    import tensorflow as tf
    from keras.src.layers.serialization import get_builtin_layer

    def resolved(name: str) -> bool:
        builtin = get_builtin_layer(name) is not None
        return name in known or builtin or tf.keras.saving.get_registered_object(name) is not None

    return list(dict.fromkeys(name for name in stored_layer_classes(config) if not resolved(name)))


# How Keras 2.15 names a class it cannot resolve, where the file stores no architecture to read (a SavedModel).
_UNKNOWN_CLASS_PATTERNS = (
    re.compile(r"Unknown layer: '([^']+)'"),
    re.compile(r"Cannot deserialize object of type `([^`]+)`"),
    re.compile(r"Could not locate class '([^']+)'"),
)


def unknown_class_named_in(exc: Exception) -> list[str]:
    return [found.group(1) for pattern in _UNKNOWN_CLASS_PATTERNS if (found := pattern.search(str(exc)))][:1]


def unknown_layers_message(path: Path, class_names: list[str]) -> str:
    named = repr(class_names[0]) if len(class_names) == 1 else f"{class_names}"
    active = active_custom_layers_module()
    if active is not None:
        defined = sorted(user_custom_objects(active))
        where = f"the custom layers module {active} (key 'custom_layers_module') defines {defined}"
    else:
        where = "no custom layers module is given (key 'custom_layers_module')"
    return (
        f"model {path} uses layer class{'es' if len(class_names) > 1 else ''} {named}, which neither Keras nor this "
        f"workflow knows, and {where}: name a Python file defining {named} in key 'custom_layers_module' (relative "
        "to the configuration's folder) and set \"allow_unsafe_model_code\": true, as loading it runs that file's code"
    )


def not_keras_saved_model_message(path: Path) -> str:
    return (
        f"model {path} is a TensorFlow SavedModel that Keras did not write (tf.saved_model.save, not Keras's "
        "model.save), so it holds no Keras model to quantize; expected a Keras model: an .h5 or .keras file, or a "
        "SavedModel folder written by Keras's model.save. Rebuild the model in Keras (its layers and weights) and "
        "save it with model.save('model.keras'); converting a plain SavedModel with TensorFlow's converter directly "
        "is not supported"
    )


def load_quantized_keras_model(path: str | Path):
    """Load a model written by MCT's Keras exporter (its quantizer layers need MCT's custom objects; the model's
    own layers Keras does not know come from core/custom_layers.py)."""
    import model_compression_toolkit as mct

    return mct.keras_load_quantized_model(str(path), custom_objects=custom_objects(), compile=False)


def load_keras_by_name(model_name: str, path: str | Path, allow_unsafe_code: bool = False):
    """'keras' is the user's float model, 'keras_quantized' the MCT-quantized one."""
    return load_keras_model(path, allow_unsafe_code) if model_name == "keras" else load_quantized_keras_model(path)


def keras_predictor(model) -> Callable[[np.ndarray], np.ndarray]:
    return lambda batch: np.asarray(model.predict_on_batch(batch))


class TFLitePredictor:
    """Runs a .tflite classifier on float32 batches, converting for integer inputs and outputs.

    An integer-input model is fed `round(x / scale) + zero_point` with its own input scale and
    zero point (the old notebook fed raw pixels to a uint8 model, right only by coincidence).
    """

    def __init__(self, path: str | Path, num_threads: int | None = None):
        import tensorflow as tf

        self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=num_threads)
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.batch_resizable = int(self.input["shape_signature"][0]) == -1
        self._allocated_batch: int | None = None

    @property
    def input_dtype(self) -> str:
        return np.dtype(self.input["dtype"]).name

    def _allocate(self, batch: int) -> None:
        if self._allocated_batch != batch:
            shape = [batch, *map(int, self.input["shape"][1:])]
            self.interpreter.resize_tensor_input(self.input["index"], shape)
            self.interpreter.allocate_tensors()
            self._allocated_batch = batch

    def _to_input(self, batch: np.ndarray) -> np.ndarray:
        dtype = np.dtype(self.input["dtype"])
        if dtype.kind == "f":
            return batch.astype(dtype, copy=False)
        scale, zero_point = self.input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(batch / scale) + zero_point, info.min, info.max).astype(dtype)

    def _from_output(self, raw: np.ndarray) -> np.ndarray:
        if np.dtype(self.output["dtype"]).kind == "f":
            return raw.astype(np.float32, copy=False)
        scale, zero_point = self.output["quantization"]
        return (raw.astype(np.float32) - zero_point) * scale

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if not self.batch_resizable:
            return np.concatenate([self._run(batch[i : i + 1]) for i in range(len(batch))])
        return self._run(batch)

    def _run(self, batch: np.ndarray) -> np.ndarray:
        self._allocate(len(batch))
        self.interpreter.set_tensor(self.input["index"], self._to_input(batch))
        self.interpreter.invoke()
        # Output details are read again: resizing the input can reallocate the output tensor.
        out = self.interpreter.get_output_details()[0]
        return self._from_output(self.interpreter.get_tensor(out["index"]))


class ModelSignature(BaseModel):
    """What validation needs to know of a Keras model: its inputs' and outputs' shapes (None: any size)."""

    model_config = ConfigDict(frozen=True)

    input_shapes: list[list[int | None]]
    output_shapes: list[list[int | None]]


SIGNATURE_VERSION = 1  # bump when ModelSignature or how it is read changes, to read the models again


def model_signature(path: str | Path, allow_unsafe_code: bool = False) -> ModelSignature:
    """The model's signature, read by loading it once per content: a rerun (the cache serves every other step)
    would otherwise spend seconds loading the same model again only to check its shapes. A model that fails to
    load is not remembered, so its error is raised every time."""
    path = Path(path)
    parts = [SIGNATURE_VERSION, hash_path(path), keras_model_format(path), allow_unsafe_code, custom_layers_digest()]
    remembered = remembered_file("model-signatures", parts, ".json")
    if remembered.is_file():
        try:
            return ModelSignature.model_validate_json(remembered.read_text())
        except ValueError:
            pass  # unreadable (a different version wrote it): read the model again
    model = load_keras_model(path, allow_unsafe_code)

    def shapes(tensors) -> list[list[int | None]]:
        return [[None if d is None else int(d) for d in tensor.shape] for tensor in tensors]

    signature = ModelSignature(input_shapes=shapes(model.inputs), output_shapes=shapes(model.outputs))
    atomic_write_text(remembered, signature.model_dump_json())
    return signature
