"""Why Sony's IMX500 converter refused a model, in a line or two, read from what it printed.

The converter's Python front end logs each error as one record, `<date> <time> ERROR : CODE: [<code>] <message>
[<file>:<line>]`, the message possibly over several lines; its Java back end (sdspconv) as one line,
`<date> <time> ERROR: CODE: [<code>] <message>` (ISM: "Not enough memory, available: 8.00MB , required: 13.80MB"),
after which the front end logs an uncoded "sdspconv exited with error code: 1". The codes it refuses a model with:
- USOP: "The network contains unsupported ops: keras.src.layers.preprocessing.image_preprocessing.Rescaling, ..."
  (Keras classes, which are named here with the model's layers of that class);
- INVOP: "The network is not aligned with SDSP converter's restrictions. Errors are:" then, per layer,
  "Node [...] op: <class>, id: <layer>, errors:" and its errors, the layers separated by lines of dashes;
- INVMOD (an input it cannot read), EXEC (anything else): a message read as it is.
With no error record, the last lines of its output say what happened.
"""

from __future__ import annotations

import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

from core.targets.compiler_output import last_meaningful_lines, one_line

_FRONT_END_RECORD = re.compile(
    r"^\S+ \S+ (?:ERROR|CRITICAL) : (?:CODE: \[(?P<code>\w+)\] )?(?P<message>.*?) \[[^\[\]\n]+:\d+\]$", re.M | re.S
)
_BACK_END_RECORD = re.compile(r"^\S+ \S+ ERROR: CODE: \[(?P<code>\w+)\] (?P<message>.*)$", re.M)
_LOCATION = re.compile(r" \[[^\[\]\n]+\.py:\d+\]$", re.M)
_NODE = re.compile(r"op: (?P<op>[\w.]+), id: (?P<layer>[^,]+), errors:\s*(?P<errors>.*)", re.S)
_PARAM_ERROR = re.compile(r"Param error - param: (?P<param>.*?), value: (?P<value>.*?), reason: (?P<reason>.*)")


def error_records(output: str) -> list[tuple[str | None, str]]:
    """(code, message) of each error the converter logged, in order."""
    found = [*_FRONT_END_RECORD.finditer(output), *_BACK_END_RECORD.finditer(output)]
    return [(m.group("code"), m.group("message").strip()) for m in sorted(found, key=lambda m: m.start())]


def refused_before_memory_planning(output: str) -> bool:
    """Whether the front end refused the model (a coded error of its own): the back end, which plans the chip's
    memory, never ran, so asking for a memory report cannot help."""
    return any(m.group("code") for m in _FRONT_END_RECORD.finditer(output))


def refusal_gist(output: str, model: Path | None = None) -> str:
    """What the converter said when it refused `model`: its first error with a code (else its first error), read
    according to its code."""
    records = error_records(output)
    if not records:
        return last_meaningful_lines(_LOCATION.sub("", output))
    code, message = next((record for record in records if record[0]), records[0])
    layers = LayerNames.of(model)
    if code == "USOP" and ":" in message:
        ops = [op.strip() for op in message.split(":", 1)[1].split(",") if op.strip()]
        return one_line("unsupported ops: " + ", ".join(layers.describe_class(op) for op in ops))
    if code == "INVOP":
        nodes = re.split(r"\n-{10,}\n", message.split("Errors are:", 1)[-1])
        return one_line("not within its restrictions: " + "; ".join(_node_errors(node, layers) for node in nodes))
    return one_line(message)


def _node_errors(node: str, layers: LayerNames) -> str:
    found = _NODE.search(node)
    if not found:
        return node.strip()
    errors = [_param_error(line.strip()) for line in found.group("errors").splitlines() if line.strip()]
    return f"{layers.describe_layer(found.group('op'), found.group('layer').strip())}: {', '.join(errors)}"


def _param_error(line: str) -> str:
    found = _PARAM_ERROR.fullmatch(line)
    return f"{found.group('param')} {found.group('value')}: {found.group('reason')}" if found else line


class LayerNames:
    """The layers of an MCT model in MCT's Keras format, read from its config.json (a .keras file is a zip), to name
    the layers behind a class or a quantization wrapper the converter names. Naming is a courtesy: a model it cannot
    read gets class names alone."""

    def __init__(self, by_class: dict[str, list[str]], wrapped: dict[str, str]):
        self.by_class, self.wrapped = by_class, wrapped

    @classmethod
    def of(cls, model: Path | None) -> LayerNames:
        try:
            with zipfile.ZipFile(model or "") as archive:
                config = json.loads(archive.read("config.json"))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            return cls({}, {})
        by_class: dict[str, list[str]] = {}
        wrapped: dict[str, str] = {}
        for class_name, name, inner in _layers(config):
            by_class.setdefault(class_name, []).append(name)
            if inner:
                wrapped[name] = inner
        return cls(by_class, wrapped)

    def describe_class(self, op: str) -> str:
        """'keras.src.layers.preprocessing.image_preprocessing.Rescaling' -> 'Rescaling (layer rescaling)'."""
        short = op.rsplit(".", 1)[-1]
        names = self.by_class.get(short, [])
        return f"{short} ({'layer' if len(names) == 1 else 'layers'} {', '.join(names)})" if names else short

    def describe_layer(self, op: str, layer: str) -> str:
        """An op and the layer (or MCT's wrapper of it) it is: 'Dense (layer dense)'."""
        return f"{op.rsplit('.', 1)[-1]} (layer {self.wrapped.get(layer, layer)})"


def _layers(config: object) -> Iterator[tuple[str, str, str | None]]:
    """(class, name, the wrapped layer's name or None) of every named layer in a Keras config, nested ones too."""
    if isinstance(config, list):
        for item in config:
            yield from _layers(item)
        return
    if not isinstance(config, dict):
        return
    inner = config.get("config")
    if isinstance(config.get("class_name"), str) and isinstance(inner, dict) and isinstance(inner.get("name"), str):
        wrapped = inner.get("layer")
        wrapped_name = wrapped.get("config", {}).get("name") if isinstance(wrapped, dict) else None
        yield config["class_name"], inner["name"], wrapped_name
    for value in config.values():
        yield from _layers(value)
