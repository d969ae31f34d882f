"""The layer classes a model may use beyond Keras's built-in ones, which loading it needs to be told of.

Known without any configuration: the layers `keras.applications` defines itself (ConvNeXt's `LayerScale` and
`StochasticDepth`, InceptionResNetV2's `CustomScaleLayer`), found in the installed Keras, and Sony's edge-mdt-cl
layers (`SSDPostProcess`, `FasterRCNNBoxDecode`). A user's own come from the Python file named by the configuration's
`custom_layers_module`, which validation activates once it has checked that `allow_unsafe_model_code` allows running
it.

The active file is kept in an environment variable, not in a Python global: the processes the run starts later (a
Dask LocalCluster's workers) inherit it, so a model loads there as it does here without every step taking one more
parameter. Each validation sets it or clears it, so a configuration never sees another's layers. Its content enters
every step's cache key (core/caching.py), so editing the file redoes what depends on it.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import os
import pkgutil
import sys
import threading
from pathlib import Path
from typing import Any

from core.errors import InputError
from core.files import hash_path

CUSTOM_LAYERS_MODULE_ENV = "QUANTIZE_CUSTOM_LAYERS_MODULE"
KEY = "custom_layers_module"


def _layer_classes(namespace: dict[str, Any], module_name: str | None = None) -> dict[str, type]:
    """The Keras Layer subclasses in `namespace` (defined in `module_name`, when given), by class name."""
    import tensorflow as tf

    return {
        value.__name__: value
        for value in namespace.values()
        if inspect.isclass(value)
        and issubclass(value, tf.keras.layers.Layer)
        and (module_name is None or value.__module__ == module_name)
    }


def applications_layers() -> dict[str, type]:
    """The Layer subclasses each `keras.applications` module defines (Keras saves them by class name only)."""
    import keras.src.applications as applications

    found: dict[str, type] = {}
    for info in pkgutil.iter_modules(applications.__path__):
        module = importlib.import_module(f"{applications.__name__}.{info.name}")
        found.update(_layer_classes(vars(module), module.__name__))
    return found


def edge_mdt_layers() -> dict[str, type]:
    """Sony's edge-mdt-cl Keras layers (MCT's dependency), as its own loading scope names them."""
    from edgemdt_cl.keras import custom_layers_scope

    return {name: cls for objects in custom_layers_scope().custom_objects for name, cls in objects.items()}


@functools.cache
def known_custom_objects() -> dict[str, Any]:
    """Every layer class a model may use without configuration besides Keras's built-in ones."""
    return {**applications_layers(), **edge_mdt_layers()}


_LOADED: dict[tuple[str, str], dict[str, Any]] = {}
_LOADING = threading.Lock()


def user_custom_objects(path: str | Path) -> dict[str, Any]:
    """The Layer subclasses a user's Python file defines or imports (Keras's own left out), and the entries of the
    `custom_objects` dict it may define. Running the file runs the user's code: the caller checked it may."""
    path = Path(path).resolve()
    digest = hash_path(path)
    with _LOADING:
        if (str(path), digest) not in _LOADED:
            _LOADED[str(path), digest] = _objects_of(_run_module(path, f"custom_layers_{digest[:16]}"))
        return _LOADED[str(path), digest]


def _run_module(path: Path, name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise InputError(f"{path} cannot be imported as a Python module: expected a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # what importlib does: the module's own code may look itself up
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise InputError(f"running {path} failed: {type(exc).__name__}: {exc}") from None
    return module


def _objects_of(module: Any) -> dict[str, Any]:
    layers = {
        name: cls
        for name, cls in _layer_classes(vars(module)).items()
        if not cls.__module__.startswith(("keras.", "tensorflow.", "tf_keras."))
    }
    extra = getattr(module, "custom_objects", {})
    if not isinstance(extra, dict):
        raise InputError(
            f"{module.__file__}: 'custom_objects' holds a value of type {type(extra).__name__}; expected a dict of "
            "names to classes"
        )
    return {**layers, **extra}


def activate_custom_layers_module(path: str | Path | None) -> None:
    """Make `path`'s layers (None: no user's layers) those every later load in this process and its children uses."""
    if path is None:
        os.environ.pop(CUSTOM_LAYERS_MODULE_ENV, None)
    else:
        os.environ[CUSTOM_LAYERS_MODULE_ENV] = str(Path(path).resolve())


def active_custom_layers_module() -> str | None:
    return os.environ.get(CUSTOM_LAYERS_MODULE_ENV) or None


def custom_layers_digest() -> str | None:
    """The active user's file's content, for cache keys; None without one."""
    path = active_custom_layers_module()
    return hash_path(path) if path is not None and Path(path).is_file() else None


def custom_objects() -> dict[str, Any]:
    """What loading a model needs to know besides Keras's built-in layers: the known layers and the active user's."""
    path = active_custom_layers_module()
    if path is None:
        return dict(known_custom_objects())
    if not Path(path).is_file():
        raise InputError(
            f"the custom layers module {path} (key '{KEY}') no longer exists: restore it, or validate the "
            "configuration again"
        )
    return {**known_custom_objects(), **user_custom_objects(path)}
