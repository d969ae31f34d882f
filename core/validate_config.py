"""Step 1: validate the configuration against the files it names, before any heavy work.

Every problem is collected and reported at once, each naming the key, the value and what
was expected. Relative paths resolve against the configuration file's folder (or, for a
configuration given inline, against `base_dir`, by default the working directory).
"""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path
from typing import Any

from core.build.variants import WRITTEN_IN
from core.config import (
    MAX_FREE_INPUT_SIZE,
    OPTIONAL_PATH_KEYS,
    PATH_KEYS,
    QuantizeConfig,
    ValidatedConfig,
    load_config_file,
    loads_json,
    parse_config,
)
from core.custom_layers import activate_custom_layers_module, user_custom_objects
from core.data.coco import AnnotationError, category_problems, read_coco_annotations
from core.data.images import class_key, find_jpegs, has_extension, is_junk, symlinks_below
from core.errors import ConfigError, InputError
from core.evaluate.models import keras_model_format, model_signature

INPUT_KEYS = (
    "source_keras_model",
    "dataset_image_dir",
    "evaluate_image_dir",
    "evaluate_label_file",
    "evaluate_annotation_file",
    "custom_layers_module",
)
LINKS_SHOWN = 3


def validate_config(
    *,
    config: QuantizeConfig | dict[str, Any] | None = None,
    config_path: str | Path | None = None,
    base_dir: str | Path | None = None,
) -> ValidatedConfig:
    if isinstance(config_path, str) and not config_path.strip():
        config_path = None  # what the Prefect UI sends for a field the user emptied
    if config is None and config_path is None:
        raise ConfigError(["no configuration: give config_path (a configuration.json) or an inline config"])
    if config is not None and config_path is not None:
        raise ConfigError(
            [
                f"both config_path ({config_path}) and an inline config were given: keep one (in the Prefect UI, "
                "empty the config_path field to use the inline config: an empty config_path counts as not given)"
            ]
        )
    if config_path is not None:
        parsed, folder = load_config_file(config_path)
        source = str(Path(config_path).resolve())
        return check_against_files(parsed, folder, source, config_file=Path(source))
    parsed = parse_config(config, source="the inline configuration")
    return check_against_files(parsed, Path(base_dir or os.getcwd()).resolve(), "inline configuration")


def check_against_files(
    config: QuantizeConfig, base_dir: Path, source: str, config_file: Path | None = None
) -> ValidatedConfig:
    activate_custom_layers_module(None)  # this configuration's layers only, never an earlier one's
    problems: list[str] = []
    given = [*PATH_KEYS, *(key for key in OPTIONAL_PATH_KEYS if getattr(config, key) is not None)]
    paths = {key: _absolute(getattr(config, key), base_dir) for key in given}
    for key, path in paths.items():
        link = _symlink_in(path, base_dir)
        if link is not None:
            problems.append(
                f"key '{key}' = {getattr(config, key)!r}: {link} is a symbolic link; symbolic links are not allowed, "
                "give the real path"
            )
    if problems:
        raise ConfigError(problems, source)

    model_format = _check_model_path(config, paths["source_keras_model"], problems)
    _check_custom_layers_module(config, paths.get("custom_layers_module"), problems)
    calibration_count = _check_calibration_dir(config, paths["dataset_image_dir"], problems)
    _check_outputs(config, paths, config_file, problems)
    class_names = _check_labels(config, paths["evaluate_label_file"], problems)
    without_folder: list[str] = []
    if config.task == "detection":
        evaluation_count = _check_detection_set(config, paths, class_names, problems)
    else:
        evaluation_count, without_folder = _check_evaluation_dir(
            config, paths["evaluate_image_dir"], class_names, problems
        )
    input_shape: list[int | None] = []
    if model_format and class_names is not None and not problems:
        input_shape = _check_model(config, paths["source_keras_model"], len(class_names), problems)
    if problems:
        raise ConfigError(problems, source)

    resolved = config.model_copy(update={key: str(path) for key, path in paths.items()})
    return ValidatedConfig(
        config=resolved,
        source=source,
        model_format=model_format or "",
        model_input_shape=input_shape,
        class_names=class_names or [],
        calibration_image_count=calibration_count,
        evaluation_image_count=evaluation_count,
        labels_without_folder=without_folder,
    )


