"""The kinds of model the workflow knows, by the name the configuration and results.json use."""

from __future__ import annotations

from typing import Any

from core.kinds.classification import Classification
from core.kinds.detection import Detection
from core.kinds.kind import ModelKind

CLASSIFICATION = Classification()
DETECTION = Detection()
KINDS: dict[str, ModelKind[Any]] = {kind.name: kind for kind in (CLASSIFICATION, DETECTION)}


def kind_named(name: str) -> ModelKind[Any]:
    try:
        return KINDS[name]
    except KeyError:
        raise ValueError(f"unknown kind of model {name!r}: expected one of {', '.join(KINDS)}") from None


def kind_of_results(results: dict) -> ModelKind[Any]:
    """The kind a results.json was made for (files written before the key existed are classification's)."""
    return kind_named(results.get("task", CLASSIFICATION.name))
