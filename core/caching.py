"""Cache keys computed from content, not from paths or run ids.

A step's key covers the source of its module (the step's logic and its task wrapper) and of core/,
the bytes of every file or folder it reads, and the values of its other inputs. Running the
same configuration twice therefore does the heavy work once, and changing one image or one
value redoes what depends on it and nothing else. Output locations are not inputs of the
cached steps: they write to the cache's work folder and the last step publishes.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.utilities.hashing import hash_objects

from core.custom_layers import custom_layers_digest
from core.files import hash_path
from core.storage import work_generation


@functools.cache
def core_source_digest() -> str:
    """The steps' logic lives in core/ and its packages (tasks/ holds only their task wrappers): a change
    there must not leave results computed by the old code in use."""
    core_dir = Path(__file__).resolve().parent
    digest = hashlib.blake2b(digest_size=16)
    for file in sorted(core_dir.rglob("*.py")):
        digest.update(file.relative_to(core_dir).as_posix().encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def _field(record: Any, dotted: str) -> Any:
    """`record.a.b` for "a.b"."""
    return functools.reduce(getattr, dotted.split("."), record)


def _exclusion(dotted: list[str]) -> dict[str, Any]:
    """pydantic's `exclude` for dotted field names: {"a": {"b": True}} for "a.b"."""
    tree: dict[str, Any] = {}
    for name in dotted:
        *parents, last = name.split(".")
        node = tree
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = True
    return tree


@dataclass
class ContentCachePolicy(CachePolicy):
    """Key = module source + content of the inputs named in `file_inputs` + other input values.

    `file_inputs` name parameters holding a path, a record with a `path`, a list of either, or None; a dotted name
    ("inputs.build.model_path") names a record's field, at any depth. Parameters named in
    `ignore` (say, a progress-bar switch) do not enter the key. `environment`, when given, returns
    what else the result depends on that is not an input (the machine, an installed tool's location); it is
    called with the task's inputs. The work folder's generation is always part of the key: results whose
    files were deleted with `work/` are recomputed, not served.
    """

    file_inputs: tuple[str, ...] = ()
    ignore: tuple[str, ...] = field(default=())
    environment: Callable[[dict[str, Any]], Any] | None = None

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        module = sys.modules[task_ctx.task.fn.__module__]
        parts: dict[str, Any] = {"source": inspect.getsource(module), "core": core_source_digest()}
        for name, value in sorted(inputs.items()):
            if name in self.ignore:
                continue
            nested = [f.split(".", 1)[1] for f in self.file_inputs if f.startswith(f"{name}.")]
            if nested and value is not None:  # a record whose named fields are files: their content counts
                parts[name] = {
                    "fields": value.model_dump(exclude=_exclusion(nested)),
                    "files": {field: hash_path(_field(value, field)) for field in nested},
                }
                continue
            if name in self.file_inputs and value is not None:
                items = value if isinstance(value, (list, tuple)) else [value]
                # A record with a `path` (core.records) counts by its file's content and its other fields.
                parts[name] = [
                    [hash_path(item.path), item.model_dump(exclude={"path"})]
                    if hasattr(item, "path")
                    else hash_path(item)
                    for item in items
                ]
            else:
                parts[name] = value
        if self.environment is not None:
            parts["environment"] = self.environment(inputs)
        if (custom_layers := custom_layers_digest()) is not None:  # the user's layers (core/custom_layers.py)
            parts["custom_layers"] = custom_layers
        parts["work_generation"] = work_generation()
        return hash_objects(parts, raise_on_failure=True)