def _absolute(value: str, base_dir: Path) -> Path:
    path = Path(value).expanduser()
    # normpath, not resolve(): resolving would hide the symbolic links we must refuse.
    return Path(os.path.normpath(path if path.is_absolute() else base_dir / path))


def _symlink_in(path: Path, base_dir: Path) -> Path | None:
    """The path itself or a folder above it that is a symbolic link, stopping at the folders
    that also hold the configuration (the user's environment, not their data)."""
    trusted = {base_dir, *base_dir.parents}
    for candidate in (path, *path.parents):
        if candidate in trusted:
            return None
        if candidate.is_symlink():
            return candidate
    return None


def _check_outputs(config: QuantizeConfig, paths: dict[str, Path], config_file: Path | None, problems: list[str]):
    inputs = {f"key '{key}'": paths[key] for key in INPUT_KEYS if key in paths}
    if config_file is not None:
        inputs["the configuration file"] = config_file
    for key in WRITTEN_IN:
        _check_output_folder(config, key, paths[key], inputs, problems)
        _check_output_apart_from_inputs(config, key, paths[key], inputs, problems)


def _check_output_folder(
    config: QuantizeConfig, key: str, path: Path, inputs: dict[str, Path], problems: list[str]
) -> None:
    """The folder exists and is writable, or the nearest existing folder above it is (it is created then)."""
    given = f"key '{key}' = {getattr(config, key)!r}"
    existing = next(p for p in (path, *path.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        owner = next((name for name, p in inputs.items() if _real(p) == _real(existing)), None)
        whose = f"; it is {owner}, an input" if owner else ""
        if existing == path:
            problems.append(f"{given}: {path} is a file; expected a folder (it is created if missing){whose}")
        else:
            problems.append(
                f"{given}: {existing} is a file, so no folder can be created below it{whose}; "
                "expected a folder path, give one outside that file"
            )
    elif not os.access(existing, os.W_OK | os.X_OK):
        what = "nothing can be written in it" if existing == path else f"{path} cannot be created in it"
        problems.append(
            f"{given}: folder {existing} is read-only for this user, so {what}; "
            "make it writable or choose another folder"
        )


def _check_output_apart_from_inputs(
    config: QuantizeConfig, key: str, path: Path, inputs: dict[str, Path], problems: list[str]
) -> None:
    """Outputs never land on an input: the output folder is not an input folder nor inside one, and no input
    sits where the run writes (a model at <output_dir>/model_quantized.keras, labels at <result_dir>/results.json)."""
    given, out = f"key '{key}' = {getattr(config, key)!r}", _real(path)
    for name, input_path in inputs.items():
        real = _real(input_path)
        if input_path.is_dir() and (out == real or real in out.parents):
            where = "is the same folder as" if out == real else "is inside"
            problems.append(
                f"{given}: {out} {where} {name} ({real}); outputs must never land among the inputs: "
                f"choose a {key} outside {real}"
            )
        elif input_path.exists() and out in real.parents:
            entry = real.relative_to(out).parts[0]
            written = [pattern for pattern in WRITTEN_IN[key] if fnmatch.fnmatchcase(entry, pattern)]
            if written:
                problems.append(
                    f"{given}: the run writes {out / entry} there, over {name} ({real}); "
                    f"move that input or choose another {key}"
                )


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _check_model_path(config: QuantizeConfig, path: Path, problems: list[str]) -> str | None:
    if not path.exists():
        problems.append(
            f"key 'source_keras_model' = {config.source_keras_model!r}: {path} does not exist; expected an .h5 or "
            ".keras file, or a Keras SavedModel folder"
        )
        return None
    fmt = keras_model_format(path)
    if fmt is None:
        what = "a folder without saved_model.pb" if path.is_dir() else f"a file with suffix {path.suffix!r}"
        problems.append(
            f"key 'source_keras_model' = {config.source_keras_model!r}: {path} is {what}; expected an .h5 or .keras "
            "file, or a Keras SavedModel folder"
        )
    return fmt


def _check_custom_layers_module(config: QuantizeConfig, path: Path | None, problems: list[str]) -> None:
    """Run the user's custom layers file (the configuration allows it: core/config.py refuses the key otherwise)
    and make its layers those the model loads with, here and in the processes the run starts."""
    if path is None:
        return
    given = f"key 'custom_layers_module' = {config.custom_layers_module!r}"
    if not path.is_file() or path.suffix != ".py":
        state = "does not exist" if not path.exists() else "is a folder" if path.is_dir() else "is not a .py file"
        problems.append(f"{given}: {path} {state}; expected a Python file (.py) defining the model's custom layers")
        return
    try:
        user_custom_objects(path)
    except InputError as exc:
        problems.append(f"{given}: {exc}; expected a Python file that runs and defines the model's custom layers")
        return
    activate_custom_layers_module(path)


def _check_calibration_dir(config: QuantizeConfig, path: Path, problems: list[str]) -> int:
    if not path.is_dir():
        state = "is a file" if path.exists() else "does not exist"
        problems.append(
            f"key 'dataset_image_dir' = {config.dataset_image_dir!r}: {path} {state}; expected a folder of "
            "calibration JPEG images"
        )
        return 0
    _refuse_links_below("dataset_image_dir", config.dataset_image_dir, path, problems)
    count = len(find_jpegs(path))
    if count == 0:
        problems.append(
            f"key 'dataset_image_dir' = {config.dataset_image_dir!r}: no JPEG files (.jpg, .jpeg) anywhere below "
            f"{path}; add calibration images"
        )
    elif config.batch_size > count:
        problems.append(
            f"key 'batch_size' = {config.batch_size}: larger than the {count} calibration images in {path}; expected "
            f"at most {count}"
        )
    return count


def _refuse_links_below(key: str, value: str, folder: Path, problems: list[str]) -> None:
    links = symlinks_below(folder)
    if links:
        shown = ", ".join(str(link) for link in links[:LINKS_SHOWN]) + (", ..." if len(links) > LINKS_SHOWN else "")
        problems.append(
            f"key '{key}' = {value!r}: {len(links)} symbolic link{'s' if len(links) > 1 else ''} below {folder} "
            f"({shown}); symbolic links are not allowed (a link can lead outside the folder): replace each with the "
            "real file or folder, or remove it"
        )


def _check_labels(config: QuantizeConfig, path: Path, problems: list[str]) -> list[str] | None:
    """The class names in id order, or None (with the problem added) when the label file is unusable."""
    key = f"key 'evaluate_label_file' = {config.evaluate_label_file!r}"
    labels = _read_labels(key, path, problems)
    if labels is None or not _names_are_distinct(key, labels, path, problems):
        return None
    if not _ids_are_0_to_n_minus_1(key, labels, problems):
        return None
    return [name for name, _ in sorted(labels.items(), key=lambda item: item[1])]


def _read_labels(key: str, path: Path, problems: list[str]) -> dict | None:
    if not path.is_file():
        state = "is a folder" if path.exists() else "does not exist"
        problems.append(f"{key}: {path} {state}; expected a JSON file mapping class names to ids 0..N-1")
        return None
    try:
        labels, repeated = loads_json(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        problems.append(
            f'{key}: {path} is not valid JSON ({exc}); expected an object such as {{"daisy": 0, "dandelion": 1}}'
        )
        return None
    if not isinstance(labels, dict) or not labels:
        problems.append(
            f"{key}: {path} holds {type(labels).__name__ if labels else 'an empty object'}; "
            "expected a non-empty object of class names to ids"
        )
        return None
    if repeated:
        problems.append(f"{key}: labels {repeated} appear more than once in {path}; expected each class name once")
        return None
    return labels


def _names_are_distinct(key: str, labels: dict, path: Path, problems: list[str]) -> bool:
    """Two names that differ only in their Unicode form (composed and decomposed) would be one class folder."""
    first_seen: dict[str, str] = {}
    for name in labels:
        if class_key(name) in first_seen:
            problems.append(
                f"{key}: labels {[first_seen[class_key(name)], name]} in {path} are one name written in two Unicode "
                "forms (composed and decomposed); class names are compared after NFC normalization: keep one"
            )
            return False
        first_seen[class_key(name)] = name
    return True


def _ids_are_0_to_n_minus_1(key: str, labels: dict, problems: list[str]) -> bool:
    bad = {name: value for name, value in labels.items() if not isinstance(value, int) or isinstance(value, bool)}
    if bad:
        problems.append(f"{key}: ids must be integers, got {bad}")
        return False
    huge = [name for name, value in labels.items() if value.bit_length() > 64]
    if huge:
        problems.append(f"{key}: the ids of {huge} are too large; expected each of 0..{len(labels) - 1} exactly once")
        return False
    ids = sorted(labels.values())
    if ids != list(range(len(labels))):
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        detail = f"ids {duplicates} are used more than once" if duplicates else f"ids are {ids}"
        problems.append(f"{key}: {detail}; expected each of 0..{len(labels) - 1} exactly once")
        return False
    return True


def _check_evaluation_dir(
    config: QuantizeConfig, path: Path, class_names: list[str] | None, problems: list[str]
) -> tuple[int, list[str]]:
    key = f"key 'evaluate_image_dir' = {config.evaluate_image_dir!r}"
    if not path.is_dir():
        state = "is a file" if path.exists() else "does not exist"
        problems.append(f"{key}: {path} {state}; expected a folder with one sub-folder of images per class")
        return 0, []
    _refuse_links_below("evaluate_image_dir", config.evaluate_image_dir, path, problems)
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not is_junk(Path(p.name)))
    extension = config.evaluate_image_extension
    count = sum(
        1
        for folder in folders
        for f in folder.iterdir()
        if f.is_file() and has_extension(f, extension) and not is_junk(Path(f.name))
    )
    if count == 0:
        problems.append(
            f"key 'evaluate_image_extension' = {extension!r}: no '*.{extension}' files (in any case) in the class "
            f"folders of {path}; expected one folder per class holding the evaluation images"
        )
    if class_names is None:
        return count, []
    known = {class_key(name) for name in class_names}
    unknown = [f.name for f in folders if class_key(f.name) not in known]
    if unknown:
        problems.append(
            f"{key}: class folders {unknown} have no entry in the label file {config.evaluate_label_file!r}; "
            "add them to it or remove the folders"
        )
    present = {class_key(f.name) for f in folders}
    return count, [name for name in class_names if class_key(name) not in present]


def _check_detection_set(
    config: QuantizeConfig, paths: dict[str, Path], class_names: list[str] | None, problems: list[str]
) -> int:
    """The evaluation images of a detector: the COCO file's, checked entry by entry; their count."""
    folder, annotation_file = paths["evaluate_image_dir"], paths["evaluate_annotation_file"]
    if not folder.is_dir():
        state = "is a file" if folder.exists() else "does not exist"
        problems.append(
            f"key 'evaluate_image_dir' = {config.evaluate_image_dir!r}: {folder} {state}; expected the folder of the "
            "evaluation images that evaluate_annotation_file lists"
        )
        return 0
    _refuse_links_below("evaluate_image_dir", config.evaluate_image_dir, folder, problems)
    key = f"key 'evaluate_annotation_file' = {config.evaluate_annotation_file!r}"
    try:
        coco = read_coco_annotations(annotation_file, folder)
    except AnnotationError as exc:
        problems += [f"{key}: {problem}" for problem in exc.problems]
        return 0
    extension = config.evaluate_image_extension
    wrong = [
        f"images[{i}] (id {image.id}) {image.file_name!r}"
        for i, image in enumerate(coco.images)
        if not has_extension(Path(image.file_name), extension)
    ]
    if wrong:
        problems.append(
            f"key 'evaluate_image_extension' = {extension!r}: {len(wrong)} image(s) of {annotation_file} have another "
            f"extension ({', '.join(wrong[:LINKS_SHOWN])}); expected every listed image to be a '*.{extension}' file"
        )
    if class_names is not None:
        problems += [
            f"{key}: {problem}" for problem in category_problems(coco, class_names, config.evaluate_label_file)
        ]
    return len(coco.images)


def _check_model(config: QuantizeConfig, path: Path, class_count: int, problems: list[str]) -> list[int | None]:
    try:
        signature = model_signature(path, config.allow_unsafe_model_code)
    except InputError as exc:
        problems.append(f"key 'source_keras_model' = {config.source_keras_model!r}: {exc}")
        return []
    inputs, outputs = signature.input_shapes, signature.output_shapes
    if len(inputs) != 1 or len(outputs) != 1:
        expected = (
            'a detector whose one output is its raw head, [batch, grid, grid, 5 + classes] (README, "Object '
            'detectors"); a model with its decoding or NMS in the graph (boxes, scores, classes) is not taken yet'
            if config.task == "detection"
            else "an image classifier with one of each"
        )
        problems.append(
            f"key 'source_keras_model': the model has {len(inputs)} inputs and {len(outputs)} outputs; expected "
            f"{expected}"
        )
        return []
    in_shape, out_shape = inputs[0], outputs[0]
    if len(in_shape) != 4 or in_shape[3] != 3:
        problems.append(
            f"key 'source_keras_model': the model's input shape is {in_shape}; expected [batch, height, width, 3] (an "
            "RGB image classifier)"
        )
    elif any(side not in (None, config.input_tensor_size) for side in in_shape[1:3]):
        problems.append(
            f"key 'input_tensor_size' = {config.input_tensor_size}: the model's input is {in_shape[1]} x "
            f"{in_shape[2]}; expected input_tensor_size to equal it"
        )
    elif None in in_shape[1:3] and config.input_tensor_size > MAX_FREE_INPUT_SIZE:
        problems.append(
            f"key 'input_tensor_size' = {config.input_tensor_size}: the model's input is {in_shape[1]} x {in_shape[2]} "
            f"(not fixed), so input_tensor_size sets it; expected at most {MAX_FREE_INPUT_SIZE} for such a model"
        )
    if config.task == "detection":
        _check_detector_output(config, out_shape, class_count, problems)
    elif len(out_shape) != 2:
        problems.append(
            f"key 'source_keras_model': the model's output shape is {out_shape}; expected [batch, number of classes]"
        )
    elif out_shape[1] != class_count:
        problems.append(
            f"key 'evaluate_label_file' = {config.evaluate_label_file!r}: it names {class_count} classes but the "
            f"model outputs {out_shape[1]} scores; expected one label per output"
        )
    return in_shape


def _check_detector_output(
    config: QuantizeConfig, out_shape: list[int | None], class_count: int, problems: list[str]
) -> None:
    """The detector's output is its raw head: [batch, grid, grid, 5 + classes] (README, "Object detectors")."""
    expected = (
        f"expected a detector's raw head, [batch, grid, grid, 5 + classes] = [batch, grid, grid, {5 + class_count}] "
        "for the label file's classes (objectness, one logit per class, then the box: x and y offsets, log width and "
        "log height); a model with its decoding or NMS in the graph is not taken yet"
    )
    if len(out_shape) != 4 or out_shape[1] is None or out_shape[1] != out_shape[2]:
        problems.append(f"key 'source_keras_model': the model's output shape is {out_shape}; {expected}")
    elif out_shape[3] != 5 + class_count:
        problems.append(
            f"key 'evaluate_label_file' = {config.evaluate_label_file!r}: it names {class_count} classes but the "
            f"model's head has {out_shape[3]} channels; {expected}"
        )
